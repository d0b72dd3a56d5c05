"""How many torch threads to use: measured on the machine it runs on, never assumed.

On a busy 2-core machine two threads were slower than one (forced choice 1.75×, generation
5.8×), so without ``--threads`` a short interleaved calibration times the same matmul at each
candidate count and keeps the fastest. The choice and its timings go into run manifests.
"""

from __future__ import annotations

import contextlib
import os
import time

import torch

chosen: dict = {}  # what the last pick() decided, for manifests


def _available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def pick(requested: int | None = None, *, candidates: list[int] | None = None, repeats: int = 3) -> dict:
    """Set torch's thread count: ``requested`` if given, else the fastest candidate measured here."""
    global chosen
    if requested:
        torch.set_num_threads(requested)
        chosen = {"threads": requested, "chosen_by": "--threads"}
        return chosen
    if os.environ.get("OMP_NUM_THREADS"):
        n = int(os.environ["OMP_NUM_THREADS"])
        torch.set_num_threads(n)
        chosen = {"threads": n, "chosen_by": "OMP_NUM_THREADS"}
        return chosen
    cores = _available()
    candidates = candidates or sorted({1, min(2, cores), min(4, cores), cores} - {0})
    a, b = torch.randn(256, 640), torch.randn(640, 2048)
    best = {n: float("inf") for n in candidates}
    for _ in range(repeats):  # interleaved, so a load spike hits every candidate alike
        for n in candidates:
            torch.set_num_threads(n)
            start = time.perf_counter()
            for _ in range(4):
                a @ b
            best[n] = min(best[n], time.perf_counter() - start)
    n = min(candidates, key=lambda c: (best[c], c))
    torch.set_num_threads(n)
    chosen = {"threads": n, "chosen_by": "measured", "seconds": {str(c): round(t, 5) for c, t in best.items()},
              "cores": cores}
    return chosen


def describe() -> dict:
    """For manifests: the last decision, or what torch is using now."""
    return dict(chosen) if chosen else {"threads": torch.get_num_threads(), "chosen_by": "torch default"}


@contextlib.contextmanager
def one_thread():
    """Torch on one thread for a while (then as before): for many small tensor operations, where threads only wait
    on each other. The held-out probes of `locate --limit 40` on Gemma-3-270M took 0.5 CPU s on one thread and
    19.5 on two, on a busy 2-core machine (vneuron.locate.probes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
