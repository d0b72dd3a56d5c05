"""Options that several commands share, declared once; every default comes from the library.

``setting(Config, "field", "--flag", ...)`` makes an option whose default is the library's own
(a config dataclass field, or a function's keyword), and records which setting it sets. ``as_flags``
uses that record to say ``--top-k`` where the library says `top_k` (errors and notes alike), and
tests/test_cli_options.py checks that every option is either such a setting or listed in
``CLI_ONLY`` with the reason it has no library counterpart.
"""

from __future__ import annotations

import dataclasses
import inspect
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Optional

import typer

from vneuron.errors import CALL, SETTING, VneuronError, call_settings
from vneuron.models.loading import load_model
from vneuron.runtime.precision import DEFAULT_DTYPE
from vneuron.runtime.remote import RemoteTarget

# help panels, so `--help` reads by task
DATA, SELECTION, EVALUATION, REMOTE, OUTPUT, RUN, TRAINING = (
    "Data", "Selection", "Evaluation", "Remote (NDIF)", "Output", "Run", "Training")

CLI_ONLY = {  # options with no library setting: how the command runs or prints, not what it computes
    "--json": "output format of the command",
    "--quiet": "terminal output only",
    "--threads": "process-wide torch threads (vneuron.runtime.threads.pick)",
    "--dry-run": "the CLI prints a plan instead of running (vneuron.locate.plan has the API)",
    "--out": "where a command writes (the library functions take out=)",
    "--model": "which model (the library functions take model=)",
    "--remote": "where the model runs (the library functions take remote=)",
    "--host": "where the model runs (the library functions take remote=URL)",
    "--timeout": "remote request timeout (remote.RemoteTarget.timeout)",
    "--resume": "locate(resume=...) keyword",
    "--detach": "locate(detach=...) keyword",
    "--force": "locate(force=...) keyword",
    "--from": "locate(from_run=...) keyword",
    "--show": "rows printed per pole",
    "--version": "prints the version",
    "--planted": "power(planted_dirs=...) keyword",
    "steer --gamma": "steer(run, gammas): config.STEER_GAMMAS (tests/test_layout.py checks it)",
    "steer --mode": "steer's default mode, config.STEER_MODES[0] (ValidateConfig's default, zero, is ablate's)",
}


def default_of(owner: Any, name: str) -> Any:
    """The library's default of a setting: a config dataclass field, or a function's keyword."""
    if dataclasses.is_dataclass(owner):
        found = {f.name: f for f in dataclasses.fields(owner)}[name]
        return found.default_factory() if found.default_factory is not dataclasses.MISSING else found.default
    return inspect.signature(owner).parameters[name].default


def setting(owner: Any, name: str, *flags: str, help: str, panel: str | None = None,
            show: Callable[[Any], Any] | None = None, **extra) -> Any:
    """An option for the library setting ``owner.name`` (default included); ``show`` formats a
    default that the command line spells differently (a list as "a,b")."""
    default = default_of(owner, name)
    info = typer.Option(show(default) if show else default, *flags, help=help, rich_help_panel=panel, **extra)
    info.vneuron_setting = (owner, name)
    return info


def named(info: Any, name: str) -> Any:
    """Mark an option as the library keyword ``name`` (a function argument, not a config field)."""
    info.vneuron_setting = (None, name)
    return info


def flags_of(command: Callable) -> dict[str, str]:
    """setting or parameter name → the long flag that sets it, for one command function."""
    out: dict[str, str] = {}
    for name, param in inspect.signature(command).parameters.items():
        info = param.default
        decls = [d.split("/")[0] for d in (getattr(info, "param_decls", None) or ()) if d.startswith("--")]  # a switch: its on flag
        if not decls:
            continue
        out.setdefault(name, decls[0])
        if getattr(info, "vneuron_setting", None):
            out[info.vneuron_setting[1]] = decls[0]
    return out


def commands() -> dict[str, Callable]:
    """Every command function by its name (``locate``, ``ablate``, …), for messages that name another command's flag."""
    from vneuron.cli import GROUPS  # the root registers the groups; asked lazily, as it imports this module

    return {fn.__name__: fn for group in GROUPS for fn in group.COMMANDS}


def as_flags(message: str, flags: dict[str, str], command: str | None = None) -> str:
    """A library message for the terminal: each `setting` becomes the flag that sets it in ``command`` (whose
    ``flags_of`` is ``flags``), or, where only another command has it, that command's flag with its name
    (`from_run` in ablate: ``vneuron locate --from``); each `locate(from_run=RUN, top_k=5)` becomes the line
    ``vneuron locate --from RUN --top-k 5``. A name no command sets stays as it is (tests/test_messages.py
    fails on it)."""
    def line(match) -> str:
        fn = commands().get(match.group(1))
        if fn is None:
            return match.group(0)
        theirs, words = flags_of(fn), [f"vneuron {match.group(1)}"]
        for name, value in call_settings(match.group(2)):
            if name not in theirs:
                return match.group(0)
            words.append(theirs[name] if value == "True" else f"{theirs[name]} {value}")
        return " ".join(words)

    def flag(match) -> str:
        name = match.group(1)
        if name in flags:
            return flags[name]
        for other, fn in commands().items():
            theirs = flags_of(fn)
            if other != command and name in theirs:
                return f"vneuron {other} {theirs[name]}"
        return match.group(0)

    return SETTING.sub(flag, CALL.sub(line, message))


_RUNNING: ContextVar[Callable | None] = ContextVar("vneuron_command", default=None)


@contextmanager
def running(command: Callable) -> Iterator[None]:
    """While ``command`` runs, what it prints beside its tables names its flags (``for_terminal``)."""
    token = _RUNNING.set(command)
    try:
        yield
    finally:
        _RUNNING.reset(token)


def for_terminal(text: str) -> str:
    """A library text (an error, a note on the data) as the running command's user reads it: settings as flags."""
    command = _RUNNING.get()
    if command is None:
        return as_flags(text, {})
    return as_flags(text, flags_of(command), command.__name__)


def with_options(options: dict[str, tuple[Any, Any]]) -> Callable:
    """Give a command the options several commands share, declared once as {name: (type, Option)}.

    They join the command's signature (so Typer shows and parses them) and arrive in its
    ``**shared`` keyword arguments.
    """
    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=kind)
                 for name, (kind, info) in options.items()]
        command.__signature__ = signature.replace(parameters=[*own, *added])
        return command

    return decorate


# -- parsing ---------------------------------------------------------------------------------
def split_list(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def pairs(value: Optional[str], sep: str, what: str, example: str) -> Optional[list[tuple[str, str]]]:
    if not value:
        return None
    out = []
    for part in split_list(value):
        left, found, right = part.partition(sep)
        if not found or not left.strip() or not right.strip():
            raise VneuronError(f"Cannot read {what} {part!r}", f"write it as {example}")
        out.append((left.strip(), right.strip()))
    return out


def mapping(value: Optional[str], what: str, example: str) -> Optional[dict[str, str]]:
    return dict(pairs(value, "=", what, example) or []) or None


def numbers(text: str, what: str, kind: type = float, example: str = "0,0.5,1,2") -> list:
    try:
        values = [kind(v) for v in split_list(text) or []]
    except ValueError:
        values = []
    if not values:
        raise VneuronError(f"Cannot read {what} {text!r}", f"pass numbers separated by commas, e.g. {example}")
    return values


def joined(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


# -- what every model-running command does first ---------------------------------------------
def setup(threads: Optional[int] = None, quiet: bool = False, device: Optional[str] = None,
          device_map: Optional[str] = None) -> None:
    """Where models load (a bad device is one line before any work), threads (measured when not given, on the CPU
    only: an accelerator computes elsewhere) and the libraries' own output."""
    if threads is not None and threads < 1:
        raise VneuronError(f"--threads must be at least 1, got {threads}")
    from vneuron.runtime import devices
    from vneuron.runtime.threads import pick

    placement = devices.use(devices.Placement(device or "auto", device_map))
    on_cpu = placement.device_map is None and not devices.accelerator(devices.resolve(placement.device))
    if on_cpu or threads is not None:
        pick(threads)
    if quiet:
        from vneuron.runtime.quiet import set_quiet

        set_quiet()


def target(remote: bool, host: Optional[str], timeout: float):
    """The remote target the options name (``--host`` alone implies ``--remote``), or None."""
    from vneuron.runtime.remote import resolve_target

    if not (remote or host):
        return None
    return resolve_target("local" if host == "local" else (host or True), timeout=timeout)


def given_settings(ctx, command: Callable) -> set[str]:
    """The settings typed on the command line, by their library names (so `from_run` can refuse
    the ones it cannot honour)."""
    by_param = {}
    for name, param in inspect.signature(command).parameters.items():
        setting_of = getattr(param.default, "vneuron_setting", None)
        by_param[name] = setting_of[1] if setting_of else name
    given = set()
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)  # an enum of click's, or of the click Typer vendors
        if getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT"):
            given.add(by_param.get(param.name, param.name))
    return given


# -- shared options ----------------------------------------------------------------------------
def out_option(help: str, required: bool = False) -> Any:
    return typer.Option(... if required else None, "--out", "-o", help=help, rich_help_panel=OUTPUT)


JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout instead of tables.", rich_help_panel=OUTPUT)
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar.", rich_help_panel=OUTPUT)
ThreadsOpt = typer.Option(None, "--threads", help="torch CPU threads (default: OMP_NUM_THREADS, else the fastest count "
                          "measured at start; recorded in the manifest).", rich_help_panel=RUN)
DryRunOpt = typer.Option(False, "--dry-run", help="Print the plan (forward passes, tokens, requests, bytes each way, memory "
                         "per batch, a time estimate from a one-batch calibration) and exit without writing anything.",
                         rich_help_panel=RUN)
ModelOpt = typer.Option(None, "--model", "-m", help="Alias (see `vneuron models`), model directory, .gguf file or hub id. "
                        "Default: the embedded model.", rich_help_panel=DATA)
RemoteOpt = typer.Option(False, "--remote", help="Run on NDIF: the weights stay on the server, only reduced tensors come back.",
                         rich_help_panel=REMOTE)
HostOpt = typer.Option(None, "--host", help="NDIF host URL (default: NDIF_HOST, nnsight's config, or the public NDIF); "
                       "'local' simulates the server in-process.", rich_help_panel=REMOTE)
TimeoutOpt = setting(RemoteTarget, "timeout", "--timeout", panel=REMOTE, help="Remote: seconds one request may take (queue included).")
DtypeOpt = setting(load_model, "dtype", "--dtype", panel=RUN, metavar="[float32|bf16-mixed|bfloat16|float16|auto]",
                   help=f"What the model computes in: float32, bf16-mixed (the blocks' matrix products in bfloat16, everything else "
                        f"float32), bfloat16, float16, or auto (the fastest on this machine whose accuracy "
                        f"check on the model passes). Default: a run's own dtype; without a run {DEFAULT_DTYPE} (remote: what the "
                        f"server serves). Recorded in the manifest.")
DeviceOpt = setting(load_model, "device", "--device", panel=RUN, metavar="[auto|cpu|cuda|cuda:N|mps]",
                    help="Where the model computes: auto (a CUDA GPU when torch sees one, else MPS, else the CPU), cpu, cuda, "
                         "cuda:N or mps. Recorded in the manifest.")
DeviceMapOpt = setting(load_model, "device_map", "--device-map", panel=RUN, metavar="[auto|balanced|sequential]",
                       help="Spread a model too large for one GPU over every visible GPU (accelerate's device_map); "
                            "overrides --device.")
RunDirArg = typer.Argument(None, help="A locate run directory. Without it, --model is located first (built-in corpus).",
                           metavar="RUN_DIR")


# -- help that reads at 80 columns --------------------------------------------------------------------------------
LONG_CHOICES = 16  # a choice list wider than this is shown as a NAME (the help text describes every value)


class HelpCommand(typer.core.TyperCommand):
    """Every command's ``--help``, tidied for a narrow terminal: flags show no type (no ``<bool>``), arguments show
    only their name (no ``<list[Path]>``), a long list of choices (``[delta_p|mean_diff|…]``, which the type
    column would break mid-word) becomes the option's NAME, its values described in the help text beside it,
    and a ``--no-x`` form is named in the help instead of in a column of its own."""

    def format_help(self, ctx, formatter):
        tidy_help(self, ctx)
        return super().format_help(ctx, formatter)


def tidy_help(command, ctx) -> None:
    """What ``HelpCommand`` does to a command's parameters before its help is drawn (the root group uses it too)."""
    for param in command.get_params(ctx):
        if getattr(param, "secondary_opts", None):  # --x/--no-x: a column of its own would narrow every row's help
            param.help = f"{param.help or ''} ({' / '.join(param.secondary_opts)} turns it off)".strip()
            param.secondary_opts = []
        if getattr(param, "is_flag", False) or param.param_type_name == "argument":
            param.display_type_rich = lambda ctx: None
        elif isinstance(param.metavar, str) and param.metavar.startswith("[") and len(param.metavar) > LONG_CHOICES:
            param.metavar = param.name.upper()[:12]
