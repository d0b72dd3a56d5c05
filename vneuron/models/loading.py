"""Turning what the user typed (alias, directory, GGUF file, hub id) into a traced model.

GGUF weights are dequantised by transformers once and cached as a safetensors copy keyed by the
file's SHA-256, so only the first run pays for the conversion (~2 min for Gemma-3-270M). A model
computed in bfloat16 or float16 gets a second cached copy in that dtype (cast from the float32 one),
so it loads without ever holding the float32 weights (a third of the peak memory for Gemma-3-270M).

The compute dtype is the one asked for, the default (``config.DEFAULT_DTYPE``), or ``auto``: the
fastest dtype on this machine whose accuracy check on the model passes (``vneuron.runtime.precision``);
a remote model computes in what its server serves.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from vneuron.errors import VneuronError
from vneuron.models.architectures import Architecture, architecture_for, num_layers, text_config
from vneuron.models.mixed import mix
from vneuron.models.conversion import check_gguf_magic, convert_gguf, converted_copy, dtype_copy, packaged_gguf
from vneuron.models.registry import ALIASES
from vneuron.models.sites import layer_modules
from vneuron.runtime import devices
from vneuron.runtime.precision import DEFAULT_DTYPE, MIXED, check_dtype, storage


@dataclass
class ModelSource:
    """Where a model comes from, resolved before anything heavy is loaded."""

    spec: str  # what the user typed
    model_id: str  # canonical id recorded in manifests
    kind: str  # "packaged" | "gguf" | "directory" | "hub"
    alias: str | None = None
    path: Path | None = None  # directory or GGUF file
    chat: bool = False

    def describe(self) -> dict[str, Any]:
        # the spec as typed (maybe relative) and the absolute path, so a run's model is found from any folder
        return {"spec": self.spec, "model_id": self.model_id, "kind": self.kind, "alias": self.alias,
                "path": str(self.path) if self.path else None}


@dataclass
class LoadedModel:
    """A model ready to trace, with the facts every later step needs."""

    lm: Any  # nnsight LanguageModel
    source: ModelSource
    arch: Architecture
    n_layers: int
    width: int
    revision: str
    tokenizer: Any
    hf_model: Any = None  # the underlying transformers module (None for a remote, lazy model)
    extra: dict[str, Any] = field(default_factory=dict)
    remote: Any = None  # a remote.RemoteTarget when traces run on NDIF (or its local simulation)
    device: str = "cpu"  # where its inputs go: the device of its embeddings (the first of a device map's)

    @property
    def local_device(self) -> str | None:
        """Where a local trace's inputs go; None for a remote model (the server places them)."""
        return None if self.remote is not None and not self.remote.simulated else self.device

    def batch_tokens(self, setting: int | str, cpu_default: int) -> int:
        """Padded tokens per batch: the number given; for ``auto`` the step's measured CPU optimum (``cpu_default``)
        on the CPU and for NDIF, and on an accelerator what its free memory holds at the bytes per token measured
        once on this model (recorded in the manifest)."""
        if setting != devices.AUTO:
            return int(setting)
        if self.hf_model is None or self.local_device is None or not devices.accelerator(self.device):
            return cpu_default
        if "bytes_per_token" not in self.extra:
            self.extra["bytes_per_token"] = round(devices.bytes_per_token(self.hf_model, self.device), 1)
        return devices.sized(devices.AUTO, self.device, cpu_default, lambda: self.extra["bytes_per_token"])

    def inputs(self, ids, mask, positions=None) -> dict[str, Any]:
        """A trace's inputs, on the device of a local model's embeddings (a server places a remote model's own)."""
        out = {"input_ids": ids, "attention_mask": mask, **({"position_ids": positions} if positions is not None else {})}
        device = self.local_device
        return {k: v.to(device) for k, v in out.items()} if device else out

    def model_key(self) -> str:
        """The key NDIF knows this model by."""
        return self.lm.to_model_key()

    @property
    def config(self):
        return self.lm.config

    def manifest(self) -> dict[str, Any]:
        return {
            **self.source.describe(),
            "revision": self.revision,
            "architecture": self.arch.name,
            "n_layers": self.n_layers,
            "width": self.width,
            **self.extra,
            **({"remote": self.remote.describe()} if self.remote is not None else {}),
        }


def resolve(spec: str | None) -> ModelSource:
    """Decide where ``spec`` points without loading weights; a bad spec is a one-line error."""
    spec = (spec or "default").strip()
    if spec in ALIASES:
        alias = ALIASES[spec]
        if alias.module:
            return ModelSource(spec, alias.hub_id, "packaged", alias=alias.name, chat=alias.chat)
        return ModelSource(spec, alias.hub_id, "hub", alias=alias.name, chat=alias.chat)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise VneuronError(f"GGUF file {spec} does not exist", "check the path")
        check_gguf_magic(path)
        return ModelSource(spec, path.stem, "gguf", path=path.resolve())
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise VneuronError(
                f"Directory {spec} has no config.json",
                "point `model` at a directory written by save_pretrained, a .gguf file, an alias or a hub id",
            )
        model_id = _dir_model_id(path)
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise VneuronError(f"Model directory {spec} has no tokenizer ({' or '.join(TOKENIZER_FILES[:2])})",
                               f"save it beside the weights: tokenizer.save_pretrained({str(path)!r})")
        return ModelSource(spec, model_id, "directory", path=path.resolve())
    if path.exists():
        raise VneuronError(f"{spec} is neither a model directory nor a .gguf file", "pass one of those, an alias or a hub id")
    if spec.startswith((".", "/", "~")) or os.sep in spec and path.parent.is_dir() and not _looks_like_hub_id(spec):
        raise VneuronError(f"Model path {spec} does not exist", "check the path, or pass an alias (see `vneuron models`)")
    if "/" in spec:
        return ModelSource(spec, spec, "hub")
    known = ", ".join(sorted(a for a in ALIASES if a != "default"))
    raise VneuronError(f"Unknown model {spec!r}: no such alias, and no file or directory of that name exists",
                       f"use an alias ({known}), a local directory, a .gguf file or a hub id like org/name")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def _looks_like_hub_id(spec: str) -> bool:
    return spec.count("/") == 1 and not spec.endswith("/")


def peek_dims(source: ModelSource) -> tuple[int, int] | None:
    """Layers and MLP width from the config alone, when it is at hand without loading anything."""
    directory = source.path if source.kind == "directory" else None
    if source.kind == "packaged":  # its converted copy, if an earlier run made one
        directory = converted_copy(ALIASES[source.alias])
    if directory is None:
        return None
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(directory)
        return num_layers(config), architecture_for(config).width(config)
    except Exception:  # noqa: BLE001 - the real load reports config problems properly
        return None


@contextmanager
def _readable(what: str, fix: str):
    """Anything transformers/tokenizers/safetensors raise while reading model files becomes one line."""
    try:
        yield
    except (VneuronError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("VNEURON_DEBUG") == "1":
            raise
        text = " ".join(str(exc).split())[:140] or exc.__class__.__name__
        raise VneuronError(f"Cannot read {what} ({exc.__class__.__name__}: {text})", fix) from None


def _dir_model_id(path: Path) -> str:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VneuronError(f"{path}/config.json is not valid JSON ({exc})", "re-save the model with save_pretrained") from None
    if not isinstance(cfg, dict) or not cfg.get("model_type"):
        raise VneuronError(f"{path}/config.json has no model_type", "re-save the model with save_pretrained")
    architecture_for(SimpleNamespace(model_type=cfg["model_type"]))  # an unsupported family fails before anything loads
    return cfg.get("_name_or_path") or path.name


def _hub_snapshot(model_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise VneuronError(
            f"Model {model_id!r} is not in the local Hugging Face cache",
            "download it where you are online (hf download ID), pass a local directory, or run it on NDIF with `remote`",
        ) from None


def dir_revision(path: Path) -> str:
    """A content fingerprint of a model directory: config plus weight file names and sizes."""
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def load_model(
    spec: str | None = None,
    *,
    dtype: str | None = None,
    progress: Callable[[str], None] | None = None,
    remote: Any = None,
    device: str | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | None = None,
) -> LoadedModel:
    """Load a model and wrap it for tracing.

    ``dtype``: what it computes in — float32, bfloat16, float16 (float64: exact tests) or auto
    (the fastest here whose accuracy check passes, ``vneuron.runtime.precision``); None: ``DEFAULT_DTYPE``
    on the CPU, auto on an accelerator. ``device``: auto (CUDA, else MPS, else the CPU), cpu, cuda, cuda:N
    or mps; ``device_map`` (auto, balanced, sequential, or accelerate's own dict) spreads the model over
    every visible GPU and, with ``max_memory`` and ``offload_folder``, the CPU and the disk. None: the
    process's placement (``vneuron.runtime.devices.use``; the CLI's ``--device``/``--device-map``).
    The manifest records the dtype and the device used and, for auto, the dtype's measurements.
    ``remote``: a ``remote.RemoteTarget``. For a real NDIF host nothing but the config and the tokenizer is
    loaded (the weights stay on the server), and the dtype is the one the server computes in.
    """
    requested = check_dtype(dtype)
    placement = _placement(device, device_map, max_memory, offload_folder)
    source = resolve(spec)
    if remote is not None and not remote.simulated:
        return _lazy(source, requested, remote, progress)
    where = devices.resolve(placement.device) if placement.device_map is None else "map"
    if source.kind == "packaged":
        gguf = packaged_gguf(ALIASES[source.alias])
        directory, digest = convert_gguf(gguf, progress)
        revision = f"gguf-sha256:{digest}"
    elif source.kind == "gguf":
        directory, digest = convert_gguf(source.path, progress)
        revision = f"gguf-sha256:{digest}"
    elif source.kind == "directory":
        check_weights(source.path, source.spec)
        directory, revision = source.path, f"dir:{dir_revision(source.path)}"
    else:
        directory = _hub_snapshot(source.model_id)
        revision = directory.name  # the snapshot's commit hash
    wanted = requested or (DEFAULT_DTYPE if where == "cpu" else "auto")
    if wanted == "auto":
        loaded = _auto(directory, source, revision, progress, placement)
    else:
        loaded = _wrap(_weights(directory, source, wanted, progress), source, revision, wanted, progress, placement)
    loaded.remote = remote  # the in-process simulation runs on these local weights
    return loaded


def _placement(device, device_map, max_memory, offload_folder) -> devices.Placement:
    """The placement asked for in this call, else the process's; checked before any weight loads."""
    if device is None and device_map is None and max_memory is None and offload_folder is None:
        return devices.default()
    base = devices.default()
    return devices.Placement(device or base.device, device_map if device_map is not None else base.device_map,
                             max_memory if max_memory is not None else base.max_memory,
                             offload_folder if offload_folder is not None else base.offload_folder).check()


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.h5", "*.msgpack")


def check_weights(directory: Path, spec: str) -> None:
    """A model directory with a config and no weight file is incomplete, not corrupt: say so before transformers does.
    (NDIF runs read only the config and the tokenizer, so they do not ask.)"""
    if not any(next(directory.glob(pattern), None) for pattern in WEIGHT_FILES):
        raise VneuronError(f"Model directory {spec} has no weight file (config.json is there, but no model.safetensors, "
                           "pytorch_model.bin or their index)",
                           "copy the weight files beside config.json (save_pretrained writes both), or pass another `model`")


def _weights(directory: Path, source: ModelSource, dtype: str, progress) -> Path:
    """Where to read the weights in ``dtype``: a cached conversion has a copy per dtype."""
    dtype = storage(dtype)  # bf16-mixed loads the float32 weights and rounds the blocks' own
    return dtype_copy(directory, dtype, progress) if source.kind in ("packaged", "gguf") else directory


def _auto(directory: Path, source: ModelSource, revision: str, progress, placement: devices.Placement) -> LoadedModel:
    """The fastest dtype on this processor whose accuracy check on this model passes (else float32), loaded."""
    from vneuron.runtime import precision

    with _readable(f"the config of {source.spec}", "re-save the model with save_pretrained"):
        cfg = text_config(_config(directory))
    arch = architecture_for(cfg)
    where = devices.resolve(placement.device) if placement.device_map is None else _first_device(placement)
    seconds = precision.speeds(arch.hidden(cfg), arch.width(cfg), device=where)
    choice = {"requested": "auto", "seconds": {d: round(t, 5) for d, t in seconds.items()}, "processor": precision.processor(where),
              "margin": precision.MARGIN, "checks": {}}
    known = precision.cached(revision, where) or {}
    reference = None
    for candidate in precision.ranked(seconds):
        check = known.get(candidate)
        model = None
        if check is None:
            if progress:
                progress(f"Checking {candidate} against float32 on {source.model_id} (once on this machine)")
            if reference is None:
                base = _wrap(directory, source, revision, "float32", None, placement)
                reference = precision.check_logprobs(base.hf_model, base.tokenizer, base.device)
                del base
                devices.release()
            model = _wrap(_weights(directory, source, candidate, progress), source, revision, candidate, progress, placement)
            check = precision.compare(reference, precision.check_logprobs(model.hf_model, model.tokenizer, model.device))
            known[candidate] = check
            precision.remember(revision, known, where)
        choice["checks"][candidate] = check
        if check["passed"]:
            choice["chosen_by"] = f"auto: the fastest dtype here whose accuracy check passed ({candidate})"
            model = model or _wrap(_weights(directory, source, candidate, progress), source, revision, candidate, progress, placement)
            model.extra["dtype_choice"] = choice
            return model
        del model
        devices.release()
    choice["chosen_by"] = "auto: float32 (no faster dtype passed its accuracy check)" if choice["checks"] else \
        "auto: float32 (no other dtype is faster here)"
    model = _wrap(directory, source, revision, "float32", progress, placement)
    model.extra["dtype_choice"] = choice
    return model


def _config(directory: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(directory)


def _lazy(source: ModelSource, dtype: str | None, remote, progress) -> LoadedModel:
    """A weightless model for NDIF: config and tokenizer from local files, the key seeded offline.

    Its dtype is what the server computes in: the one given, else (None or auto) the config's.
    """
    from transformers import AutoConfig, AutoTokenizer

    if source.kind == "directory":
        directory, name, revision = source.path, str(source.path), f"dir:{dir_revision(source.path)}"
    elif source.kind in ("packaged", "gguf"):
        gguf = packaged_gguf(ALIASES[source.alias]) if source.kind == "packaged" else source.path
        directory, digest = convert_gguf(gguf, progress)
        name, revision = str(directory), f"gguf-sha256:{digest}"
    else:
        directory = _hub_snapshot_meta(source.model_id)
        name, revision = source.model_id, directory.name
    with _readable(f"the config of {source.spec}", "re-save the model with save_pretrained"):
        config = AutoConfig.from_pretrained(directory)
    arch = architecture_for(config)
    with _readable(f"the tokenizer of {source.spec}", "save a fast tokenizer beside the model (tokenizer.json)"):
        tokenizer = AutoTokenizer.from_pretrained(directory)
    from nnsight.modeling import huggingface as nnsight_hf
    from nnsight.modeling.transformers import TransformersModel

    nnsight_hf._ID_CACHE[name] = name  # no hub lookup for the model key (offline-safe)
    if progress:
        progress(f"Connecting {source.model_id} to {remote.host}")
    lm = TransformersModel(name, task="text-generation", tokenizer=tokenizer)
    given = dtype not in (None, "auto")
    choice = {"requested": dtype or "default", "chosen_by": "given" if given else "the server's (the model config's dtype)"}
    return LoadedModel(lm=lm, source=source, arch=arch, n_layers=num_layers(config), width=arch.width(config),
                       revision=revision, tokenizer=tokenizer, extra={"dtype": dtype if given else served(config),
                                                                      "dtype_choice": choice}, remote=remote)


def _hub_snapshot_meta(model_id: str) -> Path:
    """Config and tokenizer of a hub model, from the local cache (weights are not needed remotely)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json", "*.model"]
    try:
        return Path(snapshot_download(model_id, local_files_only=True, allow_patterns=patterns))
    except (LocalEntryNotFoundError, OSError, ValueError):
        try:
            return Path(snapshot_download(model_id, allow_patterns=patterns))
        except Exception:
            raise VneuronError(
                f"The config and tokenizer of {model_id!r} are not in the local Hugging Face cache",
                f"fetch them once where you are online: hf download {model_id} config.json tokenizer.json tokenizer_config.json",
            ) from None


def _wrap(directory: Path, source: ModelSource, revision: str, dtype: str, progress,
          placement: devices.Placement | None = None) -> LoadedModel:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    placement = placement or devices.default()
    hf_logging.disable_progress_bar()  # vneuron shows its own progress; stderr stays for errors
    with _readable(f"the config of {source.spec}", "re-save the model with save_pretrained"):
        config = AutoConfig.from_pretrained(directory)
    arch = architecture_for(config)  # fail before loading weights
    if progress:
        progress(f"Loading {source.model_id}")
    with _readable(f"the tokenizer of {source.spec}", "save a fast tokenizer beside the model (tokenizer.json)"):
        tokenizer = AutoTokenizer.from_pretrained(directory)
    where = {}
    if dtype == MIXED and placement.device_map is not None:
        raise VneuronError("`dtype` bf16-mixed rounds the blocks' weights where they are, but `device_map` lets accelerate "
                           "move (and offload) them", "use `dtype` bfloat16 with `device_map`, or drop `device_map`")
    if placement.device_map is not None:  # accelerate places the layers (its own engine), with its limits
        where = {"device_map": placement.device_map, "max_memory": placement.max_memory, "offload_folder": placement.offload_folder}
        where = {k: v for k, v in where.items() if v is not None}
    elif devices.accelerator(devices.resolve(placement.device)):
        where = {"device_map": {"": devices.resolve(placement.device)}}
    with _readable(f"the weights of {source.spec}", "they are truncated or corrupt: save or download the model again"), \
            _fits(source, placement):
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=getattr(torch, storage(dtype)), **where)
    model.eval()
    if dtype == MIXED:
        mix(layer_modules(model, arch), arch)
    from nnsight.modeling.transformers import TransformersModel

    lm = TransformersModel(model, task="text-generation", tokenizer=tokenizer)
    source.chat = source.chat or bool(getattr(tokenizer, "chat_template", None))
    device = _input_device(model)
    extra: dict[str, Any] = {"dtype": dtype, "device": devices.card(device)}
    if getattr(model, "hf_device_map", None) and placement.device_map is not None:
        extra["device_map"] = {"requested": placement.device_map if isinstance(placement.device_map, str) else "explicit",
                               "placed": _map_summary(model.hf_device_map)}
    return LoadedModel(
        lm=lm,
        source=source,
        arch=arch,
        n_layers=num_layers(config),
        width=arch.width(config),
        revision=revision,
        tokenizer=tokenizer,
        hf_model=model,
        extra=extra,
        device=device,
    )


def _input_device(model) -> str:
    """Where the model's inputs go: its embeddings' device (under a device map, the execution device accelerate
    gives the embeddings; a layer offloaded to the disk computes on the CPU)."""
    placed = getattr(model, "hf_device_map", None)
    embeddings = model.get_input_embeddings()
    if placed:
        names = {module: name for name, module in model.named_modules()}
        name = names.get(embeddings, "")
        owner = max((k for k in placed if k == "" or name == k or name.startswith(k + ".")), key=len, default=None)
        value = placed.get(owner, "cpu") if owner is not None else "cpu"
        return f"cuda:{value}" if isinstance(value, int) else ("cpu" if value in ("disk", "cpu") else str(value))
    return str(embeddings.weight.device)


def _map_summary(placed: dict) -> dict[str, int]:
    """How many of a device map's modules sit on each device (the map itself can run to hundreds of entries)."""
    counts: dict[str, int] = {}
    for value in placed.values():
        key = f"cuda:{value}" if isinstance(value, int) else str(value)
        counts[key] = counts.get(key, 0) + 1
    return counts


def _first_device(placement: devices.Placement) -> str:
    """The device a device map starts on, for measurements taken before the model loads (the first GPU, else the CPU)."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


@contextmanager
def _fits(source: ModelSource, placement: devices.Placement):
    """A model that does not fit where it was asked to go is one line that says where it could go instead."""
    try:
        yield
    except Exception as exc:
        if devices.is_oom(exc):
            raise VneuronError(f"{source.model_id} does not fit in the memory of {placement.device_map or placement.device}",
                               "use `dtype` bfloat16, or `device_map` auto to spread it over every GPU (with `max_memory` and "
                               "`offload_folder`, over the CPU and the disk too)") from None
        if isinstance(exc, ValueError) and placement.device_map is not None and (
                "offload" in str(exc) or "device_map" in str(exc) or "memory" in str(exc)):
            raise VneuronError(f"The device map cannot place {source.model_id}: {str(exc).splitlines()[0][:200]}",
                               "give `max_memory` room for it, or an `offload_folder` for the layers that do not fit") from None
        raise


def served(config) -> str:
    """The dtype a server computes a model in: its config's, else bfloat16 (what NDIF serves)."""
    for cfg in (config, text_config(config)):
        value = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
        name = str(value).replace("torch.", "") if value is not None else None
        if name in ("float32", "bfloat16", "float16", "float64"):
            return name
    return "bfloat16"
