"""The recorder's side of live progress: a run's snapshot (requests.Record) written into the progress
tables (sql/madlib_dl.sql.in) in this backend's own transaction, which commits when the request is
served, so every session may see it while the run goes on; and its checkpoints (training.checkpoints).

Every row is the run's role's: the recorder acts as the caller's current user (src/madlib_dl.c), and
writes only through the internal_own_* views, which hold the current user's rows alone and give a new
row that role. Each request names the role its driver computed; a recorder that is not that role
writes nothing (the driver then says the run has no more progress or checkpoints).
"""

from __future__ import annotations

from madlib_dl.errors import PermissionDenied
from madlib_dl.segment import requests

RUN_COLUMNS = ("pid", "backend_start", "function", "output_table", "started", "iteration", "iterations",
               "hops_done", "hops_total", "phase", "eta_seconds", "batches_done", "batches_total",
               "examples_per_second")
RUN_TYPES = ("integer", "timestamptz", "text", "text", "timestamptz", "integer", "integer", "integer", "integer",
             "text", "double precision", "bigint", "bigint", "double precision")
MODEL_COLUMNS = ("mst_key", "iterations_done", "training_loss", "validation_metric", "status", "hop_batches_done",
                 "hop_batches_total", "hop_examples_per_second")
MODEL_TYPES = ("integer[]", "integer[]", "double precision[]", "double precision[]", "text[]", "bigint[]",
               "bigint[]", "double precision[]")
GD_KEY = "madlib_dl_recording"  # schema, role and run this backend records, removed if the driver goes away
EQ = "OPERATOR(pg_catalog.=)"


def write(db, gd: dict, request: requests.Record) -> None:
    schema = db.quote_ident(request.schema)
    runs, models = f"{schema}.internal_own_progress_runs", f"{schema}.internal_own_progress_models"
    if request.final:
        forget(db, request.schema, request.role, request.run_id)
        gd.pop(GD_KEY, None)
        return
    if gd.get(GD_KEY) != (request.schema, request.role, request.run_id):  # the run's first snapshot
        _check_role(db, request.role)
        _remove_stale(db, runs, request.role)
        gd[GD_KEY] = (request.schema, request.role, request.run_id)
    # A snapshot is stale a moment later: its commit need not wait for the WAL to reach the disk.
    db.execute("SELECT pg_catalog.set_config('synchronous_commit', 'off', true)")
    values = [request.run_values.get(c) for c in RUN_COLUMNS]
    placeholders = ", ".join(f"${i}" for i in range(3, len(RUN_COLUMNS) + 3))
    updated = db.execute(f"UPDATE {runs} SET ({', '.join(RUN_COLUMNS)}) = ROW({placeholders}), "
                         f"updated = pg_catalog.clock_timestamp() WHERE role {EQ} $1 AND run_id {EQ} $2 "
                         "RETURNING run_id", [request.role, request.run_id, *values], ["oid", "text", *RUN_TYPES])
    if not updated:  # the run's first snapshot; the row is the current user's (the view's role column default)
        placeholders = ", ".join(f"${i}" for i in range(2, len(RUN_COLUMNS) + 2))
        db.execute(f"INSERT INTO {runs} (run_id, {', '.join(RUN_COLUMNS)}) VALUES ($1, {placeholders})",
                   [request.run_id, *values], ["text", *RUN_TYPES])
    if not request.model_rows:
        return
    arrays = [[m.get(c) for m in request.model_rows] for c in MODEL_COLUMNS]
    unnest = ", ".join(f"pg_catalog.unnest(${i}::{t})" for i, t in enumerate(MODEL_TYPES, 3))
    named = f"ROWS FROM ({unnest}) AS u ({', '.join(MODEL_COLUMNS)})"
    updates = ", ".join(f"{c} = u.{c}" for c in MODEL_COLUMNS[1:])
    db.execute(f"UPDATE {models} m SET {updates} FROM {named} WHERE m.role {EQ} $1 AND m.run_id {EQ} $2 "
               f"AND m.mst_key {EQ} u.mst_key", [request.role, request.run_id, *arrays], ["oid", "text", *MODEL_TYPES])
    db.execute(f"INSERT INTO {models} (run_id, {', '.join(MODEL_COLUMNS)}) SELECT $2, u.* FROM {named} "
               f"WHERE NOT EXISTS (SELECT FROM {models} m WHERE m.role {EQ} $1 AND m.run_id {EQ} $2 "
               f"AND m.mst_key {EQ} u.mst_key)", [request.role, request.run_id, *arrays], ["oid", "text", *MODEL_TYPES])


def forget(db, schema: str, role: int, run_id: str) -> None:
    db.execute(f"DELETE FROM {db.quote_ident(schema)}.internal_own_progress_runs WHERE role {EQ} $1 "
               f"AND run_id {EQ} $2", [role, run_id], ["oid", "text"])


def forget_current(db, gd: dict) -> None:
    """The driver went away without saying the run is over: its rows go (a worker's last act)."""
    recording = gd.pop(GD_KEY, None)
    if recording is not None:
        forget(db, *recording)


def _remove_stale(db, runs: str, role: int) -> None:
    """This role's rows of drivers that are gone (a server restart, a recorder that could not clean up)."""
    db.execute(f"DELETE FROM {runs} r WHERE r.role {EQ} $1 AND NOT EXISTS (SELECT 1 FROM "
               f"pg_catalog.pg_stat_activity a WHERE a.pid {EQ} r.pid AND a.backend_start {EQ} r.backend_start)",
               [role], ["oid"])


def _check_role(db, role: int) -> None:
    """The recorder writes a run's rows only as the run's role (which the views give every new row)."""
    me = db.execute("SELECT pg_catalog.quote_ident(CURRENT_USER)::pg_catalog.regrole::pg_catalog.oid AS role, "
                    "CURRENT_USER AS name")[0]
    if int(me["role"]) != role:
        raise PermissionDenied(f"the progress recorder acts as role {me['name']}, not as the role that made the run "
                               f"(OID {role}): it records nothing")


def write_checkpoint_model(db, request: requests.CheckpointModel) -> None:
    """A model's state; the checkpoint's run row is made at its first model, with no iteration yet."""
    _check_role(db, request.role)
    schema = db.quote_ident(request.schema)
    db.execute(f"INSERT INTO {schema}.internal_own_checkpoints (run_key, function) VALUES ($1, '') "
               "ON CONFLICT DO NOTHING", [request.run_key], ["text"])
    key = f"role {EQ} $1 AND run_key {EQ} $2 AND iteration {EQ} $3 AND mst_key {EQ} $4"
    db.execute(f"DELETE FROM {schema}.internal_own_checkpoint_models WHERE {key}",
               [request.role, request.run_key, request.iteration, request.mst_key], ["oid", "text", "integer", "integer"])
    db.execute(f"INSERT INTO {schema}.internal_own_checkpoint_models (run_key, iteration, mst_key, weights, "
               "optimizer_state, last_segment, metrics) VALUES ($1, $2, $3, $4, $5, $6, $7)",
               [request.run_key, request.iteration, request.mst_key, bytes(request.weights),
                None if request.optimizer_state is None else bytes(request.optimizer_state), request.last_segment,
                request.metrics], ["text", "integer", "integer", "bytea", "bytea", "integer", "text"])


def finish_checkpoint(db, request: requests.CheckpointDone) -> None:
    """The checkpoint stands at ``iteration`` from this commit on (with the kept models' rows of the
    last one); other iterations' states go."""
    _check_role(db, request.role)
    schema = db.quote_ident(request.schema)
    run = f"role {EQ} $1 AND run_key {EQ} $2"
    if request.kept:
        db.execute(f"UPDATE {schema}.internal_own_checkpoint_models SET iteration = $3 WHERE {run} "
                   f"AND iteration {EQ} $4 AND mst_key {EQ} ANY($5)",
                   [request.role, request.run_key, request.iteration, request.kept_from, request.kept],
                   ["oid", "text", "integer", "integer", "integer[]"])
    db.execute(f"UPDATE {schema}.internal_own_checkpoints SET function = $3, output_table = $4, iteration = $5, "
               f"metrics_iters = $6, state = $7, saved = pg_catalog.clock_timestamp() WHERE {run}",
               [request.role, request.run_key, request.function, request.output_table, request.iteration,
                request.metrics_iters, request.state], ["oid", "text", "text", "text", "integer", "integer[]", "text"])
    db.execute(f"DELETE FROM {schema}.internal_own_checkpoint_models WHERE {run} "
               "AND iteration OPERATOR(pg_catalog.<>) $3",
               [request.role, request.run_key, request.iteration], ["oid", "text", "integer"])
