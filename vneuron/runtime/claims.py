"""One writer per output: the first command to claim a run directory (or a report) holds it until it ends, and a
second is refused at once with one line naming the first, before either has computed anything twice or lost it.

A claim is a lock file beside the output, ``.NAME.lock``, that its holder keeps locked (``flock``) and that says
who holds it (process, host, command, since when). The kernel drops the lock when the holder ends, however it
ends, so a lock file a killed process left behind is stale: the next claim takes it over. A claim lasts while
the library call that made it runs (``one_writer``); a claim made outside one (a dry run) only checks that no
one else holds the output. Needs POSIX file locks (Linux, macOS): without them (Windows) nothing is claimed.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Callable

from vneuron.errors import VneuronError
from vneuron.runtime.store import check_writable, current_command

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock
    fcntl = None

_HELD: dict[Path, tuple[int, list[Path]]] = {}  # lock file → (its descriptor, the directories made for it)
_SCOPE: ContextVar[list[Path] | None] = ContextVar("vneuron_claims", default=None)


def lock_path(target: Path) -> Path:
    """Where the claim of ``target`` lives: beside it, hidden."""
    target = Path(os.path.abspath(target))
    return target.with_name(f".{target.name}.lock")


def one_writer(function: Callable) -> Callable:
    """Wrap a library call that writes an output: the claims it makes are released when it returns or raises."""
    @functools.wraps(function)
    def claimed(*args, **kwargs):
        held: list[Path] = []
        token = _SCOPE.set(held)
        try:
            return function(*args, **kwargs)
        finally:
            _SCOPE.reset(token)
            for lock in reversed(held):
                _release(lock)

    return claimed


def claim(target: str | Path, option: str = "`out`") -> None:
    """Hold ``target`` for the running ``one_writer`` call; refuse at once if another command holds it."""
    target = Path(target)
    # a place that cannot take the lock file fails as it would at the write (a file there is the caller's to judge:
    # a report replaces its page, a run refuses it)
    check_writable(target.parent if target.is_file() else target, option)
    lock = lock_path(target)
    if lock in _HELD:
        raise VneuronError(f"{target} is already being written by this process", f"choose another {option}")
    if fcntl is None:  # pragma: no cover
        return
    made = _parents(lock.parent)
    try:
        fd = _lock(lock, target, option)
    except BaseException:
        _remove_empty(made)
        raise
    held = _SCOPE.get()
    _HELD[lock] = (fd, made)
    if held is None:  # no writer runs: a dry run asks only whether someone else holds it
        _release(lock)
    else:
        held.append(lock)


def _lock(lock: Path, target: Path, option: str) -> int:
    """The descriptor holding ``lock``: opened for reading only, so that the disk can still be remounted read-only."""
    while True:
        fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise VneuronError(f"{target} is being written by another vneuron command ({holder})",
                               f"wait for it to end, or choose another {option}") from None
        try:  # its holder may have ended and removed the file between our open and our lock: then lock the new one
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(current_command())}
    try:  # through a descriptor of its own: closing it leaves the lock, which belongs to ``fd``'s open file
        with open(lock, "w", encoding="utf-8") as note:
            note.write(json.dumps(record) + "\n")
    except OSError:  # a full disk: the lock holds without the note of who holds it
        pass
    return fd


def _holder(fd: int) -> str:
    """Who holds a claim, in words, from its lock file."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        host = "" if record["host"] == socket.gethostname() else f" on {record['host']}"
        return f"process {record['pid']}{host}, since {record['since']}: {record['command']}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "a process that has not said which yet"


def _release(lock: Path) -> None:
    fd, made = _HELD.pop(lock)
    try:
        lock.unlink()  # before the lock is dropped: a waiting claim then sees a new file, never this one unlocked
    except OSError:  # a disk made read-only meanwhile: the file stays, unlocked, and the next claim takes it over
        pass
    os.close(fd)
    _remove_empty(made)


def _parents(directory: Path) -> list[Path]:
    """Make ``directory`` and the directories above it that are missing; return them, deepest first."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
    return missing


def _remove_empty(directories: list[Path]) -> None:
    """Remove the directories a claim made, deepest first, where nothing was written into them."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return
