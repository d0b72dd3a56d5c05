"""The corpus data model: paired value scenarios, labelled texts, and the prompts built from them.

Everything downstream sees only ``Prompt`` objects: a text, the character span whose tokens are
counted, the label of the value it expresses, and the group (scenario) it belongs to. Statistics
are gathered per label; a *contrast* pairs a pole label with its opposite label.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable

from vneuron.errors import VneuronError

DIMENSIONS = ("openness_to_change", "conservation", "self_enhancement", "self_transcendence")
OPPOSITE = {
    "openness_to_change": "conservation",
    "conservation": "openness_to_change",
    "self_enhancement": "self_transcendence",
    "self_transcendence": "self_enhancement",
}
AXES = {
    "openness_vs_conservation": ("openness_to_change", "conservation"),
    "enhancement_vs_transcendence": ("self_enhancement", "self_transcendence"),
}
SHORT = {"openness_to_change": "OC", "conservation": "CO", "self_enhancement": "SE", "self_transcendence": "ST"}
SPLITS = ("train", "test")
UNSPLIT = ""  # a loaded row without a split; ``assign_splits`` decides it by a hash of the id
DEFAULT_TEST_FRACTION = 0.2
PAIR, ANY = "|", "*"  # "X|Y": value X in its conflict with Y; "X|*": X against all its conflicts


def pair_label(value: str, opposite: str) -> str:
    """The pole label of ``value`` in its conflict with ``opposite``: "X|Y"."""
    return f"{value}{PAIR}{opposite}"


def aggregate_label(value: str) -> str:
    """The derived pole of ``value`` against all its conflicts, "X|*"; its opposite is "*|X"."""
    return f"{value}{PAIR}{ANY}"


def aggregate_opposite(value: str) -> str:
    return f"{ANY}{PAIR}{value}"


def held_out(key: str, fraction: float) -> bool:
    """Deterministic held-out membership: SHA-256 of ``key`` as a number in [0, 1) below ``fraction``."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:16], 16) / 16**16 < fraction

# Prompt-mode templates (the action read after the scenario) live in vneuron/data/templates.py.
# Generation-mode template (ValueLocate / ValueInsight style value conditioning).
CONDITIONED_TEMPLATES = {
    "en": (
        "Below is a value and a question. Answer the question as a person who holds this value.\n"
        "Value: {description}\nQuestion: {scenario}\nAnswer:"
    ),
    "zh": "下面是一种价值观和一个问题。请以持有这种价值观的人的身份回答问题。\n价值观：{description}\n问题：{scenario}\n回答：",
}


@dataclass(frozen=True)
class Item:
    """A behavioural scenario with one action expressing ``dimension`` and one its opposite."""

    id: str
    dimension: str
    opposite: str
    scenario: str
    option_pole: str
    option_opposite: str
    language: str = "en"
    value: str | None = None
    value19: str | None = None
    opposite_value: str | None = None
    setting: str | None = None
    split: str = "train"


@dataclass(frozen=True)
class Text:
    """A single text expressing the value ``label`` (e.g. an argument from Touché23)."""

    id: str
    label: str
    text: str
    language: str = "en"
    group: str | None = None
    split: str = "train"


@dataclass(frozen=True)
class Prompt:
    """What the model reads. ``span`` is the character range whose tokens count (None: all)."""

    text: str
    label: str
    group: str
    id: str
    span: tuple[int, int] | None = None


@dataclass
class Corpus:
    """Paired items and/or labelled texts, plus per-label value descriptions."""

    name: str
    items: list[Item] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)
    descriptions: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # language → label → texts
    contrasts: list[tuple[str, str]] | None = None
    split_source: dict | None = None  # how items got their split: a column, or a hash of the id (assign_splits)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # contrasts left without texts by select()
    skipped: list[dict] = field(default_factory=list)  # incomplete rows left out: {"where", "row", "empty": [file's columns]}
    relabelled: list[dict] = field(default_factory=list)  # a value's sheet rows whose conflict lacks that value
    notes: list[str] = field(default_factory=list)  # what a reader of the results must be told about the data

    # -- what it holds -------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        seen = Counter()
        for item in self.items:
            seen[item.dimension] += 1
            seen[item.opposite] += 1
        for text in self.texts:
            seen[text.label] += 1
        order = {d: i for i, d in enumerate(DIMENSIONS)}
        return sorted(seen, key=lambda label: (order.get(label, len(order)), label))

    @property
    def languages(self) -> list[str]:
        return sorted({i.language for i in self.items} | {t.language for t in self.texts})

    def __len__(self) -> int:
        return len(self.items) + len(self.texts)

    def pole_contrasts(self) -> list[tuple[str, str]]:
        """(pole, opposite) label pairs to compare: given, Schwartz partners, or the only two labels."""
        if self.contrasts:
            return list(self.contrasts)
        labels = self.labels
        if labels and all(label in OPPOSITE for label in labels):
            return [(label, OPPOSITE[label]) for label in labels if OPPOSITE[label] in labels]
        pairs = {(i.dimension, i.opposite) for i in self.items}
        if pairs:
            return sorted(pairs | {(b, a) for a, b in pairs})
        if len(labels) == 2:
            return [(labels[0], labels[1]), (labels[1], labels[0])]
        raise VneuronError(
            f"Corpus {self.name!r} has labels {labels} and no way to pair them into poles",
            "pass `contrasts`, e.g. kind:unkind",
        )

    def aggregates(self) -> dict[str, list[str]]:
        """Derived poles of conflict-labelled ("X|Y") items: "X|*" → every label on X's side, "*|X" → every
        label opposing X. Their statistics are sums over those labels (``ActivationStats.groups``)."""
        out: dict[str, set] = {}
        for item in self.items:
            if item.value and item.opposite_value and item.dimension == pair_label(item.value, item.opposite_value):
                for value, mine, theirs in ((item.value, item.dimension, item.opposite),
                                            (item.opposite_value, item.opposite, item.dimension)):
                    out.setdefault(aggregate_label(value), set()).add(mine)
                    out.setdefault(aggregate_opposite(value), set()).add(theirs)
        return {label: sorted(members) for label, members in sorted(out.items())}

    def whole_values(self, values: Iterable[str] | None = None) -> "Corpus":
        """The corpus with the contrast "X|*" vs "*|X" added for each value X (default: every value with
        two or more conflicts): the value against all its conflicts, beside the per-conflict pairs."""
        aggregates = self.aggregates()
        if values is None:
            wanted = [label for label, members in aggregates.items() if not label.startswith(ANY) and len(members) > 1]
        else:
            wanted = [v if v.endswith(PAIR + ANY) else aggregate_label(v) for v in values]
            unknown = [w for w in wanted if w not in aggregates]
            if unknown:
                raise VneuronError(f"Corpus {self.name!r} has no value conflicts for {', '.join(unknown)}",
                                   "whole-value poles need C-voice rows 'X vs Y'; check the value's spelling")
        added = [(w, aggregate_opposite(w[: -len(PAIR + ANY)])) for w in wanted]
        contrasts = list(self.pole_contrasts())
        return replace(self, contrasts=contrasts + [c for c in added if c not in contrasts])

    def groups(self) -> dict[str, list[str]]:
        """The derived labels this corpus's contrasts use, with the labels they sum over."""
        aggregates = self.aggregates()
        used = {label for pair in (self.contrasts or []) for label in pair}
        return {label: members for label, members in aggregates.items() if label in used}

    def content_hash(self) -> str:
        """SHA-256 of the corpus content (order-independent of file layout, not of item order)."""
        digest = hashlib.sha256()
        for record in self.records():
            digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
        return digest.hexdigest()

    def records(self) -> Iterable[dict]:
        for item in self.items:
            yield {"kind": "item", **asdict(item)}
        for text in self.texts:
            yield {"kind": "text", **asdict(text)}
        for language, per_label in sorted(self.descriptions.items()):
            for label, texts in sorted(per_label.items()):
                yield {"kind": "descriptions", "language": language, "label": label, "texts": texts}

    def counts(self) -> dict[str, dict[str, int]]:
        """Texts per label and split (each paired item gives one text to each of its two labels)."""
        table: dict[str, Counter] = {}
        for item in self.items:
            for label in (item.dimension, item.opposite):
                table.setdefault(label, Counter())[item.split] += 1
        for text in self.texts:
            table.setdefault(text.label, Counter())[text.split] += 1
        return {label: dict(c) for label, c in table.items()}

    # -- narrowing -----------------------------------------------------------------------
    def select(
        self,
        *,
        split: str | None = None,
        language: str | None = None,
        dimensions: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> "Corpus":
        """A sub-corpus; ``dimensions`` keeps items and texts touching any of those labels."""
        items, texts = self.items, self.texts
        if split and split != "all":
            if split not in SPLITS:
                raise VneuronError(f"Unknown split {split!r}", "use train, test or all")
            items = [i for i in items if i.split == split]
            texts = [t for t in texts if t.split == split]
        if language and language != "all":
            present = sorted({i.language for i in items} | {t.language for t in texts})
            items = [i for i in items if i.language == language]
            texts = [t for t in texts if t.language == language]
            if not items and not texts:
                where = f" in split {split!r}" if split and split != "all" else ""
                if where and not present:
                    raise VneuronError(f"Corpus {self.name!r} has nothing in split {split!r} (every row is in another split)",
                                       "use `split` all, or change `test_fraction` (a hash of each item's id decides the split)")
                raise VneuronError(f"Corpus {self.name!r} has nothing in language {language!r}{where}",
                                   f"use one of: {', '.join(present) or 'none'}")
        contrasts = self.contrasts
        aggregates = self.aggregates()
        if dimensions:
            wanted = set()
            for d in dimensions:  # a bare value of conflict labels ("友善") means its whole-value pole "友善|*"
                wanted.add(aggregate_label(d) if d not in self.labels and aggregate_label(d) in aggregates else d)
            whole = {w for w in wanted if w in aggregates and w not in self.labels}
            source = self.whole_values(whole) if whole else self
            unknown = wanted - set(self.labels) - whole
            if unknown:
                raise VneuronError(
                    f"Corpus {self.name!r} has no label {', '.join(sorted(unknown))}",
                    f"use one of: {', '.join(self.labels)}",
                )
            partners = {b for a, b in source.pole_contrasts() if a in wanted}
            keep = wanted | partners
            keep |= {m for label in keep for m in aggregates.get(label, ())}
            items = [i for i in items if i.dimension in keep or i.opposite in keep]
            texts = [t for t in texts if t.label in keep]
            contrasts = [c for c in source.pole_contrasts() if c[0] in wanted]
        if limit:
            items = _per_label_head(items, lambda i: i.dimension, limit)
            texts = _per_label_head(texts, lambda t: t.label, limit)
        dropped = list(self.dropped)
        if contrasts:  # a pole left without texts (split, language, limit) cannot be contrasted: drop it, say so
            present = {l for i in items for l in (i.dimension, i.opposite)} | {t.label for t in texts}
            has = lambda label: label in present or any(m in present for m in aggregates.get(label, ()))  # noqa: E731
            kept = [c for c in contrasts if has(c[0]) and has(c[1])]
            dropped += [c for c in contrasts if c not in kept]
            contrasts = kept
        return replace(self, items=list(items), texts=list(texts), contrasts=contrasts, dropped=dropped)

    def assign_splits(self, fraction: float = DEFAULT_TEST_FRACTION) -> "Corpus":
        """Items and texts loaded without a split go to test when a hash of their id (text: group) falls below
        ``fraction``, else to train: the same held-out set on every machine and every run."""
        if not 0 <= fraction < 1:
            raise VneuronError(f"`test_fraction` must be in [0, 1), got {fraction}", "e.g. 0.2")
        pick = lambda key: "test" if held_out(key, fraction) else "train"  # noqa: E731
        unsplit = sum(i.split == UNSPLIT for i in self.items) + sum(t.split == UNSPLIT for t in self.texts)
        items = [replace(i, split=pick(i.id)) if i.split == UNSPLIT else i for i in self.items]
        texts = [replace(t, split=pick(t.group or t.id)) if t.split == UNSPLIT else t for t in self.texts]
        if not unsplit:
            source = {"kind": "column", "note": "splits as given in the data"}
        else:
            test = sum(i.split == "test" for i, old in zip(items, self.items) if old.split == UNSPLIT)
            test += sum(t.split == "test" for t, old in zip(texts, self.texts) if old.split == UNSPLIT)
            source = {"kind": "hash", "test_fraction": fraction, "assigned": unsplit, "assigned_test": test,
                      "note": f"{unsplit} rows had no split column: {test} held out as test by SHA-256 of their id "
                              f"(test fraction {fraction:g})"}
        return replace(self, items=items, texts=texts, split_source=source)

    # -- prompts -------------------------------------------------------------------------
    def action_prompts(self, span: str = "option", *, template=None) -> list[Prompt]:
        """Prompt mode: each item gives the scenario followed by each of its two actions.

        ``template`` (a preset name, a template string or a ``templates.ChoiceTemplate``; default
        the third-person "The right thing to do is to …") frames the action.
        """
        from vneuron.data.templates import choice_template

        if span not in ("option", "all"):
            raise VneuronError(f"Unknown span {span!r}", "use option or all")
        chosen = choice_template(template)
        prompts = []
        for item in self.items:
            for label, option, side in ((item.dimension, item.option_pole, "pole"), (item.opposite, item.option_opposite, "opposite")):
                prefix, tail = chosen.action(item.language, item.scenario)
                text = prefix + option + tail
                where = (len(prefix), len(prefix) + len(option)) if span == "option" else None
                prompts.append(Prompt(text, label, item.id, f"{item.id}:{side}", where))
        for text in self.texts:
            prompts.append(Prompt(text.text, text.label, text.group or text.id, text.id, None))
        return prompts

    def conditioned_prompts(self) -> list[Prompt]:
        """Generation mode: each scenario asked under a description of each of its two values."""
        prompts = []
        for n, item in enumerate(self.items):
            template = CONDITIONED_TEMPLATES.get(item.language, CONDITIONED_TEMPLATES["en"])
            for label, side in ((item.dimension, "pole"), (item.opposite, "opposite")):
                description = self._description(item.language, label, n)
                text = template.format(description=description, scenario=item.scenario)
                prompts.append(Prompt(text, label, item.id, f"{item.id}:{side}", None))
        if self.texts and not self.items:
            raise VneuronError(
                f"Corpus {self.name!r} holds labelled texts, not scenarios",
                "generation mode needs scenario items; use `mode` prompt for labelled texts",
            )
        return prompts

    def _description(self, language: str, label: str, n: int) -> str:
        options = self.descriptions.get(language, {}).get(label) or self.descriptions.get("en", {}).get(label)
        if not options:
            raise VneuronError(
                f"Corpus {self.name!r} has no value description for {label!r} in {language!r}",
                "add descriptions (a *.descriptions.jsonl file beside the corpus) or use `mode` prompt",
            )
        return options[n % len(options)]


def expresses(item: Item, label: str) -> bool | None:
    """True if ``item``'s pole option expresses ``label``, False if its opposite option does, None if neither.

    A whole-value pole "X|*" is expressed by the side of every conflict that holds value X.
    """
    if label in (item.dimension, item.opposite):
        return label == item.dimension
    if label.endswith(PAIR + ANY) and item.value and item.opposite_value \
            and item.dimension == pair_label(item.value, item.opposite_value):
        value = label[: -len(PAIR + ANY)]
        if value in (item.value, item.opposite_value):
            return value == item.value
    return None


def _per_label_head(rows, key, limit):
    seen: Counter = Counter()
    kept = []
    for row in rows:
        if seen[key(row)] < limit:
            seen[key(row)] += 1
            kept.append(row)
    return kept
