"""The remote path at the 8B shape through the real NDIF stack on loopback: Llama-3.1-8B's 32 layers ×
14,336 MLP neurons (hidden 64, random weights), so every locate request brings back results of the real
size (3 slots × 32 × 14,336 × 3 sums, 16.5 MB of float32), ablate scores under real-width edits, and a
detached run is collected later. --limit keeps the prompts few so the tier stays within a few minutes.

Run: bash scripts/ndif/server.sh install && python -m pytest -m remote tests/remote -q
"""

from __future__ import annotations

import json

import pytest
import torch

import vneuron.runtime.remote as ndif
from vneuron.locate.capture import ActivationStats
from vneuron.config import ValidateConfig
from vneuron.locate.plan import locate_plan
from vneuron.validate.plan import validation_plan
from vneuron.locate.locating import LocateConfig, locate
from vneuron.models.loading import load_model

pytestmark = pytest.mark.remote
CONFIG = dict(limit=2, top_k=50, request_batches=3)  # the built-in corpus, 2 items per dimension: 8 slots, 3 requests


@pytest.fixture(scope="module")
def shape(ndif_server):
    target = ndif.resolve_target(ndif_server.url, timeout=600)
    return load_model(ndif_server.shape_dir), load_model(ndif_server.shape_dir, remote=target)


@pytest.fixture(scope="module")
def located(shape, ndif_server, tmp_path_factory):
    local_model, remote_model = shape
    root = tmp_path_factory.mktemp("shape8b")
    plan = locate_plan(ndif_server.shape_dir, LocateConfig(**CONFIG), remote=ndif_server.url)
    remote = locate(remote_model, LocateConfig(**CONFIG), out=root / "remote")
    local = locate(local_model, LocateConfig(**CONFIG), out=root / "local")
    return plan, remote, local, root


def test_locate_at_8b_shape_equals_local_and_its_dry_run(located, shape):
    from vneuron.locate.capture import prompt_bytes, slot_bytes

    plan, remote, local, root = located
    assert (remote.stats.n_layers, remote.stats.width) == (32, 14_336)
    assert torch.equal(remote.stats.n, local.stats.n)
    # the server's matrix products run with its own thread count, so an activation within rounding of 0 can fall
    # on the other side of it: counts of a > 0 may differ by one in a few cells (measured: 29 of 3.67 M), no more
    moved = (remote.stats.active - local.stats.active).abs()
    assert float(moved.max()) <= 1 and int((moved > 0).sum()) <= 1e-4 * moved.numel()
    torch.testing.assert_close(remote.stats.sum, local.stats.sum, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(remote.stats.sumsq, local.stats.sumsq, atol=1e-3, rtol=1e-5)
    log = remote.manifest["remote"]["log"]
    assert len(log) == plan["least"]["requests"] == 3
    assert sum(r["received_tensor_bytes"] for r in log) == plan["least"]["bytes_down"]
    assert sum(r["sent_tensor_bytes"] for r in log) == plan["least"]["bytes_up"]
    slot = slot_bytes(shape[0], residual=True)  # Σa, Σa², count per neuron, the token count, Σh per layer (residual)
    hidden = shape[0].arch.hidden(shape[0].config)
    assert slot == (3 * 32 * 14_336 + 32 * hidden + 1) * 4
    row = prompt_bytes(shape[0], LocateConfig(**CONFIG).capture_config())  # each prompt's mean residual per layer (probes)
    assert row == 4 * 32 * hidden
    # only the slots it touched, and its prompts' probe rows
    assert [r["received_tensor_bytes"] for r in log] == [r["slots"] * slot + r["prompts"] * row for r in log]
    assert max(r["received_tensor_bytes"] for r in log) <= ndif.MAX_RESULT_BYTES
    for r in log:  # measured on the wire: compressed by nnsight (zstd), never more than the tensors
        wire = r["wire"]
        assert 0 < wire["down_bytes"] <= r["received_tensor_bytes"] * 1.01 and 0 < wire["up_bytes"]
        assert {"serialize_s", "post_s", "download_s", "decode_s"} <= set(wire) and r["job"]


def test_the_server_logs_what_each_request_cost(located, ndif_server):
    from .conftest import STATE

    _, remote, _, _ = located
    served = {r["id"]: r for r in map(json.loads, (STATE / "logs" / "requests.jsonl").read_text().splitlines())}
    for r in remote.manifest["remote"]["log"]:
        s = served[r["job"]]
        assert s["status"] == "completed" and s["block_s"] > 0 and s["store_s"] >= 0 and s["cpu_s"] > 0
        assert s["result_bytes"] >= r["received_tensor_bytes"] and s["result_wire_bytes"] == r["wire"]["down_bytes"]
        assert s["peak_rss_bytes"] >= s["rss_before_bytes"] > 0


def test_detached_at_8b_shape_resumes_to_identical_statistics(located, shape, tmp_path):
    _, remote, _, _ = located
    _, remote_model = shape
    out = tmp_path / "detached"
    with pytest.raises(ndif.Detached) as submitted:
        locate(remote_model, LocateConfig(**CONFIG), out=out, detach=True)
    assert len(json.loads((submitted.value.where / "state.json").read_text())["jobs"]) == 3
    resumed = locate(remote_model, LocateConfig(**CONFIG), out=out, resume=True)
    for key in ("n", "sum", "sumsq", "active"):
        assert torch.equal(getattr(resumed.stats, key), getattr(remote.stats, key)), key
    assert torch.equal(ActivationStats.load(out / "stats.safetensors").sum, remote.stats.sum)


def test_ablate_at_8b_shape_equals_local_and_its_dry_run(located, shape, ndif_server, tmp_path):
    from vneuron.validate.study import ablate

    _, remote, _, _ = located
    local_model, _ = shape
    config = ValidateConfig(controls=2, stop_after=0, max_controls=0, split="test", limit=1, dimensions=["conservation"],
                            side_effects=False, cross_values=False, directions=False)  # the plan does not count the baselines
    plan = validation_plan(remote.run_dir, config, "ablate", remote=ndif_server.url)
    over = ablate(remote.run_dir, config, out=tmp_path / "remote", remote=ndif_server.url)
    here = ablate(remote.run_dir, config, model=local_model, out=tmp_path / "local")
    a, b = over.summaries[0], here.summaries[0]
    assert a["effect"] == pytest.approx(b["effect"], abs=1e-5)
    assert a["control_effects"] == pytest.approx(b["control_effects"], abs=1e-5)
    work = over.manifest["work"]
    for key in ("requests", "bytes_up", "bytes_down"):
        assert work[key] == plan["least"][key], key
