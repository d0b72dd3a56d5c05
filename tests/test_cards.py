"""Neuron cards from the run's top examples (no model), against cards from a forward pass over the corpus;
the output-token view of every family against its weights and against a measured perturbation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vneuron.cli import app
from vneuron.models import loading
from vneuron.models.sites import layer_modules, resolve_path

from .conftest import ARCHS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def card_json(*args) -> dict:
    result = run("show", *args, "-q", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def located(tmp_path_factory, tiny_dir):
    out = tmp_path_factory.mktemp("cards") / "run"
    result = run("locate", "--model", tiny_dir("llama"), "--dataset", EXAMPLES / "corpus.jsonl", "--split", "all", "-k", "5",
                 "--out", out, "-q", "--dtype", "float64")
    assert result.exit_code == 0, result.output + result.stderr
    older = out.parent / "older"  # the same run as one made before top examples: cards read the corpus with the model
    shutil.copytree(out, older, ignore=shutil.ignore_patterns("examples.safetensors"))
    return out, older


def test_a_card_needs_no_model_and_equals_the_corpus_pass(located, monkeypatch):
    run_dir, older = located
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["capture"]["top_examples"] == 5 and manifest["model"]["dtype"] == "float64"
    want = card_json(older, "2:7", "--texts", "3")  # loads the model, one pass over the corpus
    monkeypatch.setattr(loading, "_wrap", lambda *a, **k: pytest.fail("a card from top examples loaded the model"))
    got = card_json(run_dir, "2:7", "--texts", "3")
    for side in ("most", "least"):
        assert [s["id"] for s in got[side]] == [s["id"] for s in want[side]]
        assert [s["mean_activation"] for s in got[side]] == pytest.approx([s["mean_activation"] for s in want[side]], abs=1e-6)
        assert all(s["tokens"] is None and s["counted_span"] for s in got[side])  # no per-token values without the model
    for label, d in got["labels"].items():  # the run's own statistics
        assert d["tokens"] == want["labels"][label]["tokens"]
        assert d["mean"] == pytest.approx(want["labels"][label]["mean"], abs=1e-9)
        assert d["p_active"] == pytest.approx(want["labels"][label]["p_active"], abs=1e-12)
    assert got["names"] == want["names"] and got["output_tokens"] is None
    assert set(got["per_label"]) == set(got["labels"]) and all(len(v["most"]) <= 5 for v in got["per_label"].values())
    text = run("show", run_dir, "2:7", "--texts", "2", "-q")
    assert text.exit_code == 0 and "Most activating" in text.stdout and "counted tokens in bold" in text.stdout


def test_with_the_model_a_card_shades_tokens_and_shows_output_tokens(located, tiny_dir):
    run_dir, _ = located
    card = card_json(run_dir, "1:3", "--texts", "2", "--model", tiny_dir("llama"), "--output-tokens", "4")
    assert all(s["tokens"] and any(a is not None for _, a in s["tokens"]) for s in card["most"] + card["least"])
    for s in card["most"]:  # the shaded tokens average to the example's value
        counted = [a for _, a in s["tokens"] if a is not None]
        assert sum(counted) / len(counted) == pytest.approx(s["mean_activation"], abs=1e-6)
    out = card["output_tokens"]
    assert len(out["raises"]) == len(out["lowers"]) == 4 and out["raises"][0][1] >= out["raises"][-1][1] > out["lowers"][0][1]
    assert "unembedding" in out["note"]
    more = run("show", run_dir, "1:3", "--texts", "6", "-q", "--json")  # more than the run kept: read from the corpus
    assert more.exit_code == 0 and "Forward pass over" in json.loads(more.stdout)["source"]


def test_report_cards_come_from_the_top_examples(located, tmp_path):
    run_dir, _ = located
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["spec"] = str(tmp_path / "gone")  # the model directory was deleted since: cards still drawn
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = run("report", copy, "-o", tmp_path / "r.html", "--cards", "1", "-q")
    assert result.exit_code == 0, result.output + result.stderr
    page = (tmp_path / "r.html").read_text()
    assert "Neuron cards skipped" not in page and page.count("class='card'") == len(manifest["selected"])
    assert "Most activating texts" in page and any(p.name.startswith(("card-L")) or "-card-L" in p.name
                                                    for p in (tmp_path / "r-figures").iterdir())


def _manual_fold(hf, arch, layer: int, unit: int) -> torch.Tensor:
    """The direction by hand: each norm's gain (Gemma: 1 + w), LayerNorm's centring, family by family."""
    block = layer_modules(hf, arch)[layer]
    down = getattr(getattr(block, arch.mlp), arch.down)
    x = (down.weight[unit] if type(down).__name__ == "Conv1D" else down.weight[:, unit]).double()
    norms = [block.post_feedforward_layernorm] if hasattr(block, "post_feedforward_layernorm") else []
    base = resolve_path(hf, arch.base)
    norms.append(next(getattr(base, n) for n in ("norm", "ln_f", "final_layer_norm", "final_layernorm") if hasattr(base, n)))
    for norm in norms:
        name = type(norm).__name__
        if name == "LayerNorm":
            x = (x - x.mean()) * norm.weight.double()
        elif name.startswith("Gemma"):
            x = x * (1 + norm.weight.double())
        else:
            x = x * norm.weight.double()
    return x


@pytest.mark.parametrize("arch", ARCHS)
def test_output_direction_folds_the_norms_of_every_family(tiny_model, arch):
    from vneuron.results.cards import output_direction

    model = tiny_model(arch)
    hf = model.hf_model
    gen = torch.Generator().manual_seed(1)
    saved = {}
    with torch.no_grad():  # norm gains away from their initial 1 (or 0), so a missing or wrong norm shows
        for name, param in hf.named_parameters():
            if param.dim() == 1 and ("norm" in name or ".ln_" in name) and "vision" not in name:
                saved[name] = param.clone()
                param.copy_(torch.rand(param.shape, generator=gen, dtype=param.dtype) * 2.5 + 0.2)
    try:
        layer, unit = model.n_layers - 1, 3
        ours, manual = output_direction(model, layer, unit).double(), _manual_fold(hf, model.arch, layer, unit)
        assert torch.nn.functional.cosine_similarity(ours, manual, dim=0) > 1 - 1e-6
        # measured: nudge the unit's output column into the last block's MLP output; the logits move like the view says
        block = layer_modules(hf, model.arch)[layer]
        down = getattr(getattr(block, model.arch.mlp), model.arch.down)
        column = down.weight[unit] if type(down).__name__ == "Conv1D" else down.weight[:, unit]
        # each token a sequence of its own: attention is then the identity whatever its implementation (eager,
        # sdpa, Gemma 2's soft cap), and the mean over 8 inputs averages out what the view leaves out by design,
        # the RMS norm's projection along each input's own residual (one long input once gave 0.785 in CI)
        ids = torch.tensor(model.tokenizer("you choose to help the community .")["input_ids"]).unsqueeze(1)

        def last_logits(eps: float) -> torch.Tensor:
            hook = down.register_forward_hook(lambda mod, i, o: o + eps * column)
            try:
                with torch.no_grad():
                    return hf(input_ids=ids).logits[:, -1].double().mean(0)
            finally:
                hook.remove()

        measured = last_logits(1e-4) - last_logits(0.0)
        unembed = hf.get_output_embeddings().weight.double()
        view, naive = unembed @ ours, unembed @ column.double()
        rank = lambda t: t.argsort().argsort().double()  # noqa: E731
        rc = lambda a: float(torch.corrcoef(torch.stack([rank(a), rank(measured)]))[0, 1])  # noqa: E731
        assert rc(view) > 0.9 and rc(view) > rc(naive)  # measured: 0.954-0.999 over 14 families; unfolded 0.83-0.94
    finally:
        with torch.no_grad():
            for name, param in hf.named_parameters():
                if name in saved:
                    param.copy_(saved[name])
