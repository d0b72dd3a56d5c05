"""Editing neurons during the forward pass and at every generation step.

Every edit is a per-unit map applied at the neuron site of the chosen units only, a ← α·a + β (or
a ← min(a, 0)), with α and β from the mode's record (``vneuron.config.EDIT_MODES``: zero, clamp, mean,
scale, add, set; a new mode is one record there, docs/extending.md). A ``DirectionEdit`` moves the
residual stream instead, at one block's output, x ← x − p·(x·d̂)d̂ + α·d̂ at every position (the direction
baselines, ``vneuron.validate.directions``); both are planned and applied by the same ``plan`` and
``apply``. Call ``apply`` inside a trace body (for generation: inside ``for _ in tracer.iter[:]``, so
every step is edited).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vneuron.config import EDIT_MODES, check_edit_mode
from vneuron.errors import VneuronError
from vneuron.locate.capture import ActivationStats
from vneuron.locate.scoring import NeuronSet, contrast_scores
from vneuron.models.loading import LoadedModel
from vneuron.locate.residual import block_hidden
from vneuron.models.sites import resolve_path, site_path, site_tensor

P95_Z = 1.6449  # add-boost magnitude: mean + z·sd, a Gaussian stand-in for the 95th percentile


@dataclass
class LayerEdit:
    layer: int
    units: torch.Tensor  # long
    alpha: torch.Tensor  # per unit
    beta: torch.Tensor  # per unit
    clamp: bool = False


@dataclass
class Units:
    """What an edit mode's α and β are written in, for the units of one layer (float64, per unit)."""

    ones: torch.Tensor
    zeros: torch.Tensor
    gamma: float
    values: torch.Tensor  # the mode's per-unit values (mean, magnitude or target; zeros + value without them)
    gate: torch.Tensor  # σ(10(Δp − 0.15)) for gated modes with a boost, else ones


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
        record = check_edit_mode(self.mode)
        if record.values and self.values is None:
            what = {"mean": "per-neuron means", "magnitude": "a per-neuron magnitude"}[record.values]
            raise VneuronError(f"The {self.mode} edit needs {what}",
                               "pass values= (e.g. edit_from_stats(..., mode=...) from a locate run's statistics)")
        self.layers = self._plan()

    @property
    def site(self) -> str:
        return self.neurons.site

    def _plan(self) -> list[LayerEdit]:
        record = EDIT_MODES[self.mode]
        plan = []
        layers, units = self.neurons.layers, self.neurons.units
        for layer in sorted(set(layers.tolist())):
            idx = units[layers == layer]
            ones, zeros = torch.ones(len(idx), dtype=torch.float64), torch.zeros(len(idx), dtype=torch.float64)
            values = self.values[layer, idx].double() if self.values is not None else zeros + self.value
            gate = torch.sigmoid(10 * (self.boost[layer, idx].double() - 0.15)) if record.gate and self.boost is not None else ones
            u = Units(ones, zeros, self.gamma, values, gate)
            plan.append(LayerEdit(layer, idx, record.alpha(u), record.beta(u), clamp=record.clamp))
        return plan

    def describe(self) -> dict:
        return {"mode": self.mode, "gamma": self.gamma, "neurons": len(self.neurons), "site": self.site,
                "per_layer": self.neurons.per_layer()}


@dataclass
class DirectionEdit:
    """x ← x − p·(x·d̂)d̂ + α·d̂ on the output of block ``layer`` (the residual stream after it), at every position
    and generation step: ``project`` (p = 1) removes the direction, ``alpha`` adds it. ``direction`` need not be
    unit length: d̂ is it normalised."""

    layer: int
    direction: torch.Tensor  # [hidden]
    alpha: float = 0.0
    project: bool = False
    label: str = ""  # what it is, for tables (e.g. "mean difference self_transcendence − self_enhancement")

    def __post_init__(self) -> None:
        norm = float(self.direction.double().norm())
        if not norm > 0 or not torch.isfinite(self.direction).all():
            raise VneuronError(f"The direction at layer {self.layer} has no length (norm {norm:g})",
                               "the pole and its opposite have the same mean residual there: choose another layer")
        self.unit = self.direction.double() / norm

    def describe(self) -> dict:
        return {"kind": "direction", "layer": self.layer, "alpha": self.alpha, "project": self.project,
                "hidden": int(self.unit.numel()), "label": self.label}


def plan(model: LoadedModel, edits: list | Edit | DirectionEdit | None) -> list[tuple]:
    """Edits as plain tuples (layer, path, units, alpha, beta, clamp) in forward order; a direction's is
    (layer, (layers path,), d̂, α, p, False).

    Built before a trace, so a remote server receives strings and tensors, never vneuron objects.
    """
    if edits is None:
        return []
    edits = [edits] if isinstance(edits, (Edit, DirectionEdit)) else edits
    steps = []
    for edit in edits:
        if isinstance(edit, DirectionEdit):  # a block's output comes after both neuron sites of that block
            if not 0 <= edit.layer < model.n_layers:
                raise VneuronError(f"Direction layer {edit.layer} is out of range: the model has layers 0 to {model.n_layers - 1}",
                                   f"pass a layer from 0 to {model.n_layers - 1}")
            steps.append((edit.layer, 2, ((model.arch.layers,), edit.unit, torch.tensor(float(edit.alpha), dtype=torch.float64),
                                          torch.tensor(float(edit.project), dtype=torch.float64), False)))
            continue
        # the gate activation is computed before the projection's input within a layer
        steps += [(e.layer, 0 if edit.site == "gate" else 1, (site_path(model.arch, edit.site), e.units, e.alpha, e.beta, e.clamp))
                  for e in edit.layers]
    return [(layer, *rest) for layer, _, rest in sorted(steps, key=lambda t: t[:2])]


def split_at(steps: list[tuple], layer: int) -> tuple[list[tuple], list[tuple]]:
    """A plan's steps before block ``layer``'s output is read (every edit below it and its own neuron sites) and after
    (a direction at its output, and every edit above it), each in forward order."""
    first = [s[0] < layer or (s[0] == layer and len(s[1]) != 1) for s in steps]
    return [s for s, f in zip(steps, first) if f], [s for s, f in zip(steps, first) if not f]


def apply(lm, steps: list[tuple]) -> None:
    """Edit the site tensors (and block outputs) in place; call inside a trace (once per generation step)."""
    for layer, path, units, alpha, beta, clamp in steps:
        block = resolve_path(lm, path[0])[layer]
        if len(path) == 1:  # a direction: units is d̂, alpha α, beta p
            shift_residual(block.output, units, alpha, beta)
            continue
        tensor = site_tensor(block, path)
        units = units.to(tensor.device)  # the plan is made on the host; each layer's activations may live elsewhere
        current = tensor[..., units]
        tensor[..., units] = current.clamp(max=0) if clamp else (current * alpha.to(current.device, current.dtype)
                                                                 + beta.to(current.device, current.dtype))


def start_at(steps: list[tuple]) -> int:
    """The first block a plan's edits can change: its lowest layer, or the one above it where the edits there are all
    directions at that block's output (whose unedited output is then the input of the next; ``shifted``)."""
    low = min((s[0] for s in steps), default=0)
    return low + 1 if steps and not split_at(steps, low)[0] else low


def shifted(output, steps: list[tuple]):
    """A copy of a block's unedited output with the plan's directions at that block applied, as ``apply`` applies
    them to it in a trace (the same operation on the same values: the same bits)."""
    hidden = block_hidden(output).clone()
    for _, _, unit, alpha, project, _ in steps:
        shift_residual(hidden, unit, alpha, project)
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def shift_residual(output, unit: torch.Tensor, alpha: torch.Tensor, project: torch.Tensor) -> None:
    """x ← x − p·(x·d̂)d̂ + α·d̂ in place on a block's output, on the device and in the dtype of the activation."""
    h = block_hidden(output)
    d = unit.to(h.device, h.dtype)
    h[...] = h - project.to(h.device, h.dtype) * (h @ d)[..., None] * d + alpha.to(h.device, h.dtype) * d


def edit_from_stats(neurons: NeuronSet, mode: str, stats: ActivationStats | None = None, *, gamma: float = 1.0,
                    value: float = 0.0, pole: str | None = None, opposite: str | None = None) -> Edit:
    """An edit whose per-neuron values come from a locate run's statistics, as its mode's record asks.

    ``mean``: the corpus mean over all labels; ``magnitude``: v = mean + 1.645·sd (≈ 95th percentile);
    a gated mode (add): the sigmoid gate on Δp(pole vs opposite), as in ValueLocate.
    """
    record = check_edit_mode(mode)
    values = boost = None
    if record.values:
        if stats is None:
            raise VneuronError(f"The {mode} edit needs the locate run's statistics", "run it from a locate run directory")
        n = stats.n.sum()
        mean = stats.sum.sum((0, 1)) / n
        if record.values == "mean":
            values = mean
        else:
            var = (stats.sumsq.sum((0, 1)) / n - mean**2).clamp_min(0)
            values = mean + P95_Z * var.sqrt()
    if record.gate and stats is not None and pole and opposite:
        boost = contrast_scores(stats, pole, opposite, "delta_p")
    return Edit(neurons, mode, gamma=gamma, values=values, boost=boost, value=value)
