"""The one interface madlib_dl uses to talk to PostgreSQL.

Inside the server it is ``plpy``; under pytest or in client tools it is a psycopg2 connection. Both take
SQL with ``$1, $2 ...`` placeholders and bound values (never values pasted into SQL text), so the layers
above run unchanged in both places.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable, Iterator, Protocol, Sequence

from madlib_dl.errors import MadlibDLError, PermissionDenied


class Database(Protocol):
    def execute(self, sql: str, args: Sequence[Any] = (), types: Sequence[str] = ()) -> list[dict]:
        """Run one statement with ``$n`` parameters of the given SQL types; return rows as dicts."""

    def batches(self, sql: str, args: Sequence[Any] = (), types: Sequence[str] = (),
                size: int = 1000) -> Iterator[list[dict]]:
        """Run a query and yield its rows ``size`` at a time (a cursor: the result is never all in memory)."""

    def notice(self, message: str) -> None:
        """Tell the caller something (a NOTICE inside the server)."""

    def debug(self, message: str) -> None:
        """A detail for those who ask for it (DEBUG2: client_min_messages or log_min_messages debug2)."""

    def quote_ident(self, name: str) -> str:
        """Quote one identifier for SQL text."""

    def fail(self, error: MadlibDLError) -> None:
        """Report a user error the way this side reports errors (raises)."""


class PlpyDatabase:
    """``plpy`` inside a PL/Python function. Plans are prepared once per statement and kept."""

    def __init__(self, plpy_module):
        self._plpy = plpy_module
        self._plans: dict[tuple, Any] = {}
        self._error_type = None

    def execute(self, sql, args=(), types=()):
        if not args:
            return [dict(row) for row in self._plpy.execute(sql)]
        key = (sql, tuple(types))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plpy.prepare(sql, list(types))
        return [dict(row) for row in self._plpy.execute(plan, list(args))]

    def batches(self, sql, args=(), types=(), size=1000):
        if args:
            cursor = self._plpy.cursor(self._plpy.prepare(sql, list(types)), list(args))
        else:
            cursor = self._plpy.cursor(sql)
        try:
            while True:
                rows = cursor.fetch(size)
                if not rows:
                    return
                yield [dict(row) for row in rows]
        finally:
            cursor.close()

    def notice(self, message):
        self._plpy.notice(message)

    def debug(self, message):
        self._plpy.debug(message)

    def quote_ident(self, name):
        return self._plpy.quote_ident(name)

    def fail(self, error):
        # PL/Python prefixes the message with the exception's type name ("plpy.Error: ..."); a subclass
        # of plpy.Error named madlib_dl in builtins turns that into "madlib_dl: ...", keeping SQLSTATE.
        if self._error_type is None:
            self._error_type = type("madlib_dl", (self._plpy.Error,), {"__module__": "builtins"})
        server_error = self._error_type(str(error))
        server_error.sqlstate = error.sqlstate
        if getattr(error, "hint", None):
            server_error.hint = error.hint  # PL/Python reports it as the error's HINT
        raise server_error from None


class PsycopgDatabase:
    """A psycopg2 connection. ``$n`` parameters go through PREPARE/EXECUTE so they bind exactly as
    ``plpy.prepare`` binds them; notices are kept in ``self.notices``."""

    def __init__(self, connection):
        self.connection = connection
        self.notices: list[str] = []

    def execute(self, sql, args=(), types=()):
        with self.connection.cursor() as cur:
            if args:
                if len(types) != len(args):
                    raise ValueError("execute: one SQL type per argument is required")
                cur.execute(f"PREPARE madlib_dl_stmt ({', '.join(types)}) AS {sql}")
                try:
                    cur.execute(f"EXECUTE madlib_dl_stmt ({', '.join(['%s'] * len(args))})", list(args))
                    rows = self._rows(cur)
                finally:
                    cur.execute("DEALLOCATE madlib_dl_stmt")
                return rows
            cur.execute(sql)
            return self._rows(cur)

    def batches(self, sql, args=(), types=(), size=1000):
        rows = self.execute(sql, args, types)  # tests and client tools only: small results
        for start in range(0, len(rows), size):
            yield rows[start:start + size]

    @staticmethod
    def _rows(cur):
        if cur.description is None:
            return []
        names = [column.name for column in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def notice(self, message):
        self.notices.append(message)

    def debug(self, message):
        pass

    def quote_ident(self, name):
        from psycopg2.extensions import quote_ident

        return quote_ident(name, self.connection)

    def fail(self, error):
        raise error


_override: contextvars.ContextVar[Database | None] = contextvars.ContextVar("madlib_dl_db", default=None)
_server_db: PlpyDatabase | None = None


def current() -> Database:
    """The database of this call: the one set by :func:`using`, else the server's own (plpy)."""
    db = _override.get()
    if db is not None:
        return db
    global _server_db
    if _server_db is None:
        import plpy  # only importable inside a PostgreSQL backend

        _server_db = PlpyDatabase(plpy)
    return _server_db


@contextlib.contextmanager
def using(db: Database):
    """Run madlib_dl code against ``db`` (tests and client tools)."""
    token = _override.set(db)
    try:
        yield db
    finally:
        _override.reset(token)


_client_dict: dict = {}


def session_dict() -> dict:
    """PL/Python's GD inside a server (the dictionary every function of the session shares, which the
    aggregates' bodies pass to the segment runtime); a dictionary of this process elsewhere."""
    try:
        import plpy  # noqa: F401 (only importable inside a PostgreSQL backend)
    except ImportError:
        return _client_dict
    import __main__

    return __main__.GD


def sql_function(fn: Callable) -> Callable:
    """Mark a function called from a SQL body: user errors become one clean server error with SQLSTATE."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MadlibDLError as error:
            current().fail(error)
        except Exception as error:
            # A privilege the checks up front could not foresee (a table written at the end, say): one
            # line as the server said it, without the Python traceback and madlib_dl's internals.
            if getattr(error, "sqlstate", None) != PermissionDenied.sqlstate:
                raise
            current().fail(PermissionDenied(str(error.args[0] if error.args else error), hint=PERMISSION_HINT))

    return wrapper


PERMISSION_HINT = "Ask the owner of the object named for the privilege (GRANT), or your DBA for the schema's."
