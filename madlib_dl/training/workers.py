"""Choosing and preparing the executor of a run: background workers when they can start and see the
same data as the caller, otherwise this session (with a NOTICE saying why)."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Callable

from madlib_dl import native, settings
from madlib_dl.errors import InvalidArgument, MadlibDLError
from madlib_dl.packed_tables import PackedTable
from madlib_dl.segment import requests
from madlib_dl.training import background, executors, parallelism, segment_calls
from madlib_dl.training.background import BackgroundWorkers, WorkerConfig
from madlib_dl.training.citus_nodes import CitusNodes
from madlib_dl.training.citus_nodes import forget_unless as forget_nodes
from madlib_dl.training.executors import InProcess

UNCOMMITTED_HINT = "commit the transaction that created or changed it to train with background workers in parallel"
NODES_UNCOMMITTED_HINT = "commit the transaction that created or changed it to train on the Citus worker nodes"
TEMPORARY_HINT = "pack into a permanent table to train with background workers in parallel"
SLOTS_HINT = ("background workers share the server's max_worker_processes slots with parallel queries and other "
              "extensions (a DBA can raise it: server restart), and one role has at most "
              "madlib_dl.max_workers_per_role at once across its sessions (a DBA's cap)")


class WorkersUnusable(Exception):
    def __init__(self, reason: str, hint: str):
        super().__init__(reason)
        self.hint = hint


class ClientGone(MadlibDLError):
    sqlstate = "08006"


def choose_parallelism(db, segments: int, devices, models_at_once: int | None,
                       model_archs=()) -> parallelism.Parallelism:
    """How many workers the run uses and how many threads each (training.parallelism)."""
    return parallelism.choose(parallelism.RunShape(
        settings.cpu_count(), segments, models_at_once or segments,
        parallelism.largest_params(model_archs) if model_archs else None,
        gpus=any(d.uses_gpu for d in devices), forced_workers=settings.read(db, settings.TRAINING_WORKERS),
        forced_threads=settings.read(db, settings.WORKER_THREADS)))


@contextlib.contextmanager
def executor_for(db, run_id: str, schema: str, tables: dict[str, PackedTable], models: dict, devices, name: str,
                 models_at_once: int | None = None, model_archs=(), custom: bool = False, recorder=None):
    """The executor of a run, with the run begun on every worker (``name``: the SQL function its NOTICEs
    begin with; ``tables``: the run's packed tables by the name its calls use, 'train' first;
    ``models``: mst_key -> its constants; ``devices``: one placement.WorkerDevice per segment;
    ``models_at_once``: how many models can train at once (madlib_keras_fit: one; None: one per segment)
    and ``model_archs``, the run's architectures: what training.parallelism chooses the workers by;
    ``custom``: models begun later use custom functions too; ``recorder``: the run's progress recorder
    (training.progress), begun once the run's background workers have their slots or the Citus nodes
    are about to start, and sending its snapshots while the driver waits for them; in process, the
    driver begins it).
    On success its workers are kept for the session's next call; on failure they are ended."""
    mode = settings.read_choice(db, settings.EXECUTOR)
    custom = custom or any(getattr(m, "object_table", None) is not None for m in models.values())
    if next(iter(tables.values())).distributed and mode != "in_process" and custom:
        # A node has no copy of the object table, and must not take one on this server's word.
        db.notice(f"{name}: custom functions run on this server, not on the Citus worker nodes: their object table "
                  "is here; the segments are read through Citus")
        executor = open_executor(db, schema, list(tables.values()), devices, name, models_at_once, model_archs, mode,
                                 recorder)
    elif next(iter(tables.values())).distributed and mode != "in_process":
        executor = _on_citus_nodes(db, schema, tables, devices, name, mode, recorder)
    else:
        executor = open_executor(db, schema, list(tables.values()), devices, name, models_at_once, model_archs, mode,
                                 recorder)
    try:
        run_on_each(executor, segment_calls.begin_calls(executor.segments, run_id, schema, tables, models))
        yield executor
    except BaseException:
        _end(db, executor, run_id, succeeded=False)
        raise
    _end(db, executor, run_id, succeeded=True)


def open_executor(db, schema: str, tables: list[PackedTable], devices, name: str, models_at_once: int | None,
                  model_archs, mode: str, recorder=None):
    """A run's executor on this server (``mode``: madlib_dl.executor)."""
    segments = sorted(tables[0].segments)
    background.forget_unless(native.caller())  # idle workers of another identity of this session end
    if mode != "in_process":
        try:
            chosen = choose_parallelism(db, len(segments), devices, models_at_once, model_archs)
            return _background(db, schema, tables, devices, name, chosen, mode, recorder)
        except WorkersUnusable as error:
            _fall_back(db, name, mode, error)
    return _in_process(db, segments, devices)  # its recorder begins once the run is sure to start (driver)


def _fall_back(db, name: str, mode: str, error: WorkersUnusable) -> None:
    """Parallel execution is not possible: an error under madlib_dl.executor = 'workers', else a NOTICE."""
    if mode == "workers":
        raise InvalidArgument(f"setting madlib_dl.executor is 'workers' but {error}; {error.hint}") from None
    db.notice(f"{name}: runs in this session, one segment at a time, because {error}; {error.hint} "
              "(SET madlib_dl.executor = 'in_process' skips this attempt)")


def _in_process(db, segments: list[int], devices) -> InProcess:
    executor = InProcess(db, segments)
    # This session keeps the TensorFlow set-up it has (threads, devices): only the GPU choice is made.
    device = devices[0] if devices[0].uses_gpu else replace(devices[0], cuda_visible_devices=None)
    start = segment_calls.SegmentCall(segments[0], requests.Start(None, device.cuda_visible_devices,
                                                                  device.memory_limit_mib, worker_session=False))
    executor.pids = run_on_each(executor, [start])
    return executor


def _on_citus_nodes(db, schema: str, tables: dict[str, PackedTable], devices, name: str, mode: str, recorder=None):
    """A distributed packed table's run: a session per segment on the worker node holding it; in this
    session (reading the shards through Citus) when the nodes cannot see what this transaction sees."""
    first = next(iter(tables.values()))
    refusal = native.launch_refusal()  # the node sessions act as the caller, as workers would
    if refusal is not None:
        raise InvalidArgument(f"{name}: {first.text} is on Citus worker nodes, whose sessions would act as the "
                              f"caller, which is not possible here: {refusal}")
    forget_nodes(native.caller())
    if recorder is not None:
        recorder.begin()
    try:
        executor = _open_nodes(db, schema, tables, recorder)
    except WorkersUnusable as error:
        _fall_back(db, name, mode, error)
        return _in_process(db, sorted(first.segments), devices)
    nodes = ", ".join(f"{host}:{port}" for host, port in executor.nodes)
    count = executor.worker_count
    if recorder is not None:
        recorder.phase(f"starting {count} session{'s' if count != 1 else ''} on the Citus worker nodes")
    db.notice(f"{name}: {len(executor.segments)} segments on the Citus worker nodes {nodes}, "
              f"{'a session each' if count == len(executor.segments) else f'in {count} node sessions'}")
    try:
        threads = settings.read(db, settings.WORKER_THREADS) or None  # None: each node's CPUs, shared
        run_on_each(executor, [segment_calls.SegmentCall(s, requests.Start(threads, None, None, worker_session=True))
                               for s in executor.segments])
    except BaseException:
        executor.close()
        raise
    return executor


def _open_nodes(db, schema: str, tables: dict[str, PackedTable], recorder=None) -> CitusNodes:
    """The node connections, once each segment's node sees the data this transaction sees (the nodes'
    sessions see only committed data)."""
    idle = settings.read(db, settings.WORKER_IDLE_TIMEOUT)
    try:
        executor = CitusNodes(db, schema, tables, driver_check(db, schema, recorder), idle)
    except executors.SegmentFailed as error:
        if error.sqlstate == "42P01":  # a shard this transaction created
            table = next(iter(tables.values()))
            raise WorkersUnusable(f"the Citus worker nodes cannot see {table.text}: it is not yet committed",
                                  NODES_UNCOMMITTED_HINT) from None
        raise
    def same_data() -> None:
        for kind, table in tables.items():
            seen = {c.call.segment: c.row.get("counts") for c in run_calls(executor, executor.count_calls(kind))}
            for key, counts in sorted(table.segments.items()):
                if seen.get(key) != f"{key}:{counts.buffers}:{counts.images}":
                    raise WorkersUnusable(f"the Citus worker nodes see other data in {table.text} than this "
                                          "transaction: its changes are not yet committed", NODES_UNCOMMITTED_HINT)

    return _checked(executor, same_data)


def _checked(executor, check: Callable[[], None]):
    """The executor once ``check`` passes; when it finds the executor unusable for this run, its healthy
    workers or sessions are kept for the session's next call, and on any other error they end."""
    try:
        check()
    except WorkersUnusable:
        executor.finish(None)
        raise
    except BaseException:
        executor.close()
        raise
    return executor


def _background(db, schema, tables, devices, name, chosen: parallelism.Parallelism, mode: str,
                recorder=None) -> BackgroundWorkers:
    temporary = [t for t in tables if t.table.temporary]
    if temporary:
        raise WorkersUnusable(f"{temporary[0].text} is a temporary table, which no other session can read",
                              TEMPORARY_HINT)
    segments = sorted(tables[0].segments)
    identity = _identity(db)
    configs = [WorkerConfig(identity, chosen.threads, devices[i].cuda_visible_devices, devices[i].memory_limit_mib)
               for i in range(chosen.workers)]
    db.notice(f"{name}: {chosen.text()} for {len(segments)} segment{'s' if len(segments) != 1 else ''}")
    idle = settings.read(db, settings.WORKER_IDLE_TIMEOUT)
    check = driver_check(db, schema, recorder)
    if recorder is not None:
        recorder.phase(f"starting {len(configs)} background worker{'s' if len(configs) != 1 else ''}")
    workers = background.acquire(db, schema, configs, idle, check, lambda text: db.notice(f"{name}: {text}"),
                                 None if recorder is None else recorder.begin)
    if recorder is not None:
        recorder.begin()  # idle workers of this session took no new slot
    if len(workers) < len(configs):
        limits = db.execute("SELECT pg_catalog.current_setting('max_worker_processes') AS slots, "
                            "pg_catalog.current_setting('madlib_dl.max_workers_per_role', true) AS per_role")[0]
        why = (f"max_worker_processes is {limits['slots']}, madlib_dl.max_workers_per_role is "
               f"{limits['per_role'] or 6}")  # 6: src/madlib_dl.c's default
        if not workers or mode == "workers":
            background.end(workers, background.EXIT_WAIT_SECONDS)
            raise WorkersUnusable(f"only {len(workers)} of the {len(configs)} background workers it needs could start "
                                  f"({why})", SLOTS_HINT)
        db.notice(f"{name}: {len(workers)} background workers serve {len(segments)} segments, because only "
                  f"{len(workers)} could start ({why}); {SLOTS_HINT}")
    executor = BackgroundWorkers(workers, segments, check, idle, chosen.threads)
    return _checked(executor, lambda: _check_same_data(executor, tables))


def _identity(db) -> tuple:
    """Who background workers would act as (session user, current user, security context): why they
    cannot, or the identity a pooled worker must have been started for."""
    refusal = native.launch_refusal()
    if refusal is not None:
        raise WorkersUnusable(refusal, native.REFUSAL_HINT)
    identity = native.caller()
    roles = db.execute("SELECT r.rolname AS name, r.rolcanlogin AS login FROM pg_catalog.pg_roles r "
                       "WHERE r.oid OPERATOR(pg_catalog.=) ANY ($1)", [list(identity[:2])], ["oid[]"])
    if roles and not any(r["login"] for r in roles):
        names = " nor ".join(sorted({r["name"] for r in roles}))
        raise WorkersUnusable(f"no background worker can act as {names}: a worker logs in as the current role, "
                              "or as the session user when the current role may not", "a role with LOGIN can")
    return identity


def driver_check(db, schema: str, recorder=None):
    """The driver's check while it waits on workers: an SPI call (a cancel or statement_timeout takes
    effect) that also asks whether the client is still connected; and sends the progress ``recorder``'s
    waiting snapshot, if any."""
    sql = f"SELECT {db.quote_ident(schema)}.internal_client_connected() AS connected"

    def check() -> None:
        if not db.execute(sql)[0]["connected"]:
            raise ClientGone("the client connection was lost; the run is stopped")
        if recorder is not None:
            recorder.tick()

    return check


def _check_same_data(executor: BackgroundWorkers, tables: list[PackedTable]) -> None:
    """Workers see only committed data: a table created or changed in the caller's open transaction
    looks different (or absent) to them. Compare what the caller counted with what a worker sees."""
    segment = executor.segments[0]
    for table in tables:
        try:
            seen = [c.row for c in run_calls(executor, [segment_calls.count_rows_call(segment, table)])]
        except executors.SegmentFailed as error:
            if error.sqlstate == "42P01":  # undefined_table
                raise WorkersUnusable(f"background workers cannot see {table.text}: it is not yet committed",
                                      UNCOMMITTED_HINT) from None
            if error.sqlstate == "42501":  # insufficient_privilege: the caller has it too
                raise
            raise WorkersUnusable(f"background workers cannot read {table.text} ({error})",
                                  "check that a new session of this role can read it") from None
        counts = seen[0].get("counts") if seen else None
        expected = ",".join(f"{k}:{s.buffers}:{s.images}" for k, s in sorted(table.segments.items()))
        if counts != expected:
            raise WorkersUnusable(f"background workers see other data in {table.text} than this transaction: its "
                                  "changes are not yet committed", UNCOMMITTED_HINT)


def run_calls(executor, calls, idle: Callable[[], None] | None = None,
              each: Callable[[executors.Completed], None] | None = None) -> list[executors.Completed]:
    """Run calls (at most one per worker at a time, in order per worker) and return all completions;
    ``idle``: work of the driver's own, done before each wait for the workers; ``each``: called with
    every completion as it comes."""
    queues: dict[int, list] = {}
    for call in calls:
        queues.setdefault(call.segment, []).append(call)
    done = []
    for segment, queue in queues.items():
        executor.submit(queue.pop(0))
    while executor.busy():
        if idle is not None:
            idle()
        for completed in executor.wait():
            done.append(completed)
            if each is not None:
                each(completed)
            queue = queues[completed.call.segment]
            if queue:
                executor.submit(queue.pop(0))
    return done


def run_on_each(executor, calls) -> dict[int, object]:
    """Run calls and return the first column of each result, by segment."""
    return {c.call.segment: next(iter(c.row.values()), None) for c in run_calls(executor, calls)}


def _end(db, executor, run_id: str, succeeded: bool) -> None:
    """Workers: kept for the next call after a success, ended after a failure. In process: the run's
    data and models leave this session either way."""
    if isinstance(executor, (BackgroundWorkers, CitusNodes)):
        executor.finish(run_id) if succeeded else executor.close()
        return
    executor.close()
    run_on_each(executor, [segment_calls.release_call(executor.segments[0], run_id)])
