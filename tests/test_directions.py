"""Direction baselines: a direction edit moves the residual stream as its formula says (checked against plain forward
hooks) in the forward pass and at every generation step, mixes with neuron edits in one evaluation, locally and through
the remote simulation; the budget α is the measured size of a neuron edit (checked by hand); a planted direction is
recovered by the probes; and the bad inputs are one-line errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vneuron.data import load_corpus
from vneuron.data.schema import Prompt
from vneuron.errors import VneuronError
from vneuron.locate.capture import CaptureConfig, capture
from vneuron.locate.locating import LocateConfig, locate, prepare_corpus
from vneuron.locate.probes import auroc, logistic_fit, probe_record
from vneuron.locate.runs import LocateRun
from vneuron.locate.scoring import NeuronSet
from vneuron.models.sites import layer_modules
from vneuron.runtime.remote import RemoteTarget
from vneuron.validate.directions import (direction_edit, matched_alpha, mean_difference, random_direction_edit,
                                         random_directions)
from vneuron.validate.edits import DirectionEdit, Edit, apply, plan
from vneuron.validate.evaluate import (LowerLayers, continuation_logprobs, continuation_logprobs_sets, encode_pairs,
                                       forced_choice, forced_choice_pairs, forced_choice_sets, generate)

from .conftest import ARCHS
from .reference import hook_residual
from .test_edits import IDS, hook_edit

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PAIRS = [("you choose to", " help the community"), ("you choose to", " save money"), ("what would you", " do ?"),
         ("the manager would", " follow the rules and keep the old plan")]


def shifted(h: torch.Tensor, edit: DirectionEdit) -> torch.Tensor:
    """The formula, written out: x − p·(x·d̂)d̂ + α·d̂ with d̂ = d / ‖d‖."""
    d = (edit.direction.double() / edit.direction.double().norm()).to(h.dtype)
    return h - float(edit.project) * (h @ d)[..., None] * d + edit.alpha * d


def hook_direction(model, edit: DirectionEdit, first_call_only: bool = False):
    """An independent implementation of a direction edit: a forward hook on the block that returns a new output."""
    block = layer_modules(model.hf_model, model.arch)[edit.layer]
    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        if first_call_only and calls["n"] > 1:
            return output
        if isinstance(output, tuple):
            return (shifted(output[0], edit),) + tuple(output[1:])
        return shifted(output, edit)

    return [block.register_forward_hook(hook)]


def hook_logprobs(model, pairs, handles_of=lambda: []) -> torch.Tensor:
    """Mean log-probability of each continuation's tokens, one pair at a time without padding, under hooks."""
    out = []
    handles = handles_of()
    try:
        for e in encode_pairs(model, pairs):
            with torch.no_grad():
                logits = model.hf_model(torch.tensor([e.ids])).logits[0].double()  # the model's own head, soft-cap and all
            logp = logits[:-1].log_softmax(-1).gather(1, torch.tensor(e.ids[1:])[:, None]).squeeze(1)
            counted = torch.tensor(e.counted[1:])
            out.append(float(logp[counted].mean()))
    finally:
        for h in handles:
            h.remove()
    return torch.tensor(out, dtype=torch.float64)


def some_direction(model, seed: int = 1, alpha: float = 4.0, project: bool = False, layer: int = 1) -> DirectionEdit:
    return DirectionEdit(layer, 3.0 * random_directions(seed, 1, model.arch.hidden(model.config))[0], alpha=alpha, project=project)


def neurons(model) -> NeuronSet:
    flat = torch.tensor([0 * model.width + 3, 0 * model.width + 7, 1 * model.width + 2, 2 * model.width + 40])
    return NeuronSet.from_flat(flat, torch.zeros(model.n_layers, model.width), "gate")


@pytest.mark.parametrize("arch", ARCHS)
def test_a_direction_edit_moves_the_block_output_as_its_formula_says(tiny_model, arch):
    model = tiny_model(arch)
    blocks = layer_modules(model.lm, model.arch)
    inputs = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}
    with torch.inference_mode(), model.lm.trace(inputs):
        plain = blocks[1].output.save()
        plain_logits = model.lm.output.logits.save()
    plain = plain[0] if isinstance(plain, tuple) else plain
    for project, alpha in ((False, 4.0), (True, 0.0), (True, -2.0)):
        edit = some_direction(model, project=project, alpha=alpha)
        with torch.inference_mode(), model.lm.trace(inputs) as tracer:
            cache = tracer.cache(modules=[blocks[1]], include_output=True)
            apply(model.lm, plan(model, edit))
            logits = model.lm.output.logits.save()
        edited = cache[blocks[1].path].output
        edited = edited[0] if isinstance(edited, tuple) else edited
        torch.testing.assert_close(edited, shifted(plain, edit))
        if project:  # nothing of d̂ is left at any position, but α·d̂
            torch.testing.assert_close(edited @ edit.unit, torch.full(edited.shape[:2], alpha, dtype=edited.dtype))
        handles = hook_direction(model, edit)
        try:
            with torch.no_grad():
                hook_logits = model.hf_model(IDS).logits
        finally:
            for h in handles:
                h.remove()
        torch.testing.assert_close(logits, hook_logits)
        assert not torch.allclose(logits, plain_logits)


@pytest.mark.parametrize("arch,seed", [("llama", 2), ("gpt2", 2), ("qwen2", 2)])  # directions whose texts never reach EOS
def test_direction_edits_apply_at_every_generation_step(tiny_model, arch, seed):
    model = tiny_model(arch)
    edit = some_direction(model, seed=seed, alpha=30.0)
    prompts = ["you choose to help the community", "what would you do"]
    ours = generate(model, prompts, edit, max_new_tokens=6, batch_size=2)

    def reference(handles_of):
        out = []
        for text in prompts:
            ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
            handles = handles_of()
            try:
                gen = model.hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                              pad_token_id=0, eos_token_id=None)
            finally:
                for h in handles:
                    h.remove()
            out.append(model.tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip())
        return out

    assert ours == reference(lambda: hook_direction(model, edit))
    assert ours != reference(lambda: [])  # the edit matters …
    assert ours != reference(lambda: hook_direction(model, edit, first_call_only=True))  # … at every step, not just the prompt


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_forced_choice_scores_direction_edits_mixed_with_neuron_edits(tiny_model, arch):
    model = tiny_model(arch)
    direction = some_direction(model)
    neuron = Edit(neurons(model), "scale", gamma=2.5)  # the factor tests/test_edits.py's hook implementation applies
    want = hook_logprobs(model, PAIRS, lambda: hook_direction(model, direction))
    torch.testing.assert_close(continuation_logprobs(model, PAIRS, direction), want)  # shared-prefix tries
    torch.testing.assert_close(continuation_logprobs(model, PAIRS, direction, shared_prefix=False), want)  # padded rows
    both = hook_logprobs(model, PAIRS, lambda: hook_direction(model, direction) + hook_edit(model, neuron))
    torch.testing.assert_close(continuation_logprobs(model, PAIRS, [neuron, direction]), both)
    assert not torch.allclose(want, hook_logprobs(model, PAIRS))
    # one call, four edit sets; the layers below each set's lowest edit run once per batch (LowerLayers)
    items = [i for i in load_corpus(EXAMPLES / "corpus.jsonl").items][:4]
    upper = some_direction(model, seed=2, layer=2)
    sets = [upper, neuron, [neuron, direction], None, random_direction_edit(upper, 7)]
    reuse = LowerLayers()
    together = forced_choice_sets(model, items, sets, reuse=reuse)
    for got, edit in zip(together, sets):
        torch.testing.assert_close(got.logprob, forced_choice(model, items, edit).logprob)
    # the random direction at layer 2 reused the upper direction's lower layers (not with Gemma-3's 32-token window: no tries)
    assert reuse.hits >= 1 if arch != "gemma3" else reuse.hits == reuse.misses == 0


def test_remote_simulation_of_direction_edits_and_their_budget_equals_local(tiny_model):
    model = tiny_model("llama")
    simulated = replace(model, remote=RemoteTarget("local", blocking=True))
    direction = some_direction(model)
    neuron = Edit(neurons(model), "zero")
    sets = [direction, [neuron, direction], random_direction_edit(direction, 3), None]
    local = continuation_logprobs_sets(model, PAIRS, sets, batch_tokens=16)
    remote = continuation_logprobs_sets(simulated, PAIRS, sets, batch_tokens=16)
    for r, l in zip(remote, local):
        torch.testing.assert_close(r, l)
    assert not torch.allclose(local[0], local[3])
    items = load_corpus(EXAMPLES / "corpus.jsonl").items[:3]
    a = matched_alpha(model, items, neuron, 1, batch_tokens=64)
    assert matched_alpha(simulated, items, neuron, 1, batch_tokens=64) == pytest.approx(a, rel=1e-9)
    generated = generate(simulated, ["you choose to help"], direction, max_new_tokens=4)
    assert generated == generate(model, ["you choose to help"], direction, max_new_tokens=4)


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_matched_alpha_is_the_mean_change_of_the_residual_by_hand(tiny_model, arch):
    """By hand: each forced-choice prompt run alone with plain hooks, with and without the neuron edit; ‖Δh‖₂ of block L's
    output at each option token, averaged over every such token of every prompt."""
    model = tiny_model(arch)
    items = load_corpus(EXAMPLES / "corpus.jsonl").items[:3]
    neuron = Edit(neurons(model), "zero")
    pairs = forced_choice_pairs(items)
    for layer in (0, 1):
        norms = []
        for e in encode_pairs(model, pairs):
            outputs = []
            for handles_of in (lambda: [], lambda: hook_edit(model, neuron)):
                seen = []
                block = layer_modules(model.hf_model, model.arch)[layer]
                handles = handles_of() + [block.register_forward_hook(
                    lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o)[0].double()))]
                try:
                    with torch.no_grad():
                        model.hf_model(torch.tensor([e.ids]))
                finally:
                    for h in handles:
                        h.remove()
                outputs.append(seen[0])
            change = (outputs[1] - outputs[0]).norm(dim=-1)
            norms.append(change[torch.tensor(e.counted)])
        by_hand = float(torch.cat(norms).mean())
        assert by_hand > 0
        assert matched_alpha(model, items, neuron, layer, batch_tokens=48) == pytest.approx(by_hand, rel=1e-9)
    # an edit whose neurons all lie above the layer does not change it; a direction edit's own size is its α
    above = Edit(NeuronSet.from_flat(torch.tensor([2 * model.width + 1]), torch.zeros(model.n_layers, model.width), "gate"), "zero")
    assert matched_alpha(model, items, above, 1) == 0.0
    assert matched_alpha(model, items, some_direction(model, alpha=2.5), 1) == pytest.approx(2.5, rel=1e-9)
    assert matched_alpha(model, items, some_direction(model, alpha=2.5), 2) > 0  # and it carries on to the next block


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_edit_sizes_on_tries_equal_padded_rows_and_leave_the_layer_output_for_the_arms(tiny_model, arch):
    """The sizes read over the evaluation's token tries (a shared token once, weighted by the pairs counting it) equal
    the padded reference path; their unedited pass leaves the output of block L in the store, equal to what LowerLayers
    would compute, so the direction edits that follow start there without a pass of their own."""
    from vneuron.validate.directions import edit_sizes
    from vneuron.validate.evaluate import LowerLayers, forced_choice_sets

    model = tiny_model(arch)
    items = load_corpus(EXAMPLES / "corpus.jsonl").items[:4]
    neuron, direction = Edit(neurons(model), "zero"), some_direction(model)
    layer = 1
    reuse = LowerLayers()
    tries = edit_sizes(model, items, neuron, layer, [direction.unit], batch_tokens=64, reuse=reuse)
    padded = edit_sizes(model, items, neuron, layer, [direction.unit], batch_tokens=64, shared_prefix=False)
    assert tries[0] > 0 and tries == pytest.approx(padded, rel=1e-9)
    if arch == "gemma3":  # a sliding window shorter than a prompt: no tries (as for the evaluation), nothing kept
        assert not reuse.saved
        return
    assert len(reuse.saved) > 0 and reuse.misses == 0
    kept = dict(reuse.saved)
    fresh = LowerLayers()
    after = forced_choice_sets(model, items, [direction], batch_tokens=64, reuse=reuse)[0].p_pole
    assert reuse.misses == 0 and reuse.hits == len(kept)  # every batch started from the kept output
    assert torch.equal(after, forced_choice_sets(model, items, [direction], batch_tokens=64, reuse=fresh)[0].p_pole)
    for key, hidden in fresh.saved.items():
        torch.testing.assert_close(kept[key], hidden, rtol=0, atol=0)


def test_a_planted_direction_is_recovered_by_the_probes(tiny_model):
    """A known vector v added to block 1's output wherever the input token is one of the pole's words (through its MLP's
    output, which a Llama block adds to the residual stream as it is): the mean difference at layer 1 points along v
    (cosine ≥ 0.9) and both held-out probes separate the pole's prompts (AUROC ≈ 1)."""
    model = tiny_model("llama")
    pole_words = "help share others community nature protect friend neighbour family honest".split()
    other_words = "win power money lead manager keep spend save risk change".split()
    gen = torch.Generator().manual_seed(0)
    prompts = []
    for n in range(16):
        for label, words in (("pole", pole_words), ("opposite", other_words)):
            picks = [words[int(i)] for i in torch.randint(0, len(words), (3,), generator=gen)]
            scenario = "the team would plan the old work . what would you do ?"
            text = f"{scenario} {' '.join(picks)}"
            prompts.append(Prompt(text, label, f"g{n}", f"p{n}-{label}", (len(scenario) + 1, len(text))))  # the three words count
    marker = torch.tensor(model.tokenizer.convert_tokens_to_ids(pole_words))
    hidden = model.arch.hidden(model.config)
    plain = capture(model, prompts, CaptureConfig(folds=2), labels=["pole", "opposite"]).residual
    v = random_directions(5, 1, hidden)[0] * 10 * float(plain.mean("pole")[1].norm())
    ids_now = {}
    embed = model.hf_model.get_input_embeddings().register_forward_pre_hook(lambda m, i: ids_now.update(ids=i[0]))
    mlp = getattr(layer_modules(model.hf_model, model.arch)[1], model.arch.mlp)
    plant = mlp.register_forward_hook(
        lambda m, i, o: o + torch.isin(ids_now["ids"], marker)[..., None].to(o.dtype) * v.to(o.dtype))
    try:
        residual = capture(model, prompts, CaptureConfig(folds=2, batch_tokens=64), labels=["pole", "opposite"]).residual
    finally:
        embed.remove()
        plant.remove()
    d = residual.difference("pole", "opposite")[1]
    cosine = float(d @ v / (d.norm() * v.norm()))
    assert cosine >= 0.9, cosine
    assert float(plain.difference("pole", "opposite")[1] @ v / (plain.difference("pole", "opposite")[1].norm() * v.norm())) < 0.5
    record = probe_record(residual, [("pole", "opposite")], l2=0.01, draws=200)
    entry = record["poles"]["pole"]
    assert sorted(set(residual.prompt_folds.tolist())) == [0, 1] and entry["prompts"] == [16, 16]
    for probe in ("mean_diff", "logistic"):
        assert entry[probe]["auroc"][1] >= 0.99, entry[probe]
        assert entry[probe]["ci"][1][0] >= 0.95


def test_probe_pieces_on_known_numbers():
    """AUROC counts pairs (ties half); the logistic probe reaches its optimum (zero gradient) in both of its forms."""
    pos, neg = torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([2.0, 0.0, 2.0])
    assert float(auroc(pos, neg)) == pytest.approx((3 + 0.5 * 4 + 1 * 0 + 3) / 12)  # by hand: pairs above, ties half
    gen = torch.Generator().manual_seed(0)
    for n, k in ((40, 6), (8, 30)):  # weights (k < n) and the training rows' span (k ≥ n)
        x = torch.randn(n, 2, k, generator=gen, dtype=torch.float64)
        y = (x[:, 0, 0] + 0.5 * torch.randn(n, generator=gen, dtype=torch.float64)) > 0
        w, b, centre, scale = logistic_fit(x, y, 0.05)
        w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
        z = (x - centre) / scale
        logits = torch.einsum("nlk,lk->nl", z, w) + b
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y.double()[:, None].expand(-1, 2), reduction="none")
                .mean(0) + 0.025 * w.square().sum(1)).sum()
        loss.backward()
        assert float(w.grad.abs().max()) < 1e-8 and float(b.grad.abs().max()) < 1e-8


@pytest.fixture(scope="module")
def run_dir(tiny_dir, tmp_path_factory):
    from vneuron.models.loading import load_model

    model = load_model(str(tiny_dir("llama")), dtype="float64")
    out = tmp_path_factory.mktemp("directions") / "run"
    locate(model, LocateConfig(dataset=str(EXAMPLES / "corpus.jsonl"), split="all", top_k=5), out=out)
    return out


def test_a_direction_from_a_run_is_its_poles_mean_difference(run_dir, tiny_model):
    run = LocateRun.open(run_dir)
    model = tiny_model("llama")
    pole, opposite = "conservation", "openness_to_change"
    prompts = prepare_corpus(LocateConfig(dataset=str(EXAMPLES / "corpus.jsonl"), split="all")).action_prompts()
    labels = run.stats.labels
    n, sums, _ = hook_residual(model, prompts, labels, folds=2)
    k, j = labels.index(pole), labels.index(opposite)
    want = sums[k].sum(0) / n[k].sum() - sums[j].sum(0) / n[j].sum()
    torch.testing.assert_close(mean_difference(run, pole), want, rtol=1e-6, atol=1e-9)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    peak = manifest["probes"]["poles"][pole]["mean_diff"]["peak"]["layer"]
    edit = direction_edit(run, pole, alpha=-2.0)
    assert edit.layer == peak and edit.alpha == -2.0 and not edit.project
    torch.testing.assert_close(edit.unit, want[peak] / want[peak].norm())
    removed = direction_edit(run, pole, layer=0, mode="project")
    assert removed.project and removed.alpha == 0.0 and removed.layer == 0
    a, b = random_directions(3, 4, 32), random_directions(3, 4, 32)
    assert torch.equal(a, b) and torch.allclose(a.norm(dim=1), torch.ones(4, dtype=torch.float64))
    assert not torch.allclose(a, random_directions(4, 4, 32))
    control = random_direction_edit(edit, 11)
    assert (control.layer, control.alpha, control.project) == (edit.layer, edit.alpha, edit.project)
    torch.testing.assert_close(control.unit, random_directions(11, 1, 32)[0])
    # re-selection keeps the probes and refers to the parent's residual file
    child = locate(None, LocateConfig(top_k=3, dimensions=[pole]), from_run=run_dir, out=run_dir.parent / "child")
    assert child.manifest["probes"]["poles"] == {pole: manifest["probes"]["poles"][pole]}
    assert torch.equal(mean_difference(LocateRun.open(run_dir.parent / "child"), pole), mean_difference(run, pole))
    refit = locate(None, LocateConfig(top_k=3, probe_l2=1.0), from_run=run_dir, out=run_dir.parent / "refit")
    assert refit.manifest["probes"]["logistic"]["l2"] == 1.0
    assert refit.manifest["probes"]["poles"].keys() == manifest["probes"]["poles"].keys()


def test_bad_inputs_are_one_line_errors(run_dir, tiny_model, tmp_path):
    run = LocateRun.open(run_dir)
    model = tiny_model("llama")
    for layer in (3, -1, 99):
        with pytest.raises(VneuronError, match=r"Direction layer .* is out of range.*layers 0 to 2") as caught:
            direction_edit(run, "conservation", layer=layer)
        assert "\n" not in caught.value.one_line() and "Pass a layer from 0 to 2" in caught.value.one_line()
        with pytest.raises(VneuronError, match="out of range"):
            matched_alpha(model, run.items("all")[:2], Edit(neurons(model), "zero"), layer)
        with pytest.raises(VneuronError, match="out of range"):
            plan(model, DirectionEdit(layer, torch.ones(32)))
    with pytest.raises(VneuronError, match="Unknown direction mode 'flip'"):
        direction_edit(run, "conservation", mode="flip")
    with pytest.raises(VneuronError, match="has no length"):
        DirectionEdit(1, torch.zeros(32))
    with pytest.raises(VneuronError, match="no pole 'kindness'"):
        direction_edit(run, "kindness")
    old = tmp_path / "old-run"  # a run from before residual means: no file, nothing in its manifest
    shutil.copytree(run_dir, old)
    (old / "residual.safetensors").unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k not in ("residual", "probes")}))
    for call in (lambda: LocateRun.open(old).residual(), lambda: direction_edit(LocateRun.open(old), "conservation"),
                 lambda: mean_difference(LocateRun.open(old), "conservation", 1),
                 lambda: locate(None, LocateConfig(top_k=3, probe_l2=0.5), from_run=old, out=tmp_path / "never")):
        with pytest.raises(VneuronError, match="located before residual means were recorded") as caught:
            call()
        assert "Rerun `vneuron locate`" in caught.value.one_line() and "`--from` cannot add them" in caught.value.one_line()
    assert not (tmp_path / "never").exists()
    located = locate(None, LocateConfig(top_k=3), from_run=old, out=tmp_path / "reselected")  # re-selection alone still works
    assert "probes" not in located.manifest
    gone = tmp_path / "gone-file"
    shutil.copytree(run_dir, gone)
    (gone / "residual.safetensors").unlink()
    with pytest.raises(VneuronError, match="records residual statistics in .*missing"):
        LocateRun.open(gone).residual()
