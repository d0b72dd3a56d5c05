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

from ..errors import VneuronError

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

# Prompt-mode template: the option's text is read as the continuation of the scenario.
ACTION_TEMPLATES = {
    "en": "{scenario}\nThe right thing to do is to {option}.",
    "zh": "{scenario}\n我会{option}。",
}
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
            "pass contrasts, e.g. --contrast kind:unkind",
        )

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
            items = [i for i in items if i.language == language]
            texts = [t for t in texts if t.language == language]
            if not items and not texts:
                raise VneuronError(
                    f"Corpus {self.name!r} has nothing in language {language!r}",
                    f"use one of: {', '.join(self.languages) or 'none'}",
                )
        contrasts = self.contrasts
        if dimensions:
            wanted = set(dimensions)
            unknown = wanted - set(self.labels)
            if unknown:
                raise VneuronError(
                    f"Corpus {self.name!r} has no label {', '.join(sorted(unknown))}",
                    f"use one of: {', '.join(self.labels)}",
                )
            partners = {b for a, b in self.pole_contrasts() if a in wanted}
            keep = wanted | partners
            items = [i for i in items if i.dimension in keep or i.opposite in keep]
            texts = [t for t in texts if t.label in keep]
            contrasts = [c for c in self.pole_contrasts() if c[0] in wanted]
        if limit:
            items = _per_label_head(items, lambda i: i.dimension, limit)
            texts = _per_label_head(texts, lambda t: t.label, limit)
        return replace(self, items=list(items), texts=list(texts), contrasts=contrasts)

    # -- prompts -------------------------------------------------------------------------
    def action_prompts(self, span: str = "option") -> list[Prompt]:
        """Prompt mode: each item gives the scenario followed by each of its two actions."""
        if span not in ("option", "all"):
            raise VneuronError(f"Unknown span {span!r}", "use option or all")
        prompts = []
        for item in self.items:
            template = ACTION_TEMPLATES.get(item.language, ACTION_TEMPLATES["en"])
            for label, option, side in ((item.dimension, item.option_pole, "pole"), (item.opposite, item.option_opposite, "opposite")):
                head, _, tail = template.partition("{option}")
                prefix = head.format(scenario=item.scenario)
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
                "generation mode needs scenario items; use --mode prompt for labelled texts",
            )
        return prompts

    def _description(self, language: str, label: str, n: int) -> str:
        options = self.descriptions.get(language, {}).get(label) or self.descriptions.get("en", {}).get(label)
        if not options:
            raise VneuronError(
                f"Corpus {self.name!r} has no value description for {label!r} in {language!r}",
                "add descriptions (a *.descriptions.jsonl file beside the corpus) or use --mode prompt",
            )
        return options[n % len(options)]


def _per_label_head(rows, key, limit):
    seen: Counter = Counter()
    kept = []
    for row in rows:
        if seen[key(row)] < limit:
            seen[key(row)] += 1
            kept.append(row)
    return kept
