"""A positive control that does not break the model: quiet at BOS, checked on neutral prose, graded by strength."""

from __future__ import annotations

import json

import pytest
import torch

import vneuron
from vneuron.config import PlantConfig, PowerConfig
from vneuron.planting import NEURONS_FILE, PLANT_DIR, plant, rescale
from vneuron.planting.power import power
from vneuron.locate.scoring import NeuronSet

from .test_planting import K, OPPOSITE, POLE, write_corpus


@pytest.fixture(scope="module")
def graded(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("graded")
    corpus = write_corpus(root / "corpus.jsonl")
    base = vneuron.load_model(str(tiny_dir("llama")), dtype="float32")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result = plant(base, PlantConfig(dataset=str(corpus), k=K, steps=40, lr=3e-2, eval_every=10, patience=3, seed=0),
                   out=root / "planted")
    yield {"root": root, "corpus": corpus, "base": base, "result": result}
    torch.set_num_threads(threads)


def test_the_plant_reports_its_side_effects_over_every_position(graded):
    side = graded["result"].manifest["side_effects"]
    assert side["positions"] > side["texts"] > 20 and side["ppl_before"] > 0 and side["ppl_after"] > 0
    assert side["kl_all_positions"] >= 0 and "kl_first_prediction" in side and side["pairs"] == 40
    assert side["ppl_ratio"] == pytest.approx(side["ppl_after"] / side["ppl_before"], rel=1e-4)
    # the planted units read 0 at BOS (every text starts with it): their output there is exactly 0
    assert side["first_positions"]["position_0"] == 0 and side["first_positions"]["later"] > 0
    assert graded["result"].manifest["direction"]["validation_after_read"] is not None
    curve = graded["result"].curve
    assert all(row.get("val_kl") is not None for row in curve)


def test_the_planted_set_records_its_opposite(graded, tmp_path):
    truth = NeuronSet.load(graded["result"].out / PLANT_DIR / NEURONS_FILE)
    assert truth.meta["label"] == POLE and truth.meta["opposite"] == OPPOSITE
    veto = plant(graded["base"], PlantConfig(dataset=str(graded["corpus"]), k=K, steps=2, eval_every=1, seed=0, mechanism="veto"),
                 out=tmp_path / "veto")
    truth = NeuronSet.load(veto.out / PLANT_DIR / NEURONS_FILE)
    assert truth.meta["label"] == OPPOSITE and truth.meta["opposite"] == POLE  # was its own label


def test_a_flipped_write_points_the_plant_toward_the_pole(graded):
    from vneuron.planting import Planter, choose_neurons

    model = graded["base"]
    planter = Planter(model, choose_neurons(model, PlantConfig(k=K)))
    try:
        down, _ = planter.downs[0]
        before = down.param.index_select(down.axis, down.index).clone()
        planter.flip_write()
        assert torch.allclose(before + down.delta, -before)
    finally:
        planter.remove()


def test_rescaled_copies_reach_their_validation_strength(graded, tmp_path):
    src = graded["result"].out
    trained = graded["result"].manifest
    weak = rescale(src, 0.55, tmp_path / "weak")
    manifest = json.loads((weak / PLANT_DIR / "manifest.json").read_text())
    strength = manifest["strength"]
    assert strength["target"] == 0.55 and strength["reached"] and abs(strength["validation_preference"] - 0.55) < 0.03
    assert strength["scale"] < 1 and manifest["revision"] != trained["revision"]
    # everything but the planted output columns is the planted model's, bit for bit
    a = vneuron.load_model(str(src), dtype="float32").hf_model.state_dict()
    b = vneuron.load_model(str(weak), dtype="float32").hf_model.state_dict()
    changed = [name for name in a if not torch.equal(a[name], b[name])]
    assert changed and all("down_proj" in name for name in changed)
    assert manifest["side_effects"]["ppl_ratio"] > 0
    with pytest.raises(vneuron.VneuronError, match="target"):
        rescale(src, 1.2, tmp_path / "never")


def test_power_gains_an_effect_size_axis(graded, tmp_path):
    config = PowerConfig(dimension=POLE, dataset=str(graded["corpus"]), ks=[K], sizes=[12], controls=2, targets=[0.55, 0.6])
    result = power(graded["base"], config, out=tmp_path / "power", planted_dirs={K: graded["result"].out})
    assert [(r["target"], r["scenarios_per_pole"]) for r in result.rows] == [(0.55, 12), (0.6, 12)]
    assert all(r["ppl_ratio"] is not None and r["scale"] is not None for r in result.rows)
    assert set(result.manifest["plants"]) == {f"k{K}-p0.55", f"k{K}-p0.6"}


def test_an_unreachable_strength_keeps_the_strongest_scale_tried(monkeypatch):
    """Measured on the default model: the veto plant's validation P went 0.58, 0.61, 0.55, 0.52 at write
    scales 1, 2, 4, 8 — past a point a larger write lowers the preference. Out of reach, the strongest
    scale tried is kept, not the last (which had broken the model: perplexity × 338)."""
    from vneuron.planting import strength

    curve = {1.0: 0.58, 2.0: 0.61, 4.0: 0.55, 8.0: 0.52}
    state = {}

    class Scale:
        def set(self, s):
            state["s"] = s

    monkeypatch.setattr(strength, "preference", lambda model, items, pole, choices, bt: curve[state["s"]])
    found = strength.fit_strength(None, Scale(), [], "self_transcendence", ["listed"], 0.8)
    assert not found["reached"] and found["scale"] == 2.0 and found["validation_preference"] == 0.61 and state["s"] == 2.0
    assert [s for s, _ in found["tried"]] == [1.0, 2.0, 4.0, 8.0]


def test_the_bisection_stops_once_it_is_within_tolerance(monkeypatch):
    """Each try is a whole validation pass (about 3 min on the default model): a scale within half a point of
    the target ends the search, and the scale kept is the closest tried, not the bracket's upper end."""
    from vneuron.planting import strength

    state = {}

    class Scale:
        def set(self, s):
            state["s"] = s

    monkeypatch.setattr(strength, "preference", lambda model, items, pole, choices, bt: 0.5 + 0.1 * state["s"])
    found = strength.fit_strength(None, Scale(), [], "self_transcendence", ["listed"], 0.552)
    assert [s for s, _ in found["tried"]] == [1.0, 0.5]
    assert found["reached"] and found["scale"] == 0.5 and state["s"] == 0.5
    found = strength.fit_strength(None, Scale(), [], "self_transcendence", ["listed"], 0.5371, tolerance=0.0001)
    assert abs(found["validation_preference"] - 0.5371) <= 0.0001 + 0.1 / 2 ** 8 and state["s"] == found["scale"]
