"""Each edit mode (every record of ``vneuron.config.EDIT_MODES``) changes exactly the chosen units, in the forward
pass and at every generation step, as an independent implementation of its formula says, and runs an ablation
end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vneuron.config import EDIT_MODES
from vneuron.validate.edits import Edit, apply, edit_from_stats, plan
from vneuron.validate.evaluate import generate
from vneuron.models.sites import layer_modules, site_module
from vneuron.locate.scoring import NeuronSet

IDS = torch.tensor([[1, 5, 6, 7, 8, 9, 10], [1, 11, 12, 13, 14, 15, 16]])


def neuron_set(model, site="gate"):
    flat = torch.tensor([0 * model.width + 3, 0 * model.width + 7, 1 * model.width + 2, 2 * model.width + 40])
    return NeuronSet.from_flat(flat, torch.zeros(model.n_layers, model.width), site)


def make_edit(model, mode, site="gate"):
    values = torch.linspace(-1, 1, model.n_layers * model.width, dtype=torch.float64).reshape(model.n_layers, model.width)
    record = EDIT_MODES[mode]
    return Edit(neuron_set(model, site), mode, gamma=2.5, values=values if record.values or mode == "set" else None,
                boost=values.abs() if record.gate else None)


def expected(mode, a, layer, unit, edit):
    if mode == "zero":
        return torch.zeros_like(a)
    if mode == "clamp":
        return a.clamp(max=0)
    if mode == "scale":
        return 2.5 * a
    v = float(edit.values[layer, unit])
    if mode in ("mean", "set"):
        return torch.full_like(a, v)
    if mode == "add":
        return a + 2.5 * v * torch.sigmoid(torch.tensor(10 * (abs(v) - 0.15), dtype=torch.float64)).item()
    raise AssertionError(f"a new edit mode {mode!r}: write its formula here, independently of its record")


def hook_edit(model, edit):
    """An independent implementation of the same edit with plain forward hooks."""
    handles = []
    for layer, block in enumerate(layer_modules(model.hf_model, model.arch)):
        units = edit.neurons.units[edit.neurons.layers == layer]
        if not len(units):
            continue
        module = site_module(block, model.arch, edit.site)

        def change(t, layer=layer, units=units):
            t = t.clone()
            for u in units.tolist():
                t[..., u] = expected(edit.mode, t[..., u], layer, u, edit)
            return t

        if edit.site == "gate":
            handles.append(module.register_forward_hook(lambda m, i, o, f=change: f(o)))
        else:
            handles.append(module.register_forward_pre_hook(lambda m, i, f=change: (f(i[0]),) + tuple(i[1:])))
    return handles


def site_values(model, edit):
    """Site tensors after the edit (nnsight records cached values post-intervention) and logits."""
    modules = [site_module(b, model.arch, edit.site) for b in layer_modules(model.lm, model.arch)]
    with torch.inference_mode(), model.lm.trace({"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}) as tracer:
        cache = tracer.cache(modules=modules, include_inputs=edit.site == "down_in", include_output=edit.site == "gate")
        apply(model.lm, plan(model, edit))
        logits = model.lm.output.logits.save()
    entries = [cache[m.path] for m in modules]
    saved = [e.output if edit.site == "gate" else e.inputs[0][0] for e in entries]
    return saved, logits


@pytest.mark.parametrize("mode", list(EDIT_MODES))
@pytest.mark.parametrize("site", ["gate", "down_in"])
def test_edit_changes_exactly_the_chosen_units(tiny_model, mode, site):
    model = tiny_model("llama")
    edit = make_edit(model, mode, site)
    plain, plain_logits = site_values(model, Edit(neuron_set(model, site), "scale", gamma=1.0))
    edited, logits = site_values(model, edit)
    # layer 0 is the first edited layer: chosen units follow the formula, all others are untouched
    chosen = [3, 7]
    for u in range(model.width):
        want = expected(mode, plain[0][..., u], 0, u, edit) if u in chosen else plain[0][..., u]
        torch.testing.assert_close(edited[0][..., u], want)
    # the whole forward agrees with an independent hook implementation
    handles = hook_edit(model, edit)
    try:
        with torch.no_grad():
            hook_logits = model.hf_model(IDS).logits
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(logits, hook_logits)
    if mode != "clamp":  # clamping may leave a unit that is already ≤ 0 unchanged
        assert not torch.allclose(logits, plain_logits)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generation_edits_apply_at_every_step(tiny_model, arch):
    model = tiny_model(arch)
    flat = torch.arange(0, model.n_layers * model.width, 3)  # a third of all neurons: a strong edit
    edit = Edit(NeuronSet.from_flat(flat, torch.zeros(model.n_layers, model.width), "gate"), "scale", gamma=-3.0)
    prompts = ["you choose to help the community", "what would you do"]
    ours = generate(model, prompts, edit, max_new_tokens=6, batch_size=2)

    def reference(edited: bool, first_step_only: bool = False):
        out = []
        for text in prompts:
            ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
            calls = {"n": 0}
            handles = []
            if edited:
                for layer, block in enumerate(layer_modules(model.hf_model, model.arch)):
                    units = edit.neurons.units[edit.neurons.layers == layer]

                    def hook(m, i, o, units=units, layer=layer):
                        if layer == 0:
                            calls["n"] += 1
                        if first_step_only and calls["n"] > 1:
                            return o
                        o = o.clone()
                        o[..., units] *= -3.0
                        return o

                    handles.append(site_module(block, model.arch, "gate").register_forward_hook(hook))
            try:
                gen = model.hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                              pad_token_id=0, eos_token_id=None)
            finally:
                for h in handles:
                    h.remove()
            out.append(model.tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip())
        return out

    assert ours == reference(edited=True)
    assert ours != reference(edited=False)  # the edit matters …
    assert ours != reference(edited=True, first_step_only=True)  # … at every step, not just the prompt


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def locate_run(tmp_path_factory, tiny_dir):
    from typer.testing import CliRunner

    from vneuron.cli import app

    run = tmp_path_factory.mktemp("modes") / "run"
    located = CliRunner().invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"),
                                       "--split", "all", "-k", "6", "--out", str(run), "-q"])
    assert located.exit_code == 0, located.output
    return run


@pytest.mark.parametrize("mode", list(EDIT_MODES))
def test_every_edit_mode_runs_an_ablation_end_to_end(locate_run, tmp_path, mode):
    """A record is enough for a mode to work everywhere: the CLI accepts it, edit_from_stats finds what it needs in a
    locate run, the sequential controls pick its tail, and the manifest records it."""
    from typer.testing import CliRunner

    from vneuron.cli import app
    from vneuron.locate.runs import LocateRun

    record = EDIT_MODES[mode]
    run = LocateRun.open(locate_run)
    edit = edit_from_stats(run.sets["conservation"], mode, run.stats, gamma=2.0, pole="conservation", opposite="openness_to_change")
    assert [(e.alpha.shape, e.beta.shape) for e in edit.layers] == [(e.units.shape, e.units.shape) for e in edit.layers]
    gamma = ["--gamma", "2"] if record.dose else []
    out = tmp_path / mode
    result = CliRunner().invoke(app, ["ablate", str(locate_run), "--mode", mode, *gamma, "--dimension", "conservation",
                                      "--controls", "2", "--split", "all", "--no-side-effects", "--no-cross-values",
                                      "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    (summary,) = manifest["results"]
    assert manifest["config"]["mode"] == mode and summary["tail"] == record.tail(2.0 if record.dose else None)
    assert summary["controls_drawn"] >= 1 and summary["items"] > 0
    if record.dose:
        steered = CliRunner().invoke(app, ["steer", str(locate_run), "--mode", mode, "--gamma", "0,2", "--dimension", "conservation",
                                           "--controls", "1", "--split", "all", "--no-side-effects", "--out", str(tmp_path / "steer"),
                                           "-q"])
        assert steered.exit_code == 0, steered.output
