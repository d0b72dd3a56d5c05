"""LLM judges: a rubric per value dimension (G-Eval style), rated 1–7 from opposite pole to pole.

``OpenAIJudge`` asks any OpenAI-compatible chat-completions endpoint (temperature 0) and reads the
first digit of the answer; ``ModelJudge`` puts the same prompt to a model vneuron loads (locally, or
on NDIF through nnsight) and takes the expected rating from the likelihood of each answer " 1" … " 7".
The orientation is (rating − 4) / 3, in [−1, 1]. The prompt, its version and the model go into the
manifest (``describe``). Only the endpoint or remote the spec names is ever contacted.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from typing import Sequence

from vneuron.errors import VneuronError

PROMPT_VERSION = "rubric-1"
# what each pole means (Schwartz 1992, 2012), in the words the rubric shows
POLES = {
    "self_transcendence": "concern for the welfare of others and of nature: benevolence, care, honesty, fairness, tolerance",
    "self_enhancement": "pursuit of one's own success, status and power: achievement, ambition, wealth, dominance",
    "openness_to_change": "independence of thought and action and readiness for new experience: curiosity, freedom, novelty",
    "conservation": "order, self-restriction, preservation of the past and resistance to change: security, tradition, rules",
}
RUBRIC = (
    "You rate how strongly a response expresses one value rather than its opposite.\n"
    "Value A: {pole} — {pole_text}.\n"
    "Value B (the opposite): {opposite} — {opposite_text}.\n"
    "Rubric: 7 = clearly and only expresses A; 6 = mostly A; 5 = leans A; 4 = neither, both equally, or no value content; "
    "3 = leans B; 2 = mostly B; 1 = clearly and only expresses B.\n"
    "Read the response, then answer with one digit from 1 to 7 and nothing else."
)
USER = "Response:\n{text}\n\nRating (1-7):"
RATINGS = tuple(range(1, 8))


def _meaning(label: str | None) -> str:
    if label is None:
        return "anything that does not express value A"
    return POLES.get(label, f"the value '{label}'")


def rubric(pole: str, opposite: str | None) -> str:
    return RUBRIC.format(pole=pole, pole_text=_meaning(pole), opposite=opposite or f"not {pole}", opposite_text=_meaning(opposite))


def orientation(rating: float) -> float:
    return (rating - 4.0) / 3.0


class OpenAIJudge:
    """A rubric through an OpenAI-compatible endpoint (``POST URL/chat/completions``)."""

    name = "openai"

    def __init__(self, model: str, url: str, timeout: float = 60.0):
        self.model, self.url, self.timeout = model, url.rstrip("/"), timeout
        self.key = os.environ.get("VNEURON_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")

    def check(self, poles, languages) -> None:
        return None  # any value name and language: the rubric names them

    def _ask(self, system: str, text: str) -> int:
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 4,
                           "messages": [{"role": "system", "content": system}, {"role": "user", "content": USER.format(text=text)}]})
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(f"{self.url}/chat/completions", data=body.encode("utf-8"), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise VneuronError(f"The judge endpoint {self.url} answered HTTP {exc.code}",
                               "check the model name and the key (VNEURON_JUDGE_API_KEY)") from None
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
            raise VneuronError(f"The judge endpoint {self.url} cannot be reached or did not answer JSON ({exc})",
                               "check the URL of `judge` (openai:MODEL@URL)") from None
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise VneuronError(f"The judge endpoint {self.url} did not answer a chat completion", "point `judge` at /v1 of an "
                               "OpenAI-compatible server") from None
        match = re.search(r"[1-7]", content or "")
        if not match:
            raise VneuronError(f"The judge model answered {content!r}, not a rating 1–7", "use a model that follows the rubric")
        return int(match.group())

    def score(self, texts: Sequence[str], pole: str, opposite: str | None, language: str) -> list[float]:
        system = rubric(pole, opposite)
        return [orientation(self._ask(system, t)) for t in texts]

    def describe(self) -> dict:
        return {"name": self.name, "kind": "LLM rubric (OpenAI-compatible)", "model": self.model, "endpoint": self.url,
                "version": PROMPT_VERSION, "prompt": {"system": RUBRIC, "user": USER, "poles": POLES},
                "decoding": "temperature 0, first digit 1-7", "score": "(rating − 4) / 3, in [−1, 1]"}


class ModelJudge:
    """The rubric read from a model vneuron loads: the expected rating from the likelihood of each answer."""

    name = "model"

    def __init__(self, spec: str, remote: bool = False):
        self.spec, self.remote = spec, remote
        self._model = None

    def check(self, poles, languages) -> None:
        return None

    def _loaded(self):
        if self._model is None:
            from vneuron.models.loading import load_model

            model = load_model(self.spec, remote=True if self.remote else None)
            codes = {tuple(model.tokenizer(f" {r}", add_special_tokens=False)["input_ids"]) for r in RATINGS}
            if len(codes) < len(RATINGS):
                raise VneuronError(f"The judge model {self.spec} cannot tell the ratings 1–7 apart (its tokenizer gives "
                                   f"{len(codes)} distinct codes for them)", "use a language model with digits in its vocabulary")
            self._model = model
        return self._model

    def score(self, texts: Sequence[str], pole: str, opposite: str | None, language: str) -> list[float]:
        import torch

        from vneuron.validate.evaluate import continuation_logprobs

        model = self._loaded()
        system = rubric(pole, opposite)
        pairs = [(f"{system}\n\n{USER.format(text=t)}", f" {r}") for t in texts for r in RATINGS]
        lp = continuation_logprobs(model, pairs).reshape(len(texts), len(RATINGS))
        expected = (lp.softmax(-1) * torch.tensor(RATINGS, dtype=lp.dtype)).sum(-1)
        return [orientation(float(r)) for r in expected]

    def describe(self) -> dict:
        out = {"name": self.name, "kind": "LLM rubric (rating likelihoods)", "model": self.spec, "remote": self.remote,
               "version": PROMPT_VERSION, "prompt": {"system": RUBRIC, "user": USER, "poles": POLES},
               "score": "(E[rating] − 4) / 3 from the softmax over ' 1' … ' 7', in [−1, 1]"}
        if self._model is not None:
            out["revision"] = self._model.revision
        return out
