"""Faults against the real loopback NDIF server: a restart in the middle of a run, a job that failed on
the server, a model the server does not serve, and what -q leaves on the terminal.

Run: bash scripts/ndif/server.sh install && python -m pytest -m remote tests/remote -q
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vneuron.runtime.remote as ndif
from vneuron.errors import VneuronError
from vneuron.locate.locating import LocateConfig, locate
from vneuron.models.loading import load_model

pytestmark = pytest.mark.remote
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIG = dict(dataset=str(EXAMPLES / "corpus.jsonl"), split="all", top_k=5, batch_tokens=40, request_batches=2)


def target(url: str, notes: list[str], **options):
    return ndif.RemoteTarget(url, **{"timeout": 120, "retries": 1, "backoff": 0.2, "poll_interval": 0.2,
                                     "lost_after": 3.0, "notify": notes.append, **options})


def partial_of(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


@pytest.fixture(scope="module")
def local_stats(ndif_server, tmp_path_factory):
    return locate(load_model(ndif_server.model_dir), LocateConfig(**CONFIG), out=tmp_path_factory.mktemp("local") / "run").stats


def assert_equal_to_local(got, local):
    assert torch.equal(got.n, local.n) and torch.equal(got.active, local.active)
    torch.testing.assert_close(got.sum, local.sum, atol=1e-4, rtol=1e-5)  # float32 sums on the server
    torch.testing.assert_close(got.sumsq, local.sumsq, atol=1e-4, rtol=1e-5)


def test_server_restart_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path, ndif_server, local_stats, monkeypatch):
    notes: list[str] = []
    model = load_model(ndif_server.model_dir, remote=target(ndif_server.url, notes))
    uninterrupted = locate(model, LocateConfig(**CONFIG), out=tmp_path / "uninterrupted").stats
    out = tmp_path / "run"
    real_wait, waits = ndif.wait, []

    def stop_during_second_request(*args, **kwargs):
        waits.append(args[2])
        if len(waits) == 2:  # request 1 is submitted: the server goes down before it is collected
            ndif_server.stop()
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(ndif, "wait", stop_during_second_request)
    try:
        with pytest.raises(VneuronError, match="unreachable"):
            locate(model, LocateConfig(**CONFIG), out=out)
    finally:
        monkeypatch.setattr(ndif, "wait", real_wait)
        ndif_server.start()  # same URL; redis and the object store start empty: the job is unknown
    state = json.loads((partial_of(out) / "state.json").read_text())
    assert state["done"] == 1 and state["jobs"] == {"1": waits[1]}
    resumed = locate(model, LocateConfig(**CONFIG), out=out, resume=True)
    assert torch.equal(resumed.stats.sum, uninterrupted.sum) and torch.equal(resumed.stats.sumsq, uninterrupted.sumsq)
    assert torch.equal(resumed.stats.n, uninterrupted.n) and torch.equal(resumed.stats.active, uninterrupted.active)
    assert_equal_to_local(resumed.stats, local_stats)
    assert notes == [f"NDIF job {waits[1]} is unknown to the server (it may have restarted); resubmitting it once"]
    remote = json.loads((out / "manifest.json").read_text())["remote"]
    assert [i["outcome"].split(":")[0] for i in remote["invocations"]] == ["failed", "complete"]
    assert remote["totals"]["requests"] == remote["requests"] == len(remote["log"]) >= 3
    assert remote["totals"]["submitted"] == remote["requests"] + 1
    assert not partial_of(out).exists()


def _failed_job(ndif_server) -> str:
    """The id of a job that failed on the server (an index out of range inside the trace)."""
    model = load_model(ndif_server.model_dir, remote=ndif.resolve_target(ndif_server.url))
    with model.lm.trace("you choose", remote=ndif_server.url, blocking=False) as tracer:
        model.lm.model.layers[0].mlp.act_fn.output[..., 10_000].save()
    job = tracer.backend.job_id
    collect = ndif.collector(model.model_key(), ndif_server.url)
    with pytest.raises(Exception, match="index"):
        ndif.wait(ndif.RemoteTarget(ndif_server.url, timeout=60, poll_interval=0.2), "m", job, collect)
    return job


def test_a_job_that_failed_on_the_server_is_resubmitted_on_resume(tmp_path, ndif_server, local_stats, monkeypatch):
    notes: list[str] = []
    model = load_model(ndif_server.model_dir, remote=target(ndif_server.url, notes))
    out = tmp_path / "run"
    real_wait, waits = ndif.wait, []

    def interrupt_second(*args, **kwargs):
        waits.append(args[2])
        if len(waits) == 2:
            raise KeyboardInterrupt
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(ndif, "wait", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        locate(model, LocateConfig(**CONFIG), out=out)
    monkeypatch.setattr(ndif, "wait", real_wait)
    failed = _failed_job(ndif_server)  # the pending job failed on the server while nobody polled
    state_file = partial_of(out) / "state.json"
    state = json.loads(state_file.read_text())
    state["jobs"] = {"1": failed}
    state_file.write_text(json.dumps(state))
    resumed = locate(model, LocateConfig(**CONFIG), out=out, resume=True)
    assert_equal_to_local(resumed.stats, local_stats)
    assert len(notes) == 1 and notes[0].startswith(f"NDIF job {failed} failed on the server (IndexError")
    assert notes[0].endswith("resubmitting it once")


def test_unserved_model_fails_in_one_line_and_leaves_nothing(tmp_path, ndif_server):
    unserved = tmp_path / "models" / "unserved"  # the same weights under another path: another model key
    shutil.copytree(ndif_server.model_dir, unserved)
    notes: list[str] = []
    model = load_model(str(unserved), remote=target(ndif_server.url, notes))
    out = tmp_path / "runs" / "run"
    with pytest.raises(ndif.JobFailed) as err:
        locate(model, LocateConfig(**CONFIG), out=out)
    message = str(err.value)
    assert "is not served" in message and "after one resubmission" in message and "\n" not in message
    assert len(notes) == 1 and "resubmitting it once" in notes[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    with pytest.raises(ndif.JobFailed):  # a plain rerun tries again instead of "An interrupted run is waiting"
        locate(model, LocateConfig(**CONFIG), out=out)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(Path(sys.executable).parent / "vneuron"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_quiet_unserved_model_and_unreachable_host(tmp_path, ndif_server):
    """-q silences nnsight; a failed first request says so on stdout, errs in one line and leaves nothing."""
    common = ["locate", "--model", ndif_server.model_dir, "--dataset", EXAMPLES / "corpus.jsonl", "--split", "all",
              "-k", "5", "--batch-tokens", "40", "--request-batches", "4", "--threads", "1", "--host", ndif_server.url]
    loud = _cli(*common, "--out", tmp_path / "loud", cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert "RECEIVED" in loud.stdout + loud.stderr  # nnsight's status lines, without -q
    quiet = _cli(*common, "--out", tmp_path / "quiet", "-q", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "RECEIVED" not in quiet.stdout + quiet.stderr and "COMPLETED" not in quiet.stdout + quiet.stderr
    assert "Downloading" not in quiet.stderr and quiet.stderr.strip() == "", quiet.stderr
    assert "Run written to" in quiet.stdout
    unserved = tmp_path / "models" / "unserved"  # another model key: the server cannot deploy it
    shutil.copytree(ndif_server.model_dir, unserved)
    before = sorted(p.name for p in tmp_path.iterdir())
    failed = _cli(*[a if a != ndif_server.model_dir else unserved for a in common], "--out", tmp_path / "unserved",
                  "-q", cwd=tmp_path)
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert failed.stdout.startswith("note: NDIF job ") and "failed on the server" in failed.stdout
    assert "resubmitting it once" in failed.stdout and "RECEIVED" not in failed.stdout
    assert failed.stderr.startswith("error: Model ") and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert "is not served" in failed.stderr and "after one resubmission" in failed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no .unserved.partial, no unserved/
    down = _cli(*[a if a != ndif_server.url else f"http://127.0.0.1:{closed_port()}" for a in common], "--out",
                tmp_path / "down", "-q", "--timeout", "5", cwd=tmp_path)
    assert down.returncode == 2 and down.stderr.startswith("error:") and "unreachable" in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1, down.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no .down.partial, no down/
