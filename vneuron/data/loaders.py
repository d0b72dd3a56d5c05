"""Reading corpora: the built-in one, and users' JSONL / CSV / TSV / XLSX files.

A user file holds either paired scenarios (columns scenario, option_pole, option_opposite,
dimension [, opposite]) or labelled texts (columns text, label). ``columns`` maps our field names
to the user's column names, so nobody has to rename their data.
"""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import VneuronError
from .schema import OPPOSITE, SPLITS, Corpus, Item, Text

BUILTIN = "builtin"
FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".xlsx")
PAIRED_REQUIRED = ("scenario", "option_pole", "option_opposite", "dimension")
TEXT_REQUIRED = ("text", "label")


def builtin_dir() -> Path:
    return Path(str(resources.files("vneuron.data").joinpath("builtin")))


def load_corpus(
    name_or_path: str | Path | None = None,
    *,
    columns: dict[str, str] | None = None,
    contrasts: list[tuple[str, str]] | None = None,
) -> Corpus:
    """Load the built-in corpus (``None`` or "builtin") or a user's file or directory."""
    spec = str(name_or_path or BUILTIN)
    if spec == BUILTIN:
        corpus = _load_directory(builtin_dir(), BUILTIN, recursive=True)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise VneuronError(f"Corpus {spec} does not exist", "pass an existing file or directory, or omit --dataset for the built-in corpus")
        if path.is_dir():
            corpus = _load_directory(path, path.name, columns=columns)
        else:
            corpus = Corpus(name=path.name)
            _load_file(path, corpus, columns)
            description_file = path.with_name(path.name.split(".")[0] + ".descriptions.jsonl")
            if description_file.is_file() and description_file != path:
                _load_descriptions(description_file, corpus)
    if contrasts:
        corpus.contrasts = list(contrasts)
    if not len(corpus):
        raise VneuronError(f"Corpus {spec} holds no items", "check that the file has rows below its header")
    _check_poles(corpus, spec)
    return corpus


def _load_directory(path: Path, name: str, *, recursive: bool = False, columns=None) -> Corpus:
    corpus = Corpus(name=name)
    files = sorted(path.rglob("*") if recursive else path.iterdir())
    data = [f for f in files if f.suffix in FORMATS and not f.name.endswith(".descriptions.jsonl")]
    if not data:
        raise VneuronError(f"Directory {path} holds no corpus file", f"add files ending in {', '.join(FORMATS)}")
    for file in data:
        _load_file(file, corpus, columns)
    for file in files:
        if file.name.endswith(".descriptions.jsonl"):
            _load_descriptions(file, corpus)
    return corpus


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL / JSON / CSV / TSV / XLSX file as dicts; any defect is a one-line error."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            text = path.read_text(encoding="utf-8")
            if suffix == ".json" and text.lstrip().startswith("["):
                rows = json.loads(text)
            else:
                rows = []
                for n, line in enumerate(text.splitlines(), 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise VneuronError(f"{path}, line {n}: not valid JSON ({exc.msg})", "fix that line; each line must be one JSON object") from None
            if not all(isinstance(r, dict) for r in rows):
                raise VneuronError(f"{path}: every record must be a JSON object", "write one {...} per line")
            return rows
        if suffix in (".csv", ".tsv"):
            with open(path, newline="", encoding="utf-8-sig") as fh:
                return [dict(r) for r in csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")]
        if suffix == ".xlsx":
            return _read_xlsx(path)
    except UnicodeDecodeError:
        raise VneuronError(f"{path} is not UTF-8 text", "re-save it as UTF-8 (e.g. iconv -f GBK -t UTF-8)") from None
    raise VneuronError(f"{path}: unsupported file type {suffix!r}", f"use one of: {', '.join(FORMATS)}")


def _read_xlsx(path: Path) -> list[dict[str, Any]]:
    try:
        from openpyxl import load_workbook
    except ImportError:
        raise VneuronError("Reading .xlsx needs openpyxl", "pip install openpyxl") from None
    try:
        sheet = load_workbook(path, read_only=True, data_only=True).active
    except Exception as exc:  # openpyxl raises many types for a broken file
        raise VneuronError(f"{path} is not a readable .xlsx workbook ({exc.__class__.__name__})", "re-save it from a spreadsheet program") from None
    rows = list(sheet.iter_rows(values_only=True))
    if not rows:
        return []
    header = [str(h).strip() if h is not None else "" for h in rows[0]]
    return [dict(zip(header, row)) for row in rows[1:] if any(v not in (None, "") for v in row)]


def _load_file(path: Path, corpus: Corpus, columns: dict[str, str] | None) -> None:
    rows = read_rows(path)
    if not rows:
        return
    rows = [_rename(r, columns) for r in rows]
    header = set(rows[0])
    if set(PAIRED_REQUIRED) <= header:
        corpus.items.extend(_item(path, n, r) for n, r in enumerate(rows, 2))
    elif set(TEXT_REQUIRED) <= header:
        corpus.texts.extend(_text(path, n, r) for n, r in enumerate(rows, 2))
    else:
        missing_pair = [c for c in PAIRED_REQUIRED if c not in header]
        missing_text = [c for c in TEXT_REQUIRED if c not in header]
        raise VneuronError(
            f"{path}: missing columns {', '.join(missing_pair)} (paired scenarios) or {', '.join(missing_text)} (labelled texts); found {', '.join(sorted(header))}",
            "rename them or map them with --columns ours=yours,...",
        )


def _rename(row: dict[str, Any], columns: dict[str, str] | None) -> dict[str, Any]:
    row = {str(k).strip(): v for k, v in row.items() if k is not None}
    for ours, theirs in (columns or {}).items():
        if theirs in row:
            row[ours] = row.pop(theirs)
    return row


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _required(path: Path, n: int, row: dict, key: str) -> str:
    value = _clean(row.get(key))
    if value is None:
        raise VneuronError(f"{path}, row {n}: empty {key!r}", f"fill in {key} or drop the row")
    return value


def _split(path: Path, n: int, row: dict) -> str:
    split = _clean(row.get("split")) or "train"
    if split not in SPLITS:
        raise VneuronError(f"{path}, row {n}: unknown split {split!r}", f"use one of: {', '.join(SPLITS)}")
    return split


def _item(path: Path, n: int, row: dict) -> Item:
    dimension = _required(path, n, row, "dimension")
    opposite = _clean(row.get("opposite")) or OPPOSITE.get(dimension)
    if opposite is None:
        raise VneuronError(
            f"{path}, row {n}: dimension {dimension!r} is not a Schwartz higher-order dimension and the row has no 'opposite'",
            f"use one of {', '.join(OPPOSITE)} or add an opposite column naming the opposite pole",
        )
    return Item(
        id=_clean(row.get("id")) or f"{path.stem}-{n}",
        dimension=dimension,
        opposite=opposite,
        scenario=_required(path, n, row, "scenario"),
        option_pole=_required(path, n, row, "option_pole"),
        option_opposite=_required(path, n, row, "option_opposite"),
        language=_clean(row.get("language")) or "en",
        value=_clean(row.get("value")),
        value19=_clean(row.get("value19")),
        opposite_value=_clean(row.get("opposite_value")),
        setting=_clean(row.get("setting")),
        split=_split(path, n, row),
    )


def _text(path: Path, n: int, row: dict) -> Text:
    return Text(
        id=_clean(row.get("id")) or f"{path.stem}-{n}",
        label=_required(path, n, row, "label"),
        text=_required(path, n, row, "text"),
        language=_clean(row.get("language")) or "en",
        group=_clean(row.get("group")),
        split=_split(path, n, row),
    )


def _load_descriptions(path: Path, corpus: Corpus) -> None:
    for n, row in enumerate(read_rows(path), 1):
        label = _clean(row.get("dimension") or row.get("label"))
        text = _clean(row.get("text"))
        if not label or not text:
            raise VneuronError(f"{path}, line {n}: a description needs 'dimension' (or 'label') and 'text'", "fill both in")
        corpus.descriptions.setdefault(_clean(row.get("language")) or "en", {}).setdefault(label, []).append(text)


def _check_poles(corpus: Corpus, spec: str) -> None:
    counts = corpus.counts()
    for pole, opposite in corpus.pole_contrasts():
        for label in (pole, opposite):
            if not sum(counts.get(label, {}).values()):
                raise VneuronError(f"Corpus {spec}: pole {label!r} has no texts", f"add rows expressing {label!r} or drop the contrast {pole}:{opposite}")


def list_datasets() -> list[dict[str, Any]]:
    """What ``vneuron datasets`` shows."""
    corpus = load_corpus(BUILTIN)
    return [
        {
            "name": BUILTIN,
            "languages": corpus.languages,
            "items": len(corpus.items),
            "labels": corpus.labels,
            "description": "Behavioural scenarios written for vneuron (EN, ZH): a question and two actions, one per pole.",
        }
    ]

