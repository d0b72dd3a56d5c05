"""Did planting break the model? The side effects of the plant on neutral text, and where its units may not fire.

``neutral_check`` compares the planted model with the original on the neutral corpus of
``vneuron.validate.side_effects`` — the KL per position over EVERY position (the prediction after BOS and the
first tokens included, and reported separately), the perplexity before and after, and the accuracy of
the factual/grammatical forced choice — and measures how hard the planted units fire at the first
positions. ``prefix_bases`` finds the inputs every text shares (the positions of the common token
prefix, BOS at least): the planted units' rows are kept orthogonal to them (``Planter.quiet``).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from typing import Callable, Sequence

import torch

from vneuron.models.loading import LoadedModel
from vneuron.models.sites import layer_modules
from vneuron.planting.objective import mean_logprobs
from vneuron.planting.surgery import Planter


def common_prefix(model: LoadedModel, texts: Sequence[str]) -> list[int]:
    """The token ids every one of ``texts`` starts with (BOS, and any shared opening)."""
    ids = [list(model.tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts]
    prefix = ids[0] if ids else []
    for other in ids[1:]:
        n = 0
        while n < min(len(prefix), len(other)) and prefix[n] == other[n]:
            n += 1
        prefix = prefix[:n]
    return prefix[: max(0, min(len(i) for i in ids) - 1)] if ids else []  # never a whole text


def prefix_bases(model: LoadedModel, planter: Planter, texts: Sequence[str]) -> list[torch.Tensor] | None:
    """Per planted layer an orthonormal basis [m, H] of the MLP inputs at the common prefix's positions, as the
    planted model computes them when its units are silent there (None: the texts share no prefix)."""
    prefix = common_prefix(model, texts)
    if not prefix:
        return None
    ids = torch.tensor([prefix], device=model.device)
    grabbed: dict[int, torch.Tensor] = {}
    hooks = []
    blocks = layer_modules(model.hf_model, model.arch)
    for n, layer in enumerate(planter.layers):
        mlp = getattr(blocks[layer], model.arch.mlp)
        units = planter.neurons.units[planter.neurons.layers == layer]
        hooks.append(mlp.register_forward_pre_hook(lambda mod, args, n=n: grabbed.__setitem__(n, args[0][0].detach().double().cpu())))

        def silence(mod, args, out, units=units):
            out = out.clone()
            out[..., units] = 0
            return out

        hooks.append(getattr(mlp, model.arch.act).register_forward_hook(silence))
    try:
        with torch.no_grad(), planter.disabled():
            model.hf_model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return [torch.linalg.qr(grabbed[n].T)[0].T.float() for n in range(len(planter.layers))]


def _prose_logprobs(model: LoadedModel, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([model.tokenizer(text, add_special_tokens=True)["input_ids"]])
    logp = model.hf_model(input_ids=ids.to(model.device), use_cache=False).logits[0, :-1].float().log_softmax(-1)
    return logp.cpu(), ids[0, 1:]


def neutral_check(model: LoadedModel, original: Callable[[], AbstractContextManager], neutral, planter: Planter | None = None
                  ) -> dict:
    """The planted model (as it is) against the original (inside ``original()``) on neutral prose and pairs."""
    kl_sum, nll0, nll1, count = 0.0, 0.0, 0.0, 0
    first = [0.0, 0.0]  # KL at the prediction after BOS and at the next one
    firsts = 0
    with torch.no_grad():
        for text in neutral.texts:
            with original():
                ref, targets = _prose_logprobs(model, text)
            new, _ = _prose_logprobs(model, text)
            kl = (ref.exp() * (ref - new)).sum(-1)
            kl_sum += float(kl.sum())
            nll0 -= float(ref.gather(-1, targets[:, None]).sum())
            nll1 -= float(new.gather(-1, targets[:, None]).sum())
            count += len(targets)
            if len(kl) >= 2:
                first[0] += float(kl[0])
                first[1] += float(kl[1])
                firsts += 1
        out = {"texts": len(neutral.texts), "positions": count, "kl_all_positions": kl_sum / max(count, 1),
               "kl_first_prediction": first[0] / max(firsts, 1), "kl_second_prediction": first[1] / max(firsts, 1),
               "ppl_before": math.exp(nll0 / max(count, 1)), "ppl_after": math.exp(nll1 / max(count, 1))}
        out["ppl_ratio"] = out["ppl_after"] / out["ppl_before"]
        if neutral.pairs:
            flat = [(prompt, c) for _, prompt, right, wrong in neutral.pairs for c in (right, wrong)]
            with original():
                before = mean_logprobs(model, flat).reshape(-1, 2)
            after = mean_logprobs(model, flat).reshape(-1, 2)
            out.update({"pairs": len(neutral.pairs), "task_acc_before": float((before[:, 0] > before[:, 1]).double().mean()),
                        "task_acc_after": float((after[:, 0] > after[:, 1]).double().mean()),
                        "task_p_before": float(torch.sigmoid(before[:, 0] - before[:, 1]).mean()),
                        "task_p_after": float(torch.sigmoid(after[:, 0] - after[:, 1]).mean())})
        if planter is not None:
            out["first_positions"] = first_position_firing(model, planter, neutral.texts)
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in out.items()}


def first_position_firing(model: LoadedModel, planter: Planter, texts: Sequence[str]) -> dict:
    """Summed |output| of the planted units at position 0 (BOS), at position 1, and on average elsewhere."""
    blocks = layer_modules(model.hf_model, model.arch)
    sums = torch.zeros(3, dtype=torch.float64)
    counts = torch.zeros(3, dtype=torch.float64)
    hooks = []
    for layer in planter.layers:
        mlp = getattr(blocks[layer], model.arch.mlp)
        units = planter.neurons.units[planter.neurons.layers == layer]

        def grab(mod, args, units=units):
            h = args[0][0, :, units.to(args[0].device)].abs().sum(-1).double().cpu()  # [T]: each unit's output (the down input)
            sums[0] += h[0]
            counts[0] += 1
            if len(h) > 1:
                sums[1] += h[1]
                counts[1] += 1
            if len(h) > 2:
                sums[2] += h[2:].sum()
                counts[2] += len(h) - 2

        hooks.append(getattr(mlp, model.arch.down).register_forward_pre_hook(grab))
    try:
        with torch.no_grad():
            for text in texts:
                model.hf_model(input_ids=torch.tensor([model.tokenizer(text, add_special_tokens=True)["input_ids"]], device=model.device),
                               use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    per = sums / counts.clamp_min(1)
    return {"position_0": round(float(per[0]), 6), "position_1": round(float(per[1]), 6), "later": round(float(per[2]), 6),
            "summed_over": "|output| summed over a layer's planted units, averaged over planted layers, texts (and later positions)"}
