"""One writer per output (vneuron/runtime/claims.py): a second command is refused at once with one line naming the
first, a claim ends with the call that made it, and a lock its killed holder left behind is taken over.
(tests/test_bad_inputs.py has a refused row for every command that writes an output.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vneuron.cli import app
from vneuron.errors import VneuronError
from vneuron.runtime import claims

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()
HOLD = ("import sys; from vneuron.runtime import claims\n"
        "claims.one_writer(lambda: claims.claim(sys.argv[1]) or print('held', flush=True) or sys.stdin.read())()\n")


def _hold(out: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_at_once_and_the_first_keeps_its_output(tmp_path, tiny_dir):
    out = tmp_path / "run"
    holder = _hold(out)
    try:
        result = runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"),
                                     "--split", "all", "-k", "5", "--out", str(out), "-q"])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0].startswith(f"error: {out} is being written by another vneuron command (process {holder.pid}, since ")
        assert not out.exists() and not (tmp_path / ".run.partial").exists()  # the second left nothing
        assert json.loads((tmp_path / ".run.lock").read_text())["pid"] == holder.pid  # and took nothing from the first
    finally:
        holder.kill()
        holder.wait()


def test_a_claim_ends_with_its_command_and_a_second_command_then_writes(tmp_path, tiny_dir):
    run = tmp_path / "run"
    first = runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"),
                                "--split", "all", "-k", "5", "--out", str(run), "-q"])
    assert first.exit_code == 0, first.output
    assert not list(tmp_path.glob(".*.lock"))
    second = runner.invoke(app, ["locate", "--from", str(run), "-k", "3", "--out", str(tmp_path / "again"), "-q"])
    assert second.exit_code == 0 and not list(tmp_path.glob(".*.lock")), second.output
    failed = runner.invoke(app, ["locate", "--from", str(run), "-k", "0", "--out", str(tmp_path / "bad"), "-q"])
    assert failed.exit_code == 2 and not list(tmp_path.glob(".*.lock"))  # an error ends the claim too


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    out = tmp_path / "deep" / "run"
    holder = _hold(out)
    holder.send_signal(signal.SIGKILL)  # no cleanup runs: the lock file stays, the kernel drops its lock
    holder.wait()
    assert claims.lock_path(out).is_file()
    pid = os.getpid()
    claims.one_writer(lambda: (claims.claim(out), _assert_held_by(out, pid)))()
    assert not claims.lock_path(out).exists()


def _assert_held_by(out: Path, pid: int) -> None:
    assert json.loads(claims.lock_path(out).read_text())["pid"] == pid


def test_a_claim_outside_a_writer_only_checks_and_leaves_nothing(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    claims.claim(out)  # what a dry run does: nobody else holds it, and nothing is held or made
    assert not (tmp_path / "a").exists()
    holder = _hold(out)
    try:
        with pytest.raises(VneuronError, match=f"process {holder.pid}"):
            claims.claim(out)
    finally:
        holder.kill()
        holder.wait()


def test_the_same_output_twice_in_one_process_is_refused(tmp_path):
    out = tmp_path / "run"

    def twice():
        claims.claim(out)
        claims.claim(out)

    with pytest.raises(VneuronError, match="already being written by this process"):
        claims.one_writer(twice)()
    assert not claims.lock_path(out).exists()


def test_a_report_replaces_its_own_page_and_a_run_still_refuses_a_file(tmp_path, tiny_dir):
    run = tmp_path / "run"
    assert runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"),
                               "--split", "all", "-k", "5", "--out", str(run), "-q"]).exit_code == 0
    for _ in range(2):  # the second claims a file that exists: its own page, replaced
        result = runner.invoke(app, ["report", str(run), "--cards", "0", "-q"])
        assert result.exit_code == 0 and (run / "report.html").is_file(), result.output
    assert not list(run.glob(".*.lock"))
    (tmp_path / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["locate", "--from", str(run), "-k", "3", "--out", str(tmp_path / "notes.txt"), "-q"])
    assert result.exit_code == 2 and "notes.txt is a file, not a directory" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine" and not list(tmp_path.glob(".*.lock"))
