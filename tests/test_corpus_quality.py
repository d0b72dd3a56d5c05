"""recipes/corpus_quality.py runs end to end on a tiny random model."""

from __future__ import annotations

import json

from tests.test_recipes import run


def test_corpus_quality_recipe(tmp_path, tiny_dir):
    out = run("recipes/corpus_quality.py", "--model", tiny_dir("llama"), "--languages", "en", "--top-k", "10",
              "--limit", "6", "--eval-limit", "2", "--out", tmp_path)
    result = json.loads((tmp_path / "quality.json").read_text())
    en = result["results"]["en"]
    assert set(en["stability"]) == {"openness_to_change", "conservation", "self_enhancement", "self_transcendence"}
    assert all(s["k"] == 10 and 0 <= s["jaccard"] <= 1 for s in en["stability"].values())
    fc = en["forced_choice"]
    assert fc["all"]["n"] == 8 and all(fc[d]["n"] == 2 for d in en["stability"])
    assert all(0 <= fc[d]["accuracy"] <= 1 for d in fc)
    assert "| en | self_transcendence |" in out and (tmp_path / "quality.md").read_text().startswith("Model ")


def test_corpus_quality_describe_counts_the_builtin_corpus():
    out = run("recipes/corpus_quality.py", "--describe")
    assert "| language | dimension (of option_pole) | train | test | total | descriptions |" in out
    assert "| en | **all** |" in out and "| zh | **all** |" in out and "| **all** | **all** |" in out
