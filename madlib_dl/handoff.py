"""Writing a large value into a table without binding it as a parameter.

A value bound from PL/Python is held by the caller (the Python bytes) while the executor makes its own
copies, about four times the value at once. Handed over instead, the value waits in the session's GD
under a token, and the statement reads it with ``<schema>.internal_take_value(token)``, which PL/Python
drops as it makes the datum: one copy fewer at the peak (bench/FINDINGS.md). Used for model states and
for packed buffers.
"""

from __future__ import annotations

import contextlib
import uuid

from madlib_dl import db as database

KEY = "madlib_dl_handoff"


@contextlib.contextmanager
def handed_over(value):
    """A token under which ``value`` waits for the statement run inside the block (and nothing after)."""
    token = uuid.uuid4().hex
    waiting = database.session_dict().setdefault(KEY, {})
    waiting[token] = value
    del value
    try:
        yield token
    finally:
        waiting.pop(token, None)


def take(gd: dict, token: str):
    """The value handed over under ``token`` (internal_take_value), removed from GD; None if none."""
    return gd.get(KEY, {}).pop(token, None)


def taking(schema: str, quote_ident) -> str:
    """The SQL expression that reads a handed-over value; the token is its parameter ``$1``."""
    return f"{quote_ident(schema)}.internal_take_value($1)"
