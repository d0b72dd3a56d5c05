"""What an evaluation costs: forward passes, tokens, requests and bytes, counted as it runs.

The same counts, taken from the packed batches without running them, are the plan that
``--dry-run`` prints before anything runs (``vneuron.locate.plan``, ``vneuron.validate.plan``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MB = 1 << 20


def dtype_bytes(dtype: str) -> int:
    """Bytes of one number in a compute dtype ("float32", "bfloat16", ...)."""
    return {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}[dtype]


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


def reset() -> Work:
    global current
    current = Work()
    return current
