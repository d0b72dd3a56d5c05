"""Ablation and steering: the statistics on known numbers, and the commands end to end on a tiny model."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vneuron.cli import app
from vneuron.errors import VneuronError
from vneuron.data import load_corpus
from vneuron.validate.evaluate import bootstrap_ci, forced_choice, forced_choice_pairs
from vneuron.locate.scoring import NeuronSet
from vneuron.config import ValidateConfig
from vneuron.runtime.checkpoint import MEMO
from vneuron.validate.controls import summarize

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


def test_summary_ranks_the_located_effect_among_controls():
    items = load_corpus(EXAMPLES / "corpus.jsonl").items[:4]
    base = torch.tensor([0.6, 0.5, 0.7, 0.4], dtype=torch.float64)
    located = base - 0.2
    controls = [base + d for d in (-0.05, 0.0, 0.01, 0.3, -0.25)]  # one control beats the located set
    s = summarize("self_transcendence", base, located, controls, items, ValidateConfig(bootstrap=500))
    assert s["effect"] == pytest.approx(-0.2)
    assert s["control_effect"] == pytest.approx(sum((-0.05, 0.0, 0.01, 0.3, -0.25)) / 5)
    assert s["rank"] == 2 and s["p_lower"] == pytest.approx(2 / 6)
    assert s["effect_minus_control"] == pytest.approx(-0.2 - 0.002)
    lo, hi = s["effect_minus_control_ci"]
    assert lo <= s["effect_minus_control"] <= hi
    assert s["drop_percent"] == pytest.approx(100 * 0.2 / 0.55)
    assert s["consistency_before"] == 0.5 and s["consistency_after"] == 0.0  # 0.5 is not > 0.5


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_n():
    torch.manual_seed(0)
    small, large = torch.randn(20, dtype=torch.float64), torch.randn(2000, dtype=torch.float64)
    lo_s, hi_s = bootstrap_ci(small, n=1000)
    lo_l, hi_l = bootstrap_ci(large, n=1000)
    assert lo_s < float(small.mean()) < hi_s and (hi_l - lo_l) < (hi_s - lo_s) / 4


def test_random_controls_match_the_layer_profile_and_avoid_the_set():
    scores = torch.zeros(4, 50)
    located = NeuronSet.from_flat(torch.tensor([1, 2, 3, 60, 61, 190]), scores, "gate")
    for seed in range(5):
        control = located.random_matched(seed)
        assert control.per_layer() == located.per_layer()
        assert not torch.isin(control.flat, located.flat).any()
    assert not torch.equal(located.random_matched(0).flat, located.random_matched(1).flat)


def test_forced_choice_reads_both_orders(tiny_model):
    model = tiny_model("llama")
    items = load_corpus(EXAMPLES / "corpus.jsonl").items[:2]
    pairs = forced_choice_pairs(items)
    assert len(pairs) == 8 and pairs[0][0] == pairs[1][0] and pairs[0][0] != pairs[2][0]
    assert pairs[0][1] == " " + items[0].option_pole and pairs[1][1] == " " + items[0].option_opposite
    result = forced_choice(model, items)
    assert result.p_order.shape == (2, 2) and ((result.p_pole > 0) & (result.p_pole < 1)).all()
    # orientation toward the partner pole is the complement
    torch.testing.assert_close(result.toward(items[0].dimension) + result.toward(items[0].opposite), torch.ones(2, dtype=torch.float64))


def test_continuation_format_has_no_order(tiny_model):
    items = load_corpus(EXAMPLES / "corpus.jsonl").items[:3]
    pairs = forced_choice_pairs(items, "continuation")
    assert len(pairs) == 6 and pairs[0][0] == pairs[1][0] and items[0].option_opposite not in pairs[0][0]
    result = forced_choice(tiny_model("llama"), items, choice="continuation")
    assert torch.equal(result.p_order[:, 0], result.p_order[:, 1])


def test_ablate_and_steer_commands(tmp_path, tiny_dir):
    model = tiny_dir("llama")
    run_dir = tmp_path / "run"
    located = runner.invoke(app, ["locate", "--model", str(model), "--dataset", str(EXAMPLES / "corpus.jsonl"), "--split", "all",
                                  "-k", "10", "--out", str(run_dir), "-q"])
    assert located.exit_code == 0, located.output
    ablated = runner.invoke(app, ["ablate", str(run_dir), "--controls", "3", "--split", "all", "--generations", "1", "-q",
                                  "--dimension", "self_transcendence,conservation",
                                  "--pvq", str(Path(__file__).parent / "fixtures" / "inventory.csv")])
    assert ablated.exit_code == 0, ablated.output
    (out,) = run_dir.glob("ablate-zero-kall-*")  # the settings' hash ends the default name
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["dimension"] for r in manifest["results"]] == ["self_transcendence", "conservation"]
    st = manifest["results"][0]
    assert st["controls"] == 3 and len(st["control_effects"]) == 3 and 1 <= st["rank"] <= 4 and st["neurons"] == 10
    assert st["items"] == 4  # the example corpus has 4 items on the ST/SE axis
    assert set(st["pvq"]) >= {"before", "after", "controls_mean"} and st["pvq"]["before"].keys() == st["pvq"]["after"].keys()
    rows = list(csv.DictReader(open(out / "items.csv")))
    assert len(rows) == 4 + 2 and {"baseline", "after", "controls_mean"} <= set(rows[0])
    assert len(list(csv.DictReader(open(out / "controls.csv")))) == 6
    sample = json.loads((out / "generations.jsonl").read_text().splitlines()[0])
    assert sample["before"] != sample["after"] or sample["before"] == ""  # zeroing 10 of 144 units changes greedy text
    assert "Ablation (zero)" in ablated.output

    steered = runner.invoke(app, ["steer", str(run_dir), "--gamma", "0,2", "--controls", "2", "--split", "all", "-q", "--choice",
                                  "continuation",
                                  "--dimension", "self_transcendence"])
    assert steered.exit_code == 0, steered.output
    (steer_dir,) = run_dir.glob("steer-scale-kall-*")
    rows = list(csv.DictReader(open(steer_dir / "dose_response.csv")))
    assert [float(r["gamma"]) for r in rows] == [0.0, 2.0]

    bad = runner.invoke(app, ["steer", str(run_dir), "--gamma", "a,b"])
    assert bad.exit_code == 2 and "Cannot read --gamma" in bad.stderr
    wrong = runner.invoke(app, ["ablate", str(run_dir), "--dimension", "kindness"])
    assert wrong.exit_code == 2 and "no neuron set for kindness" in wrong.stderr
    other_model = runner.invoke(app, ["ablate", str(run_dir), "--model", str(tiny_dir("qwen2")), "--controls", "1", "--split", "all"])
    assert other_model.exit_code == 2 and "not the one the run located" in other_model.stderr


def test_pvq_scores_are_centred_and_follow_edits(tiny_model):
    from vneuron.data import load_inventory
    from vneuron.validate.edits import Edit
    from vneuron.validate.evaluate import PVQ_ANSWERS, pvq

    inventory = load_inventory(Path(__file__).parent / "fixtures" / "inventory.csv")
    model = tiny_model("llama")
    result = pvq(model, inventory)
    assert result.ratings.shape == (len(inventory),) and ((result.ratings >= 1) & (result.ratings <= 6)).all()
    # centred value scores average (weighted by items) to zero around the mean rating
    weights = {v: sum(1 for i in inventory if i.value == v) for v in result.values}
    assert abs(sum(result.values[v] * weights[v] for v in result.values)) < 1e-9
    assert set(result.dimensions) <= {"openness_to_change", "conservation", "self_enhancement", "self_transcendence"}
    # a reverse-keyed item's rating is 7 − expected rating
    assert len(PVQ_ANSWERS["en"]) == 6
    neurons = NeuronSet.from_flat(torch.arange(0, 144, 2), torch.zeros(3, 48), "gate")
    edited = pvq(model, inventory, Edit(neurons, "zero"))
    assert not torch.allclose(edited.ratings, result.ratings)


def test_pvq_on_the_shared_pvq40(shared_data, tiny_model):
    from vneuron.data import load_inventory
    from vneuron.validate.evaluate import pvq

    inventory = load_inventory(shared_data / "valuebench" / "value_orientation.csv")
    assert len(inventory) == 40
    result = pvq(tiny_model("gpt2"), inventory[:10])
    assert len(result.ratings) == 10


def test_interrupted_studies_keep_finished_poles(tmp_path, tiny_dir, monkeypatch):
    """ablate and steer keep each finished pole in the run's checkpoint (vneuron.runtime.checkpoint); a rerun continues, the
    caller's config is never changed, and the result equals an uninterrupted study's."""
    import vneuron.validate.study as validate

    model = tiny_dir("llama")
    run_dir = tmp_path / "run"
    assert runner.invoke(app, ["locate", "--model", str(model), "--dataset", str(EXAMPLES / "corpus.jsonl"), "--split", "all",
                               "-k", "6", "--out", str(run_dir), "-q"]).exit_code == 0
    real = validate.summarize
    for kind, config, call in (
            ("ablate", ValidateConfig(controls=1, split="all", generations=0, dimensions=["conservation", "self_transcendence"]),
             lambda config, out: validate.ablate(run_dir, config, out=out)),
            ("steer", ValidateConfig(mode="scale", controls=1, split="all", generations=0, side_effects=False,
                                     dimensions=["conservation", "self_transcendence"]),
             lambda config, out: validate.steer(run_dir, [0.0, 2.0], config, out=out))):
        calls = {"n": 0}
        stop_at = 2 if kind == "ablate" else 3  # steer: the second pole's first γ

        def interrupt(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == stop_at:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(validate, "summarize", interrupt)
        out = tmp_path / f"{kind}-interrupted"
        with pytest.raises(KeyboardInterrupt):
            call(config, out)
        assert config.template is None  # the run's template filled a copy, not the caller's config
        state = json.loads((tmp_path / f".{out.name}.partial" / "state.json").read_text())
        assert [k for k in state["pieces"] if k != MEMO] == ["conservation"]
        monkeypatch.setattr(validate, "summarize", real)
        resumed = call(config, out)
        assert [s["dimension"] for s in resumed.summaries] == ["conservation", "self_transcendence"]
        assert not (tmp_path / f".{out.name}.partial").exists()
        whole = call(config, tmp_path / f"{kind}-whole")
        assert json.dumps(resumed.summaries, sort_keys=True) == json.dumps(whole.summaries, sort_keys=True)
        with pytest.raises(VneuronError, match="other settings"):  # a checkpoint is continued only with the same settings
            monkeypatch.setattr(validate, "summarize", interrupt)
            calls["n"] = 0
            with pytest.raises(KeyboardInterrupt):
                call(config, tmp_path / f"{kind}-changed")
            monkeypatch.setattr(validate, "summarize", real)
            call(replace(config, seed=1), tmp_path / f"{kind}-changed")


@pytest.mark.parametrize("stage", ["unedited", "value shift", "side effects", "matrix", "direction"])
def test_a_study_interrupted_inside_a_pole_resumes_where_it_stopped_bit_for_bit(tmp_path, tiny_dir, monkeypatch, stage):
    """Each part of a pole (the unedited items, the value shift's sets, each round of side effects, each matrix column, the
    direction baselines' budget, sets and side effects) is kept as it finishes: interrupted in the middle of a stage, a
    rerun computes none of the kept parts again and writes exactly what an uninterrupted study writes."""
    from vneuron.runtime.checkpoint import Checkpoint
    import vneuron.validate.study as validate

    run_dir = tmp_path / "run"
    assert runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"), "--split", "all",
                               "-k", "6", "--out", str(run_dir), "-q"]).exit_code == 0
    config = ValidateConfig(controls=6, stop_after=2, max_controls=6, side_controls=6, split="all", limit=6,
                            dimensions=["conservation", "self_transcendence"])
    real = Checkpoint.memo
    computed: list[str] = []

    def recording(self, name, compute):
        def run():
            computed.append(name)
            return compute()
        return real(self, name, run)

    monkeypatch.setattr(Checkpoint, "memo", recording)
    whole = validate.ablate(run_dir, config, out=tmp_path / "whole")
    order = list(computed)
    # the stage's second part in the second pole (its first pole is finished and kept whole)
    second = [n for n in order if n.startswith("self_transcendence: ") or n.startswith("unedited")]
    names = [n for n in (second if stage != "unedited" else order) if stage in n]
    assert names, order
    stop = names[min(1, len(names) - 1)] if stage != "unedited" else names[-1]
    computed.clear()

    def interrupting(self, name, compute):
        if name == stop:
            raise KeyboardInterrupt
        return recording(self, name, compute)

    monkeypatch.setattr(Checkpoint, "memo", interrupting)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        validate.ablate(run_dir, config, out=out)
    kept = set(computed) - {n for n in computed if n.startswith("conservation: ")}  # a finished pole keeps its record
    assert kept and all(n in order for n in kept)
    computed.clear()
    monkeypatch.setattr(Checkpoint, "memo", recording)
    resumed = validate.ablate(run_dir, config, out=out)
    assert not set(computed) & kept and stop in computed  # nothing kept is computed again; the rest is
    assert not any(n.startswith("conservation: ") for n in computed)
    assert json.dumps(resumed.summaries, sort_keys=True) == json.dumps(whole.summaries, sort_keys=True)
    for name in ("items.csv", "controls.csv", "side_effects.csv", "cross_values.csv", "directions.csv"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
