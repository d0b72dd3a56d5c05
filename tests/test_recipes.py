"""The recipes and the example run end to end (on a tiny model, at the smallest scale)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_locate_ablate_steer_recipe(tmp_path, tiny_dir):
    out = run("recipes/locate_ablate_steer.py", "--model", tiny_dir("llama"), "--top-k", "8", "--controls", "2", "--limit", "2",
              "--locate-limit", "6",
              "--gamma", "0,2", "--out", tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "## Ablation (zero) against 2 matched random controls" in summary and "| self_transcendence | 0 |" in summary
    assert summary.count("\n| ") >= 4 + 4 + 2 and out.strip().startswith("# vneuron study")


def test_valuelocate_recipe(tmp_path, tiny_dir):
    run("recipes/valuelocate.py", "--model", tiny_dir("llama"), "--limit", "2", "--eval-limit", "2", "--max-new-tokens", "3",
        "--gamma", "0,2", "--controls", "1", "--min-count", "20", "--threshold", "0.9", "--out", tmp_path)
    manifest = json.loads((tmp_path / "locate" / "manifest.json").read_text())
    assert manifest["capture"]["mode"] == "generate" and manifest["selection"]["rule"] == "valuelocate"
    assert all(s["count"] == 20 for s in manifest["selected"].values())  # max(20, #{Δp ≥ 0.9}) on a random model


def test_valueexploration_recipe(tmp_path, tiny_dir):
    run("recipes/valueexploration.py", "--model", tiny_dir("llama"), "--limit", "4", "--eval-limit", "2", "--controls", "2",
        "--quantile", "0.5", "--top-rate", "0.2", "--out", tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["support_neurons"] >= 1 and len(result["control_effects"]) == 2


@pytest.mark.realmodel
def test_examples_recipe_locate(tmp_path):
    out = run("examples/recipe_locate.py", "--limit", "3", "--top-k", "20", "--out", tmp_path / "r")
    assert "split-half r" in out and (tmp_path / "r-gate" / "manifest.json").is_file()
