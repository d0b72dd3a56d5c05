"""Reading corpora: the built-in one, users' files and directories, and the formats vneuron knows.

``load_corpus(spec)`` accepts

- ``None`` or ``"builtin"``: the built-in scenarios (EN and ZH);
- a file (.jsonl, .json, .csv, .tsv, .xlsx) holding one of
  * paired scenarios: columns scenario, option_pole, option_opposite, dimension [, opposite];
  * C-voice rows: a value ("X vs Y"), a dilemma and choices A / B (see ``cvoice.py`` for the
    accepted English and Chinese header names; in an .xlsx every sheet with such a header is read);
  * labelled texts: columns text, label;
- a directory:
  * a Touché23-ValueEval release (arguments-*.tsv + labels-*.tsv; see ``touche.py``);
  * a Hugging Face ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` directory (``hf.py``);
  * otherwise every corpus file inside it;
- ``"hf:NAME[:SPLIT]"``: a dataset on the Hugging Face hub (only when online).

``columns`` maps our field names to the user's column names (ours=yours), so nobody has to rename
their data. Every defect is one ``VneuronError`` line naming the file, the row and the fix.
"""

from __future__ import annotations

import os
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from vneuron.data.files import FORMATS, data_roots, read_rows, read_sheets, rename_columns, valuebench_files
from vneuron.data.schema import DEFAULT_TEST_FRACTION, DIMENSIONS, OPPOSITE, SPLITS, UNSPLIT, Corpus, Item, Text
from vneuron.errors import VneuronError

BUILTIN = "builtin"
PAIRED_REQUIRED = ("scenario", "option_pole", "option_opposite", "dimension")
TEXT_REQUIRED = ("text", "label")
HF_PREFIX = "hf:"


def builtin_dir() -> Path:
    return Path(str(resources.files("vneuron.data").joinpath("builtin")))


def load_corpus(
    name_or_path: str | Path | None = None,
    *,
    columns: dict[str, str] | None = None,
    contrasts: list[tuple[str, str]] | None = None,
    touche_text: str = "premise",
    test_fraction: float = DEFAULT_TEST_FRACTION,
    strict: bool = False,
) -> Corpus:
    """Load the built-in corpus (``None`` or "builtin"), a user's file or directory, or ``hf:NAME``.

    ``touche_text`` ("premise" or "full") chooses the text of a Touché23 argument. Rows without a
    split (no split column) are held out as test with probability ``test_fraction``, decided by a
    hash of their id (``Corpus.assign_splits``; ``corpus.split_source`` says what happened).

    A row with an empty required cell (published files have a few) is left out, and
    ``corpus.notes`` counts and names every such row per file and sheet; with ``strict`` it is an
    error instead. ``corpus.notes`` also reports rows of a value's sheet whose conflict lacks that
    value and items that share an id.
    """
    spec = str(name_or_path or BUILTIN)
    if spec == BUILTIN:
        corpus = _load_directory(builtin_dir(), BUILTIN, recursive=True)
    elif spec.startswith(HF_PREFIX):
        from vneuron.data import hf

        corpus = Corpus(name=spec)
        stem = spec[len(HF_PREFIX):].split(":")[0].replace("/", "_")
        for where, part, split, rows in hf.load_hub(spec):
            _load_rows(where, f"{stem}-{part}" if part else stem, rows, corpus, columns, default_split=split)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise VneuronError(f"Corpus {spec} does not exist",
                               "pass an existing file or directory, or omit `dataset` for the built-in corpus")
        if path.is_dir():
            from vneuron.data import hf, touche

            if touche.is_touche_dir(path):
                corpus = touche.load_touche(path, text=touche_text)
            elif hf.is_saved_dataset(path):
                corpus = Corpus(name=path.name)
                for where, part, split, rows in hf.load_saved(path):
                    _load_rows(where, f"{path.name}-{part}" if part else path.name, rows, corpus, columns, default_split=split)
            else:
                corpus = _load_directory(path, path.name, columns=columns)
        else:
            corpus = Corpus(name=path.name)
            _load_file(path, corpus, columns)
            description_file = path.with_name(path.name.split(".")[0] + ".descriptions.jsonl")
            if description_file.is_file() and description_file != path:
                _load_descriptions(description_file, corpus)
    if contrasts:
        corpus.contrasts = list(contrasts)
    elif corpus.contrasts:  # free-string labels (C-voice) next to Schwartz ones: keep both kinds
        labels = set(corpus.labels)
        schwartz = {(a, OPPOSITE[a]) for a in labels if a in OPPOSITE and OPPOSITE[a] in labels}
        corpus.contrasts = sorted(set(corpus.contrasts) | schwartz)
    if corpus.skipped and (strict or not len(corpus)):
        first = corpus.skipped[0]
        more = len(corpus.skipped) - 1
        raise VneuronError(f"{first['where']}, row {first['row']}: empty {', '.join(repr(c) for c in first['empty'])}"
                           + (f", and {more} more incomplete row{'s' * (more != 1)}" if more else "")
                           + ("" if len(corpus) else " (no complete row is left)"),
                           "fill them in or drop them" + ("; without `strict` incomplete rows are left out with a note naming them"
                                                          if len(corpus) else ""))
    if not len(corpus):
        raise VneuronError(f"Corpus {spec} holds no items", "check that the file has rows below its header")
    corpus.notes = [*skipped_note(corpus.skipped), *relabelled_note(corpus.relabelled), *duplicates_note(corpus)]
    _check_poles(corpus, spec)
    return corpus.assign_splits(test_fraction)


def skipped_note(skipped: list[dict]) -> list[str]:
    """One line per file: how many incomplete rows were left out, per sheet, each named with its empty columns."""
    by_file: dict[str, dict[str, list[str]]] = {}
    for row in skipped:
        file, _, sheet = row["where"].partition(" (sheet ")
        by_file.setdefault(file, {}).setdefault(sheet.rstrip(")"), []).append(f"{row['row']} ({', '.join(row['empty'])})")
    lines = []
    for file, sheets in by_file.items():
        count = sum(map(len, sheets.values()))
        parts = [("sheet " + sheet + ": " if sheet else "") + "row" + "s" * (len(rows) > 1) + " " + ", ".join(rows)
                 for sheet, rows in sheets.items()]
        where = f" over {len(sheets)} sheets" if len(sheets) > 1 else ""
        lines.append(f"{Path(file).name}: left out {count} incomplete row{'s' * (count != 1)}{where} (an empty cell; "
                     f"`strict` refuses them): {'; '.join(parts)}")
    return lines


def relabelled_note(relabelled: list[dict]) -> list[str]:
    return [f"{Path(r['where'].partition(' (sheet ')[0]).name} sheet {r['value']}: {r['rows']} of {r['of']} rows name a conflict "
            f"without {r['value']} (e.g. {', '.join(repr(e) for e in r['examples'])}); they load under those conflicts' labels"
            for r in relabelled]


def duplicates_note(corpus: Corpus) -> list[str]:
    """Items (or texts) sharing an id are read as one scenario: say so, with the ids."""
    lines = []
    for kind, rows in (("items", corpus.items), ("texts", corpus.texts)):
        counts = Counter(r.id for r in rows)
        shared = {k: v for k, v in counts.items() if v > 1}
        if shared:
            shown = ", ".join(f"{k!r} ×{v}" for k, v in sorted(shared.items(), key=lambda kv: -kv[1])[:4])
            n = sum(shared.values())
            lines.append(f"{n} {kind} share an id with another ({shown}{' …' if len(shared) > 4 else ''}): each id is read as one "
                         f"scenario, so its {kind} go to one split and one stability fold ({len(counts)} distinct ids)")
    return lines


def _load_directory(path: Path, name: str, *, recursive: bool = False, columns=None) -> Corpus:
    corpus = Corpus(name=name)
    files = sorted(path.rglob("*") if recursive else path.iterdir())
    data = [f for f in files if f.suffix in FORMATS and not f.name.endswith(".descriptions.jsonl")]
    if not data:
        raise VneuronError(
            f"Directory {path} holds no corpus file",
            f"add files ending in {', '.join(FORMATS)}, or pass a Touché23 directory (arguments-*.tsv + labels-*.tsv) "
            "or a Hugging Face save_to_disk directory",
        )
    for file in data:
        _load_file(file, corpus, columns)
    for file in files:
        if file.name.endswith(".descriptions.jsonl"):
            _load_descriptions(file, corpus)
    return corpus


# -- rows → items / texts -----------------------------------------------------------------------
def _load_file(path: Path, corpus: Corpus, columns: dict[str, str] | None) -> None:
    if path.suffix.lower() == ".xlsx":
        from vneuron.data.cvoice import cvoice_columns

        sheets = read_sheets(path)
        voiced = [(title, rows) for title, rows in sheets if rows and cvoice_columns(rename_columns(rows[0], columns))]
        if voiced:  # every sheet with a C-voice header; the other sheets (notes, read-me) are skipped
            for title, rows in voiced:
                stem = path.stem if len(voiced) == 1 else f"{path.stem}-{title}"
                value = title if len(voiced) > 1 else path.stem.split("-")[0]  # 友善 of a sheet 友善 or of 友善-final.xlsx
                _load_rows(f"{path} (sheet {title})", stem, rows, corpus, columns, value=value)
            return
        rows = sheets[0][1] if sheets else []
    else:
        rows = read_rows(path)
    _load_rows(str(path), path.stem, rows, corpus, columns)


def _load_rows(
    where: str,
    stem: str,
    rows: list[dict[str, Any]],
    corpus: Corpus,
    columns: dict[str, str] | None,
    *,
    default_split: str | None = None,
    value: str | None = None,
) -> None:
    """Recognise the format of ``rows`` (from the file or split ``where``) and add them to ``corpus``.

    Rows with an empty required cell go to ``corpus.skipped`` (named by the file's own columns);
    ``value``: the value a C-voice sheet or file is about, whose rows without it are reported.
    """
    if not rows:
        return
    from vneuron.data.cvoice import cvoice_columns, cvoice_item

    rows = [rename_columns(r, columns) for r in rows]
    if default_split:
        rows = [r if _clean(r.get("split")) else {**r, "split": default_split} for r in rows]
    header = set(rows[0])
    theirs = lambda ours: (columns or {}).get(ours, ours)  # noqa: E731 - the file's name of one of our fields
    if set(PAIRED_REQUIRED) <= header:
        corpus.items.extend(_item(where, stem, n, r) for n, r in _complete(where, rows, corpus, {k: theirs(k) for k in PAIRED_REQUIRED}))
    elif (mapping := cvoice_columns(header)) is not None:
        names = {field: theirs(column) for field, column in mapping.items()}
        keyed = [{ours: r.get(column) for ours, column in mapping.items()} for r in rows]
        for r in keyed:  # the release's second dilemma column stands in for an empty first one
            if _clean(r.get("dilemma")) is None and _clean(r.get("dilemma_alt")) is not None:
                r["dilemma"] = r["dilemma_alt"]
        required = {f: names[f] for f in ("value", "dilemma", "choice_a", "choice_b")}
        items = [cvoice_item(where, stem, n, r, names) for n, r in _complete(where, keyed, corpus, required)]
        corpus.items.extend(items)
        pairs = {(i.dimension, i.opposite) for i in items}
        corpus.contrasts = sorted(set(corpus.contrasts or ()) | pairs | {(b, a) for a, b in pairs})
        if value:
            _relabelled(where, value, items, corpus)
    elif set(TEXT_REQUIRED) <= header:
        corpus.texts.extend(_text(where, stem, n, r) for n, r in _complete(where, rows, corpus, {k: theirs(k) for k in TEXT_REQUIRED}))
    else:
        missing_pair = [c for c in PAIRED_REQUIRED if c not in header]
        missing_text = [c for c in TEXT_REQUIRED if c not in header]
        raise VneuronError(
            f"{where}: missing columns {', '.join(missing_pair)} (paired scenarios) or {', '.join(missing_text)} (labelled texts) "
            f"or value, dilemma, choice_a, choice_b (C-voice); found {', '.join(sorted(map(str, header)))}",
            "rename them or map them with `columns` ours=yours,...",
        )


def _complete(where: str, rows: list[dict], corpus: Corpus, required: dict[str, str]):
    """(row number, row) of the rows with every required field filled in; the others are recorded in ``corpus.skipped``
    with the file's names of their empty columns (``required``: our field → the file's column)."""
    for n, row in enumerate(rows, 2):
        empty = [column for field, column in required.items() if _clean(row.get(field)) is None]
        if empty:
            corpus.skipped.append({"where": where, "row": n, "empty": empty})
        else:
            yield n, row


def _relabelled(where: str, value: str, items: list[Item], corpus: Corpus) -> None:
    """Rows of a value's sheet (most of whose rows pit that value against another) whose conflict lacks it."""
    off = [i for i in items if value not in (i.value, i.opposite_value)]
    if off and len(off) * 2 <= len(items):
        examples = list(dict.fromkeys(f"{i.value} vs {i.opposite_value}" if i.opposite_value else str(i.value) for i in off))[:3]
        corpus.relabelled.append({"where": where, "value": value, "rows": len(off), "of": len(items), "examples": examples})


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _required(where: Any, n: int, row: dict, key: str) -> str:
    value = _clean(row.get(key))
    if value is None:
        raise VneuronError(f"{where}, row {n}: empty {key!r}", f"fill in {key} or drop the row")
    return value


def _split(where: Any, n: int, row: dict) -> str:
    split = _clean(row.get("split"))
    if split is None:
        return UNSPLIT  # decided later by a hash of the id (Corpus.assign_splits)
    if split not in SPLITS:
        raise VneuronError(f"{where}, row {n}: unknown split {split!r}", f"use one of: {', '.join(SPLITS)}")
    return split


def _item(where: str, stem: str, n: int, row: dict) -> Item:
    dimension = _required(where, n, row, "dimension")
    opposite = _clean(row.get("opposite")) or OPPOSITE.get(dimension)
    if opposite is None:
        raise VneuronError(
            f"{where}, row {n}: dimension {dimension!r} is not a Schwartz higher-order dimension and the row has no 'opposite'",
            f"use one of {', '.join(OPPOSITE)} or add an opposite column naming the opposite pole",
        )
    return Item(
        id=_clean(row.get("id")) or f"{stem}-{n}",
        dimension=dimension,
        opposite=opposite,
        scenario=_required(where, n, row, "scenario"),
        option_pole=_required(where, n, row, "option_pole"),
        option_opposite=_required(where, n, row, "option_opposite"),
        language=_clean(row.get("language")) or "en",
        value=_clean(row.get("value")),
        value19=_clean(row.get("value19")),
        opposite_value=_clean(row.get("opposite_value")),
        setting=_clean(row.get("setting")),
        split=_split(where, n, row),
    )


def _text(where: str, stem: str, n: int, row: dict) -> Text:
    return Text(
        id=_clean(row.get("id")) or f"{stem}-{n}",
        label=_required(where, n, row, "label"),
        text=_required(where, n, row, "text"),
        language=_clean(row.get("language")) or "en",
        group=_clean(row.get("group")),
        split=_split(where, n, row),
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
    contrasts = corpus.pole_contrasts()
    if not contrasts:  # Schwartz labels without any partner, e.g. only conservation texts
        missing = sorted({OPPOSITE[label] for label in corpus.labels if label in OPPOSITE} - set(corpus.labels))
        raise VneuronError(
            f"Corpus {spec}: pole {missing[0]!r} has no texts, so nothing can be contrasted",
            f"add rows expressing {' or '.join(repr(m) for m in missing)}",
        )
    for pole, opposite in contrasts:
        for label in (pole, opposite):
            if not sum(counts.get(label, {}).values()):
                raise VneuronError(f"Corpus {spec}: pole {label!r} has no texts",
                                   f"add rows expressing {label!r} or drop the contrast {pole}:{opposite}")


# -- what is available --------------------------------------------------------------------------
def find_data() -> dict[str, list[Path]]:
    """Touché23 directories and ValueBench value_orientation.csv files in ``data_roots()`` (one level deep)."""
    from vneuron.data.touche import is_touche_dir

    found: dict[str, list[Path]] = {"touche23": [], "valuebench": valuebench_files()}
    for root in data_roots():
        for directory in [root] + sorted(p for p in root.iterdir() if p.is_dir()):
            if is_touche_dir(directory) and directory not in found["touche23"]:
                found["touche23"].append(directory)
    return found


def _shown(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)


def list_datasets() -> list[dict[str, Any]]:
    """What ``vneuron datasets`` shows: built-in corpus per language, formats, and copies found on disk.

    Each entry has name, languages, items, labels, description (plus kind: builtin | found | format).
    ``items`` is "-" for a format (nothing to count).
    """
    corpus = load_corpus(BUILTIN)
    entries: list[dict[str, Any]] = []
    for language in corpus.languages:
        part = corpus.select(language=language)
        splits = {s: sum(1 for i in part.items if i.split == s) for s in SPLITS}
        entries.append({
            "name": BUILTIN,
            "languages": [language],
            "items": len(part.items),
            "labels": part.labels,
            "description": (
                f"Behavioural scenarios written for vneuron: a question and two actions, one per pole "
                f"({splits['train']} train / {splits['test']} test; --language {language})."
            ),
            "kind": "builtin",
        })
    found = find_data()
    for directory in found["touche23"]:
        entries.append(_touche_entry(directory))
    for path in found["valuebench"]:
        entries.append(_valuebench_entry(path))
    entries.extend(FORMAT_ENTRIES)
    return entries


def _touche_entry(directory: Path) -> dict[str, Any]:
    from vneuron.data.touche import read_touche

    try:
        data = read_touche(directory)
    except VneuronError as exc:
        return {"name": _shown(directory), "languages": ["en"], "items": "-", "labels": [], "kind": "found",
                "description": f"Touché23-ValueEval copy that does not load: {exc}"}
    arguments = sum(data.arguments.values())
    return {
        "name": _shown(directory),
        "languages": ["en"],
        "items": len(data.texts),
        "labels": [d for d in DIMENSIONS if any(t.label == d for t in data.texts)],
        "description": (
            f"Touché23-ValueEval arguments ({arguments}), one text per argument and axis it clearly takes a pole on "
            f"({sum(data.ambiguous.values())} argument-axis pairs with both poles dropped); --dataset {_shown(directory)}."
        ),
        "kind": "found",
    }


def _valuebench_entry(path: Path) -> dict[str, Any]:
    from vneuron.data.inventories import questionnaires

    try:
        counts = questionnaires(path)
    except VneuronError as exc:
        return {"name": _shown(path), "languages": ["en"], "items": "-", "labels": [], "kind": "found",
                "description": f"ValueBench copy that does not load: {exc}"}
    return {
        "name": _shown(path),
        "languages": ["en"],
        "items": counts.get("PVQ40", 0),
        "labels": list(DIMENSIONS),
        "description": (
            f"ValueBench inventories for evaluation: PVQ40 ({counts.get('PVQ40', 0)} items) and {len(counts) - 1} more "
            f"({sum(counts.values())} items); vneuron.data.load_inventory(path, questionnaire='PVQ40')."
        ),
        "kind": "found",
    }


FORMAT_ENTRIES: list[dict[str, Any]] = [
    {"name": "FILE.jsonl|.json|.csv|.tsv|.xlsx", "languages": [], "items": "-", "labels": [], "kind": "format",
     "description": "Your paired scenarios (scenario, option_pole, option_opposite, dimension) or labelled texts "
                    "(text, label); --dataset FILE [--columns ours=yours,...]."},
    {"name": "DIR with arguments-*.tsv + labels-*.tsv", "languages": ["en"], "items": "-", "labels": list(DIMENSIONS), "kind": "format",
     "description": "Touché23-ValueEval TSV release: arguments grouped into the poles of each axis by their values' "
                    "higher-order dimension; --dataset DIR."},
    {"name": "C-voice FILE (.csv|.tsv|.xlsx|.jsonl)", "languages": ["zh", "en"], "items": "-", "labels": [], "kind": "format",
     "description": "Value conflicts as the C-voice release ships them: <value>-final.xlsx (冲突类型, 决策困境, 选择A, 选择B) "
                    "or the test workbook (a sheet per value: Type, Context, Action1, Action2); 'A. ' prefixes removed; "
                    "each conflict X vs Y becomes the pole pair X|Y : Y|X, and --dimension X the whole value X|*; --dataset FILE."},
    {"name": "hf:NAME[:SPLIT] or a save_to_disk DIR", "languages": [], "items": "-", "labels": [], "kind": "format",
     "description": "Hugging Face datasets (needs the datasets package, vneuron's 'datasets' extra): any of the layouts above as columns; "
                    "the hub only when online."},
    {"name": "inventory CSV (item, value, key)", "languages": [], "items": "-", "labels": list(DIMENSIONS), "kind": "format",
     "description": "PVQ-style questionnaires for evaluation: ValueBench's value_orientation.csv (PVQ40) or your own "
                    "item,value,key file; vneuron.data.load_inventory(path)."},
]
