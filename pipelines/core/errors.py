"""Errors that reach the user as one clear message and a non-zero exit, never a traceback."""

from __future__ import annotations


class SlmkitError(Exception):
    """An error the user can act on. The CLI prints its message and exits with `exit_code`."""

    exit_code = 1


class RecipeError(SlmkitError):
    """A recipe that failed validation: every problem found, each with its key path and line."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class StageFailed(SlmkitError):
    """A stage ran and its own checks failed (e.g. a quality-retention bound); the figures are in the message."""
