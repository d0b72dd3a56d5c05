"""Statistics from vneuron's batched, padded nnsight capture equal per-prompt forward hooks."""

from __future__ import annotations

import re

import pytest
import torch

from vneuron.locate.capture import ActivationStats, CaptureConfig, capture, fold_of
from vneuron.data.schema import Prompt
from vneuron.errors import VneuronError

from .conftest import ARCHS
from .reference import hook_residual, hook_stats

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
    if want.residual is not None:
        assert_residual_equal(got.residual, want.residual.n, want.residual.sum, want.residual.rows)


def assert_residual_equal(got, n: torch.Tensor, sums: torch.Tensor, rows: torch.Tensor):
    """The residual statistics of a capture against another's or the hooks' (float64 sums, float32 probe rows)."""
    assert torch.equal(got.n, n)
    assert got.sum.dtype == torch.float64
    torch.testing.assert_close(got.sum, sums, rtol=1e-5, atol=1e-6)
    assert torch.equal(got.rows.isnan(), rows.isnan())
    torch.testing.assert_close(got.rows.double(), rows.double(), rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("site", ["gate", "down_in"])
def test_batched_capture_equals_per_prompt_hooks(tiny_model, arch, site):
    model = tiny_model(arch)
    want = hook_stats(model, PROMPTS, LABELS, site=site, folds=2)
    n, sums, rows = hook_residual(model, PROMPTS, LABELS, folds=2)  # every block's output, the same tokens
    for padding, batch_tokens in (("right", 10_000), ("left", 10_000), ("right", 40), ("left", 1)):
        if arch == "gemma2" and padding == "left" and batch_tokens > 1:
            # transformers' Gemma-2 eager attention turns left-padded batches into NaN: vneuron must refuse
            with pytest.raises(VneuronError, match="non-finite"):
                capture(model, PROMPTS, CaptureConfig(site=site, padding=padding, batch_tokens=batch_tokens), labels=LABELS)
            continue
        got = capture(model, PROMPTS, CaptureConfig(site=site, folds=2, padding=padding, batch_tokens=batch_tokens), labels=LABELS)
        assert_stats_equal(got, want)
        assert got.residual.hidden == model.arch.hidden(model.config) and not got.residual.sketched
        assert_residual_equal(got.residual, n, sums, rows)
        assert got.residual.prompt_labels.tolist() == [LABELS.index(p.label) for p in PROMPTS]


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


def test_residual_rows_are_a_sketch_above_the_probe_width(tiny_model):
    """Above `probe_width` the probe rows are the signed bucket sketch of each prompt's mean (made in the trace),
    the sums stay whole; the sketch keeps inner products on average (over many random pairs)."""
    from vneuron.locate.residual import sketch, sketch_width

    model = tiny_model("llama")
    _, sums, rows = hook_residual(model, PROMPTS, LABELS, folds=2)
    got = capture(model, PROMPTS, CaptureConfig(folds=2, probe_width=10, batch_tokens=40), labels=LABELS)
    assert sketch_width(32, 10) == 8 and got.residual.rows.shape == (len(PROMPTS), model.n_layers, 8) and got.residual.sketched
    torch.testing.assert_close(got.residual.sum, sums, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.residual.rows.double(), sketch(rows, 10), rtol=1e-5, atol=1e-5)
    # by hand: bucket j sums ±x over dimensions 4j..4j+3
    x = torch.arange(32, dtype=torch.float64)
    signs = sketch(torch.eye(32, dtype=torch.float64), 10)  # row i: ±1 in bucket i // 4
    assert torch.equal(signs.abs().sum(1), torch.ones(32)) and torch.equal(signs.abs().argmax(1), torch.arange(32) // 4)
    assert torch.equal(sketch(x, 10), x @ signs)
    assert signs.min() == -1 and signs.max() == 1  # both signs occur
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4000, 32, generator=gen, dtype=torch.float64), torch.randn(4000, 32, generator=gen, dtype=torch.float64)
    b = a + 0.5 * b
    assert abs(float((sketch(a, 10) * sketch(b, 10)).sum(1).mean() / (a * b).sum(1).mean()) - 1) < 0.05
    assert torch.equal(sketch(x, 32), x)  # up to the probe width: the row itself


def test_residual_statistics_round_trip_and_a_checkpoint_keeps_them(tmp_path, tiny_model):
    from vneuron.locate.residual import ResidualStats

    stats = capture(tiny_model("gpt2"), PROMPTS, CaptureConfig(), labels=LABELS)
    stats.residual.save(tmp_path / "r.safetensors")
    back = ResidualStats.load(tmp_path / "r.safetensors")
    assert_residual_equal(back, stats.residual.n, stats.residual.sum, stats.residual.rows)
    assert back.labels == LABELS and back.folds == 2
    stats.save(tmp_path / "s.safetensors")  # a checkpoint: one file with both
    assert_stats_equal(ActivationStats.load(tmp_path / "s.safetensors"), stats)
    stats.save(tmp_path / "only.safetensors", residual=False)  # a run: the neuron statistics alone
    assert ActivationStats.load(tmp_path / "only.safetensors").residual is None
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "r.safetensors").read_bytes()[:200])
    with pytest.raises(VneuronError, match="not readable vneuron residual statistics"):
        ResidualStats.load(tmp_path / "cut.safetensors")
