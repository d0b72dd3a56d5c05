"""nnsight 0.8.1 client ↔ a real NDIF server (ndif 0.1.2) over HTTP and websockets on 127.0.0.1.

Every remote result is compared with the same block run locally on the same weights.
Run: bash scripts/ndif/server.sh install && python -m pytest -m remote tests/remote -q
"""

from __future__ import annotations

import time

import nnsight
import pytest
import torch
from nnsight.intervention.backends.remote import RemoteBackend, RemoteError

from tests.remote.conftest import client_model

pytestmark = pytest.mark.remote

PROMPTS = ["help your family and friend", "keep the old rules and stay home"]
ATOL = 1e-5


@pytest.fixture(scope="module")
def model(ndif_server):
    quiet = nnsight.CONFIG.APP.REMOTE_LOGGING
    nnsight.CONFIG.APP.REMOTE_LOGGING = False  # no status spinner in the test output
    yield client_model(ndif_server.model_dir)
    nnsight.CONFIG.APP.REMOTE_LOGGING = quiet


def _act0(model):
    return model.model.layers[0].mlp.act_fn.output


def test_model_key_is_what_the_server_deployed(model, ndif_server):
    assert model.to_model_key() == ndif_server.model_key
    assert ndif_server.url.startswith("http://127.0.0.1:")


def test_trace_matches_local(model, ndif_server):
    started = time.monotonic()
    with model.trace(PROMPTS, remote=ndif_server.url):
        remote = _act0(model).save()
    elapsed = time.monotonic() - started
    with model.trace(PROMPTS):
        local = _act0(model).save()
    assert remote.shape == local.shape == (2, 8, 48)
    torch.testing.assert_close(remote, local.detach(), atol=ATOL, rtol=0)
    assert elapsed < 30, f"one tiny remote trace took {elapsed:.1f} s"


def test_configured_host_and_remote_true(model, ndif_server, monkeypatch):
    monkeypatch.setattr(nnsight.CONFIG.API, "HOST", ndif_server.url)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", "any-key")  # sent as ndif-api-key; auth is off here
    with model.trace(PROMPTS[0], remote=True):
        remote = model.lm_head.output.save()
    with model.trace(PROMPTS[0]):
        local = model.lm_head.output.save()
    torch.testing.assert_close(remote, local.detach(), atol=ATOL, rtol=0)


def _session_block(model, **remote):
    with model.session(**remote):
        with model.trace(PROMPTS[0]):
            first = _act0(model).mean(dim=1).save()  # [1, 48]
        with model.trace(PROMPTS[1]):  # a value from the first trace flows into the second
            _act0(model)[:] = _act0(model) + first[:, None, :]
            second = _act0(model).save()
            logits = model.lm_head.output[:, -1].save()
    return first, second, logits


def test_session_is_one_request_and_matches_local(model, ndif_server, monkeypatch):
    posts = []
    original = RemoteBackend._post

    def counting_post(self, request, blob):
        posts.append(request.model_key)
        return original(self, request, blob)

    monkeypatch.setattr(RemoteBackend, "_post", counting_post)
    remote = _session_block(model, remote=ndif_server.url)
    assert len(posts) == 1, f"a session of two traces made {len(posts)} requests"
    local = _session_block(model)
    for r, l in zip(remote, local):
        torch.testing.assert_close(r, l.detach(), atol=ATOL, rtol=0)


def _generate_block(model, **remote):
    with model.generate(PROMPTS[0], max_new_tokens=3, do_sample=False, **remote) as tracer:
        steps = nnsight.save([])
        for _ in tracer.iter[:3]:  # bounded: lines after an unbounded tracer.iter[:] never run
            steps.append(_act0(model)[0, -1])
        ids = tracer.result.save()  # after the loop: asking for it first runs past every layer
    return ids, steps


def test_generate_with_iter(model, ndif_server):
    remote_ids, remote_steps = _generate_block(model, remote=ndif_server.url)
    local_ids, local_steps = _generate_block(model)
    assert remote_ids.tolist() == local_ids.tolist()
    assert remote_ids.shape[1] == len(model.tokenizer(PROMPTS[0])["input_ids"]) + 3
    assert len(remote_steps) == len(local_steps) == 3
    for r, l in zip(remote_steps, local_steps):
        torch.testing.assert_close(r, l.detach(), atol=ATOL, rtol=0)


def test_non_blocking_job_collected_later(model, ndif_server):
    with model.trace(PROMPTS, remote=ndif_server.url, blocking=False) as tracer:
        saved = _act0(model).save()  # noqa: F841 - the server returns a save under its variable's name
    job_id = tracer.backend.job_id
    assert job_id
    # a new backend, as a later process would build it from the job id alone
    poller = RemoteBackend(model.to_model_key(), host=ndif_server.url, job_id=job_id, blocking=False)
    deadline = time.monotonic() + 60
    result = poller()
    while result is None:  # None = queued/running, or an unknown job id: bound the wait yourself
        assert time.monotonic() < deadline, f"job {job_id} not done after 60 s (last status {poller.status})"
        time.sleep(0.2)
        result = poller()
    assert str(poller.status).endswith("COMPLETED")
    assert set(result) == {"saved"}
    with model.trace(PROMPTS):
        local = _act0(model).save()
    torch.testing.assert_close(result["saved"], local.detach(), atol=ATOL, rtol=0)
    # results stay available: a second collection returns them again
    again = RemoteBackend(model.to_model_key(), host=ndif_server.url, job_id=job_id, blocking=False)()
    torch.testing.assert_close(again["saved"], result["saved"])


def test_server_exception_is_remote_error(model, ndif_server):
    with pytest.raises(RemoteError) as raised:
        with model.trace(PROMPTS, remote=ndif_server.url):
            _act0(model)[0, 0, 1000].save()  # width is 48
    message = str(raised.value)
    assert "IndexError" in message and "out of bounds" in message
    # the server is fine afterwards
    with model.trace(PROMPTS[0], remote=ndif_server.url):
        ok = _act0(model).save()
    assert ok.shape == (1, 6, 48)
