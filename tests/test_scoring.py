"""Scores and selection rules on hand-made statistics whose right answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from vneuron.locate.capture import ActivationStats
from vneuron.errors import VneuronError
from vneuron.locate.scoring import NeuronSet, contrast_scores, lape_select, select, stability


def make_stats(p: dict[str, list[list[float]]], n: float = 100.0, mean: dict | None = None, var: float = 1.0) -> ActivationStats:
    """Stats with given activation probabilities (and means) per label, 1 fold."""
    labels = list(p)
    shape = torch.tensor(p[labels[0]]).shape
    stats = ActivationStats.zeros("gate", labels, 1, *shape)
    for k, label in enumerate(labels):
        probs = torch.tensor(p[label], dtype=torch.float64)
        mu = torch.tensor(mean[label], dtype=torch.float64) if mean else probs
        stats.n[k, 0] = n
        stats.active[k, 0] = probs * n
        stats.sum[k, 0] = mu * n
        stats.sumsq[k, 0] = (var + mu**2) * n
    return stats


def test_delta_p_and_mean_difference():
    stats = make_stats({"pole": [[0.9, 0.5, 0.2]], "opp": [[0.1, 0.5, 0.6]]},
                       mean={"pole": [[2.0, 1.0, 0.0]], "opp": [[1.0, 1.0, 1.0]]})
    torch.testing.assert_close(contrast_scores(stats, "pole", "opp", "delta_p"), torch.tensor([[0.8, 0.0, -0.4]], dtype=torch.float64))
    torch.testing.assert_close(contrast_scores(stats, "pole", "opp", "mean_diff"), torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64))
    # both variances are 1 (×n/(n−1)): d = diff / sqrt(100/99); Welch t = diff / sqrt(2/99)
    d = contrast_scores(stats, "pole", "opp", "cohen_d")
    t = contrast_scores(stats, "pole", "opp", "welch_t")
    assert d[0, 0] == pytest.approx(1 / math.sqrt(100 / 99))
    assert t[0, 0] == pytest.approx(1 / math.sqrt(2 * (100 / 99) / 100))
    assert d[0, 1] == 0 and t[0, 2] < 0


def test_top_k_directions_and_per_layer():
    scores = torch.tensor([[0.5, -0.9, 0.1], [0.3, 0.8, -0.2]])
    assert select(scores, "top_k", 2).tolist() == [4, 0]  # flat = layer*3 + unit
    assert select(scores, "top_k", 2, direction="opposite").tolist() == [1, 5]
    assert select(scores, "top_k", 1, direction="both").tolist() == [1]
    assert sorted(select(scores, "per_layer", 1).tolist()) == [0, 4]
    assert select(scores, "per_layer", 1).tolist() == [4, 0]  # best first


def test_valuelocate_rule_keeps_max_of_min_count_and_threshold_count():
    scores = torch.linspace(-0.5, 0.5, 101).reshape(1, -1)  # 41 values ≥ 0.1 (0.1 .. 0.5)
    assert len(select(scores, "valuelocate", min_count=10, threshold=0.1)) == 41
    assert len(select(scores, "valuelocate", min_count=60, threshold=0.1)) == 60
    assert len(select(scores, "valuelocate", min_count=500)) == 101  # capped at the neuron count


def test_top_k_out_of_range_is_a_clear_error():
    with pytest.raises(VneuronError, match="out of range.*6 neurons"):
        select(torch.zeros(2, 3), "top_k", 7)
    with pytest.raises(VneuronError, match="per layer"):
        select(torch.zeros(2, 3), "per_layer", 4)


def test_lape_picks_condition_specific_neurons():
    # neuron 0: only label a; neuron 1: only label c; neuron 2: active everywhere (high entropy);
    # neuron 3: specific to b but rarely active (below the quantile bar) → filtered out
    p = {"a": [[0.9, 0.0, 0.8, 0.0, 0.1, 0.1]], "b": [[0.0, 0.0, 0.8, 0.05, 0.1, 0.1]], "c": [[0.0, 0.9, 0.8, 0.0, 0.1, 0.1]]}
    chosen = lape_select(make_stats(p), top_rate=0.34, quantile=0.5)
    assert chosen["a"].tolist() == [0]
    assert chosen["c"].tolist() == [1]
    assert chosen["b"].tolist() == []


def test_neuron_set_algebra_and_round_trip(tmp_path):
    scores = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    a = NeuronSet.from_flat(torch.tensor([11, 10, 5]), scores, "gate", label="x")
    b = NeuronSet.from_flat(torch.tensor([10, 5, 0]), scores, "gate")
    assert (a & b).flat.tolist() == [10, 5]
    assert sorted((a | b).flat.tolist()) == [0, 5, 10, 11]
    assert (a - b).flat.tolist() == [11]
    assert a.jaccard(b) == pytest.approx(2 / 4)
    assert a.layers.tolist() == [2, 2, 1] and a.units.tolist() == [3, 2, 1]
    assert a.per_layer() == [0, 1, 2]
    assert a.mask().sum() == 3 and a.mask()[2, 3]
    a.save(tmp_path / "a.safetensors")
    back = NeuronSet.load(tmp_path / "a.safetensors")
    assert back.flat.tolist() == [11, 10, 5] and back.meta["label"] == "x" and back.scores.tolist() == [11.0, 10.0, 5.0]
    with pytest.raises(VneuronError):
        a & NeuronSet.from_flat(torch.tensor([0]), torch.zeros(2, 4), "gate")


def test_split_half_stability_detects_agreement_and_noise():
    torch.manual_seed(0)
    labels = ["pole", "opp"]
    stats = ActivationStats.zeros("gate", labels, 2, 4, 500)
    signal = torch.zeros(4, 500, dtype=torch.float64)
    signal[:, :20] = 0.4
    for fold in range(2):
        for k in range(2):
            base = 0.3 + 0.05 * torch.rand(4, 500, dtype=torch.float64)
            stats.n[k, fold] = 1000
            stats.active[k, fold] = (base + (signal if k == 0 else 0)) * 1000
            stats.sum[k, fold] = stats.active[k, fold]
            stats.sumsq[k, fold] = stats.active[k, fold] * 2
    s = stability(stats, "pole", "opp", "delta_p", 80)
    assert s["overlap"] >= 80 // 1 - 5  # the 80 signal neurons are found in both halves
    assert s["pearson_r"] > 0.5
    assert s["chance_overlap"] == pytest.approx(80 * 80 / 2000)
