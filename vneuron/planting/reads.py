"""What the planted neurons read: the pole's direction at each planted layer's MLP input, and how selectively they fire.

A unit trained on behaviour alone learns to write the preference everywhere, which no activation
contrast can find; these start its read rows on the pole (``reading_directions``) and measure the
activation contrast that training keeps up (``selectivity``).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch

from vneuron.data.schema import Corpus, Item, Prompt
from vneuron.models.loading import LoadedModel
from vneuron.planting.surgery import Planter
from vneuron.runtime.tokens import batches, encode, pack, pad_id, position_ids, token_batches


# the first tokens of a text after BOS: their residual stream is as unusual as BOS's (the first content token after an
# attention sink), so units fitted on later tokens fire there hard; they are a class of their own for the threshold
OPENING = 2


def reading_directions(model: LoadedModel, planter: Planter, items: Sequence[Item], pole: str,
                       batch_tokens: int, *, shrink: float = 0.5, spread: float = 2.0,
                       quantile: float | None = None, context: float | None = None, planted: bool = False,
                       background: Sequence[str] = (), background_quantile: float | None = None
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Per planted layer, the MLP-input direction that best separates the pole's action tokens from the opposite's.

    Read from the original model on the training scenarios in the prompt-mode template, over the
    action's tokens: a shrinkage discriminant (within-class covariance pulled ``shrink`` of the way
    toward its mean variance), made orthogonal to the midpoint of the two class means so the midpoint
    reads zero (the MLP has no bias), and scaled so its reading has standard deviation ``spread``
    over those tokens (the pole's tokens then mostly read above zero, the opposite's below).
    ``quantile``: move the threshold up so that only this share of the opposite's tokens reads above
    zero (Gaussian approximation); the MLP has no bias, so the shift rides on the input direction that
    every token reads as 1 (``_constant_direction``).

    ``context`` (GLU models): also return, per layer, an up direction that reads zero on the
    scenario's own tokens and ``context`` on an action's, and hold the threshold so that at most
    ``quantile`` of the scenario tokens read above it too. A unit's output (gate × up) is then a
    conjunction, "an action, and of this pole": read on actions alone, the same units fire on
    pole-flavoured words of any text, and their writes disturb everything that follows.

    ``background``: texts with no value content (neutral prose, held apart from the texts the plant is
    checked on). Every token of theirs after BOS joins the tokens the threshold holds on (at most
    ``background_quantile`` of them, default ``quantile``, read above it, and as many of the first
    ``OPENING`` tokens after BOS, held as a class of their own) and, with ``context``, the
    tokens the up row reads 0 on: units fitted on scenarios alone fire on ordinary prose, and what
    they write there is the plant's damage to the rest of the model.

    ``planted``: read the inputs with the planted units as they are now, so a layer's direction fits
    what the planted units of earlier layers write into its input (a second pass after a first
    setting; the first layer's direction does not change).
    """
    prompts = Corpus("plant", items=list(items)).action_prompts()
    encoded = encode(model.tokenizer, prompts, list(range(len(prompts))))
    hidden = model.arch.hidden(model.hf_model.config)
    scenario_class = 2 if context is not None else None  # the scenario's own tokens (not the first)
    background_class = (3 if context is not None else 2) if background else None  # neutral prose (after its opening)
    opening_class = background_class + 1 if background else None  # the prose's first tokens after BOS (positions 1..OPENING)
    classes = 2 + (scenario_class is not None) + 2 * bool(background)  # then the pole's action tokens, the opposite's
    sums = [torch.zeros(classes, hidden, dtype=torch.float64) for _ in planter.layers]
    squares = [torch.zeros(classes, hidden, hidden, dtype=torch.float64) for _ in planter.layers]
    counts = torch.zeros(classes, dtype=torch.float64)
    current: dict[str, torch.Tensor] = {}

    def grab(n):
        def hook(mod, args):
            x = args[0].double().cpu()  # the second moments are summed on the host, in float64
            w = current["weights"]  # [B, T, classes]
            sums[n].add_(torch.einsum("btc,bth->ch", w, x))
            flat = x.reshape(-1, x.shape[-1])
            for c in range(classes):
                rows = flat[w[..., c].reshape(-1) > 0]  # the weights are 0/1
                squares[n][c].add_(rows.T @ rows)
        return hook

    def run(ids, mask, parts):
        w = torch.zeros(*ids.shape, classes, dtype=torch.float64)
        for c, part in parts.items():
            w[..., c] = part.double()
        current["weights"] = w
        counts.add_(w.sum((0, 1)))
        model.hf_model(**model.inputs(ids, mask, position_ids(mask)), logits_to_keep=1, use_cache=False)

    handles = [mlp.register_forward_pre_hook(grab(n)) for n, mlp in enumerate(planter.mlps)]
    try:
        with torch.no_grad(), (nullcontext() if planted else planter.disabled()):
            for batch in batches(encoded, batch_tokens):
                ids, mask, counted = pack(batch, pad_id(model.tokenizer), left=False)
                side = torch.tensor([e.prompt.label == pole for e in batch])
                parts = {0: counted & side[:, None], 1: counted & ~side[:, None]}
                if scenario_class is not None:
                    scenario = mask.bool() & ~counted
                    scenario[:, 0] = False  # the first token (BOS) carries the model's outsized attention-sink state
                    parts[scenario_class] = scenario
                run(ids, mask, parts)
            for ids, mask in _text_batches(model, background, batch_tokens):
                prose = mask.bool()
                prose[:, 0] = False  # BOS: the quiet prefix holds the units at 0 there
                opening = torch.zeros_like(prose)
                opening[:, 1: OPENING + 1] = prose[:, 1: OPENING + 1]
                run(ids, mask, {background_class: prose & ~opening, opening_class: opening})
    finally:
        for h in handles:
            h.remove()
    gates, ups = [], []
    n = counts.clamp_min(1)
    eye = torch.eye(hidden, dtype=torch.float64)

    def z(q: float | None) -> float:
        return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - (q or 0.5), dtype=torch.float64)))

    held = {1: z(quantile)}  # the classes the threshold holds on, and how far above their mean it sits
    if scenario_class is not None:
        held[scenario_class] = z(quantile)
    if background_class is not None:
        held[background_class] = held[opening_class] = z(background_quantile if background_quantile is not None else quantile)
    for total, square in zip(sums, squares):
        mu = total / n[:, None]
        cov = [square[c] / n[c] - torch.outer(mu[c], mu[c]) for c in range(classes)]
        within = (n[0] * cov[0] + n[1] * cov[1]) / (n[0] + n[1])
        within = (1 - shrink) * within + shrink * eye * within.diagonal().mean()
        d = torch.linalg.solve(within, mu[0] - mu[1])
        mid = (mu[0] + mu[1]) / 2
        d = d - (d @ mid) / (mid @ mid).clamp_min(1e-12) * mid
        actions = (total[0] + total[1]) / (n[0] + n[1])
        action_cov = (square[0] + square[1]) / (n[0] + n[1]) - torch.outer(actions, actions)
        d = d * spread / (d @ action_cov @ d).clamp_min(1e-24).sqrt()
        if quantile is not None or len(held) > 1:
            tau = max(float(d @ mu[c]) + zc * float((d @ cov[c] @ d).clamp_min(0).sqrt()) for c, zc in held.items())
            d = d - tau * _constant_direction(total.sum(0) / n.sum(), square.sum(0) / n.sum())
        gates.append(d.float())
        if context is not None:  # actions vs the rest: the scenario's (and the prose's) mean reads 0, an action's ``context``
            rest = [c for c in (scenario_class, background_class, opening_class) if c is not None]
            pooled = sum(n[c] * cov[c] for c in range(classes)) / n.sum()
            pooled = (1 - shrink) * pooled + shrink * eye * pooled.diagonal().mean()
            rest_mean = sum(total[c] for c in rest) / sum(n[c] for c in rest)
            u = torch.linalg.solve(pooled, actions - rest_mean)
            basis = torch.linalg.qr(torch.stack([mu[c] for c in rest], 1))[0]  # [H, len(rest)]
            u = u - basis @ (basis.T @ u)
            ups.append((u * context / (u @ actions)).float())
    return gates, (ups if context is not None else None)


def _text_batches(model: LoadedModel, texts: Sequence[str], batch_tokens: int):
    """Right-padded (ids, mask) batches of plain texts (BOS first), about ``batch_tokens`` each."""
    ids = [list(model.tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts]
    pad = pad_id(model.tokenizer)
    for batch in token_batches(ids, len, batch_tokens):
        width = max(len(i) for i in batch)
        yield (torch.tensor([i + [pad] * (width - len(i)) for i in batch]),
               torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in batch]))


def _constant_direction(mean: torch.Tensor, second: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """The input direction c with c·x ≈ 1 on every token (least squares): the bias the MLP does not have.

    Shifting a threshold by ``tau * mean / |mean|²`` is exact only where a token's projection on the
    mean equals the mean's; on Gemma that ratio varies with sd 0.08–0.27 across tokens, the least-
    squares direction with sd 0.01–0.03, so a unit's threshold is what was asked for.
    """
    eye = torch.eye(len(mean), dtype=second.dtype)
    return torch.linalg.solve(second + ridge * second.diagonal().mean() * eye, mean)


def selectivity(model: LoadedModel, planter: Planter, prompts: Sequence[Prompt], pole: str) -> torch.Tensor:
    """Per planted neuron, a smooth activation-probability difference between the pole's and the opposite's actions.

    σ(a/τ) stands in for [a > 0] (τ a quarter of the neuron's spread), over the action tokens of
    the prompt-mode template: the planted neurons must *read* the pole, not only write the preference.
    """
    encoded = encode(model.tokenizer, list(prompts), list(range(len(prompts))))
    ids, mask, counted = pack(encoded, pad_id(model.tokenizer), left=False)
    side = torch.tensor([p.label == pole for p in prompts])
    w_pole = (counted & side[:, None]).float()
    w_opp = (counted & ~side[:, None]).float()
    if w_pole.sum() == 0 or w_opp.sum() == 0:
        return torch.zeros(len(planter.neurons))
    grabbed: list[torch.Tensor] = []
    units_per_layer = [planter.neurons.units[planter.neurons.layers == l].sort().values for l in planter.layers]
    handles = [getattr(mlp, model.arch.act).register_forward_hook(
        lambda mod, args, out, u=u: grabbed.append(out.index_select(out.dim() - 1, u.to(out.device)).cpu()))
        for mlp, u in zip(planter.mlps, units_per_layer)]
    try:
        model.hf_model(**model.inputs(ids, mask, position_ids(mask)), logits_to_keep=1, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    out = []
    for a in grabbed:  # [B, T, k]
        a = a.float()
        keep = (w_pole + w_opp)[..., None]
        mu = (a * keep).sum((0, 1)) / keep.sum()
        tau = (((a - mu) ** 2 * keep).sum((0, 1)) / keep.sum()).sqrt().detach().clamp_min(1e-6) / 4
        on = torch.sigmoid(a / tau)
        p_pole = (on * w_pole[..., None]).sum((0, 1)) / w_pole.sum()
        p_opp = (on * w_opp[..., None]).sum((0, 1)) / w_opp.sum()
        out.append(p_pole - p_opp)
    return torch.cat(out)
