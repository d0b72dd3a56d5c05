"""What an evaluation costs: forward passes, tokens, requests and bytes, counted as it runs.

The same counts, taken from the packed batches without running them, are the plan that
``--dry-run`` prints before anything runs (``vneuron.locate.plan``, ``vneuron.validate.plan``).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

MB = 1 << 20


def dtype_bytes(dtype: str) -> int:
    """Bytes of one number in a compute dtype ("float32", "bfloat16", ...)."""
    return {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2, "bf16-mixed": 4}[dtype]  # mixed: float32 activations


@dataclass
class Work:
    forwards: int = 0  # forward passes (batches)
    requests: int = 0  # requests sent (remote) or request functions run (local)
    tokens: int = 0  # token positions entering the model, padding included
    layer_tokens: int = 0  # token positions × decoder blocks actually run (shared lower layers run once)
    head_positions: int = 0  # positions whose logits were computed
    bytes_up: int = 0  # tensor bytes sent with the requests (inputs, edits)
    bytes_down: int = 0  # tensor bytes that came back

    def add(self, other: "Work") -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def report(self) -> dict:
        return asdict(self)


current = Work()  # reset by each ablate / steer run; continuation_logprobs adds to it
stages: dict[str, dict] = {}  # per named stage of the run under way: wall and CPU seconds and its work (``stage``)
_open: list[str] = []


def reset() -> Work:
    global current, stages
    current, stages = Work(), {}
    _open.clear()
    return current


@contextmanager
def stage(name: str):
    """Count the wall and CPU seconds and the work of ``name`` (the manifest's ``timings.stages``, which the dry run's
    estimate per stage is checked against); a stage inside another counts in the outer one only."""
    if _open:
        yield
        return
    _open.append(name)
    before, wall, cpu = asdict(current), time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        _open.pop()
        row = stages.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0, "work": {}})
        row["wall_s"] += time.perf_counter() - wall
        row["cpu_s"] += time.process_time() - cpu
        for key, value in asdict(current).items():
            row["work"][key] = row["work"].get(key, 0) + value - before.get(key, 0)


def stage_report() -> dict[str, dict]:
    """``stages`` rounded, for a manifest."""
    return {name: {"wall_s": round(r["wall_s"], 2), "cpu_s": round(r["cpu_s"], 2), "work": dict(r["work"])} for name, r in stages.items()}
