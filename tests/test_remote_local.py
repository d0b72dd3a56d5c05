"""Every remote code path through nnsight's in-process simulation (remote="local"): the request is
serialised, executed server-style under the server's import allowlist, and deserialised."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from vneuron.locate.capture import CaptureConfig, capture
from vneuron.data.schema import Prompt
from vneuron.validate.edits import Edit
from vneuron.validate.evaluate import continuation_logprobs
from vneuron.runtime.remote import RemoteTarget, resolve_target
from vneuron.locate.scoring import NeuronSet

from .test_capture import LABELS, PROMPTS, assert_stats_equal

GEN_PROMPTS = [Prompt(t, l, f"g{i}", f"p{i}") for i, (t, l) in enumerate(
    [("you choose to help the community .", "a"), ("what would you do ?", "b"), ("save money", "a")])]


@pytest.fixture
def simulated(tiny_model):
    def make(arch):
        return replace(tiny_model(arch), remote=RemoteTarget("local", blocking=True))
    return make


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("request_batches", [1, 3])
def test_remote_prompt_capture_equals_local(tiny_model, simulated, arch, request_batches):
    config = CaptureConfig(folds=2, batch_tokens=30, request_batches=request_batches)
    local = capture(tiny_model(arch), PROMPTS, config, labels=LABELS)
    remote = capture(simulated(arch), PROMPTS, config, labels=LABELS)
    assert local.meta["batches"] > 1
    assert_stats_equal(remote, local)


def test_remote_generation_capture_equals_local(tiny_model, simulated):
    config = CaptureConfig(mode="generate", max_new_tokens=4, folds=1, batch_tokens=16, request_batches=2)
    gens_local, gens_remote = [], []
    local = capture(tiny_model("llama"), GEN_PROMPTS, config, labels=["a", "b"], generations=gens_local)
    remote = capture(simulated("llama"), GEN_PROMPTS, config, labels=["a", "b"], generations=gens_remote)
    assert_stats_equal(remote, local)
    assert sorted(g["generated"] for g in gens_remote) == sorted(g["generated"] for g in gens_local)


def test_remote_edit_and_forced_choice_scoring_equal_local(tiny_model, simulated):
    model = tiny_model("llama")
    neurons = NeuronSet.from_flat(torch.tensor([1, 50, 100]), torch.zeros(model.n_layers, model.width), "gate")
    edit = Edit(neurons, "scale", gamma=-2.0)
    pairs = [("you choose to", " help the community"), ("what would you", " do ?")]
    local = continuation_logprobs(model, pairs, edit)
    remote = continuation_logprobs(simulated("llama"), pairs, edit)
    torch.testing.assert_close(remote, local)
    assert not torch.allclose(local, continuation_logprobs(model, pairs))


def test_target_resolution(monkeypatch):
    assert resolve_target(False) is None
    assert resolve_target("local").simulated
    monkeypatch.setenv("NDIF_HOST", "http://127.0.0.1:9")
    assert resolve_target(True).host == "http://127.0.0.1:9"
    assert resolve_target("http://127.0.0.1:8001/").host == "http://127.0.0.1:8001"
    with pytest.raises(Exception, match="not an http"):
        resolve_target("ftp://x")


def test_remote_edit_sets_in_one_request_equal_local(tiny_model, simulated):
    from vneuron.runtime import budget
    from vneuron.validate.evaluate import continuation_logprobs_sets

    model = tiny_model("llama")
    neurons = NeuronSet.from_flat(torch.tensor([1, 50, 100]), torch.zeros(model.n_layers, model.width), "gate")
    sets = [Edit(neurons, "zero"), Edit(neurons.random_matched(0), "zero"), None]
    pairs = [("you choose to", " help the community"), ("you choose to", " save money"), ("what would you", " do ?")]
    local = continuation_logprobs_sets(model, pairs, sets, batch_tokens=16)
    work = budget.reset()
    remote = continuation_logprobs_sets(simulated("llama"), pairs, sets, batch_tokens=16)
    assert work.requests == 1 and work.forwards == 3 * work.forwards // 3 >= 3 and work.bytes_up > 0 and work.bytes_down > 0
    for r, l in zip(remote, local):
        torch.testing.assert_close(r, l)
    assert not torch.allclose(local[0], local[2])
