"""Positive control: neurons planted with a known identity on a tiny random model.

One planting (tiny Llama, 12 of 144 neurons, a synthetic corpus whose actions use the tiny
vocabulary) serves every test: the planted preference generalises to held-out scenarios,
locate's top-K recovers the planted units, zeroing the located set removes the preference and
beats matched random controls, and every unplanted weight is bit for bit the original.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import vneuron
from vneuron.cli import app
from vneuron.config import PlantConfig
from vneuron.planting import ORIGINAL_FILE, PLANT_DIR, original_weights, plant
from vneuron.locate.scoring import NeuronSet

runner = CliRunner()
POLE, OPPOSITE = "self_transcendence", "self_enhancement"
K = 12


def write_corpus(path: Path, n_train: int = 24, n_test: int = 8, seed: int = 0, poles=(POLE, OPPOSITE)) -> Path:
    """Scenarios of neutral words; one pole's actions use 'caring' words, the other's 'winning' words."""
    rng = random.Random(seed)
    neutral = "the a team work home plan report old new quiet travel learn rules tradition".split()
    words = {POLE: "help share others community nature protect friend neighbour family honest".split(),
             OPPOSITE: "win power money lead manager keep spend save risk change".split()}
    rows, n = [], 0
    for split, count in (("train", n_train), ("test", n_test)):
        for _ in range(count):
            for dim in poles:
                opp = OPPOSITE if dim == POLE else POLE
                n += 1
                rows.append({"id": f"t{n}", "language": "en", "dimension": dim, "split": split,
                             "scenario": " ".join(rng.choice(neutral) for _ in range(6)) + " . what would you do ?",
                             "option_pole": " ".join(rng.choice(words[dim]) for _ in range(3)),
                             "option_opposite": " ".join(rng.choice(words[opp]) for _ in range(3))})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def planted(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("plant")
    corpus = write_corpus(root / "corpus.jsonl")
    base = vneuron.load_model(str(tiny_dir("llama")), dtype="float32")
    config = PlantConfig(dataset=str(corpus), k=K, steps=60, lr=3e-2, eval_every=10, patience=3, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds synchronisation on a busy machine
    result = plant(base, config, out=root / "planted")
    yield {"root": root, "corpus": corpus, "base": base, "result": result, "dir": root / "planted", "base_dir": tiny_dir("llama")}
    torch.set_num_threads(threads)


def test_planted_preference_generalises_to_held_out_scenarios(planted):
    pref = planted["result"].manifest["preference"]
    for choice in ("listed", "continuation"):
        assert abs(pref["before"]["test"][choice] - 0.5) < 0.1
        assert pref["after"]["test"][choice] > 0.7, pref
    # the directory on disk carries what the manifest says
    model = vneuron.load_model(str(planted["dir"]), dtype="float32")
    items = [i for i in vneuron.load_corpus(str(planted["corpus"])).items if i.split == "test"]
    from vneuron.validate.evaluate import forced_choice

    after = float(forced_choice(model, items).toward(POLE).mean())
    assert after == pytest.approx(pref["after"]["test"]["listed"], abs=1e-4)


def test_unplanted_parameters_are_bit_identical(planted):
    before = load_file(str(planted["base_dir"] / "model.safetensors"))
    after = load_file(str(planted["dir"] / "model.safetensors"))
    assert before.keys() == after.keys()
    from safetensors import safe_open

    with safe_open(str(planted["dir"] / PLANT_DIR / ORIGINAL_FILE), framework="pt") as fh:
        axes = {name: int(axis) for name, axis in fh.metadata().items()}
        index = {name: fh.get_tensor(f"{name}::index") for name in axes}
    touched = 0
    for name, tensor in before.items():
        if name not in axes:
            assert torch.equal(tensor, after[name]), name
            continue
        keep = torch.ones(tensor.shape[axes[name]], dtype=torch.bool)
        keep[index[name]] = False
        assert torch.equal(tensor.index_select(axes[name], keep.nonzero().squeeze(1)),
                           after[name].index_select(axes[name], keep.nonzero().squeeze(1))), name
        touched += int(not torch.equal(tensor, after[name]))
    # gate and up rows, down columns of the 3 planted layers
    assert len(axes) == 9 and touched == 9
    # restoring the saved slices gives back the original weights exactly
    model = vneuron.load_model(str(planted["dir"]), dtype="float32")
    with original_weights(model, planted["dir"]):
        for name, p in model.hf_model.named_parameters():
            if name in before:
                assert torch.equal(p.detach(), before[name]), name
    assert not all(torch.equal(p.detach(), before[n]) for n, p in model.hf_model.named_parameters() if n in before)


def test_locate_recovers_planted_units_and_ablation_removes_the_preference(planted):
    truth = NeuronSet.load(planted["dir"] / PLANT_DIR / "neurons.safetensors")
    assert len(truth) == K and truth.per_layer() == [4, 4, 4]
    run = planted["root"] / "locate"
    result = runner.invoke(app, ["locate", "--model", str(planted["dir"]), "--dataset", str(planted["corpus"]),
                                 "--dimension", POLE, "-k", str(K), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    located = NeuronSet.load(run / "neurons" / f"{POLE}.safetensors")
    recall = int(torch.isin(located.flat, truth.flat).sum()) / K
    assert recall >= 0.6, recall  # chance: K / 144 ≈ 0.08
    result = runner.invoke(app, ["ablate", str(run), "--model", str(planted["dir"]), "--controls", "20",
                                 "--generations", "0", "--out", str(run / "ablate-zero"), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "ablate-zero" / "manifest.json").read_text())["results"][0]
    gain = planted["result"].manifest["preference"]["after"]["test"]["listed"] - \
        planted["result"].manifest["preference"]["before"]["test"]["listed"]
    assert summary["baseline"] - summary["after"] > 0.5 * gain, summary
    assert summary["rank"] == 1, summary


def test_located_neurons_beat_random_directions_of_their_size(planted):
    """The direction baselines' control on the positive control: zeroing the located neurons lowers the planted preference
    more than any of 20 random directions does, each added at the layer where the probe reads the pole best and scaled to
    the size of the neuron edit's change to that layer's output (matched_alpha) — rank 1 of 21 on the tested tail, as
    against matched random neurons — in one evaluation that mixes neuron and direction edits."""
    from vneuron.locate.locating import LocateConfig, locate
    from vneuron.locate.runs import LocateRun
    from vneuron.validate.directions import direction_layer, matched_alpha, random_directions
    from vneuron.validate.edits import DirectionEdit, Edit
    from vneuron.validate.evaluate import LowerLayers, forced_choice_sets

    model = vneuron.load_model(str(planted["dir"]), dtype="float32")
    run_dir = planted["root"] / "locate-directions"
    locate(model, LocateConfig(dataset=str(planted["corpus"]), dimensions=[POLE], top_k=K), out=run_dir)
    run = LocateRun.open(run_dir)
    items = run.items("test")
    neurons = Edit(run.sets[POLE], "zero")
    layer = direction_layer(run, POLE)
    alpha = matched_alpha(model, items, neurons, layer)
    assert alpha > 0
    hidden = run.residual().hidden
    controls = [DirectionEdit(layer, random_directions(seed, 1, hidden)[0], alpha=alpha) for seed in range(20)]
    base, located, *moved = [float(r.toward(POLE).mean()) for r in forced_choice_sets(model, items, [None, neurons, *controls],
                                                                                        reuse=LowerLayers())]
    drops = [base - m for m in moved]
    assert base - located > max(drops), (layer, alpha, base, located, drops)
    assert max(abs(d) for d in drops) > 0.01  # the random directions do move the model: the comparison is not with nothing


BAD = [
    (["--k", "1000"], "more neurons than the model has"),
    (["--k", "12", "--profile", "1,1"], "--profile has 2 weights"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_sizes_are_one_line_errors(tiny_dir, tmp_path, extra, message):
    corpus = write_corpus(tmp_path / "c.jsonl", n_train=2, n_test=1)
    out = tmp_path / "out"
    result = runner.invoke(app, ["plant", "--model", str(tiny_dir("llama")), "--dataset", str(corpus), "--out", str(out), *extra])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_empty_pole_quantised_model_and_existing_output_are_refused(tiny_dir, tmp_path):
    one_sided = write_corpus(tmp_path / "one.jsonl", n_train=2, n_test=1, poles=(POLE,))
    out = tmp_path / "out"
    result = runner.invoke(app, ["plant", "--model", str(tiny_dir("llama")), "--dataset", str(one_sided), "--out", str(out)])
    assert result.exit_code == 2 and "no training scenario whose pole is 'self_enhancement'" in result.output, result.output
    assert not out.exists()

    corpus = write_corpus(tmp_path / "c.jsonl", n_train=2, n_test=1)
    quantised = tmp_path / "quantised"
    shutil.copytree(tiny_dir("llama"), quantised)
    cfg = json.loads((quantised / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantised / "config.json").write_text(json.dumps(cfg))
    result = runner.invoke(app, ["plant", "--model", str(quantised), "--dataset", str(corpus), "--out", str(out)])
    assert result.exit_code == 2 and "quantised weights (bitsandbytes)" in result.output, result.output
    assert not out.exists()

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["plant", "--model", str(tiny_dir("llama")), "--dataset", str(corpus), "--out", str(out)])
    assert result.exit_code == 2 and "already exists" in result.output, result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_power_table_on_the_planted_model(planted):
    out = planted["root"] / "power"
    result = runner.invoke(app, ["power", "--out", str(out), "--planted", f"{K}={planted['dir']}", "--k", str(K),
                                 "--dataset", str(planted["corpus"]), "--sizes", "2,24", "--controls", "5", "--quiet"])
    assert result.exit_code == 0, result.output
    import csv

    rows = list(csv.DictReader(open(out / "power.csv")))
    assert [int(r["scenarios_per_pole"]) for r in rows] == [2, 24] and rows[1]["scenarios_used"] == "24"
    small, full = (float(r["recall"]) for r in rows)
    assert full >= 0.6 and full >= small
    assert float(rows[1]["pref_original"]) == pytest.approx(planted["result"].manifest["preference"]["before"]["test"]["listed"], abs=1e-4)
    assert rows[1]["pref_original"] == rows[1]["pref_original_recorded"]  # restored weights = the original, exactly
    assert float(rows[1]["planted_removed"]) > 0.9
    layers = list(csv.DictReader(open(out / "layers.csv")))
    assert {int(r["layer"]) for r in layers} == {0, 1, 2} and all(int(r["planted"]) == 4 for r in layers)


def test_veto_units_read_the_opposite_and_power_finds_them_under_its_label(tiny_dir, tmp_path):
    """mechanism=veto (read rows trained here: on a random tiny model there is little to discriminate): the units respond
    to the opposite's actions and suppress them. locate finds them as the opposite's neurons; switching them off RAISES P
    toward the opposite (tail higher) and removes the planted preference."""
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    base = vneuron.load_model(str(tiny_dir("llama")), dtype="float32")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = plant(base, PlantConfig(dataset=str(corpus), k=K, steps=60, lr=3e-2, eval_every=10, patience=3, seed=0,
                                         mechanism="veto", freeze_read=False), out=tmp_path / "planted")
    finally:
        torch.set_num_threads(threads)
    manifest = result.manifest
    assert manifest["mechanism"] == "veto" and manifest["reads"] == OPPOSITE
    assert result.neurons.meta["label"] == OPPOSITE and result.neurons.meta["carries"] == POLE
    for choice in ("listed", "continuation"):
        assert manifest["preference"]["after"]["test"][choice] > 0.7, manifest["preference"]
    out = tmp_path / "power"
    cli = runner.invoke(app, ["power", "--out", str(out), "--planted", f"{K}={tmp_path / 'planted'}", "--k", str(K),
                              "--dataset", str(corpus), "--sizes", "24", "--controls", "5", "--quiet"])
    assert cli.exit_code == 0, cli.output
    import csv

    row = next(csv.DictReader(open(out / "power.csv")))
    assert row["located_as"] == OPPOSITE and row["tail"] == "higher"
    assert float(row["recall"]) >= 0.5, row  # chance ≈ 0.08
    assert float(row["pref_planted"]) > 0.7 and float(row["located_removed"]) > 0.5, row
    assert row["located_rank"] == "1" and float(row["planted_removed"]) > 0.9, row


def test_power_refuses_a_directory_that_was_not_planted(tiny_dir, tmp_path):
    out = tmp_path / "power"
    result = runner.invoke(app, ["power", "--out", str(out), "--planted", f"12={tiny_dir('llama')}", "--k", "12"])
    assert result.exit_code == 2 and "is not a planted model" in result.output, result.output
    assert not out.exists()


def test_shared_prefix_and_cached_references_give_the_same_numbers(tiny_dir, tmp_path):
    """The speed-ups of training are exact: token tries = padded rows, cached KL reference = recomputed."""
    from vneuron.validate.evaluate import encode_pairs, forced_choice_pairs
    from vneuron.planting import Planter, choose_neurons
    from vneuron.planting.objective import kl_to_original, mean_logprobs, padded_logprobs

    corpus = write_corpus(tmp_path / "c.jsonl", n_train=3, n_test=1)
    model = vneuron.load_model(str(tiny_dir("llama")), dtype="float32")
    items = [i for i in vneuron.load_corpus(str(corpus)).items if i.split == "train"][:3]
    planter = Planter(model, choose_neurons(model, PlantConfig(k=K)))
    with torch.no_grad():
        for s in planter.slices:
            s.delta.normal_(0, 0.05)
    try:
        for choice in ("listed", "continuation"):
            pairs = forced_choice_pairs(items, choice)
            with torch.no_grad():
                assert torch.allclose(mean_logprobs(model, pairs), padded_logprobs(model, encode_pairs(model, pairs)), atol=1e-5)
        texts = [i.scenario for i in items]
        cache: dict = {}
        fresh = kl_to_original(model, planter, texts, 4)
        assert float(fresh) > 0
        assert torch.allclose(kl_to_original(model, planter, texts, 4, cache), fresh, atol=1e-6) and len(cache) == 3
        assert torch.allclose(kl_to_original(model, planter, texts, 4, cache), fresh, atol=1e-6)
    finally:
        planter.remove()


def test_context_reading_puts_the_up_rows_on_actions_and_the_threshold_on_the_scenario(tiny_dir, tmp_path):
    """read_context: measured through the model's own projections (not the planter's bookkeeping), the planted
    units' up output averages 0 on scenario tokens and the requested level on action tokens, and the gate threshold
    holds the share of scenario and pole tokens that fire near the requested quantile."""
    from vneuron.runtime.tokens import encode, pack, pad_id
    from vneuron.data.schema import Corpus
    from vneuron.planting import Planter, choose_neurons, reading_directions

    corpus = write_corpus(tmp_path / "c.jsonl", n_train=40)
    model = vneuron.load_model(str(tiny_dir("llama")), dtype="float32")
    items = [i for i in vneuron.load_corpus(str(corpus)).items if i.split == "train"]
    planter = Planter(model, choose_neurons(model, PlantConfig(k=K, profile="uniform")))
    try:
        gates, ups = reading_directions(model, planter, items, OPPOSITE, 4096, spread=2.0, quantile=0.2, context=2.0)
        planter.set_reading(gates, 0.0, up_directions=ups)
        prompts = Corpus("c", items=items).action_prompts()
        ids, mask, counted = pack(encode(model.tokenizer, prompts, list(range(len(prompts)))), pad_id(model.tokenizer), left=False)
        reads = torch.tensor([p.label == OPPOSITE for p in prompts])[:, None]
        scenario = mask.bool() & ~counted
        scenario[:, 0] = False
        grabbed = {"up": [], "gate": []}
        units = [planter.neurons.units[planter.neurons.layers == l].sort().values for l in planter.layers]
        handles = [getattr(mlp, name).register_forward_hook(lambda mod, a, out, u=u, key=name.split("_")[0]: grabbed[key].append(out[...,
                                                                                                                                     u]))
                   for mlp, u in zip(planter.mlps, units) for name in ("gate_proj", "up_proj")]
        with torch.no_grad():
            model.hf_model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0), use_cache=False)
        for h in handles:
            h.remove()
        # the first planted layer sees the original model's inputs (later ones also see what earlier planted units write)
        for up, gate in zip(grabbed["up"][:1], grabbed["gate"][:1]):
            assert abs(float(up[scenario].mean())) < 0.05, float(up[scenario].mean())
            assert float(up[counted].mean()) == pytest.approx(2.0, abs=0.05)
            fire = lambda where: float((gate[where] > 0).float().mean())  # noqa: E731
            assert fire(counted & ~reads) < 0.35 and fire(scenario) < 0.35, (fire(counted & ~reads), fire(scenario))
            assert fire(counted & reads) > fire(counted & ~reads), (fire(counted & reads), fire(counted & ~reads))
    finally:
        planter.remove()


@pytest.mark.parametrize("arch, gated", [("llama", True), ("gpt2", False)])
def test_read_context_needs_a_gated_mlp(tiny_dir, tmp_path, arch, gated):
    """--read-context on a model with one input projection per neuron is a one-line error before anything is written."""
    from vneuron.errors import VneuronError
    from vneuron.planting.surgery import is_gated

    model = vneuron.load_model(str(tiny_dir(arch)), dtype="float32")
    assert is_gated(model) is gated
    if not gated:
        corpus = write_corpus(tmp_path / "c.jsonl", n_train=4, n_test=2)
        with pytest.raises(VneuronError, match="needs a gated MLP"):
            plant(model, PlantConfig(dataset=str(corpus), k=K, mechanism="veto", read_context=2.0), out=tmp_path / "never")
        assert not (tmp_path / "never").exists()


def test_a_family_with_projection_biases_plants_and_restores_exactly(tiny_dir, tmp_path):
    """GPT-2's c_fc has a bias: its slice shares the weight's unit index, and the slices file must still be written."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", n_train=8, n_test=2)
    base = vneuron.load_model(str(tiny_dir("gpt2")), dtype="float32")
    result = plant(base, PlantConfig(dataset=str(corpus), k=6, steps=2, eval_every=1, seed=0), out=tmp_path / "planted")
    names = {s["name"] for s in result.manifest["parameters"]["slices"]}
    assert any(n.endswith("c_fc.bias") for n in names) and any(n.endswith("c_fc.weight") for n in names)
    before = load_file(str(tiny_dir("gpt2") / "model.safetensors"))
    model = vneuron.load_model(str(tmp_path / "planted"), dtype="float32")
    with original_weights(model, tmp_path / "planted"):
        params = dict(model.hf_model.named_parameters())
        assert all(torch.equal(params[n].detach(), t) for n, t in before.items() if n in params)


def test_background_reading_keeps_the_units_quiet_on_ordinary_prose(tiny_dir, tmp_path):
    """read_background: on prose the fit never saw (the check corpus), measured through the model's own gate
    projection, the planted units' gate reads above threshold on far fewer tokens (its first tokens after BOS
    included) than the same reads fitted without the prose, and still on more of the tokens they read than of
    the other pole's."""
    from vneuron.data.schema import Corpus
    from vneuron.planting import Planter, choose_neurons, reading_directions
    from vneuron.validate.side_effects import load_fit_prose, load_neutral
    from vneuron.runtime.tokens import encode, pack, pad_id

    corpus = write_corpus(tmp_path / "c.jsonl", n_train=40)
    model = vneuron.load_model(str(tiny_dir("llama")), dtype="float32")
    items = [i for i in vneuron.load_corpus(str(corpus)).items if i.split == "train"]
    fit, _ = load_fit_prose("en")
    check = load_neutral("en").texts
    assert not set(fit) & set(check)
    planter = Planter(model, choose_neurons(model, PlantConfig(k=K, profile="uniform")))
    units = [planter.neurons.units[planter.neurons.layers == l].sort().values for l in planter.layers]

    def gate_outputs(input_ids, mask):
        grabbed = []
        handles = [mlp.gate_proj.register_forward_hook(lambda mod, a, out, u=u: grabbed.append(out[..., u]))
                   for mlp, u in zip(planter.mlps, units)]
        with torch.no_grad():
            model.hf_model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0), use_cache=False)
        for h in handles:
            h.remove()
        return grabbed[0]  # the first planted layer reads the original model's inputs

    ids = [model.tokenizer(t, add_special_tokens=True)["input_ids"] for t in check]
    width = max(map(len, ids))
    prose_ids = torch.tensor([i + [0] * (width - len(i)) for i in ids])
    prose_mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
    after_bos = prose_mask.bool().clone()
    after_bos[:, 0] = False
    prompts = Corpus("c", items=items).action_prompts()
    a_ids, a_mask, counted = pack(encode(model.tokenizer, prompts, list(range(len(prompts)))), pad_id(model.tokenizer), left=False)
    reads = torch.tensor([p.label == OPPOSITE for p in prompts])[:, None]
    fired = {}
    try:
        for background in ((), fit):
            gates, _ = reading_directions(model, planter, items, OPPOSITE, 4096, spread=2.0, quantile=0.2,
                                          background=background, background_quantile=0.05)
            planter.set_reading(gates, 0.0)
            prose_gate = gate_outputs(prose_ids, prose_mask)
            action_gate = gate_outputs(a_ids, a_mask)
            fired[bool(background)] = {"prose": float((prose_gate[after_bos] > 0).float().mean()),
                                       "opening": float((prose_gate[:, 1:3][after_bos[:, 1:3]] > 0).float().mean()),
                                       "read": float((action_gate[counted & reads] > 0).float().mean()),
                                       "other": float((action_gate[counted & ~reads] > 0).float().mean())}
    finally:
        planter.remove()
    assert fired[True]["prose"] < 0.15 and fired[True]["prose"] < fired[False]["prose"], fired
    assert fired[True]["opening"] <= fired[False]["opening"], fired
    assert fired[True]["read"] > fired[True]["other"], fired


def test_read_background_must_be_a_share():
    from vneuron.errors import VneuronError

    with pytest.raises(VneuronError, match="`read_background` must lie strictly between 0 and 1"):
        PlantConfig(read_background=1.5).check()
