"""Which dtype a model computes in: the one asked for, or ``auto``, measured on the processor it runs on.

``auto`` (like the thread count, ``threads.py``) times the decoder's two matrix products at the
model's own shapes in float32, bfloat16 and float16 on the model's device, interleaved so a load
spike hits every candidate alike, and orders the candidates that beat float32 by ``MARGIN``.
Without a dtype a model computes in float32 on the CPU and in ``auto`` on an accelerator (bfloat16
where it passes, as it does on every recent GPU). The fastest is kept
only if it passes an accuracy check on the model itself: next-token log-probabilities over
``CHECK_TEXTS`` within ``TOLERANCE`` of float32's (mean over a text's tokens, the quantity forced
choice compares) and finite everywhere (float16 overflows in some families). Otherwise float32.
The decision is cached per model revision, CPU and torch version, so only the first ``auto`` run
of a model pays for the check. A remote model computes in the dtype its server serves.

``bf16-mixed`` (issue 27) rounds only the decoder blocks' matrix products to bfloat16: their weights are stored in
bfloat16 and each product's input is rounded to it, while the residual stream, the MLP activations (what a neuron edit
reads and writes), the norms, attention's softmax, the LM head and every log-softmax stay float32 (``vneuron.models.mixed``). On a CPU
with bfloat16 units (AVX512-BF16, AMX) those products run about 2.3x faster; what it moves against float32 is measured
in docs/EVIDENCE.md.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vneuron.errors import VneuronError
from vneuron.runtime.store import cache_dir

if TYPE_CHECKING:  # torch is imported where it computes: the dtype names serve `vneuron --help` and the configs
    import torch

# what a model computes in (float64: the tests' exact models); `auto` is measured on the machine (below)
MIXED = "bf16-mixed"  # bfloat16 products inside the blocks, float32 everywhere else (``vneuron.models.mixed``)
DTYPES = ("float32", "bfloat16", "float16", "float64", MIXED)
DTYPE_CHOICES = (*DTYPES, "auto")
DEFAULT_DTYPE = "float32"  # accuracy of bfloat16 against it: docs/EVIDENCE.md#compute-dtype


def storage(dtype: str) -> str:
    """The torch dtype name of a compute dtype's activations and residual stream (``bf16-mixed``: float32)."""
    return "float32" if dtype == MIXED else dtype


def check_dtype(dtype: str | None) -> str | None:
    """A compute dtype the user typed (None: the default, or a run's own)."""
    if dtype is not None and dtype not in DTYPE_CHOICES:
        raise VneuronError(f"Unknown dtype {dtype!r}", f"use one of: {', '.join(DTYPE_CHOICES)}")
    return dtype


MARGIN = 1.2  # a candidate must be this much faster than float32 to be worth its rounding
# |mean log-prob per token| difference to float32 allowed on any check text, in nats. Forced choice reads
# P = σ(mean lp(pole) − mean lp(opposite)), so this bounds a per-item change of P by 0.25 · 2 · TOLERANCE
TOLERANCE = 0.05
CHECK_TEXTS = (
    "A friend asks you to help them move house on the weekend you had planned to rest. You decide to help.",
    "The committee must choose between keeping the old rules and trying a new approach nobody has tested.",
    "她把找到的钱包交给了警察，因为这是正确的做法。",
)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def speeds(hidden: int, width: int, candidates=("float32", "bfloat16", "float16"), repeats: int = 3,
           device: str = "cpu") -> dict[str, float]:
    """Seconds of the decoder's up and down products (256 tokens on the CPU, 4096 on an accelerator) per dtype on
    ``device``: best of ``repeats``, interleaved."""
    import torch

    gen = torch.Generator().manual_seed(0)
    tokens = 256 if device == "cpu" else 4096
    x, up, down = torch.randn(tokens, hidden, generator=gen), torch.randn(hidden, width, generator=gen), torch.randn(width, hidden,
                                                                                                                     generator=gen)
    mats = {d: tuple(m.to(device, getattr(torch, d)) for m in (x, up, down)) for d in candidates}
    best = {d: float("inf") for d in candidates}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(repeats):
        for d, (a, b, c) in mats.items():
            sync()
            start = time.perf_counter()
            for _ in range(4):
                (a @ b) @ c
            sync()
            best[d] = min(best[d], time.perf_counter() - start)
    return best


def ranked(seconds: dict[str, float]) -> list[str]:
    """The candidates faster than float32 by ``MARGIN``, fastest first."""
    base = seconds["float32"]
    return sorted((d for d, s in seconds.items() if d != "float32" and s * MARGIN <= base), key=seconds.get)


def check_logprobs(hf_model, tokenizer, device: str = "cpu") -> list[torch.Tensor]:
    """Per check text, the log-probability of each next token (float64, on the host), under the model as it is now
    (its inputs on ``device``, where its embeddings are)."""
    import torch

    out = []
    with torch.inference_mode():
        for text in CHECK_TEXTS:
            ids = torch.tensor([tokenizer(text)["input_ids"]], device=device)
            logits = hf_model(input_ids=ids).logits[0, :-1].double()
            out.append(logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1).cpu())
    return out


def compare(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> dict:
    """How far a candidate's check log-probabilities are from float32's; ``passed`` within ``TOLERANCE``."""
    import torch

    finite = all(bool(torch.isfinite(c).all()) for c in candidate)
    mean_diff = max(abs(float(c.mean() - r.mean())) for r, c in zip(reference, candidate)) if finite else float("inf")
    token_diff = max(float((c - r).abs().max()) for r, c in zip(reference, candidate)) if finite else float("inf")
    return {"finite": finite, "max_mean_logprob_diff": round(mean_diff, 5), "max_token_logprob_diff": round(token_diff, 5),
            "tolerance": TOLERANCE, "passed": finite and mean_diff <= TOLERANCE}


def _cache_file() -> Path:
    return cache_dir() / "dtype-checks.json"


def cpu_bf16_units() -> list[str]:
    """The CPU's bfloat16 instruction sets (Linux's /proc/cpuinfo flags: avx512_bf16, amx_bf16), where ``bf16-mixed`` pays."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [name for flag, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16")) if flag in flags]
    except OSError:
        pass
    return []


def processor(device: str = "cpu") -> str:
    """What computes: the CPU's model name, or the accelerator's."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name() if device == "cpu" else device


def _key(revision: str, device: str = "cpu") -> str:
    import torch

    return f"{revision}|{processor(device)}|torch {torch.__version__}"


def cached(revision: str, device: str = "cpu") -> dict | None:
    """An earlier ``auto`` decision for this model on this processor, if one was made."""
    try:
        return json.loads(_cache_file().read_text()).get(_key(revision, device))
    except (OSError, json.JSONDecodeError):
        return None


def remember(revision: str, decision: dict, device: str = "cpu") -> None:
    path = _cache_file()
    try:
        known = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        known = {}
    known[_key(revision, device)] = decision
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the next run another check

