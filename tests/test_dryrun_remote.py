"""--dry-run's requests and bytes for a remote run are what the run then sends and receives (through
nnsight's in-process simulation, which builds the same requests as a real NDIF host)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vneuron.locate.capture import capture_batches, request_ranges
from vneuron.config import ValidateConfig
from vneuron.locate.plan import locate_plan
from vneuron.validate.plan import validation_plan
from vneuron.locate.locating import LocateConfig, locate
from vneuron.runtime.tokens import Encoded

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def fake(slot: int, n: int = 5) -> Encoded:
    return Encoded(list(range(n)), [True] * n, None, slot)


def test_requests_touch_few_slots_and_stay_under_the_result_limit():
    encoded = [fake(s) for s in (3, 0, 1, 3, 0, 2, 1, 0)]
    batched = capture_batches(encoded, batch_tokens=10, remote=True)  # two prompts of 5 tokens per batch
    assert [{e.slot for e in b} for b in batched] == [{0}, {0}, {1}, {2}, {3}]  # one slot per batch
    assert request_ranges(batched, 8, per_slot=100, limit=10_000) == [(0, 5)]
    assert request_ranges(batched, 2, per_slot=100, limit=10_000) == [(0, 2), (2, 4), (4, 5)]
    # no more than 2 slots' sums per result: a request closes before a third slot
    assert request_ranges(batched, 8, per_slot=100, limit=250) == [(0, 3), (3, 5)]
    assert request_ranges(batched, 8, per_slot=100, limit=50) == [(0, 2), (2, 3), (3, 4), (4, 5)]  # one slot at least
    # the probe rows count per prompt: slot 0's two batches (3 prompts) fit in 100 + 3·10 bytes, not in one byte less
    assert request_ranges(batched, 8, per_slot=100, per_prompt=10, limit=130) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert request_ranges(batched, 8, per_slot=100, per_prompt=10, limit=129) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert len(capture_batches(encoded, 10, remote=False)) == 4  # local: length-sorted, slots mixed


@pytest.fixture
def simulated(tiny_dir):
    from vneuron.models.loading import load_model
    from vneuron.runtime.remote import RemoteTarget

    return load_model(str(tiny_dir("llama")), remote=RemoteTarget("local", blocking=True))


def test_locate_plan_predicts_the_remote_requests_and_bytes(tmp_path, tiny_dir, simulated):
    config = LocateConfig(dataset=str(EXAMPLES / "corpus.jsonl"), split="all", top_k=5, batch_tokens=40, request_batches=2)
    plan = locate_plan(str(tiny_dir("llama")), config, remote="local")
    done = locate(simulated, config, out=tmp_path / "run")
    remote = done.manifest["remote"]
    assert plan["least"]["requests"] == remote["requests"] > 2
    assert plan["least"]["bytes_down"] == remote["received_tensor_bytes"]
    assert plan["least"]["bytes_up"] == remote["sent_tensor_bytes"]


def test_validation_plan_predicts_the_remote_requests_and_bytes(tmp_path, tiny_dir, simulated):
    from dataclasses import replace

    from vneuron.validate.study import ablate, steer

    run = locate(simulated, LocateConfig(dataset=str(EXAMPLES / "corpus.jsonl"), split="all", top_k=5),
                 out=tmp_path / "run").run_dir
    # every control drawn (stop_after 0, no extension) and nothing beside the forced choice: one exact count
    config = ValidateConfig(controls=3, stop_after=0, max_controls=0, split="all", dimensions=["conservation"],
                            side_effects=False, cross_values=False, directions=False, batch_tokens=64)
    for kind, call in (("ablate", lambda out: ablate(run, config, model=simulated, out=out)),
                       ("steer", lambda out: steer(run, [0.0, 2.0], ValidateConfig(**{**config.__dict__, "mode": "scale"}),
                                                   model=simulated, out=out))):
        cfg = config if kind == "ablate" else ValidateConfig(**{**config.__dict__, "mode": "scale"})
        plan = validation_plan(run, cfg, kind, [0.0, 2.0] if kind == "steer" else None, model=simulated)
        work = call(tmp_path / kind).manifest["work"]
        for key in ("requests", "forwards", "bytes_up", "bytes_down"):
            assert plan["least"][key] == plan["most"][key] == work[key], (kind, key, plan["least"][key], work[key])
        assert "note" not in plan
    # the direction baselines are a stage of the plan: with every random direction drawn, its work is exact
    on = replace(config, directions=True)
    stage = validation_plan(run, on, "ablate", model=simulated)["stages"]["direction baselines"]
    done = ablate(run, on, model=simulated, out=tmp_path / "directions").manifest["timings"]["stages"]["direction baselines"]["work"]
    for key in ("forwards", "tokens", "layer_tokens", "head_positions"):
        assert stage["least"][key] == stage["most"][key] == done[key], (key, stage["least"][key], done[key])


def test_a_request_deadline_grows_with_its_result(tiny_model, monkeypatch):
    """Each capture request tells the poller how much it brings back; the deadline is `timeout` plus that
    at the slowest rate allowed for (remote.RemoteTarget.deadline_s)."""
    from dataclasses import replace

    import vneuron.runtime.remote as ndif
    from vneuron.locate.capture import CaptureConfig, capture, prompt_bytes, slot_bytes
    from vneuron.data import load_corpus

    target = ndif.RemoteTarget("http://127.0.0.1:9", timeout=100, slowest_rate=1e6)
    assert target.deadline_s(0) == 100 and target.deadline_s(250_000_000) == 350
    seen, real = [], ndif.run
    monkeypatch.setattr(ndif, "run", lambda *a, **k: seen.append(k["result_bytes"]) or real(*a, **k))
    model = replace(tiny_model("llama"), remote=ndif.RemoteTarget("local", blocking=True))
    prompts = load_corpus(EXAMPLES / "corpus.jsonl").action_prompts()
    config = CaptureConfig(batch_tokens=40, request_batches=2)
    capture(model, prompts, replace(config, residual=False))  # the neuron sums alone: a whole number of slots
    per_slot = slot_bytes(model)
    assert seen and all(b % per_slot == 0 and 1 <= b // per_slot <= 2 for b in seen)  # 2 one-slot batches per request
    sums_only, seen[:] = list(seen), []
    capture(model, prompts, config)  # with the residual: each slot's Σh and each prompt's probe row too
    slot_more, row = slot_bytes(model, residual=True) - per_slot, prompt_bytes(model, config)
    assert row == 4 * model.n_layers * 32 and slot_more == 8 * model.n_layers * 32  # float32 rows; a float64 model's sums
    rows = [b - (a // per_slot) * (per_slot + slot_more) for a, b in zip(sums_only, seen)]
    assert all(r > 0 and r % row == 0 for r in rows) and sum(rows) == len(prompts) * row
