"""Remote faults without a server: a stand-in NDIF that runs each request locally under a job id,
and can go down, restart (forgetting every job: polls answer 404) or fail a job. The real server
goes through the same faults in tests/remote/test_server_faults.py."""

from __future__ import annotations

import importlib
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import vneuron.runtime.remote as ndif
from vneuron.errors import VneuronError
from vneuron.locate.locating import LocateConfig, locate
from vneuron.runtime.checkpoint import Checkpoint
from vneuron.runtime.remote import RemoteTarget

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIG = dict(dataset=str(EXAMPLES / "corpus.jsonl"), split="all", top_k=5, batch_tokens=40, request_batches=2)
capture_module = importlib.import_module("vneuron.locate.capture")  # the module: vneuron.locate.capture is the function
REAL_SESSION = capture_module._session


class ServerError(Exception):
    """What nnsight raises when a job's status is ERROR (a RemoteError carrying the server's text)."""


class FakeNDIF:
    """Jobs by id; ``down`` refuses connections, ``restart()`` forgets every job, ``failing`` lists
    submission numbers whose job fails on the server."""

    def __init__(self):
        self.jobs: dict[str, object] = {}
        self.submissions = 0
        self.down = False
        self.failing: set[int] = set()
        self.interrupt_at: int | None = None  # Ctrl-C while polling after this many submissions

    def session(self, model, chunk, config, stats):
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        values = REAL_SESSION(replace(model, remote=None), chunk, config, stats)
        job = f"job-{self.submissions}"
        self.jobs[job] = ServerError("Traceback ...\nValueError: model not served") if self.submissions in self.failing else values
        self.submissions += 1
        return job

    def collect(self, job):
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        if self.interrupt_at is not None and self.submissions >= self.interrupt_at:
            self.interrupt_at = None
            raise KeyboardInterrupt
        if job not in self.jobs:
            return ndif.UNKNOWN
        value = self.jobs[job]
        if isinstance(value, Exception):
            raise value
        return value

    def restart(self):
        self.jobs.clear()
        self.down = False


@pytest.fixture
def server(monkeypatch):
    fake = FakeNDIF()
    monkeypatch.setattr(capture_module, "_session", fake.session)
    monkeypatch.setattr(ndif, "collector", lambda key, host: fake.collect)
    return fake


@pytest.fixture
def remote_model(tiny_model, tiny_dir):
    from nnsight.modeling import huggingface as nnsight_hf

    nnsight_hf._ID_CACHE[str(tiny_dir("llama"))] = str(tiny_dir("llama"))  # its model key, without a hub lookup
    notes: list[str] = []
    target = RemoteTarget("http://127.0.0.1:9", retries=1, backoff=0.01, poll_interval=0.01, lost_after=0.05,
                          notify=notes.append)
    model = replace(tiny_model("llama"), remote=target)
    model.notes = notes
    return model


def partial_of(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory):
    """An uninterrupted local run."""
    return locate(tiny_model("llama"), LocateConfig(**CONFIG), out=tmp_path_factory.mktemp("ref") / "run").stats


def assert_same_stats(got, want):
    assert torch.equal(got.n, want.n) and torch.equal(got.active, want.active)
    torch.testing.assert_close(got.sum, want.sum, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(got.sumsq, want.sumsq, rtol=1e-6, atol=1e-8)


def test_uninterrupted_fake_run_equals_local(tmp_path, server, remote_model, reference):
    result = locate(remote_model, LocateConfig(**CONFIG), out=tmp_path / "run")
    assert_same_stats(result.stats, reference)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    requests = manifest["remote"]["requests"]
    assert requests >= 3 and server.submissions == requests and not remote_model.notes
    assert [i["outcome"] for i in manifest["remote"]["invocations"]] == ["complete"]
    assert not partial_of(tmp_path / "run").exists()


def test_server_restart_then_resume_resubmits_the_lost_job(tmp_path, server, remote_model, reference):
    out = tmp_path / "run"
    server.interrupt_at = 2  # Ctrl-C while request 1 (the second submission) is in flight
    with pytest.raises(KeyboardInterrupt):
        locate(remote_model, LocateConfig(**CONFIG), out=out)
    state = json.loads((partial_of(out) / "state.json").read_text())
    assert state["done"] == 1 and state["jobs"] == {"1": "job-1"}
    server.down = True  # the server stops: the next attempt cannot reach it
    with pytest.raises(VneuronError, match="unreachable"):
        locate(remote_model, LocateConfig(**CONFIG), out=out, resume=True)
    assert json.loads((partial_of(out) / "state.json").read_text())["jobs"] == {"1": "job-1"}  # kept for later
    server.restart()  # back, but it has forgotten job-1 (GET /response/job-1 → 404)
    resumed = locate(remote_model, LocateConfig(**CONFIG), out=out, resume=True)
    assert_same_stats(resumed.stats, reference)
    assert len(remote_model.notes) == 1 and "job-1 is unknown to the server" in remote_model.notes[0]
    assert "resubmitting it once" in remote_model.notes[0]
    manifest = json.loads((out / "manifest.json").read_text())
    remote = manifest["remote"]
    assert [i["outcome"] for i in remote["invocations"]] == ["interrupted", remote["invocations"][1]["outcome"], "complete"]
    assert remote["invocations"][1]["outcome"].startswith("failed: NDIF host") and "unreachable" in remote["invocations"][1]["outcome"]
    assert [i["requests"] for i in remote["invocations"]] == [1, 0, remote["requests"] - 1]
    totals = remote["totals"]
    assert totals["invocations"] == 3 and totals["requests"] == remote["requests"] == len(remote["log"])
    assert totals["submitted"] == remote["requests"] + 1  # request 1 was sent twice
    assert totals["seconds"] >= sum(i["seconds"] for i in remote["invocations"]) - 0.01
    assert totals["received_tensor_bytes"] == sum(r["received_tensor_bytes"] for r in remote["log"]) > 0
    assert manifest["timings"]["invocations"] == 3
    assert sorted(r["request"] for r in remote["log"]) == list(range(remote["requests"]))
    assert not partial_of(out).exists()


def test_failed_job_is_resubmitted_once(tmp_path, server, remote_model, reference):
    server.failing = {1}
    result = locate(remote_model, LocateConfig(**CONFIG), out=tmp_path / "run")
    assert_same_stats(result.stats, reference)
    assert len(remote_model.notes) == 1 and "job-1 failed on the server (ValueError: model not served)" in remote_model.notes[0]
    log = json.loads((tmp_path / "run" / "manifest.json").read_text())["remote"]["log"]
    assert [r["submissions"] for r in log][:3] == [1, 2, 1]


def test_job_failed_before_an_interruption_is_resubmitted_on_resume(tmp_path, server, remote_model, reference):
    out = tmp_path / "run"
    server.interrupt_at = 2
    with pytest.raises(KeyboardInterrupt):
        locate(remote_model, LocateConfig(**CONFIG), out=out)
    server.jobs["job-1"] = ServerError("RemoteError: worker died")  # it failed while nobody was polling
    resumed = locate(remote_model, LocateConfig(**CONFIG), out=out, resume=True)
    assert_same_stats(resumed.stats, reference)
    assert "job-1 failed on the server (RemoteError: worker died); resubmitting it once" in remote_model.notes[0]


def test_job_failing_twice_is_one_line_and_its_id_is_dropped(tmp_path, server, remote_model, reference):
    out = tmp_path / "run"
    server.failing = {1, 2}
    with pytest.raises(ndif.JobFailed, match=r"model not served.*after one resubmission") as err:
        locate(remote_model, LocateConfig(**CONFIG), out=out)
    assert "\n" not in str(err.value)
    state = json.loads((partial_of(out) / "state.json").read_text())
    assert state["done"] == 1 and state["jobs"] == {}  # request 0 kept; the dead job is not polled again
    server.failing = set()
    resumed = locate(remote_model, LocateConfig(**CONFIG), out=out, resume=True)
    assert_same_stats(resumed.stats, reference)


def test_unreachable_host_on_the_first_request_leaves_nothing(tmp_path, server, remote_model):
    server.down = True
    out = tmp_path / "run"
    with pytest.raises(VneuronError, match="unreachable"):
        locate(remote_model, LocateConfig(**CONFIG), out=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_unserved_model_leaves_nothing_and_a_plain_rerun_works(tmp_path, server, remote_model, reference):
    server.failing = {0, 1}  # the first request fails, and so does its resubmission
    out = tmp_path / "run"
    with pytest.raises(VneuronError, match="model not served"):
        locate(remote_model, LocateConfig(**CONFIG), out=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    result = locate(remote_model, LocateConfig(**CONFIG), out=out)  # no "An interrupted run is waiting"
    assert_same_stats(result.stats, reference)


def test_a_checkpoint_with_nothing_to_collect_is_not_an_interrupted_run(tmp_path):
    out = tmp_path / "run"
    empty = Checkpoint(partial_of(out), {"k": 1})
    empty.begin()
    empty.save()  # what a kill right after start could leave
    fresh = Checkpoint.open(out, {"k": 1}, resume=False)
    assert fresh.done == 0 and not fresh.path.exists()
    waiting = Checkpoint(partial_of(out), {"k": 1}, jobs={"0": "job-0"})
    waiting.save()
    with pytest.raises(VneuronError, match="An interrupted run is waiting"):
        Checkpoint.open(out, {"k": 1}, resume=False)


def test_lost_job_detection_waits_out_the_first_404s(monkeypatch):
    """The server answers 404 until its dispatcher queues a job: that is not a lost job."""
    answers = iter([ndif.UNKNOWN, ndif.UNKNOWN, None, {"ok": 1}])
    target = RemoteTarget("http://127.0.0.1:9", poll_interval=0.001, lost_after=10.0)
    assert ndif.wait(target, "m", "job-0", lambda job: next(answers)) == {"ok": 1}
    target = replace(target, lost_after=0.0)
    with pytest.raises(ndif.JobLost):
        ndif.wait(target, "m", "job-0", lambda job: ndif.UNKNOWN)


def test_transport_errors_while_polling_do_not_resubmit(monkeypatch):
    submitted, polls = [], iter([ConnectionResetError("reset"), None, {"ok": 1}])

    def collect(job):
        answer = next(polls)
        if isinstance(answer, Exception):
            raise answer
        return answer

    target = RemoteTarget("http://127.0.0.1:9", poll_interval=0.001, backoff=0.001, notify=lambda m: None)
    assert ndif.run(target, "m", lambda: submitted.append(1) or "job-0", collect) == {"ok": 1}
    assert submitted == [1]


def test_a_killed_invocation_is_recorded_as_killed(tmp_path):
    out = tmp_path / "run"
    killed = Checkpoint(partial_of(out), {"k": 1})
    killed.begin()
    killed.submitted(0, "job-0")  # then SIGKILL: no outcome written
    resumed = Checkpoint.open(out, {"k": 1}, resume=True)
    resumed.begin()
    assert [i["outcome"] for i in resumed.invocations] == ["killed", "running"]
    assert resumed.jobs == {"0": "job-0"} and resumed.totals()["submitted"] == 1


def test_unreachable_real_host_on_the_first_request_leaves_nothing(tmp_path, tiny_model, tiny_dir):
    """Through nnsight's real client: the POST to a closed port fails, nothing is kept."""
    import socket

    from nnsight.modeling import huggingface as nnsight_hf

    nnsight_hf._ID_CACHE[str(tiny_dir("llama"))] = str(tiny_dir("llama"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    target = RemoteTarget(f"http://127.0.0.1:{port}", retries=1, backoff=0.01, notify=lambda m: None)
    with pytest.raises(VneuronError, match="unreachable"):
        locate(replace(tiny_model("llama"), remote=target), LocateConfig(**CONFIG), out=tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_quiet_turns_off_nnsight_status_and_gguf_bars():
    import nnsight
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from nnsight.intervention.backends.remote import RemoteBackend

    from vneuron.runtime.quiet import library_bars, set_quiet

    original = gguf_utils.tqdm
    try:
        set_quiet(False)
        assert RemoteBackend("key", host="http://127.0.0.1:9").display.enabled
        with library_bars():
            assert not gguf_utils.tqdm(range(2)).disable
        set_quiet(True)
        assert not RemoteBackend("key", host="http://127.0.0.1:9").display.enabled
        nnsight.CONFIG.APP.REMOTE_LOGGING = True  # as if nnsight were imported only after -q
        ndif.trace_kwargs(SimpleNamespace(remote=RemoteTarget("http://127.0.0.1:9")))  # building a remote request
        assert not RemoteBackend("key", host="http://127.0.0.1:9").display.enabled
        with library_bars():
            assert gguf_utils.tqdm(range(2)).disable
        assert gguf_utils.tqdm is original
    finally:
        set_quiet(False)
        assert nnsight.CONFIG.APP.REMOTE_LOGGING
