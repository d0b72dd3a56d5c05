"""Every family's ``Architecture`` record against the real module tree of its tiny model.

One test per advertised family (every key of ``ARCHITECTURES``): the module paths resolve, the
sites hold what their names say (gate = act(first input projection); down_in = act·up, or the
activation itself when ungated), capture reads exactly those tensors, the width and the input and
output projections agree with the weights, ``post`` turns the LM head's output into the model's
own logits, the blocks' outputs are the residual stream the next block reads (what the residual sums
and direction edits use), and the shared-prefix scorer equals the padded reference.
"""

from __future__ import annotations

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from vneuron.locate.capture import CaptureConfig, capture
from vneuron.data.schema import Prompt
from vneuron.validate.evaluate import continuation_logprobs, encode_pairs, tries_supported
from vneuron.models.architectures import ARCHITECTURES, num_layers
from vneuron.models.loading import load_model
from vneuron.models.sites import SITES, layer_modules, resolve_path, site_module, site_path, site_tensors
from vneuron.validate.prefix import head_logprobs
from vneuron.runtime.tokens import encode

from .conftest import ARCHS

# record name (transformers model_type) → tiny config in conftest (whose "gemma3" is the text-only model)
TINY = {name: name for name in ARCHS} | {"gemma3_text": "gemma3", "gemma3": "gemma3_mm"}

PROMPTS = [Prompt("you choose to help the community .", "a", "g0", "p0"),
           Prompt("what would you do ? the manager would follow the rules", "b", "g1", "p1")]
PAIRS = [(prefix, option) for prefix in ("your team would break the rules . you choose to", "a friend would spend money ? you")
         for option in (" save money", " help the community and others")] + [("you", " keep tradition")]


def test_every_record_has_a_tiny_model():
    assert set(ARCHITECTURES) <= set(TINY), sorted(set(ARCHITECTURES) - set(TINY))
    assert set(TINY.values()) == set(ARCHS)


def _width_axis(module):
    """(rows into the hidden layer, columns out of it) of a Linear or GPT-2 Conv1D weight."""
    assert isinstance(module, (torch.nn.Linear, Conv1D)), type(module)
    w = module.weight
    return (w.shape[0], w.shape[1]) if isinstance(module, torch.nn.Linear) else (w.shape[1], w.shape[0])


def _hooked_forward(hf, arch, ids):
    """One unpadded forward with plain PyTorch hooks: per layer the inputs' outputs, the activation's
    input and output and the down projection's input; plus the base's final hidden state and the logits."""
    seen = {k: [] for k in ("act_in", "act_out", "down_in", *arch.inputs)}
    hooks = []

    def keep(key, value):
        seen[key].append(value.detach().clone())

    def on_act(module, args, output):  # returns None: the output is left as it is
        keep("act_in", args[0])
        keep("act_out", output)

    for block in layer_modules(hf, arch):
        mlp = getattr(block, arch.mlp)
        act = getattr(mlp, arch.act)
        hooks.append(act.register_forward_hook(on_act))
        hooks.append(getattr(mlp, arch.down).register_forward_pre_hook(lambda m, i: keep("down_in", i[0])))
        for name in arch.inputs:
            hooks.append(getattr(mlp, name).register_forward_hook(lambda m, i, o, name=name: keep(name, o)))
    final = []
    hooks.append(resolve_path(hf, arch.base).register_forward_hook(lambda m, i, o: final.append(o[0].detach())))
    try:
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0]
    finally:
        for h in hooks:
            h.remove()
    n = len(layer_modules(hf, arch))
    for key, values in seen.items():  # every module ran exactly once per layer
        assert len(values) == n, (key, len(values))
    return {k: torch.stack([v[0] for v in values]) for k, values in seen.items()}, final[0][0], logits


def _block_outputs(hf, arch, ids) -> tuple[torch.Tensor, torch.Tensor]:
    """([L, tokens, hidden] each block's output, [L, tokens, hidden] each block's input) of one unpadded forward."""
    outs, ins = [], []
    hooks = []
    for block in layer_modules(hf, arch):
        hooks.append(block.register_forward_hook(lambda m, a, o: outs.append((o[0] if isinstance(o, tuple) else o)[0].detach())))
        hooks.append(block.register_forward_pre_hook(lambda m, a, kw: ins.append((a[0] if a else kw["hidden_states"])[0].detach()),
                                                     with_kwargs=True))
    try:
        with torch.no_grad():
            hf(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(outs), torch.stack(ins)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_record_matches_the_real_model(tiny_dir, name):
    arch = ARCHITECTURES[name]
    model = load_model(str(tiny_dir(TINY[name])), dtype="float64")
    hf, config = model.hf_model, model.config
    assert config.model_type == name and model.arch is arch

    # paths: the decoder blocks and both sites resolve to real modules, one of each per layer, in torch and nnsight
    blocks = layer_modules(hf, arch)
    assert isinstance(blocks, torch.nn.ModuleList) and len(blocks) == num_layers(config) == model.n_layers
    assert len(layer_modules(model.lm, arch)) == model.n_layers
    for site in SITES:
        modules = [site_module(block, arch, site) for block in blocks]
        assert all(isinstance(m, torch.nn.Module) for m in modules)
        assert len({id(m) for m in modules}) == model.n_layers  # not one shared module
    assert isinstance(resolve_path(hf, arch.base), torch.nn.Module)
    # the family facts callers ask the record for: the head, the residual width, the weight layout, tied or not
    head = resolve_path(hf, arch.head)
    assert head is hf.get_output_embeddings()
    resolve_path(model.lm, arch.head)  # the envoy too (traces read the head through it)
    assert arch.hidden(config) == hf.get_input_embeddings().weight.shape[1] == head.weight.shape[1]
    assert arch.tied(config) == (head.weight is hf.get_input_embeddings().weight)
    for block in blocks:
        projections = [getattr(getattr(block, arch.mlp), n) for n in (*arch.inputs, arch.down)]
        assert all(isinstance(m, Conv1D) == arch.transposed for m in projections)

    # width: from the config, equal to the hidden layer of the real MLP and to what its weights say
    width = arch.width(config)
    assert width == model.width
    fused = arch.gated and len(arch.inputs) == 1
    assert len(arch.inputs) == (1 if fused or not arch.gated else 2)
    for block in blocks:
        mlp = getattr(block, arch.mlp)
        assert _width_axis(getattr(mlp, arch.down))[1] == width  # the down projection reads the hidden layer
        for name_in in arch.inputs:
            assert _width_axis(getattr(mlp, name_in))[0] == (2 * width if fused else width)

    # what the sites hold, read with plain hooks on one unpadded prompt
    ids = model.tokenizer(PROMPTS[1].text)["input_ids"]
    seen, final, logits = _hooked_forward(hf, arch, ids)
    assert seen["act_out"].shape == (model.n_layers, len(ids), width)
    first = seen[arch.inputs[0]]
    gate_pre, up = (first[..., :width], first[..., width:]) if fused else (first, seen[arch.inputs[-1]] if arch.gated else None)
    torch.testing.assert_close(seen["act_in"], gate_pre, rtol=0, atol=0)  # the gate reads the first input projection
    want_down = seen["act_out"] * up if arch.gated else seen["act_out"]
    torch.testing.assert_close(seen["down_in"], want_down, rtol=1e-12, atol=1e-12)
    if arch.gated:  # the sites differ: a swapped record would not pass the line above
        assert (seen["down_in"] - seen["act_out"]).abs().max() > 1e-3

    # nnsight reads the same tensors at the record's paths (exactly), and capture's statistics equal the hooks'
    for site, key in (("gate", "act_out"), ("down_in", "down_in")):
        traced = []
        with torch.no_grad(), model.lm.trace(torch.tensor([ids])):
            for tensor in site_tensors(model.lm, site_path(arch, site)):
                traced.append(tensor.save())
        torch.testing.assert_close(torch.stack([t[0] for t in traced]), seen[key], rtol=0, atol=0)
        stats = capture(model, PROMPTS, CaptureConfig(site=site, folds=1, counted_span=False, batch_tokens=10_000),
                        labels=["a", "b"])
        for k, e in enumerate(encode(model.tokenizer, PROMPTS, [0, 1], counted_span=False)):
            acts = _hooked_forward(hf, arch, e.ids)[0][key][:, torch.tensor(e.counted)]  # [L, t, W]
            assert stats.n[k, 0] == sum(e.counted) == len(e.ids) - 1  # every token but BOS
            torch.testing.assert_close(stats.sum[k, 0], acts.sum(1), rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(stats.sumsq[k, 0], (acts ** 2).sum(1), rtol=1e-9, atol=1e-9)
            assert torch.equal(stats.active[k, 0], (acts > 0).double().sum(1))

    # the residual stream: each block hands its output ([tokens, hidden]) on to the next block as it is, so the residual
    # sums read, and a direction edit moves, what the rest of the model reads; capture's sums equal those outputs
    outs, ins = _block_outputs(hf, arch, ids)
    assert outs.shape == (model.n_layers, len(ids), arch.hidden(config))
    torch.testing.assert_close(ins[1:], outs[:-1], rtol=0, atol=0)
    for k, e in enumerate(encode(model.tokenizer, PROMPTS, [0, 1], counted_span=False)):
        counted = _block_outputs(hf, arch, e.ids)[0][:, torch.tensor(e.counted)]
        torch.testing.assert_close(stats.residual.sum[k, 0], counted.sum(1), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(stats.residual.rows[k], counted.mean(1).float())

    # the head: linear(final hidden, lm_head) + post is the model's own logits
    post = arch.post(config)
    head = hf.lm_head
    raw = torch.nn.functional.linear(final, head.weight, head.bias)
    kind, c = post if post is not None else (None, None)
    mine = torch.tanh(raw / c) * c if kind == "softcap" else raw / c if kind == "divide" else raw
    torch.testing.assert_close(mine, logits, rtol=0, atol=1e-9)  # float64 throughout
    if kind is not None:  # the post-processing matters here: without it the logits are off
        assert (raw - logits).abs().max() > 1e-4
    # and vneuron's scorer (head_logprobs) gives the model's log-probabilities at a few positions, full vocabulary
    positions = torch.tensor([0, len(ids) // 2, len(ids) - 1])
    vocab = logits.shape[-1]
    node_of = torch.arange(len(positions)).repeat_interleave(vocab)
    targets = torch.arange(vocab).repeat(len(positions))
    got = head_logprobs(final[positions], head.weight, head.bias, post, [(0, len(positions), 0, len(targets))], node_of, targets)
    want = logits[positions].log_softmax(-1).reshape(-1)
    # head_logprobs takes log_softmax in float32 (``.float()``), so float32 precision is the bound here
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6)

    # forced choice: shared-prefix tries equal one padded row per pair
    assert tries_supported(model, encode_pairs(model, PAIRS))  # the tries path really runs (no window cut)
    tries = continuation_logprobs(model, PAIRS, shared_prefix=True)
    padded = continuation_logprobs(model, PAIRS, shared_prefix=False, batch_tokens=1)
    assert torch.isfinite(tries).all()
    torch.testing.assert_close(tries, padded, rtol=0, atol=2e-6)
