"""The C-voice format (ValueExploration): value conflicts as dilemmas with two choices.

A C-voice file (.csv, .tsv, .xlsx, .jsonl, .json; Chinese by default) has one row per dilemma.
The C-voice release has two layouts, both read as they are:

- per-value files ``<value>-final.xlsx``: one sheet, columns 冲突类型 ("友善 vs 个人财富积累"),
  决策困境 (the dilemma), 选择A ("A. …", supports the value), 选择B ("B. …", opposes it) and
  判决困境 (a second form of the dilemma, often empty; used only where 决策困境 is empty);
- the test file: one sheet per value (named by it), columns Type ("X vs Y"), Context, Action1
  (supports X) and Action2.


===========  =====================================================================================
field        accepted header names
===========  =====================================================================================
value        value, values, conflict, conflict_type, value_conflict, type, 价值观, 价值, 冲突类型, 价值冲突
dilemma      dilemma, context, 困境, 决策困境, 情境, 情景, 场景, 问题
dilemma_alt  判决困境, dilemma2                           (optional; the dilemma where the first is empty)
choice_a     choice_a, option_a, action1, action_a, 选项A, 选择A, 选项一   (supports the value X)
choice_b     choice_b, option_b, action2, action_b, 选项B, 选择B, 选项二   (opposes it / supports Y)
id           id, 编号, 序号                               (optional; default FILE-ROW)
language     language, lang, 语言                         (optional; default zh if the dilemma has Chinese characters, else en)
split        split, 划分                                  (optional; train or test; without it, a hash of the id decides)
===========  =====================================================================================

Header names are compared after Unicode NFKC normalisation (full-width Ａ is A), lower-casing and
removing spaces, underscores and hyphens: ``Choice A``, ``choice-a`` and ``CHOICE_A`` are all
``choice_a``. ``--columns choice_a=MyColumn`` maps any other name. A file is C-voice when its
header has all four of value, dilemma, choice_a and choice_b (and is not the paired-scenario
layout: a header with scenario, option_pole, option_opposite and dimension is read as that).

The value cell is ``X vs Y`` (the separator ``vs``, ``vs.``, ``v.s.`` or ``VS`` in any case, with or
without spaces, but not inside a Latin word): the dilemma pits X against Y, choice A supports X.
A bare ``X`` means X against ``not X``. A choice's letter prefix ("A. ", "A．", "A)", "(A)",
"（A）", "A、", "A:" — the letter of its own column; "1." / "2." for Action1 / Action2) is
removed, so the pole's option does not always begin with the same letter.

Each row becomes an ``Item`` for its *conflict*: dimension = "X|Y", opposite = "Y|X"
(``pair_label``), value = X, opposite_value = Y, scenario = the dilemma, option_pole = choice A,
option_opposite = choice B. Several conflicts of one value (友善 against four different values)
therefore stay separate pole pairs with their own statistics and neuron sets; a bare X gives
X against "not X". The whole value against all its conflicts is the derived pole "X|*"
(``aggregate_label``; see ``Corpus.aggregates``). The corpus carries the pairs found, and their
reverses, as explicit contrasts.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Iterable

from vneuron.data.schema import SPLITS, UNSPLIT, Item, pair_label
from vneuron.errors import VneuronError

ALIASES: dict[str, tuple[str, ...]] = {
    "value": ("value", "values", "conflict", "conflict_type", "value_conflict", "type", "价值观", "价值", "冲突类型", "价值冲突"),
    "dilemma": ("dilemma", "context", "困境", "决策困境", "情境", "情景", "场景", "问题"),
    "dilemma_alt": ("判决困境", "dilemma2", "dilemma_alt"),
    "choice_a": ("choice_a", "option_a", "action1", "action_a", "选项A", "选择A", "选项一"),
    "choice_b": ("choice_b", "option_b", "action2", "action_b", "选项B", "选择B", "选项二"),
    "id": ("id", "编号", "序号"),
    "language": ("language", "lang", "语言"),
    "split": ("split", "划分"),
}
REQUIRED = ("value", "dilemma", "choice_a", "choice_b")
DEFAULT_LANGUAGE = "zh"
# "A. ", "A．", "A)", "A、", "A:", "(A)", "（A）", "[A]" … before a choice's text (NFKC folds full-width forms)
_PREFIX = r"^\s*(?:[(\[]\s*{m}\s*[)\]]\s*[.:、]?|{m}\s*[.:、)\]])(?=\s|[^A-Za-z0-9]|$)\s*"
_PREFIXES = {
    "choice_a": re.compile(_PREFIX.format(m="(?:A|1)")),
    "choice_b": re.compile(_PREFIX.format(m="(?:B|2)")),
}
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
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


def strip_prefix(text: str, field: str) -> str:
    """A choice's text without its letter prefix ("A. …" → "…"); unchanged if it has none."""
    folded = unicodedata.normalize("NFKC", text)
    match = _PREFIXES[field].match(folded)
    end = match.end() if match else 0
    if not end or unicodedata.normalize("NFKC", text[:end]) != folded[:end]:  # no prefix, or not one char per char
        return text
    return text[end:].strip() or text


def _language(row: dict[str, Any]) -> str:
    """zh when the dilemma holds Chinese characters (the release's default), else en."""
    text = str(row.get("dilemma") or "")
    return DEFAULT_LANGUAGE if _CJK.search(text) else "en"


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def cvoice_item(where: str, stem: str, n: int, row: dict[str, Any], names: dict[str, str] | None = None) -> Item:
    """One C-voice row (already keyed by field name) → Item; a defect is a one-line error.

    ``names`` maps each field to the file's own column name (Type, Action1, 冲突类型 …), for messages.
    """
    column = lambda field: (names or {}).get(field, field)  # noqa: E731

    def required(field: str) -> str:
        value = _cell(row.get(field))
        if value is None:
            raise VneuronError(f"{where}, row {n}: empty {column(field)!r} (C-voice)", f"fill in {column(field)} or drop the row")
        return value

    if _cell(row.get("dilemma")) is None and _cell(row.get("dilemma_alt")) is not None:
        row = {**row, "dilemma": row["dilemma_alt"]}
    conflict = required("value")
    parsed = parse_conflict(conflict)
    if parsed is None:
        raise VneuronError(
            f"{where}, row {n}: cannot read the value conflict {conflict!r} in {column('value')}",
            f"write 'X vs Y' ({column('choice_a')} supports X, {column('choice_b')} supports Y) or a single value X",
        )
    pole, opposite = parsed
    choice_a, choice_b = strip_prefix(required("choice_a"), "choice_a"), strip_prefix(required("choice_b"), "choice_b")
    if choice_a == choice_b:
        raise VneuronError(f"{where}, row {n}: {column('choice_a')} and {column('choice_b')} are the same text",
                           f"make {column('choice_b')} the option that opposes the value")
    split = _cell(row.get("split")) or UNSPLIT
    if split not in (*SPLITS, UNSPLIT):
        raise VneuronError(f"{where}, row {n}: unknown {column('split')} {split!r}", f"use one of: {', '.join(SPLITS)}")
    return Item(
        id=_cell(row.get("id")) or f"{stem}-{n}",
        dimension=pair_label(pole, opposite) if opposite else pole,
        opposite=pair_label(opposite, pole) if opposite else f"not {pole}",
        scenario=required("dilemma"),
        option_pole=choice_a,
        option_opposite=choice_b,
        language=_cell(row.get("language")) or _language(row),
        value=pole,
        opposite_value=opposite,
        split=split,
    )
