"""GGUF model files (the packaged models ship as GGUF inside PyPI packages) to cached safetensors copies.

A GGUF file is dequantised once into a safetensors directory in the cache (``VNEURON_CACHE``), keyed by the
file's SHA-256, with a copy per compute dtype beside it; every copy is built in ``NAME.tmpPID`` and renamed
when complete, so an interrupted conversion leaves nothing (and stale copies of killed processes are swept).
A damaged file is a one-line error before transformers reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import suppress
from importlib import import_module, util as importlib_util
from pathlib import Path
from typing import Callable

from vneuron.errors import VneuronError
from vneuron.models.registry import Alias
from vneuron.runtime.quiet import library_bars
from vneuron.runtime.store import cache_dir


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


def converted_copy(alias: Alias) -> Path | None:
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
