"""NDIF: where requests go, and how they survive the network.

A remote run is a sequence of *requests*; each is one ``model.session(...)`` holding several
forward batches whose statistics are reduced on the server, so only [layers × slots × width]
tensors come back. Requests are submitted without blocking and polled with our own deadline
(the client's websocket wait has none), retried with backoff on transport errors, and every
finished request is checkpointed so ``--resume`` continues an interrupted run without
recomputing or double counting. A job the server no longer knows (it restarted: every poll
answers 404) or that failed there is resubmitted once, with a note on the terminal. The API
key comes from NDIF_API_KEY or nnsight's config and is never printed or written.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vneuron.errors import VneuronError
from vneuron.runtime.quiet import nnsight_logging

if TYPE_CHECKING:
    import torch

PUBLIC_HOST = "https://api.ndif.us"

# The largest result one request may bring back. The loopback NDIF stack (ndif 0.1.2: torch.save,
# zstd, the S3 object store, an HTTP download) carried single results up to 2.1 GB, the largest tried,
# without a hard limit; what grows is memory and time: the server's model actor peaks at ~2 × the
# result beyond its weights, the client at ~3.1 × (download buffer, decompressed copy, tensors), and
# it takes ~19 s/GB into the object store and ~3.5 s/GB down on loopback (docs/remote.md). vneuron
# splits requests so that none returns more than this: a 70B locate request (8 slots × 80 layers ×
# 28,672 neurons × 3 sums, float32: 220 MB) fits, a 405B one (644 MB) is split.
MAX_RESULT_BYTES = 256 << 20

# Every request sent to and collected from a real NDIF host in this process: job id → bytes on the
# wire each way (after nnsight's zstd compression) and where the client's time went.
WIRE: dict[str, dict[str, float]] = {}


class JobLost(Exception):
    """The server has no record of a submitted job (it answers 404 for longer than ``lost_after``)."""


class JobFailed(VneuronError):
    """A job ran on the server and failed there: its id is worth nothing any more."""


UNKNOWN = object()  # what a poll returns while the server answers 404 for the job


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
    # A submitted job has no status on the server until its dispatcher queues it (404 until
    # then); 404 for this long means the server lost it (restarted, or the result expired).
    lost_after: float = 60.0
    # A request's deadline grows with the result it brings back: ``timeout`` plus the result's bytes at
    # this slowest transfer rate (bytes/s) the client allows for, so a large result is never cut off.
    slowest_rate: float = 1_000_000.0
    notify: Callable[[str], None] | None = field(default=None, repr=False, compare=False)  # terminal notes

    @property
    def simulated(self) -> bool:
        return self.host == "local"

    def describe(self) -> dict[str, Any]:
        return {"host": self.host, "timeout_s": self.timeout, "retries": self.retries, "lost_after_s": self.lost_after,
                "slowest_rate_bytes_s": self.slowest_rate}

    def deadline_s(self, result_bytes: int = 0) -> float:
        """Seconds a request may take, queue included, when it returns ``result_bytes``."""
        return self.timeout + result_bytes / self.slowest_rate


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
        raise VneuronError(f"NDIF host {chosen!r} is not an http(s) URL", "pass e.g. `host` https://api.ndif.us or set NDIF_HOST")
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
    last = _last_line(exc)
    lower = text.lower()
    if isinstance(exc, JobLost):
        return VneuronError(f"NDIF host {target.host} lost the request twice ({text})",
                            "check the server with `vneuron doctor --host ...`, then rerun (a locate run with `out` continues "
                            "from its last finished request with `resume`)")
    if _network_error(exc):
        return VneuronError(f"NDIF host {target.host} is unreachable ({exc.__class__.__name__})",
                            "check `host` / NDIF_HOST and your network, then rerun (a locate run with `out` continues from its "
                            "last finished request with `resume`)")
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
        on_job: Callable[[str], None] | None = None, pending: str | None = None, result_bytes: int = 0) -> dict:
    """Run one request with retries; returns the saved values by name.

    ``submit()`` runs the session (non-blocking: returns a job id; blocking: returns values);
    ``collect(job_id)`` polls once (None while pending, ``UNKNOWN`` on 404). ``pending`` is the
    id of a job submitted earlier (before an interruption): it is collected, not recomputed.
    A lost or failed job is resubmitted once; transport errors are retried with backoff and
    never resubmit a job that the server has. ``result_bytes``: what the request will bring back
    (its deadline grows with it, ``RemoteTarget.deadline_s``).
    """
    attempt = 0
    resubmitted = False
    job = pending
    while True:
        polling = False
        try:
            if target.blocking:
                return submit()
            if job is None:
                job = submit()
                if on_job:
                    on_job(job)
            polling = True
            return wait(target, model_id, job, collect, result_bytes=result_bytes)
        except VneuronError:
            raise
        except BaseException as exc:  # noqa: BLE001 - classify everything the client can raise
            if isinstance(exc, KeyboardInterrupt):
                raise
            if _network_error(exc) and not isinstance(exc, JobLost):
                if attempt < target.retries:
                    time.sleep(target.backoff * 2**attempt)
                    attempt += 1
                    continue  # the job (if any) is still the server's: poll it again
            elif polling and not resubmitted:  # the server lost the job, or it failed there
                why = "is unknown to the server (it may have restarted)" if isinstance(exc, JobLost) else \
                    f"failed on the server ({_last_line(exc)[:120]})"
                notice(target, f"NDIF job {job} {why}; resubmitting it once")
                resubmitted, job = True, None
                continue
            if os.environ.get("VNEURON_DEBUG") == "1":
                raise
            error = translate(exc, target, model_id)
            if isinstance(exc, JobLost) or (polling and not _network_error(exc)):
                again = " (after one resubmission)" if resubmitted and not isinstance(exc, JobLost) else ""
                raise JobFailed(error.problem + again, error.fix) from None
            raise error from None


def notice(target: RemoteTarget, message: str) -> None:
    """A line on the terminal that the user should see even with --quiet. It goes to stdout, beside
    the results (above a live progress bar), so that stderr keeps one line per error."""
    if target.notify is not None:
        target.notify(message)
        return
    from rich.markup import escape

    from vneuron.runtime.progress import console

    console.print(f"[yellow]note:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else exc.__class__.__name__


def wait(target: RemoteTarget, model_id: str, job: str, collect: Callable[[Any], dict | None], result_bytes: int = 0) -> dict:
    allowed = target.deadline_s(result_bytes)
    deadline = time.monotonic() + allowed
    delay = target.poll_interval
    unknown_since = None
    while time.monotonic() < deadline:
        result = collect(job)
        if result is UNKNOWN:
            unknown_since = unknown_since or time.monotonic()
            if time.monotonic() - unknown_since >= target.lost_after:
                raise JobLost(f"the server has no record of job {job}")
        elif result is not None:
            return result
        else:
            unknown_since = None
        time.sleep(delay)
        delay = min(delay * 1.5, 10.0)
    raise VneuronError(f"NDIF request {job} did not finish within {allowed:.0f} s",
                       "raise `timeout`, or collect it later with `resume` (results are kept about a day)")


def collector(model_key: str, host: str) -> Callable[[str], dict | None]:
    nnsight_logging()
    backend_class = measured_backend()

    def collect(job_id: str):
        backend = backend_class(model_key, host=host, job_id=job_id, blocking=False)
        result = backend()
        # poll() answers None both while the job waits and when the server answers 404; only
        # an answer with a status sets backend.status
        return UNKNOWN if result is None and backend.status is None else result

    return collect


_MEASURED: list = []


def measured_backend():
    """nnsight's RemoteBackend, recording into ``WIRE`` what each job sends and receives on the wire
    (compressed payload and result bytes) and how long serialising, posting, downloading and decoding took."""
    if _MEASURED:
        return _MEASURED[0]
    from nnsight.intervention.backends.remote import RemoteBackend

    class Measured(RemoteBackend):
        def _serialize(self, tracer) -> bytes:
            started = time.perf_counter()
            blob = super()._serialize(tracer)
            self._sent = {"up_bytes": len(blob), "serialize_s": time.perf_counter() - started}
            return blob

        def _post(self, request, blob: bytes):
            started = time.perf_counter()
            response = super()._post(request, blob)
            if getattr(self, "_sent", None) is not None:
                WIRE.setdefault(response.id, {}).update(self._sent, post_s=time.perf_counter() - started)
            return response

        def download_result(self, url):
            started = time.perf_counter()
            self._decode_s = 0.0
            result = super().download_result(url)
            if self.job_id is not None:
                WIRE.setdefault(self.job_id, {}).update(download_s=time.perf_counter() - started - self._decode_s,
                                                        decode_s=self._decode_s)
            return result

        def finalize(self, content: bytes):
            started = time.perf_counter()
            result = super().finalize(content)
            self._decode_s = time.perf_counter() - started
            if self.job_id is not None:
                WIRE.setdefault(self.job_id, {})["down_bytes"] = len(content)
            return result

    _MEASURED.append(Measured)
    return Measured


def wire(job_id: str | None) -> dict[str, float]:
    """What crossed the network for a job (``WIRE``), rounded for a manifest."""
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in WIRE.get(job_id or "", {}).items()}


def nbytes(*tensors: torch.Tensor) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


# -- one place that decides how a trace or session is sent -----------------------------------------
def ship_by_value() -> None:
    """Send vneuron's own functions with each request, by source (nnsight's ``register``).

    A request body calls vneuron functions (``capture.reduce_sums``, ``prefix.attention_mask``,
    ``edits.apply`` …). Pickled by reference, as any installed module is, they name ``vneuron.…``,
    and a server without vneuron — every NDIF server — cannot read the payload
    (``ModuleNotFoundError: No module named 'vneuron'``; the loopback tier only passed while its server
    happened to run inside this checkout). By value, their source travels with the request.
    """
    from nnsight import ndif as nnsight_ndif

    nnsight_ndif.register(__name__.split(".")[0])


def trace_kwargs(model) -> dict:
    """Keyword arguments for ``trace`` / ``generate`` / ``session`` of ``model``."""
    target = model.remote
    if target is None:
        return {}
    nnsight_logging()
    ship_by_value()
    if not target.simulated and not target.blocking and hasattr(model, "model_key"):  # measured on the wire
        return {"backend": measured_backend()(model.model_key(), host=target.host, env=model.lm._remoteable_get_env(),
                                              blocking=False)}
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
