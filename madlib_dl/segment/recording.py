"""The recorder's side of live progress: a run's snapshot (requests.Record) written into the progress
tables (sql/functions/90_progress.sql.in) in this backend's own transaction, which commits when the
request is served, so every session may see it while the run goes on. Rows are the login role's (the
tables' row-level security); the recorder runs as that role.
"""

from __future__ import annotations

from madlib_dl.segment import requests

RUN_COLUMNS = ("pid", "backend_start", "function", "output_table", "started", "iteration", "iterations",
               "hops_done", "hops_total", "phase", "eta_seconds")
RUN_TYPES = ("integer", "timestamptz", "text", "text", "timestamptz", "integer", "integer", "integer", "integer",
             "text", "double precision")
MODEL_COLUMNS = ("mst_key", "iterations_done", "training_loss", "validation_metric", "status")
MODEL_TYPES = ("integer[]", "integer[]", "double precision[]", "double precision[]", "text[]")
GD_KEY = "madlib_dl_recording"  # schema and run this backend records, removed if the driver goes away


def write(db, gd: dict, request: requests.Record) -> None:
    schema = db.quote_ident(request.schema)
    runs, models = f"{schema}.internal_progress_runs", f"{schema}.internal_progress_models"
    if request.final:
        forget(db, request.schema, request.run_id)
        gd.pop(GD_KEY, None)
        return
    if gd.get(GD_KEY) != (request.schema, request.run_id):
        _remove_stale(db, runs)
        gd[GD_KEY] = (request.schema, request.run_id)
    # A snapshot is stale a moment later: its commit need not wait for the WAL to reach the disk.
    db.execute("SELECT set_config('synchronous_commit', 'off', true)")
    values = [request.run_values.get(c) for c in RUN_COLUMNS]
    placeholders = ", ".join(f"${i}" for i in range(2, len(RUN_COLUMNS) + 2))
    updates = ", ".join(f"{c} = excluded.{c}" for c in RUN_COLUMNS)
    db.execute(f"INSERT INTO {runs} (run_id, {', '.join(RUN_COLUMNS)}) VALUES ($1, {placeholders}) "
               f"ON CONFLICT (run_id) DO UPDATE SET {updates}, updated = clock_timestamp()",
               [request.run_id, *values], ["text", *RUN_TYPES])
    if not request.model_rows:
        return
    arrays = [[m.get(c) for m in request.model_rows] for c in MODEL_COLUMNS]
    unnest = ", ".join(f"${i}::{t}" for i, t in enumerate(MODEL_TYPES, 2))
    updates = ", ".join(f"{c} = excluded.{c}" for c in MODEL_COLUMNS[1:])
    db.execute(f"INSERT INTO {models} (run_id, {', '.join(MODEL_COLUMNS)}) SELECT $1, * FROM unnest({unnest}) "
               f"ON CONFLICT (run_id, mst_key) DO UPDATE SET {updates}", [request.run_id, *arrays],
               ["text", *MODEL_TYPES])


def forget(db, schema: str, run_id: str) -> None:
    db.execute(f"DELETE FROM {db.quote_ident(schema)}.internal_progress_runs WHERE run_id = $1", [run_id], ["text"])


def forget_current(db, gd: dict) -> None:
    """The driver went away without saying the run is over: its rows go (a worker's last act)."""
    recording = gd.pop(GD_KEY, None)
    if recording is not None:
        forget(db, *recording)


def _remove_stale(db, runs: str) -> None:
    """This role's rows of drivers that are gone (a server restart, a recorder that could not clean up)."""
    db.execute(f"DELETE FROM {runs} r WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a "
               "WHERE a.pid = r.pid AND a.backend_start = r.backend_start)")


def write_checkpoint_model(db, request: requests.CheckpointModel) -> None:
    """A model's state; the checkpoint's run row is made at its first model, with no iteration yet."""
    schema = db.quote_ident(request.schema)
    db.execute(f"INSERT INTO {schema}.internal_checkpoints (run_key, function) VALUES ($1, '') "
               "ON CONFLICT (run_key) DO NOTHING", [request.run_key], ["text"])
    db.execute(f"INSERT INTO {schema}.internal_checkpoint_models (run_key, iteration, mst_key, weights, "
               "optimizer_state, last_segment, metrics) VALUES ($1, $2, $3, $4, $5, $6, $7) "
               "ON CONFLICT (run_key, iteration, mst_key) DO UPDATE SET weights = excluded.weights, "
               "optimizer_state = excluded.optimizer_state, last_segment = excluded.last_segment, "
               "metrics = excluded.metrics",
               [request.run_key, request.iteration, request.mst_key, bytes(request.weights),
                None if request.optimizer_state is None else bytes(request.optimizer_state), request.last_segment,
                request.metrics], ["text", "integer", "integer", "bytea", "bytea", "integer", "text"])


def finish_checkpoint(db, request: requests.CheckpointDone) -> None:
    """The checkpoint stands at ``iteration`` from this commit on (with the kept models' rows of the
    last one); other iterations' states go."""
    schema = db.quote_ident(request.schema)
    if request.kept:
        db.execute(f"UPDATE {schema}.internal_checkpoint_models SET iteration = $2 WHERE run_key = $1 "
                   "AND iteration = $3 AND mst_key = ANY($4)",
                   [request.run_key, request.iteration, request.kept_from, request.kept],
                   ["text", "integer", "integer", "integer[]"])
    db.execute(f"UPDATE {schema}.internal_checkpoints SET function = $2, output_table = $3, iteration = $4, "
               "metrics_iters = $5, state = $6, saved = clock_timestamp() WHERE run_key = $1",
               [request.run_key, request.function, request.output_table, request.iteration, request.metrics_iters,
                request.state], ["text", "text", "text", "integer", "integer[]", "text"])
    db.execute(f"DELETE FROM {schema}.internal_checkpoint_models WHERE run_key = $1 AND iteration <> $2",
               [request.run_key, request.iteration], ["text", "integer"])
