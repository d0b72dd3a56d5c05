"""Reading rows out of files, and finding the public data sets on this machine.

The one place that decodes text, parses JSONL/JSON/CSV/TSV/XLSX and knows where copies of
Touché23 and ValueBench live; the corpus, questionnaire and Touché readers build on it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from vneuron.errors import VneuronError

FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".xlsx")
DATA_ENV = "VNEURON_DATA"
VALUEBENCH_FILE = "value_orientation.csv"


def _guess_encoding(data: bytes) -> str:
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "UTF-16"
    for codec, name in (("gbk", "GBK"), ("gb18030", "GB18030"), ("big5", "Big5"), ("shift_jis", "Shift-JIS")):
        try:
            data.decode(codec)
            return name
        except UnicodeDecodeError:
            pass
    return "Windows-1252"


def read_text(path: Path) -> str:
    """A file's text as UTF-8 (a BOM is fine); anything else is a one-line error naming the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        codec = _guess_encoding(data)
        raise VneuronError(
            f"{path}, row {line}: not UTF-8 text (byte {data[exc.start]:#04x}; it looks like {codec})",
            f"re-save it as UTF-8, e.g. iconv -f {codec} -t UTF-8 {path.name} > utf8-{path.name}",
        ) from None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL / JSON / CSV / TSV / XLSX file as dicts; any defect is a one-line error.

    For an .xlsx this is the active sheet (``read_sheets`` gives all of them).
    """
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        text = read_text(path)
        if suffix == ".json" and text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as exc:
                raise VneuronError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})", "fix that line") from None
        else:
            rows = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise VneuronError(f"{path}, line {n}: not valid JSON ({exc.msg})",
                                           "fix that line; each line must be one JSON object") from None
        if not all(isinstance(r, dict) for r in rows):
            raise VneuronError(f"{path}: every record must be a JSON object", "write one {...} per line")
        return rows
    if suffix in (".csv", ".tsv"):
        text = read_text(path)
        return [dict(r) for r in csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")]
    if suffix == ".xlsx":
        sheets = read_sheets(path)
        return sheets[0][1] if sheets else []
    raise VneuronError(f"{path}: unsupported file type {suffix!r}", f"use one of: {', '.join(FORMATS)}")


def read_sheets(path: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    """(title, rows) of every sheet of an .xlsx workbook, the active sheet first."""
    try:
        from openpyxl import load_workbook
    except ImportError:
        raise VneuronError("Reading .xlsx needs openpyxl", "pip install openpyxl") from None
    try:
        book = load_workbook(path, read_only=True, data_only=True)
        active = book.active
        sheets = [active] + [s for s in book.worksheets if s is not active]
        result = []
        for sheet in sheets:
            rows = list(sheet.iter_rows(values_only=True))
            if not rows:
                result.append((sheet.title, []))
                continue
            header = [str(h).strip() if h is not None else "" for h in rows[0]]
            result.append((sheet.title, [dict(zip(header, row)) for row in rows[1:] if any(v not in (None, "") for v in row)]))
        book.close()
        return result
    except VneuronError:
        raise
    except Exception as exc:  # openpyxl raises many types for a broken file
        raise VneuronError(f"{path} is not a readable .xlsx workbook ({exc.__class__.__name__})",
                           "re-save it from a spreadsheet program") from None


def rename_columns(row: dict[str, Any], columns: dict[str, str] | None) -> dict[str, Any]:
    """A row with surrounding spaces stripped from its keys and the user's columns renamed to ours (ours=yours)."""
    row = {str(k).strip(): v for k, v in row.items() if k is not None}
    for ours, theirs in (columns or {}).items():
        if theirs in row:
            row[ours] = row.pop(theirs)
    return row



# -- where public data sets are ---------------------------------------------------------------
def data_roots() -> list[Path]:
    """Where copies of public data sets are looked for: $VNEURON_DATA, then ../shared/data from here."""
    roots = []
    for entry in os.environ.get(DATA_ENV, "").split(os.pathsep):
        if entry.strip():
            roots.append(Path(entry.strip()).expanduser())
    roots.append(Path.cwd().parent / "shared" / "data")
    seen, unique = set(), []
    for root in roots:
        try:
            key = root.resolve()
        except OSError:
            continue
        if key not in seen and root.is_dir():
            seen.add(key)
            unique.append(root)
    return unique


def valuebench_files() -> list[Path]:
    """ValueBench value_orientation.csv files in ``data_roots()`` (one level deep)."""
    found: list[Path] = []
    for root in data_roots():
        for directory in [root] + sorted(p for p in root.iterdir() if p.is_dir()):
            candidate = directory / VALUEBENCH_FILE
            if candidate.is_file() and candidate not in found:
                found.append(candidate)
    return found
