"""The CLI through Typer's runner: the main job on a tiny model, reuse, re-selection, bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vneuron.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, pattern: str):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and __import__("re").search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.output


@pytest.fixture
def llama(tiny_dir):
    return tiny_dir("llama")


def test_locate_writes_a_complete_run_then_reuses_and_reselects(tmp_path, llama):
    out = tmp_path / "run"
    result = run("locate", "--model", llama, "--dataset", EXAMPLES / "corpus.jsonl", "--split", "all", "-k", "7", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert "self_transcendence vs self_enhancement" in result.output and "Run written to" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["architecture"] == "llama" and manifest["model"]["revision"].startswith("dir:")
    assert len(manifest["dataset"]["sha256"]) == 64 and manifest["versions"]["nnsight"]
    assert manifest["selection"]["top_k"] == 7 and manifest["capture"]["site"] == "gate"
    assert sorted(p.name for p in (out / "neurons").iterdir()) == [f"{d}.safetensors" for d in sorted(
        ["conservation", "openness_to_change", "self_enhancement", "self_transcendence"])]
    rows = list(csv.DictReader(open(out / "neurons.csv")))
    assert len(rows) == 4 * 7 and {"layer", "unit", "score", "p_pole", "p_opposite", "mean_diff"} <= set(rows[0])
    assert "NDIF_API_KEY" not in (out / "manifest.json").read_text()

    refused = run("locate", "--model", llama, "--dataset", EXAMPLES / "corpus.jsonl", "--split", "all", "-k", "3", "--out", out)
    assert_one_line_error(refused, rf"{out.name} already exists.*--from {out} with a new --out.*--force")
    assert json.loads((out / "manifest.json").read_text())["selection"]["top_k"] == 7

    again = run("locate", "--model", llama, "--dataset", EXAMPLES / "corpus.jsonl", "--split", "all", "-k", "3", "--out", out, "--force")
    assert again.exit_code == 0 and "Reusing statistics" in again.output + again.stderr
    assert "--force: replacing" in again.output
    replaced = json.loads((out / "manifest.json").read_text())
    assert replaced["selection"]["top_k"] == 3 and "locate of" in replaced["replaced"]

    parent_files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    child = tmp_path / "cohen"
    reselect = run("locate", "--from", out, "--method", "cohen_d", "--rule", "per_layer", "-k", "2", "-q", "--out", child)
    assert reselect.exit_code == 0, reselect.output
    assert f"Run written to {child}" in reselect.output.replace("\n", "")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == parent_files  # the parent is untouched
    rows = list(csv.DictReader(open(child / "neurons.csv")))
    assert len(rows) == 4 * 3 * 2  # 4 poles × 3 layers × 2
    manifest = json.loads((child / "manifest.json").read_text())
    assert manifest["command"][1:3] == ["locate", "--from"] and manifest["parent_run"]["path"] == str(out)
    assert manifest["selection"]["method"] == "cohen_d" and not (child / "stats.safetensors").exists()
    assert manifest["statistics"]["file"] == "../run/stats.safetensors" and len(manifest["statistics"]["sha256"]) == 64

    from vneuron.locate.runs import LocateRun

    opened = LocateRun.open(child)  # ablate and steer find the parent's statistics through the reference
    assert torch.equal(opened.stats.sum, LocateRun.open(out).stats.sum) and len(opened.sets["conservation"]) == 6

    grandchild = run("locate", "--from", child, "-k", "4", "-q", "--dimension", "conservation")  # default: a new name beside it
    assert grandchild.exit_code == 0, grandchild.output
    (made,) = [p for p in tmp_path.iterdir() if p.name.startswith("cohen-delta_p-k4-")]
    assert json.loads((made / "manifest.json").read_text())["statistics"]["absolute"] == str((out / "stats.safetensors").resolve())
    assert sorted(p.name for p in (made / "neurons").iterdir()) == ["conservation.safetensors"]

    contradict = run("locate", "--from", out, "--site", "down_in", "-k", "5", "--out", tmp_path / "x")
    assert_one_line_error(contradict,
                          r"--site down_in contradicts --from .*captured with --site gate.*(?i:drop) --site.*with --model .*llama "
                          r"--dataset .*corpus.jsonl --site down_in and a new --out")
    assert_one_line_error(run("locate", "--from", out, "--null", "3", "--out", tmp_path / "x"), "--null has no effect with --from")
    assert_one_line_error(run("locate", "--from", out, "--out", out), "would write over or inside the run")
    assert not (tmp_path / "x").exists()


def test_locate_generation_mode_saves_generations(tmp_path, llama):
    out = tmp_path / "gen"
    result = run("locate", "--model", llama, "--dataset", EXAMPLES / "corpus.jsonl", "--split", "all", "--mode", "generate",
                 "--max-new-tokens", "3", "-k", "5", "--dimension", "self_transcendence", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    lines = (out / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 4  # 4 items touch the ST/SE axis, each asked under both values
    assert all(json.loads(line)["tokens_counted"] <= 3 for line in lines)


def test_texts_with_column_mapping(tmp_path, llama):
    result = run("locate", "--model", llama, "--dataset", EXAMPLES / "texts.csv", "--columns", "text=sentence,label=value_label",
                 "--span", "all", "-k", "4", "--out", tmp_path / "t", "-q")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, pattern", [
    (["--model", "no-such-model"], "Unknown model 'no-such-model'.*alias"),
    (["--dataset", "/nonexistent/corpus.jsonl"], "does not exist"),
    (["-k", "100000"], r"--top-k 100000 is out of range.*144 neurons"),
    (["--method", "magic"], "Unknown --method 'magic'"),
    (["--site", "residual"], "Unknown neuron site"),
    (["--dimension", "kindness"], "has no label kindness"),
    (["--columns", "text"], "Cannot read column mapping"),
])
def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path, llama, args, pattern):
    out = tmp_path / "run"
    base = ["locate", "--model", llama, "--dataset", EXAMPLES / "corpus.jsonl", "--out", out, "-q"]
    for i in range(0, len(args), 2):  # later options override the base ones
        if args[i] in base:
            base[base.index(args[i]) + 1] = args[i + 1]
        else:
            base += args[i:i + 2]
    result = run(*base)
    assert_one_line_error(result, pattern)
    assert not out.exists()
    assert not list(tmp_path.glob(".run.tmp*"))


def test_unsupported_architecture_and_malformed_corpus(tmp_path, llama):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    assert_one_line_error(run("locate", "--model", bert, "--out", tmp_path / "x", "-q"), "Unsupported architecture 'bert'.*llama")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"scenario": "x", "option_pole": "a"}\n')
    assert_one_line_error(run("locate", "--model", llama, "--dataset", bad, "--out", tmp_path / "y", "-q"), "missing columns")
    existing = tmp_path / "full"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert_one_line_error(run("locate", "--model", llama, "--dataset", EXAMPLES / "corpus.jsonl", "-k", "5", "--out", existing, "-q"),
                          "already exists")
    assert (existing / "keep.txt").read_text() == "mine"
    assert_one_line_error(run("locate", "--from", tmp_path), "not a vneuron run")


def test_info_commands():
    listing = run("models").output
    assert "gemma-3-270m" in listing and "(default)" in listing and "llama-70b" in listing
    assert "builtin" in run("datasets").output
    doctor = run("doctor")  # no network unless asked
    assert doctor.exit_code == 0 and "nnsight" in doctor.output and "not checked" in doctor.output
    unreachable = run("doctor", "--host", "http://127.0.0.1:9")
    assert unreachable.exit_code == 0 and "Connection refused" in unreachable.output
    assert_one_line_error(run("models", "--host", "http://127.0.0.1:9"), "unreachable")


def test_label_shuffle_null_is_reported(tmp_path, llama):
    out = tmp_path / "null"
    result = run("locate", "--model", llama, "--dataset", EXAMPLES / "corpus.jsonl", "--split", "all", "-k", "10",
                 "--null", "2", "--out", out, "-q", "--dimension", "conservation")
    assert result.exit_code == 0, result.output
    null = json.loads((out / "manifest.json").read_text())["null"]["conservation"]
    assert null["shuffles"] == 2 and len(null["passing_by_chance"]) == 2 and null["selected"] == 10
    assert all(0 <= c <= 144 for c in null["passing_by_chance"])
    assert "label-shuffle null" in result.output


def test_shuffled_corpus_swaps_options_within_scenarios():
    from vneuron.data import load_corpus
    from vneuron.locate.locating import shuffled

    corpus = load_corpus(EXAMPLES / "corpus.jsonl")
    mixed = shuffled(corpus, seed=10_000)
    swapped = [a.option_pole == b.option_opposite for a, b in zip(corpus.items, mixed.items)]
    assert any(swapped) and not all(swapped)
    for a, b in zip(corpus.items, mixed.items):
        assert {a.option_pole, a.option_opposite} == {b.option_pole, b.option_opposite} and a.scenario == b.scenario


def test_locate_through_the_server_simulation_equals_local(tmp_path, llama):
    common = ["locate", "--model", llama, "--dataset", EXAMPLES / "corpus.jsonl", "--split", "all", "-k", "5", "-q",
              "--batch-tokens", "40"]
    local = run(*common, "--out", tmp_path / "local")
    remote = run(*common, "--out", tmp_path / "remote", "--host", "local", "--request-batches", "2")
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    from vneuron.locate.capture import ActivationStats
    from vneuron.locate.runs import LocateRun

    a = ActivationStats.load(tmp_path / "local" / "stats.safetensors")
    b = ActivationStats.load(tmp_path / "remote" / "stats.safetensors")
    assert torch.allclose(a.sum, b.sum, atol=1e-5) and torch.equal(a.n, b.n) and torch.equal(a.active, b.active)
    manifest = json.loads((tmp_path / "remote" / "manifest.json").read_text())
    assert manifest["remote"]["host"] == "local" and manifest["remote"]["requests"] >= 2
    # downloads are O(layers × slots × width) per request, and the probe rows O(layers × hidden) per prompt
    # (each request brings back the slots its batches touched: float32 sums, layers·3·slots·width·4 bytes + the counts,
    # Σh per slot and layer, layers·slots·hidden·4, and one float32 row per prompt and layer, layers·prompts·hidden·4)
    for r in manifest["remote"]["log"]:
        assert 1 <= r["slots"] <= 8 and r["received_tensor_bytes"] == (3 * 3 * r["slots"] * 48 * 4 + r["slots"] * 4
                                                                        + 3 * r["slots"] * 32 * 4 + 3 * r["prompts"] * 32 * 4), r
    ra = LocateRun.open(tmp_path / "local").residual()
    rb = LocateRun.open(tmp_path / "remote").residual()
    assert torch.allclose(ra.sum, rb.sum, atol=1e-4) and torch.allclose(ra.rows, rb.rows, atol=1e-4, equal_nan=True)
    assert manifest["probes"]["poles"].keys() == json.loads((tmp_path / "local" / "manifest.json").read_text())["probes"]["poles"].keys()
    assert not list(tmp_path.glob(".remote.partial"))
    ablated = run("ablate", tmp_path / "remote", "--host", "local", "--controls", "1", "--split", "all", "-q",
                  "--dimension", "conservation", "--generations", "1")
    assert ablated.exit_code == 0, ablated.output
