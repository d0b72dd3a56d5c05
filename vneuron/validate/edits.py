"""Editing neurons during the forward pass and at every generation step.

Every edit is a per-unit map applied at the neuron site of the chosen units only:
  zero   a ← 0                   clamp  a ← min(a, 0)
  mean   a ← μ (corpus mean)     scale  a ← γ·a
  add    a ← a + γ·v·σ(10(Δp − 0.15))   (ValueLocate's boost; v a per-neuron magnitude)
  set    a ← value
All but clamp are affine, a ← α·a + β, which is how they are applied. Call ``apply`` inside a
trace body (for generation: inside ``for _ in tracer.iter[:]``, so every step is edited).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vneuron.locate.capture import ActivationStats
from vneuron.config import EDIT_MODES
from vneuron.errors import VneuronError
from vneuron.models.loading import LoadedModel
from vneuron.models.sites import resolve_path, site_path, site_tensor
from vneuron.locate.scoring import NeuronSet, contrast_scores

P95_Z = 1.6449  # add-boost magnitude: mean + z·sd, a Gaussian stand-in for the 95th percentile


@dataclass
class LayerEdit:
    layer: int
    units: torch.Tensor  # long
    alpha: torch.Tensor  # per unit
    beta: torch.Tensor  # per unit
    clamp: bool = False


@dataclass
class Edit:
    """What to do to which neurons; ``values`` are per-neuron [L, W] (mean, magnitude or target)."""

    neurons: NeuronSet
    mode: str = "zero"
    gamma: float = 1.0
    values: torch.Tensor | None = None
    boost: torch.Tensor | None = None  # add mode: per-neuron Δp for the sigmoid gate (None: gate 1)
    value: float = 0.0  # set mode without per-neuron values
    layers: list[LayerEdit] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in EDIT_MODES:
            raise VneuronError(f"Unknown edit mode {self.mode!r}", f"use one of: {', '.join(EDIT_MODES)}")
        if self.mode == "mean" and self.values is None:
            raise VneuronError("Mean ablation needs per-neuron means", "pass values= (e.g. from a locate run's statistics)")
        if self.mode == "add" and self.values is None:
            raise VneuronError("The add edit needs a per-neuron magnitude", "pass values= (e.g. edit_from_stats(..., mode='add'))")
        self.layers = self._plan()

    @property
    def site(self) -> str:
        return self.neurons.site

    def _plan(self) -> list[LayerEdit]:
        plan = []
        layers, units = self.neurons.layers, self.neurons.units
        for layer in sorted(set(layers.tolist())):
            idx = units[layers == layer]
            ones, zeros = torch.ones(len(idx), dtype=torch.float64), torch.zeros(len(idx), dtype=torch.float64)

            def per(t: torch.Tensor) -> torch.Tensor:
                return t[layer, idx].double()

            if self.mode == "zero":
                alpha, beta = zeros, zeros
            elif self.mode == "clamp":
                alpha, beta = ones, zeros
            elif self.mode == "mean":
                alpha, beta = zeros, per(self.values)
            elif self.mode == "scale":
                alpha, beta = ones * self.gamma, zeros
            elif self.mode == "add":
                gate = torch.sigmoid(10 * (per(self.boost) - 0.15)) if self.boost is not None else ones
                alpha, beta = ones, self.gamma * per(self.values) * gate
            else:  # set
                alpha, beta = zeros, per(self.values) if self.values is not None else zeros + self.value
            plan.append(LayerEdit(layer, idx, alpha, beta, clamp=self.mode == "clamp"))
        return plan

    def describe(self) -> dict:
        return {"mode": self.mode, "gamma": self.gamma, "neurons": len(self.neurons), "site": self.site,
                "per_layer": self.neurons.per_layer()}


def plan(model: LoadedModel, edits: list[Edit] | Edit | None) -> list[tuple]:
    """Edits as plain tuples (layer, site path, units, alpha, beta, clamp) in forward order.

    Built before a trace, so a remote server receives strings and tensors, never vneuron objects.
    """
    if edits is None:
        return []
    edits = [edits] if isinstance(edits, Edit) else edits
    steps = [(e.layer, 0 if edit.site == "gate" else 1, edit.site, e) for edit in edits for e in edit.layers]
    # the gate activation is computed before the projection's input within a layer
    return [(layer, site_path(model.arch, site), e.units, e.alpha, e.beta, e.clamp)
            for layer, _, site, e in sorted(steps, key=lambda t: t[:2])]


def apply(lm, steps: list[tuple]) -> None:
    """Edit the site tensors in place; call inside a trace (once per generation step)."""
    for layer, path, units, alpha, beta, clamp in steps:
        tensor = site_tensor(resolve_path(lm, path[0])[layer], path)
        current = tensor[..., units]
        tensor[..., units] = current.clamp(max=0) if clamp else current * alpha.to(current.dtype) + beta.to(current.dtype)


def edit_from_stats(neurons: NeuronSet, mode: str, stats: ActivationStats | None = None, *, gamma: float = 1.0,
                    value: float = 0.0, pole: str | None = None, opposite: str | None = None) -> Edit:
    """An edit whose per-neuron values come from a locate run's statistics.

    mean: the corpus mean over all labels; add: magnitude v = mean + 1.645·sd (≈ 95th
    percentile) and the sigmoid gate on Δp(pole vs opposite) as in ValueLocate.
    """
    values = boost = None
    if mode in ("mean", "add"):
        if stats is None:
            raise VneuronError(f"The {mode} edit needs the locate run's statistics", "run it from a locate run directory")
        n = stats.n.sum()
        mean = stats.sum.sum((0, 1)) / n
        if mode == "mean":
            values = mean
        else:
            var = (stats.sumsq.sum((0, 1)) / n - mean**2).clamp_min(0)
            values = mean + P95_Z * var.sqrt()
            if pole and opposite:
                boost = contrast_scores(stats, pole, opposite, "delta_p")
    return Edit(neurons, mode, gamma=gamma, values=values, boost=boost, value=value)
