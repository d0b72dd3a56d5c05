"""A real NDIF server on loopback for the `remote` tests (scripts/ndif/server.sh).

`ndif_server` (session scope) builds a tiny random Llama directory and a Llama of the 8B shape
(Llama-3.1-8B's 32 layers × 14,336 MLP neurons, hidden 64, random weights: scripts/ndif/shape_model.py,
cached under vneuron's cache directory), installs the server virtualenv if it is missing, starts redis,
moto (S3), a Ray head, the ndif controller and the API on 127.0.0.1, deploys both models in that one
stack, yields where it is, and stops every process at the end.

If the stack cannot start, the tests FAIL with the server log's tail. Set VNEURON_REMOTE_TESTS=skip
to skip them instead (a machine that cannot run the stack at all).

    bash scripts/ndif/server.sh install && python -m pytest -m remote tests/remote -q
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "scripts" / "ndif" / "server.sh"
VENV = Path(os.environ.get("NDIF_VENV", REPO / ".ndif-venv"))
INSTALL_TIMEOUT = 900
START_TIMEOUT = int(os.environ.get("NDIF_START_TIMEOUT", "360"))  # ~60 s on an idle 2-core machine; 3× that under load


STATE = Path(os.environ.get("NDIF_STATE_DIR", REPO / ".ndif-state"))


@dataclass
class NDIFServer:
    url: str  # http://127.0.0.1:PORT, for remote=url
    model_dir: str  # the served model: LanguageModel(model_dir, tokenizer=model_dir)
    model_key: str  # what the server deployed it under
    start_seconds: float
    ports: dict[str, int]  # every port of the stack, all picked free at start (api, redis, s3, ray_*)
    shape_dir: str = ""  # the 8B-shape model, served by the same stack

    def stop(self) -> None:
        """Stop the whole stack (every job it knew is forgotten)."""
        stopped = _server_sh("stop", timeout=120)
        assert stopped.returncode == 0, _tail(stopped.stdout + stopped.stderr)

    def start(self) -> None:
        """Start it again at the same URL (the internal ports are picked afresh)."""
        started = _start([self.model_dir, self.shape_dir], self.ports["api"])
        if started.returncode != 0:
            pytest.fail(f"restarting the loopback NDIF server failed:\n{_tail(started.stdout + started.stderr)}", pytrace=False)
        self.ports = _ports()


def build_tiny_llama(path: Path) -> Path:
    """A random Llama (hidden 32, 3 layers, intermediate 48) with the tests' word-level tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.conftest import GATED, SHARED, make_tokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**GATED, **SHARED))
    with torch.no_grad():  # larger weights than the default init so activations spread around zero
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def build_shape_model(shape: str = "8b") -> Path:
    """The shape-real Llama of ``shape`` (scripts/ndif/shape_model.py), built once into vneuron's cache."""
    sys.path.insert(0, str(REPO / "scripts" / "ndif"))
    try:
        from shape_model import build
    finally:
        sys.path.pop(0)
    from vneuron.runtime.store import cache_dir

    return build(shape, cache_dir() / "shapes" / f"llama-{shape}-shape")


def client_model(model_dir: str):
    """The plain nnsight 0.8.1 client for the served model, with no hub lookup for its key."""
    import nnsight.modeling.huggingface as hf
    from nnsight import LanguageModel

    hf._ID_CACHE[model_dir] = model_dir
    with warnings.catch_warnings():  # the deprecated alias is exactly what a plain client writes
        warnings.filterwarnings("ignore", message="LanguageModel is deprecated")
        return LanguageModel(model_dir, tokenizer=model_dir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports() -> dict[str, int]:
    """What server.sh picked: api=… redis=… s3=… ray_gcs=… ray_client=… ray_dashboard=… ray_agent=…"""
    return {k: int(v) for k, v in (pair.split("=") for pair in (STATE / "ports").read_text().split())}


def _start(model_dirs: list[str], port: int) -> subprocess.CompletedProcess:
    """server.sh start (every model in one stack); once more if a port picked free was taken before its service bound it."""
    first, *more = [str(d) for d in model_dirs if d]
    for attempt in range(2):
        started = _server_sh("start", first, str(port), *more, timeout=START_TIMEOUT + 60)
        if started.returncode == 0 or "already in use" not in started.stderr or attempt:
            return started
        _server_sh("stop", timeout=120)
    return started


def _tail(text: "str | bytes | None", lines: int = 60) -> str:
    if isinstance(text, bytes):  # TimeoutExpired carries bytes even with text=True
        text = text.decode(errors="replace")
    return "\n".join((text or "").strip().splitlines()[-lines:])


def _give_up(what: str, output: str) -> None:
    message = f"the loopback NDIF server could not start: {what}\n{_tail(output)}"
    if os.environ.get("VNEURON_REMOTE_TESTS") == "skip":
        pytest.skip(message.splitlines()[0] + " (VNEURON_REMOTE_TESTS=skip)")
    pytest.fail(message + "\n(set VNEURON_REMOTE_TESTS=skip to skip the remote tests instead)", pytrace=False)


def _server_sh(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "NDIF_CLIENT_PYTHON": sys.executable, "NDIF_START_TIMEOUT": str(START_TIMEOUT)}
    return subprocess.run(["bash", str(SERVER), *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def ndif_server(tmp_path_factory):
    if not (VENV / ".ndif-installed").exists():
        try:
            done = _server_sh("install", str(VENV), timeout=INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            _give_up(f"install took more than {INSTALL_TIMEOUT} s", _tail(e.stderr))
        if done.returncode != 0:
            _give_up("install failed", done.stdout + done.stderr)

    model_dir = build_tiny_llama(tmp_path_factory.mktemp("ndif") / "tiny-llama")
    shape_dir = build_shape_model("8b")
    port = _free_port()
    t0 = time.monotonic()
    try:
        try:
            started = _start([str(model_dir), str(shape_dir)], port)
        except subprocess.TimeoutExpired as e:
            _give_up(f"start took more than {START_TIMEOUT + 60} s", _tail(e.stderr))
        if started.returncode != 0:
            _give_up(f"server.sh start exited {started.returncode}", started.stdout + started.stderr)
        url = started.stdout.strip().splitlines()[-1]
        model_key = (STATE / "model_key").read_text().strip()
        yield NDIFServer(url=url, model_dir=str(model_dir), model_key=model_key,
                         start_seconds=time.monotonic() - t0, ports=_ports(), shape_dir=str(shape_dir))
    finally:
        stopped = _server_sh("stop", timeout=120)
        if stopped.returncode != 0:
            print(f"server.sh stop exited {stopped.returncode}:\n{_tail(stopped.stderr)}", file=sys.stderr)
