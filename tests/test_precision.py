"""Compute dtypes: the bfloat16 twin of the plain-hook oracle (with its tolerance), `auto`'s decision
and its cache, and the cached copy of a conversion in another dtype."""

from __future__ import annotations

import json

import pytest
import torch

from vneuron.runtime import precision
from vneuron.locate.capture import CaptureConfig, capture
from vneuron.models import conversion, loading

from .conftest import ARCHS
from .reference import hook_stats
from .test_capture import LABELS, PROMPTS

# bfloat16 rounds each product's inputs to 8 bits of mantissa, and a padded batch sums in another order than
# one prompt alone, so the twin allows Σa within 1 % and Σa² within 2 % of the largest value of the tensor
# (every label, layer and neuron), and count(a > 0) off by 3 tokens (activations rounded across zero).
# Measured on these models, the worst over every family and both sites: 0.46 %, 0.85 % and 2 tokens.
BF16_SUM, BF16_SUMSQ, BF16_COUNT = 0.01, 0.02, 3


@pytest.mark.parametrize("arch", ARCHS)
def test_bfloat16_capture_equals_bfloat16_hooks_within_its_tolerance(tiny_model, arch):
    model = tiny_model(arch, "bfloat16")
    assert next(model.hf_model.parameters()).dtype == torch.bfloat16 and model.extra["dtype"] == "bfloat16"
    for site in ("gate", "down_in"):
        want = hook_stats(model, PROMPTS, LABELS, site=site)
        for padding in ("right", "left"):  # every prompt in one padded batch
            got = capture(model, PROMPTS, CaptureConfig(site=site, folds=1, padding=padding), labels=LABELS)
            assert got.sum.dtype == torch.float64 and torch.equal(got.n, want.n)  # float64 accumulation, exact counts
            assert (got.sum - want.sum).abs().max() <= BF16_SUM * want.sum.abs().max()
            assert (got.sumsq - want.sumsq).abs().max() <= BF16_SUMSQ * want.sumsq.max()
            assert (got.active - want.active).abs().max() <= BF16_COUNT


def test_auto_keeps_a_faster_dtype_only_if_its_check_passes(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VNEURON_CACHE", str(tmp_path / "cache"))
    spec = str(tiny_dir("llama"))
    monkeypatch.setattr(precision, "speeds", lambda h, w, **_: {"float32": 1.0, "bfloat16": 0.4, "float16": 0.95})
    model = loading.load_model(spec, dtype="auto")
    choice = model.extra["dtype_choice"]
    assert model.extra["dtype"] == "bfloat16" and next(model.hf_model.parameters()).dtype == torch.bfloat16
    assert choice["checks"]["bfloat16"]["passed"] and "float16" not in choice["checks"]  # not faster by the margin
    assert 0 < choice["checks"]["bfloat16"]["max_mean_logprob_diff"] <= precision.TOLERANCE
    # the decision is cached per model and machine: the second run checks nothing
    monkeypatch.setattr(precision, "check_logprobs", lambda *a, **k: pytest.fail("checked again"))
    assert loading.load_model(spec, dtype="auto").extra["dtype"] == "bfloat16"
    # a check that fails leaves float32
    (tmp_path / "cache" / "dtype-checks.json").unlink()
    monkeypatch.undo()
    monkeypatch.setenv("VNEURON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "speeds", lambda h, w, **_: {"float32": 1.0, "bfloat16": 0.4, "float16": 0.95})
    monkeypatch.setattr(precision, "TOLERANCE", 0.0)
    strict = loading.load_model(spec, dtype="auto")
    assert strict.extra["dtype"] == "float32" and not strict.extra["dtype_choice"]["checks"]["bfloat16"]["passed"]
    assert "no faster dtype passed" in strict.extra["dtype_choice"]["chosen_by"]
    # nothing faster than float32: nothing is checked
    monkeypatch.setattr(precision, "speeds", lambda h, w, **_: {"float32": 1.0, "bfloat16": 1.1, "float16": 2.0})
    plain = loading.load_model(spec, dtype="auto")
    assert plain.extra["dtype"] == "float32" and plain.extra["dtype_choice"]["checks"] == {}


def test_a_check_catches_a_dtype_that_overflows():
    reference = [torch.tensor([-1.0, -2.0])]
    assert not precision.compare(reference, [torch.tensor([-1.0, -torch.inf])])["passed"]
    assert precision.compare(reference, [torch.tensor([-1.01, -2.02])])["passed"]
    assert not precision.compare(reference, [torch.tensor([-1.2, -2.2])])["passed"]  # 0.2 nats > TOLERANCE


def test_a_cached_conversion_gets_a_copy_per_dtype(tiny_dir, tmp_path):
    converted = tmp_path / "m-0123456789abcdef"
    import shutil

    shutil.copytree(tiny_dir("gemma3"), converted)
    (converted / ".complete").write_text(json.dumps({"gguf": "m.gguf", "sha256": "0" * 64}))
    copy = conversion.dtype_copy(converted, "bfloat16")
    assert copy.name == converted.name + "-bfloat16" and json.loads((copy / ".complete").read_text())["dtype"] == "bfloat16"
    assert conversion.dtype_copy(converted, "bfloat16") == copy and conversion.dtype_copy(converted, "float32") == converted
    from safetensors.torch import load_file

    f32, bf16 = load_file(str(converted / "model.safetensors")), load_file(str(copy / "model.safetensors"))
    assert set(f32) == set(bf16) and all(torch.equal(f32[k].to(torch.bfloat16), bf16[k]) for k in f32)
    assert (copy / "tokenizer.json").read_bytes() == (converted / "tokenizer.json").read_bytes()
    assert not list(tmp_path.glob("*.tmp*"))


def test_a_remote_model_computes_in_what_its_server_serves(tiny_dir):
    from transformers import AutoConfig

    from vneuron.models.loading import served

    config = AutoConfig.from_pretrained(tiny_dir("llama"))
    config.dtype = "bfloat16"
    assert served(config) == "bfloat16"
    config.dtype = None
    config.torch_dtype = None
    assert served(config) == "bfloat16"  # what NDIF serves
    with pytest.raises(Exception, match="Unknown dtype 'float8'"):
        loading.load_model(str(tiny_dir("llama")), dtype="float8")


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_mixed_rounds_only_the_blocks_products_and_reads_neurons_in_float32(tiny_model, arch):
    """bf16-mixed: the blocks' linear maps hold bfloat16 weights, everything else (embeddings, norms, LM head) float32;
    the neurons are read in float32 where they were, within bfloat16's tolerance of the float32 hooks."""
    from transformers.pytorch_utils import Conv1D

    from vneuron.models.sites import layer_modules, resolve_path

    model = tiny_model(arch, precision.MIXED)
    assert model.extra["dtype"] == precision.MIXED
    inside = set()
    for block in layer_modules(model.hf_model, model.arch):
        for module in block.modules():
            if isinstance(module, (torch.nn.Linear, Conv1D)):
                assert module.weight.dtype == torch.bfloat16
                inside.add(id(module.weight))
    assert inside
    others = [p for p in model.hf_model.parameters() if id(p) not in inside]
    assert others and all(p.dtype == torch.float32 for p in others)
    assert resolve_path(model.hf_model, model.arch.head).weight.dtype == torch.float32
    want = hook_stats(tiny_model(arch, "float32"), PROMPTS, LABELS, site="gate")
    got = capture(model, PROMPTS, CaptureConfig(site="gate", folds=1), labels=LABELS)
    assert torch.equal(got.n, want.n)
    assert (got.sum - want.sum).abs().max() <= BF16_SUM * want.sum.abs().max()
    assert (got.sumsq - want.sumsq).abs().max() <= BF16_SUMSQ * want.sumsq.max()
    assert (got.active - want.active).abs().max() <= BF16_COUNT


def test_bf16_mixed_scores_forced_choice_near_float32_and_edits_apply(tiny_model):
    """The forced choice under bf16-mixed stays near float32's (a random tiny model magnifies rounding: the default
    model's per-item distance is in docs/EVIDENCE.md), and a neuron edit moves it as it moves float32's."""
    from vneuron.data import load_corpus
    from vneuron.locate.scoring import NeuronSet
    from vneuron.validate.edits import Edit
    from vneuron.validate.evaluate import forced_choice

    from .test_validate import EXAMPLES

    items = load_corpus(EXAMPLES / "corpus.jsonl").items[:6]
    exact, mixed = tiny_model("llama", "float32"), tiny_model("llama", precision.MIXED)
    edit = Edit(NeuronSet.from_flat(torch.arange(0, 144, 2), torch.zeros(3, 48), "gate"), "zero")
    p = {name: [forced_choice(m, items, e).p_pole for e in (None, edit)] for name, m in (("exact", exact), ("mixed", mixed))}
    assert all(x.dtype == torch.float64 and torch.isfinite(x).all() for pair in p.values() for x in pair)
    assert (p["mixed"][0] - p["exact"][0]).abs().max() < 0.05
    shift = {k: v[1] - v[0] for k, v in p.items()}
    assert (shift["mixed"] - shift["exact"]).abs().max() < 0.05 and shift["exact"].abs().max() > 0
