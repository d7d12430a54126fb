"""What every madlib_dl SQL function does first (install.boot_lines puts the call at the top of each
body): refuse another version's code, and at the backend's first call register the madlib_dl.*
settings, which also loads the C library whose hook keeps madlib_dl's own errors free of tracebacks."""

from __future__ import annotations

from madlib_dl import db, require_version, settings
from madlib_dl.errors import MadlibDLError

_registered_in: str | None = None  # the schema whose functions registered this backend's settings


def begin(version: str, schema: str) -> None:
    require_version(version)
    global _registered_in
    if _registered_in is None:
        conn = db.current()
        try:
            settings.register(conn, schema)
        except MadlibDLError as error:  # a bad value SET before this first call
            conn.fail(error)
        _registered_in = schema


def schema() -> str | None:
    """The extension's schema as this backend's function bodies name it (None outside a server)."""
    return _registered_in
