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


COMMANDS = ["locate", "ablate", "steer", "plant", "power", "report", "compare", "show", "models", "datasets", "doctor"]


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_reads_at_80_columns(command, monkeypatch):
    """No line wider than 80, no `<bool>` on a flag or `<list[…]>` on an argument, every choice list and every
    example line of the docstring whole on one line (a word broken across lines would split one of them)."""
    import inspect
    import re

    from vneuron.cli import app

    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, [*([command] if command else []), "--help"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= 80, max(lines, key=len)
    assert "<bool>" not in result.output and "<list" not in result.output
    for choices in re.findall(r"\[[a-z_0-9]+(?:\|[a-z_0-9]+)+\]", result.output):
        assert any(choices in line for line in lines), choices
    if command:
        doc = inspect.getdoc(next(c.callback for c in app.registered_commands if (c.name or c.callback.__name__) == command))
        examples = [line.strip() for line in doc.splitlines() if line.strip().startswith("vneuron ")]
        assert all(any(line.strip() == e for line in lines) for e in examples), examples


def test_long_choice_lists_become_a_name_and_their_values_are_described(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    text = " ".join(runner.invoke(app, ["locate", "--help"]).output.replace("│", " ").split())
    assert "METHOD" in text and "[delta_p|mean_diff" not in text
    from vneuron.config import EDIT_MODES, MEASURES

    for measure in MEASURES.values():  # every record's formula, from the registry (a new record shows up by itself)
        assert f"{measure.name}: {measure.formula}" in text, measure.name
    assert "delta_p: Δp, how much more often" in text and "lape: lowest entropy" in text
    ablate = " ".join(runner.invoke(app, ["ablate", "--help"]).output.replace("│", " ").split())
    for mode in EDIT_MODES.values():
        assert f"{mode.name}: {mode.formula}" in ablate, mode.name
    assert "clamp: a ← min(a, 0)" in ablate and "scale: a ← γ·a" in ablate


def test_to_pandas_on_locate_results_neuron_sets_and_validation_results(tmp_path, tiny_dir):
    pd = pytest.importorskip("pandas", reason="the [pandas] extra (installed by [test])")
    from dataclasses import replace

    from vneuron import LocateConfig, ValidateConfig, ablate, locate, steer

    located = locate(str(tiny_dir("llama")), LocateConfig(dataset=str(EXAMPLES / "corpus.jsonl"), split="all", top_k=6),
                     out=tmp_path / "run")
    frame = located.to_pandas()
    assert isinstance(frame, pd.DataFrame) and len(frame) == sum(len(s) for s in located.sets.values())
    assert {"dimension", "rank", "layer", "unit", "score", "p_pole", "p_opposite"} <= set(frame.columns)
    neurons = located.sets["conservation"].to_pandas()
    assert neurons["layer"].tolist() == located.sets["conservation"].layers.tolist() and neurons["rank"].iloc[0] == 1
    config = ValidateConfig(split="all", controls=2, stop_after=0, dimensions=["conservation"], side_effects=False,
                            cross_values=False)
    ablated = ablate(tmp_path / "run", config, out=tmp_path / "ablate").to_pandas()
    assert ablated["dimension"].tolist() == ["conservation"]
    assert {"effect", "effect_lo", "effect_hi", "effect_minus_control_lo", "rank", "p_sequential"} <= set(ablated.columns)
    swept = steer(tmp_path / "run", [0.0, 2.0], replace(config, mode="scale"), out=tmp_path / "steer").to_pandas()
    assert swept["gamma"].tolist() == [0.0, 2.0] and "effect_minus_control" in swept.columns


def test_to_pandas_without_pandas_is_one_line_naming_the_extra(monkeypatch):
    import sys

    import torch

    from vneuron import VneuronError
    from vneuron.locate.scoring import NeuronSet

    monkeypatch.setitem(sys.modules, "pandas", None)  # as if it were not installed
    neurons = NeuronSet("gate", 2, 4, torch.tensor([1, 6]), torch.tensor([0.5, 0.2]))
    with pytest.raises(VneuronError, match=r'to_pandas\(\) needs pandas.*pip install "vneuron\[pandas\]"'):
        neurons.to_pandas()


def test_the_dose_response_marks_the_unedited_gamma_and_half_and_draws_the_located_ci():
    from vneuron.results import figures

    points = [{"gamma": g, "baseline": 0.53, "after": 0.53 + 0.01 * (g - 1), "control_effect": 0.0,
               "control_effects": [-0.01, 0.0, 0.01], "effect_ci": (0.01 * (g - 1) - 0.02, 0.01 * (g - 1) + 0.02)}
              for g in (0.0, 0.5, 1.0, 2.0)]
    figure = figures.dose_response({"self_transcendence": points}, "scale", "dose_response.csv")
    ax = figure.fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "γ = 1: the unedited model" in labels and "P = 0.5 (no preference)" in labels and "located set (95% CI)" in labels
    assert any(list(line.get_xdata()) == [1.0, 1.0] for line in ax.get_lines())  # the vertical line at γ = 1
    assert any(list(line.get_ydata()) == [0.5, 0.5] for line in ax.get_lines())
    figure.png_bytes()


def test_the_compare_heatmap_names_runs_fits_its_scale_to_the_off_diagonal_and_shows_chance():
    from vneuron.results import figures

    matrices = {"self_transcendence": {"values": [[1.0, 0.08], [0.08, 1.0]], "chance": [[None, 0.003], [0.003, None]],
                                       "measure": "Jaccard"}}
    figure = figures.overlap_heatmaps(matrices, ["runs/en", "runs/zh"], "c.csv")
    ax = figure.fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["runs/en", "runs/zh"]
    low, high = ax.images[0].get_clim()
    assert low <= 0.003 and high == pytest.approx(0.08)  # not 0–1: the 1.00 diagonal does not squash the scale
    texts = [t.get_text() for t in ax.texts]
    assert "0.08\nchance 0.003" in texts and texts.count("1 (self)") == 2
    figure.png_bytes()


def test_compare_matrices_carry_the_chance_jaccard(tmp_path, tiny_dir):
    from vneuron.results.compare import compare_runs

    runs = []
    for name, k in (("a", 5), ("b", 7)):
        assert runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"),
                                   "--split", "all", "-k", str(k), "--out", str(tmp_path / name), "-q"]).exit_code == 0
        runs.append(tmp_path / name)
    result = compare_runs(runs)
    pair = next(p for p in result.pairs if p["pole"] == "conservation")
    chance = result.matrices()["conservation"]["chance"][0][1]
    assert chance == pytest.approx(pair["chance_overlap"] / (5 + 7 - pair["chance_overlap"]))


def test_a_neuron_card_finds_the_runs_model_from_another_folder(run, tmp_path, monkeypatch):
    bare = tmp_path / "bare"  # a run that kept no top examples: its card runs the run's own model
    shutil.copytree(run, bare)
    (bare / "examples.safetensors").unlink(missing_ok=True)
    monkeypatch.chdir(tmp_path)  # models/tiny (the relative --model the run was located with) does not exist here
    result = runner.invoke(app, ["show", str(bare), "0:1", "-q", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kind"] == "neuron"
