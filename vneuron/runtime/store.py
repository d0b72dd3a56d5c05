"""The run directory, what users keep, for every stage: JSON manifest, safetensors tensors, CSV tables; no pickle.

A run is written into a temporary sibling directory and renamed into place at the end, so a
failure never leaves a half-written run behind. Secrets (API keys) never enter a manifest.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from vneuron.errors import VneuronError

MANIFEST = "manifest.json"
_SECRET = re.compile(r"^(.*api[_-]?key|.*secret|.*password|authorization|token|access_token|hf_token|ndif_api_key)$", re.I)


_UNSAFE = re.compile(r"[^\w.-]+")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def set_filename(label: str) -> str:
    """A file name for a pole's neuron set that is safe everywhere and distinct for distinct labels.

    Letters of any script stay ("友善"); anything else ("|", "/", ":", spaces) becomes "_", "|" reads
    "_vs_", "*" "all", and then a short hash of the label keeps "a|b" and "a_vs_b" apart.
    """
    stem = _UNSAFE.sub("_", label.replace("|", "_vs_").replace("*", "all")).strip("._") or "set"
    if stem != label or stem.lower() in _RESERVED:
        stem = f"{stem[:80]}-{hashlib.sha256(label.encode('utf-8')).hexdigest()[:8]}"
    return stem + ".safetensors"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes; of a directory, over its files' relative paths and bytes (sorted)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(str(file.relative_to(path)).encode("utf-8") + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("vneuron", "nnsight", "transformers", "torch", "safetensors"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def default_run_dir(kind: str, model_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name.split("/")[-1]).strip("-")
    base = Path("runs") / f"{kind}-{safe}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while any(p.exists() for p in (path, path.with_name(f".{path.name}.partial"), path.with_name(f".{path.name}.lock"))):
        # two runs within one second
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def scrub(value: Any) -> Any:
    """Drop anything that looks like a credential before it is written."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if _SECRET.search(str(k)) else scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(scrub(data), indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def read_manifest(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise VneuronError(f"Run directory {run_dir} does not exist", "pass a directory written by vneuron locate")
    path = run_dir / MANIFEST
    if not path.is_file():
        raise VneuronError(f"{run_dir} is not a vneuron run (no {MANIFEST})", "pass a directory written by vneuron locate")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VneuronError(f"{path} is not valid JSON ({getattr(exc, 'msg', exc.__class__.__name__)})", "restore it or rerun") from None
    if not isinstance(data, dict):
        raise VneuronError(f"{path} is not a vneuron manifest (not a JSON object)", "restore it or rerun")
    return data


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(run_dir: Path, option: str = "`out`") -> None:
    """Fail before any work if ``run_dir`` could not be created: a file in the way, or a read-only place."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise VneuronError(f"{option} {run_dir} is a file, not a directory", f"pass a new directory path as {option}")
    base = _existing_ancestor(run_dir.parent if not run_dir.exists() else run_dir)
    if not base.is_dir():
        raise VneuronError(f"Cannot create {run_dir}: {base} is a file, not a directory", f"choose an {option} whose parent is a directory")
    read_only = False
    try:
        read_only = bool(os.statvfs(base).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # pragma: no cover - no statvfs on this platform
        pass
    if read_only or not os.access(base, os.W_OK | os.X_OK):
        raise VneuronError(f"Cannot write {run_dir}: {base} is read-only", f"choose an {option} on a writable disk")
    try:  # permissions are not the whole story (root, special file systems): try, and leave nothing
        os.rmdir(tempfile.mkdtemp(prefix=".vneuron-probe-", dir=base))
    except OSError as exc:
        raise VneuronError(f"Cannot write {run_dir}: {base} does not accept new files ({exc.strerror or exc})",
                           f"choose an {option} on a writable disk") from None


def check_output_file(path: Path, option: str = "`out`") -> None:
    """Fail before any work if the file ``path`` could not be written: a directory in its place, a file above it."""
    path = Path(path)
    if path.is_dir():
        raise VneuronError(f"{option} {path} is a directory", f"pass a file name as {option}")
    above = _existing_ancestor(path.parent)
    if not above.is_dir():
        raise VneuronError(f"Cannot write {path}: {above} is a file, not a directory", f"choose an {option} whose parent is a directory")
    check_writable(path.parent, option)


def disk_free(path: Path) -> int:
    """Free bytes on the disk that would hold ``path`` (its nearest existing ancestor)."""
    return shutil.disk_usage(_existing_ancestor(path)).free


def check_space(run_dir: Path, needed: int, option: str = "`out`") -> None:
    """Fail before the expensive part if the disk cannot hold the run (plus a margin for the staging copy)."""
    free = disk_free(Path(run_dir))
    if free < needed * 1.1 + (1 << 20):
        raise VneuronError(f"Not enough disk space for {run_dir}: the run needs about {_mb(needed)}, "
                           f"{_existing_ancestor(Path(run_dir))} has {_mb(free)} free",
                           f"free some space, or choose an {option} on another disk")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} KB"


def describe_run(run_dir: Path) -> str:
    """A short description of an existing run, for messages about replacing or refusing it."""
    try:
        manifest = json.loads((Path(run_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return str(run_dir)
    model = (manifest.get("model") or {}).get("model_id", "?")
    return f"{run_dir} ({manifest.get('kind', 'run')} of {model}, created {manifest.get('created', '?')})"


def check_fresh(run_dir: Path, *, force: bool = False, fix: str | None = None, option: str = "`out`") -> str | None:
    """Fail before any work if ``run_dir`` would have to overwrite something.

    With ``force`` an existing vneuron run may be replaced (never any other directory); the
    return value then says what will be replaced, for the caller to show. ``fix`` is the advice for
    an existing run; a directory that is not one gets the only advice that works for it.
    """
    run_dir = Path(run_dir)
    check_writable(run_dir, option)
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    if not is_run(run_dir):  # neither re-selecting from it nor `force` can use it
        raise VneuronError(f"{run_dir} already exists and is not a vneuron run" + (", so `force` will not replace it" if force else ""),
                           f"choose another {option}, or move what it holds elsewhere first")
    if not force:
        raise VneuronError(f"{run_dir} already exists", fix or f"choose another {option}, or delete it first")
    return describe_run(run_dir)


def is_run(directory: Path) -> bool:
    """Whether ``directory`` is something vneuron wrote: a run (its manifest), or a planted model (plant/manifest.json)."""
    return (Path(directory) / MANIFEST).is_file() or (Path(directory) / "plant" / MANIFEST).is_file()


def settings_tag(settings: dict[str, Any]) -> str:
    """A short, stable hash of the settings that decide a result, for default directory names."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


@contextmanager
def staged(run_dir: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``run_dir`` only if the block succeeds.

    With ``replace``, an existing run is swapped out atomically at the end (``--force``);
    otherwise an existing non-empty directory is an error.
    """
    run_dir = Path(run_dir)
    if not replace:
        check_fresh(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = run_dir.with_name(f".{run_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = run_dir.with_name(f".{run_dir.name}.old{os.getpid()}")
    if run_dir.exists():
        os.replace(run_dir, old)
    try:
        os.replace(tmp, run_dir)
    except BaseException:
        if old.exists():
            os.replace(old, run_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_run(run_dir: Path, writer: Callable[[Path], None], *, replace: bool = False, what: str = "results") -> None:
    """Write a run through ``writer(directory)``; if the final write fails, keep everything in a rescue copy.

    A capture can take hours: a full disk, a directory made read-only meanwhile, a directory that
    appeared meanwhile or any error the writer raises (OSError, safetensors' own SafetensorError)
    must not lose it. The rescue copy is a complete run directory the message names, ready to be
    moved into place. Only an interruption (Ctrl-C, SIGTERM) ends without one.
    """
    run_dir = Path(run_dir)
    try:
        with staged(run_dir, replace=replace) as tmp:
            writer(tmp)
        return
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # whatever the disk or the writer raises, the results are kept
        reason, cause = failure_reason(exc), exc
    rescue = _rescue(run_dir.name, writer)
    if rescue is None:
        raise VneuronError(f"Could not write {run_dir} ({reason}), nor a rescue copy in {tempfile.gettempdir()} or {_cache_base()}",
                           "free disk space and rerun") from cause
    if run_dir.exists() and not replace:  # something else wrote there meanwhile: moving the rescue "into place" would nest it
        raise VneuronError(f"Could not write {run_dir} ({reason}); the {what} are kept in {rescue}",
                           f"{run_dir} is not this run's, so give the rescue a new name: mv {rescue} {free_name(run_dir)}") from cause
    raise VneuronError(f"Could not write {run_dir} ({reason}); the {what} are kept in {rescue}",
                       f"fix the disk problem, then move that directory into place: mv {rescue} {run_dir}") from cause


def free_name(run_dir: Path) -> Path:
    """``run_dir`` with the first free suffix (-2, -3, …), for a run that cannot have its own name."""
    n = 2
    while run_dir.with_name(f"{run_dir.name}-{n}").exists():
        n += 1
    return run_dir.with_name(f"{run_dir.name}-{n}")


def write_beside(directory: Path, names: list[str], writer: Callable[[Path], None], *, what: str = "results") -> None:
    """Write the files or directories ``names`` into ``directory`` through ``writer(staging)``.

    The entries are written into a hidden staging directory beside them and renamed into place
    (an existing entry of the same name is replaced). If anything fails, all of them are kept in a
    rescue directory the message names, as for ``write_run``.
    """
    directory = Path(directory)
    tmp: Path | None = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{names[0]}.tmp", dir=directory))
        writer(tmp)
        for name in names:
            _replace_entry(tmp / name, directory / name)
        return
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # as in write_run
        reason, cause = failure_reason(exc), exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    target = directory / names[0]
    rescue = _rescue(Path(names[0]).stem, writer)
    if rescue is None:
        raise VneuronError(f"Could not write {target} ({reason}), nor a rescue copy in {tempfile.gettempdir()} or {_cache_base()}",
                           "free disk space and rerun") from cause
    raise VneuronError(f"Could not write {target} ({reason}); the {what} are kept in {rescue}",
                       f"fix the disk problem, then move them into place: mv {rescue}/* {directory}/") from cause


def _replace_entry(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; an existing directory there is moved aside first and removed after."""
    old = None
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.old{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    try:
        os.replace(source, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_OS_MESSAGE = re.compile(r'message: "([^"]+)"')
_OS_ERROR = re.compile(r"I/O error: (.+?) \(os error \d+\)")


def failure_reason(exc: BaseException) -> str:
    """What went wrong at a write, in a few words: the OS's reason where there is one.

    safetensors raises its own SafetensorError whose text wraps the OS error
    ("Error while serializing: I/O error: No space left on device (os error 28)" or a Rust debug
    form with ``message: "…"``); both come out as "No space left on device".
    """
    if isinstance(exc, VneuronError):  # staged()'s own re-check: "Cannot write X: Y is read-only" → "Y is read-only"
        return re.sub(r"^Cannot (?:write|create) \S+: ", "", exc.problem)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    found = _OS_MESSAGE.search(text) or _OS_ERROR.search(text)
    if found:
        return found.group(1).strip()
    return (text.splitlines()[0][:200] if text else "") or exc.__class__.__name__


def _rescue(name: str, writer: Callable[[Path], None]) -> Path | None:
    """A new directory holding what ``writer`` writes, in the temporary directory or else vneuron's cache; None if neither takes it."""
    for base in (Path(tempfile.gettempdir()), _cache_base()):
        rescue = None
        try:
            base.mkdir(parents=True, exist_ok=True)
            rescue = Path(tempfile.mkdtemp(prefix=f"vneuron-rescued-{name}-", dir=base))
            writer(rescue)
            return rescue
        except KeyboardInterrupt:
            if rescue is not None:
                shutil.rmtree(rescue, ignore_errors=True)
            raise
        except Exception:  # try the next place
            if rescue is not None:
                shutil.rmtree(rescue, ignore_errors=True)
    return None


def cache_dir() -> Path:
    """Where vneuron keeps what it can rebuild (converted models, dtype checks, rescued runs): $VNEURON_CACHE, else the
    user's cache directory."""
    if os.environ.get("VNEURON_CACHE"):
        return Path(os.environ["VNEURON_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vneuron"


def _cache_base() -> Path:
    return cache_dir() / "rescued"


def require(manifest: dict[str, Any], run_dir: Path, *keys: str) -> None:
    """A manifest missing what a command needs is one line, not a KeyError."""
    for key in keys:
        value = manifest.get(key)
        if value is None or (isinstance(value, dict) and not value) or not isinstance(value, (dict, list)):
            raise VneuronError(f"{Path(run_dir) / MANIFEST} has no {key!r} entry",
                               "restore the manifest vneuron wrote, or rerun vneuron locate")


_COMMAND: list[str] | None = None  # set by the CLI for the length of one invocation


@contextmanager
def recording_command(argv: list[str]) -> Iterator[None]:
    """The command a manifest records: what the user typed, also when the CLI runs in-process."""
    global _COMMAND
    previous, _COMMAND = _COMMAND, list(argv)
    try:
        yield
    finally:
        _COMMAND = previous


def current_command() -> list[str]:
    """What the user typed to start this command (the CLI's argv, also in-process; else the process's)."""
    return list(_COMMAND or [Path(sys.argv[0]).name, *sys.argv[1:]])


def base_manifest(kind: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": current_command(),
        "versions": versions(),
    }


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(scrub(row), ensure_ascii=False) + "\n")


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file() or path.stat().st_size == 0:
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
