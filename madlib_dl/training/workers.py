"""Choosing and preparing the executor of a run: worker sessions when they can connect and see the same
data as the caller, otherwise this session (with a NOTICE saying why and how to enable workers)."""

from __future__ import annotations

from dataclasses import replace

from madlib_dl import settings
from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import interrupts
from madlib_dl.packed_tables import PackedTable
from madlib_dl.training import executors, segment_calls
from madlib_dl.training.executors import InProcess, WorkerPool

ENABLE_HINT = ("to use worker sessions, let this role connect from the database server to itself (a 'local' "
               "trust or peer line in pg_hba.conf, or a password in the server OS user's ~/.pgpass) or SET "
               "madlib_dl.worker_conninfo = 'host=... port=... password=...'")


UNCOMMITTED_HINT = "commit the transaction that created or changed it to train with worker sessions in parallel"


class WorkersUnusable(Exception):
    def __init__(self, reason: str, hint: str = ENABLE_HINT):
        super().__init__(reason)
        self.hint = hint


def conninfo(db) -> dict:
    """Connection keywords for worker sessions: this database, as the session's login role, over the
    server's first Unix socket; madlib_dl.worker_conninfo adds or overrides keywords."""
    row = db.execute("SELECT current_database() AS dbname, session_user AS login, current_setting('port') AS port, "
                     "current_setting('unix_socket_directories') AS sockets")[0]
    sockets = [s.strip() for s in (row["sockets"] or "").split(",") if s.strip()]
    info = {"dbname": row["dbname"], "user": row["login"], "port": row["port"],
            "host": sockets[0] if sockets else "localhost"}
    extra = settings.read_text(db, settings.WORKER_CONNINFO)
    if extra:
        from psycopg2.extensions import parse_dsn

        try:
            info.update(parse_dsn(extra))
        except Exception as error:
            raise InvalidArgument(f"setting {settings.WORKER_CONNINFO}: not a libpq connection string "
                                  f"({str(error).strip()})") from None
    return info


def threads_per_worker(db, workers: int) -> int:
    configured = settings.read(db, settings.WORKER_THREADS)
    return configured or max(1, settings.cpu_count() // workers)


def open_executor(db, run_id: str, schema: str, tables: list[PackedTable], devices, name: str,
                  busy_workers: int | None = None):
    """An executor with every worker set up (``devices``: one placement.WorkerDevice per segment).
    ``busy_workers``: how many workers train at once (fewer than the segments when there are fewer
    models, e.g. madlib_keras_fit's one): the CPUs are shared among those, not among all workers."""
    mode = settings.read_choice(db, settings.EXECUTOR)
    segments = sorted(tables[0].segments)
    if mode != "in_process":
        try:
            return _worker_pool(db, run_id, schema, tables, devices, name, busy_workers or len(segments))
        except WorkersUnusable as error:
            if mode == "workers":
                raise InvalidArgument(f"setting madlib_dl.executor is 'workers' but {error}; {error.hint}") from None
            db.notice(f"{name}: runs in this session, one segment at a time, because {error}; {error.hint} "
                      "(SET madlib_dl.executor = 'in_process' skips this attempt)")
    executor = InProcess(db, segments)
    # This session keeps the TensorFlow set-up it has (threads, devices): only the run's store is made.
    device = devices[0] if devices[0].uses_gpu else replace(devices[0], cuda_visible_devices=None)
    executor.pids = run_on_each(executor, [segment_calls.init_call(db, schema, segments[0], run_id, None, device)])
    return executor


def _worker_pool(db, run_id, schema, tables, devices, name, busy_workers: int) -> WorkerPool:
    import psycopg2

    segments = sorted(tables[0].segments)
    check = interrupts.server_check() or (lambda: None)
    try:
        pool = WorkerPool.connect(conninfo(db), segments, check, lambda s: f"{name} worker (segment {s})"[:63])
    except psycopg2.Error as error:
        raise WorkersUnusable(f"worker sessions cannot connect ({_first_line(error)})") from None
    try:
        _prepare(db, pool, run_id, schema, tables, devices, busy_workers)
    except BaseException:
        close(db, pool)
        raise
    return pool


def _prepare(db, pool: WorkerPool, run_id, schema, tables, devices, busy_workers: int) -> None:
    segments = pool.segments
    role = db.execute("SELECT current_user AS role, session_user AS login")[0]
    if role["role"] != role["login"]:  # act with the caller's current privileges, not the login role's
        run_on_each(pool, [segment_calls.SegmentCall(s, "SELECT set_config('role', $1, false) AS r", (role["role"],),
                                                     ("text",)) for s in segments])
    _check_same_data(db, pool, tables)
    threads = threads_per_worker(db, busy_workers)
    pool.pids = run_on_each(pool, [segment_calls.init_call(db, schema, s, run_id, threads, devices[i], True)
                                   for i, s in enumerate(segments)])


def _check_same_data(db, pool: WorkerPool, tables: list[PackedTable]) -> None:
    """Workers see only committed data: a table created or changed in the caller's open transaction
    looks different (or absent) to them. Compare what the caller counted with what a worker sees."""
    segment = pool.segments[0]
    for table in tables:
        # One implicit transaction (a multi-statement query): the lock timeout applies to this read only,
        # so a lock the caller holds on the table makes the check fail instead of waiting forever.
        call = segment_calls.SegmentCall(segment, "SET LOCAL lock_timeout = '5s'; " + _stats_sql(db, table), (), ())
        try:
            seen = [c.row for c in run_calls(pool, [call])]
        except executors.SegmentFailed as error:
            if error.sqlstate == "42P01":  # undefined_table
                raise WorkersUnusable(f"worker sessions cannot see {table.text}: it is not yet committed",
                                      UNCOMMITTED_HINT) from None
            raise WorkersUnusable(f"worker sessions cannot read {table.text} ({error})",
                                  "check that a new session of this role can read it") from None
        counts = seen[0].get("counts") if seen else None
        expected = ",".join(f"{k}:{s.buffers}:{s.images}" for k, s in sorted(table.segments.items()))
        if counts != expected:
            raise WorkersUnusable(f"worker sessions see other data in {table.text} than this transaction: its "
                                  "changes are not yet committed", UNCOMMITTED_HINT)


def _stats_sql(db, table: PackedTable) -> str:
    shape = db.quote_ident(table.independent + "_shape")
    return (f"SELECT string_agg(segment || ':' || buffers || ':' || images, ',' ORDER BY segment) AS counts FROM ("
            f"SELECT __dist_key__ AS segment, count(*) AS buffers, sum({shape}[1]) AS images "
            f"FROM {table.table.sql(db)} GROUP BY 1) t")


def run_calls(executor, calls) -> list[executors.Completed]:
    """Run calls (at most one per worker at a time, in order per worker) and return all completions."""
    queues: dict[int, list] = {}
    for call in calls:
        queues.setdefault(call.segment, []).append(call)
    done = []
    for segment, queue in queues.items():
        executor.submit(queue.pop(0))
    while executor.busy():
        for completed in executor.wait():
            done.append(completed)
            queue = queues[completed.call.segment]
            if queue:
                executor.submit(queue.pop(0))
    return done


def run_on_each(executor, calls) -> dict[int, object]:
    """Run calls and return the first column of each result, by segment."""
    return {c.call.segment: next(iter(c.row.values()), None) for c in run_calls(executor, calls)}


def close(db, executor, schema: str | None = None, run_id: str | None = None) -> None:
    """End the run's sessions (workers) or drop its cache and models from this session (in process)."""
    if isinstance(executor, WorkerPool):
        pids = list(executor.pids.values())
        executor.close()
        executors.wait_for_exit(db, pids)
        return
    executor.close()
    if schema is not None:
        call = segment_calls.release_call(db, schema, 0, run_id)
        db.execute(call.sql, list(call.args), list(call.types))


def _first_line(error) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
