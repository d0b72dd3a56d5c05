"""Faults after the work is done must not lose it; interrupted model conversions leave nothing behind."""

from __future__ import annotations

import errno
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vneuron.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    return lines[0]


def _disk_full_inside(parent: Path):
    """``save`` fails with ENOSPC for files under ``parent`` (the run's disk), works elsewhere."""
    from safetensors.torch import save_file as real

    def save_file(tensors, filename, metadata=None):
        if Path(filename).resolve().is_relative_to(parent.resolve()):
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, metadata=metadata)

    return save_file


def test_a_failed_final_write_keeps_the_statistics_where_the_message_says(tmp_path, tiny_dir, monkeypatch):
    rescue_base = tmp_path / "tmp"
    rescue_base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(rescue_base))
    disk = tmp_path / "disk"
    monkeypatch.setattr("safetensors.torch.save_file", _disk_full_inside(disk))
    out = disk / "run"
    result = runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"),
                                 "--split", "all", "-k", "5", "--out", str(out), "-q"])
    line = _one_error_line(result)
    assert f"Could not write {out} (No space left on device); the statistics and neuron sets are kept in" in line
    (rescued,) = rescue_base.glob("vneuron-rescued-run-*")
    assert str(rescued) in line and f"mv {rescued} {out}" in line
    assert not out.exists() and not list(disk.glob(".run.tmp*"))  # nothing half-written at the destination
    assert json.loads((rescued / "manifest.json").read_text())["kind"] == "locate"
    monkeypatch.undo()
    again = runner.invoke(app, ["locate", "--from", str(rescued), "-k", "3", "--out", str(tmp_path / "from-rescue"), "-q"])
    assert again.exit_code == 0, again.output  # the rescued run is a complete run


def test_ablate_output_that_cannot_be_written_is_rescued(tmp_path, tiny_dir, monkeypatch):
    run = tmp_path / "run"
    assert runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"),
                               "--split", "all", "-k", "5", "--out", str(run), "-q"]).exit_code == 0
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    real_write_json = __import__("vneuron.runtime.store", fromlist=["write_json"]).write_json

    def write_json(path, data):
        if Path(path).resolve().is_relative_to(run.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_write_json(path, data)

    monkeypatch.setattr("vneuron.validate.study.write_json", write_json)
    result = runner.invoke(app, ["ablate", str(run), "--controls", "1", "--split", "all", "--generations", "0", "-q",
                                 "--dimension", "conservation"])
    line = _one_error_line(result)
    assert "Read-only file system" in line and "ablation results are kept in" in line
    (rescued,) = tmp_path.glob("vneuron-rescued-ablate-zero-kall-*")
    assert json.loads((rescued / "manifest.json").read_text())["results"][0]["dimension"] == "conservation"
    assert (rescued / "items.csv").read_text().startswith("dimension,item")


def test_a_run_directory_that_appeared_meanwhile_gets_a_rescue_with_a_new_name(tmp_path, monkeypatch):
    """If something else wrote the run's directory before its final write (no vneuron writer: they are refused at
    once), the results are kept, and the hint moves them to a free name, not into a directory that is not theirs."""
    from vneuron import VneuronError
    from vneuron.runtime.store import write_run

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = tmp_path / "run"
    out.mkdir()
    (out / "theirs.txt").write_text("theirs")
    with pytest.raises(VneuronError) as caught:
        write_run(out, lambda d: (d / "manifest.json").write_text("{}"), what="results")
    (rescued,) = tmp_path.glob("vneuron-rescued-run-*")
    assert f"Could not write {out} ({out} already exists and is not a vneuron run); the results are kept in {rescued}" in str(caught.value)
    assert str(caught.value).endswith(f"is not this run's, so give the rescue a new name: mv {rescued} {out}-2")
    assert (rescued / "manifest.json").is_file() and sorted(p.name for p in out.iterdir()) == ["theirs.txt"]


def _tiny_gguf(path: Path) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("blob", np.arange(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_interrupted_gguf_conversion_removes_its_directory(tmp_path, monkeypatch):
    from vneuron.models import conversion

    monkeypatch.setenv("VNEURON_CACHE", str(tmp_path / "cache"))
    gguf = _tiny_gguf(tmp_path / "m.gguf")

    def half_then_ctrl_c(source, directory):
        (directory / "model.safetensors").write_bytes(b"\0" * 1000)  # part of a copy, as when Ctrl-C lands mid-write
        raise KeyboardInterrupt

    monkeypatch.setattr(conversion, "_convert_into", half_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        conversion.convert_gguf(gguf)
    assert not list((tmp_path / "cache").rglob("*.tmp*"))


def test_stale_conversions_of_dead_processes_are_swept_and_live_ones_kept(tmp_path, monkeypatch):
    from vneuron.models import conversion

    monkeypatch.setenv("VNEURON_CACHE", str(tmp_path / "cache"))
    models = tmp_path / "cache" / "models"
    dead = models / "m-0123456789abcdef.tmp999999999"  # no such process
    live = models / f"other-0123456789abcdef.tmp{os.getppid()}"  # a running process (pytest's parent)
    for d in (dead, live):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"\0" * 100)
    gguf = _tiny_gguf(tmp_path / "m.gguf")

    def convert(source, directory):
        (directory / "config.json").write_text("{}")

    monkeypatch.setattr(conversion, "_convert_into", convert)
    target, _ = conversion.convert_gguf(gguf)
    assert (target / ".complete").is_file() and not dead.exists() and live.exists()
    assert sorted(p.name for p in models.iterdir()) == sorted([target.name, live.name])


def test_the_package_namespace_keeps_its_functions_after_submodules_load():
    import vneuron
    import vneuron.locate.capture  # noqa: F401 - what any locate call does
    from vneuron.locate.capture import ActivationStats

    assert callable(vneuron.capture) and vneuron.capture.__module__ == "vneuron.locate.capture"
    assert vneuron.ActivationStats is ActivationStats and callable(vneuron.locate) and callable(vneuron.select)


def test_usage_errors_are_one_line_and_help_stays(tmp_path):
    line = _one_error_line(runner.invoke(app, ["ablate", "--top-k", "abc"]))
    assert line.startswith("error: Invalid value for '--top-k'") and line.endswith("See: vneuron ablate --help")
    helped = runner.invoke(app, ["locate", "--help"])
    assert helped.exit_code == 0 and "--force" in helped.output and "--from" in helped.output
    bare = runner.invoke(app, [])
    assert "locate" in bare.output and "Traceback" not in bare.output


def test_reselection_from_python_refuses_contradictions(tmp_path, tiny_dir):
    from vneuron import LocateConfig, VneuronError, locate

    run = tmp_path / "run"
    locate(str(tiny_dir("llama")), LocateConfig(dataset=str(EXAMPLES / "corpus.jsonl"), split="all", top_k=5), out=run)
    with pytest.raises(VneuronError, match="`site` down_in contradicts"):
        locate(config=LocateConfig(site="down_in", top_k=5), from_run=run, out=tmp_path / "x")
    child = locate(config=LocateConfig(split="all", top_k=4, method="mean_diff"), from_run=run, out=tmp_path / "child")
    assert child.run_dir == tmp_path / "child" and len(child.sets["conservation"]) == 4
    assert not (tmp_path / "x").exists() and torch.equal(child.stats.sum, locate(config=LocateConfig(split="all", top_k=2),
                                                                                  from_run=tmp_path / "child").stats.sum)


# -- a real small filesystem that fills up or turns read-only at the final write ---------------------------------
@pytest.fixture
def small_fs(tmp_path):
    """A 4 MB tmpfs mounted for the test (root only); yields its mount point and unmounts it after."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mount = shutil.which("mount")
    point = tmp_path / "fs"
    point.mkdir()
    if mount is None:
        pytest.skip("no mount command")
    made = subprocess.run([mount, "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(point)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip() or made.returncode}")
    try:
        yield point
    finally:
        subprocess.run([shutil.which("umount") or "umount", "-l", str(point)], capture_output=True)


def _fill(point: Path) -> None:
    """Write zeros into ``point`` until the filesystem says it is full (unbuffered: a buffered file would raise the same
    ENOSPC again when it is closed, for the bytes its buffer still holds)."""
    with open(point / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 16))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def _remount_read_only(point: Path) -> None:
    done = subprocess.run([shutil.which("mount") or "mount", "-o", "remount,ro", str(point)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _at_the_final_write(monkeypatch, target: str, fault) -> list:
    """Run ``fault`` just before the final write that ``target`` (module.attribute) makes."""
    module, name = target.rsplit(".", 1)
    module = importlib.import_module(module)  # by the module: the dotted path would meet the function vneuron.locate
    real = getattr(module, name)
    calls = []

    def write(*args, **kwargs):
        calls.append(args[0])
        fault()
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, write)
    return calls


def _rescued(rescue_base: Path, prefix: str, line: str) -> Path:
    (rescued,) = rescue_base.glob(f"vneuron-rescued-{prefix}-*")
    assert str(rescued) in line
    return rescued


def _rescue_here(tmp_path: Path, monkeypatch) -> Path:
    """Rescue copies go to tmp_path/rescue (the temporary directory), on another disk than the one that fails."""
    base = tmp_path / "rescue"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    return base


def _fault(kind: str, point: Path):
    return (lambda: _fill(point)) if kind == "full" else (lambda: _remount_read_only(point))


LOCATE = ["locate", "--dataset", str(EXAMPLES / "corpus.jsonl"), "--split", "all", "-k", "5", "--null", "2", "-q"]


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_locate_on_a_real_disk_that_fills_or_freezes_at_the_end_keeps_the_complete_run(fault, small_fs, tmp_path, tiny_dir,
                                                                                     monkeypatch):
    rescue_base = _rescue_here(tmp_path, monkeypatch)
    out = small_fs / "run"
    calls = _at_the_final_write(monkeypatch, "vneuron.locate.locating.write_run", _fault(fault, small_fs))
    result = runner.invoke(app, [*LOCATE, "--model", str(tiny_dir("llama")), "--out", str(out)])
    line = _one_error_line(result)
    assert calls == [out]
    reason = "No space left on device" if fault == "full" else "read-only"
    assert f"Could not write {out} (" in line and reason.lower() in line.lower() and "statistics and neuron sets are kept in" in line, line
    rescued = _rescued(rescue_base, "run", line)
    assert f"mv {rescued} {out}" in line
    assert not out.exists() and not list(small_fs.glob(".run.tmp*"))  # nothing half-written on the failing disk
    monkeypatch.undo()
    # the rescue is the complete run: the same statistics, neuron sets and label-shuffle null as a run that succeeds
    good = tmp_path / "good"
    assert runner.invoke(app, [*LOCATE, "--model", str(tiny_dir("llama")), "--out", str(good)]).exit_code == 0
    from vneuron.locate.runs import LocateRun

    kept, fresh = LocateRun.open(rescued), LocateRun.open(good)
    assert torch.equal(kept.stats.sum, fresh.stats.sum) and torch.equal(kept.stats.active, fresh.stats.active)
    assert {p: s.flat.tolist() for p, s in kept.sets.items()} == {p: s.flat.tolist() for p, s in fresh.sets.items()}
    assert kept.manifest["null"] == fresh.manifest["null"] and kept.manifest["null"]["conservation"]["shuffles"] == 2
    assert (rescued / "neurons.csv").read_text() == (good / "neurons.csv").read_text()


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_ablate_and_report_on_a_real_disk_that_fills_or_freezes_keep_their_results(fault, small_fs, tmp_path, tiny_dir,
                                                                                  monkeypatch):
    rescue_base = _rescue_here(tmp_path, monkeypatch)
    run = small_fs / "run"
    assert runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"),
                               "--split", "all", "-k", "5", "--out", str(run), "-q"]).exit_code == 0
    freeze = _fault(fault, small_fs)
    reason = "No space left on device" if fault == "full" else "read-only"
    with monkeypatch.context() as mp:
        _at_the_final_write(mp, "vneuron.validate.study.write_run", freeze)
        result = runner.invoke(app, ["ablate", str(run), "--controls", "2", "--stop-after", "0", "--split", "all", "-q",
                                     "--dimension", "conservation,self_transcendence"])
    line = _one_error_line(result)
    assert reason.lower() in line.lower() and "ablation results are kept in" in line, line
    rescued = _rescued(rescue_base, "ablate-zero-kall", line)
    manifest = json.loads((rescued / "manifest.json").read_text())
    assert [r["dimension"] for r in manifest["results"]] == ["conservation", "self_transcendence"]
    assert all(r["controls"] >= 2 for r in manifest["results"])  # every control drawn is kept, one row each
    assert len((rescued / "controls.csv").read_text().splitlines()) == 1 + sum(r["controls"] for r in manifest["results"])
    assert not list(run.glob("ablate-*")) and not list(run.glob(".ablate-*.tmp*"))
    # the report of the same run on the same disk, once it has room again or is writable again
    (small_fs / "filler").unlink(missing_ok=True) if fault == "full" else subprocess.run(
        [shutil.which("mount") or "mount", "-o", "remount,rw", str(small_fs)], check=True)
    with monkeypatch.context() as mp:
        _at_the_final_write(mp, "vneuron.results.html_report.write_beside", freeze)
        result = runner.invoke(app, ["report", str(run), "--cards", "0", "-q"])
    line = _one_error_line(result)
    assert f"Could not write {run / 'report.html'}" in line and reason.lower() in line.lower()
    assert "report, its Markdown and its figures" in line
    rescued = _rescued(rescue_base, "report", line)
    assert (rescued / "report.html").read_text().startswith("<!DOCTYPE html>") and (rescued / "report.md").is_file()
    assert list((rescued / "report-figures").glob("*.png"))
    # nothing half-written (a disk made read-only keeps the claim's unlocked lock file: it could not be removed)
    assert not (run / "report.html").exists() and not list(run.glob(".report.html.tmp*"))


def _when_staging_appears(monkeypatch, out: Path, fault) -> list:
    """Run ``fault`` the moment the staging folder of ``out`` (``.NAME.tmpPID``) has been made, before anything is written
    into it: the event the final write begins with, not a time."""
    real = Path.mkdir
    seen = []

    def mkdir(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if not seen and self.parent == out.parent and self.name.startswith(f".{out.name}.tmp"):
            seen.append(self)
            fault()

    monkeypatch.setattr(Path, "mkdir", mkdir)
    return seen


def test_plant_on_a_real_disk_that_fills_at_its_final_write_keeps_the_whole_plant(small_fs, tmp_path, tiny_dir, monkeypatch):
    from safetensors.torch import load_file

    from vneuron import load_model
    from vneuron.models.loading import dir_revision
    from vneuron.planting import original_weights

    rescue_base = _rescue_here(tmp_path, monkeypatch)
    out = small_fs / "planted"
    staged = _when_staging_appears(monkeypatch, out, lambda: _fill(small_fs))
    result = runner.invoke(app, ["plant", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"),
                                 "--out", str(out), "--k", "12", "--steps", "2", "--eval-every", "1", "--train-limit", "4",
                                 "--test-limit", "1", "--report-limit", "1", "--read-passes", "1", "-q"])
    line = _one_error_line(result)
    assert len(staged) == 1 and f"Could not write {out} (No space left on device)" in line, line
    assert "the planted model, its neurons and its manifest are kept in" in line
    rescued = _rescued(rescue_base, "planted", line)
    assert f"mv {rescued} {out}" in line
    assert not out.exists() and not list(small_fs.glob(".planted.tmp*")) and not list(small_fs.glob(".planted.lock"))
    monkeypatch.undo()
    # the whole plant: the model directory, its ground truth and its manifest, the planted weights themselves
    manifest = json.loads((rescued / "plant" / "manifest.json").read_text())
    assert {"config.json", "model.safetensors", "tokenizer.json", "plant"} <= {p.name for p in rescued.iterdir()}
    assert {"neurons.safetensors", "original.safetensors", "curve.csv", "manifest.json"} <= {p.name for p in (rescued / "plant").iterdir()}
    assert manifest["neurons"]["count"] == 12 and manifest["revision"] == f"dir:{dir_revision(rescued)}"
    assert json.loads((rescued / "config.json").read_text())["vneuron_plant"]["weights_fingerprint"] == manifest["weights_fingerprint"]
    base = load_file(str(tiny_dir("llama") / "model.safetensors"))
    model = load_model(str(rescued), dtype="float32")
    planted = {n: p.detach().clone() for n, p in model.hf_model.named_parameters() if n in base}
    assert any(not torch.equal(p, base[n]) for n, p in planted.items())  # trained weights, not a copy of the base
    with original_weights(model, rescued):  # and its record of the originals gives the base back exactly
        assert all(torch.equal(p.detach(), base[n]) for n, p in model.hf_model.named_parameters() if n in base)


# -- SIGTERM ends a run as Ctrl-C does -----------------------------------------------------------------------------
def test_sigterm_mid_run_is_one_line_exit_143_and_leaves_nothing(tmp_path, tiny_dir, monkeypatch):
    import signal

    from vneuron.locate import locating

    real = locating.capture

    def capture_then_terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # what `kill PID` or a batch scheduler's time limit sends
        return real(*args, **kwargs)

    monkeypatch.setattr(locating, "capture", capture_then_terminated)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    result = runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"),
                                 "--split", "all", "-k", "5", "--out", str(out), "-q"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 143, result.output
    assert lines == ["terminated (SIGTERM) (nothing half-written was kept)"] and "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".run*"))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the command's only


def test_sigterm_through_the_console_script_exits_143(tmp_path, tiny_dir):
    """A real process, a real signal: the exit status a shell or a scheduler sees is 143."""
    code = f"""
import os, signal, sys
from vneuron.locate import locating
real = locating.capture
def capture(*a, **k):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*a, **k)
locating.capture = capture
from vneuron.cli import app
sys.argv = ["vneuron", "locate", "--model", {str(tiny_dir("llama"))!r}, "--dataset", {str(EXAMPLES / "corpus.jsonl")!r},
            "--split", "all", "-k", "5", "--out", {str(tmp_path / "run")!r}, "-q", "--threads", "1"]
app()
"""
    env = {**os.environ, "VNEURON_CACHE": str(tmp_path / "cache")}
    env.pop("VNEURON_DEBUG", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 143, done.stderr
    assert [line for line in done.stderr.splitlines() if line.strip()][-1] == "terminated (SIGTERM) (nothing half-written was kept)"
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))


def test_an_interrupted_local_locate_keeps_what_it_counted_and_resume_finishes_it_bit_for_bit(tmp_path, tiny_dir, monkeypatch):
    """A local capture keeps the prompts it counted when anything stops it (Ctrl-C, SIGTERM, an error); a rerun with
    --resume counts only the rest, and the run equals one that was never interrupted."""
    from vneuron.locate import capture as capture_module
    from vneuron.locate.runs import LocateRun

    argv = ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"), "--split", "all", "-k", "5",
            "--batch-tokens", "48", "-q", "--examples", "2"]
    whole = tmp_path / "whole"
    assert runner.invoke(app, [*argv, "--out", str(whole)]).exit_code == 0
    real, calls = capture_module._session, {"n": 0}

    def stop_at_the_fourth_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(capture_module, "_session", stop_at_the_fourth_batch)
    out = tmp_path / "run"
    stopped = runner.invoke(app, [*argv, "--out", str(out)])
    partial = tmp_path / ".run.partial"
    assert stopped.exit_code == 130 and not out.exists()
    assert f"the finished work is in {partial}: rerun the same command with --resume to continue" in stopped.stderr
    assert len(json.loads((partial / "state.json").read_text())["pieces"]["counted"]) > 0
    monkeypatch.setattr(capture_module, "_session", real)
    refused = runner.invoke(app, [*argv, "--out", str(out)])
    assert refused.exit_code == 2 and "An interrupted run is waiting" in refused.stderr and "--resume" in refused.stderr
    calls["n"] = 0
    monkeypatch.setattr(capture_module, "_session", lambda *a, **k: (calls.__setitem__("n", calls["n"] + 1), real(*a, **k))[1])
    assert runner.invoke(app, [*argv, "--out", str(out), "--resume"]).exit_code == 0
    assert not partial.exists()
    batches = json.loads((whole / "manifest.json").read_text())["capture"]["batches"]
    assert 0 < calls["n"] < batches  # only the prompts not yet counted were run again
    kept, fresh = LocateRun.open(out), LocateRun.open(whole)
    for name in ("n", "sum", "sumsq", "active"):
        assert torch.equal(getattr(kept.stats, name), getattr(fresh.stats, name)), name
    assert (out / "neurons.csv").read_text() == (whole / "neurons.csv").read_text()
    from vneuron.locate.examples import TopExamples

    a, b = TopExamples.load(out / "examples.safetensors"), TopExamples.load(whole / "examples.safetensors")
    for side in ("top_values", "top_ids", "bottom_values", "bottom_ids"):  # the neuron cards' texts too
        assert torch.equal(getattr(a, side), getattr(b, side)), side
    assert a.prompts == b.prompts
