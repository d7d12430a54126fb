"""How segment calls run: a pool of worker sessions (one per segment, in parallel), or in this session.

Both take the same statements (segment_calls); only the transport differs.

* WorkerPool: psycopg2 connections opened by the driver back to the same database, as the calling role,
  in asynchronous mode: the driver sends a call to each free worker, then waits on all sockets at once,
  making a trivial SPI call every ``POLL_SECONDS`` so a cancel of the caller's statement is noticed.
  close() cancels what runs, closes the sessions and waits until their backends are gone.
* InProcess: the driver's own backend runs each call in turn (workers cannot connect, or the user asked).
"""

from __future__ import annotations

import collections
import re
import select
import time
from dataclasses import dataclass

from madlib_dl.errors import MadlibDLError
from madlib_dl.training.segment_calls import SegmentCall

POLL_SECONDS = 0.1
EXIT_WAIT_SECONDS = 10.0
# Worker sessions run only the driver's statements, none of which gains from JIT; with JIT off for the
# whole session its TensorFlow need not share the process with PostgreSQL's LLVM (tf_setup), which
# saves ~50 MiB per worker.
WORKER_OPTIONS = "-c jit=off"


class SegmentFailed(MadlibDLError):
    """A call failed in a worker session; carries that session's SQLSTATE."""

    def __init__(self, message: str, sqlstate: str | None):
        super().__init__(message)
        self.sqlstate = sqlstate or "XX000"


@dataclass
class Completed:
    call: SegmentCall
    row: dict
    submitted: float  # time.time() when sent
    received: float   # time.time() when its result arrived


def to_pyformat(sql: str, types) -> str:
    """``$n`` parameters as psycopg2's ``%(pn)s::type`` (psycopg2 sends values inline, so each is cast)."""
    escaped = sql.replace("%", "%%")
    return re.sub(r"\$(\d+)", lambda m: f"%(p{m.group(1)})s::{types[int(m.group(1)) - 1]}", escaped)


class InProcess:
    name = "in_process"

    def __init__(self, db, segments):
        self.db = db
        self.segments = list(segments)
        self._queue: collections.deque = collections.deque()
        self.pids: dict[int, int] = {}

    def submit(self, call: SegmentCall) -> None:
        self._queue.append((call, time.time()))

    def wait(self) -> list[Completed]:
        call, _ = self._queue.popleft()
        started = time.time()  # calls run one at a time: time spent queued is not this call's overhead
        rows = self.db.execute(call.sql, list(call.args), list(call.types))
        return [Completed(call, rows[0] if rows else {}, started, time.time())]

    def busy(self) -> bool:
        return bool(self._queue)

    def set_progress(self, text: str) -> None:
        pass  # the driver's own application_name already says it

    def close(self) -> None:
        self._queue.clear()


class WorkerPool:
    name = "workers"

    def __init__(self, connections: dict, interrupt_check):
        self._connections = connections  # segment -> psycopg2 async connection
        self.segments = list(connections)
        self._check = interrupt_check
        self._busy: dict[int, tuple] = {}  # segment -> (call, cursor, submitted)
        self.pids = {segment: conn.get_backend_pid() for segment, conn in connections.items()}
        self._progress: dict[int, str] = {}
        self._states: dict[int, int] = {}  # segment -> last poll() state of a busy connection

    @classmethod
    def connect(cls, conninfo: dict, segments, interrupt_check, application_name) -> "WorkerPool":
        import psycopg2

        connections = {}
        try:
            server_options = " ".join(o for o in (conninfo.get("options"), WORKER_OPTIONS) if o)
            for segment in segments:
                keywords = dict(conninfo, application_name=application_name(segment), options=server_options)
                connections[segment] = psycopg2.connect(async_=True, **keywords)
            _wait_ready(list(connections.values()), interrupt_check)
        except BaseException:
            for conn in connections.values():
                conn.close()
            raise
        return cls(connections, interrupt_check)

    def submit(self, call: SegmentCall) -> None:
        if call.segment in self._busy:
            raise RuntimeError(f"worker of segment {call.segment} is busy")
        conn = self._connections[call.segment]
        cursor = conn.cursor()
        sql = to_pyformat(call.sql, call.types)
        prefix, params = self._progress.pop(call.segment, None), {f"p{i + 1}": v for i, v in enumerate(call.args)}
        if prefix is not None:
            sql = "SELECT set_config('application_name', %(app)s, false); " + sql
            params["app"] = prefix
        cursor.execute(sql, params)
        self._busy[call.segment] = (call, cursor, time.time())

    def busy(self) -> bool:
        return bool(self._busy)

    def wait(self) -> list[Completed]:
        while True:
            done = self._collect()
            if done:
                return done
            readers, writers = self._waiting()
            select.select(readers, writers, [], POLL_SECONDS)
            self._check()

    def _collect(self) -> list[Completed]:
        import psycopg2
        import psycopg2.extensions as ext

        done = []
        for segment, (call, cursor, submitted) in list(self._busy.items()):
            try:
                state = self._connections[segment].poll()
            except psycopg2.Error as error:
                del self._busy[segment]
                diag = getattr(error, "diag", None)
                message = (diag.message_primary if diag is not None and diag.message_primary else str(error)).strip()
                message = message.removeprefix("madlib_dl: ")
                raise SegmentFailed(f"worker of segment {segment}: {message}", error.pgcode) from None
            self._states[segment] = state
            if state == ext.POLL_OK:
                del self._busy[segment]
                names = [c.name for c in cursor.description] if cursor.description else []
                row = cursor.fetchone() if names else None
                done.append(Completed(call, dict(zip(names, row)) if row else {}, submitted, time.time()))
        return done

    def _waiting(self) -> tuple[list, list]:
        import psycopg2.extensions as ext

        readers, writers = [], []
        for segment in self._busy:
            wants_write = self._states.get(segment) == ext.POLL_WRITE
            (writers if wants_write else readers).append(self._connections[segment].fileno())
        return readers, writers

    def set_progress(self, text: str) -> None:
        """Shown as the workers' application_name from their next call on."""
        for segment in self.segments:
            self._progress[segment] = f"{text} (segment {segment})"[:63]

    def close(self) -> None:
        """Cancel running calls, close every session, and wait until their backends have exited."""
        for segment in list(self._busy):
            try:
                self._connections[segment].cancel()
            except Exception:  # the session may be gone already; closing below is what matters
                pass
        self._busy.clear()
        for conn in self._connections.values():
            conn.close()


def _wait_ready(connections, interrupt_check) -> None:
    import psycopg2.extensions as ext

    pending = list(connections)
    while pending:
        still = []
        for conn in pending:
            state = conn.poll()
            if state != ext.POLL_OK:
                still.append((conn, state))
        if not still:
            return
        readers = [c.fileno() for c, s in still if s == ext.POLL_READ]
        writers = [c.fileno() for c, s in still if s == ext.POLL_WRITE]
        select.select(readers, writers, [], POLL_SECONDS)
        interrupt_check()
        pending = [c for c, _ in still]


def wait_for_exit(db, pids, timeout: float = EXIT_WAIT_SECONDS) -> None:
    """Block until the given backends are gone; terminate them after ``timeout`` (a worker stuck in a
    long TensorFlow op sees its closed connection only at its next interrupt check)."""
    pids = [int(p) for p in pids]
    if not pids:
        return
    deadline = time.monotonic() + timeout
    terminated = False
    while True:
        db.execute("SELECT pg_stat_clear_snapshot()")  # pg_stat_activity is otherwise frozen per transaction
        rows = db.execute("SELECT count(*) AS alive FROM pg_stat_activity WHERE pid = ANY($1)", [pids], ["integer[]"])
        if not rows[0]["alive"]:
            return
        if time.monotonic() > deadline:
            if terminated:
                return
            db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY($1)", [pids],
                       ["integer[]"])
            terminated, deadline = True, time.monotonic() + timeout
        time.sleep(0.05)
