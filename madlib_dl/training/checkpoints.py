"""Checkpoints of a training run (fit_multiple, fit, automl) and resuming from them.

At the end of an iteration the driver may save every model's state (weights, optimizer state, where it
last trained, its metric series) and the metrics iterations so far. The recorder worker writes them
in its own transactions (training.progress), so they survive the driver: cancelled, terminated, or the
server restarted. A checkpoint belongs to the hash of the run's arguments (run_key): calling the
function again with the same arguments and settings continues after its iteration, and since every
seed derives from the iteration, an in-process run resumed ends with exactly the weights of an
uninterrupted one. Other arguments make another key: an old checkpoint is never used for them. The
run's success removes its checkpoint in the caller's transaction, so it goes exactly when the outputs
are committed.

A checkpoint is also the role's that made the run: its current user (the role whose privileges the run
has, as its workers and recorder have), by OID. The key hashes the role with the arguments, and every
statement that reads or writes checkpoint rows names it, through the internal_own_* views, which hold
only the current user's rows (sql/madlib_dl.sql.in): a role, superusers included, never resumes from
another role's checkpoint, and two roles making the same call never touch each other's rows.

When: at the end of every ``madlib_dl.checkpoint_every``-th iteration, and of any iteration that ends
``madlib_dl.checkpoint_minutes`` after the run began or last saved (the defaults: no count, 10 minutes,
so that only runs whose iterations take minutes pay for them). madlib_keras_automl's models go at
their own pace: it counts the iterations any model ends, saves when nothing is running, and keeps the
rest of its state (the policy's calls, the schedule) as JSON (training.automl_driver, automl.replay).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from madlib_dl import settings
from madlib_dl.segment import requests
from madlib_dl.training import segment_means
from madlib_dl.training.spec import RunSpec

SCHEMA_VERSION = 1  # bump when what a checkpoint holds changes: older ones then have another key


@dataclass(frozen=True)
class When:
    every: int      # iterations; 0: by time only
    minutes: float  # 0: by count only

    def due(self, iteration: int, minutes_since_last: float, last_iteration: bool) -> bool:
        if last_iteration:
            return False  # the outputs are written now: nothing to resume
        return (self.every > 0 and iteration % self.every == 0) or (0 < self.minutes <= minutes_since_last)

    @property
    def never(self) -> bool:
        return self.every == 0 and self.minutes == 0

    def due_after(self, iterations: int, minutes_since_last: float) -> bool:
        """For runs without a common iteration (automl): ``iterations`` ended, by any model, since the
        last save."""
        return (self.every > 0 and iterations >= self.every) or (0 < self.minutes <= minutes_since_last)


@dataclass(frozen=True)
class SavedModel:
    weights: bytes
    optimizer_state: bytes | None
    last_segment: int | None
    metrics: dict
    hop_results: tuple = ()  # segment_means.SegmentResults of the iteration it is in (automl saves mid-iteration)


HOPS_KEY = "hop_results"  # kept in the metrics JSON: the running means of an unfinished iteration's hops


def _metrics_json(model) -> str:
    hops = [[h.segment, h.loss, h.metric, h.images] for h in model.hop_results]
    return json.dumps({**model.metrics, HOPS_KEY: hops} if hops else model.metrics)


def _saved_model(row) -> SavedModel:
    metrics = json.loads(row["metrics"])
    hops = tuple(segment_means.SegmentResult(*hop) for hop in metrics.pop(HOPS_KEY, []))
    return SavedModel(bytes(row["weights"]), None if row["optimizer_state"] is None else bytes(row["optimizer_state"]),
                      row["last_segment"], metrics, hops)


@dataclass(frozen=True)
class Kept:
    """Models whose rows in the checkpoint of ``iteration`` are still their state."""
    iteration: int
    models: frozenset


@dataclass(frozen=True)
class Saved:
    iteration: int
    metrics_iters: list
    models: dict  # mst_key -> SavedModel
    state: dict | None = None  # what else the run saved (automl)


def when(db) -> When:
    return When(settings.read(db, settings.CHECKPOINT_EVERY), float(settings.read(db, settings.CHECKPOINT_MINUTES)))


@dataclass(frozen=True)
class RunKey:
    """Whose checkpoint and of which run: the role's OID and the hash of the run (run_key)."""
    role: int
    digest: str


def current_role(db) -> int:
    """The OID of the current user, as the internal_own_* views compute it."""
    rows = db.execute("SELECT pg_catalog.quote_ident(CURRENT_USER)::pg_catalog.regrole::pg_catalog.oid AS role")
    return int(rows[0]["role"])


def run_key(db, spec: RunSpec, extra=None) -> RunKey:
    """The current user's key of the run: the hash of the role and everything that decides a run's
    result: the function, its tables (by name and shape), iterations, frequency, seeds, caching, every
    model's configuration and starting state, and ``extra`` (JSON values: what else the function's
    arguments decide, such as automl's search)."""
    def digest(value) -> str | None:
        return None if value is None else hashlib.sha256(bytes(value)).hexdigest()

    role = current_role(db)
    tables = [(t.text, sorted((k, s.buffers, s.images) for k, s in t.segments.items()))
              for t in (spec.source, spec.validation) if t is not None]
    models = [(m.mst_key, m.model_id, hashlib.sha256(m.model_arch.encode()).hexdigest(), m.compile_params,
               m.fit_params, digest(m.weights), digest(m.optimizer_state)) for m in spec.models]
    described = [SCHEMA_VERSION, role, spec.caller.function, str(spec.output_table), tables, spec.num_iterations,
                 spec.metrics_compute_frequency, spec.use_caching, spec.use_gpus, spec.seed, spec.iteration_offset,
                 models, extra, settings.read_choice(db, settings.TRAINING_METRICS)]  # the mode decides the metrics
    return RunKey(role, hashlib.sha256(json.dumps(described, default=str).encode()).hexdigest())


def load(db, schema: str, key: RunKey) -> Saved | None:
    """The run's last complete checkpoint (the caller's session reads what the recorder committed), of
    the current user's rows only."""
    q = db.quote_ident(schema)
    head = db.execute(f"SELECT iteration, metrics_iters, state FROM {q}.internal_own_checkpoints "
                      "WHERE role OPERATOR(pg_catalog.=) $1 AND run_key OPERATOR(pg_catalog.=) $2 "
                      "AND iteration IS NOT NULL", [key.role, key.digest], ["oid", "text"])
    if not head:
        return None
    iteration = head[0]["iteration"]
    rows = db.execute(f"SELECT mst_key, weights, optimizer_state, last_segment, metrics FROM "
                      f"{q}.internal_own_checkpoint_models WHERE role OPERATOR(pg_catalog.=) $1 "
                      "AND run_key OPERATOR(pg_catalog.=) $2 AND iteration OPERATOR(pg_catalog.=) $3",
                      [key.role, key.digest, iteration], ["oid", "text", "integer"])
    models = {r["mst_key"]: _saved_model(r) for r in rows}
    state = head[0]["state"]
    return Saved(iteration, list(head[0]["metrics_iters"] or []), models, None if state is None else json.loads(state))


def remove(db, schema: str, key: RunKey) -> None:
    """In the caller's transaction: the checkpoint goes when the run's outputs are committed."""
    db.execute(f"DELETE FROM {db.quote_ident(schema)}.internal_own_checkpoints WHERE role OPERATOR(pg_catalog.=) $1 "
               "AND run_key OPERATOR(pg_catalog.=) $2", [key.role, key.digest], ["oid", "text"])


def requests_for(spec: RunSpec, key: RunKey, iteration: int, models: dict, metrics_iters: list, state=None,
                 kept: Kept | None = None) -> list:
    """What the recorder is sent to save a checkpoint at the end of ``iteration``: one request per
    model (``models``: mst_key -> driver.ModelProgress), then the one that makes it stand, with
    ``state`` (JSON values) and the models ``kept`` from the last checkpoint."""
    out = [requests.CheckpointModel(spec.schema, key.role, key.digest, iteration, mst_key, model.last_segment,
                                    _metrics_json(model), model.weights, model.optimizer_state)
           for mst_key, model in sorted(models.items())]
    out.append(requests.CheckpointDone(spec.schema, key.role, key.digest, iteration, spec.caller.function,
                                       None if spec.output_table is None else str(spec.output_table),
                                       list(metrics_iters), None if state is None else json.dumps(state),
                                       sorted(kept.models) if kept else [], kept.iteration if kept else None))
    return out
