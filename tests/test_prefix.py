"""Shared-prefix scoring (token tries, LM head at scored positions) equals one padded row per pair."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vneuron.data import load_corpus
from vneuron.validate.edits import Edit
from vneuron.validate.evaluate import continuation_logprobs, forced_choice_pairs
from vneuron.locate.scoring import NeuronSet

from .conftest import ARCHS, make_tokenizer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("arch", ARCHS)
def test_tries_equal_one_row_per_pair(tiny_model, arch):
    # the conftest tokenizer itself: transformers rebuilds some families' saved tokenizers differently
    model = replace(tiny_model(arch), tokenizer=make_tokenizer())
    # forced choice's shape in the tiny vocabulary: per scenario and order, one prefix and two options
    pairs = []
    for scenario in ("your team would break the rules .", "a friend would spend money ? what would you do"):
        for first, second in (("save money", "help others"), ("help others", "save money")):
            prefix = f"{scenario} the right thing is to {first} or to {second} . you choose to"
            pairs += [(prefix, " save money"), (prefix, " help the community and others")]
    pairs += [("you", " choose to help"), ("what would you do ?", " keep tradition")]
    neurons = NeuronSet.from_flat(torch.tensor([1, 50, 100]), torch.zeros(model.n_layers, model.width), "gate")
    for edit in (None, Edit(neurons, "scale", gamma=-3.0)):
        # the reference: each pair alone (batched left padding gives NaN in Gemma-2's sliding window)
        old = continuation_logprobs(model, pairs, edit, shared_prefix=False, batch_tokens=1)
        new = continuation_logprobs(model, pairs, edit, batch_tokens=64)  # several batches and rows
        torch.testing.assert_close(new, old, rtol=0, atol=2e-6)
        if arch == "llama":  # and the batched reference path
            torch.testing.assert_close(new, continuation_logprobs(model, pairs, edit, shared_prefix=False), rtol=0, atol=2e-6)


def test_trie_shares_prefix_tokens_and_keeps_every_scored_token(tiny_model):
    from vneuron.validate.evaluate import encode_pairs
    from vneuron.validate.prefix import pack, tensors

    model = tiny_model("llama")
    items = load_corpus(EXAMPLES / "corpus.jsonl").items[:2]
    encoded = encode_pairs(model, forced_choice_pairs(items))
    rows = pack(encoded, row_tokens=10_000)
    assert len(rows) == 1
    flat = sum(len(e.ids) for e in encoded)
    assert len(rows[0].ids) < flat * 0.6  # the scenario once per item, each listing once per order
    t = tensors(rows, 0, torch.float32)
    assert len(t.targets) == sum(sum(e.counted[1:]) for e in encoded)
    # a node sees exactly its ancestors: count of visible keys = depth + 1
    visible = (t.mask[0, 0] == 0).sum(-1)
    torch.testing.assert_close(visible, t.positions[0] + 1)


def test_lower_layers_are_shared_and_change_nothing(tiny_model):
    from vneuron.validate.evaluate import LowerLayers, forced_choice

    model = tiny_model("llama")
    items = load_corpus(EXAMPLES / "corpus.jsonl").items[:3]
    located = NeuronSet.from_flat(torch.tensor([60, 70, 100, 130]), torch.zeros(model.n_layers, model.width), "gate")
    reuse = LowerLayers()
    for neurons in (located, located.random_matched(0), located.random_matched(1)):
        edit = Edit(neurons, "zero")
        plain = forced_choice(model, items, edit).logprob
        shared = forced_choice(model, items, edit, reuse=reuse).logprob
        torch.testing.assert_close(shared, plain, rtol=0, atol=1e-12)
    assert reuse.misses >= 1 and reuse.hits == 2 * reuse.misses  # layer 0 ran once for all three sets


@pytest.mark.parametrize("arch", ARCHS)
def test_directions_start_from_the_saved_output_of_their_block(tiny_model, arch):
    """A direction at block L's output (and its random directions, a projection, one at the last block, one with
    neuron edits above it) starts from L's saved unedited output, shifted outside the trace: the same bits as the
    whole forward with the shift applied in it, for every family, and one block fewer per set than from L's input."""
    from vneuron.runtime import budget
    from vneuron.validate.directions import random_direction_edit
    from vneuron.validate.edits import DirectionEdit, start_at, plan
    from vneuron.validate.evaluate import LowerLayers, encode_pairs, forced_choice, tries_supported

    model = tiny_model(arch, "float32")
    items = load_corpus(EXAMPLES / "corpus.jsonl").items[:3]
    hidden = model.arch.hidden(model.config)
    gen = torch.Generator().manual_seed(1)
    last = model.n_layers - 1
    d = torch.randn(hidden, generator=gen)
    neurons = NeuronSet.from_flat(torch.tensor([model.width * last + 3]), torch.zeros(model.n_layers, model.width), "gate")
    at_one = DirectionEdit(1, d, alpha=-2.5)
    cases = [at_one, random_direction_edit(at_one, 7), DirectionEdit(1, d, project=True), DirectionEdit(last, d, alpha=4.0),
             DirectionEdit(0, d, alpha=1.5), [DirectionEdit(0, d, alpha=1.5), Edit(neurons, "zero")]]
    reuse = LowerLayers()
    tries = tries_supported(model, encode_pairs(model, forced_choice_pairs(items)))
    for edit in cases:
        whole = forced_choice(model, items, edit).logprob
        first = forced_choice(model, items, edit, reuse=reuse).logprob  # L's output saved on the first use
        work = budget.reset()
        again = forced_choice(model, items, edit, reuse=reuse).logprob
        assert torch.equal(first, whole) and torch.equal(again, whole), edit
        steps = plan(model, edit)
        assert start_at(steps) == min(s[0] for s in steps) + 1  # the blocks up to L (or layer 0) are skipped
        skipped = start_at(steps) if tries else 0  # no tries (a window shorter than the rows): nothing reused
        assert work.layer_tokens == work.tokens * (model.n_layers - skipped)  # none for the last block
    assert not tries or reuse.hits >= 1 and {key[2] for key in reuse.saved} == {1, 2, model.n_layers}
    inside = NeuronSet.from_flat(torch.tensor([model.width + 5]), torch.zeros(model.n_layers, model.width), "gate")
    mixed = plan(model, [DirectionEdit(1, d, alpha=1.0), Edit(inside, "zero")])
    assert start_at(mixed) == 1  # a neuron of block 1 too: block 1 must run, from its input


@pytest.mark.parametrize("post", [None, ("softcap", 30.0), ("divide", 2.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_head_read_by_vocabulary_blocks_is_log_softmax(post, dtype):
    """The head read a block of the vocabulary at a time (several blocks here: 10,000 > 4,096) gives log_softmax's
    log-probabilities and their gradient, with a bias and every family's post-processing; chunks of rows too."""
    from vneuron.validate.prefix import head_logprobs, head_logsumexp

    gen = torch.Generator().manual_seed(3)
    vocab, hidden_size, nodes = 10_000, 24, 7
    weight = torch.randn(vocab, hidden_size, generator=gen, dtype=dtype)
    bias = torch.randn(vocab, generator=gen, dtype=dtype)
    hidden = torch.randn(nodes, hidden_size, generator=gen, dtype=dtype, requires_grad=True)
    node_of = torch.tensor([0, 0, 1, 3, 3, 3, 4, 6, 6])
    targets = torch.tensor([0, 4095, 4096, 9999, 8191, 8192, 17, 5000, 12])  # block edges and the last token

    logits = torch.nn.functional.linear(hidden, weight, bias)
    if post is not None:
        logits = torch.tanh(logits / post[1]) * post[1] if post[0] == "softcap" else logits / post[1]
    want = logits.to(dtype).log_softmax(-1)[node_of, targets]
    lse, picked = head_logsumexp(hidden, weight, bias, post, node_of, targets, dtype)
    got = picked - lse[node_of]
    tol = 1e-12 if dtype == torch.float64 else 5e-6
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    torch.testing.assert_close(lse, logits.to(dtype).logsumexp(-1), rtol=0, atol=tol)
    grad_got, = torch.autograd.grad(got.sum(), hidden)
    grad_want, = torch.autograd.grad(want.sum(), hidden)
    torch.testing.assert_close(grad_got, grad_want, rtol=0, atol=1e3 * tol)

    chunks = [(0, 2, 0, 3), (2, 5, 3, 7), (5, 7, 7, 9)]  # the scorer's chunks of rows (float32, as it scores)
    scored = head_logprobs(hidden.detach(), weight, bias, post, chunks, node_of, targets)
    torch.testing.assert_close(scored, want.detach().float(), rtol=0, atol=5e-6)
