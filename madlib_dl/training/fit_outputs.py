"""The two output tables of madlib_keras_fit, written in the calling transaction (so a failed or
cancelled run leaves none), with MADlib's columns in MADlib's order, plus what MADlib lacks:

* ``<model>.optimizer_state``: the optimizer's state (so warm start continues Adam's moments); a state
  too large for one value is in ``<model>_optimizer_state`` (stored_state);
* ``<model>_summary.validation_metrics_elapsed_time``: MADlib took one time per metrics iteration after
  both evaluations; here ``metrics_elapsed_time`` is the training series and this one the validation's;
* ``<model>_summary.total_iterations``: iterations trained in all, earlier runs continued by warm start
  included (a warm start seeds its iterations after these);
* ``num_classes`` is the class count of the data, as MADlib's fit writes it.

The metric columns are fit_multiple's ``_info`` values (outputs.history_values), so both functions
report a model the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from madlib_dl import __version__
from madlib_dl.identifiers import TableName
from madlib_dl.training import outputs, stored_state
from madlib_dl.training.driver import RunResult
from madlib_dl.training.model_table import ModelTable
from madlib_dl.training.spec import RunSpec


@dataclass(frozen=True)
class FitOutputTables:
    model: TableName
    summary: TableName
    text: str  # the model table's name as the caller wrote it


@dataclass(frozen=True)
class FitRequest:
    """The caller's arguments as given, for the summary."""
    source_table: str
    model: str
    model_arch_table: str
    model_id: int
    validation_table: str | None  # None when no validation table was given
    name: str | None
    description: str | None
    object_table: str | None = None  # schema-qualified, as custom_functions.table_text writes it


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    value: object = None
    copied: str | None = None  # an expression over the source summary ``s`` instead of a bound value


def drop(db, out: FitOutputTables) -> None:
    for table in (out.model, out.summary):
        db.execute(f"DROP TABLE IF EXISTS {table.sql(db)}")
    stored_state.drop(db, out.model)


def write(db, out: FitOutputTables, spec: RunSpec, result: RunResult, request: FitRequest,
          models: ModelTable | None = None) -> None:
    """``models``: the model table when it was made before training (its row may be in it already)."""
    _write_summary(db, out.summary, spec.source.summary, _summary_columns(db, spec, result, request))
    if models is None:
        models = ModelTable(out.model, spec.schema, keyed=False)
        models.create(db)
    models.write_rest(db, result.models)


def _summary_columns(db, spec: RunSpec, result: RunResult, request: FitRequest) -> list[Column]:
    (model,) = result.models.values()
    source, config = spec.source, model.config
    history = outputs.history_values(model, result.metrics_iters)

    def metric(name: str) -> Column:
        return Column(name, outputs.HISTORY_TYPES[name], history[name])

    several = outputs.several_outputs(source)
    per_output = outputs.per_output_values(model)
    return [
        Column("source_table", "TEXT", request.source_table), Column("model", "TEXT", request.model),
        Column("dependent_varname", "TEXT[]", list(source.dependents)),
        Column("independent_varname", "TEXT[]", list(source.independents)),
        Column("model_arch_table", "TEXT", request.model_arch_table), Column("model_id", "INTEGER", request.model_id),
        Column("compile_params", "TEXT", config.compile_params), Column("fit_params", "TEXT", config.fit_params),
        Column("num_iterations", "INTEGER", spec.num_iterations),
        Column("validation_table", "TEXT", request.validation_table), Column("object_table", "TEXT", request.object_table),
        Column("metrics_compute_frequency", "INTEGER", spec.metrics_compute_frequency),
        Column("name", "TEXT", request.name), Column("description", "TEXT", request.description),
        Column("model_type", "TEXT", outputs.MODEL_TYPE),
        Column("model_size", "DOUBLE PRECISION", len(model.weights) / 1024.0),
        Column("start_training_time", "TIMESTAMP", result.started),
        Column("end_training_time", "TIMESTAMP", result.ended), metric("metrics_elapsed_time"),
        Column("madlib_version", "TEXT", f"madlib_dl {__version__}"),
        Column("num_classes", "INTEGER[]", list(source.output_classes)),
        Column("dependent_vartype", "TEXT[]", copied="s.dependent_vartype"),
        Column("normalizing_const", "REAL", copied="s.normalizing_const"),
        *[metric(name) for name in ("metrics_type", "loss_type", "training_metrics_final", "training_loss_final",
                                    "training_metrics", "training_loss", "validation_metrics_final",
                                    "validation_loss_final", "validation_metrics", "validation_loss",
                                    "metrics_iters")],
        *[Column(name, sql_type, copied=expression) for name, sql_type, expression in
          outputs.class_values_columns(db, source)],
        metric("validation_metrics_elapsed_time"),
        Column("total_iterations", "INTEGER", spec.iteration_offset + spec.num_iterations),
        *[Column(name, sql_type, per_output[name]) for name, sql_type in outputs.PER_OUTPUT_TYPES.items() if several],
    ]


def _write_summary(db, summary: TableName, source_summary: TableName, columns: list[Column]) -> None:
    """CREATE the summary, then one INSERT ... SELECT over the source summary: bound values as $n,
    copied columns as their expressions."""
    q = db.quote_ident
    db.execute(f"CREATE TABLE {summary.sql(db)} ({', '.join(f'{q(c.name)} {c.type}' for c in columns)})")
    select, bound = [], []
    for column in columns:
        if column.copied is None:
            bound.append(column)
        select.append(column.copied if column.copied is not None else f"${len(bound)}")
    db.execute(f"INSERT INTO {summary.sql(db)} SELECT {', '.join(select)} FROM {source_summary.sql(db)} s",
               [c.value for c in bound], [c.type.lower() for c in bound])
