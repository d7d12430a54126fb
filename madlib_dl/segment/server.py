"""Serving a driver's requests in the backend that holds a segment: a background worker, or the driver's
own backend when it runs in process. Each request type is one small handler; a hop runs the
fit_step_multiple_model (or internal_keras_evaluate) aggregate over the segment's buffers through SPI,
with the hop's request staged in GD so that the aggregate takes data and keys only.
"""

from __future__ import annotations

from madlib_dl import custom_functions, settings
from madlib_dl.errors import InvalidArgument, ObjectMissing
from madlib_dl.segment import recording, requests, runtime
from madlib_dl.segment.requests import Reply, TableRef

LOCK_TIMEOUT = "5s"  # CountRows: a lock the caller holds on the table makes the check fail, not hang


def handle(db, gd: dict, request) -> Reply:
    handler = HANDLERS.get(type(request))
    if handler is None:
        raise InvalidArgument(f"a segment backend cannot serve {type(request).__name__}")
    return handler(db, gd, request)


def _start(db, gd, request: requests.Start) -> Reply:
    if request.worker_session:
        # A worker runs only the driver's statements, none of which gains from JIT: with JIT off its
        # TensorFlow need not share the process with PostgreSQL's LLVM (tf_setup), ~50 MiB less.
        db.execute("SELECT set_config('jit', 'off', false)")
    threads = request.threads
    if threads is None and request.host_share:  # a Citus node's session: the node's CPUs, shared
        threads = max(1, settings.cpu_count() // request.host_share)
    pid = runtime.worker_init(gd, threads, request.cuda_visible_devices, request.memory_limit_mib,
                              request.worker_session)
    return Reply({"pid": pid})


def _begin_run(db, gd, request: requests.BeginRun) -> Reply:
    _register(db, runtime.begin_run(gd, request), request.models)
    return Reply({})


def _register(db, store, models: dict) -> None:
    """What models (mst_key -> constants) need checked in this backend, as the caller: callbacks (files
    written on the server) take a trusted role, and the custom functions their compile_params name come
    from their object table only while that table is trusted and the caller's to read, checked (once per
    table) before anything is unpickled."""
    new = {key: c for key, c in models.items() if c is not None and key not in store.registered}
    by_table: dict = {}
    for key, constants in new.items():
        custom_functions.require_callbacks_allowed(db, constants.fit_params, f"mst_key {key}: fit_params")
        if constants.object_table is not None:
            by_table.setdefault(constants.object_table, {})[key] = constants.compile_params
    for table, compile_params in by_table.items():
        store.custom.update(custom_functions.for_models(db, table, compile_params))
    store.registered.update(new)


def _initial_weights(db, gd, request: requests.InitialWeights) -> Reply:
    return Reply({}, weights=runtime.initial_model_weights(request.model_arch, request.seed))


def _release(db, gd, request: requests.Release) -> Reply:
    return Reply({"released": runtime.release(gd, request.run_id)})


def _count_rows(db, gd, request: requests.CountRows) -> Reply:
    shape = db.quote_ident(request.table.independent + "_shape")
    previous = db.execute("SELECT current_setting('lock_timeout') AS t")[0]["t"]
    db.execute("SELECT set_config('lock_timeout', $1, true)", [LOCK_TIMEOUT], ["text"])
    try:
        rows = db.execute(
            "SELECT string_agg(segment || ':' || buffers || ':' || images, ',' ORDER BY segment) AS counts FROM ("
            f"SELECT {request.table.segment_sql} AS segment, count(*) AS buffers, sum({shape}[1]) AS images "
            f"FROM {_table_sql(db, request.table)} GROUP BY 1) t")
    finally:
        db.execute("SELECT set_config('lock_timeout', $1, true)", [previous], ["text"])
    return Reply({"counts": rows[0]["counts"]})


def _fit(db, gd, request: requests.Fit) -> Reply:
    _register(db, runtime.begun(gd, request.run_id), {request.mst_key: request.constants})
    row = _aggregate(db, gd, "fit_step_multiple_model", request)
    state = runtime.take_output(gd)
    return Reply(row, weights=state.weights, optimizer_state=state.optimizer_state)


def _evaluate(db, gd, request: requests.Evaluate) -> Reply:
    _register(db, runtime.begun(gd, request.run_id), {request.mst_key: request.constants})
    return Reply(_aggregate(db, gd, "internal_keras_evaluate", request))


def _record(db, gd, request: requests.Record) -> Reply:
    recording.write(db, gd, request)
    return Reply({})


def _checkpoint_model(db, gd, request: requests.CheckpointModel) -> Reply:
    recording.write_checkpoint_model(db, request)
    return Reply({})


def _checkpoint_done(db, gd, request: requests.CheckpointDone) -> Reply:
    recording.finish_checkpoint(db, request)
    return Reply({})


HANDLERS = {requests.Start: _start, requests.BeginRun: _begin_run, requests.InitialWeights: _initial_weights,
            requests.Release: _release, requests.CountRows: _count_rows, requests.Fit: _fit,
            requests.Evaluate: _evaluate, requests.Record: _record, requests.CheckpointModel: _checkpoint_model,
            requests.CheckpointDone: _checkpoint_done}


def _aggregate(db, gd, aggregate: str, call) -> dict:
    """One aggregate over the segment's buffers in buffer order, or over one row of NULL data when the
    examples are cached here already."""
    store = runtime.begun(gd, call.run_id)
    table = store.tables.get(call.table)
    if table is None:
        raise InvalidArgument(f"table {call.table!r}: not a table of run {call.run_id}")
    call_id = runtime.stage(gd, call)
    if call.read_table and table.distributed:
        return _pulled(db, gd, aggregate, table, call, call_id)
    q = db.quote_ident
    fn = f"{q(store.schema)}.{q(aggregate)}"
    if call.read_table:
        data = ", ".join(table.data_sql(q))
        inner = (f"SELECT {fn}({data}, $1, $2 ORDER BY buffer_id) AS r FROM {_table_sql(db, table)} "
                 f"WHERE {table.segment_sql} = $3")
        args, types = [call.run_id, call_id, call.segment], ["text", "bigint", "integer"]
    else:
        inner = f"SELECT {fn}(NULL::bytea, NULL::bytea, NULL::integer[], NULL::integer[], $1, $2) AS r"
        args, types = [call.run_id, call_id], ["text", "bigint"]
    rows = db.execute(f"SELECT (s.r).* FROM ({inner} OFFSET 0) s", args, types)
    if not rows or rows[0].get("images") is None:
        raise InvalidArgument(f"segment {call.segment}: {table.name} has no buffers there")
    return rows[0]


# The aggregates' steps, for a segment whose rows are pulled (see _pulled)
_STEPS = {"fit_step_multiple_model": (runtime.fit_transition, runtime.fit_final),
          "internal_keras_evaluate": (runtime.evaluate_transition, runtime.evaluate_final)}


def _pulled(db, gd, aggregate: str, table: TableRef, call, call_id: int) -> dict:
    """The aggregate over a Citus distributed table's segment, its steps run here on rows read through
    this server: Citus would send the aggregate itself to the worker node holding the shard, whose
    backends have none of this run's state. (The segment's data crosses to this server on every read.)"""
    transition, final = _STEPS[aggregate]
    q = db.quote_ident
    y, x, ys, xs = table.data_sql(q)
    columns = f"{y} AS y, {x} AS x, {ys} AS ys, {xs} AS xs"
    state = None
    for rows in db.batches(f"SELECT {columns} FROM {_table_sql(db, table)} WHERE {table.segment_sql} = $1 "
                           "ORDER BY buffer_id",
                           [call.segment], ["integer"], size=1):
        for r in rows:
            state = transition(gd, state, r["y"], r["x"], r["ys"], r["xs"], call.run_id, call_id)
    row = final(gd, state) if state is not None else None
    if row is None or row.get("images") is None:
        raise InvalidArgument(f"segment {call.segment}: {table.name} has no buffers there")
    return row


def _table_sql(db, table: TableRef) -> str:
    """The table's qualified name, once it is checked to be the relation the caller resolved: a table
    dropped and re-created (or renamed away) since would be another role's to choose."""
    name = f"{db.quote_ident(table.schema)}.{db.quote_ident(table.name)}"
    found = db.execute("SELECT pg_catalog.to_regclass($1)::pg_catalog.oid AS oid", [name], ["text"])[0]["oid"]
    if found is None or int(found) != table.oid:
        raise ObjectMissing(f"table {table.schema}.{table.name}: not the table this run was started on (this "
                            "session sees it dropped, renamed or replaced, or not yet committed)")
    return name
