"""What a command shows on the terminal while it works, in one place: the two consoles, and progress
(rich bars on a terminal, plain lines in a log).

Every long step reports ``(stage, done, total)``. On a terminal that drives one rich bar per stage.
When stderr is not a terminal (``nohup``, a batch scheduler, ``2> log``) bars would stay invisible
until the end, so each report becomes at most one plain line instead — when a stage starts and ends,
and at a steady interval (30 s; ``VNEURON_PROGRESS_SECONDS``), kept by a heartbeat thread while a
long step (one NDIF request, one control set) reports nothing, and as soon as a stage's first unit is
done (its first ETA) — each with done/total, the rate, an ETA for the stage and the time spent in
it. Stages whose names differ only in a count ("shuffle 3/10000", "shuffle 4/10000") are one stage
to the log: its first and last line and one per interval, whatever their number. The first line
waits until the command has run for half an interval (at most 15 s), so a quick command, or a bad
input found early, leaves stderr to its one error line; a command that ends well writes its last
state if no line showed it yet.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, TextIO

from rich.console import Console

INTERVAL_S = 30.0
COUNT = re.compile(r"\d+\s*/\s*\d+")  # "3/10000" in a stage's name: a stage of a series, not a stage of its own
console = Console()  # tables and notes (stdout)
err_console = Console(stderr=True)  # progress and errors share it


def hide_hf_progress() -> None:
    """Hugging Face's own tqdm bars would interleave with vneuron's progress: switch them off.

    Some (the GGUF conversion) call tqdm directly, which only tqdm's environment switch reaches,
    and tqdm reads it when first imported: so set it before anything imports tqdm.
    """
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - a missing or changed transformers API only means visible bars
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except Exception:  # noqa: BLE001
        pass


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class LineProgress:
    """A ``(stage, done, total)`` callback writing plain lines: at a stage's start and end, and at most
    one every ``every`` seconds in between. ``heartbeat``: a thread also writes the current state once
    ``every`` seconds pass without a line (``start``/``stop`` it). ``after``: no line before this many
    seconds since the start (stages begun in that time are shown by the first line after it)."""

    def __init__(self, stream: TextIO | None = None, every: float = INTERVAL_S, after: float = 0.0, heartbeat: bool = False):
        self.stream, self.every, self.after, self.heartbeat = stream, every, after, heartbeat
        self.began = time.time()
        self.stage: str | None = None
        self.series: str | None = None  # the stage's name without its counts: what a line is rationed by
        self.done = self.total = 0
        self.stage_start = self.last = 0.0
        self.ended: float | None = None  # when the current stage reached done = total
        self.written: tuple | None = None  # the (stage, done, total) of the last line
        self.rated: str | None = None  # the series whose first rate (and ETA) a line has shown
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            now = time.time()
            series = COUNT.sub("#", stage)
            new = series != self.series
            if new and self.series != self.stage and self.stage is not None:  # a series ends: its last state, if unwritten
                self._last(now)
            if stage != self.stage:
                self.stage, self.stage_start, self.ended = stage, now, None
            self.series = series
            self.done, self.total = done, total
            finished = bool(total) and done >= total
            if finished and self.ended is None:
                self.ended = now  # a heartbeat after this says the stage took this long, then how long the next step has run
            first_rate = self.heartbeat and done > 0 and self.rated != series  # a log shows the first ETA at once
            ends = finished and series == stage  # the end of a stage in a series is written when the series ends
            if now - self.began >= self.after and (new or ends or first_rate or now - self.last >= self.every):
                self._write(now)

    def line(self, now: float | None = None) -> str:
        now = now or time.time()
        elapsed = now - self.stage_start
        head = f"[{time.strftime('%H:%M:%S', time.localtime(now))}] {self.stage}"
        if not self.total:
            return f"{head} ({duration(elapsed)})"
        text = f"{head} {self.done}/{self.total} ({100 * self.done / self.total:.0f}%"
        rate = self._rate(now)
        if self.done >= self.total:
            ended = self.ended or now
            text += f", done in {duration(ended - self.stage_start)})"
            if now - ended >= 1:
                text += f"; the next step has run {duration(now - ended)}"
        elif rate:
            each = f"{1 / rate:.1f} s each" if rate < 1 else f"{rate:.1f}/s"
            text += f", {each}, ETA {duration((self.total - self.done) / rate)}; {duration(elapsed)} in)"
        else:
            text += f", ETA after the first is done; {duration(elapsed)} in)"
        return text

    def _rate(self, now: float) -> float:
        """Units per second since the stage started (the first report's own work counted from the start)."""
        if self.done <= 0 or now <= self.stage_start:
            return 0.0
        return self.done / (now - self.stage_start)

    def _write(self, now: float) -> None:
        out = self.stream or sys.stderr
        out.write(self.line(now) + "\n")
        out.flush()
        self.last, self.written = now, (self.stage, self.done, self.total)
        if self.done > 0:
            self.rated = self.series

    def _last(self, now: float, waited: bool = True) -> None:
        """The current state, if no line showed it yet (and, ``waited``, the first lines' wait is over)."""
        unwritten = self.stage is not None and self.written != (self.stage, self.done, self.total)
        if unwritten and (not waited or now - self.began >= self.after):
            self._write(now)

    def finish(self) -> None:
        """The last state, if no line showed it yet (a command that ended well says where it ended)."""
        with self._lock:
            self._last(time.time(), waited=False)

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.every)):
            with self._lock:
                now = time.time()
                if self.stage is not None and now - self.began >= self.after and now - self.last >= self.every:
                    self._write(now)

    def start(self) -> "LineProgress":
        if self.heartbeat and self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="vneuron-progress", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def line_progress(stream: TextIO | None = None, every: float = 15.0) -> LineProgress:
    """A ``(stage, done, total)`` callback for scripts and logs: a line when a stage starts, then at most
    one every ``every`` seconds, and one when it completes; each with done/total, rate and ETA."""
    return LineProgress(stream, every)


def interval() -> float:
    try:
        return max(0.1, float(os.environ.get("VNEURON_PROGRESS_SECONDS", INTERVAL_S)))
    except ValueError:
        return INTERVAL_S


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator:
    """A ``(stage, done, total)`` callback: one rich bar per stage on a terminal, plain lines otherwise."""
    hide_hf_progress()
    if not enabled:
        yield lambda stage, done, total: None
        return
    if not err_console.is_terminal:
        every = interval()
        lines = LineProgress(None, every=every, after=min(15.0, every / 2), heartbeat=True).start()
        try:
            yield lines
        except BaseException:  # an error's one line stays the last thing on stderr
            lines.stop()
            raise
        lines.stop()
        lines.finish()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    # started on the first update, so an error found before any work stays the only line on stderr
    bar = Progress(*columns, console=err_console, transient=False)
    try:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if not bar.live.is_started:
                bar.start()
            series = COUNT.sub("#", stage)  # a series of stages shares one bar, as it shares the log's lines
            if series not in tasks:
                for task in tasks.values():  # a new stage means earlier ones are over
                    if not bar.tasks[task].finished:
                        bar.update(task, total=bar.tasks[task].total or 1, completed=bar.tasks[task].total or 1)
                tasks[series] = bar.add_task(stage, total=total or None)
            bar.update(tasks[series], completed=done, total=total or None, description=stage)

        yield update
    finally:
        if bar.live.is_started:
            bar.stop()
