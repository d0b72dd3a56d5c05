"""Positive control: plant value neurons with a known identity.

When every located set is indistinguishable from random controls, three explanations compete:
the model holds no value preference, the method lacks power at this corpus size, or a step of
the pipeline is broken. A planted model tells them apart. ``plant`` picks K neurons and trains
ONLY their own parameters (their rows of the input projections, e.g. gate and up, and their
column of the output projection; see ``models.sites.NEURON_PROJECTIONS``) so that the model
prefers the actions of one pole in the same forced-choice formats evaluation reads, while a KL
term keeps the next-token distribution on neutral text close to the original. A planted neuron
must also *read* the pole (its gate row starts at the direction separating the two poles'
actions, and a smooth activation-probability difference is kept up): trained on behaviour alone,
the units learn to write the preference everywhere, which no activation contrast can see
(docs/EVIDENCE.md). Every other
parameter stays bit for bit what it was: training runs through small delta tensors added by
forward hooks, and only at the end are the planted slices written into the weights.

Output: an ordinary model directory (loadable with ``--model DIR``), the planted NeuronSet (the
ground truth), the original weights of the planted slices (to restore them exactly), a manifest
and the training curve.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from .capture import _pack, encode, pad_id
from .data import load_corpus
from .data.schema import Corpus, Item, Prompt
from .errors import VneuronError
from .evaluate import CHOICE_FORMATS, forced_choice, forced_choice_pairs
from .models.loading import LoadedModel, _dir_revision, load_model, resolve
from .models.sites import check_site, layer_modules, neuron_projections
from .runs import base_manifest, check_fresh, staged, write_csv, write_json
from .scoring import NeuronSet

PLANT_DIR = "plant"  # inside the model directory: manifest, ground truth, original slices, curve
NEURONS_FILE = "neurons.safetensors"
ORIGINAL_FILE = "original.safetensors"
PROFILES = ("uniform", "random")
MECHANISMS = ("promote", "veto")
Progress = Callable[[str, int, int], None]


@dataclass
class PlantConfig:
    """Everything that decides a planting (recorded in the manifest)."""

    dimension: str = "self_transcendence"  # the pole the planted model comes to prefer over its opposite
    dataset: str | None = None  # None: the built-in corpus
    columns: dict[str, str] | None = None
    contrasts: list[tuple[str, str]] | None = None
    language: str = "en"
    k: int = 200
    neurons: str | None = None  # a NeuronSet file: plant exactly these (k and profile are then ignored)
    profile: str = "uniform"  # uniform (equal count per layer), random (uniform over all neurons) or per-layer weights "w0,w1,..."
    site: str = "gate"  # site recorded in the planted NeuronSet (the units are the same at both sites)
    seed: int = 0
    choices: tuple[str, ...] = CHOICE_FORMATS  # forced-choice formats trained on (and reported)
    steps: int = 120
    batch_items: int = 8  # scenarios per optimisation step
    micro_items: int = 2  # scenarios per forward pass (memory)
    lr: float = 2e-3
    kl_weight: float = 1.0
    init: str = "read"  # read: point the gate rows at the direction separating the poles' actions; none: train from the rows as they are
    read_mix: float = 0.25  # weight of each row's own values added to the read direction in the read initialisation
    read_spread: float = 2.0  # standard deviation of the read direction's pre-activation over the action tokens
    read_quantile: float | None = None  # share of the other pole's action tokens on which a unit fires (None: split at the midpoint)
    read_up: bool | None = None  # the up rows read the same direction (None: when vetoing, unless read_context)
    read_passes: int = 1  # passes of the read setting; after the first, each layer is fitted to the inputs the planted units of earlier layers shape
    read_context: float | None = None  # GLU: the up rows read "an action, not the scenario" (0 on scenario tokens, this on actions), and the threshold holds on scenario tokens too
    freeze_read: bool | None = None  # keep the read rows (gate, and up if read_up) as initialised (None: when vetoing)
    keep_weight: float = 1.0  # the action the units do not read keeps its likelihood (so they must respond to the one they read)
    select_weight: float = 1.0  # the planted neurons must respond to the actions they read (smooth Δp ≥ select_target)
    select_target: float = 0.5
    kl_texts: int = 2  # neutral texts per step for the KL term
    kl_positions: int = 16  # last positions of each neutral text compared with the original model
    val_fraction: float = 0.2  # share of the training scenarios held out for early stopping
    eval_every: int = 10
    patience: int = 3  # evaluations without a better validation loss before stopping
    train_limit: int | None = None  # training scenarios per pole side (None: the whole train split)
    report_limit: int | None = 32  # train scenarios per side in the before/after report
    test_limit: int | None = None  # test scenarios per side in the before/after report (None: all)
    batch_tokens: int = 4096
    train_choices: tuple[str, ...] | None = None  # formats optimised each step (None: all of ``choices``); all are validated and reported
    kl_pool: int = 8  # neutral texts whose original next-token distributions are computed once and reused (0: a fresh sample each step)
    mechanism: str = "promote"  # promote: units read the pole and raise its actions; veto: units read the opposite and suppress its actions

    def reader(self, opposite: str) -> str:
        """The label whose actions the planted units read (and respond to): what locate should find them as."""
        return self.dimension if self.mechanism == "promote" else opposite

    @property
    def reads_up(self) -> bool:
        return self.read_up if self.read_up is not None else (self.mechanism == "veto" and self.read_context is None)

    @property
    def sets_up(self) -> bool:
        """The read initialisation sets the up rows too (to the read direction, or to the context direction)."""
        return self.reads_up or self.read_context is not None

    @property
    def frozen_read(self) -> bool:
        return self.init == "read" and (self.freeze_read if self.freeze_read is not None else self.mechanism == "veto")

    @property
    def kept(self) -> int:
        """Which action keeps its original likelihood (0: the pole's, 1: the opposite's): the one the units do not read."""
        return 1 if self.mechanism == "promote" else 0

    def check(self) -> "PlantConfig":
        check_site(self.site)
        unknown = [c for c in (*self.choices, *(self.train_choices or ())) if c not in CHOICE_FORMATS]
        if unknown or not self.choices or (self.train_choices is not None and not self.train_choices):
            raise VneuronError(f"Unknown forced-choice format {', '.join(unknown) or '(none)'}", f"use {', '.join(CHOICE_FORMATS)}")
        if self.neurons is not None and not Path(self.neurons).is_file():
            raise VneuronError(f"--neurons {self.neurons} does not exist", "pass a NeuronSet file, e.g. RUN/neurons/self_transcendence.safetensors")
        if self.neurons is None and self.k < 1:
            raise VneuronError(f"--k must be at least 1, got {self.k}")
        if self.steps < 1 or self.batch_items < 1 or self.micro_items < 1 or self.eval_every < 1 or self.lr <= 0:
            raise VneuronError("--steps, --batch-items, --eval-every and --lr must be positive")
        if not 0 < self.val_fraction < 1:
            raise VneuronError(f"--val-fraction must lie strictly between 0 and 1, got {self.val_fraction}")
        if self.read_spread <= 0 or (self.read_quantile is not None and not 0 < self.read_quantile < 1):
            raise VneuronError("--read-spread must be positive and --read-quantile strictly between 0 and 1")
        if self.read_passes < 1:
            raise VneuronError(f"--read-passes must be at least 1, got {self.read_passes}")
        if self.read_context is not None and (self.read_context <= 0 or not math.isfinite(self.read_context)):
            raise VneuronError(f"--read-context must be a positive number, got {self.read_context}", "e.g. --read-context 2")
        if self.mechanism not in MECHANISMS:
            raise VneuronError(f"Unknown --mechanism {self.mechanism!r}", f"use {' or '.join(MECHANISMS)}")
        if self.init not in ("read", "none"):
            raise VneuronError(f"Unknown --init {self.init!r}", "use read or none")
        if self.kl_weight < 0:
            raise VneuronError("--kl-weight must be ≥ 0")
        if self.profile not in PROFILES:
            _profile_weights(self.profile)
        return self


@dataclass
class PlantResult:
    out: Path
    manifest: dict[str, Any]
    neurons: NeuronSet
    curve: list[dict[str, Any]] = field(default_factory=list)


# -- which neurons ---------------------------------------------------------------------------
def _profile_weights(profile: str) -> list[float]:
    try:
        weights = [float(w) for w in profile.split(",")]
    except ValueError:
        weights = []
    if not weights or any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise VneuronError(f"Cannot read --profile {profile!r}",
                           f"use {' or '.join(PROFILES)}, or one non-negative weight per layer, e.g. 0,0,1,1,2,2")
    return weights


def layer_counts(profile: str, k: int, n_layers: int, width: int, gen: torch.Generator) -> list[int]:
    """How many of the K planted neurons fall in each layer under ``profile``."""
    if profile == "random":
        flat = torch.randperm(n_layers * width, generator=gen)[:k]
        return torch.bincount(flat // width, minlength=n_layers).tolist()
    weights = [1.0] * n_layers if profile == "uniform" else _profile_weights(profile)
    if len(weights) != n_layers:
        raise VneuronError(f"--profile has {len(weights)} weights but the model has {n_layers} layers", "give one weight per layer")
    total = sum(weights)
    exact = [k * w / total for w in weights]
    counts = [int(math.floor(e)) for e in exact]
    # largest remainders first; ties broken at random (seeded) so no layer is favoured by position
    order = sorted(range(n_layers), key=lambda l: (-(exact[l] - counts[l]), float(torch.rand(1, generator=gen))))
    for l in order[: k - sum(counts)]:
        counts[l] += 1
    if max(counts) > width:
        raise VneuronError(f"--profile puts {max(counts)} neurons in one layer of {width}", "spread the weights over more layers or lower --k")
    return counts


def choose_neurons(model: LoadedModel, config: PlantConfig) -> NeuronSet:
    """The K neurons to plant: random under a per-layer profile (seeded), or read from a NeuronSet file."""
    total = model.n_layers * model.width
    if config.neurons:
        chosen = NeuronSet.load(Path(config.neurons))
        if (chosen.n_layers, chosen.width) != (model.n_layers, model.width):
            raise VneuronError(f"{config.neurons} holds neurons of a {chosen.n_layers} x {chosen.width} model, this one is "
                               f"{model.n_layers} x {model.width}", "pass a neuron set located in this model")
        flat = torch.unique(chosen.flat)
        if len(flat) == 0:
            raise VneuronError(f"{config.neurons} holds no neurons", "pass a non-empty neuron set")
        return NeuronSet(config.site, model.n_layers, model.width, flat, torch.zeros(len(flat), dtype=torch.float64),
                         {"planted": True, "source": str(config.neurons), "label": config.dimension})
    if config.k > total:
        raise VneuronError(f"--k {config.k} is more neurons than the model has ({model.n_layers} layers x {model.width} = {total})",
                           f"pick 1..{total}")
    gen = torch.Generator().manual_seed(config.seed)
    counts = layer_counts(config.profile, config.k, model.n_layers, model.width, gen)
    picks = [torch.randperm(model.width, generator=gen)[:c].sort().values + layer * model.width
             for layer, c in enumerate(counts) if c]
    flat = torch.cat(picks)
    return NeuronSet(config.site, model.n_layers, model.width, flat, torch.zeros(len(flat), dtype=torch.float64),
                     {"planted": True, "profile": config.profile, "seed": config.seed, "label": config.dimension})


# -- the planted parameters ------------------------------------------------------------------
@dataclass
class _Slice:
    """One trainable slice of one weight: ``param[index along axis] = original + delta``."""

    name: str  # the parameter's name in the model's state dict
    param: torch.nn.Parameter
    axis: int
    index: torch.Tensor
    delta: torch.Tensor  # laid out like the slice


def _rows(s: _Slice, cols: slice, conv: bool) -> torch.Tensor:
    """The original rows [k, H] of a slice's units (Conv1D stores them as columns)."""
    values = s.param.index_select(s.axis, s.index[cols])
    return values.T if conv else values


def _set_rows(s: _Slice, cols: slice, new: torch.Tensor, conv: bool) -> None:
    """Make ``original + delta`` equal ``new`` ([k, H]) for those units."""
    delta = new - _rows(s, cols, conv)
    if conv:
        s.delta[:, cols] = delta.T
    else:
        s.delta[cols] = delta


class Planter:
    """Delta tensors for the planted neurons' own parameters, added by forward hooks.

    The base weights are never written while training, so "everything else bit for bit" holds
    by construction; ``materialise`` writes original + delta into exactly the planted slices.
    """

    def __init__(self, model: LoadedModel, neurons: NeuronSet):
        hf = model.hf_model
        self.model, self.neurons, self.enabled = model, neurons, True
        self.slices: list[_Slice] = []
        self._hooks = []
        names = {id(p): n for n, p in hf.named_parameters()}
        ins, out_name = neuron_projections(model.arch)
        blocks = layer_modules(hf, model.arch)
        self.layers = sorted(set(neurons.layers.tolist()))
        self.readers: list[tuple[_Slice, bool, int]] = []  # per planted layer: the gate slice
        self.ups: list[_Slice | None] = []  # per planted layer: the up slice (GLU families with separate projections)
        self.mlps = [getattr(blocks[layer], model.arch.mlp) for layer in self.layers]
        for layer in self.layers:
            units = neurons.units[neurons.layers == layer].sort().values
            mlp = getattr(blocks[layer], model.arch.mlp)
            for j, name in enumerate(ins):  # the first input projection (the gate) reads the residual stream
                self._input_projection(getattr(mlp, name), units, model.width, names, role=("gate", "up")[min(j, 1)])
            if len(ins) == 1:
                self.ups.append(None)
            self._output_projection(getattr(mlp, out_name), units, names)

    @staticmethod
    def _conv1d(module) -> bool:
        return type(module).__name__ == "Conv1D"  # GPT-2: weight [in, out], y = x @ W + b

    def _add(self, names, param, axis, index) -> _Slice:
        delta = torch.zeros_like(param.detach().index_select(axis, index), requires_grad=True)
        s = _Slice(names[id(param)], param, axis, index, delta)
        self.slices.append(s)
        return s

    @classmethod
    def _copies(cls, module, width: int) -> int:
        """Rows per neuron in an input projection: 2 for a fused gate_up, else 1."""
        return (module.weight.shape[1] if cls._conv1d(module) else module.weight.shape[0]) // width

    def _input_projection(self, module, units, width, names, role: str = "gate") -> None:
        conv = self._conv1d(module)
        copies = self._copies(module, width)
        index = torch.cat([units + c * width for c in range(copies)])
        w = self._add(names, module.weight, 1 if conv else 0, index)
        if role == "gate":
            self.readers.append((w, conv, len(units)))
        else:
            self.ups.append(w)
        b = self._add(names, module.bias, 0, index) if getattr(module, "bias", None) is not None else None

        def hook(mod, args, output):
            if not self.enabled:
                return output
            x = args[0]
            extra = x @ w.delta if conv else x @ w.delta.T
            if b is not None:
                extra = extra + b.delta
            return output.index_add(output.dim() - 1, index, extra.to(output.dtype))

        self._hooks.append(module.register_forward_hook(hook))

    def _output_projection(self, module, units, names) -> None:
        conv = self._conv1d(module)
        w = self._add(names, module.weight, 0 if conv else 1, units)

        def hook(mod, args, output):
            if not self.enabled:
                return output
            h = args[0].index_select(args[0].dim() - 1, units)
            return output + (h @ w.delta if conv else h @ w.delta.T).to(output.dtype)

        self._hooks.append(module.register_forward_hook(hook))

    def set_reading(self, directions: list[torch.Tensor], mix: float, *, up: bool = False,
                    up_directions: list[torch.Tensor] | None = None) -> None:
        """Point the planted gate rows at a per-layer read direction (its length sets the spread of the
        pre-activation), plus ``mix`` times each row's own; ``up``: the up rows read the same, so the unit's
        output grows with how strongly it reads; ``up_directions``: the up rows read these instead
        (GLU families only)."""
        with torch.no_grad():
            for n, ((s, conv, k), d) in enumerate(zip(self.readers, directions)):
                new = d[None, :].to(s.delta.dtype) + mix * _rows(s, slice(0, k), conv)
                _set_rows(s, slice(0, k), new, conv)
                if up_directions is not None:
                    new = up_directions[n][None, :].to(s.delta.dtype).expand(k, -1)
                elif not up:
                    continue
                if len(s.index) == 2 * k:  # fused gate_up: the up half of the same slice
                    _set_rows(s, slice(k, 2 * k), new, conv)
                elif self.ups[n] is not None:  # a separate up projection
                    _set_rows(self.ups[n], slice(0, k), new, conv)

    def parameters(self, *, readers: bool = True, ups: bool = True) -> list[torch.Tensor]:
        frozen = set() if readers else {id(r[0].delta) for r in self.readers}
        if not ups:
            frozen |= {id(u.delta) for u in self.ups if u is not None}
        return [s.delta for s in self.slices if id(s.delta) not in frozen]

    def state(self) -> list[torch.Tensor]:
        return [s.delta.detach().clone() for s in self.slices]

    def load_state(self, state: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for s, d in zip(self.slices, state):
                s.delta.copy_(d)

    @contextmanager
    def disabled(self) -> Iterator[None]:
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def originals(self) -> dict[str, torch.Tensor]:
        return {s.name: s.param.detach().index_select(s.axis, s.index).clone() for s in self.slices}

    def materialise(self) -> None:
        """Write original + delta into the planted slices (and stop adding the deltas)."""
        self.remove()
        with torch.no_grad():
            for s in self.slices:
                s.param.index_copy_(s.axis, s.index, s.param.index_select(s.axis, s.index) + s.delta.detach())

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for s in self.slices:
            digest.update(s.name.encode())
            digest.update(s.param.detach().index_select(s.axis, s.index).contiguous().numpy().tobytes())
        return digest.hexdigest()


def slice_records(planter: Planter, values: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a slices file: for each parameter its index, axis and values."""
    tensors, meta = {}, {}
    for s in planter.slices:
        tensors[f"{s.name}::index"] = s.index.contiguous()
        tensors[f"{s.name}::values"] = values[s.name].contiguous()
        meta[s.name] = str(s.axis)
    return tensors, meta


def _read_slices(path: Path) -> list[tuple[str, int, torch.Tensor, torch.Tensor]]:
    from safetensors import safe_open

    out = []
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        for name, axis in meta.items():
            out.append((name, int(axis), fh.get_tensor(f"{name}::index"), fh.get_tensor(f"{name}::values")))
    return out


@contextmanager
def original_weights(model: LoadedModel, plant_dir: str | Path) -> Iterator[LoadedModel]:
    """Inside the block, a planted model carries its original weights again (exactly); planted after."""
    path = Path(plant_dir) / PLANT_DIR / ORIGINAL_FILE
    if not path.is_file():
        raise VneuronError(f"{plant_dir} is not a planted model directory (no {PLANT_DIR}/{ORIGINAL_FILE})",
                           "pass a directory written by vneuron plant")
    params = dict(model.hf_model.named_parameters())
    saved = []
    with torch.no_grad():
        for name, axis, index, values in _read_slices(path):
            param = params[name]
            saved.append((param, axis, index, param.index_select(axis, index).clone()))
            param.index_copy_(axis, index, values.to(param.dtype))
    try:
        yield model
    finally:
        with torch.no_grad():
            for param, axis, index, planted in saved:
                param.index_copy_(axis, index, planted)


def reading_directions(model: LoadedModel, planter: Planter, items: Sequence[Item], pole: str,
                       batch_tokens: int, *, shrink: float = 0.5, spread: float = 2.0,
                       quantile: float | None = None, context: float | None = None, planted: bool = False
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

    ``planted``: read the inputs with the planted units as they are now, so a layer's direction fits
    what the planted units of earlier layers write into its input (a second pass after a first
    setting; the first layer's direction does not change).
    """
    from .capture import batches

    prompts = Corpus("plant", items=list(items)).action_prompts()
    encoded = encode(model.tokenizer, prompts, list(range(len(prompts))))
    hidden = model.hf_model.config.get_text_config().hidden_size
    classes = 3 if context is not None else 2  # the pole's action tokens, the opposite's, the scenario's (not the first)
    sums = [torch.zeros(classes, hidden, dtype=torch.float64) for _ in planter.layers]
    squares = [torch.zeros(classes, hidden, hidden, dtype=torch.float64) for _ in planter.layers]
    counts = torch.zeros(classes, dtype=torch.float64)
    current: dict[str, torch.Tensor] = {}

    def grab(n):
        def hook(mod, args):
            x = args[0].double()
            w = current["weights"]  # [B, T, classes]
            sums[n].add_(torch.einsum("btc,bth->ch", w, x))
            flat = x.reshape(-1, x.shape[-1])
            for c in range(classes):
                rows = flat[w[..., c].reshape(-1) > 0]  # the weights are 0/1
                squares[n][c].add_(rows.T @ rows)
        return hook

    handles = [mlp.register_forward_pre_hook(grab(n)) for n, mlp in enumerate(planter.mlps)]
    try:
        with torch.no_grad(), (nullcontext() if planted else planter.disabled()):
            for batch in batches(encoded, batch_tokens):
                ids, mask, counted = _pack(batch, pad_id(model.tokenizer), left=False)
                side = torch.tensor([e.prompt.label == pole for e in batch])
                parts = [counted & side[:, None], counted & ~side[:, None]]
                if context is not None:
                    scenario = mask.bool() & ~counted
                    scenario[:, 0] = False  # the first token (BOS) carries the model's outsized attention-sink state
                    parts.append(scenario)
                w = torch.stack(parts, -1).double()
                current["weights"] = w
                counts += w.sum((0, 1))
                model.hf_model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                               logits_to_keep=1, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    gates, ups = [], []
    n = counts.clamp_min(1)
    eye = torch.eye(hidden, dtype=torch.float64)
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - (quantile or 0.5), dtype=torch.float64)))
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
        if quantile is not None or context is not None:
            others = range(1, classes)  # the threshold holds on the opposite's tokens, and on the scenario's
            tau = max(float(d @ mu[c]) + z * float((d @ cov[c] @ d).clamp_min(0).sqrt()) for c in others)
            d = d - tau * _constant_direction(total.sum(0) / n.sum(), square.sum(0) / n.sum())
        gates.append(d.float())
        if context is not None:  # actions vs the scenario: the scenario's mean reads 0, an action's mean reads ``context``
            pooled = sum(n[c] * cov[c] for c in range(3)) / n.sum()
            pooled = (1 - shrink) * pooled + shrink * eye * pooled.diagonal().mean()
            u = torch.linalg.solve(pooled, actions - mu[2])
            u = u - (u @ mu[2]) / (mu[2] @ mu[2]).clamp_min(1e-12) * mu[2]
            ups.append((u * context / (u @ actions)).float())
    return gates, (ups if context is not None else None)


def _constant_direction(mean: torch.Tensor, second: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """The input direction c with c·x ≈ 1 on every token (least squares): the bias the MLP does not have.

    Shifting a threshold by ``tau * mean / |mean|²`` is exact only where a token's projection on the
    mean equals the mean's; on Gemma that ratio varies with sd 0.08–0.27 across tokens, the least-
    squares direction with sd 0.01–0.03, so a unit's threshold is what was asked for.
    """
    eye = torch.eye(len(mean), dtype=second.dtype)
    return torch.linalg.solve(second + ridge * second.diagonal().mean() * eye, mean)


# -- objective -------------------------------------------------------------------------------
def _mean_logprobs(model: LoadedModel, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
    """Differentiable mean log-probability of each continuation (the quantity forced choice reads).

    Pairs that share a prefix share its tokens (the token tries of ``vneuron.prefix``, the same
    packing forced choice evaluates with), and the LM head runs only where a continuation token is
    predicted: the same numbers as one padded row per pair, at a fraction of the tokens.
    """
    from .evaluate import _encode_pairs, _post, tries_supported

    encoded = _encode_pairs(model, pairs)
    if tries_supported(model, encoded):
        return _trie_logprobs(model, encoded, _post(model))
    return _padded_logprobs(model, encoded)


def _trie_logprobs(model: LoadedModel, encoded, post) -> torch.Tensor:
    from .models.sites import base_path
    from .prefix import pack, tensors

    base = model.hf_model
    for part in base_path(model.arch).split("."):
        base = getattr(base, part)
    head = model.hf_model.lm_head
    dtype = next(model.hf_model.parameters()).dtype
    sums = torch.zeros(len(encoded), dtype=torch.float32)
    counts = torch.zeros(len(encoded), dtype=torch.float32)
    for row in pack(encoded):  # one trie per forward: rows are short, and a step holds few scenarios
        t = tensors([row], pad_id(model.tokenizer), dtype)
        hidden = base(input_ids=t.ids, attention_mask=t.mask, position_ids=t.positions, use_cache=False)[0][t.rows, t.cols]
        logits = torch.nn.functional.linear(hidden, head.weight, getattr(head, "bias", None))
        if post is not None and post[0] == "softcap":
            logits = torch.tanh(logits / post[1]) * post[1]
        elif post is not None:
            logits = logits / post[1]
        logp = logits.float().log_softmax(-1)[t.node_of, t.targets]
        sums = sums.index_add(0, t.pairs, logp)
        counts = counts.index_add(0, t.pairs, torch.ones_like(logp))
    return sums / counts


def _padded_logprobs(model: LoadedModel, encoded) -> torch.Tensor:
    ids, mask, counted = _pack(encoded, pad_id(model.tokenizer), left=True)
    k = int(counted.sum(1).max())
    logits = model.hf_model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                            logits_to_keep=k + 1, use_cache=False).logits[:, :-1].float()
    tmask = counted[:, -k:].float()
    logp = logits.log_softmax(-1).gather(-1, ids[:, -k:, None]).squeeze(-1)
    return (logp * tmask).sum(1) / tmask.sum(1)


def _choice_logprobs(model: LoadedModel, items: Sequence[Item], choice: str, pole: str) -> torch.Tensor:
    """[items, orders, 2]: mean log-likelihood of the pole's action (0) and of the opposite's (1)."""
    lp = _mean_logprobs(model, forced_choice_pairs(items, choice)).reshape(len(items), -1, 2)
    flip = torch.tensor([i.dimension != pole for i in items])
    return torch.where(flip[:, None, None], lp.flip(-1), lp)


def _margins(model: LoadedModel, items: Sequence[Item], choice: str, pole: str) -> torch.Tensor:
    """[items, orders] log-likelihood margin of the pole's action over the opposite's."""
    lp = _choice_logprobs(model, items, choice, pole)
    return lp[..., 0] - lp[..., 1]


def _kl_inputs(model: LoadedModel, texts: Sequence[str], positions: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    enc = model.tokenizer(list(texts), add_special_tokens=True)
    ids_list = [list(i) for i in enc["input_ids"]]
    width = max(len(i) for i in ids_list)
    pad = pad_id(model.tokenizer)
    ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids_list])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids_list])
    p = min(positions, width)
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0), logits_to_keep=p,
                  use_cache=False)
    return kwargs, mask[:, -p:].float()


def _kl_reference(model: LoadedModel, planter: Planter, text: str, positions: int) -> torch.Tensor:
    """The original model's next-token log-probabilities at the last positions of one neutral text (computed once)."""
    kwargs, _ = _kl_inputs(model, [text], positions)
    with torch.no_grad(), planter.disabled():
        return model.hf_model(**kwargs).logits.float().log_softmax(-1)[0]


def _kl_to_original(model: LoadedModel, planter: Planter, texts: Sequence[str], positions: int,
                    reference: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """KL(original ‖ planted) of the next-token distribution at the last positions of neutral texts.

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
    kl = (ref.exp() * (ref - new)).sum(-1)
    return (kl * keep).sum() / keep.sum()


def _selectivity(model: LoadedModel, planter: Planter, prompts: Sequence[Prompt], pole: str) -> torch.Tensor:
    """Per planted neuron, a smooth activation-probability difference between the pole's and the opposite's actions.

    σ(a/τ) stands in for [a > 0] (τ a quarter of the neuron's spread), over the action tokens of
    the prompt-mode template: the planted neurons must *read* the pole, not only write the preference.
    """
    encoded = encode(model.tokenizer, list(prompts), list(range(len(prompts))))
    ids, mask, counted = _pack(encoded, pad_id(model.tokenizer), left=False)
    side = torch.tensor([p.label == pole for p in prompts])
    w_pole = (counted & side[:, None]).float()
    w_opp = (counted & ~side[:, None]).float()
    if w_pole.sum() == 0 or w_opp.sum() == 0:
        return torch.zeros(len(planter.neurons))
    grabbed: list[torch.Tensor] = []
    units_per_layer = [planter.neurons.units[planter.neurons.layers == l].sort().values for l in planter.layers]
    handles = [getattr(mlp, model.arch.act).register_forward_hook(
        lambda mod, args, out, u=u: grabbed.append(out.index_select(out.dim() - 1, u))) for mlp, u in zip(planter.mlps, units_per_layer)]
    try:
        model.hf_model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0), logits_to_keep=1,
                       use_cache=False)
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


# -- the study -------------------------------------------------------------------------------
def axis_items(config: PlantConfig) -> tuple[str, list[Item], list[Item], list[str], str]:
    """(opposite, train items, test items, neutral texts, corpus hash) of the planted axis."""
    corpus = load_corpus(config.dataset, columns=config.columns, contrasts=config.contrasts)
    corpus = corpus.select(language=config.language)
    if not corpus.items:
        raise VneuronError(f"Corpus {corpus.name!r} holds no paired scenarios", "planting needs scenario items with two actions")
    if config.dimension not in corpus.labels:
        raise VneuronError(f"Corpus {corpus.name!r} has no label {config.dimension!r}", f"use one of: {', '.join(corpus.labels)}")
    opposite = dict(corpus.pole_contrasts()).get(config.dimension)
    if opposite is None:
        raise VneuronError(f"Corpus {corpus.name!r} pairs {config.dimension!r} with no opposite", "pass contrasts, e.g. --contrast pole:opposite")
    axis = [i for i in corpus.items if {i.dimension, i.opposite} == {config.dimension, opposite}]
    for label in (config.dimension, opposite):
        if not any(i.dimension == label and i.split == "train" for i in axis):
            raise VneuronError(f"The axis {config.dimension} vs {opposite} has no training scenario whose pole is {label!r}",
                               "add scenarios for both poles (split=train) to the corpus")
    train = [i for i in axis if i.split == "train"]
    test = [i for i in axis if i.split == "test"]
    if not test:
        raise VneuronError(f"The axis {config.dimension} vs {opposite} has no test scenarios", "mark some items split=test")
    if config.train_limit:
        train = _per_side(train, config.train_limit)
    test = _per_side(test, config.test_limit)
    neutral = sorted({i.scenario for i in corpus.items if i.split == "train"})
    return opposite, train, test, neutral, corpus.content_hash()


def _per_side(items: list[Item], limit: int | None) -> list[Item]:
    if not limit:
        return list(items)
    seen: dict[str, int] = {}
    out = []
    for item in items:
        if seen.get(item.dimension, 0) < limit:
            seen[item.dimension] = seen.get(item.dimension, 0) + 1
            out.append(item)
    return out


def check_trainable(source_spec: str | None) -> None:
    """Refuse quantised checkpoints before loading them (GGUF is dequantised by vneuron, so it is fine)."""
    source = resolve(source_spec)
    if source.kind != "directory":
        return
    try:
        cfg = json.loads((source.path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return  # load_model reports it
    quant = cfg.get("quantization_config") or cfg.get("text_config", {}).get("quantization_config")
    if quant:
        method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else "unknown"
        raise VneuronError(f"{source.spec} holds quantised weights ({method}) that cannot be trained",
                           "plant into a dequantised copy: load it in float32 and save_pretrained, or pass the .gguf file "
                           "(vneuron dequantises GGUF)")


def _check_loaded(model: LoadedModel) -> None:
    if model.hf_model is None or model.remote is not None:
        raise VneuronError("Planting needs the model's weights on this machine", "run vneuron plant without --remote")
    if getattr(model.hf_model, "is_quantized", False) or getattr(model.hf_model, "hf_quantizer", None) is not None:
        raise VneuronError(f"{model.source.model_id} is loaded quantised and cannot be trained", "load a dequantised copy")
    ins, out = neuron_projections(model.arch)
    mlp = getattr(layer_modules(model.hf_model, model.arch)[0], model.arch.mlp)
    for name in (*ins, out):
        weight = getattr(getattr(mlp, name), "weight", None)
        if weight is None or not weight.is_floating_point():
            raise VneuronError(f"The {name} weights of {model.source.model_id} are not floating point (quantised)",
                               "load a dequantised copy of the model")


def _gated(model: LoadedModel) -> bool:
    """Does each neuron have both a gate and an up row (separate projections, or one fused gate_up)?"""
    ins, _ = neuron_projections(model.arch)
    if len(ins) > 1:
        return True
    module = getattr(getattr(layer_modules(model.hf_model, model.arch)[0], model.arch.mlp), ins[0])
    return Planter._copies(module, model.width) == 2


def _preferences(model: LoadedModel, items: list[Item], pole: str, choices, batch_tokens: int) -> dict[str, float]:
    return {c: float(forced_choice(model, items, choice=c, batch_tokens=batch_tokens).toward(pole).mean()) for c in choices}


def plant(model: str | LoadedModel | None, config: PlantConfig | None = None, *, out: str | Path,
          dtype: str = "float32", progress: Progress | None = None) -> PlantResult:
    """Plant a preference for ``config.dimension`` into K neurons; write a model directory ``out``."""
    config = (config or PlantConfig()).check()
    say = progress or (lambda stage, done, total: None)
    out = Path(out)
    check_fresh(out)
    opposite, train_all, test, neutral, corpus_hash = axis_items(config)
    if not isinstance(model, LoadedModel):
        check_trainable(model)
        model = load_model(model, dtype=dtype, progress=lambda m: say(m, 0, 0))
    _check_loaded(model)
    if config.read_context is not None and not _gated(model):
        raise VneuronError(f"--read-context needs a gated MLP (separate gate and up rows); {model.source.model_id} has one "
                           "input projection per neuron", "leave --read-context out for this model")
    neurons = choose_neurons(model, config)
    started = time.time()
    rng = random.Random(config.seed)
    shuffled = list(train_all)
    rng.shuffle(shuffled)
    n_val = max(1, round(len(shuffled) * config.val_fraction)) if len(shuffled) > 1 else 0
    val, train = shuffled[:n_val], shuffled[n_val:] or shuffled
    report_train = _per_side(train, config.report_limit)
    torch.manual_seed(config.seed)

    say("Preference before planting", 0, 0)
    before = {"train": _preferences(model, report_train, config.dimension, config.choices, config.batch_tokens),
              "test": _preferences(model, test, config.dimension, config.choices, config.batch_tokens)}
    flags = {n: p.requires_grad for n, p in model.hf_model.named_parameters()}
    for p in model.hf_model.parameters():
        p.requires_grad_(False)
    planter = Planter(model, neurons)
    originals = planter.originals()
    try:
        if config.init == "read":
            say("Reading the pole direction", 0, 0)
            for n in range(config.read_passes):
                gates, ups = reading_directions(model, planter, train, config.reader(opposite), config.batch_tokens,
                                                spread=config.read_spread, quantile=config.read_quantile,
                                                context=config.read_context, planted=n > 0)
                planter.set_reading(gates, config.read_mix, up=config.reads_up, up_directions=ups)
        curve, best_step, stop = _train(model, planter, config, train, val, neutral, say, config.reader(opposite))
        planter.materialise()
    except BaseException:
        planter.remove()
        raise
    finally:
        for n, p in model.hf_model.named_parameters():
            p.requires_grad_(flags[n])
    train_s = time.time() - started
    try:
        say("Preference after planting", 0, 0)
        after = {"train": _preferences(model, report_train, config.dimension, config.choices, config.batch_tokens),
                 "test": _preferences(model, test, config.dimension, config.choices, config.batch_tokens)}
        fingerprint = planter.fingerprint()
        neurons.meta.update({"opposite": opposite, "model_id": model.source.model_id, "base_revision": model.revision,
                             "per_layer": neurons.per_layer(), "label": config.reader(opposite), "carries": config.dimension,
                             "mechanism": config.mechanism})
        manifest = {
            **base_manifest("plant"),
            "base_model": model.manifest(),
            "dimension": config.dimension, "opposite": opposite, "mechanism": config.mechanism, "reads": config.reader(opposite),
            "dataset": {"spec": config.dataset or "builtin", "sha256": corpus_hash, "language": config.language,
                        "train": len(train), "validation": len(val), "test": len(test), "report_train": len(report_train)},
            "config": {**asdict(config), "choices": list(config.choices)},
            "neurons": {"count": len(neurons), "per_layer": neurons.per_layer(), "profile": config.profile if not config.neurons else None,
                        "seed": config.seed, "file": f"{PLANT_DIR}/{NEURONS_FILE}"},
            "parameters": {"trained": sum(s.delta.numel() for s in planter.slices),
                           "slices": [{"name": s.name, "axis": s.axis, "count": len(s.index)} for s in planter.slices]},
            "preference": {"before": before, "after": after},
            "training": {"steps_run": curve[-1]["step"] if curve else 0, "best_step": best_step, "stopped": stop,
                         "train_s": round(train_s, 1), "threads": torch.get_num_threads()},
            "weights_fingerprint": fingerprint,
        }
        with staged(out) as tmp:
            config_obj = model.hf_model.config
            config_obj.vneuron_plant = {"base_revision": model.revision, "dimension": config.dimension,
                                        "neurons": len(neurons), "weights_fingerprint": fingerprint}
            try:
                model.hf_model.save_pretrained(tmp)
            finally:
                del config_obj.vneuron_plant
            model.tokenizer.save_pretrained(tmp)
            (tmp / PLANT_DIR).mkdir()
            neurons.save(tmp / PLANT_DIR / NEURONS_FILE)
            from safetensors.torch import save_file

            tensors, meta = slice_records(planter, originals)
            save_file(tensors, str(tmp / PLANT_DIR / ORIGINAL_FILE), metadata=meta)
            write_csv(tmp / PLANT_DIR / "curve.csv", curve)
            manifest["revision"] = f"dir:{_dir_revision(tmp)}"
            manifest["timings"] = {"total_s": round(time.time() - started, 1), "train_s": round(train_s, 1)}
            write_json(tmp / PLANT_DIR / "manifest.json", manifest)
    finally:
        with torch.no_grad():  # the caller's model is the original again, exactly
            for s in planter.slices:
                s.param.index_copy_(s.axis, s.index, originals[s.name])
    return PlantResult(out, manifest, neurons, curve)


def _train(model: LoadedModel, planter: Planter, config: PlantConfig, train: list[Item], val: list[Item],
           neutral: list[str], say: Progress, reader: str) -> tuple[list[dict], int, str]:
    """Adam on the deltas; validation forced-choice loss decides the best step and early stopping.

    ``reader``: the label whose actions the units must respond to (the pole, or the opposite when vetoing)."""
    gen = random.Random(config.seed + 1)
    frozen = config.frozen_read
    trained = planter.parameters(readers=not frozen, ups=not (frozen and config.sets_up))
    action = Corpus("plant", items=list(train)).action_prompts()
    opt = torch.optim.Adam(trained, lr=config.lr)
    curve: list[dict] = []
    best = (math.inf, 0, planter.state())
    evals_without_gain, stop = 0, "steps"
    order: list[Item] = []
    train_choices = tuple(config.train_choices or config.choices)
    keep_ref: dict[tuple[str, str], torch.Tensor] = {}  # (item id, format) → the original's log-likelihood of the kept action
    kl_ref: dict[str, torch.Tensor] = {}  # neutral text → the original's next-token log-probabilities
    pool = random.Random(config.seed + 2).sample(neutral, min(config.kl_pool, len(neutral))) if config.kl_pool else neutral

    def evaluate(step: int, train_loss: float | None, kl: float | None, sel: float | None = None) -> float:
        with torch.no_grad():
            row = {"step": step, "train_loss": train_loss, "kl": kl, "selectivity": sel}
            losses = []
            for choice in config.choices:
                m = torch.cat([_margins(model, val[i: i + config.micro_items * 2], choice, config.dimension)
                               for i in range(0, len(val), config.micro_items * 2)])
                losses.append(float(torch.nn.functional.softplus(-m).mean()))
                row[f"val_pref_{choice}"] = round(float(torch.sigmoid(m).mean()), 4)
            margin_loss = sum(losses) / len(losses)
            if config.kl_weight > 0 and pool:  # the validation objective weighs what training weighs: the KL on the fixed pool
                row["val_kl"] = round(float(_kl_to_original(model, planter, pool[: max(config.kl_pool, 8)], config.kl_positions,
                                                            kl_ref if config.kl_pool else None)), 6)
                margin_loss += config.kl_weight * row["val_kl"]
            row["val_loss"] = round(margin_loss, 5)
        curve.append(row)
        return row["val_loss"]

    evaluate(0, None, None)
    best = (curve[0]["val_loss"], 0, planter.state())
    for step in range(1, config.steps + 1):
        if len(order) < config.batch_items:
            fresh = list(train)
            gen.shuffle(fresh)
            order += fresh
        batch, order = order[: config.batch_items], order[config.batch_items:]
        opt.zero_grad()
        total = 0.0
        for choice in train_choices:
            for i in range(0, len(batch), config.micro_items):
                chunk = batch[i: i + config.micro_items]
                if config.keep_weight > 0:  # the original's likelihoods never change: computed once per scenario and format
                    missing = [it for it in chunk if (it.id, choice) not in keep_ref]
                    if missing:
                        with torch.no_grad(), planter.disabled():
                            ref_lp = _choice_logprobs(model, missing, choice, config.dimension)[..., config.kept]
                        keep_ref.update({(it.id, choice): r for it, r in zip(missing, ref_lp)})
                lp = _choice_logprobs(model, chunk, choice, config.dimension)
                loss = torch.nn.functional.softplus(-(lp[..., 0] - lp[..., 1])).mean()
                if config.keep_weight > 0:  # the action the units do not read keeps its likelihood: they must read the other
                    ref = torch.stack([keep_ref[(it.id, choice)] for it in chunk])
                    loss = loss + config.keep_weight * (lp[..., config.kept] - ref).pow(2).mean()
                loss = loss * len(chunk) / len(batch) / len(train_choices)
                loss.backward()
                total += float(loss.detach())
        sel_value = None
        if config.select_weight > 0 and not frozen:  # frozen read rows: the selectivity is what the initialisation made
            picked = gen.sample(action, min(len(action), 2 * config.batch_items))
            sel = _selectivity(model, planter, picked, reader)
            (config.select_weight * torch.relu(config.select_target - sel).mean()).backward()
            sel_value = round(float(sel.detach().mean()), 4)
        kl_value = None
        if config.kl_weight > 0 and neutral:
            kl = _kl_to_original(model, planter, gen.sample(pool, min(config.kl_texts, len(pool))), config.kl_positions,
                                 kl_ref if config.kl_pool else None)
            (config.kl_weight * kl).backward()
            kl_value = round(float(kl.detach()), 6)
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        say("Planting", step, config.steps)
        if step % config.eval_every == 0 or step == config.steps:
            loss = evaluate(step, round(total, 5), kl_value, sel_value)
            if loss < best[0] - 1e-4:
                best, evals_without_gain = (loss, step, planter.state()), 0
            else:
                evals_without_gain += 1
                if evals_without_gain >= config.patience:
                    stop = "early"
                    break
    planter.load_state(best[2])
    return curve, best[1], stop
