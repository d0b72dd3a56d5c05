"""One error type for everything a user can fix, so the CLI can print one line and exit 2."""

from __future__ import annotations


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
