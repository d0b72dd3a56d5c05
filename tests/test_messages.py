"""Every message a command prints names what its user types. The library names a setting (`top_k`) or a call
(`locate(from_run=RUN, top_k=5)`) and never a flag; the CLI renders each as a flag of the running command
(--top-k) or as another command's line (vneuron locate --from RUN --top-k 5). These tests walk every message
text in the library (errors, fixes, notes: every string that is not a docstring) and every command.
(tests/test_bad_inputs.py checks the rendered line of every bad input it tries.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from vneuron.errors import CALL, SETTING, VneuronError, call, call_settings, renamed, settings_named

PACKAGE = Path(__file__).resolve().parents[1] / "vneuron"
FLAG = re.compile(r"^(vneuron [a-z]+ )?--[a-z][a-z0-9-]*$")
# settings a message may name that no command has a flag for: the CLI never sets them, so it cannot raise their errors
API_ONLY = {
    "padding": "CaptureConfig.padding: the CLI pads as the tokenizer does",
    "init": "PlantConfig.init: the CLI always plants from the read initialisation",
    "kl_positions": "PlantConfig.kl_positions: the CLI compares every position",
    "verdict_alpha": "ValidateConfig.verdict_alpha: the CLI keeps the default level",
    "choices": "PlantConfig.choices: the CLI validates both formats (--train-choice picks the trained ones)",
    "max_memory": "load_model(max_memory=): the CLI gives accelerate every device's free memory",
    "offload_folder": "load_model(offload_folder=): the CLI's --device-map places on devices and the CPU, not the disk",
}


def _message_texts() -> list[tuple[str, str]]:
    """(where, text) of every string in the library that is not a docstring: f-strings' literal parts included."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = {id(node.body[0].value) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body
                and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                found.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno}", node.value))
    return found


def _calls() -> list[tuple[str, str, list[str]]]:
    """(where, command, settings) of every ``call("command", setting=...)`` in the library."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "call" and node.args \
                    and isinstance(node.args[0], ast.Constant):
                found.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno}", node.args[0].value,
                              [k.arg for k in node.keywords]))
    return found


def _named() -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for where, text in _message_texts():
        for name in SETTING.findall(text):
            names.setdefault(name, []).append(where)
    return names


def _commands():
    from vneuron.cli.options import commands

    return commands()


def test_the_walk_finds_the_messages_it_is_about():
    names, calls = _named(), _calls()
    assert {"top_k", "from_run", "out", "strict", "eval_columns", "force"} <= set(names)  # errors, fixes and notes alike
    assert ("locate", ["from_run", "top_k", "out"]) in [(c, s) for _, c, s in calls]


def test_every_setting_a_message_names_is_a_flag_somewhere():
    from vneuron.cli.options import flags_of

    everywhere = {name for fn in _commands().values() for name in flags_of(fn)}
    unknown = {name: where for name, where in _named().items() if name not in everywhere and name not in API_ONLY}
    assert not unknown, f"messages name settings no command has a flag for (add the flag, or say it in API_ONLY): {unknown}"
    assert not set(API_ONLY) & everywhere, "an API_ONLY setting has a flag now: its errors can reach the CLI"
    for where, command, settings in _calls():
        theirs = flags_of(_commands()[command])
        assert all(s in theirs for s in settings), f"{where}: {command} has no flag for {[s for s in settings if s not in theirs]}"


@pytest.mark.parametrize("command", sorted(_commands()))
def test_each_command_renders_every_named_setting_as_a_flag(command):
    from vneuron.cli.options import as_flags, flags_of

    flags = flags_of(_commands()[command])
    for name in sorted(set(_named()) - set(API_ONLY)):
        shown = as_flags(f"`{name}`", flags, command)
        assert FLAG.match(shown), f"{command}: `{name}` is shown as {shown!r}"
        if name in flags:
            assert shown == flags[name]  # its own flag first, never another command's
    for where, other, settings in _calls():
        shown = as_flags(call(other, **{s: "X" for s in settings}), flags, command)
        assert shown == f"vneuron {other} " + " ".join(f"{flags_of(_commands()[other])[s]} X" for s in settings), (where, shown)


def test_another_commands_setting_is_shown_with_that_command():
    from vneuron.cli.options import as_flags, flags_of

    ablate = flags_of(_commands()["ablate"])
    message = "pick 1..5, or re-select more into a new run and study that: " + call("locate", from_run="runs/a", top_k=9, out="NEW_RUN")
    assert as_flags(message, ablate, "ablate").endswith("study that: vneuron locate --from runs/a --top-k 9 --out NEW_RUN")
    assert as_flags("`from_run` runs/a", ablate, "ablate") == "vneuron locate --from runs/a"
    assert as_flags("`from_run` runs/a", flags_of(_commands()["locate"]), "locate") == "--from runs/a"
    assert as_flags(call("locate", force=True), ablate, "ablate") == "vneuron locate --force"


def test_python_users_still_read_setting_names(tmp_path):
    """The same message through the API: setting names and calls as the library spells them, no flag."""
    text = call("locate", from_run="runs/a", top_k=9, out="NEW_RUN")
    assert text == "`locate(from_run=runs/a, top_k=9, out=NEW_RUN)`" and CALL.fullmatch(text)
    assert call_settings(CALL.fullmatch(text).group(2)) == [("from_run", "runs/a"), ("top_k", "9"), ("out", "NEW_RUN")]
    from vneuron import ValidateConfig
    from vneuron.data import load_corpus

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"scenario": "x", "option_pole": "a"}\n')
    with pytest.raises(VneuronError) as plain:
        load_corpus(str(bad))
    assert "map them with `columns`" in str(plain.value) and "--" not in str(plain.value)
    with pytest.raises(VneuronError) as study, settings_named({"columns": "eval_columns"}):
        load_corpus(str(bad))
    assert "map them with `eval_columns`" in str(study.value) and study.value.fix.endswith("`eval_columns` ours=yours,...")
    assert "eval_columns" in {f for f in ValidateConfig.__dataclass_fields__}
    assert renamed("`strict` refuses them; `top_k`", {"strict": "eval_strict"}) == "`eval_strict` refuses them; `top_k`"
