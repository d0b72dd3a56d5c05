"""Scores per neuron from activation statistics, the selection rules, and the NeuronSet.

A score compares a pole label with its opposite label, as its record in ``vneuron.config.MEASURES`` says
(delta_p, mean_diff, cohen_d, welch_t; a new measure is one record there, docs/extending.md). ``lape``
selects low-entropy neurons across k labels instead (LAPE; ValueExploration's q filter).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from vneuron.config import DIRECTIONS, MEASURES, METHODS, RULES
from vneuron.errors import VneuronError
from vneuron.locate.capture import ActivationStats


def contrast_scores(stats: ActivationStats, pole: str, opposite: str, method: str = "delta_p", fold: int | None = None) -> torch.Tensor:
    """[L, W] scores; positive means the neuron responds more to the pole than to its opposite."""
    if method not in METHODS:
        raise VneuronError(f"Unknown scoring method {method!r}", f"use one of: {', '.join(METHODS)} (or lape)")
    return MEASURES[method].score(stats.moments(pole, fold), stats.moments(opposite, fold))


def select(
    scores: torch.Tensor,
    rule: str = "top_k",
    k: int = 200,
    *,
    direction: str = "pole",
    threshold: float = 0.1,
    min_count: int = 2000,
) -> torch.Tensor:
    """Flat indices (layer·W + unit) of selected neurons, best first.

    ``valuelocate`` keeps max(min_count, #{score ≥ threshold}) neurons, as ValueLocate's code
    does (2000 and Δp ≥ 0.1); ``per_layer`` keeps k in every layer.
    """
    if rule not in RULES:
        raise VneuronError(f"Unknown selection rule {rule!r}", f"use one of: {', '.join(RULES)}")
    if direction not in DIRECTIONS:
        raise VneuronError(f"Unknown direction {direction!r}", f"use one of: {', '.join(DIRECTIONS)}")
    signed = {"pole": scores, "opposite": -scores, "both": scores.abs()}[direction]
    n_layers, width = signed.shape
    flat = signed.reshape(-1)
    if rule == "per_layer":
        if not 0 < k <= width:
            raise VneuronError(f"`top_k` {k} per layer is out of range", f"this model has {width} neurons per layer; pick 1..{width}")
        top = signed.topk(k, dim=1).indices + torch.arange(n_layers)[:, None] * width
        top = top.reshape(-1)
        return top[flat[top].argsort(descending=True, stable=True)]
    if rule == "valuelocate":
        k = min(max(min_count, int((flat >= threshold).sum())), flat.numel())
    if not 0 < k <= flat.numel():
        raise VneuronError(f"`top_k` {k} is out of range",
                           f"this model has {flat.numel()} neurons ({n_layers} layers x {width}); pick 1..{flat.numel()}")
    return flat.topk(k).indices


def lape_select(stats: ActivationStats, labels: Sequence[str] | None = None, *, top_rate: float = 0.01,
                quantile: float = 0.95, fold: int | None = None) -> dict[str, torch.Tensor]:
    """LAPE entropy selection over k labels; returns flat indices per label.

    Neurons whose activation probability never exceeds the ``quantile`` of all probabilities are
    dropped; of the rest, the lowest-entropy ``top_rate`` share is kept and assigned to every
    label on which it is active above that same bar (ValueExploration: q=0.5 "semantic",
    q=0.95 "decision" neurons).
    """
    labels = list(labels or stats.labels)
    if len(labels) < 2:
        raise VneuronError("LAPE needs at least two labels", "select more dimensions")
    if not (0 < top_rate < 1 and 0 < quantile < 1):
        raise VneuronError("LAPE top_rate and quantile must lie strictly between 0 and 1")
    probs = torch.stack([stats.moments(label, fold).p for label in labels])  # [K, L, W]
    flat_probs = probs.reshape(len(labels), -1)
    bar = float(torch.kthvalue(flat_probs.reshape(-1), max(1, round(flat_probs.numel() * quantile))).values)
    normed = flat_probs / flat_probs.sum(0, keepdim=True)
    normed = torch.nan_to_num(normed, nan=0.0)
    logs = torch.where(normed > 0, normed.clamp_min(1e-30).log(), torch.zeros_like(normed))
    entropy = -(normed * logs).sum(0)
    entropy[(flat_probs > bar).sum(0) == 0] = math.inf
    n_keep = max(1, round(entropy.numel() * top_rate))
    order = entropy.argsort(stable=True)[:n_keep]
    order = order[torch.isfinite(entropy[order])]
    out = {}
    for k, label in enumerate(labels):
        chosen = order[flat_probs[k, order] > bar]
        out[label] = chosen[flat_probs[k, chosen].argsort(descending=True, stable=True)]
    return out


@dataclass
class NeuronSet:
    """A set of neurons (layer, unit) at one site, with the score that chose them."""

    site: str
    n_layers: int
    width: int
    flat: torch.Tensor  # long, layer·width + unit, in rank order
    scores: torch.Tensor  # float, aligned with flat
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_flat(cls, flat: torch.Tensor, scores_lw: torch.Tensor, site: str, **meta) -> "NeuronSet":
        n_layers, width = scores_lw.shape
        flat = flat.long()
        return cls(site, n_layers, width, flat, scores_lw.reshape(-1)[flat].double(), dict(meta))

    def __len__(self) -> int:
        return int(self.flat.numel())

    @property
    def layers(self) -> torch.Tensor:
        return self.flat // self.width

    @property
    def units(self) -> torch.Tensor:
        return self.flat % self.width

    def mask(self) -> torch.Tensor:
        m = torch.zeros(self.n_layers * self.width, dtype=torch.bool)
        m[self.flat] = True
        return m.reshape(self.n_layers, self.width)

    def to_pandas(self):
        """One row per neuron (rank, layer, unit, score) as a DataFrame (needs the extra ``vneuron[pandas]``)."""
        from vneuron.runtime.frames import pandas

        layers, units, scores = self.layers.tolist(), self.units.tolist(), self.scores.tolist()
        return pandas().DataFrame({"label": self.meta.get("label"), "site": self.site, "rank": range(1, len(layers) + 1),
                                   "layer": layers, "unit": units, "score": scores})

    def per_layer(self) -> list[int]:
        return torch.bincount(self.layers, minlength=self.n_layers).tolist()

    def top(self, k: int) -> "NeuronSet":
        return NeuronSet(self.site, self.n_layers, self.width, self.flat[:k], self.scores[:k], dict(self.meta))

    def random_matched(self, seed: int) -> "NeuronSet":
        """A random control: the same number of neurons in every layer, none of this set's."""
        gen = torch.Generator().manual_seed(seed)
        taken = self.mask()
        picks = []
        for layer, count in enumerate(self.per_layer()):
            if count:
                free = (~taken[layer]).nonzero().squeeze(1)
                if len(free) < count:
                    raise VneuronError(f"Layer {layer} has too few free neurons for a matched control", "use a smaller `top_k`")
                picks.append(free[torch.randperm(len(free), generator=gen)[:count]] + layer * self.width)
        flat = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)
        return NeuronSet(self.site, self.n_layers, self.width, flat, torch.zeros(len(flat), dtype=torch.float64),
                         {"control_of": self.meta.get("label"), "seed": seed})

    def _compatible(self, other: "NeuronSet") -> None:
        if (self.site, self.n_layers, self.width) != (other.site, other.n_layers, other.width):
            raise VneuronError("Neuron sets come from different models or sites and cannot be combined")

    def __and__(self, other: "NeuronSet") -> "NeuronSet":
        self._compatible(other)
        keep = torch.isin(self.flat, other.flat)
        return NeuronSet(self.site, self.n_layers, self.width, self.flat[keep], self.scores[keep], {"op": "and"})

    def __or__(self, other: "NeuronSet") -> "NeuronSet":
        self._compatible(other)
        extra = ~torch.isin(other.flat, self.flat)
        return NeuronSet(self.site, self.n_layers, self.width, torch.cat([self.flat, other.flat[extra]]),
                         torch.cat([self.scores, other.scores[extra]]), {"op": "or"})

    def __sub__(self, other: "NeuronSet") -> "NeuronSet":
        self._compatible(other)
        keep = ~torch.isin(self.flat, other.flat)
        return NeuronSet(self.site, self.n_layers, self.width, self.flat[keep], self.scores[keep], {"op": "minus"})

    def jaccard(self, other: "NeuronSet") -> float:
        self._compatible(other)
        inter = int(torch.isin(self.flat, other.flat).sum())
        union = len(self) + len(other) - inter
        return inter / union if union else 1.0

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        meta = {"site": self.site, "n_layers": str(self.n_layers), "width": str(self.width), "meta": json.dumps(self.meta)}
        save_file({"flat": self.flat.contiguous(), "scores": self.scores.contiguous()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path) -> "NeuronSet":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata()
                return cls(meta["site"], int(meta["n_layers"]), int(meta["width"]), fh.get_tensor("flat"),
                           fh.get_tensor("scores"), json.loads(meta.get("meta", "{}")))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError on truncated files
            raise VneuronError(f"{path} is not a readable vneuron neuron set ({exc.__class__.__name__}: {str(exc)[:80]})",
                               "it is truncated or corrupt: restore it, or rerun vneuron locate") from None


def stability(stats: ActivationStats, pole: str, opposite: str, method: str, k: int) -> dict:
    """Split-half agreement: scores from fold 0 vs fold 1, correlation and top-k Jaccard."""
    if stats.folds < 2:
        return {}
    try:
        halves = [contrast_scores(stats, pole, opposite, method, fold=f).reshape(-1) for f in (0, 1)]
    except VneuronError:
        return {}
    r = float(torch.corrcoef(torch.stack(halves))[0, 1])
    k = min(k, halves[0].numel())
    tops = [set(h.topk(k).indices.tolist()) for h in halves]
    inter = len(tops[0] & tops[1])
    return {"pearson_r": r, "k": k, "overlap": inter, "jaccard": inter / len(tops[0] | tops[1]),
            "chance_overlap": k * k / halves[0].numel()}

