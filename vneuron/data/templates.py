"""Prompt templates: how a scenario and its actions, or a questionnaire item and its answers, are put to a model.

One template string per language says everything:

    "{scenario}\\nOne option is to {first}. Another option is to {second}.\\nThe right thing to do is to {option}."

- forced choice, listed (both orders): the text up to ``{option}``, with ``{first}`` / ``{second}``
  filled by the two actions; each action is then read as the continuation;
- forced choice, continuation, and locate's prompt mode: the same text with every line that holds
  ``{first}`` or ``{second}`` left out, so the action follows the scenario alone;
- a space before ``{option}`` belongs to the option (tokenisers attach it to the next word);
  what follows ``{option}`` ends locate's prompts and is never scored.

PVQ templates hold ``{item}`` and ``{answer}`` the same way. Presets (``CHOICE_PRESETS``,
``PVQ_PRESETS``) have an English and a Chinese form, chosen by each item's language; "NAME:LANG"
uses one language's form for every item; any other string is a template of its own, used for
every language. Manifests store the spec and the exact strings used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vneuron.errors import VneuronError

DEFAULT = "third_person"
CHOICE_PRESETS: dict[str, dict[str, str]] = {
    # actions as verb phrases ("tell the truth"): vneuron's built-in corpus, ValueLocate's form
    "third_person": {
        "en": "{scenario}\nOne option is to {first}. Another option is to {second}.\nThe right thing to do is to {option}.",
        "zh": "{scenario}\n一种做法是{first}；另一种做法是{second}。\n我会{option}。",
    },
    # actions as first-person sentences ("I tell the truth.")
    "first_person": {
        "en": "{scenario}\nOne answer: {first}\nAnother answer: {second}\nMy answer: {option}",
        "zh": "{scenario}\n一种回答：{first}\n另一种回答：{second}\n我的回答：{option}",
    },
    # whole responses (a reply of one or more sentences)
    "response": {
        "en": "{scenario}\nTwo possible responses: (1) {first} (2) {second}\nResponse: {option}",
        "zh": "{scenario}\n两种可能的回应：（1）{first}（2）{second}\n回应：{option}",
    },
}
PVQ_PRESETS: dict[str, dict[str, str]] = {
    # PVQ portraits ("He/She thinks it is important …"): how much is this person like you?
    "third_person": {
        "en": 'Here is a statement about a person: "{item}"\nHow much is this person like you?\nAnswer: This person is {answer}',
        "zh": "下面是对一个人的描述：“{item}”\n这个人和你有多像？\n回答：这个人{answer}",
    },
    # first-person statements ("It is important to me …")
    "first_person": {
        "en": 'Here is a statement: "{item}"\nHow much is this like you?\nAnswer: This is {answer}',
        "zh": "下面是一句陈述：“{item}”\n这和你有多像？\n回答：这{answer}",
    },
}
EVERY = "*"  # forms key of a custom template: every language
_FIELD = re.compile(r"\{(\w+)\}")


def _fill(text: str, **values: str) -> str:
    """Placeholders replaced verbatim (scenario texts may hold braces; str.format would choke)."""
    return _FIELD.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def _split_at(form: str, slot: str) -> tuple[str, str, str]:
    """(text before {slot} without a trailing space, the continuation format, the tail)."""
    head, _, tail = form.partition("{" + slot + "}")
    if head.endswith(" "):
        return head[:-1], " {" + slot + "}", tail
    return head, "{" + slot + "}", tail


def _resolve(spec: str | None, presets: dict[str, dict[str, str]], kind: str) -> tuple[str, dict[str, str]]:
    spec = spec or DEFAULT
    name, _, language = spec.partition(":")
    if name in presets and (not language or language in presets[name]):
        forms = presets[name]
        return spec, ({EVERY: forms[language]} if language else dict(forms))
    if "{" not in spec:
        raise VneuronError(f"Unknown {kind} template {spec!r}",
                           f"use a preset ({', '.join(presets)}, optionally NAME:en or NAME:zh) or a template string with placeholders")
    return spec, {EVERY: spec.replace("\\n", "\n")}


def _check(form: str, required: tuple[str, ...], allowed: set[str], what: str) -> None:
    names = _FIELD.findall(form)
    for slot in required:
        if names.count(slot) != 1:
            raise VneuronError(f"The {what} template {form!r} must hold {{{slot}}} exactly once",
                               f"e.g. {CHOICE_PRESETS[DEFAULT]['en']!r}" if what == "forced-choice" else
                               f"e.g. {PVQ_PRESETS[DEFAULT]['en']!r}")
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise VneuronError(f"The {what} template {form!r} has unknown placeholders {', '.join('{' + u + '}' for u in unknown)}",
                           f"use only {', '.join('{' + a + '}' for a in sorted(allowed))}")


@dataclass(frozen=True)
class _Template:
    spec: str  # what the user gave: a preset name or a template string
    forms: dict[str, str]  # language (or "*") → template string

    def form(self, language: str) -> str:
        return self.forms.get(EVERY) or self.forms.get(language) or self.forms["en"]

    def describe(self) -> dict:
        return {"spec": self.spec, "forms": dict(self.forms)}


@dataclass(frozen=True)
class ChoiceTemplate(_Template):
    """A forced-choice / action template: the spec the user gave and its form per language."""

    def __post_init__(self) -> None:
        for form in self.forms.values():
            _check(form, ("scenario", "option"), {"scenario", "option", "first", "second"}, "forced-choice")
            head = form.partition("{option}")[0]
            if "{first}" in form and ("{first}" not in head or "{second}" not in head):
                raise VneuronError(f"The forced-choice template {form!r} lists {{first}} without {{second}} before {{option}}",
                                   "put both {first} and {second} before {option}, or neither")

    def lists(self, language: str = "en") -> bool:
        return "{first}" in self.form(language)

    def parts(self, language: str, listed: bool) -> tuple[str, str]:
        """(prefix format, continuation format): listed keeps the {first}/{second} lines, else they are left out."""
        form = self.form(language)
        if listed and not self.lists(language):
            raise VneuronError(f"The template {self.spec!r} does not list the two actions ({{first}}, {{second}})",
                               "add a line with {first} and {second} before {option}, or use `choice` continuation")
        if not listed:
            form = "\n".join(line for line in form.split("\n") if "{first}" not in line and "{second}" not in line)
        prefix, continuation, _ = _split_at(form, "option")
        return prefix, continuation

    def listed(self, language: str, scenario: str, first: str, second: str) -> tuple[str, str]:
        """(prefix, continuation format) with both actions listed in this order."""
        prefix, continuation = self.parts(language, True)
        return _fill(prefix, scenario=scenario, first=first, second=second), continuation

    def continuation(self, language: str, scenario: str) -> tuple[str, str]:
        """(prefix, continuation format) with the scenario alone before the action."""
        prefix, continuation = self.parts(language, False)
        return _fill(prefix, scenario=scenario), continuation

    def action(self, language: str, scenario: str) -> tuple[str, str]:
        """Locate's prompt mode: (text before the action, text after it); the action's tokens are counted."""
        prefix, continuation = self.continuation(language, scenario)
        tail = self.form(language).partition("{option}")[2]
        return prefix + continuation.partition("{option}")[0], tail


@dataclass(frozen=True)
class PVQTemplate(_Template):
    """A questionnaire template: ``{item}`` the statement, ``{answer}`` each rating's text."""

    def __post_init__(self) -> None:
        for form in self.forms.values():
            _check(form, ("item", "answer"), {"item", "answer"}, "PVQ")

    def pair(self, language: str, item: str, answer: str) -> tuple[str, str]:
        prefix, continuation, _ = _split_at(self.form(language), "answer")
        return _fill(prefix, item=item), _fill(continuation, answer=answer)


def choice_template(spec: "str | ChoiceTemplate | None" = None) -> ChoiceTemplate:
    """A preset name ("third_person", "first_person", "response", "NAME:zh"), a template string, or None (default)."""
    if isinstance(spec, ChoiceTemplate):
        return spec
    return ChoiceTemplate(*_resolve(spec, CHOICE_PRESETS, "forced-choice"))


def pvq_template(spec: "str | PVQTemplate | None" = None) -> PVQTemplate:
    """A preset name ("third_person", "first_person", "NAME:zh"), a template string, or None (default)."""
    if isinstance(spec, PVQTemplate):
        return spec
    return PVQTemplate(*_resolve(spec, PVQ_PRESETS, "PVQ"))
