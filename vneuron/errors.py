"""One error type for everything a user can fix, so the CLI can print one line and exit 2.

A message names settings as the library spells them, in backticks: `top_k` (a setting of the call
that raised), or `locate(from_run=RUN, top_k=5)` (another call the message suggests, made with
``call``). Python users read them as written; the CLI renders each as the flag that sets it
(``--top-k``, ``vneuron locate --from RUN --top-k 5``), so one message serves both.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

SETTING = re.compile(r"`([a-z][a-z0-9_]*)`")
CALL = re.compile(r"`([a-z][a-z0-9_]*)\(([^`()]*)\)`")


def call(function: str, **settings) -> str:
    """Another library call a message suggests, e.g. ``call("locate", from_run=run, top_k=5)``; a True setting
    is a switch (``force=True`` → ``--force``)."""
    return f"`{function}({', '.join(f'{name}={value}' for name, value in settings.items())})`"


def call_settings(inside: str) -> list[tuple[str, str]]:
    """(setting, value) pairs of a ``call`` marker's argument text."""
    pairs = []
    for part in filter(None, (p.strip() for p in inside.split(", "))):
        name, _, value = part.partition("=")
        pairs.append((name.strip(), value.strip()))
    return pairs


def renamed(text: str, names: dict[str, str]) -> str:
    """``text`` with each `setting` of ``names`` spelled as its new name (a loader's `columns` read for a study is
    the study's `eval_columns`)."""
    return SETTING.sub(lambda m: f"`{names.get(m.group(1), m.group(1))}`", text)


class VneuronError(Exception):
    """A problem with the user's input or environment; the message says what and how to fix it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem.rstrip(".")
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        if not self.fix:
            return f"{self.problem}."
        return f"{self.problem}. {self.fix[:1].upper()}{self.fix[1:]}"


@contextmanager
def settings_named(names: dict[str, str]) -> Iterator[None]:
    """Errors raised inside name settings as the caller knows them: ``names`` maps the callee's names to the caller's."""
    try:
        yield
    except VneuronError as exc:
        exc.problem, exc.fix = renamed(exc.problem, names), renamed(exc.fix, names) if exc.fix else exc.fix
        exc.args = (exc.one_line(),)
        raise
