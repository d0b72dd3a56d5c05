"""The dry run of an ablation against the ablation itself, stage by stage (value shift, side effects, matrix, direction
baselines)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vneuron.cli import app
from vneuron.config import ValidateConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()
STAGES = ("value shift", "side effects", "cross-value matrix", "direction baselines")


@pytest.fixture(scope="module")
def located(tmp_path_factory, tiny_dir):
    run_dir = tmp_path_factory.mktemp("plan") / "run"
    result = runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"),
                                 "--split", "all", "-k", "6", "--out", str(run_dir), "-q"])
    assert result.exit_code == 0, result.output
    return run_dir


def test_the_dry_run_predicts_the_work_and_time_of_each_stage(located, tmp_path):
    """Every stage's forward passes, token × block and head positions fall between the plan's least and most, and the
    measured seconds within 2× of the plan's estimate (calibrated on one batch of the same model and threads)."""
    from vneuron.validate.plan import validation_plan
    from vneuron.validate.study import ablate

    config = ValidateConfig(controls=6, stop_after=2, max_controls=6, side_controls=6, split="all", limit=6)
    plan = validation_plan(located, config, "ablate")
    measured = ablate(located, config, out=tmp_path / "ablate").manifest["timings"]["stages"]
    for name in STAGES:
        least, most, work = plan["stages"][name]["least"], plan["stages"][name]["most"], measured[name]["work"]
        for key in ("forwards", "layer_tokens", "head_positions"):
            assert least[key] <= work[key] <= most[key], (name, key, least[key], work[key], most[key])
    # expected: each stage at its least but the side effects, drawn as for a located set that damages like a random one;
    # the side effects' work within 2x of it
    for name in STAGES:
        expected = plan["stages"][name]["expected"]
        assert plan["stages"][name]["least"]["forwards"] <= expected["forwards"] <= plan["stages"][name]["most"]["forwards"]
        if name != "side effects":
            assert expected == plan["stages"][name]["least"]
    side, expected = measured["side effects"]["work"], plan["stages"]["side effects"]["expected"]
    assert expected["forwards"] / 2 <= side["forwards"] <= 2 * expected["forwards"], (side, expected)
    # the projected-out arm, when asked for, is a second arm of the same work
    both = validation_plan(located, replace(config, projected_out=True), "ablate")["stages"]["direction baselines"]
    one = plan["stages"]["direction baselines"]
    assert both["least"]["head_positions"] > one["least"]["head_positions"] and both["most"]["forwards"] > one["most"]["forwards"]
    # the time of the stages together (each is a fraction of a second here, where a shared machine's noise
    # is of the same size; the default ablation's stages one by one: docs/EVIDENCE.md)
    low = sum(plan["stages"][n]["estimate_s"][0] for n in STAGES)
    high = sum(plan["stages"][n]["estimate_s"][1] for n in STAGES)
    took = sum(measured[n]["wall_s"] for n in STAGES)
    assert low / 2 <= took <= 2 * high, (low, took, high)
    shown = runner.invoke(app, ["ablate", str(located), "--split", "all", "--limit", "6", "--controls", "6", "--dry-run", "-q"])
    assert shown.exit_code == 0, shown.output
    assert all(f"    {name}: " in shown.output for name in STAGES), shown.output
    as_json = runner.invoke(app, ["ablate", str(located), "--split", "all", "--limit", "6", "--controls", "6", "--dry-run", "--json", "-q"])
    assert as_json.exit_code == 0, as_json.output
    planned = json.loads(as_json.stdout)
    assert planned["dry_run"] and set(planned["stages"]) == set(STAGES) and len(planned["estimate_s"]) == 2
    assert planned["estimate_s"][0] <= planned["expected_s"] <= planned["estimate_s"][1] and "expected" in shown.output


def test_the_dry_run_counts_a_direction_matrix(located, tmp_path):
    """With `direction_matrix` the direction stage's work (its arm on every column of the matrix too) falls between the
    plan's least and most, as the other stages' do."""
    from vneuron.validate.plan import validation_plan
    from vneuron.validate.study import ablate

    config = ValidateConfig(controls=6, stop_after=2, max_controls=6, side_controls=6, split="all", limit=6, direction_matrix=True)
    plan = validation_plan(located, config, "ablate")["stages"]["direction baselines"]
    without = validation_plan(located, replace(config, direction_matrix=False), "ablate")["stages"]["direction baselines"]
    assert plan["least"]["forwards"] > without["least"]["forwards"]
    work = ablate(located, config, out=tmp_path / "ablate").manifest["timings"]["stages"]["direction baselines"]["work"]
    for key in ("forwards", "layer_tokens", "head_positions"):
        assert plan["least"][key] <= work[key] <= plan["most"][key], (key, plan["least"][key], work[key], plan["most"][key])
