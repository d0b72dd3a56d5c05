r"""Every example in README.md runs: each `vneuron …` command of its bash blocks and each python block.

Substituted to keep this cheap and offline (and nothing else):
- the model: the default (embedded Gemma-3-270M) and every alias named → a tiny random Llama with
  3 × 1024 MLP neurons, enough for the README's -k 500 and for matched random controls of 200
  located neurons (`--model TINY`; `plant` and `power` get it too);
- `locate` gets `--limit 2` (two items per dimension; a `--limit` in the text becomes 2);
  `ablate`/`steer` get `--controls 2 --limit 2` (and `--controls 20` in the text becomes 2);
  `ablate` gets `--generations 0` (greedy generations before/after edits are what most of its
  time goes to; tests/test_validate.py covers them); `plant` gets `--steps 2 --train-limit 4` and
  `power` `--sizes 2 --steps 2 --controls 2 --limit 2` (tests/test_planting.py covers planting
  that works); every command that draws a progress bar gets `-q`;
- `--remote` on locate/ablate/steer → `--host local` (nnsight's in-process server simulation);
  on `models`/`doctor` → a stub HTTP server on 127.0.0.1 (a real NDIF server is tests/remote/);
- the python block: `load_model("default")` → the tiny model, and `limit=4` (items per dimension)
  added to its `LocateConfig(...)` and its corpus `.select(...)`;
- `RUN_DIR` → the first run an earlier example wrote (built-in corpus, which has a test split), a
  second `RUN_DIR` on the same line → the second; `RUN_DIR …` and `[…]` (a syntax line): the optional
  parts are run, the ellipsis dropped; `LAYER:UNIT` such as 17:1070 (a Gemma neuron) → the top
  neuron of that run;
- files the reader holds: `my_items.csv` → examples/corpus.csv, `texts.csv` → examples/texts.csv,
  C-voice's `友善-final.xlsx` and `test.xlsx` → tests/fixtures/cvoice/ (the release's layouts),
  `test_en.xlsx` → an English test workbook (Kindness vs Wealth) written here; `examples/…` is the
  repository's examples directory; `runs/en` and `runs/zh` → two small locate runs (English and
  Chinese built-in corpus) made here before the examples;
- `| jq PATH`: the command's stdout parsed as JSON and PATH (`.a.b.c`) looked up in it.
Continuation lines (`\`) are joined; `# …` comments (whole lines too: output shown as comments) are
dropped. Every `--json` example must print exactly one JSON object on stdout.
The examples run in README order in one temporary working directory. Lines that install or run
the test suite are skipped with their reason; any other line the README gains fails here until
it is either runnable or given a reason.
"""

from __future__ import annotations

import csv
import http.server
import json
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
FIXTURES = Path(__file__).resolve().parent / "fixtures"
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
USER_FILES = {"my_items.csv": ROOT / "examples" / "corpus.csv", "texts.csv": ROOT / "examples" / "texts.csv",
              "友善-final.xlsx": FIXTURES / "cvoice" / "友善-final.xlsx", "test.xlsx": FIXTURES / "cvoice" / "test.xlsx"}
CHEAP = {  # command → options that keep it cheap (replacing the README's value when it gives one)
    "locate": {"--limit": "2"},
    "ablate": {"--controls": "2", "--limit": "2", "--generations": "0"},
    "steer": {"--controls": "2", "--limit": "2"},
    "plant": {"--steps": "2", "--train-limit": "4"},
    "power": {"--sizes": "2", "--steps": "2", "--controls": "2", "--limit": "2"},
}
MODEL_COMMANDS = ("locate", "ablate", "steer", "plant", "power")  # those that load a model (given by --model)
QUIET = MODEL_COMMANDS + ("report", "show")  # those that draw a progress bar


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands() -> list[str]:
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s+)#.*$", "", line).strip()
            out.extend(part.strip() for part in line.split("&&") if part.strip())
    return out


def _skip_reason(command: str) -> str | None:
    return next((why for start, why in SKIPPED.items() if command.startswith(start)), None)


CLI = [c for c in commands() if not _skip_reason(c)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from openpyxl import Workbook
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**GATED, "intermediate_size": 1024}, **SHARED))
    model.save_pretrained(root / "tiny")
    make_tokenizer().save_pretrained(root / "tiny")
    (root / "cwd").mkdir()
    book = Workbook()  # C-voice's test workbook layout, in English (sheet per value; Type "X vs Y")
    sheet = book.active
    sheet.title = "Kindness"
    sheet.append(["Type", "Context", "Action1", "Action2"])
    sheet.append(["Kindness vs Wealth", "A colleague is ill and you could cover his shift, but you would miss a paid side job.",
                  "Visit him and cover his shift", "Take the paid side job"])
    sheet.append(["Kindness vs Wealth", "A friend needs a loan that you meant to invest.", "Lend the money to your friend",
                  "Invest it as planned"])
    book.save(root / "test_en.xlsx")
    for name, language in (("en", "en"), ("zh", "zh")):  # `vneuron compare runs/en runs/zh`
        made = runner.invoke(app, ["locate", "--model", str(root / "tiny"), "--language", language, "--limit", "2",
                                   "--out", str(root / "cwd" / "runs" / name), "-q"])
        assert made.exit_code == 0, made.output
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    files = {**{k: str(v) for k, v in USER_FILES.items()}, "test_en.xlsx": str(root / "test_en.xlsx")}
    yield {"root": root, "tiny": str(root / "tiny"), "host": f"http://127.0.0.1:{server.server_address[1]}", "files": files}
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


def _runs() -> list[str]:
    """Locate runs earlier examples wrote under default names (locate-MODEL-TIME), oldest first."""
    return [str(p) for p in sorted(Path("runs").glob("locate-*"), key=lambda p: p.name)]


def _top_neuron(run_dir: str) -> str:
    with open(Path(run_dir) / "neurons.csv", encoding="utf-8") as f:
        row = next(csv.DictReader(f))
    return f"{row['layer']}:{row['unit']}"


def substitute(command: str, ws: dict) -> list[str]:
    argv = shlex.split(command)
    assert Path(argv[0]).name == "vneuron", f"unhandled README command (run it here or give it a reason in SKIPPED): {command}"
    argv = [a.strip("[]") for a in argv[1:] if a.strip("[]") not in ("…", "...")]  # `doctor [--remote]`: run the optional part too
    sub = argv[0]
    runs = iter(_runs()) if "RUN_DIR" in argv else None
    for i, a in enumerate(argv):
        if a == "RUN_DIR":
            argv[i] = next(runs)
        elif a in ws["files"]:
            argv[i] = ws["files"][a]
        elif a.startswith("examples/"):
            argv[i] = str(ROOT / a)
        elif sub == "show" and re.fullmatch(r"\d+:\d+", a):
            argv[i] = _top_neuron(argv[1])
    if "--remote" in argv:
        argv[argv.index("--remote"): argv.index("--remote") + 1] = ["--host", "local" if sub in ("locate", "ablate", "steer") else ws["host"]]
    for flag in ("--model", "-m"):
        if flag in argv and argv[argv.index(flag) + 1] in ALIASES:
            argv[argv.index(flag) + 1] = ws["tiny"]
    located_first = sub in ("ablate", "steer") and (len(argv) == 1 or argv[1].startswith("-"))  # no RUN_DIR
    if "--model" not in argv and "-m" not in argv and "--from" not in argv and (sub in ("locate", "plant", "power") or located_first):
        argv += ["--model", ws["tiny"]]
    for option, value in CHEAP.get(sub, {}).items():
        if sub == "locate" and "--from" in argv:
            break
        if option in argv:
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
    return argv + (["-q"] if sub in QUIET else [])


def jq_path(data, path: str):
    """The value at a jq path such as `.poles.conservation.stability` (the subset README examples use)."""
    for key in filter(None, path.split(".")):
        assert isinstance(data, dict) and key in data, f"jq {path}: no {key!r} in {sorted(data) if isinstance(data, dict) else data!r}"
        data = data[key]
    return data


def test_the_readme_has_examples_to_run():
    assert len(CLI) >= 15 and len(blocks("python")) >= 1
    assert any(c.startswith("vneuron locate --from") for c in CLI) and any(c.startswith("vneuron steer") for c in CLI)
    assert not any(c.startswith("-") or c.startswith("#") or c.startswith('"') for c in CLI), "a continuation or output line read as a command"


@pytest.mark.parametrize("command", CLI)
def test_readme_cli_example(command, workspace, monkeypatch):
    monkeypatch.chdir(workspace["root"] / "cwd")
    command, *pipe = [part.strip() for part in command.split(" | ")]
    argv = substitute(command, workspace)
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, f"{command}\n→ vneuron {shlex.join(argv)}\n{result.output}\n{result.exception!r}"
    if "--json" in argv:
        data = json.loads(result.stdout)  # exactly one object: anything else on stdout fails here
        assert isinstance(data, dict) and data.get("kind"), result.stdout[:300]
    for stage in pipe:
        tool, *args = shlex.split(stage)
        assert tool == "jq" and len(args) == 1, f"unhandled pipe in a README example: {stage}"
        assert jq_path(data, args[0]) is not None


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
