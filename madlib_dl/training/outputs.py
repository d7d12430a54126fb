"""The three output tables of fit_multiple, written in the calling transaction (so a failed or cancelled
run leaves none): MADlib's columns, plus what MADlib lacks:

* ``<out>.optimizer_state``: each model's optimizer state (so warm start continues Adam's moments); a
  state too large for one value is in ``<out>_optimizer_state`` (stored_state);
* ``<out>_info.metrics_iters`` and ``validation_metrics_elapsed_time`` (MADlib let the validation
  series overwrite the training one in ``metrics_elapsed_time``; here that column is the training series);
* ``<out>_summary.num_classes`` is the class count (MADlib wrote the number of dependent variables).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from madlib_dl import __version__, catalog, identifiers
from madlib_dl.errors import ObjectExists
from madlib_dl.keras_runtime import params as keras_params
from madlib_dl.training import stored_state
from madlib_dl.training.model_table import ModelTable
from madlib_dl.training.driver import RunResult
from madlib_dl.training.spec import OutputTables, RunSpec

MODEL_TYPE = "madlib_keras"


def reserve(db, tables) -> list:
    """Take the output tables' names for the caller's transaction before the run trains: an empty table
    of each, dropped just before the real one is written (:func:`release`). Until the transaction ends,
    another session's CREATE TABLE of one of these names waits, then finds it taken; without this, a
    table someone made meanwhile would fail the run at its end, after all of its training."""
    reserved = [table for table in tables if table is not None]
    for table in reserved:
        if identifiers.table_exists(db, table):
            raise ObjectExists(f"table {str(table)!r}, which this run writes, already exists",
                               hint="Drop it or choose another output table name.")
        db.execute(f"CREATE TABLE {table.sql(db)} ()")
    return reserved


def release(db, reserved: list) -> None:
    for table in reserved:
        db.execute(f"DROP TABLE {table.sql(db)}")


def drop(db, out: OutputTables) -> None:
    for table in (out.model, out.summary, out.info):
        db.execute(f"DROP TABLE IF EXISTS {table.sql(db)}")
    stored_state.drop(db, out.model)


@dataclass(frozen=True)
class Extra:
    """What another caller of these tables (madlib_keras_automl) adds: columns at the end of _info
    (``info_values``: mst_key -> their values) and of the summary ((name, type, value)), and each
    model's own metrics_iters (mst_key -> list) where models were evaluated at different iterations."""
    info_columns: tuple = ()
    info_values: dict = field(default_factory=dict)
    summary_columns: tuple = ()
    metrics_iters: dict | None = None


def write(db, out: OutputTables, spec: RunSpec, result: RunResult, request: dict, extra: Extra = Extra(),
          models: ModelTable | None = None) -> None:
    """``request``: the caller's arguments as given (table names as text, name, description...);
    ``models``: the model table when it was made before training (some rows may be in it already)."""
    _write_info(db, out, spec, result, extra)
    _write_summary(db, out, spec, result, request, extra)
    if models is None:
        models = ModelTable(out.model, spec.schema, keyed=True)
        models.create(db)
    models.write_rest(db, result.models)  # last: it lets go of each model's state once written


# A model's training history as MADlib's metric columns (fit_multiple's _info, fit's _summary), plus
# our metrics_iters and validation_metrics_elapsed_time.
HISTORY_TYPES = {
    "metrics_elapsed_time": "DOUBLE PRECISION[]", "metrics_type": "TEXT[]", "loss_type": "TEXT",
    "training_metrics_final": "DOUBLE PRECISION", "training_loss_final": "DOUBLE PRECISION",
    "training_metrics": "DOUBLE PRECISION[]", "training_loss": "DOUBLE PRECISION[]",
    "validation_metrics_final": "DOUBLE PRECISION", "validation_loss_final": "DOUBLE PRECISION",
    "validation_metrics": "DOUBLE PRECISION[]", "validation_loss": "DOUBLE PRECISION[]",
    "metrics_iters": "INTEGER[]", "validation_metrics_elapsed_time": "DOUBLE PRECISION[]",
}

_INFO_COLUMNS = (
    ("mst_key", "INTEGER PRIMARY KEY"), ("model_id", "INTEGER"), ("compile_params", "TEXT"), ("fit_params", "TEXT"),
    ("model_type", "TEXT"), ("model_size", "DOUBLE PRECISION"),
    *((name, HISTORY_TYPES[name]) for name in (
        "metrics_elapsed_time", "metrics_type", "loss_type", "training_metrics_final", "training_loss_final",
        "training_metrics", "training_loss", "validation_metrics_final", "validation_loss_final",
        "validation_metrics", "validation_loss", "metrics_iters", "validation_metrics_elapsed_time")),
)


# A model with several outputs (multi-io) also reports each output's final loss and first metric, in
# the order of the summary's dependent_varname; its metric columns hold the mean of the outputs' metrics.
PER_OUTPUT_TYPES = {
    "training_loss_per_output": "DOUBLE PRECISION[]", "training_metrics_per_output": "DOUBLE PRECISION[]",
    "validation_loss_per_output": "DOUBLE PRECISION[]", "validation_metrics_per_output": "DOUBLE PRECISION[]",
}


def several_outputs(source) -> bool:
    """Whether the models trained on packed table ``source`` have several outputs."""
    return len(source.dependents) > 1


def per_output_values(model) -> dict:
    """The PER_OUTPUT_TYPES columns of a trained model (driver.ModelProgress)."""
    m = model.metrics
    return {f"{prefix}_{what}_per_output": _last(m.get(f"{prefix}_output_{series}") or [])
            for prefix in ("training", "validation") for what, series in (("loss", "losses"), ("metrics", "metrics"))}


def class_values_columns(db, source) -> list[tuple[str, str, str]]:
    """(name, type, expression over the source summary ``s``) of each dependent variable's class values:
    the source summary's type (text[], integer[], boolean[]...); NULL for labels packed one-hot."""
    present = catalog.columns(db, source.summary)
    found = []
    for name in source.class_values_columns or (source.class_values_column,):
        column = present.get(name)
        found.append((name, column.type if column else "TEXT[]", f"s.{db.quote_ident(name)}" if column else "NULL"))
    return found


def _last(values):
    return values[-1] if values else None


def history_values(model, metrics_iters: list[int]) -> dict:
    """The HISTORY_TYPES columns of a trained model (driver.ModelProgress): metric NULL when the
    compile parameters have none, validation columns NULL without a validation table."""
    config, m = model.config, model.metrics
    compiled = keras_params.parse_compile_params(config.compile_params)
    has_metric = bool(compiled.metrics)
    validation = bool(m["validation_loss"])
    train_metric = m["training_metric"] if has_metric else None
    valid_metric = m["validation_metric"] if has_metric and validation else None
    return {
        "metrics_elapsed_time": m["training_elapsed"], "metrics_type": list(compiled.metrics) or None,
        "loss_type": compiled.loss, "training_metrics_final": _last(train_metric or []),
        "training_loss_final": _last(m["training_loss"]), "training_metrics": train_metric,
        "training_loss": m["training_loss"],
        "validation_metrics_final": _last(valid_metric or []) if validation else None,
        "validation_loss_final": _last(m["validation_loss"]) if validation else None,
        "validation_metrics": valid_metric, "validation_loss": m["validation_loss"] if validation else None,
        "metrics_iters": metrics_iters,
        "validation_metrics_elapsed_time": m["validation_elapsed"] if validation else None,
    }


def _info_row(mst_key: int, model, metrics_iters: list[int], columns) -> list:
    config = model.config
    values = {"mst_key": mst_key, "model_id": config.model_id, "compile_params": config.compile_params,
              "fit_params": config.fit_params, "model_type": MODEL_TYPE, "model_size": len(model.weights) / 1024.0,
              **history_values(model, metrics_iters), **per_output_values(model)}
    return [values[name] for name, _ in columns]


def _write_info(db, out: OutputTables, spec: RunSpec, result: RunResult, extra: Extra) -> None:
    table = out.info.sql(db)
    ours = _INFO_COLUMNS + (tuple(PER_OUTPUT_TYPES.items()) if several_outputs(spec.source) else ())
    columns = ours + tuple(extra.info_columns)
    db.execute(f"CREATE TABLE {table} ({', '.join(f'{n} {t}' for n, t in columns)})")
    types = [t.replace(" PRIMARY KEY", "").lower() for _, t in columns]
    placeholders = ", ".join(f"${i}" for i in range(1, len(types) + 1))
    for mst_key, model in sorted(result.models.items()):
        iters = result.metrics_iters if extra.metrics_iters is None else extra.metrics_iters[mst_key]
        db.execute(f"INSERT INTO {table} VALUES ({placeholders})",
                   _info_row(mst_key, model, iters, ours) + list(extra.info_values.get(mst_key, ())), types)


def _typed_info(model_output_table: str) -> str:
    # MADlib keeps the name as typed plus _info, not the resolved (case-folded, pg_temp_N) name
    return identifiers.typed_with_suffix(model_output_table, "_info")


def _write_summary(db, out: OutputTables, spec: RunSpec, result: RunResult, request: dict, extra: Extra) -> None:
    source = spec.source
    class_columns = class_values_columns(db, source)
    q = db.quote_ident
    columns = [
        ("source_table", "TEXT", request["source_table"]), ("validation_table", "TEXT", request["validation_table"]),
        ("model", "TEXT", request["model_output_table"]),
        ("model_info", "TEXT", _typed_info(request["model_output_table"])),
        ("dependent_varname", "TEXT[]", list(source.dependents)),
        ("independent_varname", "TEXT[]", list(source.independents)),
        ("model_arch_table", "TEXT", request["model_arch_table"]),
        ("model_selection_table", "TEXT", request["model_selection_table"]), ("object_table", "TEXT", request.get("object_table")),
        ("num_iterations", "INTEGER", spec.num_iterations),
        ("metrics_compute_frequency", "INTEGER", spec.metrics_compute_frequency),
        ("warm_start", "BOOLEAN", request["warm_start"]), ("name", "TEXT", request["name"]),
        ("description", "TEXT", request["description"]), ("start_training_time", "TIMESTAMP", result.started),
        ("end_training_time", "TIMESTAMP", result.ended), ("madlib_version", "TEXT", f"madlib_dl {__version__}"),
        ("num_classes", "INTEGER[]", list(source.output_classes)),
    ]
    after = list(extra.summary_columns)
    tail = [("dependent_vartype", "TEXT[]"), ("normalizing_const", "REAL")]
    definitions = [f"{n} {t}" for n, t, _ in columns] + [f"{q(n)} {t}" for n, t, _ in class_columns] + \
        [f"{n} {t}" for n, t in tail] + ["metrics_iters INTEGER[]"] + [f"{n} {t}" for n, t, _ in after]
    db.execute(f"CREATE TABLE {out.summary.sql(db)} ({', '.join(definitions)})")
    params = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    copied = ", ".join(expression for _, _, expression in class_columns)
    later = "".join(f", ${len(columns) + 2 + i}" for i in range(len(after)))
    iters = result.metrics_iters if extra.metrics_iters is None else sorted(set().union(*extra.metrics_iters.values()))
    db.execute(f"INSERT INTO {out.summary.sql(db)} SELECT {params}, {copied}, s.dependent_vartype, "
               f"s.normalizing_const, ${len(columns) + 1}{later} FROM {source.summary.sql(db)} s",
               [v for _, _, v in columns] + [iters] + [v for _, _, v in after],
               [t.lower() for _, t, _ in columns] + ["integer[]"] + [t.lower() for _, t, _ in after])
