r"""Every example in README.md and in docs/*.md runs: each `vneuron …` command of their bash blocks and
each python block, and docs/cli.md is what scripts/cli_reference.py makes of the CLI today.

Pages run in the order of PAGES (the README first), one temporary working directory for all; a
command that an earlier page already showed (the same text) is that example, run once. The
records docs/EVIDENCE.md and docs/DATA_CARD.md are not run (RECORDS says why); a new page under
docs/ fails here until it is listed in one of the two. Relative links between the pages must
point at a file that exists and, with `#anchor`, at a heading it has (GitHub's slugs).

Substituted to keep this cheap and offline (and nothing else):
- the model: the default (embedded Gemma-3-270M) and every alias named → a tiny random Llama with
  3 × 1024 MLP neurons, enough for the examples' -k 500 and for matched random controls of 200
  located neurons (`--model TINY`; `plant` and `power` get it too);
- `locate` gets `--limit 2` (two items per dimension; a `--limit` in the text becomes 2);
  `ablate`/`steer` get `--controls 2 --max-controls 2 --limit 2` (and `--controls 20` in the text becomes 2);
  `ablate` gets `--generations 0` (greedy generations before/after edits are what most of its
  time goes to; tests/test_validate.py covers them); `plant` gets `--steps 2 --train-limit 4` and
  `power` `--sizes 2 --steps 2 --controls 2 --limit 2` (tests/test_planting.py covers planting
  that works); every command that draws a progress bar gets `-q`;
- `--remote` on locate/ablate/steer → `--host local` (nnsight's in-process server simulation);
  on `models`/`doctor` → a stub HTTP server on 127.0.0.1 (a real NDIF server is tests/remote/);
- python blocks: `load_model("default")` → the tiny model (every `load_model` must name "default"),
  `limit=4` (items per dimension) added to `LocateConfig(...)` and a corpus's `.select(...)`, and
  `ValidateConfig(...)` gets `limit=2` and `controls=2`;
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
Lines that install, run the test suite, a benchmark, a script or a recipe are skipped with their
reason (SKIPPED); any other line a page gains fails here until it is either runnable or given a
reason. A block that only shows output is fenced as `text` and not run.
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
PAGES = ("README.md", "docs/index.md", "docs/getting-started.md", "docs/evaluation.md", "docs/reports.md",
         "docs/remote.md", "docs/planting.md", "docs/python-api.md", "docs/developing.md", "docs/extending.md",
         "docs/cli.md")  # the order they run in
RECORDS = {  # pages whose commands are records of what was run on real models, not examples
    "docs/EVIDENCE.md": "the lab notebook: its commands are what was run on Gemma and SmolLM2, reproduced by hand",
    "docs/DATA_CARD.md": "the data card: its command (recipes/corpus_quality.py) is run by tests/test_corpus_quality.py",
}
TEXT = {page: (ROOT / page).read_text(encoding="utf-8") for page in PAGES}
runner = CliRunner()

SKIPPED = {  # a command's start → why it is not run here
    "python3 -m venv": "creates the environment this test runs in",
    ".venv/bin/pip install": "installs the environment this test runs in",
    "pip install": "installs packages (CI runs the README's install)",
    ".venv/bin/python -m pytest": "runs the test suite this test belongs to",
    "bash scripts/ndif/server.sh": "starts a real NDIF server: .ci/run runs that tier (pytest -m remote)",
    "bash .ci/run": "is CI: a fresh install and every test tier",
    ".venv/bin/ruff": "lints the code (not an example of vneuron)",
    "python recipes/": "tests/test_recipes.py and tests/test_corpus_quality.py run the recipes on a tiny model",
    "python examples/recipe_locate.py": "tests/test_recipes.py runs it (on the embedded model: marker realmodel)",
    "python benchmarks/": "a benchmark on the embedded model, minutes long: run by hand (docs/EVIDENCE.md#benchmarks)",
    "python scripts/cli_reference.py": "rewrites docs/cli.md: test_cli_reference_is_current checks its output",
}
ALIASES = ("default", "gemma-3-270m", "smollm2-135m", "llama-8b", "llama-70b", "llama-405b", "llama-8b-instruct", "llama-70b-instruct",
           "llama-405b-instruct")
USER_FILES = {"my_items.csv": ROOT / "examples" / "corpus.csv", "texts.csv": ROOT / "examples" / "texts.csv",
              "友善-final.xlsx": FIXTURES / "cvoice" / "友善-final.xlsx", "test.xlsx": FIXTURES / "cvoice" / "test.xlsx"}
CHEAP = {  # command → options that keep it cheap (replacing the page's value when it gives one)
    "locate": {"--limit": "2"},
    "ablate": {"--controls": "2", "--max-controls": "2", "--limit": "2", "--generations": "0"},
    "steer": {"--controls": "2", "--max-controls": "2", "--limit": "2"},
    "plant": {"--steps": "2", "--train-limit": "4"},
    "power": {"--sizes": "2", "--steps": "2", "--controls": "2", "--limit": "2"},
}
MODEL_COMMANDS = ("locate", "ablate", "steer", "plant", "power")  # those that load a model (given by --model)
QUIET = MODEL_COMMANDS + ("report", "show")  # those that draw a progress bar


def blocks(language: str, page: str = "README.md") -> list[str]:
    text = TEXT[page] if page in TEXT else (ROOT / page).read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def commands(page: str = "README.md") -> list[str]:
    out = []
    for block in blocks("bash", page):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s+)#.*$", "", line).strip()
            out.extend(part.strip() for part in line.split("&&") if part.strip())
    return out


def examples() -> list[tuple[str, str]]:
    """(page, command) in the order they run; a command an earlier page showed runs once."""
    seen, out = set(), []
    for page in PAGES:
        for command in commands(page):
            if command not in seen:
                seen.add(command)
                out.append((page, command))
    return out


def _skip_reason(command: str) -> str | None:
    return next((why for start, why in SKIPPED.items() if command.startswith(start)), None)


CLI = [(page, c) for page, c in examples() if not _skip_reason(c)]
PYTHON = [(page, i) for page in PAGES for i in range(len(blocks("python", page)))]


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
    assert Path(argv[0]).name == "vneuron", f"unhandled command in a page (run it here or give it a reason in SKIPPED): {command}"
    # `doctor [--remote]`: run the optional part too
    argv = [a.strip("[]") for a in argv[1:] if a.strip("[]") not in ("…", "...")]
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
        host = "local" if sub in ("locate", "ablate", "steer") else ws["host"]
        argv[argv.index("--remote"): argv.index("--remote") + 1] = ["--host", host]
    for flag in ("--model", "-m"):
        if flag in argv and argv[argv.index(flag) + 1] in ALIASES:
            argv[argv.index(flag) + 1] = ws["tiny"]
    located_first = sub in ("ablate", "steer") and (len(argv) == 1 or argv[1].startswith("-"))  # no RUN_DIR
    needs_model = sub in ("locate", "plant", "power") or located_first
    if "--model" not in argv and "-m" not in argv and "--from" not in argv and needs_model:
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
    """The value at a jq path such as `.poles.conservation.stability` (the subset the examples use)."""
    for key in filter(None, path.split(".")):
        shown = sorted(data) if isinstance(data, dict) else data
        assert isinstance(data, dict) and key in data, f"jq {path}: no {key!r} in {shown!r}"
        data = data[key]
    return data


def test_every_page_is_run_or_a_record():
    pages = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")}
    assert pages == {p for p in PAGES if p.startswith("docs/")} | set(RECORDS), (
        "list a new docs page in PAGES (its examples run here) or RECORDS (with the reason they do not)")


def _vneuron_options() -> dict[str, set[str]]:
    import typer.main

    group = typer.main.get_command(app)
    return {name: {o for p in command.params for o in (*p.opts, *p.secondary_opts)} for name, command in group.commands.items()}


@pytest.mark.parametrize("page", sorted(RECORDS))
def test_records_show_commands_that_can_still_be_typed(page):
    """A record is not run here (RECORDS says why), but every command it shows must still be typeable today: a
    vneuron command and each of its flags exist, and a script it runs is in the repository."""
    options, checked = _vneuron_options(), 0
    for command in commands(page):
        words = shlex.split(command)
        if words and words[0].endswith("vneuron"):
            assert words[1] in options, f"{page}: `{command}` names no vneuron command"
            unknown = [w.split("=")[0] for w in words[2:] if w.startswith("-") and w.split("=")[0] not in options[words[1]]]
            assert not unknown, f"{page}: `{command}`: vneuron {words[1]} has no {', '.join(unknown)}"
            checked += 1
        elif len(words) > 1 and words[0].split("/")[-1].startswith("python") and words[1].endswith(".py"):
            assert (ROOT / words[1]).is_file(), f"{page}: `{command}` runs {words[1]}, which is not in the repository"
            checked += 1
    assert checked, f"{page} shows no command"


def test_the_pages_have_examples_to_run():
    cli = [c for _, c in CLI]
    assert len(cli) >= 15 and len(PYTHON) >= 1 and len(commands("README.md")) >= 5
    assert any(c.startswith("vneuron locate --from") for c in cli) and any(c.startswith("vneuron steer") for c in cli)
    assert not any(c.startswith(("-", "#", '"')) for c in cli), "a continuation or output line read as a command"


def _id(example) -> str:
    page, command = example
    return f"{Path(page).name}: {command}"


@pytest.mark.parametrize("example", CLI, ids=[_id(e) for e in CLI])
def test_cli_example(example, workspace, monkeypatch):
    page, command = example
    monkeypatch.chdir(workspace["root"] / "cwd")
    command, *pipe = [part.strip() for part in command.split(" | ")]
    argv = substitute(command, workspace)
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, f"{page}: {command}\n→ vneuron {shlex.join(argv)}\n{result.output}\n{result.exception!r}"
    if "--json" in argv:
        data = json.loads(result.stdout)  # exactly one object: anything else on stdout fails here
        assert isinstance(data, dict) and data.get("kind"), result.stdout[:300]
    for stage in pipe:
        tool, *args = shlex.split(stage)
        assert tool == "jq" and len(args) == 1, f"unhandled pipe in an example of {page}: {stage}"
        assert jq_path(data, args[0]) is not None


SKIPPED_EXAMPLES = [e for e in examples() if _skip_reason(e[1])]


@pytest.mark.parametrize("example", SKIPPED_EXAMPLES, ids=[_id(e) for e in SKIPPED_EXAMPLES])
def test_commands_not_run_here_name_what_exists(example):
    """A command not run here (SKIPPED says why) still names what exists: the files and folders it runs, the flags
    its script reads, the pytest markers it selects, the torch pin CI installs."""
    page, command = example
    words = shlex.split(command)
    tracked = ("benchmarks/", "scripts/", "recipes/", "examples/", "tests/", ".ci/", "docs/", "vneuron/")
    paths = [w for w in words if w.startswith(tracked)]  # what it runs; its outputs (runs/…) need not exist
    for path in paths:
        assert (ROOT / path).exists(), f"{page}: `{command}` names {path}, which is not in the repository"
    script = next((w for w in words if w.endswith(".py")), None)
    if script:
        text = (ROOT / script).read_text(encoding="utf-8")
        missing = [w for w in words if w.startswith("--") and w not in text]
        assert not missing, f"{page}: `{command}`: {script} reads no {', '.join(missing)}"
    if "pytest" in words and words.count("-m") > 1:
        marker = words[words.index("-m", words.index("pytest")) + 1]
        assert f'"{marker}:' in (ROOT / "pyproject.toml").read_text(encoding="utf-8"), f"{page}: no pytest marker {marker!r}"
    pins = [w for w in words if w.startswith("torch==")]
    for pin in pins:
        assert pin in (ROOT / ".ci" / "run").read_text(encoding="utf-8"), f"{page}: CI does not install {pin}"


PYTHON_SWAPS = {'vneuron.load_model("default")': lambda ws: f'vneuron.load_model({ws["tiny"]!r})',
                'vneuron.LocateConfig(': lambda ws: 'vneuron.LocateConfig(limit=4, ',
                '.select(split=': lambda ws: '.select(limit=4, split=',
                'ValidateConfig(': lambda ws: 'ValidateConfig(limit=2, ',
                'controls=20': lambda ws: 'controls=2'}
PYTHON_WRITES = {'out="runs/st"': "runs/st/manifest.json", 'save("cons.safetensors")': "cons.safetensors"}


@pytest.mark.parametrize("example", PYTHON, ids=[f"{Path(p).name}: python block {i + 1}" for p, i in PYTHON])
def test_python_example(example, workspace, monkeypatch, tmp_path):
    page, index = example
    monkeypatch.chdir(tmp_path)
    code = blocks("python", page)[index]
    assert code.count("load_model(") == code.count('load_model("default")'), (
        f"{page}: a python example loads a model other than \"default\": add its substitution here")
    for old, new in PYTHON_SWAPS.items():
        code = code.replace(old, new(workspace))
    exec(compile(code, f"{page} python block {index + 1}", "exec"), {"__name__": "readme_example"})
    for marker, written in PYTHON_WRITES.items():
        if marker in blocks("python", page)[index]:
            assert (tmp_path / written).is_file(), f"{page}: the example did not write {written}"


def test_cli_reference_is_current():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert module.render(app) == committed, "docs/cli.md is stale: run python scripts/cli_reference.py"


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", lambda m: "_" if m.group() == "_" else "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", [*PAGES, *sorted(RECORDS)])
def test_links_resolve(page):
    source = ROOT / page
    text = re.sub(r"```.*?```", "", source.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        path = (source.parent / file).resolve() if file else source
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(target)
    assert not broken, f"{page}: links to nothing: {broken}"
