"""NDIF: where requests go, and how they survive the network.

A remote run is a sequence of *requests*; each is one ``model.session(...)`` holding several
forward batches whose statistics are reduced on the server, so only [layers × slots × width]
tensors come back. Requests are submitted without blocking and polled with our own deadline
(the client's websocket wait has none), retried with backoff on transport errors, and every
finished request is checkpointed so ``--resume`` continues an interrupted run without
recomputing or double counting. The API key comes from NDIF_API_KEY or nnsight's config and
is never printed or written.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import VneuronError

PUBLIC_HOST = "https://api.ndif.us"


class Detached(Exception):
    """Every request is submitted; the job ids wait in the checkpoint for ``--resume``."""

    def __init__(self, jobs: int, where: Path):
        self.jobs, self.where = jobs, where
        super().__init__(f"{jobs} NDIF requests submitted; their job ids are in {where}")


@dataclass
class RemoteTarget:
    """Where and how remote requests run. ``host == "local"`` is nnsight's in-process simulation."""

    host: str
    timeout: float = 1800.0  # seconds a request may take, queue included
    retries: int = 3
    backoff: float = 2.0
    poll_interval: float = 0.5
    blocking: bool = False  # True: the client's own blocking wait (used for the simulation)

    @property
    def simulated(self) -> bool:
        return self.host == "local"

    def describe(self) -> dict[str, Any]:
        return {"host": self.host, "timeout_s": self.timeout, "retries": self.retries}


def resolve_target(remote: "bool | str | RemoteTarget | None", host: str | None = None, **options) -> RemoteTarget | None:
    """``remote``: False/None (local), True (NDIF_HOST / nnsight config / public NDIF), "local", a URL, or a target."""
    if isinstance(remote, RemoteTarget):
        return remote
    if not remote:
        return None
    if remote == "local":
        return RemoteTarget("local", blocking=True, **options)
    chosen = remote if isinstance(remote, str) else (host or os.environ.get("NDIF_HOST") or _configured_host())
    if not chosen.startswith(("http://", "https://")):
        raise VneuronError(f"NDIF host {chosen!r} is not an http(s) URL", "pass e.g. --host https://api.ndif.us or set NDIF_HOST")
    return RemoteTarget(chosen.rstrip("/"), **options)


def _configured_host() -> str:
    try:
        import nnsight

        host = nnsight.CONFIG.API.HOST
    except Exception:  # pragma: no cover - nnsight config unreadable
        host = None
    if host and not str(host).startswith(("http://", "https://")):
        host = f"https://{host}"
    return host or PUBLIC_HOST


def api_key() -> str | None:
    """The key nnsight will send (never print it)."""
    key = os.environ.get("NDIF_API_KEY")
    if key:
        return key
    try:
        import nnsight

        return nnsight.CONFIG.API.APIKEY or None
    except Exception:  # pragma: no cover
        return None


def check_key(target: RemoteTarget) -> None:
    """The public NDIF service needs a key; a loopback or private server may not."""
    if target.simulated or "ndif.us" not in target.host:
        return
    if not api_key():
        raise VneuronError("No NDIF API key", "get one at ndif.us and export NDIF_API_KEY=... (it is never written to runs)")
    import nnsight

    nnsight.CONFIG.API.APIKEY = api_key()


_NETWORK = ("connection refused", "failed to send request", "name or service not known", "temporary failure in name",
            "connection reset", "network is unreachable", "timed out", "remote end closed")


def _network_error(exc: BaseException) -> bool:
    if isinstance(exc, VneuronError):
        return False
    return isinstance(exc, (ConnectionError, TimeoutError, OSError)) or any(p in str(exc).lower() for p in _NETWORK)


def translate(exc: BaseException, target: RemoteTarget, model_id: str) -> VneuronError:
    """A one-line, actionable message for what came back from the network or the server."""
    text = str(exc)
    last = text.strip().splitlines()[-1] if text.strip() else exc.__class__.__name__
    lower = text.lower()
    if _network_error(exc):
        return VneuronError(f"NDIF host {target.host} is unreachable ({exc.__class__.__name__})",
                            "check --host / NDIF_HOST and your network; finished requests are kept, rerun with --resume")
    if "api key" in lower or "401" in lower or "unauthori" in lower or "forbidden" in lower:
        return VneuronError("NDIF rejected the API key", "check NDIF_API_KEY (a key is personal; get one at ndif.us)")
    if any(phrase in lower for phrase in ("could not deploy", "not deployed", "is not running", "model not found",
                                          "no such model", "not currently running")):
        return VneuronError(f"Model {model_id} is not served on {target.host} right now ({last[:160]})",
                            "see `vneuron models` for what is running, or try later")
    if "version" in lower and ("nnsight" in lower or "incompatible" in lower):
        return VneuronError(f"Client and server versions are incompatible ({last[:160]})", "install the nnsight version the server runs")
    return VneuronError(f"The NDIF server raised an error: {last[:300]}", "rerun with VNEURON_DEBUG=1 for the server traceback")


def run(target: RemoteTarget, model_id: str, submit: Callable[[], Any], collect: Callable[[Any], dict | None],
        on_job: Callable[[str], None] | None = None) -> dict:
    """Run one request with retries; returns the saved values by name.

    ``submit()`` runs the session (non-blocking: returns a job id; blocking: returns values);
    ``collect(job_id)`` polls once (None while pending).
    """
    attempt = 0
    while True:
        try:
            if target.blocking:
                return submit()
            job = submit()
            if on_job:
                on_job(job)
            return wait(target, model_id, job, collect)
        except VneuronError:
            raise
        except BaseException as exc:  # noqa: BLE001 - classify everything the client can raise
            if isinstance(exc, KeyboardInterrupt):
                raise
            if _network_error(exc) and attempt < target.retries:
                time.sleep(target.backoff * 2**attempt)
                attempt += 1
                continue
            if os.environ.get("VNEURON_DEBUG") == "1":
                raise
            raise translate(exc, target, model_id) from None


def wait(target: RemoteTarget, model_id: str, job: str, collect: Callable[[Any], dict | None]) -> dict:
    deadline = time.monotonic() + target.timeout
    delay = target.poll_interval
    while time.monotonic() < deadline:
        result = collect(job)
        if result is not None:
            return result
        time.sleep(delay)
        delay = min(delay * 1.5, 10.0)
    raise VneuronError(f"NDIF request {job} did not finish within {target.timeout:.0f} s",
                       "raise --timeout, or collect it later with --resume (results are kept about a day)")


def collector(model_key: str, host: str) -> Callable[[str], dict | None]:
    from nnsight.intervention.backends.remote import RemoteBackend

    def collect(job_id: str):
        return RemoteBackend(model_key, host=host, job_id=job_id, blocking=False)()

    return collect


# -- checkpoints ---------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """Partial statistics of an unfinished run, beside its output directory."""

    path: Path
    key: dict
    done: int = 0  # requests finished and added to the statistics
    jobs: dict[str, str] = field(default_factory=dict)  # request index → job id (submitted, not yet collected)
    log: list[dict] = field(default_factory=list)

    @classmethod
    def for_run(cls, run_dir: Path, key: dict, resume: bool) -> "Checkpoint":
        path = run_dir.with_name(f".{run_dir.name}.partial")
        state = path / "state.json"
        if state.is_file():
            data = json.loads(state.read_text())
            if not resume:
                raise VneuronError(f"An interrupted run is waiting in {path}",
                                   "pass --resume to continue it, or delete that directory to start over")
            if data["key"] != key:
                raise VneuronError(f"{path} belongs to a run with other settings", "rerun with the same options, or delete it")
            return cls(path, key, data["done"], data.get("jobs", {}), data.get("log", []))
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, key)

    @property
    def stats_path(self) -> Path:
        return self.path / "stats.safetensors"

    def save(self, stats=None) -> None:
        if stats is not None:
            tmp = self.path / "stats.tmp.safetensors"
            stats.save(tmp)
            os.replace(tmp, self.stats_path)
        tmp = self.path / "state.json.tmp"
        tmp.write_text(json.dumps({"key": self.key, "done": self.done, "jobs": self.jobs, "log": self.log}, indent=1))
        os.replace(tmp, self.path / "state.json")

    def clear(self) -> None:
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)


def nbytes(*tensors: torch.Tensor) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


# -- one place that decides how a trace or session is sent -----------------------------------------
def trace_kwargs(model) -> dict:
    """Keyword arguments for ``trace`` / ``generate`` / ``session`` of ``model``."""
    target = model.remote
    if target is None:
        return {}
    kwargs: dict = {"remote": "local" if target.simulated else target.host}
    if not target.blocking:
        kwargs["blocking"] = False
    return kwargs


def outcome(model, tracer, values: Callable[[], dict]) -> Any:
    """What a request function returns: its saved values, or the job id of a non-blocking submission
    (whose values exist only on the server until collected)."""
    if model.remote is not None and not model.remote.blocking:
        return tracer.backend.job_id
    return values()


def call(model, submit: Callable[[], Any]) -> dict:
    """Run a request function locally, or remotely with retries, polling and a deadline."""
    target = model.remote
    if target is None:
        return submit()
    collect = None if target.blocking else collector(model.model_key(), target.host)
    return run(target, model.source.model_id, submit, collect)


def probe(host: str, timeout: float = 5.0) -> dict[str, Any]:
    """Reachability and what the server says about itself (for ``vneuron doctor`` and ``models``)."""
    import urllib.error
    import urllib.request

    out: dict[str, Any] = {"host": host}
    for path in ("/status", "/connected"):
        try:
            with urllib.request.urlopen(host.rstrip("/") + path, timeout=timeout) as response:
                body = response.read(1 << 20).decode("utf-8", "replace")
            out["reachable"] = True
            try:
                out[path.strip("/")] = json.loads(body)
            except json.JSONDecodeError:
                out[path.strip("/")] = body[:200]
        except urllib.error.HTTPError as exc:
            out["reachable"] = True
            out[path.strip("/")] = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            out.setdefault("reachable", False)
            out.setdefault("error", str(getattr(exc, "reason", exc)))
    return out


def served_models(status: Any) -> dict[str, str]:
    """model id → state, from a /status answer (its shape differs between server versions)."""
    found: dict[str, str] = {}
    if isinstance(status, dict):
        for value in status.values():
            if isinstance(value, dict):
                name = value.get("repo_id") or value.get("model_id") or value.get("name")
                if name:
                    found[str(name)] = str(value.get("status") or value.get("state") or "listed")
    return found
