"""What every madlib_dl SQL function does first, after the version check (install.boot_lines puts both
at the top of each body): at the backend's first call, register the madlib_dl.* settings, which also
loads the C library whose hook keeps madlib_dl's own errors free of tracebacks."""

from __future__ import annotations

from madlib_dl import db, settings
from madlib_dl.errors import MadlibDLError

_registered = False
_schema: str | None = None  # the schema of the functions calling, as the latest body named it


def begin(schema: str) -> None:
    global _registered, _schema
    _schema = schema
    if not _registered:
        conn = db.current()
        try:
            settings.register(conn, schema)
        except MadlibDLError as error:  # a bad value SET before this first call
            conn.fail(error)
        _registered = True


def schema() -> str | None:
    """The extension's schema as this backend's function bodies name it (None outside a server)."""
    return _schema
