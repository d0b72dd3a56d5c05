"""The trie attention mask built from parents (on the server for a remote model) equals the dense mask
built node by node, and a remote scoring request carries parents, not a [B, 1, T, T] mask."""

from __future__ import annotations

import random

import torch

from vneuron.validate.prefix import Row, attention_mask


def reference_mask(parents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Node by node: a node sees its parent's ancestors and itself (the construction vneuron used to upload)."""
    rows, width = parents.shape
    allowed = torch.zeros(rows, width, width, dtype=torch.bool)
    for b in range(rows):
        for i in range(width):
            if parents[b, i] >= 0:
                allowed[b, i] = allowed[b, parents[b, i]]
            allowed[b, i, i] = True
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def random_parents(rows: int, width: int, rng: random.Random) -> torch.Tensor:
    out = torch.full((rows, width), -1, dtype=torch.long)
    for b in range(rows):
        used = rng.randint(1, width)  # the rest is padding
        for i in range(used):
            out[b, i] = -1 if i == 0 or rng.random() < 0.05 else rng.choice([i - 1, i - 1, rng.randrange(i)])
    return out


def test_mask_from_parents_equals_the_node_by_node_mask():
    rng = random.Random(0)
    for width in (1, 2, 3, 7, 64, 200):
        parents = random_parents(5, width, rng)
        for dtype in (torch.float32, torch.float64):
            assert torch.equal(attention_mask(parents, dtype), reference_mask(parents, dtype)), width


def test_a_deep_chain_reaches_its_root():
    parents = torch.arange(-1, 299)[None]  # one path of 300 nodes: depth 299 needs ⌈log2 300⌉ doublings
    mask = attention_mask(parents, torch.float32)
    assert torch.equal(mask[0, 0] == 0, torch.tril(torch.ones(300, 300, dtype=torch.bool)))


def test_a_batch_of_tries_carries_parents_and_builds_its_mask(tiny_model):
    from vneuron.data import load_corpus
    from vneuron.validate.evaluate import encode_pairs, forced_choice_pairs, sent_tensors
    from vneuron.validate.prefix import pack, tensors

    from .test_prefix import EXAMPLES

    model = tiny_model("llama")
    encoded = encode_pairs(model, forced_choice_pairs(load_corpus(EXAMPLES / "corpus.jsonl").items[:3]))
    rows = pack(encoded)
    t = tensors(rows, 0, torch.float32)
    assert isinstance(rows[0], Row) and t.parents.shape == t.ids.shape
    assert torch.equal(t.mask, reference_mask(t.parents, torch.float32))
    sent = sum(x.numel() * x.element_size() for x in sent_tensors(t))
    assert sent < t.mask.numel() * t.mask.element_size() / 4  # B × T integers instead of B × T² floats


def test_simulated_remote_scoring_equals_local_and_sends_no_mask(tiny_model, monkeypatch):
    """Through nnsight's serialisation (--host local): the request holds parents; scores equal the local path."""
    from dataclasses import replace

    import vneuron.validate.evaluate as evaluate
    from vneuron.validate.edits import Edit
    from vneuron.runtime.remote import resolve_target
    from vneuron.locate.scoring import NeuronSet

    model = tiny_model("llama")
    remote = replace(model, remote=resolve_target("local"))
    pairs = [("you choose to", " help the community"), ("you choose to", " save money"), ("what would you", " do ?")]
    edit = Edit(NeuronSet.from_flat(torch.tensor([1, 50, 100]), torch.zeros(model.n_layers, model.width), "gate"), "zero")
    seen = []
    real = evaluate._score_session

    def spy(m, prepared, steps_list, post):
        seen.append([t.parents.shape for t, _, _ in prepared])
        return real(m, prepared, steps_list, post)

    monkeypatch.setattr(evaluate, "_score_session", spy)
    for e in (None, edit):
        torch.testing.assert_close(evaluate.continuation_logprobs(remote, pairs, e), evaluate.continuation_logprobs(model, pairs, e),
                                   rtol=0, atol=1e-6)
    assert seen and all(len(shape) == 2 for batch in seen for shape in batch)
