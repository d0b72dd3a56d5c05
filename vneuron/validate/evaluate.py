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

from vneuron.config import CHOICE_FORMATS
from vneuron.data.schema import Item, Prompt, expresses
from vneuron.data.templates import ChoiceTemplate, PVQTemplate, choice_template, pvq_template
from vneuron.errors import VneuronError
from vneuron.locate.residual import block_hidden
from vneuron.models.architectures import text_config
from vneuron.models.loading import LoadedModel
from vneuron.models.sites import layer_modules, resolve_path
from vneuron.runtime import budget, devices
from vneuron.runtime.precision import storage
from vneuron.runtime.remote import call, nbytes, outcome, trace_kwargs
from vneuron.runtime.tokens import batches, encode, pack, pad_id, position_ids
from vneuron.validate.edits import DirectionEdit, Edit, apply, plan, shifted, split_at, start_at
from vneuron.validate.prefix import LOGIT_BUDGET, attention_mask, head_logprobs, row_batches, tensors, pack as pack_tries

# The default (third-person) forms; templates.py holds every preset and reads custom template strings.
# continuation: the scenario alone, each action read as its continuation (no list, so no order effect)
CONTINUATION_TEMPLATES = {lang: choice_template().parts(lang, False) for lang in ("en", "zh")}
# listed: both actions are shown first, in both orders, then each is read as the continuation
FORCED_CHOICE_TEMPLATES = {lang: choice_template().parts(lang, True) for lang in ("en", "zh")}
# `batch_tokens` auto on the CPU and for NDIF: 1,024 ran 17 % faster per token than 4,096 on 2 CPU cores (benchmarks/ablate.py);
# an accelerator sizes it from its free memory
CPU_BATCH_TOKENS = 1024
PVQ_ANSWERS = {
    "en": ["not like me at all", "not like me", "a little like me", "somewhat like me", "like me", "very much like me"],
    "zh": ["完全不像我", "不像我", "有一点像我", "有些像我", "像我", "非常像我"],
}


def continuation_logprobs(
    model: LoadedModel,
    pairs: Sequence[tuple[str, str]],
    edits: Edit | DirectionEdit | list | None = None,
    *,
    batch_tokens: int = 4096,
    progress: Callable[[int, int], None] | None = None,
    shared_prefix: bool = True,
    reuse: "LowerLayers | None" = None,
    reads=None,
) -> torch.Tensor:
    """Mean log-probability per token of each continuation after its prefix, under ``edits`` (neuron edits, direction
    edits, or a list mixing both).

    Pairs that share a prefix are computed once (``vneuron.validate.prefix``: token tries with a 4-D
    attention mask), and the LM head runs only where a continuation token is predicted.
    ``reuse``: a ``LowerLayers`` store shared by calls on the same pairs, so the layers below the
    lowest edited one run once for a located set and all its matched controls (local models).
    ``shared_prefix=False``: every pair as its own padded row (the reference path).
    ``reads``: what wants a block's hidden states as the pass goes by (local tries only; ``directions.Readings``).
    """
    if not pairs:
        return torch.zeros(0)
    encoded = encode_pairs(model, pairs)
    steps = plan(model, edits)
    tokens = model.batch_tokens(batch_tokens, CPU_BATCH_TOKENS)
    if shared_prefix and tries_supported(model, encoded):
        return devices.shrinking(tokens, lambda bt: _logprobs_tries(model, encoded, steps, bt, progress, reuse, pairs, reads),
                                 what="scoring continuations")
    return devices.shrinking(tokens, lambda bt: _padded(model, encoded, steps, bt, progress), what="scoring continuations")


def _padded(model: LoadedModel, encoded, steps, batch_tokens: int, progress) -> torch.Tensor:
    """One left-padded row per pair (the reference path, and where tries do not apply)."""
    vocab = int(getattr(model.lm.config, "vocab_size", 0) or len(model.tokenizer))
    longest = max(sum(e.counted) for e in encoded)
    max_rows = max(1, LOGIT_BUDGET // ((longest + 1) * vocab))
    out = torch.zeros(len(encoded), dtype=torch.float64)
    done = 0
    for batch in batches(encoded, batch_tokens, max_batch=max_rows):
        ids, mask, counted = pack(batch, pad_id(model.tokenizer), left=True)
        k = int(counted.sum(1).max())
        scores = call(model, lambda: _score_batch(model, ids, mask, counted[:, -k:].to(torch.float32), k, steps))["scores"]
        budget.current.add(budget.Work(forwards=1, requests=1, tokens=int(ids.numel()), layer_tokens=int(ids.numel()) * model.n_layers,
                                       head_positions=len(batch) * (k + 1), bytes_down=nbytes(scores),
                                       bytes_up=nbytes(ids, mask, counted, *step_tensors(steps))))
        out[torch.tensor([e.slot for e in batch])] = scores.double()
        done += len(batch)
        if progress:
            progress(done, len(encoded))
    return out


def encode_pairs(model: LoadedModel, pairs: Sequence[tuple[str, str]]):
    """Each (prefix, continuation) tokenised with the continuation's tokens counted."""
    prompts = [Prompt(p + c, "x", str(i), str(i), (len(p), len(p + c))) for i, (p, c) in enumerate(pairs)]
    encoded = encode(model.tokenizer, prompts, list(range(len(prompts))))
    for e in encoded:
        last = max(i for i, c in enumerate(e.counted) if c)
        if last != len(e.ids) - 1:  # e.g. a tokenizer that appends EOS
            e.ids, e.counted = e.ids[: last + 1], e.counted[: last + 1]
    return encoded


def _score_batch(model: LoadedModel, ids, mask, tmask, k: int, steps):
    """One request: mean log-prob of the last tokens marked in ``tmask`` ([B, k]) of each row."""
    targets = ids[:, -k:]
    inputs = model.inputs(ids, mask, position_ids(mask))
    lm = model.lm  # only the envoy, tensors and plain data may enter a (remote) trace body
    with torch.inference_mode(), lm.trace(inputs, logits_to_keep=k + 1, **trace_kwargs(model)) as tracer:
        apply(lm, steps)
        logits = lm.output.logits[:, :-1].float()
        logp = logits.log_softmax(-1).gather(-1, targets.to(logits.device)[..., None]).squeeze(-1)
        scores = ((logp * tmask.to(logp.device)).sum(1) / tmask.to(logp.device).sum(1)).cpu().save()
    return outcome(model, tracer, lambda: {"scores": scores})


# -- shared prefixes ---------------------------------------------------------------------------
def tries_supported(model: LoadedModel, encoded) -> bool:
    """Tries replace the model's own causal mask: not where a sliding window would cut a sequence."""
    cfg = text_config(model.lm.config)
    window = getattr(cfg, "sliding_window", None)
    longest = max(len(e.ids) for e in encoded)
    return not (window and longest > int(window))


def step_tensors(steps) -> list[torch.Tensor]:
    """What a request carries of an edit plan (units and values per edited layer)."""
    return [x for step in steps for x in step[2:5]]


class LowerLayers:
    """Hidden states entering the first block an edit can change (``edits.start_at``), per batch of tries: an edit
    changes nothing below it, so these are computed once and shared by every edit set starting at or above it (a
    located set and its matched controls have the same layer profile; a direction and its random directions at block
    L's output start at L + 1, from L's unedited output)."""

    def __init__(self):
        self.saved: dict[tuple, torch.Tensor] = {}
        self.prepared: dict[tuple, list] = {}  # the packed batches of a pair list, built once
        self.hits = self.misses = 0

    def put(self, key: tuple, hidden) -> None:
        """Keep the input of a layer for a batch, computed on the way by another pass (``directions.edit_sizes``)."""
        self.saved.setdefault(key, hidden)

    def get(self, model: LoadedModel, key: tuple, t, layer: int) -> torch.Tensor:
        if key not in self.saved:
            self.misses += 1
            self.saved[key] = _lower_hidden(model, t, layer)
            budget.current.add(budget.Work(forwards=1, tokens=t.tokens, layer_tokens=t.tokens * layer))
        else:
            self.hits += 1
        return self.saved[key]


def _lower_hidden(model: LoadedModel, t, layer: int) -> torch.Tensor:
    """The output of block ``layer - 1`` (the input of ``layer``) for a batch of tries, unedited."""
    lm = model.lm
    block = layer_modules(lm, model.arch)[layer - 1]
    inputs = model.inputs(t.ids, t.mask, t.positions)
    with torch.inference_mode(), lm.trace(inputs) as tracer:
        hidden = block.output.save()
        tracer.stop()
    return hidden


def _prepare_tries(model: LoadedModel, encoded, batch_tokens: int) -> list[tuple]:
    """(batch tensors, head chunks, pairs in it) per batch of tries."""
    vocab = int(getattr(text_config(model.lm.config), "vocab_size", 0) or len(model.tokenizer))
    dtype = getattr(torch, storage(model.extra.get("dtype", "float32")))
    prepared = []
    for batch in row_batches(pack_tries(encoded), batch_tokens):
        t = tensors(batch, pad_id(model.tokenizer), dtype)
        prepared.append((t, t.head_chunks(vocab), sum(len({s[2] for s in r.scored}) for r in batch)))
    return prepared


def tries_for(model: LoadedModel, pairs, encoded, batch_tokens: int, reuse: "LowerLayers | None" = None) -> tuple[tuple | None, list]:
    """The packed batches of tries of a pair list — (batch tensors, head chunks, pairs in it) each — and the key a
    ``LowerLayers`` store keeps them and their lower layers under (built once per store)."""
    key = (hash(tuple(pairs)), batch_tokens) if reuse is not None else None
    prepared = reuse.prepared.get(key) if reuse is not None else None
    if prepared is None:
        prepared = _prepare_tries(model, encoded, batch_tokens)
        if reuse is not None:
            reuse.prepared[key] = prepared
    return key, prepared


def _logprobs_tries(model: LoadedModel, encoded, steps, batch_tokens: int, progress, reuse=None, pairs=(), reads=None) -> torch.Tensor:
    post = model.arch.post(model.lm.config)
    sums = torch.zeros(len(encoded), dtype=torch.float64)
    counts = torch.zeros(len(encoded), dtype=torch.float64)
    low = min((step[0] for step in steps), default=0)
    start = start_at(steps)  # low + 1 for directions at block low's output: they shift its saved unedited output
    pairs_key, prepared = tries_for(model, pairs, encoded, batch_tokens, reuse)
    if reuse is not None and (start == 0 or model.remote is not None):
        reuse = None  # nothing below the edits to share; remote: hidden states would cross the network
    # ``reads`` (local only) answers ``request(steps)`` with None or block L, and receives ``take(index, t, steps, output)``
    # per batch: L's output after the edits up to L
    read = reads.request(steps) if reads is not None and model.remote is None else None
    if read is not None and reuse is not None and read < start:
        read = None  # below the edits, where a reused hidden state replaces the blocks
    done = 0
    layers = model.n_layers
    for index, (t, chunks, n_pairs) in enumerate(prepared):
        below, run = None, steps
        if reuse is not None:
            below = reuse.get(model, (pairs_key, index, start), t, start)
            if start > low:  # the blocks up to `low` replaced by its output, the directions there applied to a copy
                below, run = shifted(below, [s for s in steps if s[0] == low]), [s for s in steps if s[0] > low]
        if model.remote is not None:  # a session, so that the server builds the mask from the trie's parents
            logp = call(model, lambda: _score_session(model, [(t, chunks, n_pairs)], [steps], post))["logp"][0]
        else:
            got = call(model, lambda: score_tries(model, t, run, chunks, post, below, start, read))
            logp = got["logp"]
            if read is not None:
                reads.take(index, t, steps, got["output"])
        budget.current.add(budget.Work(
            forwards=1, requests=1, tokens=t.tokens, layer_tokens=t.tokens * (layers - (start if below is not None else 0)),
            head_positions=len(t.rows), bytes_down=nbytes(logp),
            bytes_up=nbytes(*sent_tensors(t), *step_tensors(steps))))
        sums.index_add_(0, t.pairs, logp.double())
        counts.index_add_(0, t.pairs, torch.ones_like(logp, dtype=torch.float64))
        done += n_pairs
        if progress:
            progress(done, len(encoded))
    return sums / counts


def continuation_logprobs_sets(model: LoadedModel, pairs: Sequence[tuple[str, str]], edit_sets: list, *,
                               batch_tokens: int = 4096, reuse: "LowerLayers | None" = None, reads=None) -> list[torch.Tensor]:
    """``continuation_logprobs`` under each of several edit sets (each an Edit, a DirectionEdit, a list of them, or None).

    Remote: every set and every batch in one request (one NDIF session), so a located set and its
    first controls cost one round trip. Local: one set after the other, sharing ``reuse``; ``reads`` reads the first.
    """
    encoded = encode_pairs(model, pairs) if pairs else []
    if model.remote is None or not encoded or not tries_supported(model, encoded):
        return [continuation_logprobs(model, pairs, e, batch_tokens=batch_tokens, reuse=reuse, reads=reads if not n else None)
                for n, e in enumerate(edit_sets)]
    prepared = _prepare_tries(model, encoded, model.batch_tokens(batch_tokens, CPU_BATCH_TOKENS))
    steps_list = [plan(model, e) for e in edit_sets]
    values = call(model, lambda: _score_session(model, prepared, steps_list, model.arch.post(model.lm.config)))["logp"]
    out = []
    for s, steps in enumerate(steps_list):
        sums = torch.zeros(len(encoded), dtype=torch.float64)
        counts = torch.zeros(len(encoded), dtype=torch.float64)
        for b, (t, _, _) in enumerate(prepared):
            logp = values[s * len(prepared) + b]
            sums.index_add_(0, t.pairs, logp.double())
            counts.index_add_(0, t.pairs, torch.ones_like(logp, dtype=torch.float64))
            budget.current.add(budget.Work(forwards=1, tokens=t.tokens, layer_tokens=t.tokens * model.n_layers,
                                           head_positions=len(t.rows), bytes_down=nbytes(logp),
                                           bytes_up=nbytes(*sent_tensors(t)) if s == 0 else 0))
        budget.current.bytes_up += nbytes(*step_tensors(steps))
        out.append(sums / counts)
    budget.current.requests += 1
    return out


def sent_tensors(t) -> tuple[torch.Tensor, ...]:
    """What a request carries of a batch of tries (its mask is built where it runs, from ``parents``)."""
    return t.ids, t.positions, t.parents, t.rows, t.cols, t.targets, t.node_of


def _score_session(model: LoadedModel, prepared, steps_list, post):
    """One request: every batch of tries under every edit set, in one session. The attention masks are
    built inside it from the tries' parents (on the server, for a remote model), once per batch."""
    lm = model.lm  # only the envoy, tensors and plain data may enter a (remote) trace body
    base = resolve_path(lm, model.arch.base)
    head = resolve_path(lm, model.arch.head)
    work = [(t.ids, t.parents, t.dtype, t.positions, t.rows, t.cols, t.targets, t.node_of, chunks) for t, chunks, _ in prepared]
    with torch.inference_mode(), lm.session(**trace_kwargs(model)) as session:
        masks = [attention_mask(w[1], w[2]) for w in work]
        logp = []  # the name is the key of the collected result: it must match outcome's
        for steps in steps_list:
            for (ids, _, _, positions, rows, cols, targets, node_of, chunks), mask in zip(work, masks):
                with lm.trace({"input_ids": ids, "attention_mask": mask, "position_ids": positions}) as tracer:
                    apply(lm, steps)
                    final = base.output[0]
                    hidden = final[rows.to(final.device), cols.to(final.device)]
                    logp.append(head_logprobs(hidden, head.weight, head.bias, post, chunks, node_of, targets))
                    tracer.stop()
        logp.save()
    return outcome(model, session, lambda: {"logp": logp})


def score_tries(model: LoadedModel, t, steps, chunks, post, below=None, low: int = 0, read: int | None = None):
    """One request: log-prob of every scored token of a batch of tries (edited by ``steps``);
    ``below``: the saved input of block ``low``, which replaces the blocks under it; ``read`` (a layer L): also block
    L's output after the edits up to and within it (``output``)."""
    lm = model.lm  # only the envoy, tensors and plain data may enter a (remote) trace body
    base = resolve_path(lm, model.arch.base)
    head = resolve_path(lm, model.arch.head)
    rows, cols, targets, node_of = t.rows, t.cols, t.targets, t.node_of
    inputs = model.inputs(t.ids, t.mask, t.positions)
    blocks = layer_modules(lm, model.arch)
    with torch.inference_mode(), lm.trace(inputs, **trace_kwargs(model)) as tracer:
        if below is not None:
            for j in range(low):
                blocks[j].skip(below)
        if read is None:
            apply(lm, steps)
        else:
            before, after = split_at(steps, read)
            apply(lm, before)
            output = block_hidden(blocks[read].output).clone().save()
            apply(lm, after)
        final = base.output[0]
        hidden = final[rows.to(final.device), cols.to(final.device)]
        logp = head_logprobs(hidden, head.weight, head.bias, post, chunks, node_of, targets).save()
        tracer.stop()  # the model's own LM head is not needed
    return outcome(model, tracer, lambda: {"logp": logp, **({} if read is None else {"output": output})})


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
    template string, or a ``ChoiceTemplate`` (see ``vneuron.data.templates``).
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
                  progress=None, choice: str = "listed", template: str | ChoiceTemplate | None = None,
                  reuse: "LowerLayers | None" = None, shared_prefix: bool = True, reads=None) -> ChoiceResult:
    """Forced choice between each item's two actions by option-text likelihood (listed: both orders)."""
    if not items:
        raise VneuronError("No items to evaluate", "check the evaluation split and dimensions")
    pairs = forced_choice_pairs(items, choice, template=template)
    lp = continuation_logprobs(model, pairs, edits, batch_tokens=batch_tokens, progress=progress, reuse=reuse,
                               shared_prefix=shared_prefix, reads=reads)
    return _choice_result(items, lp, choice)


def forced_choice_sets(model: LoadedModel, items: Sequence[Item], edit_sets: list, *, batch_tokens: int = 4096,
                       choice: str = "listed", template: str | ChoiceTemplate | None = None,
                       reuse: "LowerLayers | None" = None, reads=None) -> list[ChoiceResult]:
    """``forced_choice`` under several edit sets (remote: in one request; ``reads``: of the first set)."""
    if not items:
        raise VneuronError("No items to evaluate", "check the evaluation split and dimensions")
    pairs = forced_choice_pairs(items, choice, template=template)
    return [_choice_result(items, lp, choice)
            for lp in continuation_logprobs_sets(model, pairs, edit_sets, batch_tokens=batch_tokens, reuse=reuse, reads=reads)]


def _choice_result(items, lp: torch.Tensor, choice: str) -> ChoiceResult:
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
        ids, mask, _ = pack(enc, pad, left=True)
        result = call(model, lambda: _generate_request(model, ids, mask, steps, max_new_tokens, pad))["result"]
        for row in result[:, ids.shape[1]:]:
            out.append(model.tokenizer.decode([t for t in row.tolist() if t != pad], skip_special_tokens=True).strip())
    return out


def _generate_request(model: LoadedModel, ids, mask, steps, max_new_tokens: int, pad: int):
    lm = model.lm  # only the envoy, tensors and plain data may enter a (remote) trace body
    inputs = model.inputs(ids, mask)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nnsight: the open step loop ends when generation does
        with lm.generate(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, **trace_kwargs(model)) as tracer:
            with tracer.invoke(inputs):
                if steps:  # a step loop with nothing to wait on would never end
                    for _ in tracer.iter[:]:
                        apply(lm, steps)
            with tracer.invoke():
                result = tracer.result.cpu().save()
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
