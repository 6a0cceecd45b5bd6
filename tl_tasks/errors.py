"""The shared error classes: bad input, what a retry cannot fix (the DAG's retry policy fails these at once),
and a failed run.

`BadInput` subclasses ValueError (and `MissingInput` also FileNotFoundError) so callers that caught those keep
working. Anything else -- network, database, a truncated checkpoint, a full disk -- is retried.
"""
from __future__ import annotations


class BadInput(ValueError):
    """The input itself is wrong (a setting, a path, a file's content); the message names it and the fix."""


class MissingInput(BadInput, FileNotFoundError):
    """An input file or folder that the user named (or a stage that must run first) does not exist."""


class RunFailed(RuntimeError):
    """The run as a whole failed: a variant failed, a stage left no result, or a regression was fatal."""


def first_line(text: str | None) -> str:
    """The first non-blank line of an error text (a traceback's message line), for one-line summaries."""
    lines = [line for line in str(text or "").splitlines() if line.strip()]
    return lines[0].strip() if lines else "(no message)"
