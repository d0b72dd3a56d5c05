"""Faults after the work is done must not lose it; interrupted model conversions leave nothing behind."""

from __future__ import annotations

import errno
import json
import os
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
    real_write_json = __import__("vneuron.runs", fromlist=["write_json"]).write_json

    def write_json(path, data):
        if Path(path).resolve().is_relative_to(run.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_write_json(path, data)

    monkeypatch.setattr("vneuron.validate.write_json", write_json)
    result = runner.invoke(app, ["ablate", str(run), "--controls", "1", "--split", "all", "--generations", "0", "-q",
                                 "--dimension", "conservation"])
    line = _one_error_line(result)
    assert "Read-only file system" in line and "ablation results are kept in" in line
    (rescued,) = tmp_path.glob("vneuron-rescued-ablate-zero-kall-*")
    assert json.loads((rescued / "manifest.json").read_text())["results"][0]["dimension"] == "conservation"
    assert (rescued / "items.csv").read_text().startswith("dimension,item")


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
    from vneuron.models import loading

    monkeypatch.setenv("VNEURON_CACHE", str(tmp_path / "cache"))
    gguf = _tiny_gguf(tmp_path / "m.gguf")

    def half_then_ctrl_c(source, directory):
        (directory / "model.safetensors").write_bytes(b"\0" * 1000)  # part of a copy, as when Ctrl-C lands mid-write
        raise KeyboardInterrupt

    monkeypatch.setattr(loading, "_convert_into", half_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        loading.convert_gguf(gguf)
    assert not list((tmp_path / "cache").rglob("*.tmp*"))


def test_stale_conversions_of_dead_processes_are_swept_and_live_ones_kept(tmp_path, monkeypatch):
    from vneuron.models import loading

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

    monkeypatch.setattr(loading, "_convert_into", convert)
    target, _ = loading.convert_gguf(gguf)
    assert (target / ".complete").is_file() and not dead.exists() and live.exists()
    assert sorted(p.name for p in models.iterdir()) == sorted([target.name, live.name])


def test_the_package_namespace_keeps_its_functions_after_submodules_load():
    import vneuron
    import vneuron.capture  # noqa: F401 - what any locate call does
    from vneuron.capture import ActivationStats

    assert callable(vneuron.capture) and vneuron.capture.__module__ == "vneuron.capture"
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
