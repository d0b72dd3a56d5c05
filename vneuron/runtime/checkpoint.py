"""What an unfinished run has computed so far, kept beside its output directory, so nothing is computed twice.

One mechanism for every long command: ``locate`` (the NDIF requests of a capture and their statistics) and
``ablate``/``steer`` (each finished pole). A run writing ``DIR`` keeps its checkpoint in ``.DIR.partial/``:
``state.json`` (the settings that decide the result, the finished pieces as JSON records, the requests
submitted and collected, every invocation that worked on the run) and, where a piece is tensors, safetensors
files beside it. Every write is atomic (a temporary file renamed into place), so a kill at any moment leaves
the last finished piece. A rerun with the same settings continues; other settings are refused; the
checkpoint goes once the run is written. Nothing is written before the first piece, and a checkpoint
holding nothing (no piece, no request to collect) is removed when an invocation ends.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vneuron.errors import VneuronError


MEMO = "parts"  # the piece that holds the parts of pieces not yet finished (``Checkpoint.memo``)


def _encode(value: Any) -> Any:
    import torch  # runtime's checkpoint is imported before torch is needed

    if isinstance(value, torch.Tensor):
        return {"__tensor__": str(value.dtype).removeprefix("torch."), "shape": list(value.shape),
                "data": value.detach().cpu().reshape(-1).tolist()}
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return {"__float__": repr(value)}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        import torch

        return torch.tensor(value["data"], dtype=getattr(torch, value["__tensor__"])).reshape(value["shape"])
    if "__dict__" in value:
        return {_decode(k): _decode(v) for k, v in value["__dict__"]}
    if "__tuple__" in value:
        return tuple(_decode(v) for v in value["__tuple__"])
    return float(value["__float__"])


def partial_dir(run_dir: Path) -> Path:
    """Where the checkpoint of the run that will be written to ``run_dir`` lives."""
    run_dir = Path(run_dir)
    return run_dir.with_name(f".{run_dir.name}.partial")


@dataclass
class Checkpoint:
    """The checkpoint of one run (``open`` finds or starts it)."""

    path: Path
    key: dict
    done: int = 0  # requests finished and added to the statistics (remote capture)
    jobs: dict[str, str] = field(default_factory=dict)  # request index → job id (submitted, not yet collected)
    log: list[dict] = field(default_factory=list)  # one record per collected request
    invocations: list[dict] = field(default_factory=list)
    pieces: dict[str, Any] = field(default_factory=dict)  # name → the JSON record of a finished piece (a pole)
    _started: float | None = field(default=None, repr=False)
    flag: bool = False  # continuing it takes `resume` (else a rerun of the same command continues by itself)

    @classmethod
    def open(cls, run_dir: Path, key: dict, *, resume: bool | None = None, what: str = "run") -> "Checkpoint":
        """The checkpoint of ``run_dir`` for settings ``key``.

        ``resume``: None continues an interrupted run with the same settings by itself (nothing waits elsewhere:
        ablate, steer); False refuses to start while one waits and True continues it (locate on NDIF, whose
        submitted requests may still run on the server: continuing is a decision the user states).
        """
        path = partial_dir(run_dir)
        state = path / "state.json"
        flag = resume is not None
        if not state.is_file():
            return cls(path, key, flag=flag)
        try:
            data = json.loads(state.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            raise VneuronError(f"{path} holds an interrupted {what} whose state cannot be read",
                               "delete that directory to start over") from None
        if not data.get("done") and not data.get("jobs") and not data.get("pieces"):  # killed before anything finished
            shutil.rmtree(path, ignore_errors=True)
            return cls(path, key, flag=flag)
        if resume is False:
            raise VneuronError(f"An interrupted {what} is waiting in {path}",
                               "pass `resume` to continue it, or delete that directory to start over")
        if data.get("key") != key:
            raise VneuronError(f"{path} holds an interrupted {what} with other settings",
                               "rerun with the same options to continue it, or delete that directory")
        invocations = data.get("invocations", [])
        for earlier in invocations:  # one that never recorded its end was killed
            if earlier.get("outcome") == "running":
                earlier["outcome"] = "killed"
        return cls(path, key, data.get("done", 0), data.get("jobs", {}), data.get("log", []), invocations,
                   data.get("pieces", {}), flag=flag)

    # -- pieces (finished parts of a run) -----------------------------------------------------------
    def put(self, name: str, record: Any) -> None:
        """Keep a finished piece (a JSON-able record) at once."""
        self.pieces[name] = record
        self.save()

    def memo(self, name: str, compute: Callable[[], Any]) -> Any:
        """A part of a piece (one control set's P, a round of side effects, a matrix column): read back from an
        interrupted run, else computed and kept at once. Tensors, numbers, strings, lists and dicts come back exactly
        (a tensor's values as JSON, which holds every float bit for bit, with its dtype and shape)."""
        store = self.pieces.setdefault(MEMO, {})
        if name in store:
            return _decode(store[name])
        value = compute()
        store[name] = _encode(value)
        self.save()
        return value

    def forget_memos(self, prefix: str) -> None:
        """Drop the parts of a finished piece (its record holds what they made)."""
        store = self.pieces.get(MEMO, {})
        for name in [n for n in store if n.startswith(prefix)]:
            del store[name]

    def file(self, name: str) -> Path:
        """Where a piece's tensors are kept."""
        return self.path / name

    # -- requests (a remote capture) ----------------------------------------------------------------
    @property
    def stats_path(self) -> Path:
        return self.file("stats.safetensors")

    @property
    def invocation(self) -> dict:
        return self.invocations[-1]

    def begin(self, started: float | None = None) -> None:
        """A new invocation works on the run (``started``: its wall-clock start, load included)."""
        self._started = started or time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._started))
        self.invocations.append({"started": stamp, "outcome": "running", "seconds": 0.0, "requests": 0, "submitted": 0})

    def submitted(self, index: int, job: str) -> None:
        self.jobs[str(index)] = job
        if self.invocations:
            self.invocation["submitted"] += 1
        self.save()

    def collected(self, index: int, log: dict, stats) -> None:
        self.done = index + 1
        self.jobs.pop(str(index), None)
        self.log.append({**log, "invocation": len(self.invocations)})
        if self.invocations:
            self.invocation["requests"] += 1
        self.save(stats)

    def finish(self, outcome: str) -> None:
        """End this invocation: keep what can be collected later, drop an empty checkpoint."""
        if self.invocations:
            self.invocation["outcome"] = outcome
        if outcome != "complete" and not self.done and not self.jobs and not self.pieces:
            self.clear()
        elif outcome != "complete":
            self.save()
        elif self.invocations and self._started is not None:
            self.invocation["seconds"] = round(time.time() - self._started, 2)

    def totals(self) -> dict[str, Any]:
        """Requests, bytes and seconds over every invocation."""
        return {"invocations": len(self.invocations), "requests": len(self.log),
                "submitted": sum(i.get("submitted", 0) for i in self.invocations),
                "sent_tensor_bytes": sum(r["sent_tensor_bytes"] for r in self.log),
                "received_tensor_bytes": sum(r["received_tensor_bytes"] for r in self.log),
                "seconds": round(sum(i.get("seconds", 0.0) for i in self.invocations), 2),
                "request_seconds": round(sum(r["seconds"] for r in self.log), 3)}

    # -- disk ---------------------------------------------------------------------------------------
    def save(self, stats=None) -> None:
        """Write the state (and ``stats``, anything with ``.save(path)``, as the statistics so far) atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        if self.invocations and self._started is not None:
            self.invocation["seconds"] = round(time.time() - self._started, 2)
        if stats is not None:
            tmp = self.path / "stats.tmp.safetensors"
            stats.save(tmp)
            os.replace(tmp, self.stats_path)
        tmp = self.path / "state.json.tmp"
        tmp.write_text(json.dumps({"key": self.key, "done": self.done, "jobs": self.jobs, "log": self.log,
                                   "invocations": self.invocations, "pieces": self.pieces}, indent=1, default=str),
                       encoding="utf-8")
        os.replace(tmp, self.path / "state.json")
        _kept[self.path] = self.flag

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        _kept.pop(self.path, None)


_kept: dict[Path, bool] = {}  # checkpoints this process wrote and did not clear: what an interruption leaves to continue


def forget() -> None:
    """A new command starts: the checkpoints earlier ones wrote are theirs."""
    _kept.clear()


def kept() -> list[tuple[Path, bool]]:
    """(path, needs `resume`) of every checkpoint this process wrote that still holds finished work: what the CLI names
    when a command is interrupted."""
    return [(path, flag) for path, flag in _kept.items() if (path / "state.json").is_file()]
