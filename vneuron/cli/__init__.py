"""The ``vneuron`` command: one root that makes the app, turns every error into one line, and
registers the commands of each group (one module per group, each a thin layer over the library)."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys

import typer

from vneuron.cli import locate, planting, results, system, validate
from vneuron.cli.options import HelpCommand, as_flags, flags_of, running, tidy_help
from vneuron.errors import VneuronError

GROUPS = (locate, validate, planting, results, system)


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors (an unknown option, `--top-k abc`, a missing value) as one `error:` line, exit 2.

    Typer would draw a multi-line box; every other vneuron error is one line, so these are too.
    `--help` and a bare `vneuron` still print the help.
    """

    def make_context(self, info_name, args, parent=None, **extra):
        self._argv = ["vneuron", *args]
        with _one_line_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def format_help(self, ctx, formatter):
        tidy_help(self, ctx)
        return super().format_help(ctx, formatter)

    def invoke(self, ctx):
        from vneuron.runtime.store import recording_command

        with _one_line_usage_errors(), recording_command(getattr(self, "_argv", ["vneuron"])):
            return super().invoke(ctx)


class _one_line_usage_errors:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        # Typer ≥ 0.20 vendors its own click: take the classes from Typer, not from `import click`.
        usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
        no_args = getattr(sys.modules[usage_error.__module__], "NoArgsIsHelpError", ())
        if not isinstance(exc, usage_error) or isinstance(exc, no_args):
            return False
        where = " ".join(["vneuron", *exc.ctx.command_path.split()[1:]]) if exc.ctx is not None else "vneuron"
        message = " ".join(exc.format_message().split()).rstrip(".")
        _say_error(f"{message}. See: {where} --help")
        raise typer.Exit(2) from None


def _what_is_kept() -> str:
    """After an interruption: nothing half-written is ever kept; finished work in a checkpoint is, and how to continue."""
    from vneuron.runtime.checkpoint import kept

    left = kept()
    if not left:
        return "nothing half-written was kept"
    path, flag = left[-1]
    again = "the same command" + (" with --resume" if flag else "")
    return f"nothing half-written was kept; the finished work is in {path}: rerun {again} to continue"


def _say_error(line: str) -> None:
    from rich.markup import escape

    from vneuron.runtime.progress import err_console

    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so it ends as Ctrl-C does: every cleanup that an interruption runs
    (a half-written run directory removed, a remote run's checkpoint closed) runs for it too."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    def terminate(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except (ValueError, OSError, AttributeError):  # not the main thread, or no SIGTERM here: leave it as it is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def handle_errors(fn):
    """One line and exit code 2 for anything the user can fix; tracebacks only with VNEURON_DEBUG=1.
    Ctrl-C and SIGTERM: one line, nothing half-written kept, exit 130 and 143 (128 + the signal)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from vneuron.runtime import checkpoint

        checkpoint.forget()  # an interruption names only what this command kept
        try:
            with _sigterm_as_interrupt(), running(fn):
                return fn(*args, **kwargs)
        except VneuronError as exc:
            if os.environ.get("VNEURON_DEBUG") == "1":
                raise
            _say_error(as_flags(exc.one_line(), flags_of(fn), fn.__name__))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            from rich.markup import escape

            from vneuron.runtime.progress import err_console

            what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            err_console.print(f"[bold red]{what}[/] ({escape(_what_is_kept())})", highlight=False, soft_wrap=True)
            raise typer.Exit(128 + signal.SIGTERM if isinstance(exc, Terminated) else 130) from None

    return wrapper


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    help="Find the neurons of a language model that encode human values, and test them causally.",
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        from vneuron import __version__

        typer.echo(f"vneuron {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")):
    """Find the neurons of a language model that encode human values, and test them causally."""


for _group in GROUPS:
    for _command in _group.COMMANDS:
        app.command(cls=HelpCommand)(handle_errors(_command))


def main() -> None:  # pragma: no cover - console entry point alias
    app()
