"""vneuron's own remote paths against a real NDIF server on 127.0.0.1 (ndif 0.1.2, nnsight 0.8.1).

Run: bash scripts/ndif/server.sh install && python -m pytest -m remote tests/remote -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import vneuron.runtime.remote as ndif
from vneuron.locate.capture import ActivationStats
from vneuron.validate.edits import Edit
from vneuron.errors import VneuronError
from vneuron.validate.evaluate import continuation_logprobs, generate
from vneuron.locate.locating import LocateConfig, locate
from vneuron.models.loading import load_model
from vneuron.locate.scoring import NeuronSet

pytestmark = pytest.mark.remote
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIG = dict(dataset=str(EXAMPLES / "corpus.jsonl"), split="all", top_k=5, batch_tokens=40, request_batches=2)


@pytest.fixture(scope="module")
def models(ndif_server):
    target = ndif.resolve_target(ndif_server.url, timeout=120)
    return load_model(ndif_server.model_dir), load_model(ndif_server.model_dir, remote=target)


def test_locate_over_the_wire_equals_local(tmp_path, models):
    local_model, remote_model = models
    assert remote_model.hf_model is None  # the client holds no weights
    local = locate(local_model, LocateConfig(**CONFIG), out=tmp_path / "local")
    remote = locate(remote_model, LocateConfig(**CONFIG), out=tmp_path / "remote")
    torch.testing.assert_close(remote.stats.sum, local.stats.sum, atol=1e-4, rtol=1e-5)
    assert torch.equal(remote.stats.n, local.stats.n)
    for pole in local.sets:
        assert remote.sets[pole].jaccard(local.sets[pole]) > 0.6
    manifest = json.loads((tmp_path / "remote" / "manifest.json").read_text())
    assert manifest["remote"]["requests"] >= 2 and manifest["remote"]["received_tensor_bytes"] > 0


def test_edited_scoring_and_generation_over_the_wire(models):
    local_model, remote_model = models
    neurons = NeuronSet.from_flat(torch.arange(0, 144, 4), torch.zeros(3, 48), "gate")
    edit = Edit(neurons, "scale", gamma=-3.0)
    pairs = [("you choose to", " help the community"), ("what would you", " do ?")]
    torch.testing.assert_close(continuation_logprobs(remote_model, pairs, edit), continuation_logprobs(local_model, pairs, edit),
                               atol=1e-4, rtol=1e-5)
    prompts = ["you choose to help the community", "what would you do"]
    assert generate(remote_model, prompts, edit, max_new_tokens=4) == generate(local_model, prompts, edit, max_new_tokens=4)


def test_ablate_over_the_wire_equals_local(tmp_path, models, ndif_server):
    from vneuron.config import ValidateConfig
    from vneuron.validate.study import ablate

    local_model, _ = models
    run = locate(local_model, LocateConfig(**CONFIG), out=tmp_path / "run")
    config = ValidateConfig(controls=2, split="all", generations=1, dimensions=["conservation"])
    local = ablate(run.run_dir, config, model=local_model, out=tmp_path / "local")
    remote = ablate(run.run_dir, config, out=tmp_path / "remote", remote=ndif_server.url)  # remote= as the API takes it
    a, b = local.summaries[0], remote.summaries[0]
    assert a["effect"] == pytest.approx(b["effect"], abs=1e-4)
    assert a["control_effects"] == pytest.approx(b["control_effects"], abs=1e-4)


def test_detached_requests_are_collected_later(tmp_path, models):
    _, remote_model = models
    out = tmp_path / "detached"
    with pytest.raises(ndif.Detached) as submitted:
        locate(remote_model, LocateConfig(**CONFIG), out=out, detach=True)
    state = json.loads((submitted.value.where / "state.json").read_text())
    assert state["done"] == 0 and len(state["jobs"]) >= 2
    result = locate(remote_model, LocateConfig(**CONFIG), out=out, resume=True)
    assert result.stats.n.sum() > 0 and not submitted.value.where.exists()


def test_interrupted_run_resumes_without_double_counting(tmp_path, models, monkeypatch):
    local_model, remote_model = models
    reference = locate(local_model, LocateConfig(**CONFIG), out=tmp_path / "reference").stats
    out = tmp_path / "interrupted"
    calls = {"n": 0}
    real_wait = ndif.wait

    def flaky_wait(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second request is in flight
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(ndif, "wait", flaky_wait)
    with pytest.raises(KeyboardInterrupt):
        locate(remote_model, LocateConfig(**CONFIG), out=out)
    monkeypatch.setattr(ndif, "wait", real_wait)
    partial = out.with_name(f".{out.name}.partial")
    state = json.loads((partial / "state.json").read_text())
    assert state["done"] == 1 and "1" in state["jobs"]  # request 1 was submitted: it is collected, not resent
    with pytest.raises(VneuronError, match="`resume`"):  # the library names the setting; the CLI shows --resume
        locate(remote_model, LocateConfig(**CONFIG), out=out)
    resumed = locate(remote_model, LocateConfig(**CONFIG), out=out, resume=True)
    torch.testing.assert_close(resumed.stats.sum, reference.sum, atol=1e-4, rtol=1e-5)
    assert torch.equal(resumed.stats.n, reference.n)
    assert ActivationStats.load(out / "stats.safetensors").n.sum() == reference.n.sum()


def test_the_server_cannot_import_vneuron(ndif_server):
    """What passes here passes on an NDIF server without vneuron: its functions travel by value
    (remote.ship_by_value), and the loopback stack runs outside this checkout (server.sh)."""
    import nnsight

    from .conftest import client_model

    model = client_model(ndif_server.model_dir)
    with model.trace("you choose", remote=ndif_server.url):
        import importlib.util

        where = nnsight.save(str(importlib.util.find_spec("vneuron")))
    assert where == "None"


def test_server_side_error_is_one_line(models):
    _, remote_model = models

    def broken():
        with remote_model.lm.trace("you choose", **ndif.trace_kwargs(remote_model)) as tracer:
            bad = remote_model.lm.model.layers[0].mlp.act_fn.output[..., 10_000].save()
        return ndif.outcome(remote_model, tracer, lambda: {"bad": bad})

    with pytest.raises(VneuronError) as err:
        ndif.call(remote_model, broken)
    assert "NDIF server raised an error" in str(err.value) and "\n" not in str(err.value)
    assert "index" in str(err.value).lower()


def test_unreachable_host_is_one_line(ndif_server):
    target = ndif.resolve_target("http://127.0.0.1:9", timeout=5, retries=1, backoff=0.1)
    model = load_model(ndif_server.model_dir, remote=target)
    with pytest.raises(VneuronError, match="unreachable"):
        continuation_logprobs(model, [("you", " choose")])


def test_doctor_and_status_reach_the_server(ndif_server):
    from typer.testing import CliRunner

    from vneuron.cli import app

    runner = CliRunner()
    doctor = runner.invoke(app, ["doctor", "--host", ndif_server.url])
    assert doctor.exit_code == 0 and "yes" in doctor.output, doctor.output
    status = runner.invoke(app, ["models", "--host", ndif_server.url])
    assert status.exit_code == 0 and "NDIF now" in status.output and "not running" in status.output, status.output
