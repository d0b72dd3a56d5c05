"""The C-voice format (ValueExploration): value conflicts as dilemmas with two choices.

A C-voice file (.csv, .tsv, .xlsx, .jsonl, .json; Chinese by default) has one row per dilemma:

===========  =====================================================================================
field        accepted header names
===========  =====================================================================================
value        value, values, conflict, conflict_type, value_conflict, 价值观, 价值, 冲突类型, 价值冲突
dilemma      dilemma, 困境, 情境, 情景, 场景, 问题
choice_a     choice_a, option_a, 选项A, 选择A, 选项一   (the choice that supports the value X)
choice_b     choice_b, option_b, 选项B, 选择B, 选项二   (the choice that opposes it / supports Y)
id           id, 编号, 序号                               (optional; default FILE-ROW)
language     language, lang, 语言                         (optional; default "zh")
split        split, 划分                                  (optional; train or test, default train)
===========  =====================================================================================

Header names are compared after Unicode NFKC normalisation (full-width Ａ is A), lower-casing and
removing spaces, underscores and hyphens: ``Choice A``, ``choice-a`` and ``CHOICE_A`` are all
``choice_a``. ``--columns choice_a=MyColumn`` maps any other name. A file is C-voice when its
header has all four of value, dilemma, choice_a and choice_b (and is not the paired-scenario
layout: a header with scenario, option_pole, option_opposite and dimension is read as that).

The value cell is ``X vs Y`` (the separator ``vs``, ``vs.``, ``v.s.`` or ``VS`` in any case, with or
without spaces, but not inside a Latin word): the dilemma pits X against Y, choice A supports X.
A bare ``X`` means X against ``not X``. Each row becomes an ``Item`` with dimension = X,
opposite = Y (or "not X"), value = X, opposite_value = Y, scenario = the dilemma,
option_pole = choice A, option_opposite = choice B. Labels are free strings, so the corpus
carries the (X, Y) pairs found, and their reverses, as explicit contrasts.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Iterable

from ..errors import VneuronError
from .schema import SPLITS, Item

ALIASES: dict[str, tuple[str, ...]] = {
    "value": ("value", "values", "conflict", "conflict_type", "value_conflict", "价值观", "价值", "冲突类型", "价值冲突"),
    "dilemma": ("dilemma", "困境", "情境", "情景", "场景", "问题"),
    "choice_a": ("choice_a", "option_a", "选项A", "选择A", "选项一"),
    "choice_b": ("choice_b", "option_b", "选项B", "选择B", "选项二"),
    "id": ("id", "编号", "序号"),
    "language": ("language", "lang", "语言"),
    "split": ("split", "划分"),
}
REQUIRED = ("value", "dilemma", "choice_a", "choice_b")
DEFAULT_LANGUAGE = "zh"
_SEPARATOR = re.compile(r"(?<![A-Za-z])\s*(?:v\.s\.|vs\.?)\s*(?![A-Za-z])", re.IGNORECASE)


def normalise(name: Any) -> str:
    return re.sub(r"[\s_\-]+", "", unicodedata.normalize("NFKC", str(name))).lower()


_LOOKUP = {normalise(alias): field for field, names in ALIASES.items() for alias in names}


def cvoice_columns(header: Iterable[Any]) -> dict[str, str] | None:
    """{field: the header's column name} when ``header`` is a C-voice header, else None."""
    mapping: dict[str, str] = {}
    for column in header:
        field = _LOOKUP.get(normalise(column))
        if field and field not in mapping:
            mapping[field] = column
    if not all(f in mapping for f in REQUIRED):
        return None
    return mapping


def parse_conflict(value: str) -> tuple[str, str | None] | None:
    """"X vs Y" → (X, Y); "X" → (X, None); anything else (empty side, three values) → None."""
    parts = [p.strip() for p in _SEPARATOR.split(value)]
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 2 and all(parts) and parts[0] != parts[1]:
        return parts[0], parts[1]
    return None


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def cvoice_item(where: str, stem: str, n: int, row: dict[str, Any]) -> Item:
    """One C-voice row (already keyed by field name) → Item; a defect is a one-line error."""

    def required(field: str) -> str:
        value = _cell(row.get(field))
        if value is None:
            raise VneuronError(f"{where}, row {n}: empty {field!r} (C-voice)", f"fill in {field} or drop the row")
        return value

    conflict = required("value")
    parsed = parse_conflict(conflict)
    if parsed is None:
        raise VneuronError(
            f"{where}, row {n}: cannot read the value conflict {conflict!r}",
            "write 'X vs Y' (choice A supports X, choice B supports Y) or a single value X",
        )
    pole, opposite = parsed
    choice_a, choice_b = required("choice_a"), required("choice_b")
    if choice_a == choice_b:
        raise VneuronError(f"{where}, row {n}: choice A and choice B are the same text", "make choice B the option that opposes the value")
    split = _cell(row.get("split")) or "train"
    if split not in SPLITS:
        raise VneuronError(f"{where}, row {n}: unknown split {split!r}", f"use one of: {', '.join(SPLITS)}")
    return Item(
        id=_cell(row.get("id")) or f"{stem}-{n}",
        dimension=pole,
        opposite=opposite or f"not {pole}",
        scenario=required("dilemma"),
        option_pole=choice_a,
        option_opposite=choice_b,
        language=_cell(row.get("language")) or DEFAULT_LANGUAGE,
        value=pole,
        opposite_value=opposite,
        split=split,
    )
