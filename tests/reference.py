"""Ground truth for capture tests: plain PyTorch forward hooks, one prompt at a time, no padding."""

from __future__ import annotations

import torch

from vneuron.capture import ActivationStats, fold_of
from vneuron.tokens import encode
from vneuron.models.sites import layer_modules, site_module


def hook_stats(loaded, prompts, labels, site="gate", folds=1, counted_span=True) -> ActivationStats:
    model = loaded.hf_model
    stats = ActivationStats.zeros(site, labels, folds, loaded.n_layers, loaded.width)
    slots = [labels.index(p.label) * folds + fold_of(p.group, folds) for p in prompts]
    encoded = encode(loaded.tokenizer, prompts, slots, counted_span=counted_span)
    for e in encoded:
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
        keep = torch.tensor(e.counted)
        acts = torch.stack(seen)[:, keep, :].double()  # [L, t, W]
        slot = torch.tensor([e.slot])
        stats.add_(slot, torch.tensor([float(keep.sum())]), acts.sum(1)[None], (acts**2).sum(1)[None], (acts > 0).double().sum(1)[None])
    return stats
