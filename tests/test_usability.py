"""What a researcher meets using the tool: runs usable from another folder, notes on the data, guard-rails on
weak statistics, help that fits 80 columns, --json and compare output, figures, DataFrames."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vneuron.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_dir):
    """A tiny locate run made with a *relative* --model path, from its own folder."""
    root = tmp_path_factory.mktemp("usability")
    shutil.copytree(tiny_dir("llama"), root / "models" / "tiny")
    here = Path.cwd()
    try:
        import os

        os.chdir(root)
        made = runner.invoke(app, ["locate", "--model", "models/tiny", "--dataset", str(EXAMPLES / "corpus.jsonl"), "--split", "all",
                                   "-k", "8", "--out", "run", "-q"])
    finally:
        os.chdir(here)
    assert made.exit_code == 0, made.output
    return root / "run"


def test_the_manifest_records_the_model_path_as_typed_and_absolute(run):
    model = json.loads((run / "manifest.json").read_text())["model"]
    assert model["spec"] == "models/tiny" and model["path"] == str((run.parent / "models" / "tiny").resolve())


def test_a_run_located_with_a_relative_model_path_works_from_another_folder(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # models/tiny does not exist here
    result = runner.invoke(app, ["ablate", str(run), "--split", "all", "--controls", "1", "--stop-after", "0", "-q",
                                 "--dimension", "conservation", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["model"]["path"] == str(run.parent / "models" / "tiny")


def test_a_moved_model_is_named_not_blamed_on_the_hub_cache(run, tmp_path, monkeypatch):
    moved = tmp_path / "copy"
    shutil.copytree(run, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["model"]["path"] = str(tmp_path / "gone")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["ablate", str(moved), "--split", "all", "--controls", "1", "-q", "--out", str(tmp_path / "never")])
    assert result.exit_code == 2, result.output
    assert "The model this run located with" in result.stderr and "is no longer there" in result.stderr
    assert "Hugging Face" not in result.stderr and "--model" in result.stderr


def test_items_sharing_ids_are_noted_with_how_they_were_read(tmp_path, tiny_dir):
    rows = [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()]
    for row in rows:
        row["id"] = "same"
        row.pop("split", None)  # a hash of the id decides: every row lands in one split
    path = tmp_path / "dup.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from vneuron.data import load_corpus

    (note,) = load_corpus(path).notes
    assert note.startswith(f"{len(rows)} items share an id with another ('same' ×{len(rows)})") and "one stability fold" in note
    result = runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(path), "-k", "3", "-q",
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "has nothing in split 'train' (every row is in another split)" in result.stderr
    assert "Use one of: en" not in result.stderr
    result = runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(path), "-k", "3", "-q",
                                 "--split", "all", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0 and "share an id" in " ".join(result.output.split())
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["dataset"]["notes"] == [note]
