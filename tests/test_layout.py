"""The package keeps the shape docs/developing.md describes: folders that show the pipeline, imports that run one
way down its layers and never in a circle, no module reaching into another's private names or a model family's
own attributes, no module past a size a reader can hold, a thin CLI, and every CLI default the library's own."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vneuron"
MAX_LINES = 600
CLI_ROOT_LINES = 200
MAX_TOP_MODULES = 12
# the pipeline's rooms, bottom first (docs/developing.md): a module may import its own room and any room below it
LAYERS = (
    ("vneuron.errors",),
    ("vneuron.data",),
    ("vneuron.runtime",),
    ("vneuron.models",),
    ("vneuron.config",),
    ("vneuron.locate",),
    ("vneuron.validate",),
    ("vneuron.planting",),
    ("vneuron.results", "vneuron.doctor"),
    ("vneuron.cli",),
)
FAMILY_NAMES = ("lm_head", "embed_out", "n_embd", "Conv1D")  # a family's own attributes: only the Architecture record names them


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every vneuron import of a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "vneuron":
                found.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "vneuron"]
    return found


def room(module: str) -> tuple[int, str] | None:
    """(layer, room) of a module; None for the package root (its lazy exports name modules as strings)."""
    for layer, rooms in enumerate(LAYERS):
        for name in rooms:
            if module == name or module.startswith(name + "."):
                return layer, name
    return None


def test_every_module_lives_in_a_room_of_the_pipeline():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, f"{len(top)} modules at the top of vneuron/: {top}"
    homeless = [name for name in modules() if name != "vneuron" and room(name) is None]
    assert not homeless, f"not in any room of LAYERS (add a room, or move them into one): {homeless}"


def test_imports_run_down_the_layers():
    """Every import, at module level or inside a function, names its own room or one below it: a lower stage never
    asks a higher one, even lazily (the run directory, checkpoints and progress live in runtime/ for that reason)."""
    offenders = []
    for name, path in modules().items():
        if name == "vneuron":
            continue
        layer, home = room(name)
        for target, _, line in imports(name, path):
            there = room(target)
            if there is None:
                continue
            if there[0] > layer or (there[0] == layer and there[1] != home):
                offenders.append(f"{path.relative_to(ROOT)}:{line} ({home}) imports {target} ({there[1]})")
    assert not offenders, "\n".join(offenders)


def test_family_facts_stay_in_the_architecture_record():
    """A family's own attribute or class named outside vneuron/models/ is a fact leaking out of its Architecture record."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / "models"):
            continue
        for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            named = [word for word in FAMILY_NAMES if re.search(rf"\b{word}\b", text)]
            if named:
                offenders.append(f"{path.relative_to(ROOT)}:{n} names {', '.join(named)}")
    assert not offenders, "ask the Architecture record instead:\n" + "\n".join(offenders)


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for name, path in modules().items():
        for target, names, line in imports(name, path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                offenders.append(f"{path.relative_to(ROOT)}:{line} takes {', '.join(private)} from {target}")
    assert not offenders, "\n".join(offenders)


def test_imports_never_run_in_a_circle():
    """Module-level imports only: an import inside a function is how a lower layer asks a higher one lazily."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(n) for n in tree.body}
        edges = set()
        for target, names, line in imports(name, path):
            node = next(n for n in ast.walk(tree) if getattr(n, "lineno", None) == line and isinstance(n, (ast.Import, ast.ImportFrom)))
            if id(node) not in top:
                continue
            candidates = [f"{target}.{n}" for n in names] + [target]
            edges |= {c for c in candidates if c in known and c != name}
        graph[name] = edges
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # a package importing its own submodules (vneuron.cli → vneuron.cli.locate → vneuron.cli.options) is not a circle
    real = [c for c in cycles if not all(part.startswith(c.split(" → ")[0]) for part in c.split(" → "))]
    assert not real, "\n".join(real)


def test_modules_stay_readable_and_the_cli_root_stays_short():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    long = {path: n for path, n in sizes.items() if n > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"
    root = len((PACKAGE / "cli" / "__init__.py").read_text(encoding="utf-8").splitlines())
    assert root <= CLI_ROOT_LINES, f"vneuron/cli/__init__.py has {root} lines"


def _commands():
    import typer.main

    from vneuron.cli import app

    group = typer.main.get_command(app)
    return [(name, command) for name, command in group.commands.items()]


def _callbacks():
    from vneuron.cli import GROUPS

    return {fn.__name__: fn for group in GROUPS for fn in group.COMMANDS}


@pytest.mark.parametrize("command", sorted(_callbacks()))
def test_every_cli_default_is_the_librarys_own(command):
    """An option either sets a library setting (and then shows its default) or is a documented
    CLI-only option; a new option that is neither fails here."""
    from vneuron.cli.options import CLI_ONLY, default_of

    fn = _callbacks()[command]
    for param in inspect.signature(fn).parameters.values():
        info = param.default
        decls = getattr(info, "param_decls", None)
        if decls is None or type(info).__name__ != "OptionInfo":
            continue
        flag = next(d for d in decls if d.startswith("--"))
        owner_setting = getattr(info, "vneuron_setting", None)
        if owner_setting and owner_setting[0] is not None:
            owner, setting = owner_setting
            expected = default_of(owner, setting)
            shown = info.default
            if isinstance(expected, (list, tuple)) and isinstance(shown, str):  # a list on the command line: "a,b"
                shown = [type(expected[0])(v) for v in shown.split(",")] if shown else []
                expected = list(expected)
            assert shown == expected, f"{command} {flag}: CLI default {info.default!r}, {owner.__name__}.{setting} is {expected!r}"
        else:
            assert flag in CLI_ONLY or f"{command} {flag}" in CLI_ONLY or owner_setting, \
                f"{command} {flag} is neither a library setting nor documented in vneuron.cli.options.CLI_ONLY"


def test_steer_defaults_are_the_librarys():
    from vneuron.cli.options import default_of
    from vneuron.config import STEER_GAMMAS, STEER_MODES
    from vneuron.validate.study import steer

    fn = _callbacks()["steer"]
    params = inspect.signature(fn).parameters
    assert [float(g) for g in params["gamma"].default.default.split(",")] == list(STEER_GAMMAS) == list(default_of(steer, "gammas"))
    assert params["mode"].default.default == STEER_MODES[0]


def test_library_errors_name_settings_and_the_cli_shows_flags():
    from vneuron.cli import as_flags
    from vneuron.cli.options import flags_of
    from vneuron.config import LocateConfig
    from vneuron.errors import VneuronError

    with pytest.raises(VneuronError) as caught:
        LocateConfig(top_k=0, null_shuffles=0).check()
    message = caught.value.one_line()
    assert "`top_k`" in message and "--" not in message
    flags = flags_of(_callbacks()["locate"])
    assert as_flags(message, flags).startswith("--top-k must be at least 1")
    assert flags["null_shuffles"] == "--null" and flags["dimensions"] == "--dimension"
