"""Each edit changes exactly the chosen units, in the forward pass and at every generation step."""

from __future__ import annotations

import pytest
import torch

from vneuron.validate.edits import Edit, apply, plan
from vneuron.validate.evaluate import generate
from vneuron.models.sites import layer_modules, site_module
from vneuron.locate.scoring import NeuronSet

IDS = torch.tensor([[1, 5, 6, 7, 8, 9, 10], [1, 11, 12, 13, 14, 15, 16]])


def neuron_set(model, site="gate"):
    flat = torch.tensor([0 * model.width + 3, 0 * model.width + 7, 1 * model.width + 2, 2 * model.width + 40])
    return NeuronSet.from_flat(flat, torch.zeros(model.n_layers, model.width), site)


def make_edit(model, mode, site="gate"):
    values = torch.linspace(-1, 1, model.n_layers * model.width, dtype=torch.float64).reshape(model.n_layers, model.width)
    return Edit(neuron_set(model, site), mode, gamma=2.5, values=values if mode in ("mean", "add", "set") else None,
                boost=values.abs() if mode == "add" else None)


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
    return a + 2.5 * v * torch.sigmoid(torch.tensor(10 * (abs(v) - 0.15), dtype=torch.float64)).item()  # add


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


@pytest.mark.parametrize("mode", ["zero", "clamp", "mean", "scale", "add", "set"])
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
