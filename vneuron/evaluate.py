"""Measuring value orientation: continuation likelihoods, forced choice, PVQ, generations.

Small models cannot answer with letters (they prefer whichever letter comes first), so choices
are read from the likelihood of each option's *text* as the continuation of the prompt, length
normalised (mean log-probability per token), in both option orders.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .capture import _pack, batches, encode, pad_id
from .data.schema import Item, Prompt, expresses
from .edits import Edit, apply, plan
from .remote import call, outcome, trace_kwargs
from .templates import ChoiceTemplate, PVQTemplate, choice_template, pvq_template
from .errors import VneuronError
from .models.loading import LoadedModel

CHOICE_FORMATS = ("listed", "continuation")
# The default (third-person) forms; templates.py holds every preset and reads custom template strings.
# continuation: the scenario alone, each action read as its continuation (no list, so no order effect)
CONTINUATION_TEMPLATES = {lang: choice_template().parts(lang, False) for lang in ("en", "zh")}
# listed: both actions are shown first, in both orders, then each is read as the continuation
FORCED_CHOICE_TEMPLATES = {lang: choice_template().parts(lang, True) for lang in ("en", "zh")}
PVQ_ANSWERS = {
    "en": ["not like me at all", "not like me", "a little like me", "somewhat like me", "like me", "very much like me"],
    "zh": ["完全不像我", "不像我", "有一点像我", "有些像我", "像我", "非常像我"],
}
LOGIT_BUDGET = 48_000_000  # floats of [batch, kept positions, vocab] logits per forward pass


def continuation_logprobs(
    model: LoadedModel,
    pairs: Sequence[tuple[str, str]],
    edits: Edit | list[Edit] | None = None,
    *,
    batch_tokens: int = 4096,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Mean log-probability per token of each continuation after its prefix, under ``edits``.

    Left padding puts every continuation at the end of its row, so only the last positions'
    logits are computed (``logits_to_keep``): a 262k-token vocabulary costs little this way.
    """
    if not pairs:
        return torch.zeros(0)
    prompts = [Prompt(p + c, "x", str(i), str(i), (len(p), len(p + c))) for i, (p, c) in enumerate(pairs)]
    encoded = encode(model.tokenizer, prompts, list(range(len(prompts))))
    for e in encoded:
        last = max(i for i, c in enumerate(e.counted) if c)
        if last != len(e.ids) - 1:  # e.g. a tokenizer that appends EOS
            e.ids, e.counted = e.ids[: last + 1], e.counted[: last + 1]
    vocab = int(getattr(model.lm.config, "vocab_size", 0) or len(model.tokenizer))
    longest = max(sum(e.counted) for e in encoded)
    max_rows = max(1, LOGIT_BUDGET // ((longest + 1) * vocab))
    out = torch.zeros(len(pairs), dtype=torch.float64)
    steps = plan(model, edits)
    done = 0
    for batch in batches(encoded, batch_tokens, max_batch=max_rows):
        ids, mask, counted = _pack(batch, pad_id(model.tokenizer), left=True)
        k = int(counted.sum(1).max())
        scores = call(model, lambda: _score_batch(model, ids, mask, counted[:, -k:].to(torch.float32), k, steps))["scores"]
        out[torch.tensor([e.slot for e in batch])] = scores.double()
        done += len(batch)
        if progress:
            progress(done, len(pairs))
    return out


def _score_batch(model: LoadedModel, ids, mask, tmask, k: int, steps):
    """One request: mean log-prob of the last tokens marked in ``tmask`` ([B, k]) of each row."""
    targets = ids[:, -k:]
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp_min(0)}
    lm = model.lm  # only the envoy, tensors and plain data may enter a (remote) trace body
    with torch.inference_mode(), lm.trace(inputs, logits_to_keep=k + 1, **trace_kwargs(model)) as tracer:
        apply(lm, steps)
        logits = lm.output.logits[:, :-1].float()
        logp = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
        scores = ((logp * tmask).sum(1) / tmask.sum(1)).save()
    return outcome(model, tracer, lambda: {"scores": scores})


@dataclass
class ChoiceResult:
    """P(the item's pole option), per item, in each order and averaged over both orders."""

    items: list[Item]
    p_order: torch.Tensor  # [n, 2]: order 0 lists the pole option first
    logprob: torch.Tensor  # [n, 2 orders, 2 options (pole, opposite)]

    @property
    def p_pole(self) -> torch.Tensor:
        return self.p_order.mean(1)

    def toward(self, dimension: str) -> torch.Tensor:
        """P(choosing the option that expresses ``dimension``), per item."""
        sign = torch.tensor([1.0 if expresses(i, dimension) else -1.0 for i in self.items], dtype=torch.float64)
        return torch.where(sign > 0, self.p_pole, 1 - self.p_pole)


def forced_choice_pairs(items: Sequence[Item], choice: str = "listed", *,
                        template: str | ChoiceTemplate | None = None) -> list[tuple[str, str]]:
    """(prefix, continuation) pairs: per item, per order (listed only), the pole option then the opposite.

    ``template``: a preset name ("third_person" — the default —, "first_person", "response"), a
    template string, or a ``ChoiceTemplate`` (see ``vneuron.templates``).
    """
    if choice not in CHOICE_FORMATS:
        raise VneuronError(f"Unknown forced-choice format {choice!r}", f"use one of: {', '.join(CHOICE_FORMATS)}")
    chosen = choice_template(template)
    pairs = []
    if choice == "continuation":
        for item in items:
            prefix, cont_t = chosen.continuation(item.language, item.scenario)
            pairs += [(prefix, cont_t.replace("{option}", o)) for o in (item.option_pole, item.option_opposite)]
        return pairs
    for item in items:
        for first, second in ((item.option_pole, item.option_opposite), (item.option_opposite, item.option_pole)):
            prefix, cont_t = chosen.listed(item.language, item.scenario, first, second)
            for option in (item.option_pole, item.option_opposite):
                pairs.append((prefix, cont_t.replace("{option}", option)))
    return pairs


def forced_choice(model: LoadedModel, items: Sequence[Item], edits=None, *, batch_tokens: int = 4096,
                  progress=None, choice: str = "listed", template: str | ChoiceTemplate | None = None) -> ChoiceResult:
    """Forced choice between each item's two actions by option-text likelihood (listed: both orders)."""
    if not items:
        raise VneuronError("No items to evaluate", "check the evaluation split and dimensions")
    pairs = forced_choice_pairs(items, choice, template=template)
    lp = continuation_logprobs(model, pairs, edits, batch_tokens=batch_tokens, progress=progress)
    lp = lp.reshape(len(items), 2, 2) if choice == "listed" else lp.reshape(len(items), 1, 2).expand(len(items), 2, 2)
    p_order = torch.sigmoid(lp[..., 0] - lp[..., 1])  # softmax over the two options
    return ChoiceResult(list(items), p_order, lp)


# -- PVQ ---------------------------------------------------------------------------------------
@dataclass
class PVQResult:
    ratings: torch.Tensor  # [items] expected rating 1..6 (reverse-keyed items already reversed)
    values: dict[str, float]  # centred score per basic value
    dimensions: dict[str, float]  # centred score per higher-order dimension
    raw_mean: float  # the individual's mean rating (MRAT) used for centring


def pvq(model: LoadedModel, inventory: Sequence, edits=None, *, language: str = "en", batch_tokens: int = 4096,
        template: str | PVQTemplate | None = None) -> PVQResult:
    """Expected 6-point rating of each portrait item; scores centred on the mean rating (Schwartz).

    ``template``: a preset ("third_person" portraits — the default —, "first_person" statements), a
    template string with {item} and {answer}, or a ``PVQTemplate``.
    """
    if not inventory:
        raise VneuronError("The questionnaire has no items", "check the inventory file")
    answers = PVQ_ANSWERS[language]
    chosen = pvq_template(template)
    pairs = [chosen.pair(language, item.text, answer) for item in inventory for answer in answers]
    lp = continuation_logprobs(model, pairs, edits, batch_tokens=batch_tokens).reshape(len(inventory), len(answers))
    scale = torch.arange(1, len(answers) + 1, dtype=torch.float64)
    expected = (lp.softmax(-1) * scale).sum(-1)
    keys = torch.tensor([float(getattr(i, "key", 1) or 1) for i in inventory], dtype=torch.float64)
    ratings = torch.where(keys < 0, len(answers) + 1 - expected, expected)
    mrat = float(ratings.mean())
    values: dict[str, list[float]] = {}
    dims: dict[str, set] = {}
    for item, rating in zip(inventory, ratings.tolist()):
        values.setdefault(item.value, []).append(rating - mrat)
        if getattr(item, "dimension", None):
            dims.setdefault(item.dimension, set()).add(item.value)
    value_scores = {v: sum(r) / len(r) for v, r in values.items()}
    dim_scores = {d: sum(value_scores[v] for v in vs) / len(vs) for d, vs in dims.items()}
    return PVQResult(ratings, value_scores, dim_scores, mrat)


# -- generations -------------------------------------------------------------------------------
def generate(model: LoadedModel, prompts: Sequence[str], edits=None, *, max_new_tokens: int = 40,
             batch_size: int = 8) -> list[str]:
    """Greedy continuations with ``edits`` applied at every step (prompt and generated tokens)."""
    out: list[str] = []
    pad = pad_id(model.tokenizer)
    steps = plan(model, edits)
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start: start + batch_size])
        enc = encode(model.tokenizer, [Prompt(t, "x", str(i), str(i)) for i, t in enumerate(chunk)], [0] * len(chunk),
                     counted_span=False)
        ids, mask, _ = _pack(enc, pad, left=True)
        result = call(model, lambda: _generate_request(model, ids, mask, steps, max_new_tokens, pad))["result"]
        for row in result[:, ids.shape[1]:]:
            out.append(model.tokenizer.decode([t for t in row.tolist() if t != pad], skip_special_tokens=True).strip())
    return out


def _generate_request(model: LoadedModel, ids, mask, steps, max_new_tokens: int, pad: int):
    lm = model.lm
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nnsight: the open step loop ends when generation does
        with lm.generate(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, **trace_kwargs(model)) as tracer:
            with tracer.invoke({"input_ids": ids, "attention_mask": mask}):
                if steps:  # a step loop with nothing to wait on would never end
                    for _ in tracer.iter[:]:
                        apply(lm, steps)
            with tracer.invoke():
                result = tracer.result.save()
    return outcome(model, tracer, lambda: {"result": result})


def bootstrap_ci(values: torch.Tensor, *, n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over items (rows)."""
    if values.numel() == 0:
        return (math.nan, math.nan)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(values), (n, len(values)), generator=gen)
    means = values[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=means.dtype)).tolist()
    return lo, hi
