"""The three output tables of fit_multiple, written in the calling transaction (so a failed or cancelled
run leaves none): MADlib's columns, plus what MADlib lacks:

* ``<out>.optimizer_state``: each model's optimizer state (so warm start continues Adam's moments);
* ``<out>_info.metrics_iters`` and ``validation_metrics_elapsed_time`` (MADlib let the validation
  series overwrite the training one in ``metrics_elapsed_time``; here that column is the training series);
* ``<out>_summary.num_classes`` is the class count (MADlib wrote the number of dependent variables).
"""

from __future__ import annotations

from madlib_dl import __version__, catalog
from madlib_dl.keras_runtime import params as keras_params
from madlib_dl.training.driver import RunResult
from madlib_dl.training.spec import OutputTables, RunSpec

MODEL_TYPE = "madlib_keras"


def drop(db, out: OutputTables) -> None:
    for table in (out.model, out.summary, out.info):
        db.execute(f"DROP TABLE IF EXISTS {table.sql(db)}")


def write(db, out: OutputTables, spec: RunSpec, result: RunResult, request: dict) -> None:
    """``request``: the caller's arguments as given (table names as text, name, description...)."""
    _write_models(db, out, result)
    _write_info(db, out, result)
    _write_summary(db, out, spec, result, request)


def _write_models(db, out: OutputTables, result: RunResult) -> None:
    table = out.model.sql(db)
    db.execute(f"CREATE TABLE {table} (mst_key INTEGER PRIMARY KEY, model_weights BYTEA, model_arch JSON, "
               "__dist_key__ INTEGER, optimizer_state BYTEA)")
    for mst_key, model in sorted(result.models.items()):
        db.execute(f"INSERT INTO {table} VALUES ($1, $2, $3::json, $4, $5)",
                   [mst_key, model.weights, model.config.model_arch, model.last_segment, model.optimizer_state],
                   ["integer", "bytea", "text", "integer", "bytea"])


_INFO_COLUMNS = (
    ("mst_key", "INTEGER PRIMARY KEY"), ("model_id", "INTEGER"), ("compile_params", "TEXT"), ("fit_params", "TEXT"),
    ("model_type", "TEXT"), ("model_size", "DOUBLE PRECISION"), ("metrics_elapsed_time", "DOUBLE PRECISION[]"),
    ("metrics_type", "TEXT[]"), ("loss_type", "TEXT"), ("training_metrics_final", "DOUBLE PRECISION"),
    ("training_loss_final", "DOUBLE PRECISION"), ("training_metrics", "DOUBLE PRECISION[]"),
    ("training_loss", "DOUBLE PRECISION[]"), ("validation_metrics_final", "DOUBLE PRECISION"),
    ("validation_loss_final", "DOUBLE PRECISION"), ("validation_metrics", "DOUBLE PRECISION[]"),
    ("validation_loss", "DOUBLE PRECISION[]"), ("metrics_iters", "INTEGER[]"),
    ("validation_metrics_elapsed_time", "DOUBLE PRECISION[]"),
)


def _last(values):
    return values[-1] if values else None


def _info_row(mst_key: int, model, metrics_iters: list[int]) -> list:
    config, m = model.config, model.metrics
    compiled = keras_params.parse_compile_params(config.compile_params)
    has_metric = bool(compiled.metrics)
    train_metric = m["training_metric"] if has_metric else None
    valid_metric = m["validation_metric"] if has_metric and m["validation_loss"] else None
    validation = bool(m["validation_loss"])
    return [mst_key, config.model_id, config.compile_params, config.fit_params, MODEL_TYPE,
            len(model.weights) / 1024.0, m["training_elapsed"], list(compiled.metrics) or None, compiled.loss,
            _last(train_metric or []), _last(m["training_loss"]), train_metric, m["training_loss"],
            _last(valid_metric or []) if validation else None, _last(m["validation_loss"]) if validation else None,
            valid_metric, m["validation_loss"] if validation else None, metrics_iters,
            m["validation_elapsed"] if validation else None]


def _write_info(db, out: OutputTables, result: RunResult) -> None:
    table = out.info.sql(db)
    db.execute(f"CREATE TABLE {table} ({', '.join(f'{n} {t}' for n, t in _INFO_COLUMNS)})")
    types = [t.replace(" PRIMARY KEY", "").lower() for _, t in _INFO_COLUMNS]
    placeholders = ", ".join(f"${i}" for i in range(1, len(types) + 1))
    for mst_key, model in sorted(result.models.items()):
        db.execute(f"INSERT INTO {table} VALUES ({placeholders})", _info_row(mst_key, model, result.metrics_iters),
                   types)


def _write_summary(db, out: OutputTables, spec: RunSpec, result: RunResult, request: dict) -> None:
    source = spec.source
    class_column = catalog.columns(db, source.summary).get(source.class_values_column)
    class_type = class_column.type if class_column else "text[]"
    q = db.quote_ident
    columns = [
        ("source_table", "TEXT", request["source_table"]), ("validation_table", "TEXT", request["validation_table"]),
        ("model", "TEXT", request["model_output_table"]), ("model_info", "TEXT", out.info.sql(db)),
        ("dependent_varname", "TEXT[]", [source.dependent]), ("independent_varname", "TEXT[]", [source.independent]),
        ("model_arch_table", "TEXT", request["model_arch_table"]),
        ("model_selection_table", "TEXT", request["model_selection_table"]), ("object_table", "TEXT", None),
        ("num_iterations", "INTEGER", spec.num_iterations),
        ("metrics_compute_frequency", "INTEGER", spec.metrics_compute_frequency),
        ("warm_start", "BOOLEAN", request["warm_start"]), ("name", "TEXT", request["name"]),
        ("description", "TEXT", request["description"]), ("start_training_time", "TIMESTAMP", result.started),
        ("end_training_time", "TIMESTAMP", result.ended), ("madlib_version", "TEXT", f"madlib_dl {__version__}"),
        ("num_classes", "INTEGER[]", [source.num_classes]),
    ]
    tail = [("dependent_vartype", "TEXT[]"), ("normalizing_const", "REAL")]
    definitions = [f"{n} {t}" for n, t, _ in columns] + [f"{q(source.class_values_column)} {class_type}"] + \
        [f"{n} {t}" for n, t in tail] + ["metrics_iters INTEGER[]"]
    db.execute(f"CREATE TABLE {out.summary.sql(db)} ({', '.join(definitions)})")
    params = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    copied = f"s.{q(source.class_values_column)}" if class_column else "NULL"
    db.execute(f"INSERT INTO {out.summary.sql(db)} SELECT {params}, {copied}, s.dependent_vartype, "
               f"s.normalizing_const, ${len(columns) + 1} FROM {source.summary.sql(db)} s",
               [v for _, _, v in columns] + [result.metrics_iters],
               [t.lower() for _, t, _ in columns] + ["integer[]"])
