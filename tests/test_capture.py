"""Statistics from vneuron's batched, padded nnsight capture equal per-prompt forward hooks."""

from __future__ import annotations

import re

import pytest
import torch

from vneuron.locate.capture import ActivationStats, CaptureConfig, capture, fold_of
from vneuron.data.schema import Prompt
from vneuron.errors import VneuronError

from .conftest import ARCHS
from .reference import hook_stats

SENTENCES = [
    ("you choose to help the community .", "a", (14, 36)),
    ("what would you do ?", "b", None),
    ("the manager would follow the rules and keep the old plan , what do you do ?", "a", (17, 40)),
    ("travel", "b", None),
    ("your friend wants to try a new adventure ; you go and learn", "b", (43, 59)),
    ("save money , protect nature", "a", (0, 12)),
    ("you lead the team to win power and money", "a", None),
]
PROMPTS = [Prompt(text, label, f"g{i}", f"p{i}", span) for i, (text, label, span) in enumerate(SENTENCES)]
LABELS = ["a", "b"]


def assert_stats_equal(got: ActivationStats, want: ActivationStats):
    # float64 models; some attention kernels still run softmax in float32, hence 1e-5
    assert torch.equal(got.n, want.n)
    torch.testing.assert_close(got.sum, want.sum, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sumsq, want.sumsq, rtol=1e-5, atol=1e-6)
    assert torch.equal(got.active, want.active)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("site", ["gate", "down_in"])
def test_batched_capture_equals_per_prompt_hooks(tiny_model, arch, site):
    model = tiny_model(arch)
    want = hook_stats(model, PROMPTS, LABELS, site=site, folds=2)
    for padding, batch_tokens in (("right", 10_000), ("left", 10_000), ("right", 40), ("left", 1)):
        if arch == "gemma2" and padding == "left" and batch_tokens > 1:
            # transformers' Gemma-2 eager attention turns left-padded batches into NaN: vneuron must refuse
            with pytest.raises(VneuronError, match="non-finite"):
                capture(model, PROMPTS, CaptureConfig(site=site, padding=padding, batch_tokens=batch_tokens), labels=LABELS)
            continue
        got = capture(model, PROMPTS, CaptureConfig(site=site, folds=2, padding=padding, batch_tokens=batch_tokens), labels=LABELS)
        assert_stats_equal(got, want)


def _hand_count(text: str, span) -> int:
    """Words (and punctuation marks) overlapping the span, counted independently of tokenizers."""
    lo, hi = span or (0, len(text))
    return sum(1 for m in re.finditer(r"\w+|[^\w\s]", text) if m.start() < hi and m.end() > lo)


def test_capture_counts_only_marked_span_and_skips_special_tokens(tiny_model):
    model = tiny_model("llama")
    stats = capture(model, PROMPTS, CaptureConfig(folds=1), labels=LABELS)
    whole = capture(model, PROMPTS, CaptureConfig(folds=1, counted_span=False), labels=LABELS)
    for k, label in enumerate(LABELS):
        assert stats.n[k, 0] == sum(_hand_count(t, span) for t, l, span in SENTENCES if l == label)
        # the whole prompt: every word, never the BOS token
        assert whole.n[k, 0] == sum(_hand_count(t, None) for t, l, _ in SENTENCES if l == label)
    assert _hand_count("you choose to help the community .", (14, 36)) == 4


def test_folds_partition_the_pooled_statistics(tiny_model):
    model = tiny_model("qwen2")
    two = capture(model, PROMPTS, CaptureConfig(folds=2), labels=LABELS)
    one = capture(model, PROMPTS, CaptureConfig(folds=1), labels=LABELS)
    torch.testing.assert_close(two.sum.sum(1, keepdim=True), one.sum)
    assert torch.equal(two.n.sum(1, keepdim=True), one.n)
    # both sides of a scenario share a fold
    assert fold_of("item-7", 2) == fold_of("item-7", 2)


def test_stats_round_trip_safetensors(tmp_path, tiny_model):
    stats = capture(tiny_model("gpt2"), PROMPTS, CaptureConfig(), labels=LABELS)
    stats.save(tmp_path / "s.safetensors")
    back = ActivationStats.load(tmp_path / "s.safetensors")
    assert back.labels == LABELS and back.site == "gate"
    assert_stats_equal(back, stats)


def test_float32_capture_close_to_reference(tiny_model):
    model = tiny_model("gemma3", "float32")
    want = hook_stats(model, PROMPTS, LABELS)
    got = capture(model, PROMPTS, CaptureConfig(folds=1, batch_tokens=64), labels=LABELS)
    torch.testing.assert_close(got.sum, want.sum, rtol=1e-4, atol=1e-4)
    assert (got.active - want.active).abs().max() <= 1  # a sign flip of an activation at 1e-7 from zero
