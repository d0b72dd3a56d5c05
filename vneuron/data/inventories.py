"""Value questionnaires (PVQ-40, PVQ-RR or any other inventory) for evaluation.

``load_inventory(path_or_name, questionnaire=None)`` reads

- ValueBench's ``value_orientation.csv`` (columns ``questionnaire``, ``item``, ``value``,
  ``agreement``, ``question``): the rows of one questionnaire, "PVQ40" unless told otherwise
  (``agreement`` is the key);
- a generic inventory (.csv, .tsv, .xlsx, .jsonl, .json) with columns ``item`` (the statement
  shown to the model), ``value`` and ``key`` (+1, or -1 for a reverse-keyed item; a column named
  ``agreement`` is accepted instead of ``key``), and optional ``id``, ``dimension``,
  ``questionnaire`` (then ``questionnaire=`` filters on it) and ``language``; ``columns`` maps
  other names (ours=yours);
- a name instead of a path ("PVQ40", "pvq-40", or any ValueBench questionnaire): looked up in a
  ValueBench copy under $VNEURON_DATA or ../shared/data.

Each item's ``dimension`` is the Schwartz higher-order dimension of its value (``VALUE_DIMENSION``:
the 10 basic values of PVQ-40 and the 19 of the refined theory / PVQ-RR, names compared ignoring
case, spaces and punctuation), or the file's ``dimension`` column. Hedonism counts as
openness_to_change, although Schwartz places it between openness_to_change and self_enhancement;
the refined theory's boundary values Face and Humility, and any value not in the table, get None
(scored per value, not per dimension).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vneuron.data.files import DATA_ENV, VALUEBENCH_FILE, read_rows, rename_columns, valuebench_files
from vneuron.data.schema import DIMENSIONS
from vneuron.errors import VneuronError

OC, CO, SE, ST = "openness_to_change", "conservation", "self_enhancement", "self_transcendence"
VALUEBENCH_COLUMNS = ("questionnaire", "item", "value", "agreement")
GENERIC_REQUIRED = ("item", "value", "key")
DEFAULT_QUESTIONNAIRE = "PVQ40"


def _norm(name: Any) -> str:
    return re.sub(r"[^0-9a-z]+", "", unicodedata.normalize("NFKC", str(name)).lower())


_VALUES = {
    OC: ("Self-Direction", "Self-direction: thought", "Self-direction: action", "Stimulation", "Hedonism"),
    SE: ("Achievement", "Power", "Power: dominance", "Power: resources"),
    CO: ("Security", "Security: personal", "Security: societal", "Conformity", "Conformity: rules",
         "Conformity: interpersonal", "Tradition"),
    ST: ("Benevolence", "Benevolence: caring", "Benevolence: dependability", "Universalism",
         "Universalism: concern", "Universalism: nature", "Universalism: tolerance", "Universalism: objectivity"),
}
# normalised value name → higher-order dimension; Face and Humility (boundary values) are absent
VALUE_DIMENSION: dict[str, str] = {_norm(v): d for d, values in _VALUES.items() for v in values}
SHARED_WITH = {"hedonism": SE}  # Hedonism is also part of self_enhancement (Schwartz 2012)


def value_dimension(value: str) -> str | None:
    """The higher-order dimension of a basic value's name, or None (unknown or boundary value)."""
    return VALUE_DIMENSION.get(_norm(value))


# Schwartz's circle, 19 refined values and the 10 basic ones interleaved where they sit
CIRCLE = ("Self-Direction", "Self-direction: thought", "Self-direction: action", "Stimulation", "Hedonism", "Achievement",
          "Power", "Power: dominance", "Power: resources", "Face", "Security", "Security: personal", "Security: societal",
          "Tradition", "Conformity", "Conformity: rules", "Conformity: interpersonal", "Humility", "Benevolence",
          "Benevolence: caring", "Benevolence: dependability", "Universalism", "Universalism: concern",
          "Universalism: nature", "Universalism: tolerance", "Universalism: objectivity")


def circular_order(values: list[str]) -> list[str]:
    """Values in Schwartz's circular order (self-direction → universalism); unknown names last, as given."""
    place = {_norm(v): i for i, v in enumerate(CIRCLE)}
    return sorted(values, key=lambda v: (place.get(_norm(v), len(place)), values.index(v)))


@dataclass(frozen=True)
class InventoryItem:
    """One questionnaire item: ``key`` +1 (agreeing expresses ``value``) or -1 (reverse-keyed)."""

    id: str
    text: str
    value: str
    key: int
    dimension: str | None
    questionnaire: str
    language: str = "en"


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _key(where: Path, n: int, raw: Any) -> int:
    text = _clean(raw)
    try:
        number = float(text) if text is not None else None
    except ValueError:
        number = None
    if number not in (1.0, -1.0):
        raise VneuronError(f"{where}, row {n}: key {text!r} is not +1 or -1",
                           "use 1 for items agreeing with the value, -1 for reverse-keyed items")
    return int(number)


def _rows(path: Path, columns: dict[str, str] | None) -> list[dict[str, Any]]:
    return [rename_columns(r, columns) for r in read_rows(path)]


def _is_valuebench(header) -> bool:
    return set(VALUEBENCH_COLUMNS) <= set(header)


def questionnaires(path: str | Path) -> dict[str, int]:
    """Items per questionnaire in a ValueBench-style file (one with a questionnaire column)."""
    path = Path(path)
    rows = _rows(path, None)
    if not rows or "questionnaire" not in rows[0]:
        raise VneuronError(f"{path}: no 'questionnaire' column", "pass ValueBench's value_orientation.csv")
    return dict(Counter(_clean(r.get("questionnaire")) or "?" for r in rows))


def _find_valuebench(name: str) -> Path:
    found = valuebench_files()
    if not found:
        raise VneuronError(
            f"Inventory {name!r} is not a file, and no ValueBench copy ({VALUEBENCH_FILE}) was found under ${DATA_ENV} or ../shared/data",
            f"pass the path of {VALUEBENCH_FILE} or of your own item,value,key file, or set {DATA_ENV} to the directory holding it",
        )
    return found[0]


def load_inventory(
    path_or_name: str | Path,
    questionnaire: str | None = None,
    *,
    columns: dict[str, str] | None = None,
) -> list[InventoryItem]:
    """Items of one questionnaire (see the module doc for the accepted files and columns)."""
    path = Path(path_or_name).expanduser()
    if not path.exists():
        if Path(str(path_or_name)).suffix or "/" in str(path_or_name):
            raise VneuronError(f"Inventory {path_or_name} does not exist", "pass an existing file, or a questionnaire name such as PVQ40")
        questionnaire = questionnaire or str(path_or_name)
        path = _find_valuebench(str(path_or_name))
    rows = _rows(path, columns)
    if not rows:
        raise VneuronError(f"{path} holds no items", "check that the file has rows below its header")
    header = set(rows[0])
    valuebench = _is_valuebench(header) and "key" not in header
    if valuebench:
        questionnaire = questionnaire or DEFAULT_QUESTIONNAIRE
    key_column = "key" if "key" in header else "agreement" if "agreement" in header else "key"
    missing = [c for c in ("item", "value") if c not in header] + ([] if key_column in header else ["key"])
    if missing:
        raise VneuronError(
            f"{path}: missing columns {', '.join(missing)}; found {', '.join(sorted(header))}",
            "an inventory needs item, value and key (+1/-1) columns; rename them or map them with columns={'item': 'yours', ...}",
        )
    numbered = list(enumerate(rows, 2))
    if questionnaire is not None and "questionnaire" in header:
        wanted = _norm(questionnaire)
        numbered = [(n, r) for n, r in numbered if _norm(r.get("questionnaire") or "") == wanted]
        if not numbered:
            available = sorted({_clean(r.get("questionnaire")) or "?" for r in rows})
            raise VneuronError(f"{path} has no items of questionnaire {questionnaire!r}", f"use one of: {', '.join(available)}")
    items: list[InventoryItem] = []
    per_questionnaire: Counter = Counter()
    seen: dict[str, int] = {}
    for n, row in numbered:
        text = _clean(row.get("item"))
        if text is None:
            raise VneuronError(f"{path}, row {n}: empty 'item'", "fill in the item's text or drop the row")
        value = _clean(row.get("value"))
        if value is None:
            raise VneuronError(f"{path}, row {n}: empty 'value'", "name the value the item measures, e.g. Benevolence")
        key = _key(path, n, row.get(key_column))
        name = _clean(row.get("questionnaire")) or questionnaire or path.stem
        dimension = _clean(row.get("dimension"))
        if dimension is not None and dimension not in DIMENSIONS:
            raise VneuronError(f"{path}, row {n}: unknown dimension {dimension!r}", f"use one of {', '.join(DIMENSIONS)} or leave it empty")
        per_questionnaire[name] += 1
        item_id = _clean(row.get("id")) or f"{name}-{per_questionnaire[name]}"
        if item_id in seen:
            raise VneuronError(f"{path}, row {n}: id {item_id!r} already used in row {seen[item_id]}", "give every item its own id")
        seen[item_id] = n
        items.append(InventoryItem(
            id=item_id,
            text=text,
            value=value,
            key=key,
            dimension=dimension or value_dimension(value),
            questionnaire=name,
            language=_clean(row.get("language")) or "en",
        ))
    return items
