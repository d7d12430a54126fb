"""A role's background workers in its current database, as pg_stat_activity shows them to the role
itself: shared by the test modules that check which workers a call started, kept or ended."""

from __future__ import annotations

import threading
import time


def query(*columns: str) -> str:
    """The workers' pids and ``columns`` (pg_stat_activity column names written by the tests)."""
    return (f"SELECT pid{''.join(', ' + c for c in columns)} FROM pg_stat_activity WHERE backend_type = "
            "'madlib_dl worker' AND usename = session_user AND datname = current_database()")


def workers(cur, *columns: str) -> dict:
    """pid -> the value of the one column, or a tuple of several (None with no column), seen afresh."""
    cur.execute("SELECT pg_stat_clear_snapshot()")
    cur.execute(query(*columns))
    return {row[0]: row[1] if len(row) == 2 else (tuple(row[1:]) or None) for row in cur.fetchall()}


def none_left_within(cur, *columns: str, seconds: float = 10.0) -> dict:
    """Waits until no worker is left (they exit asynchronously); returns those left."""
    deadline = time.monotonic() + seconds
    while (left := workers(cur, *columns)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def watch(connect, seen: list, done: threading.Event, *columns: str) -> None:
    """Until ``done``: add every (pid, columns...) row seen to ``seen``, from a connection of its own
    (``connect()``: a context manager), polling every 20 ms."""
    with connect() as conn, conn.cursor() as cur:
        while not done.is_set():
            cur.execute(query(*columns))
            seen.extend(cur.fetchall())
            time.sleep(0.02)
