"""Generation mode counts exactly the generated tokens, with their activations, stopping at EOS."""

from __future__ import annotations

import pytest
import torch

from vneuron.locate.capture import CaptureConfig, capture
from vneuron.runtime.tokens import encode
from vneuron.data.schema import Prompt

from .reference import hook_examples, hook_residual, hook_stats
from .test_capture import assert_residual_equal

TEXTS = [("you choose to help the community .", "a"), ("what would you do ?", "b"),
         ("your friend wants to try a new adventure", "b"), ("save money", "a"), ("the manager would follow the rules", "a")]
PROMPTS = [Prompt(t, label, f"g{i}", f"p{i}") for i, (t, label) in enumerate(TEXTS)]
N = 5


def _greedy(hf, ids, steps, eos):
    """Plain transformers greedy decoding of one unpadded prompt; tokens before the first EOS."""
    out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                      max_new_tokens=steps, do_sample=False, eos_token_id=eos, pad_token_id=0)[0, len(ids):].tolist()
    kept = []
    for t in out[:steps]:
        if t == eos:
            break
        kept.append(t)
    return kept


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_generation_counts_generated_tokens_only(tiny_model, arch):
    model = tiny_model(arch)
    hf = model.hf_model
    encoded = encode(model.tokenizer, PROMPTS, [0] * len(PROMPTS), counted_span=False)
    # make EOS a token that some (not all) prompts actually generate early, so stopping is exercised
    free = [_greedy(hf, e.ids, N, eos=-1) for e in encoded]
    eos = next(t for row in free for t in row[1:3] if sum(t in r for r in free) < len(free))
    hf.generation_config.eos_token_id = eos
    try:
        generated = [_greedy(hf, e.ids, N, eos) for e in encoded]
        assert any(len(g) < N for g in generated) and any(len(g) == N for g in generated)
        records = []
        stats = capture(model, PROMPTS, CaptureConfig(mode="generate", max_new_tokens=N, folds=1, batch_tokens=10_000,
                                                      top_examples=2), labels=["a", "b"], generations=records)
    finally:
        hf.generation_config.eos_token_id = 2
    # hand count: tokens each prompt generated before EOS, per label
    for k, label in enumerate(["a", "b"]):
        assert stats.n[k, 0] == sum(len(g) for g, p in zip(generated, PROMPTS) if p.label == label)
    assert {r["id"]: r["tokens_counted"] for r in records} == {p.id: len(g) for p, g in zip(PROMPTS, generated)}
    # activations: re-read the generated tokens as a continuation with forward hooks
    continued = []
    for p, e, g in zip(PROMPTS, encoded, generated):
        text = model.tokenizer.decode(e.ids[1:] + g)
        prefix = model.tokenizer.decode(e.ids[1:])
        continued.append(Prompt(text, p.label, p.group, p.id, (len(prefix) + 1, len(text)) if g else (len(text), len(text))))
    spoke = [c for c, g in zip(continued, generated) if g]
    want = hook_stats(model, spoke, ["a", "b"], counted_span=True)
    assert torch.equal(stats.n, want.n)
    torch.testing.assert_close(stats.sum, want.sum, rtol=1e-5, atol=1e-6)
    assert torch.equal(stats.active, want.active)
    # the residual stream (every block's output) over the same generated tokens; a silent prompt has no probe row
    n, sums, means = hook_residual(model, spoke, ["a", "b"])
    rows = torch.full((len(PROMPTS), model.n_layers, means.shape[2]), torch.nan, dtype=torch.float64)
    rows[torch.tensor([i for i, g in enumerate(generated) if g])] = means
    assert_residual_equal(stats.residual, n, sums, rows)
    # top examples: the mean over each prompt's generated tokens, sorted (a prompt that generated nothing has none)
    examples = hook_examples(model, spoke, ["a", "b"], 2)
    index = [p.id for p in PROMPTS]
    for side in ("top", "bottom"):
        got_ids = getattr(stats.examples, f"{side}_ids").long()
        named = torch.tensor([index.index(spoke[i].id) if i >= 0 else -1 for i in examples[f"{side}_ids"].reshape(-1).tolist()])
        assert torch.equal(got_ids, named.reshape(got_ids.shape))
        finite = examples[f"{side}_values"].isfinite()
        torch.testing.assert_close(getattr(stats.examples, f"{side}_values").double()[finite], examples[f"{side}_values"][finite],
                                   rtol=1e-5, atol=1e-6)
