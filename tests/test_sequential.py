"""Sequential controls stop where Besag–Clifford says, and the fast ablation gives the old numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vneuron.cli import app
from vneuron.config import EDIT_MODES
from vneuron.validate.sequential import Sequential

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


def test_stops_once_h_controls_are_as_extreme():
    rule = Sequential(effect=-0.1, tail="lower", h=2, maximum=20)
    for e in (0.0, -0.2, 0.05, -0.1):  # -0.2 and the tie -0.1 are as extreme
        assert rule.more()
        rule.add(e)
    assert not rule.more()
    r = rule.report()
    assert r["controls_drawn"] == 4 and r["p_sequential"] == pytest.approx(2 / 4) and "2 controls" in r["stop_reason"]


def test_draws_all_while_the_located_set_stays_ahead():
    rule = Sequential(effect=0.5, tail="higher", h=3, maximum=5)
    for e in (0.1, 0.6, 0.2, 0.0, 0.3):
        rule.add(e)
    assert not rule.more() and rule.report()["p_sequential"] == pytest.approx((1 + 1) / (5 + 1))
    every = Sequential(effect=0.0, tail="lower", h=0, maximum=3)
    for _ in range(3):
        assert every.more()
        every.add(-1.0)
    assert not every.more() and every.report()["p_sequential"] == pytest.approx(4 / 4)


def test_tails_follow_the_edit():
    tail = {mode: record.tail for mode, record in EDIT_MODES.items()}
    assert tail["zero"](0.0) == "lower" and tail["scale"](0.5) == "lower" and tail["scale"](4) == "higher"
    assert tail["add"](-2) == "lower" and tail["add"](2) == "higher" and tail["mean"](None) == tail["set"](3) == "lower"


def test_fast_ablation_reproduces_the_reference_numbers(tmp_path, tiny_dir, tiny_model):
    """Tries, shared lower layers and sequential bookkeeping change no number when every control is drawn."""
    from vneuron.validate.evaluate import forced_choice
    from vneuron.locate.runs import LocateRun
    from vneuron.config import ValidateConfig
    from vneuron.validate.study import edit_for, ablate
    from vneuron.validate.items import items_for
    from vneuron.validate.controls import summarize

    run_dir = tmp_path / "run"
    located = runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"),
                                  "--split", "all", "-k", "8", "--out", str(run_dir), "-q"])
    assert located.exit_code == 0, located.output
    model = tiny_model("llama")
    config = ValidateConfig(controls=4, split="all", dimensions=["self_transcendence"], stop_after=0, bootstrap=300)
    fast = ablate(run_dir, config, model=model, out=tmp_path / "fast").summaries[0]

    run = LocateRun.open(run_dir)  # the reference: every pair its own row, every layer every time
    pole = "self_transcendence"
    items = items_for(run.items("all"), pole, None)
    neurons = run.sets[pole]
    score = lambda edit: forced_choice(model, items, edit, shared_prefix=False).toward(pole)  # noqa: E731
    base, after = score(None), score(edit_for(run, neurons, pole, config))
    controls = [score(edit_for(run, neurons.random_matched(s), pole, config)) for s in range(4)]
    reference = summarize(pole, base, after, controls, items, config)
    assert fast["controls_drawn"] == 4
    for key in ("baseline", "after", "effect", "control_effect", "effect_minus_control", "p_lower", "p_higher", "rank"):
        assert fast[key] == pytest.approx(reference[key], abs=1e-6), key
    for key in ("effect_ci", "effect_minus_control_ci"):
        assert fast[key] == pytest.approx(reference[key], abs=1e-6), key
    assert fast["control_effects"] == pytest.approx(reference["control_effects"], abs=1e-6)

    early = ablate(run_dir, ValidateConfig(controls=4, split="all", dimensions=[pole], stop_after=1, bootstrap=300),
                   model=model, out=tmp_path / "early").summaries[0]
    assert early["control_effects"] == fast["control_effects"][: early["controls_drawn"]]  # the same controls, in order
    assert early["controls_drawn"] <= 4 and early["stop_reason"] and "p_sequential" in early

    # --dry-run: counted plan, nothing written
    before = sorted(p.name for p in run_dir.iterdir())
    dry = runner.invoke(app, ["ablate", str(run_dir), "--split", "all", "--controls", "5", "--dry-run", "-q", "--threads", "1"])
    assert dry.exit_code == 0, dry.output
    assert "forward passes:" in dry.output and "requests:" in dry.output and "nothing was run or written" in dry.output
    assert "controls per located set: 3 – 5" in dry.output
    assert sorted(p.name for p in run_dir.iterdir()) == before
    steer_dry = runner.invoke(app, ["steer", str(run_dir), "--split", "all", "--gamma", "0,2", "--dry-run", "-q", "--threads", "1"])
    assert steer_dry.exit_code == 0 and "time (from a one-batch calibration now" in steer_dry.output


def test_rank_counts_controls_beyond_the_located_effect_in_the_tested_direction():
    from vneuron.data.schema import Item
    from vneuron.config import ValidateConfig
    from vneuron.validate.controls import summarize

    items = [Item(id=str(i), language="en", dimension="a", opposite="b", scenario="s", option_pole="x", option_opposite="y",
                  split="test") for i in range(4)]
    base = torch.full((4,), 0.5, dtype=torch.float64)
    located = base + 0.2  # the located set raises P more than every control
    controls = [base + d for d in (0.0, 0.05, -0.1)]
    config = ValidateConfig(bootstrap=50)
    assert summarize("a", base, located, controls, items, config, "higher")["rank"] == 1
    assert summarize("a", base, located, controls, items, config, "lower")["rank"] == 4
    assert summarize("a", base, base - 0.2, controls, items, config, "lower")["rank"] == 1
