"""Ground truth for capture tests: plain PyTorch forward hooks, one prompt at a time, no padding."""

from __future__ import annotations

import torch

from vneuron.locate.capture import ActivationStats, fold_of
from vneuron.runtime.tokens import encode
from vneuron.models.sites import layer_modules, site_module


def hook_acts(loaded, e, site="gate") -> torch.Tensor:
    """[L, tokens, W]: the site's activations of one encoded prompt, run alone (float64)."""
    model = loaded.hf_model
    seen = []
    hooks = []
    for block in layer_modules(model, loaded.arch):
        module = site_module(block, loaded.arch, site)
        if site == "gate":
            hooks.append(module.register_forward_hook(lambda m, i, o: seen.append(o[0].detach())))
        else:
            hooks.append(module.register_forward_pre_hook(lambda m, i: seen.append(i[0][0].detach())))
    try:
        with torch.no_grad():
            model(torch.tensor([e.ids]))
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(seen).double()


def hook_stats(loaded, prompts, labels, site="gate", folds=1, counted_span=True) -> ActivationStats:
    stats = ActivationStats.zeros(site, labels, folds, loaded.n_layers, loaded.width)
    slots = [labels.index(p.label) * folds + fold_of(p.group, folds) for p in prompts]
    encoded = encode(loaded.tokenizer, prompts, slots, counted_span=counted_span)
    for e in encoded:
        keep = torch.tensor(e.counted)
        acts = hook_acts(loaded, e, site)[:, keep, :]  # [L, t, W]
        slot = torch.tensor([e.slot])
        stats.add_(slot, torch.tensor([float(keep.sum())]), acts.sum(1)[None], (acts**2).sum(1)[None], (acts > 0).double().sum(1)[None])
    return stats


def hook_examples(loaded, prompts, labels, n, site="gate", counted_span=True) -> dict[str, torch.Tensor]:
    """The top examples by sorting every prompt's mean activation over its counted tokens (per label)."""
    encoded = encode(loaded.tokenizer, prompts, [0] * len(prompts), counted_span=counted_span)
    means = torch.stack([hook_acts(loaded, e, site)[:, torch.tensor(e.counted), :].mean(1) for e in encoded])  # [P, L, W]
    shape = (len(labels), n, loaded.n_layers, loaded.width)
    out = {"top_values": torch.full(shape, -torch.inf, dtype=torch.float64), "top_ids": torch.full(shape, -1),
           "bottom_values": torch.full(shape, torch.inf, dtype=torch.float64), "bottom_ids": torch.full(shape, -1)}
    for k, label in enumerate(labels):
        mine = torch.tensor([i for i, p in enumerate(prompts) if p.label == label])
        if not len(mine):
            continue
        for side, descending in (("top", True), ("bottom", False)):
            order = means[mine].argsort(0, descending=descending)[:n]  # [≤n, L, W]
            out[f"{side}_ids"][k, : len(order)] = mine[order]
            out[f"{side}_values"][k, : len(order)] = means[mine].gather(0, order)
    return out


def hook_hidden(loaded, e) -> torch.Tensor:
    """[L, tokens, H]: every block's output (the residual stream after it) for one encoded prompt, run alone (float64)."""
    model = loaded.hf_model
    seen = []
    hooks = [block.register_forward_hook(lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o)[0].detach()))
             for block in layer_modules(model, loaded.arch)]
    try:
        with torch.no_grad():
            model(torch.tensor([e.ids]))
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(seen).double()


def hook_residual(loaded, prompts, labels, folds=1, counted_span=True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n [K, F], Σh [K, F, L, H], per-prompt means [P, L, H]) over counted tokens, one prompt at a time, no padding."""
    slots = [labels.index(p.label) * folds + fold_of(p.group, folds) for p in prompts]
    encoded = encode(loaded.tokenizer, prompts, slots, counted_span=counted_span)
    hidden = loaded.arch.hidden(loaded.config)
    n = torch.zeros(len(labels), folds, dtype=torch.float64)
    sums = torch.zeros(len(labels), folds, loaded.n_layers, hidden, dtype=torch.float64)
    means = []
    for e in encoded:
        h = hook_hidden(loaded, e)[:, torch.tensor(e.counted), :]  # [L, t, H]
        k, f = divmod(e.slot, folds)
        n[k, f] += h.shape[1]
        sums[k, f] += h.sum(1)
        means.append(h.mean(1))
    return n, sums, torch.stack(means)
