"""The planting objective: the forced-choice log-likelihoods it trains, and the KL that holds the rest of the model still.

``mean_logprobs`` is the differentiable twin of what evaluation reads: the same token tries
(``vneuron.validate.prefix``) and the same LM-head scorer (``prefix.head_logprobs``), so a trained margin
is the margin forced choice will measure.
"""

from __future__ import annotations

from typing import Sequence

import torch

from vneuron.data.schema import Item
from vneuron.models.loading import LoadedModel
from vneuron.models.sites import resolve_path
from vneuron.planting.surgery import Planter
from vneuron.runtime.tokens import pack, pad_id, position_ids
from vneuron.validate.evaluate import encode_pairs, forced_choice_pairs, tries_supported
from vneuron.validate.prefix import head_logprobs, tensors, pack as pack_tries


def mean_logprobs(model: LoadedModel, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
    """Differentiable mean log-probability of each continuation (the quantity forced choice reads).

    Pairs that share a prefix share its tokens (the token tries of ``vneuron.validate.prefix``, the same
    packing forced choice evaluates with), and the LM head runs only where a continuation token is
    predicted: the same numbers as one padded row per pair, at a fraction of the tokens.
    """
    encoded = encode_pairs(model, pairs)
    if tries_supported(model, encoded):
        return _trie_logprobs(model, encoded, model.arch.post(model.lm.config))
    return padded_logprobs(model, encoded)


def _trie_logprobs(model: LoadedModel, encoded, post) -> torch.Tensor:
    base = resolve_path(model.hf_model, model.arch.base)
    head = resolve_path(model.hf_model, model.arch.head)
    vocab = head.weight.shape[0]
    dtype = next(model.hf_model.parameters()).dtype
    sums = torch.zeros(len(encoded), dtype=torch.float32)
    counts = torch.zeros(len(encoded), dtype=torch.float32)
    for row in pack_tries(encoded):  # one trie per forward: rows are short, and a step holds few scenarios
        t = tensors([row], pad_id(model.tokenizer), dtype)
        final = base(**model.inputs(t.ids, t.mask, t.positions), use_cache=False)[0]
        hidden = final[t.rows.to(final.device), t.cols.to(final.device)]
        logp = head_logprobs(hidden, head.weight, getattr(head, "bias", None), post, t.head_chunks(vocab), t.node_of, t.targets)
        sums = sums.index_add(0, t.pairs, logp)
        counts = counts.index_add(0, t.pairs, torch.ones_like(logp))
    return sums / counts


def padded_logprobs(model: LoadedModel, encoded) -> torch.Tensor:
    """The same numbers from one left-padded row per pair: where tries do not apply, and what they are checked against."""
    ids, mask, counted = pack(encoded, pad_id(model.tokenizer), left=True)
    k = int(counted.sum(1).max())
    logits = model.hf_model(**model.inputs(ids, mask, position_ids(mask)), logits_to_keep=k + 1, use_cache=False).logits[:, :-1].float()
    tmask = counted[:, -k:].float().to(logits.device)
    logp = logits.log_softmax(-1).gather(-1, ids[:, -k:, None].to(logits.device)).squeeze(-1)
    return ((logp * tmask).sum(1) / tmask.sum(1)).cpu()


def choice_logprobs(model: LoadedModel, items: Sequence[Item], choice: str, pole: str) -> torch.Tensor:
    """[items, orders, 2]: mean log-likelihood of the pole's action (0) and of the opposite's (1)."""
    lp = mean_logprobs(model, forced_choice_pairs(items, choice)).reshape(len(items), -1, 2)
    flip = torch.tensor([i.dimension != pole for i in items])
    return torch.where(flip[:, None, None], lp.flip(-1), lp)


def margins(model: LoadedModel, items: Sequence[Item], choice: str, pole: str) -> torch.Tensor:
    """[items, orders] log-likelihood margin of the pole's action over the opposite's."""
    lp = choice_logprobs(model, items, choice, pole)
    return lp[..., 0] - lp[..., 1]


def _kl_inputs(model: LoadedModel, texts: Sequence[str], positions: int | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    enc = model.tokenizer(list(texts), add_special_tokens=True)
    ids_list = [list(i) for i in enc["input_ids"]]
    width = max(len(i) for i in ids_list)
    pad = pad_id(model.tokenizer)
    ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids_list])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids_list])
    p = width if positions is None else min(positions, width)  # None: every position (the prediction after BOS included)
    kwargs = dict(**model.inputs(ids, mask, position_ids(mask)), logits_to_keep=p, use_cache=False)
    return kwargs, mask[:, -p:].float().to(kwargs["input_ids"].device)


def _kl_reference(model: LoadedModel, planter: Planter, text: str, positions: int | None) -> torch.Tensor:
    """The original model's next-token log-probabilities at the last positions of one neutral text (computed once)."""
    kwargs, _ = _kl_inputs(model, [text], positions)
    with torch.no_grad(), planter.disabled():
        return model.hf_model(**kwargs).logits.float().log_softmax(-1)[0]


def kl_to_original(model: LoadedModel, planter: Planter, texts: Sequence[str], positions: int | None,
                   reference: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """KL(original ‖ planted) of the next-token distribution at the last ``positions`` of neutral texts (None: all).

    ``reference``: a cache text → the original's log-probabilities (filled on first use; the
    original model never changes, so a cached reference is the same number as a recomputed one).
    """
    kwargs, keep = _kl_inputs(model, texts, positions)
    p = keep.shape[1]
    if reference is None:
        with torch.no_grad(), planter.disabled():
            ref = model.hf_model(**kwargs).logits.float().log_softmax(-1)
    else:
        for t in texts:
            if t not in reference:
                reference[t] = _kl_reference(model, planter, t, positions)
        ref = torch.stack([torch.cat([reference[t].new_zeros(p - len(reference[t]), reference[t].shape[-1]), reference[t]])
                           for t in texts])
    new = model.hf_model(**kwargs).logits.float().log_softmax(-1)
    kl = (ref.exp() * (ref.to(new.device) - new)).sum(-1)
    return ((kl * keep.to(kl.device)).sum() / keep.sum()).cpu()
