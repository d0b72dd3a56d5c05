"""Weight surgery: the planted neurons' own slices of the weights, and nothing else.

Training adds delta tensors to exactly those slices through forward hooks, so every other parameter
stays bit for bit what it was; ``Planter.materialise`` writes the slices at the end, and the
original slices are kept on disk so ``original_weights`` can restore them exactly.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from vneuron.errors import VneuronError
from vneuron.locate.scoring import NeuronSet
from vneuron.models.loading import LoadedModel, resolve
from vneuron.models.sites import layer_modules

# the layout of a planted model directory (vneuron plant writes it, power and original_weights read it)
PLANT_DIR = "plant"  # inside the model directory: manifest, ground truth, original slices, curve
NEURONS_FILE = "neurons.safetensors"
ORIGINAL_FILE = "original.safetensors"


@dataclass
class Slice:
    """One trainable slice of one weight: ``param[index along axis] = original + delta``."""

    name: str  # the parameter's name in the model's state dict
    param: torch.nn.Parameter
    axis: int
    index: torch.Tensor
    delta: torch.Tensor  # laid out like the slice


def _rows(s: Slice, cols: slice, conv: bool) -> torch.Tensor:
    """The original rows [k, H] of a slice's units (a transposed layout, ``Architecture.transposed``, stores them as columns)."""
    values = s.param.index_select(s.axis, s.index[cols])
    return values.T if conv else values


def _set_rows(s: Slice, cols: slice, new: torch.Tensor, conv: bool) -> None:
    """Make ``original + delta`` equal ``new`` ([k, H]) for those units."""
    delta = new - _rows(s, cols, conv)
    if conv:
        s.delta[:, cols] = delta.T
    else:
        s.delta[cols] = delta


def _copies(arch, module, width: int) -> int:
    """Rows per neuron in an input projection: 2 for a fused gate_up, else 1."""
    return (module.weight.shape[1] if arch.transposed else module.weight.shape[0]) // width


class Planter:
    """Delta tensors for the planted neurons' own parameters, added by forward hooks.

    The base weights are never written while training, so "everything else bit for bit" holds
    by construction; ``materialise`` writes original + delta into exactly the planted slices.
    """

    def __init__(self, model: LoadedModel, neurons: NeuronSet):
        hf = model.hf_model
        self.model, self.neurons, self.enabled = model, neurons, True
        self.slices: list[Slice] = []
        self._hooks = []
        names = {id(p): n for n, p in hf.named_parameters()}
        ins, out_name = model.arch.inputs, model.arch.down
        blocks = layer_modules(hf, model.arch)
        self.layers = sorted(set(neurons.layers.tolist()))
        self.readers: list[tuple[Slice, bool, int]] = []  # per planted layer: the gate slice
        self.ups: list[Slice | None] = []  # per planted layer: the up slice (GLU families with separate projections)
        self.downs: list[tuple[Slice, bool]] = []  # per planted layer: the output projection's slice (the write)
        self.quiet_bases: list[torch.Tensor] | None = None  # per planted layer: input directions the units must read as 0
        self.mlps = [getattr(blocks[layer], model.arch.mlp) for layer in self.layers]
        for layer in self.layers:
            units = neurons.units[neurons.layers == layer].sort().values
            mlp = getattr(blocks[layer], model.arch.mlp)
            for j, name in enumerate(ins):  # the first input projection (the gate) reads the residual stream
                self._input_projection(getattr(mlp, name), units, model.width, names, role=("gate", "up")[min(j, 1)])
            if len(ins) == 1:
                self.ups.append(None)
            self._output_projection(getattr(mlp, out_name), units, names)

    def _add(self, names, param, axis, index) -> Slice:
        index = index.to(param.device)  # a slice lives where its parameter does (a GPU, a layer's device)
        delta = torch.zeros_like(param.detach().index_select(axis, index), requires_grad=True)
        s = Slice(names[id(param)], param, axis, index, delta)
        self.slices.append(s)
        return s

    def _input_projection(self, module, units, width, names, role: str = "gate") -> None:
        conv = self.model.arch.transposed  # weight [in, out], y = x @ W + b
        copies = _copies(self.model.arch, module, width)
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
        conv = self.model.arch.transposed  # weight [in, out], y = x @ W + b
        w = self._add(names, module.weight, 0 if conv else 1, units)
        self.downs.append((w, conv))

        def hook(mod, args, output):
            if not self.enabled:
                return output
            h = args[0].index_select(args[0].dim() - 1, units.to(args[0].device))
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
                new = d[None, :].to(s.delta.device, s.delta.dtype) + mix * _rows(s, slice(0, k), conv)
                _set_rows(s, slice(0, k), new, conv)
                if up_directions is not None:
                    new = up_directions[n][None, :].to(s.delta.device, s.delta.dtype).expand(k, -1)
                elif not up:
                    continue
                if len(s.index) == 2 * k:  # fused gate_up: the up half of the same slice
                    _set_rows(s, slice(k, 2 * k), new, conv)
                elif self.ups[n] is not None:  # a separate up projection
                    _set_rows(self.ups[n], slice(0, k), new, conv)

    def quiet(self, bases: list[torch.Tensor]) -> None:
        """From now on every planted unit's input rows read 0 along ``bases[n]`` ([m, H], orthonormal) of its layer:
        the inputs at positions every text shares (BOS), so the units cannot fire there (act(0) = 0)."""
        self.quiet_bases = bases
        self.enforce_quiet()

    def enforce_quiet(self) -> None:
        """Project the current rows (original + delta) of every planted input slice off the quiet directions."""
        if self.quiet_bases is None:
            return
        with torch.no_grad():
            for n, (s, conv, _) in enumerate(self.readers):
                q = self.quiet_bases[n].to(s.delta.device, s.delta.dtype)
                for sl in (s, self.ups[n]):
                    if sl is None:
                        continue
                    count = len(sl.index)
                    rows = _rows(sl, slice(0, count), conv) + (sl.delta.T if conv else sl.delta)
                    _set_rows(sl, slice(0, count), rows - (rows @ q.T) @ q, conv)

    def flip_write(self) -> None:
        """Negate every planted unit's write (its output column becomes −(original + delta))."""
        with torch.no_grad():
            for s, _ in self.downs:
                original = s.param.index_select(s.axis, s.index)
                s.delta.copy_(-2 * original - s.delta)

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

    def restore(self, originals: dict[str, torch.Tensor]) -> None:
        """Write ``originals`` (from ``originals()``) back into the planted slices."""
        with torch.no_grad():
            for s in self.slices:
                s.param.index_copy_(s.axis, s.index, originals[s.name])

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
            digest.update(s.param.detach().index_select(s.axis, s.index).contiguous().cpu().numpy().tobytes())
        return digest.hexdigest()


@contextmanager
def frozen(model: LoadedModel) -> Iterator[None]:
    """No base parameter takes gradients inside the block (only the deltas train); each flag is restored after."""
    flags = {n: p.requires_grad for n, p in model.hf_model.named_parameters()}
    for p in model.hf_model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for n, p in model.hf_model.named_parameters():
            p.requires_grad_(flags[n])


def slice_records(planter: Planter, values: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a slices file: for each parameter its index, axis and values."""
    tensors, meta = {}, {}
    for s in planter.slices:
        tensors[f"{s.name}::index"] = s.index.cpu().clone()  # weight and bias share one index; safetensors refuses shared memory
        tensors[f"{s.name}::values"] = values[s.name].contiguous().cpu()
        meta[s.name] = str(s.axis)
    return tensors, meta


def read_slices(path: Path) -> list[tuple[str, int, torch.Tensor, torch.Tensor]]:
    """(name, axis, index, values) of each parameter in a slices file: the reader of ``slice_records``."""
    from safetensors import safe_open

    out = []
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        for name, axis in meta.items():
            out.append((name, int(axis), fh.get_tensor(f"{name}::index"), fh.get_tensor(f"{name}::values")))  # on the host
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
        for name, axis, index, values in read_slices(path):
            param = params[name]
            index = index.to(param.device)
            saved.append((param, axis, index, param.index_select(axis, index).clone()))
            param.index_copy_(axis, index, values.to(param.device, param.dtype))
    try:
        yield model
    finally:
        with torch.no_grad():
            for param, axis, index, planted in saved:
                param.index_copy_(axis, index, planted)


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


def check_loaded(model: LoadedModel) -> None:
    """Refuse a loaded model whose neuron weights cannot be trained (remote, quantised), before anything is written."""
    if model.hf_model is None or model.remote is not None:
        raise VneuronError("Planting needs the model's weights on this machine", "plant without `remote`")
    if getattr(model.hf_model, "is_quantized", False) or getattr(model.hf_model, "hf_quantizer", None) is not None:
        raise VneuronError(f"{model.source.model_id} is loaded quantised and cannot be trained", "load a dequantised copy")
    ins, out = model.arch.inputs, model.arch.down
    mlp = getattr(layer_modules(model.hf_model, model.arch)[0], model.arch.mlp)
    for name in (*ins, out):
        weight = getattr(getattr(mlp, name), "weight", None)
        if weight is None or not weight.is_floating_point():
            raise VneuronError(f"The {name} weights of {model.source.model_id} are not floating point (quantised)",
                               "load a dequantised copy of the model")


def is_gated(model: LoadedModel) -> bool:
    """Does each neuron have both a gate and an up row (separate projections, or one fused gate_up)?"""
    ins = model.arch.inputs
    if len(ins) > 1:
        return True
    module = getattr(getattr(layer_modules(model.hf_model, model.arch)[0], model.arch.mlp), ins[0])
    return _copies(model.arch, module, model.width) == 2


def write_slices(model: LoadedModel, plant_dir: str | Path | None = None, planter: Planter | None = None) -> list[tuple]:
    """(parameter, axis, index) of every planted unit's output-projection slice: what ``scale_write`` scales."""
    params = dict(model.hf_model.named_parameters())
    down = model.arch.down
    if planter is not None:
        return [(s.param, s.axis, s.index) for s, _ in planter.downs]
    out = []
    for name, axis, index, _ in read_slices(Path(plant_dir) / PLANT_DIR / ORIGINAL_FILE):
        if name.split(".")[-2] == down.split(".")[-1] and name.endswith("weight"):
            out.append((params[name], axis, index.to(params[name].device)))
    return out


class WriteScale:
    """Scale the planted units' write (their output columns) by s, from the values they hold now."""

    def __init__(self, slices: list[tuple]):
        self.slices = [(param, axis, index, param.detach().index_select(axis, index).clone()) for param, axis, index in slices]
        self.scale = 1.0

    def set(self, scale: float) -> None:
        with torch.no_grad():
            for param, axis, index, planted in self.slices:
                param.index_copy_(axis, index, planted * scale)
        self.scale = scale


def slices_fingerprint(model: LoadedModel, plant_dir: str | Path) -> str:
    """SHA-256 of the current values of every planted slice (the names and indices of ``plant_dir``'s slices file)."""
    params = dict(model.hf_model.named_parameters())
    digest = hashlib.sha256()
    for name, axis, index, _ in read_slices(Path(plant_dir) / PLANT_DIR / ORIGINAL_FILE):
        digest.update(name.encode())
        digest.update(params[name].detach().index_select(axis, index.to(params[name].device)).contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()
