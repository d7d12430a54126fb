"""Writing a large value into a table without binding it as a parameter.

A value bound from PL/Python is held by the caller (the Python bytes) while the executor makes its own
copies, about four times the value at once. Handed over instead, the value waits in the session's GD
under a token, and the statement reads it with ``<schema>.internal_take_value(token)``, which PL/Python
drops as it makes the datum: one copy fewer at the peak (bench/FINDINGS.md). Used for model states and
for packed buffers.

A value already in a memory file (a model state a worker's reply brought) is handed over as the file's
range instead (:func:`file_handed_over`): the C library reads it straight into the datum for
``<schema>.internal_take_file(token)``, where PL/Python would need it as Python bytes first and copy it
again (bench/FINDINGS.md, "Writing output states").
"""

from __future__ import annotations

import contextlib
import uuid

from madlib_dl import db as database
from madlib_dl import native

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


def files_available(db, schema: str) -> bool:
    """Whether this backend can hand values over as memory-file ranges: its C library has the entry
    points and the database has internal_take_file (an extension created by an earlier build has not)."""
    if not native.file_handoff_available():
        return False
    name = f"{db.quote_ident(schema)}.internal_take_file(text)"
    return bool(db.execute("SELECT to_regprocedure($1) IS NOT NULL AS found", [name], ["text"])[0]["found"])


@contextlib.contextmanager
def file_handed_over(fd: int, start: int, size: int):
    """A token under which ``size`` bytes of the memory file ``fd`` from ``start`` wait for the statement
    run inside the block (:func:`taking_file`), which reads them once; the file must stay open meanwhile."""
    token = uuid.uuid4().hex
    native.hand_over_file(token, fd, start, size)
    try:
        yield token
    finally:
        native.forget_file()


def taking_file(schema: str, quote_ident) -> str:
    """The SQL expression that reads a value handed over as a file's range; the token is its ``$1``."""
    return f"{quote_ident(schema)}.internal_take_file($1)"
