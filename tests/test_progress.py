"""Progress that survives redirection: plain lines with done/total, rate and an ETA when stderr is a
file, at each stage and at a steady interval (a heartbeat while nothing reports); rich bars on a terminal."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vneuron.runtime.progress import LineProgress, progress_bar

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ETA = re.compile(r"^\[\d\d:\d\d:\d\d\] .+ \d+/\d+ \(\d+%, .+, ETA [\d.]+ (s|min|h); .+ in\)$")


def test_lines_carry_rate_and_eta_and_the_heartbeat_keeps_the_interval():
    out = io.StringIO()
    lines = LineProgress(out, every=0.2, heartbeat=True).start()
    try:
        lines("Capturing activations", 0, 10)
        time.sleep(0.05)
        lines("Capturing activations", 2, 10)  # within the interval: no line
        time.sleep(0.7)  # nothing reports: the heartbeat writes the state, with an ETA from the rate so far
    finally:
        lines.stop()
    written = out.getvalue().splitlines()
    assert "Capturing activations 0/10 (0%, ETA after the first is done" in written[0]
    assert len(written) >= 3 and all(ETA.match(line) for line in written[1:]), written


def test_a_heartbeat_after_a_finished_stage_keeps_its_duration_and_says_the_next_step_runs():
    out = io.StringIO()
    lines = LineProgress(out, every=0.3, heartbeat=True).start()
    try:
        lines("Side effects", 0, 2)
        time.sleep(0.1)
        lines("Side effects", 2, 2)  # done; a step that reports nothing follows
        time.sleep(1.6)
    finally:
        lines.stop()
    beats = [line for line in out.getvalue().splitlines() if "the next step has run" in line]
    assert beats, out.getvalue()
    took = {re.search(r"done in ([\d.]+ s)", line).group(1) for line in beats}
    assert took == {"0 s"}, beats  # the stage's own duration, not the time since it started
    assert re.search(r"the next step has run [12] s$", beats[-1]), beats


def test_nothing_before_after_then_the_state_and_the_end():
    out = io.StringIO()
    lines = LineProgress(out, every=3600, after=3600)
    lines("Loading model", 0, 0)
    lines("Capturing", 3, 4)
    assert out.getvalue() == ""  # a quick command (or an early error) leaves stderr alone
    lines("Capturing", 4, 4)
    lines.finish()
    assert out.getvalue().splitlines()[-1].endswith("Capturing 4/4 (100%, done in 0 s)")


def test_progress_bar_writes_lines_to_a_file_and_bars_to_a_terminal(monkeypatch):
    from rich.console import Console

    import vneuron.runtime.progress as progress

    monkeypatch.setenv("VNEURON_PROGRESS_SECONDS", "0.2")
    log = io.StringIO()
    monkeypatch.setattr(progress, "err_console", Console(file=log, force_terminal=False))
    monkeypatch.setattr(sys, "stderr", log)
    with progress_bar() as say:
        say("Stage", 0, 4)
        time.sleep(0.3)
        say("Stage", 1, 4)
        time.sleep(0.3)
    assert any(ETA.match(line) for line in log.getvalue().splitlines()), log.getvalue()
    with pytest.raises(KeyError), progress_bar() as say:  # an error: no final line after it
        before = log.getvalue()
        say("Other", 1, 2)
        raise KeyError
    assert log.getvalue() == before

    terminal = io.StringIO()
    monkeypatch.setattr(progress, "err_console", Console(file=terminal, force_terminal=True, width=100))
    with progress_bar() as say:
        say("Stage", 2, 4)
    assert "━" in terminal.getvalue() and "2/4" in terminal.getvalue()


def test_a_command_writing_to_a_file_shows_progress_with_an_eta(tmp_path, tiny_dir):
    """`vneuron locate` with stderr redirected to a file: progress lines with done/total, rate and ETA
    appear while it runs (interval shortened from 30 s for the test)."""
    log = tmp_path / "locate.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "VNEURON_PROGRESS_SECONDS": "0.5"}
    command = [str(Path(sys.executable).with_name("vneuron")), "locate", "--model", str(tiny_dir("llama")),
               "--split", "all", "-k", "5", "--batch-tokens", "24", "--threads", "1", "--out", str(tmp_path / "run")]
    with open(log, "w") as err:
        done = subprocess.run(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text
    eta = [line for line in text.splitlines() if ETA.match(line)]
    assert eta and "Capturing" in eta[0], text
    assert "\x1b[" not in text and "━" not in text  # plain lines, no terminal control codes or bars


def test_a_series_of_stages_is_one_stage_in_a_log_whatever_their_number():
    """10,000 stages that differ only in a count write the series' first and last line (and one per interval): not
    two lines each. The interval is an hour here, so every line counted is a first or a last."""
    out = io.StringIO()
    lines = LineProgress(out, every=3600)
    for r in range(10_000):
        for done in range(5):
            lines(f"Label-shuffle null {r + 1}/10000", done, 4)
    lines("Scoring", 1, 1)
    lines.finish()
    written = out.getvalue().splitlines()
    assert len(written) == 3, written[:6]
    assert "Label-shuffle null 1/10000 0/4" in written[0] and "Label-shuffle null 10000/10000 4/4 (100%" in written[1]
    assert "Scoring 1/1" in written[2]


def test_the_label_shuffle_null_reports_one_stage(tiny_model):
    """locate --null N is one stage of N × the prompts, however large N: one bar, one series of lines."""
    from vneuron import LocateConfig
    from vneuron.locate.locating import locate

    seen = []
    locate(tiny_model("llama"), LocateConfig(dataset=str(EXAMPLES / "corpus.jsonl"), split="all", top_k=5, null_shuffles=3),
           progress=lambda stage, done, total: seen.append((stage, done, total)))
    null = [(stage, done, total) for stage, done, total in seen if "null" in stage]
    assert {stage for stage, _, _ in null} == {"Label-shuffle null (3 shuffles)"}
    prompts = next(total for stage, _, total in seen if stage == "Capturing activations")
    dones = [done for _, done, _ in null]
    assert dones == sorted(dones) and dones[-1] == null[-1][2] == 3 * prompts and {t for _, _, t in null} == {3 * prompts}
