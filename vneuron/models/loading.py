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
import shutil
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib import import_module, util as importlib_util
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from vneuron.errors import VneuronError
from vneuron.models.architectures import Architecture, architecture_for, num_layers, text_config
from vneuron.models.registry import ALIASES, Alias
from vneuron.runtime.precision import DEFAULT_DTYPE, check_dtype
from vneuron.runtime.quiet import library_bars
from vneuron.runtime.store import cache_dir


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


def check_gguf_magic(path: Path) -> None:
    """A text file named .gguf is caught here, not deep inside transformers."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise VneuronError(f"Cannot read {path} ({exc.strerror})", "check the file's permissions") from None
    if magic != b"GGUF":
        raise VneuronError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)",
                           "pass a real .gguf model file, a model directory, an alias or a hub id")


def check_gguf(path: Path) -> None:
    """Parse the header and tensor table, and check every tensor lies inside the file (truncation)."""
    check_gguf_magic(path)
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        size = path.stat().st_size
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as exc:  # noqa: BLE001 - the reader raises struct/Value/Index errors on damaged files
        raise VneuronError(f"{path} is truncated or corrupt ({exc.__class__.__name__}: {str(exc)[:80]})",
                           "download or copy the .gguf file again") from None
    if end > size:
        raise VneuronError(f"{path} is truncated ({size} bytes, its tensors need {end})", "download or copy the .gguf file again")


def peek_dims(source: ModelSource) -> tuple[int, int] | None:
    """Layers and MLP width from the config alone, when it is at hand without loading anything."""
    directory = source.path if source.kind == "directory" else None
    if source.kind == "packaged":  # its converted copy, if an earlier run made one
        directory = _converted_copy(ALIASES[source.alias])
    if directory is None:
        return None
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(directory)
        return num_layers(config), architecture_for(config).width(config)
    except Exception:  # noqa: BLE001 - the real load reports config problems properly
        return None


def _converted_copy(alias: Alias) -> Path | None:
    try:
        name = alias.gguf_name or import_module(alias.module).MODEL_NAME
    except Exception:  # noqa: BLE001 - not installed, or a package without that attribute
        return None
    for marker in sorted((cache_dir() / "models").glob("*/.complete")):
        try:
            if json.loads(marker.read_text()).get("gguf") == name:
                return marker.parent
        except (OSError, json.JSONDecodeError):
            continue
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def packaged_gguf(alias: Alias) -> Path:
    """The GGUF file shipped by an alias' PyPI package (assembled from chunks where needed)."""
    if importlib_util.find_spec(alias.module) is None:
        raise VneuronError(f"Model {alias.name!r} is not installed", f"run: {alias.install}")
    if alias.gguf_name:
        # find_spec, not import: some such packages fail to import without their declared deps.
        spec = importlib_util.find_spec(alias.module)
        path = Path(next(iter(spec.submodule_search_locations))) / alias.gguf_name
        if not path.is_file():
            raise VneuronError(f"{path} is missing from the {alias.package} package", f"reinstall it: {alias.install}")
        return path
    module = import_module(alias.module)
    target = cache_dir() / "gguf" / module.MODEL_NAME
    return Path(module.assemble(target))


@library_bars()  # --quiet: no de-quantising, loading or shard-writing bars
def convert_gguf(gguf: Path, progress: Callable[[str], None] | None = None) -> tuple[Path, str]:
    """Dequantise a GGUF file once into a safetensors directory; returns it and the file hash.

    The copy is built in ``NAME.tmpPID`` and renamed when complete; an interrupted conversion
    removes its own directory, and stale ones left by a killed process are swept at the next start.
    """
    digest = sha256_file(gguf)
    target = cache_dir() / "models" / f"{gguf.stem}-{digest[:16]}"
    if (target / ".complete").is_file():
        return target, digest
    check_gguf(gguf)
    if progress:
        progress(f"Converting {gguf.name} to a cached safetensors copy (first run only, about 2 minutes)")
    _build_cached(target, lambda tmp: _convert_into(gguf, tmp), {"gguf": gguf.name, "sha256": digest},
                  f"Cannot convert {gguf}", "check the file is a complete GGUF model of a supported architecture")
    return target, digest


@library_bars()
def dtype_copy(converted: Path, dtype: str, progress: Callable[[str], None] | None = None) -> Path:
    """The cached float32 conversion cast once to ``dtype`` (bfloat16, float16), beside it.

    Loading it never holds the float32 weights; its values are the float32 copy's, rounded as
    ``Tensor.to(dtype)`` rounds them, i.e. what loading the float32 copy in ``dtype`` gives.
    """
    if dtype in ("float32", "float64"):
        return converted
    target = converted.with_name(f"{converted.name}-{dtype}")
    if (target / ".complete").is_file():
        return target
    if progress:
        progress(f"Caching a {dtype} copy of {converted.name} (once)")
    marker = {**json.loads((converted / ".complete").read_text()), "dtype": dtype}
    _build_cached(target, lambda tmp: _cast_into(converted, tmp, dtype), marker, f"Cannot cache a {dtype} copy of {converted}",
                  "check the cached conversion, or delete it to convert again")
    return target


def _build_cached(target: Path, build: Callable[[Path], None], marker: dict, what: str, fix: str) -> None:
    """Build a cache directory in ``NAME.tmpPID`` and rename it into place (an interrupted build leaves nothing)."""
    sweep_stale(target.parent)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    made_parent = not target.parent.exists()
    try:
        tmp.mkdir(parents=True)
        build(tmp)
        (tmp / ".complete").write_text(json.dumps(marker))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_parent:  # leave the cache as it was
            with suppress(OSError):
                target.parent.rmdir()
        if isinstance(exc, (VneuronError, KeyboardInterrupt)) or os.environ.get("VNEURON_DEBUG") == "1":
            raise
        if isinstance(exc, OSError):
            raise VneuronError(f"Cannot write the converted model to {cache_dir()} ({exc.strerror or exc})",
                               "free disk space there, or set VNEURON_CACHE to a writable directory") from None
        raise VneuronError(f"{what} ({exc.__class__.__name__}: {str(exc)[:140]})", fix) from None


def _cast_into(converted: Path, directory: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(converted, dtype=getattr(torch, dtype)).save_pretrained(directory)
    for path in converted.iterdir():  # the tokenizer's files, as they are
        if path.is_file() and path.suffix != ".safetensors" and path.name != ".complete" and not (directory / path.name).exists():
            shutil.copyfile(path, directory / path.name)


def _convert_into(gguf: Path, directory: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded ("quantised") model until these are cleared.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def sweep_stale(models: Path) -> list[Path]:
    """Remove conversion directories whose process is gone (a Ctrl-C or kill during a first run)."""
    removed = []
    if not models.is_dir():
        return removed
    for tmp in models.glob("*.tmp*"):
        pid = tmp.name.rpartition(".tmp")[2]
        if tmp.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftover from an earlier, interrupted attempt in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
) -> LoadedModel:
    """Load a model and wrap it for tracing.

    ``dtype``: what it computes in — float32, bfloat16, float16 (float64: exact tests) or auto
    (the fastest here whose accuracy check passes, ``vneuron.runtime.precision``); None: ``DEFAULT_DTYPE``.
    The manifest records the dtype used and, for auto, its measurements. ``remote``: a
    ``remote.RemoteTarget``. For a real NDIF host nothing but the config and the tokenizer is
    loaded (the weights stay on the server), and the dtype is the one the server computes in.
    """
    requested = check_dtype(dtype)
    source = resolve(spec)
    if remote is not None and not remote.simulated:
        return _lazy(source, requested, remote, progress)
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
    if (requested or DEFAULT_DTYPE) == "auto":
        loaded = _auto(directory, source, revision, progress)
    else:
        dtype = requested or DEFAULT_DTYPE
        loaded = _wrap(_weights(directory, source, dtype, progress), source, revision, dtype, progress)
    loaded.remote = remote  # the in-process simulation runs on these local weights
    return loaded


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
    return dtype_copy(directory, dtype, progress) if source.kind in ("packaged", "gguf") else directory


def _auto(directory: Path, source: ModelSource, revision: str, progress) -> LoadedModel:
    """The fastest dtype here whose accuracy check on this model passes (else float32), loaded."""
    from vneuron.runtime import precision

    with _readable(f"the config of {source.spec}", "re-save the model with save_pretrained"):
        cfg = text_config(_config(directory))
    arch = architecture_for(cfg)
    seconds = precision.speeds(arch.hidden(cfg), arch.width(cfg))
    choice = {"requested": "auto", "seconds": {d: round(t, 5) for d, t in seconds.items()}, "cpu": precision.cpu_name(),
              "margin": precision.MARGIN, "checks": {}}
    known = precision.cached(revision) or {}
    reference = None
    for candidate in precision.ranked(seconds):
        check = known.get(candidate)
        model = None
        if check is None:
            if progress:
                progress(f"Checking {candidate} against float32 on {source.model_id} (once on this machine)")
            if reference is None:
                base = _wrap(directory, source, revision, "float32", None)
                reference = precision.check_logprobs(base.hf_model, base.tokenizer)
                del base
            model = _wrap(_weights(directory, source, candidate, progress), source, revision, candidate, progress)
            check = precision.compare(reference, precision.check_logprobs(model.hf_model, model.tokenizer))
            known[candidate] = check
            precision.remember(revision, known)
        choice["checks"][candidate] = check
        if check["passed"]:
            choice["chosen_by"] = f"auto: the fastest dtype here whose accuracy check passed ({candidate})"
            model = model or _wrap(_weights(directory, source, candidate, progress), source, revision, candidate, progress)
            model.extra["dtype_choice"] = choice
            return model
    choice["chosen_by"] = "auto: float32 (no faster dtype passed its accuracy check)" if choice["checks"] else \
        "auto: float32 (no other dtype is faster here)"
    model = _wrap(directory, source, revision, "float32", progress)
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


def _wrap(directory: Path, source: ModelSource, revision: str, dtype: str, progress) -> LoadedModel:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # vneuron shows its own progress; stderr stays for errors
    with _readable(f"the config of {source.spec}", "re-save the model with save_pretrained"):
        config = AutoConfig.from_pretrained(directory)
    arch = architecture_for(config)  # fail before loading weights
    if progress:
        progress(f"Loading {source.model_id}")
    with _readable(f"the tokenizer of {source.spec}", "save a fast tokenizer beside the model (tokenizer.json)"):
        tokenizer = AutoTokenizer.from_pretrained(directory)
    with _readable(f"the weights of {source.spec}", "they are truncated or corrupt: save or download the model again"):
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=getattr(torch, dtype))
    model.eval()
    from nnsight.modeling.transformers import TransformersModel

    lm = TransformersModel(model, task="text-generation", tokenizer=tokenizer)
    source.chat = source.chat or bool(getattr(tokenizer, "chat_template", None))
    return LoadedModel(
        lm=lm,
        source=source,
        arch=arch,
        n_layers=num_layers(config),
        width=arch.width(config),
        revision=revision,
        tokenizer=tokenizer,
        hf_model=model,
        extra={"dtype": dtype},
    )


def served(config) -> str:
    """The dtype a server computes a model in: its config's, else bfloat16 (what NDIF serves)."""
    for cfg in (config, text_config(config)):
        value = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
        name = str(value).replace("torch.", "") if value is not None else None
        if name in ("float32", "bfloat16", "float16", "float64"):
            return name
    return "bfloat16"
