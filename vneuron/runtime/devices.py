"""Where a model computes: one device (the CPU, a GPU, Apple's MPS) or several through accelerate's ``device_map``.

``--device auto`` (the default) takes CUDA when torch sees it, else MPS, else the CPU, so a GPU user's first
command uses the GPU without a flag and a CPU machine's runs stay as they were. A model too large for one
GPU is spread over every visible GPU (and, with ``max_memory``/``offload_folder``, the CPU and the disk) by
``--device-map auto|balanced|sequential``: accelerate's own placement, never one of ours. A bad device is
one line before any work. On an accelerator the defaults follow the hardware: ``--batch-tokens auto`` is
sized from the free memory measured on the device, and an out-of-memory error halves the batch and
retries (``shrinking``). Everything here imports torch lazily: the names serve ``vneuron --help``.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

from vneuron.errors import VneuronError

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# what --batch-tokens auto means where nothing is measured (the CPU, NDIF): the measured CPU optimum of each step
AUTO = "auto"
# the share of a device's free memory a batch may take (the rest: the allocator's fragmentation, other processes)
MEMORY_SHARE = 0.7
T = TypeVar("T")


@dataclass(frozen=True)
class Placement:
    """Where models load: a device, or accelerate's device map (with its memory limits and offload folder)."""

    device: str = "auto"
    device_map: str | dict | None = None  # a name accelerate knows, or its explicit {module: device} map (the API)
    max_memory: dict | None = None  # accelerate's {device: "20GiB", "cpu": "60GiB"} for a device map
    offload_folder: str | None = None  # where a device map may put layers on the disk

    def check(self) -> "Placement":
        check_device(self.device)
        if isinstance(self.device_map, str) and self.device_map not in DEVICE_MAPS:
            raise VneuronError(f"Unknown `device_map` {self.device_map!r}", f"use one of: {', '.join(DEVICE_MAPS)}")
        return self


_default = Placement()


def use(placement: Placement) -> Placement:
    """Where every model this process loads goes, unless a call says otherwise (the CLI sets it once per command)."""
    global _default
    _default = placement.check()
    return _default


def default() -> Placement:
    return _default


@contextmanager
def placed(device: str | None = None, device_map: str | dict | None = None) -> Iterator[None]:
    """Within the block, models load on ``device`` (or by ``device_map``); None: where they would anyway."""
    global _default
    if device is None and device_map is None:
        yield
        return
    previous = _default
    _default = Placement(device or previous.device, device_map).check()
    try:
        yield
    finally:
        _default = previous


def check_device(device: str | None) -> str:
    """The device's spelling (no torch needed): auto, cpu, cuda, cuda:N or mps."""
    if device is None or not _DEVICE.match(str(device)):
        raise VneuronError(f"Unknown `device` {device!r}", f"use {DEVICE_HELP}")
    return device


def resolve(device: str | None = None) -> str:
    """The device a model will compute on: ``auto`` decided here, anything asked for checked against what torch
    sees, so a machine without CUDA, a GPU index beyond the last, or an MPS torch cannot use is one line."""
    import torch

    device = check_device(device or _default.device)
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda:0"
        return "mps" if _mps_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
            raise VneuronError(f"`device` {device}, but torch sees no CUDA device (this is {build})",
                               "install torch's CUDA build (docs/getting-started.md, On a GPU), or use `device` cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        count = torch.cuda.device_count()
        if index >= count:
            raise VneuronError(f"`device` {device}, but torch sees {count} CUDA device{'s' if count != 1 else ''} "
                               f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})",
                               "pick one of them, or `device_map` auto to spread the model over all")
        return f"cuda:{index}"
    if device == "mps" and not _mps_available():
        raise VneuronError("`device` mps, but this torch cannot use Apple's MPS here",
                           "use `device` cpu (MPS needs macOS 12.3+ on Apple silicon and a torch built with it)")
    return device


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def accelerator(device: str) -> bool:
    """Does ``device`` compute somewhere other than this machine's CPU threads?"""
    return not str(device).startswith("cpu")


def describe() -> list[dict[str, Any]]:
    """What torch sees, for ``vneuron doctor`` and manifests: each accelerator with its memory."""
    import torch

    found: list[dict[str, Any]] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            found.append({"device": f"cuda:{i}", "name": props.name, "memory_gb": round(total / 2**30, 1),
                          "free_gb": round(free / 2**30, 1), "capability": f"{props.major}.{props.minor}",
                          "bf16": bool(torch.cuda.is_bf16_supported())})
    if _mps_available():
        found.append({"device": "mps", "name": "Apple MPS"})
    return found


def card(device: str) -> dict[str, Any]:
    """The device a run computed on, as a manifest records it (the GPU's name and memory)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        index = int(device.split(":")[1]) if ":" in device else 0
        props = torch.cuda.get_device_properties(index)
        return {"device": device, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                "torch_cuda": torch.version.cuda}
    return {"device": device}


# -- batches that fit ---------------------------------------------------------------------------------------------
def is_oom(exc: BaseException) -> bool:
    """An out-of-memory error of the device (CUDA's, MPS's or the allocator's), not of the host."""
    import torch

    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text.lower() or "MPS backend out of memory" in text)


def free_bytes(device: str) -> int | None:
    """Free memory on an accelerator right now (None: the CPU, or a device that cannot say)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    return None


def batch_setting(value: int | str, name: str = "batch_tokens") -> int | str:
    """A batch size as typed: a positive number of padded tokens, or ``auto``."""
    if value == AUTO:
        return AUTO
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise VneuronError(f"`{name}` must be a positive number of tokens or auto, got {value!r}", "e.g. 1024, or auto")
    return number


def bytes_per_token(hf_model, device: str, tokens: int = 512) -> float:
    """Device memory one token of a forward pass takes at its peak (its activations, one position's logits): measured
    with a probe batch, so an ``auto`` batch is sized from the model and the card, not guessed."""
    import torch

    ids = torch.zeros(1, tokens, dtype=torch.long, device=device)
    with torch.inference_mode():
        peak = peak_bytes(device, lambda: hf_model(input_ids=ids, use_cache=False, logits_to_keep=1))
    return peak / tokens


def sized(setting: int | str, device: str, cpu_default: int, bytes_per_token: Callable[[], float] | None = None,
          ceiling: int = 1 << 17) -> int:
    """A batch size in padded tokens: the number given; or, for ``auto``, the step's measured CPU optimum on the
    CPU (and for NDIF), and on an accelerator as many tokens as ``MEMORY_SHARE`` of its free memory holds at the
    bytes one token was measured to take (``bytes_per_token``, a probe run on the device)."""
    if setting != AUTO:
        return int(setting)
    free = free_bytes(device) if accelerator(device) else None
    if free is None or bytes_per_token is None:
        return cpu_default
    per_token = max(float(bytes_per_token()), 1.0)
    return int(max(cpu_default // 4, min(ceiling, free * MEMORY_SHARE / per_token)))


def peak_bytes(device: str, run: Callable[[], Any]) -> int:
    """The device memory ``run`` takes at its peak beyond what was allocated before (0 where it cannot be read)."""
    import torch

    if not (device.startswith("cuda") and torch.cuda.is_available()):
        run()
        return 0
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    return max(int(torch.cuda.max_memory_allocated(device)) - before, 0)


_fits: dict[str, int] = {}  # per step, the batch size an out-of-memory error shrank it to: later calls start there


def shrinking(batch_tokens: int, attempt: Callable[[int], T], *, what: str, least: int = 1,
              say: Callable[[str], None] | None = None) -> T:
    """``attempt(batch_tokens)``, halving the batch after each out-of-memory error until it fits or cannot shrink.

    What survives the halving is one line naming the batch size and the ways out; a caller keeps what it had
    finished (checkpoints) before it re-raises. A size that had to shrink stays shrunk for the rest of the process."""
    tokens = min(batch_tokens, _fits.get(what, batch_tokens))
    while True:
        try:
            result = attempt(tokens)
            if tokens < batch_tokens:
                _fits[what] = tokens
            return result
        except Exception as exc:  # only the device's out-of-memory error is retried
            if not is_oom(exc):
                raise
            release()
            if tokens // 2 < least:
                raise VneuronError(
                    f"Out of device memory in {what} even at `batch_tokens` {tokens}",
                    "use `dtype` bfloat16, `device_map` auto (spread the model over every GPU, or offload to the CPU), "
                    "or free the GPU of other processes") from None
            tokens //= 2
            if say:
                say(f"out of device memory in {what}: retrying with batch_tokens {tokens}")


def release() -> None:
    """Give back what the allocator holds (after an out-of-memory error, or between two models)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def on(device: Any, *tensors: Any) -> Iterator[Any]:
    """Each tensor moved to ``device`` (None passes through): inputs a local trace feeds the model."""
    for t in tensors:
        yield t.to(device) if t is not None and hasattr(t, "to") else t
