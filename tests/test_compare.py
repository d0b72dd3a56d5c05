"""`vneuron compare`: overlap statistics on known numbers, and runs across sites, methods, languages and models."""

from __future__ import annotations

import csv
import json
import math
import re
from itertools import combinations
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vneuron.cli import app
from vneuron.results.compare import average_ranks, hypergeom_sf, spearman

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, pattern: str):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and re.search(pattern, lines[0]), result.stderr


def test_hypergeometric_tail_against_counting():
    population, a, b = 12, 4, 5
    total = math.comb(population, b)
    for k in range(0, 6):
        exact = sum(math.comb(a, x) * math.comb(population - a, b - x) for x in range(k, min(a, b) + 1)) / total
        assert hypergeom_sf(k, population, a, b) == pytest.approx(exact, rel=1e-12)
    assert hypergeom_sf(0, 36864, 200, 200) == 1.0 and hypergeom_sf(201, 36864, 200, 200) == 0.0
    exact = sum(math.comb(200, x) * math.comb(36864 - 200, 200 - x) for x in range(60, 201)) / math.comb(36864, 200)
    assert hypergeom_sf(60, 36864, 200, 200) == pytest.approx(exact, rel=1e-9)  # 60 shared where ~1 is expected


def test_spearman_uses_average_ranks_for_ties():
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x**3) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)
    # textbook example with ties: ρ is Pearson's r of the average ranks
    a, b = torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0, 4.0])
    ra, rb = average_ranks(a), average_ranks(b)
    assert spearman(a, b) == pytest.approx(float(torch.corrcoef(torch.stack([ra, rb]))[0, 1]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("compare")
    made = {}

    def locate(name, *args, model="llama", dataset=EXAMPLES / "corpus.jsonl"):
        out = root / name
        res = run("locate", "--model", tiny_dir(model), "--dataset", dataset, "--split", "all", "-k", "12", "--out", out, "-q", *args)
        assert res.exit_code == 0, res.output + res.stderr
        made[name] = out

    locate("gate")
    locate("down_in", "--site", "down_in")
    locate("cohen", "--method", "cohen_d")  # same statistics, another method
    locate("lape", "--method", "lape")
    locate("qwen", model="qwen2")  # another model, same layer count
    locate("neox", model="gpt_neox")  # another model, 2 layers: compared by relative depth
    locate("st_only", "--dimension", "self_transcendence")
    return made


def _neurons(path: Path, pole: str) -> list[tuple[int, int]]:
    return [(int(r["layer"]), int(r["unit"])) for r in csv.DictReader(open(path / "neurons.csv")) if r["dimension"] == pole]


def test_compare_two_runs_of_one_model(runs, tmp_path):
    out = tmp_path / "c.csv"
    res = run("compare", runs["gate"], runs["down_in"], "-o", out, "--json")
    assert res.exit_code == 0, res.output + res.stderr
    data = json.loads(res.stdout)
    assert [r["site"] for r in data["runs"]] == ["gate", "down_in"] and len(data["pairs"]) == 4
    rows = list(csv.DictReader(open(out)))
    for pair, row in zip(data["pairs"], rows):
        a, b = set(_neurons(runs["gate"], pair["pole"])), set(_neurons(runs["down_in"], pair["pole"]))
        assert pair["same_neurons"] and pair["overlap"] == len(a & b) == int(row["overlap"])
        assert pair["jaccard"] == pytest.approx(len(a & b) / len(a | b))
        assert pair["chance_overlap"] == pytest.approx(12 * 12 / (3 * 48))
        assert pair["p_overlap"] == pytest.approx(hypergeom_sf(len(a & b), 144, 12, 12))
        assert -1 <= pair["spearman"] <= 1
    layers = list(csv.DictReader(open(tmp_path / "c-layers.csv")))
    assert len(layers) == 4 * 3 and sum(int(r["count_a"]) for r in layers if r["pole"] == "conservation") == 12
    table = run("compare", runs["gate"], runs["down_in"], "-o", tmp_path / "t.csv")
    assert table.exit_code == 0 and "Overlap of located sets" in table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) <= 80


def test_the_same_statistics_scored_twice_correlate(runs, tmp_path):
    data = json.loads(run("compare", runs["gate"], runs["cohen"], "-o", tmp_path / "c.csv", "--json").stdout)
    # Δp and Cohen's d from the same counts: rank correlation well above zero
    assert all(p["spearman"] > 0.3 for p in data["pairs"])
    same = json.loads(run("compare", runs["gate"], runs["gate"], "-o", tmp_path / "s.csv", "--json").stdout)
    assert all(p["jaccard"] == 1.0 and p["spearman"] == pytest.approx(1.0) for p in same["pairs"])


def test_models_are_compared_by_layer_and_depth_and_a_matrix(runs, tmp_path):
    names = ["gate", "qwen", "neox"]
    data = json.loads(run("compare", *(runs[n] for n in names), "-o", tmp_path / "m.csv", "--json").stdout)
    assert len(data["pairs"]) == 3 * 4
    for pair in data["pairs"]:
        assert not pair["same_neurons"] and pair["overlap"] is None and pair["spearman"] is None
        assert 0 <= pair["depth_tv"] <= 1
    by_layer = [r for r in data["layers"] if r["a"] == 0 and r["b"] == 1]
    by_depth = [r for r in data["layers"] if r["b"] == 2]
    assert all(r["layer"] is not None for r in by_layer) and all(r["depth_bin"] is not None for r in by_depth)
    matrix = data["matrices"]["self_transcendence"]["values"]
    assert len(matrix) == 3 and all(matrix[i][i] == 1.0 for i in range(3))
    assert all(matrix[i][j] == matrix[j][i] for i, j in combinations(range(3), 2))


def test_report_of_several_runs_has_the_heatmap(runs, tmp_path):
    out = tmp_path / "several.html"
    res = run("report", runs["gate"], runs["neox"], "-o", out, "--cards", "0", "-q")
    assert res.exit_code == 0, res.output + res.stderr
    names = [p.stem for p in (tmp_path / "several-figures").glob("*.png")]
    assert any(n.endswith("compare-heatmap") for n in names) and any(n.endswith("compare-depth") for n in names)
    assert "Pairwise overlap of located sets" in out.read_text()


def test_bad_inputs(runs, tmp_path):
    out = tmp_path / "bad.csv"
    assert_one_line_error(run("compare", runs["gate"], tmp_path, "-o", out), "not a vneuron run")
    assert_one_line_error(run("compare", runs["gate"], "-o", out), "at least two runs")
    ablate = tmp_path / "fake-ablate"
    ablate.mkdir()
    (ablate / "manifest.json").write_text(json.dumps({"kind": "ablate"}))
    assert_one_line_error(run("compare", runs["gate"], ablate, "-o", out), "'ablate' run; compare takes locate runs")
    assert_one_line_error(run("compare", runs["gate"], runs["st_only"], "-o", out), r"Pole '\w+' is only in .*Pass --dimension")
    assert_one_line_error(run("compare", runs["gate"], runs["st_only"], "--dimension", "conservation", "-o", out),
                          "not in run")
    assert not out.exists() and not (tmp_path / "bad-layers.csv").exists()
    ok = run("compare", runs["gate"], runs["st_only"], "--dimension", "self_transcendence", "-o", out)
    assert ok.exit_code == 0 and out.exists()


def test_delta_p_against_lape_and_a_lape_report(runs, tmp_path):
    res = run("compare", runs["gate"], runs["lape"], "-o", tmp_path / "l.csv", "--json")
    assert res.exit_code == 0, res.output + res.stderr
    data = json.loads(res.stdout)
    assert [r["method"] for r in data["runs"]] == ["delta_p", "lape"]
    for pair in data["pairs"]:  # LAPE runs are scored by Δp over all neurons: the same statistics, ρ = 1
        assert pair["same_neurons"] and pair["spearman"] == pytest.approx(1.0)
    out = tmp_path / "lape.html"
    rep = run("report", runs["lape"], "-o", out, "--cards", "0", "-q")
    assert rep.exit_code == 0, rep.output + rep.stderr
    assert "LAPE selects by entropy" in out.read_text()
