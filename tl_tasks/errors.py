"""The one error class for bad input: what a retry cannot fix (the DAG's retry policy fails these at once).

`BadInput` subclasses ValueError (and `MissingInput` also FileNotFoundError) so callers that caught those keep
working. Anything else -- network, database, a truncated checkpoint, a full disk -- is retried.
"""
from __future__ import annotations


class BadInput(ValueError):
    """The input itself is wrong (a setting, a path, a file's content); the message names it and the fix."""


class MissingInput(BadInput, FileNotFoundError):
    """An input file or folder that the user named (or a stage that must run first) does not exist."""
