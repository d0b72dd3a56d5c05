"""Touché23-ValueEval (SemEval-2023 Task 4), the TSV release, as labelled texts per value axis.

A release directory holds ``arguments-<part>.tsv`` (columns ``Argument ID``, ``Conclusion``,
``Stance``, ``Premise``) and ``labels-<part>.tsv`` (``Argument ID`` + one 0/1 column per value
category, the 20 names in ``CATEGORIES``), for parts ``training``, ``validation`` and ``test``
(extra test sets such as ``test-nahjalbalagha`` work too: the part's first word decides the split).
The TSVs are unquoted: a ``"`` is an ordinary character.

Grouping (Kiesel et al.'s values.json, level 3): every category belongs to a Schwartz
higher-order dimension. On each axis (openness_to_change vs conservation, self_enhancement vs
self_transcendence) an argument is labelled with a pole when it carries at least one category of
that pole and none of the opposite pole; an argument carrying both poles of an axis is ambiguous
and dropped for that axis (counted in ``ToucheData.ambiguous``); one with neither gives nothing on
that axis. One argument can so yield one ``Text`` per axis (same text, group = argument id).

Boundary values: Hedonism (openness_to_change / self_enhancement), Face (self_enhancement /
conservation) and Humility (conservation / self_transcendence) sit on the border between two
adjacent dimensions of Schwartz's circle and belong to both in values.json. Counting them for
either side would make an argument about pleasure "openness" and "self-enhancement" at once, and
an argument about humility both "conservation" and "self-transcendence", blurring exactly the
contrast the neurons are ranked on — so by default they are ignored for pole assignment (the
argument still counts through its other categories). Pass ``ignore=()`` to count them for both
of their dimensions.

Splits: training and validation → "train", test → "test". Language "en".
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vneuron.data.files import read_text
from vneuron.data.schema import AXES, SHORT, Corpus, Text
from vneuron.errors import VneuronError

ID = "Argument ID"
ARGUMENT_COLUMNS = (ID, "Conclusion", "Stance", "Premise")

OC, CO, SE, ST = "openness_to_change", "conservation", "self_enhancement", "self_transcendence"
# level-2 value category → higher-order dimension(s), from Touché23's values.json (level3)
CATEGORIES: dict[str, tuple[str, ...]] = {
    "Self-direction: thought": (OC,),
    "Self-direction: action": (OC,),
    "Stimulation": (OC,),
    "Hedonism": (OC, SE),
    "Achievement": (SE,),
    "Power: dominance": (SE,),
    "Power: resources": (SE,),
    "Face": (SE, CO),
    "Security: personal": (CO,),
    "Security: societal": (CO,),
    "Tradition": (CO,),
    "Conformity: rules": (CO,),
    "Conformity: interpersonal": (CO,),
    "Humility": (CO, ST),
    "Benevolence: caring": (ST,),
    "Benevolence: dependability": (ST,),
    "Universalism: concern": (ST,),
    "Universalism: nature": (ST,),
    "Universalism: tolerance": (ST,),
    "Universalism: objectivity": (ST,),
}
BOUNDARY = ("Hedonism", "Face", "Humility")
TEXT_STYLES = ("premise", "full")
SPLIT_OF_PART = {"training": "train", "train": "train", "validation": "train", "valid": "train", "dev": "train", "test": "test"}


@dataclass
class ToucheData:
    """Texts plus what was counted on the way (keys: (split, dimension) or (split, axis))."""

    texts: list[Text] = field(default_factory=list)
    arguments: Counter = field(default_factory=Counter)  # split → arguments read
    labelled: Counter = field(default_factory=Counter)  # (split, dimension) → arguments given that pole
    ambiguous: Counter = field(default_factory=Counter)  # (split, axis) → arguments with both poles, dropped
    neither: Counter = field(default_factory=Counter)  # (split, axis) → arguments with no category on the axis


def _parts(path: Path, kind: str) -> dict[str, Path]:
    return {f.name[len(kind) + 1 : -len(".tsv")]: f for f in sorted(path.glob(f"{kind}-*.tsv")) if f.is_file()}


def is_touche_dir(path: Path) -> bool:
    """A directory holding at least one arguments-*.tsv and one labels-*.tsv."""
    path = Path(path)
    return path.is_dir() and bool(_parts(path, "arguments")) and bool(_parts(path, "labels"))


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(read_text(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise VneuronError(f"{path} is empty",
                           "use the files of the Touché23-ValueEval TSV release (a header row, then one row per argument)")
    header = [h.strip() for h in rows[0]]
    for n, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise VneuronError(
                f"{path}, row {n}: {len(row)} tab-separated fields, the header has {len(header)}",
                "separate fields by single tabs and keep tabs and line breaks out of the texts",
            )
    return header, rows[1:]


def _split_of(path: Path, part: str) -> str:
    split = SPLIT_OF_PART.get(part.split("-")[0].lower())
    if split is None:
        raise VneuronError(
            f"{path}: cannot tell the split from the file name part {part!r}",
            "name the files arguments-/labels-training|validation|test[-SOURCE].tsv",
        )
    return split


def _argument_id(row: list[str], where: dict[str, int], path: Path, n: int) -> str:
    argument = row[where[ID]].strip()
    if not argument:
        raise VneuronError(f"{path}, row {n}: empty {ID!r}", "fill in the argument id or drop the row")
    return argument


def _read_labels(path: Path) -> dict[str, set[str]]:
    header, rows = _read_tsv(path)
    if ID not in header:
        raise VneuronError(f"{path}: missing column {ID!r}; found {', '.join(header[:5])}...",
                           "use the labels-*.tsv files of the Touché23 TSV release")
    unknown = [h for h in header if h != ID and h not in CATEGORIES]
    if unknown:
        raise VneuronError(
            f"{path}: unknown label column {unknown[0]!r}",
            f"use the 20 value categories of Touché23 ({', '.join(list(CATEGORIES)[:3])}, ...); level-1 label files are not supported",
        )
    missing = [c for c in CATEGORIES if c not in header]
    if missing:
        raise VneuronError(f"{path}: missing label columns {', '.join(missing)}",
                           "use the complete labels-*.tsv file (20 value categories)")
    where = {h: i for i, h in enumerate(header)}
    labels: dict[str, set[str]] = {}
    for n, row in enumerate(rows, 2):
        argument = _argument_id(row, where, path, n)
        if argument in labels:
            raise VneuronError(f"{path}, row {n}: argument {argument} is listed twice", "keep one row per argument")
        present = set()
        for category in CATEGORIES:
            cell = row[where[category]].strip()
            if cell not in ("0", "1", "0.0", "1.0"):
                raise VneuronError(f"{path}, row {n}: label {category!r} is {cell!r}", "use 1 (the argument resorts to the value) or 0")
            if cell.startswith("1"):
                present.add(category)
        labels[argument] = present
    return labels


def read_touche(path: str | Path, *, text: str = "premise", ignore: tuple[str, ...] = BOUNDARY) -> ToucheData:
    """Read a Touché23 TSV release into labelled texts and the counts behind them (see module doc)."""
    path = Path(path)
    if text not in TEXT_STYLES:
        raise VneuronError(f"Unknown Touché23 text style {text!r}",
                           "use premise (the premise only) or full ('{Conclusion} ({Stance}): {Premise}')")
    unknown = [c for c in ignore if c not in CATEGORIES]
    if unknown:
        raise VneuronError(f"Unknown Touché23 value category {unknown[0]!r} to ignore", f"use names from: {', '.join(CATEGORIES)}")
    arguments, labels = _parts(path, "arguments"), _parts(path, "labels")
    if not arguments or not labels:
        raise VneuronError(f"{path} is not a Touché23 directory", "it must hold arguments-*.tsv and labels-*.tsv files")
    for part in labels:
        if part not in arguments:
            raise VneuronError(f"{labels[part]} has no arguments-{part}.tsv beside it",
                               f"add arguments-{part}.tsv or remove the labels file")
    data = ToucheData()
    seen: dict[str, Path] = {}
    for part, argument_file in arguments.items():
        if part not in labels:
            raise VneuronError(
                f"{argument_file} has no labels-{part}.tsv beside it",
                f"add labels-{part}.tsv (test labels are in the Zenodo version with complete test labels) or remove the arguments file",
            )
        split = _split_of(argument_file, part)
        part_labels = _read_labels(labels[part])
        header, rows = _read_tsv(argument_file)
        needed = (ID, "Premise") if text == "premise" else ARGUMENT_COLUMNS
        missing = [c for c in needed if c not in header]
        if missing:
            raise VneuronError(f"{argument_file}: missing columns {', '.join(missing)}; found {', '.join(header)}",
                               "use the arguments-*.tsv files of the Touché23 TSV release")
        where = {h: i for i, h in enumerate(header)}
        in_file = set()
        for n, row in enumerate(rows, 2):
            argument = _argument_id(row, where, argument_file, n)
            if argument in seen:
                raise VneuronError(f"{argument_file}, row {n}: argument {argument} also appears in {seen[argument].name}",
                                   "keep each argument in one file")
            seen[argument] = argument_file
            in_file.add(argument)
            if argument not in part_labels:
                raise VneuronError(f"{argument_file}, row {n}: argument {argument} has no row in {labels[part].name}",
                                   "use matching arguments and labels files")
            premise = row[where["Premise"]].strip()
            if not premise:
                raise VneuronError(f"{argument_file}, row {n}: empty 'Premise'", "fill in the premise or drop the argument from both files")
            if text == "full":
                body = f"{row[where['Conclusion']].strip()} ({row[where['Stance']].strip()}): {premise}"
            else:
                body = premise
            data.arguments[split] += 1
            poles = {d for c in part_labels[argument] if c not in ignore for d in CATEGORIES[c]}
            for axis, (a, b) in AXES.items():
                if a in poles and b in poles:
                    data.ambiguous[split, axis] += 1
                    continue
                label = a if a in poles else b if b in poles else None
                if label is None:
                    data.neither[split, axis] += 1
                    continue
                data.labelled[split, label] += 1
                data.texts.append(Text(id=f"{argument}:{SHORT[label]}", label=label, text=body, language="en", group=argument, split=split))
        extra = sorted(set(part_labels) - in_file)
        if extra:
            raise VneuronError(f"{labels[part]}: argument {extra[0]} has no row in {argument_file.name}",
                               "use matching arguments and labels files")
    data.texts.sort(key=lambda t: t.split != "train")  # stable: train first, file order within
    return data


def load_touche(path: str | Path, *, text: str = "premise", ignore: tuple[str, ...] = BOUNDARY) -> Corpus:
    """A Corpus of labelled texts (the four higher-order dimensions) from a Touché23 TSV release."""
    path = Path(path)
    texts = read_touche(path, text=text, ignore=ignore).texts
    present = Counter(t.label for t in texts)
    for a, b in AXES.values():
        for pole, other in ((a, b), (b, a)):
            if present[other] and not present[pole]:
                raise VneuronError(
                    f"Touché23 directory {path}: pole {pole!r} has no texts (no argument carries only its values on that axis)",
                    f"add arguments labelled with {pole} values, or count the boundary values with ignore=()",
                )
    return Corpus(name=path.name, texts=texts)
