"""Every example in README.md runs: each `vneuron …` line of its bash blocks and each python block.

Substituted to keep this cheap and offline (and nothing else):
- the model: the default (embedded Gemma-3-270M) and every alias named → a tiny random Llama with
  3 × 1024 MLP neurons, enough for the README's -k 500 and for matched random controls of 200
  located neurons (`--model TINY`);
- `locate` gets `--limit 2` (two items per dimension); `ablate`/`steer` get `--controls 1 --limit 2`
  (and `--controls 20` in the text becomes 1); `ablate` gets `--generations 0` (greedy generations
  before/after edits are what most of its time goes to; tests/test_validate.py covers them);
- `--remote` on locate/ablate/steer → `--host local` (nnsight's in-process server simulation);
  on `models`/`doctor` → a stub HTTP server on 127.0.0.1 (a real NDIF server is tests/remote/);
- the python block: `load_model("default")` → the tiny model, and `limit=4` (items per dimension)
  added to its `LocateConfig(...)` and its corpus `.select(...)`;
- `RUN_DIR` → the first run an earlier example wrote (built-in corpus, which has a test split);
  `my_items.csv` → examples/corpus.csv, `texts.csv` → examples/texts.csv.
The examples run in README order in one temporary working directory. Lines that install or run
the test suite are skipped with their reason; any other line the README gains fails here until
it is either runnable or given a reason.
"""

from __future__ import annotations

import http.server
import re
import shlex
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vneuron.cli import app

from .conftest import GATED, SHARED, make_tokenizer

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
runner = CliRunner()

SKIPPED = {  # a command's start → why it is not run here
    "python3 -m venv": "creates the environment this test runs in",
    ".venv/bin/pip install": "installs the environment this test runs in",
    "pip install": "installs packages (CI runs the README's install)",
    ".venv/bin/python -m pytest": "runs the test suite this test belongs to",
    "bash scripts/ndif/server.sh": "starts a real NDIF server: .ci/run runs that tier (pytest -m remote)",
}
ALIASES = ("gemma-3-270m", "smollm2-135m", "llama-8b", "llama-70b", "llama-405b", "llama-8b-instruct", "llama-70b-instruct",
           "llama-405b-instruct")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands() -> list[str]:
    out = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            out.extend(part.strip() for part in line.split("&&") if part.strip())
    return out


def _skip_reason(command: str) -> str | None:
    return next((why for start, why in SKIPPED.items() if command.startswith(start)), None)


CLI = [c for c in commands() if not _skip_reason(c)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**GATED, "intermediate_size": 1024}, **SHARED))
    model.save_pretrained(root / "tiny")
    make_tokenizer().save_pretrained(root / "tiny")
    (root / "cwd").mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"root": root, "tiny": str(root / "tiny"), "host": f"http://127.0.0.1:{server.server_address[1]}"}
    server.shutdown()


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        body = b'{"deployments": {}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def substitute(command: str, ws: dict) -> list[str]:
    argv = shlex.split(command)
    assert Path(argv[0]).name == "vneuron", f"unhandled README command (run it here or give it a reason in SKIPPED): {command}"
    argv = [a.strip("[]") for a in argv[1:]]  # `doctor [--remote]`: run the optional part too
    sub, names = argv[0], {"my_items.csv": str(ROOT / "examples" / "corpus.csv"), "texts.csv": str(ROOT / "examples" / "texts.csv")}
    if "RUN_DIR" in argv:
        names["RUN_DIR"] = str(min(Path("runs").glob("locate-*"), key=lambda p: p.stat().st_mtime))
    argv = [names.get(a, a) for a in argv]
    if "--remote" in argv:
        argv[argv.index("--remote"): argv.index("--remote") + 1] = ["--host", "local" if sub in ("locate", "ablate", "steer") else ws["host"]]
    for flag in ("--model", "-m"):
        if flag in argv and argv[argv.index(flag) + 1] in ALIASES:
            argv[argv.index(flag) + 1] = ws["tiny"]
    if sub in ("locate", "ablate", "steer") and "--model" not in argv and "--from" not in argv and (sub == "locate" or argv[1:2] == ["--model"] or len(argv) == 1):
        argv += ["--model", ws["tiny"]]
    if sub == "locate" and "--from" not in argv:
        argv += ["--limit", "2"]
    if sub in ("ablate", "steer"):
        if "--controls" in argv:
            argv[argv.index("--controls") + 1] = "1"
        else:
            argv += ["--controls", "1"]
        argv += ["--limit", "2"] + (["--generations", "0"] if sub == "ablate" else [])
    return argv + (["-q"] if sub in ("locate", "ablate", "steer") else [])


def test_the_readme_has_examples_to_run():
    assert len(CLI) >= 15 and len(blocks("python")) >= 1
    assert any(c.startswith("vneuron locate --from") for c in CLI) and any(c.startswith("vneuron steer") for c in CLI)


@pytest.mark.parametrize("command", CLI)
def test_readme_cli_example(command, workspace, monkeypatch):
    monkeypatch.chdir(workspace["root"] / "cwd")
    argv = substitute(command, workspace)
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, f"{command}\n→ vneuron {shlex.join(argv)}\n{result.output}\n{result.exception!r}"


@pytest.mark.parametrize("command", [c for c in commands() if _skip_reason(c)])
def test_readme_commands_not_run_here(command):
    pytest.skip(_skip_reason(command))


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_readme_python_example(index, workspace, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code = blocks("python")[index]
    swaps = {'vneuron.load_model("default")': f'vneuron.load_model({workspace["tiny"]!r})',
             'vneuron.LocateConfig(': 'vneuron.LocateConfig(limit=4, ', '.select(split=': '.select(limit=4, split='}
    for old, new in swaps.items():
        assert old in code, f"the README's python example changed: update the substitutions ({old})"
        code = code.replace(old, new)
    exec(compile(code, f"README.md python block {index + 1}", "exec"), {"__name__": "readme_example"})
    assert (tmp_path / "runs" / "st" / "manifest.json").is_file() and (tmp_path / "cons.safetensors").is_file()
