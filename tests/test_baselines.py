"""Neurons or a direction? The direction baselines of ablate and steer (vneuron.validate.baselines): every number of the
table recomputed by direct calls (the arm's Δ is a forced choice under that direction edit, α is the neuron edit's
measured size, the controls are the seeded random directions, the side effects are the edit's own), carried alike by the
manifest, --json, directions.csv, the terminal and the report; the leakage ratio is its formula over the matrix; switched
off, the arms are gone; steer draws both curves."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vneuron.cli import app
from vneuron.config import ValidateConfig
from vneuron.errors import VneuronError
from vneuron.locate.locating import LocateConfig, locate
from vneuron.locate.probes import peak_layer
from vneuron.locate.runs import LocateRun
from vneuron.validate import side_effects
from vneuron.validate.controls import control_seed
from vneuron.validate.directions import direction_edit, matched_alpha, random_direction_edit
from vneuron.validate.evaluate import forced_choice
from vneuron.validate.items import evaluation_items, items_for
from vneuron.validate.study import ablate, edit_for, steer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
POLE = "conservation"
runner = CliRunner()


@pytest.fixture(scope="module")
def located(tiny_dir, tmp_path_factory):
    from vneuron.models.loading import load_model

    torch.set_num_threads(1)
    model = load_model(str(tiny_dir("llama")), dtype="float64")
    out = tmp_path_factory.mktemp("baselines") / "run"
    locate(model, LocateConfig(dataset=str(EXAMPLES / "corpus.jsonl"), split="all", top_k=6), out=out)
    return model, out


def _config(**settings) -> ValidateConfig:
    return ValidateConfig(**{"controls": 4, "stop_after": 2, "side_controls": 3, "split": "all", "limit": 4, "dimensions": [POLE],
                             "projected_out": settings.get("mode", "zero") == "zero", **settings})


def _fits_80(table) -> str:
    from rich.console import Console

    assert table is not None
    console = Console(width=80, record=True, file=open("/dev/null", "w"))
    console.print(table)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    return text


def test_the_ablation_table_is_recomputed_by_direct_calls(located, tmp_path):
    from vneuron.results.direction_tables import directions_table, report_table
    from vneuron.results.html_report import build_report
    from vneuron.results.jsonout import validation_json

    model, run_dir = located
    config = _config()
    result = ablate(run_dir, config, model=model, out=tmp_path / "ablate")
    run = LocateRun.open(run_dir)
    record = result.summaries[0]["directions"]
    assert result.manifest["directions"]["on"] is True
    assert record["layer"] == peak_layer(run.manifest, POLE)
    layer = record["layer"]
    template = run.template()
    items = items_for(evaluation_items(run, replace(config, template=template)).items, POLE, 4)
    edit = edit_for(run, run.sets[POLE], POLE, config)
    budget = matched_alpha(model, items, edit, layer, template=template)
    assert budget > 0 and record["budget"] == pytest.approx(budget, rel=1e-9)
    base = forced_choice(model, items, template=template).toward(POLE)
    arms = record["arms"]
    assert list(arms) == ["neurons", "mean_difference", "projected_out"]
    summary = result.summaries[0]
    assert arms["neurons"]["effect"] == summary["effect"] and arms["neurons"]["size"] == record["budget"]
    assert arms["neurons"]["side_effects"]["kl"] == summary["side_effects"]["located"]["kl"]
    neutral = side_effects.load_neutral("en")
    for name, mode, alpha in (("mean_difference", "add", -budget), ("projected_out", "project", 0.0)):
        arm = arms[name]
        d = direction_edit(run, POLE, layer, mode, alpha)
        assert arm["alpha"] == pytest.approx(d.alpha, rel=1e-9) and arm["mode"] == mode
        after = forced_choice(model, items, d, template=template).toward(POLE)
        assert arm["effect"] == pytest.approx(float((after - base).mean()), abs=1e-12)
        first = forced_choice(model, items, random_direction_edit(d, control_seed(config.seed, 0)), template=template).toward(POLE)
        assert arm["control_effects"][0] == pytest.approx(float((first - base).mean()), abs=1e-12)
        # as many random directions at most as the neurons drew (at least h): the same resolution on both sides
        cap = min(config.controls, max(config.stop_after, summary["controls_drawn"]))
        assert arm["controls_drawn"] == len(arm["control_effects"]) <= cap and arm["controls_max"] == cap
        assert 1 / (cap + 1) <= arm["p_sequential"] <= 1
        assert arm["size"] == pytest.approx(budget if mode == "add" else matched_alpha(model, items, d, layer, template=template), rel=1e-9)
        own = side_effects.measure(model, neutral, [d])["sets"][0]
        assert arm["side_effects"]["kl"] == pytest.approx(own["kl"], rel=1e-9)
        assert arm["side_effects"]["task_drop"] == pytest.approx(own["task_drop"], rel=1e-9, abs=1e-12)
        assert arm["effect_per_kl"] == pytest.approx(arm["effect"] / own["kl"], rel=1e-9)
    # the same numbers in the manifest, --json, directions.csv, the terminal and the report
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["results"][0]["directions"]["arms"]["mean_difference"]["effect"] == arms["mean_difference"]["effect"]
    assert json.loads(json.dumps(validation_json(result)))["results"][0]["directions"]["layer"] == layer
    rows = list(csv.DictReader(open(result.run_dir / "directions.csv")))
    assert [r["arm"] for r in rows] == list(arms)
    for row in rows:
        assert float(row["effect"]) == pytest.approx(arms[row["arm"]]["effect"], abs=1e-6)
        assert int(row["layer"]) == layer
    assert float(rows[1]["alpha"]) == pytest.approx(-budget, abs=1e-6)
    text = _fits_80(directions_table(result))
    assert all(f"{arms[name]['effect']:+.3f}" in text for name in arms)
    # without the direction matrix the caption carries the neurons' leakage and says how to get the arms'
    caption = " ".join(directions_table(result).caption.split())
    assert f"neurons {arms['neurons']['leakage']:.2f}" in caption and "(a direction's: --direction-matrix)" in caption
    title, columns, cells, note = report_table(manifest, "manifest.json")
    assert len(cells) == 3 and cells[1][1] == "mean diff" and "results[].directions" in note
    report = build_report([result.run_dir], out=tmp_path / "report.html")
    page = report.html.read_text()
    assert "Neurons or a direction?" in page and "projected" in page
    # leakage: the formula over the manifest's matrix
    cross = manifest["results"][0]["cross_values"]
    own = cross["cells"][cross["own"]]["z"]
    off = [abs(c["z"]) for k, c in cross["cells"].items() if k != cross["own"] and c.get("z") is not None]
    assert off and own
    assert cross["leakage"]["ratio"] == pytest.approx(sum(off) / len(off) / abs(own), rel=1e-12)
    assert "leakage" in page


def test_direction_controls_cap_the_random_directions(located, tmp_path):
    """At most `direction_controls` random directions per arm (and at most `controls`); the neurons keep theirs."""
    model, run_dir = located
    record = ablate(run_dir, _config(controls=5, direction_controls=2, side_effects=False, cross_values=False), model=model,
                    out=tmp_path / "capped").summaries[0]
    for name in ("mean_difference", "projected_out"):
        arm = record["directions"]["arms"][name]
        assert arm["controls_max"] == 2 and 1 <= arm["controls_drawn"] <= 2 and arm["p_sequential"] >= 1 / 3
    assert record["controls_max"] == 5
    # by default each arm draws at most as many as the neurons drew (at least h): here they stop early, and so may the arms
    matched = ablate(run_dir, _config(controls=8, stop_after=2, side_effects=False, cross_values=False), model=model,
                     out=tmp_path / "matched").summaries[0]
    assert 2 <= matched["controls_drawn"] < 8, matched["controls_drawn"]  # the tiny model's null set stops before the cap
    for name in ("mean_difference", "projected_out"):
        arm = matched["directions"]["arms"][name]
        assert arm["controls_max"] == max(2, matched["controls_drawn"]) and arm["controls_drawn"] <= arm["controls_max"]
    with pytest.raises(VneuronError, match="`direction_controls` must be ≥ 0"):
        ValidateConfig(direction_controls=-1).check()


def test_steer_draws_the_direction_beside_the_neurons(located, tmp_path):
    from vneuron.results import figures
    from vneuron.results.direction_tables import directions_table
    from vneuron.results.jsonout import validation_json

    model, run_dir = located
    config = _config(mode="scale", controls=2, side_effects=False, limit=3)
    result = steer(run_dir, [0.0, 1.0, 2.0], config, model=model, out=tmp_path / "steer")
    curve = result.summaries[0]["curve"]
    arms = [p["directions"]["arms"]["mean_difference"] for p in curve]
    budgets = [p["directions"]["budget"] for p in curve]
    assert budgets[0] > 0 and budgets[1] == 0 and budgets[2] > 0  # γ = 1 scales nothing
    assert arms[0]["alpha"] == pytest.approx(-budgets[0]) and arms[2]["alpha"] == pytest.approx(budgets[2])  # with the edit's sign
    assert "note" in arms[1] and "effect" not in arms[1]
    rows = list(csv.DictReader(open(result.run_dir / "dose_response.csv")))
    assert float(rows[2]["direction_effect"]) == pytest.approx(arms[2]["effect"], abs=1e-6)
    assert [r["arm"] for r in csv.DictReader(open(result.run_dir / "directions.csv"))] == ["neurons", "mean_difference"] * 3
    assert validation_json(result)["results"][0]["curve"][2]["directions"]["arms"]["mean_difference"]["effect"] == arms[2]["effect"]
    curves = {POLE: [{**p, "control_effects": p.get("control_effects") or []} for p in curve]}
    text = _fits_80(directions_table(result))
    assert "γ=2" in text and f"{arms[2]['effect']:+.3f}" in text and "α = 0" not in text  # the α = 0 point: a dash
    figure = figures.dose_response(curves, "scale", "dose_response.csv")
    lines = {line.get_label(): line for line in figure.fig.axes[0].get_lines()}
    direction = lines["mean-difference direction (same size)"]
    assert list(direction.get_xdata()) == [0.0, 1.0, 2.0]
    assert direction.get_ydata()[2] == pytest.approx(curve[2]["baseline"] + arms[2]["effect"])
    assert "located set" in lines
    from vneuron.results.html_report import build_report

    page = build_report([result.run_dir], out=tmp_path / "steer.html").html.read_text()
    assert "Neurons or a direction?" in page and "mean-difference direction (its α matched at every γ" in page


def test_switched_off_or_impossible_the_arms_are_gone(located, tmp_path):
    model, run_dir = located
    quick = ["--controls", "1", "--split", "all", "--limit", "2", "--dimension", POLE, "--no-side-effects", "--no-cross-values", "-q"]
    off = runner.invoke(app, ["ablate", str(run_dir), "--no-directions", "--out", str(tmp_path / "off"), *quick])
    assert off.exit_code == 0, off.output
    manifest = json.loads((tmp_path / "off" / "manifest.json").read_text())
    assert "directions" not in manifest["results"][0] and manifest["directions"]["on"] is False
    assert not (tmp_path / "off" / "directions.csv").exists() and "Neurons or a direction" not in off.output
    default = runner.invoke(app, ["ablate", str(run_dir), "--out", str(tmp_path / "default"), *quick])
    assert default.exit_code == 0, default.output  # by default the same-budget arm only; --projected-out adds the third
    record = json.loads((tmp_path / "default" / "manifest.json").read_text())
    assert list(record["results"][0]["directions"]["arms"]) == ["neurons", "mean_difference"]
    assert "projected_out" not in record["directions"]["arms"]
    old = tmp_path / "old-run"  # located before residual means
    shutil.copytree(run_dir, old)
    (old / "residual.safetensors").unlink()
    before = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({k: v for k, v in before.items() if k not in ("residual", "probes")}))
    noted = runner.invoke(app, ["ablate", str(old), "--out", str(tmp_path / "old-ablate"), *quick])
    assert noted.exit_code == 0, noted.output
    assert noted.output.count("no direction baselines") == 1 and "rerun `vneuron locate`" in noted.output
    assert "directions" not in json.loads((tmp_path / "old-ablate" / "manifest.json").read_text())["results"][0]
    for argv, message in (([str(old), "--direction-layer", "1"], "--direction-layer 1 edits along the pole's mean difference, but "),
                          ([str(run_dir), "--direction-layer", "3"], "Direction layer 3 is out of range"),
                          ([str(run_dir), "--no-directions", "--direction-layer", "1"], "--direction-layer 1 is set, but"),
                          ([str(run_dir), "--no-directions", "--projected-out"], "--projected-out is set, but")):
        bad = runner.invoke(app, ["ablate", *argv, "--out", str(tmp_path / "never"), *quick])
        assert bad.exit_code == 2 and message in bad.stderr, bad.output
        assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "never").exists()
    no_peak = tmp_path / "no-peak"  # a pole whose probes could not be fitted: its baselines are skipped with a note
    shutil.copytree(run_dir, no_peak)
    manifest = json.loads((no_peak / "manifest.json").read_text())
    manifest["probes"]["poles"][POLE] = {"opposite": "openness_to_change", "note": "too few prompts in a fold"}
    (no_peak / "manifest.json").write_text(json.dumps(manifest))
    skipped = runner.invoke(app, ["ablate", str(no_peak), "--out", str(tmp_path / "no-peak-ablate"), *quick])
    assert skipped.exit_code == 0, skipped.output
    said = " ".join(skipped.output.split())
    assert said.count(f"{POLE}: no direction baselines: Run ") == 1 and f"has no probe peak for '{POLE}'" in said
    assert "arms" not in json.loads((tmp_path / "no-peak-ablate" / "manifest.json").read_text())["results"][0]["directions"]
    assert "located before residual means were recorded" in runner.invoke(
        app, ["ablate", str(old), "--direction-layer", "1", *quick]).stderr


@pytest.mark.parametrize("arch,site", [("gpt2", "down_in"), ("gemma3", "gate"), ("phi3", "down_in")])
def test_other_families_and_sites_locally_and_through_the_remote_simulation(tiny_dir, tmp_path, arch, site):
    """The arms run on other architecture records and at both sites; through the NDIF simulation they give the local
    numbers (d̂ travels by value)."""
    from vneuron.models.loading import load_model
    from vneuron.runtime.remote import RemoteTarget

    model = load_model(str(tiny_dir(arch)), dtype="float64")
    run_dir = tmp_path / "run"
    locate(model, LocateConfig(dataset=str(EXAMPLES / "corpus.jsonl"), split="all", top_k=4, site=site, dimensions=[POLE]), out=run_dir)
    config = _config(controls=2, limit=3, side_effects=False, cross_values=False)
    local = ablate(run_dir, config, model=model, out=tmp_path / "local").summaries[0]["directions"]
    run = LocateRun.open(run_dir)
    assert run.sets[POLE].site == site and local["layer"] == peak_layer(run.manifest, POLE)
    template = run.template()
    items = items_for(evaluation_items(run, replace(config, template=template)).items, POLE, 3)
    d = direction_edit(run, POLE, local["layer"], "project")
    base = forced_choice(model, items, template=template).toward(POLE)
    after = forced_choice(model, items, d, template=template).toward(POLE)
    assert local["arms"]["projected_out"]["effect"] == pytest.approx(float((after - base).mean()), abs=1e-12)
    if arch == "gpt2":
        simulated = load_model(str(tiny_dir(arch)), dtype="float64", remote=RemoteTarget("local", blocking=True))
        remote = ablate(run_dir, config, model=simulated, out=tmp_path / "remote").summaries[0]["directions"]
        assert remote["budget"] == pytest.approx(local["budget"], rel=1e-9)
        for name in ("mean_difference", "projected_out"):
            assert remote["arms"][name]["effect"] == pytest.approx(local["arms"][name]["effect"], abs=1e-9)
            assert remote["arms"][name]["controls_drawn"] == local["arms"][name]["controls_drawn"]


def test_leakage_on_known_numbers():
    from vneuron.validate.specificity import leakage

    cells = {"own": {"z": -4.0}, "a": {"z": 1.0}, "b": {"z": -3.0}, "c": {"z": None}}
    assert leakage(cells, "own") == {"ratio": 0.5, "own_abs_z": 4.0, "off_mean_abs_z": 2.0, "columns": 2}
    assert leakage(cells, None) is None and leakage({"own": {"z": 0.0}, "a": {"z": 1.0}}, "own") is None
    assert leakage({"own": {"z": 2.0}, "a": {"z": None}}, "own") is None  # no other column with controls


def test_a_direction_arm_on_the_matrix_has_its_own_leakage(located, tmp_path):
    """`direction_matrix`: the mean-difference arm runs on every column of the cross-value matrix against the random
    directions its value shift drew; its own column is its value shift, another column is a forced choice under the
    arm's edit on that column's items, its leakage is the formula over its cells, and the numbers reach directions.csv,
    the terminal table's caption and the report. Without the matrix or in a sweep it is a one-line error."""
    from vneuron.results.direction_tables import directions_table
    from vneuron.validate.specificity import value_groups

    model, run_dir = located
    config = _config(direction_matrix=True, projected_out=False)
    result = ablate(run_dir, config, model=model, out=tmp_path / "matrix")
    summary = result.summaries[0]
    record = summary["directions"]
    arm, neurons = record["arms"]["mean_difference"], summary["cross_values"]
    cross = arm["cross_values"]
    assert set(cross["cells"]) == set(neurons["cells"]) and cross["own"] == neurons["own"] and len(cross["cells"]) > 1
    own = cross["cells"][cross["own"]]
    assert own["effect"] == pytest.approx(arm["effect"], abs=1e-12)
    run = LocateRun.open(run_dir)
    template = run.template()
    d = direction_edit(run, POLE, record["layer"], "add", arm["alpha"])
    groups = value_groups(evaluation_items(run, replace(config, template=template)).items)
    column = next(c for c in cross["cells"] if c != cross["own"])
    toward, members = groups[column]
    items = items_for(members, cross["cells"][column]["toward"], config.limit)
    assert len(items) == cross["cells"][column]["items"] == neurons["cells"][column]["items"]
    base = forced_choice(model, items, template=template).toward(cross["cells"][column]["toward"])
    after = forced_choice(model, items, d, template=template).toward(cross["cells"][column]["toward"])
    assert cross["cells"][column]["effect"] == pytest.approx(float((after - base).mean()), abs=1e-12)
    assert cross["cells"][column]["controls_max"] == arm["controls_drawn"]
    off = [abs(c["z"]) for k, c in cross["cells"].items() if k != cross["own"] and c.get("z") is not None]
    assert arm["leakage"] == pytest.approx(sum(off) / len(off) / abs(own["z"]), rel=1e-12)
    assert record["arms"]["neurons"]["leakage"] == neurons["leakage"]["ratio"]
    rows = {r["arm"]: r for r in csv.DictReader(open(result.run_dir / "directions.csv"))}
    assert float(rows["mean_difference"]["leakage"]) == pytest.approx(arm["leakage"], abs=1e-6)
    assert "mean diff" in directions_table(result).caption and f"{arm['leakage']:.2f}" in directions_table(result).caption
    assert "--direction-matrix" not in directions_table(result).caption
    quick = ["--controls", "1", "--split", "all", "--limit", "2", "--dimension", POLE, "-q"]
    bad = runner.invoke(app, ["ablate", str(run_dir), "--direction-matrix", "--no-cross-values", "--out", str(tmp_path / "x"), *quick])
    assert bad.exit_code == 2 and "--direction-matrix runs the direction baselines on the cross-value matrix's columns, but the " \
        "cross-value matrix is switched off" in bad.stderr, bad.output
    with pytest.raises(VneuronError, match="`direction_matrix` is an ablation's baseline"):
        ValidateConfig(mode="scale", direction_matrix=True).check_steering()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen3"])
def test_the_budget_read_on_the_way_equals_its_own_pair_of_passes_bit_for_bit(tiny_dir, tmp_path, monkeypatch, arch):
    """The budget (α, and the projected-out size) is read by the pole's unedited pass and its value shift's located pass
    (directions.Readings), so its own pair of passes does not run; the numbers are those of that pair, to the bit (in
    float32), for ablate and for each γ of a sweep, and where the readings are missing the pair runs."""
    from vneuron.models.loading import load_model
    from vneuron.validate import directions
    from vneuron.validate.directions import Readings

    torch.set_num_threads(1)
    model = load_model(str(tiny_dir(arch)), dtype="float32")
    run_dir = tmp_path / "run"
    locate(model, LocateConfig(dataset=str(EXAMPLES / "corpus.jsonl"), split="all", top_k=6), out=run_dir)
    ablation = _config(controls=2, limit=None, side_controls=2, batch_tokens=64,  # several batches; the matrix reads one's items first;
                       dimensions=[POLE, "openness_to_change", "self_transcendence"])  # a pole and its opposite share their items
    sweep = _config(mode="scale", controls=2, limit=3, side_effects=False, cross_values=False, batch_tokens=64)
    runs, passes = {}, []
    real = directions._change_norms
    monkeypatch.setattr(directions, "_change_norms", lambda *a, **k: passes.append(1) or real(*a, **k))
    for way in ("read", "passes"):
        if way == "passes":
            assert not passes  # no pole ran the pair of passes
            monkeypatch.setattr(Readings, "sizes", lambda self, *a, **k: None)
        runs[way] = (ablate(run_dir, ablation, model=model, out=tmp_path / f"ablate-{way}"),
                     steer(run_dir, [0.0, 2.0], sweep, model=model, out=tmp_path / f"steer-{way}"))
    assert passes
    for read, passes in zip(*runs.values()):
        assert json.dumps(read.summaries, sort_keys=True) == json.dumps(passes.summaries, sort_keys=True)
        forwards = [r.manifest["timings"]["stages"]["direction baselines"]["work"]["forwards"] for r in (read, passes)]
        assert forwards[0] < forwards[1]  # the pair of passes is gone
    budgets = [p["directions"]["budget"] for p in runs["read"][1].summaries[0]["curve"]]
    assert budgets[0] > 0 and budgets[1] > 0 and budgets[0] != budgets[1]  # each γ read afresh
    assert all(s["directions"]["budget"] > 0 for s in runs["read"][0].summaries)


def test_readings_that_are_not_whole_give_way_to_the_pair_of_passes():
    """``Readings.sizes`` answers only when every batch of the evaluation was read at that layer by both passes, with
    the same tokens (batches that shrank after an out-of-memory retry, a part kept by an interrupted study, another
    layer: None, and ``edit_sizes`` runs its own passes); whole, it is Σ w·‖change‖ / Σ w."""
    from types import SimpleNamespace

    from vneuron.validate.directions import Readings

    torch.manual_seed(0)
    batches = [SimpleNamespace(tokens=6, counted=torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0]], dtype=torch.float64)),
               SimpleNamespace(tokens=3, counted=torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64))]
    prepared = [(t, None, None) for t in batches]
    plain = [torch.randn(2, 3, 4), torch.randn(1, 3, 4)]
    edited = [p + torch.randn_like(p) for p in plain]
    steps = [("a step",)]
    read = Readings(1)
    assert read.request([]) == 1 and read.request(steps) is None  # nothing to compare with yet
    read.take(0, batches[0], [], plain[0])
    assert read.sizes(prepared, 1, steps, torch.zeros(0, 4, dtype=torch.float64)) is None  # one batch of two
    read.take(1, batches[1], [], plain[1])
    assert read.request(steps) == 1
    read.take(0, batches[0], steps, edited[0])
    assert read.sizes(prepared, 1, steps, torch.zeros(0, 4, dtype=torch.float64)) is None  # the located pass read one batch
    read.take(1, batches[1], steps, edited[1])
    total = sum(float(((e.double() - p.double()).norm(dim=-1) * t.counted).sum()) for e, p, t in zip(edited, plain, batches))
    count = sum(float(t.counted.sum()) for t in batches)
    assert read.sizes(prepared, 1, steps, torch.zeros(0, 4, dtype=torch.float64)) == pytest.approx([total / count], rel=1e-12)
    unit = torch.nn.functional.normalize(torch.randn(1, 4, dtype=torch.float64), dim=1)
    along = sum(float(((p.double() @ unit.T).abs()[..., 0] * t.counted).sum()) for p, t in zip(plain, batches)) / count
    assert read.sizes(prepared, 1, steps, unit) == pytest.approx([total / count, along], rel=1e-12)  # the projected-out size
    assert read.sizes(prepared, 1, [], torch.zeros(0, 4, dtype=torch.float64)) == [0.0]  # an edit with nothing at or below L
    assert read.sizes(prepared, 2, steps, torch.zeros(0, 4, dtype=torch.float64)) is None  # another layer
    shrunk = [(SimpleNamespace(tokens=4, counted=batches[0].counted), None, None), prepared[1]]
    assert read.sizes(shrunk, 1, steps, torch.zeros(0, 4, dtype=torch.float64)) is None
    read.begin()  # the next value shift (steer: the next γ) reads its change afresh
    assert read.sizes(prepared, 1, steps, torch.zeros(0, 4, dtype=torch.float64)) is None
    opposite = Readings(1, share=read)  # a pole's opposite: the same unedited readings, its own change
    assert opposite.plain is read.plain and opposite.changes == {}
