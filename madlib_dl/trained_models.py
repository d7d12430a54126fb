"""Reading a trained model back from the output tables of a training function, for evaluate and predict.

Two layouts (MADlib's), told apart by the model table's columns:

* **single model** (madlib_keras_fit): ``<model>`` has one row (``model_weights BYTEA, model_arch JSON``,
  and our ``optimizer_state``); ``<model>_summary`` has one row with ``compile_params``, ``metrics_type``,
  ``loss_type``, ``dependent_varname``, ``independent_varname``, ``normalizing_const`` and the class values
  column ``<dependent_varname>_class_values``. Passing an ``mst_key`` is an error.
* **multi model** (madlib_keras_fit_multiple_model): ``<model>`` has an ``mst_key`` per row; the compile
  parameters, ``metrics_type`` and ``loss_type`` come from ``<model>_info`` (by ``mst_key``), the data's
  description from ``<model>_summary``. An ``mst_key`` is required.

A model with several inputs or outputs (MADlib's multi-io) lists one ``independent_varname`` per input and
one ``dependent_varname`` per output, each output with its own ``<dependent>_class_values`` column: the
``*_varnames``, ``class_values_columns`` and ``all_class_values`` fields hold them all, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from madlib_dl import catalog, identifiers
from madlib_dl.errors import InvalidArgument, ObjectMissing
from madlib_dl.identifiers import TableName
from madlib_dl.segment.requests import ObjectTable

SUMMARY_COLUMNS = ("dependent_varname", "independent_varname", "normalizing_const")


@dataclass(frozen=True)
class TrainedModel:
    table: TableName
    text: str                    # the model table as the caller wrote it
    mst_key: int | None          # None: a single-model table
    model_arch: str              # Keras JSON
    weights: bytes               # MADlib's format (flat float32 of get_weights())
    compile_params: str
    metrics_type: tuple | None   # ('accuracy',) or None
    loss_type: str | None
    dependent_varname: str
    independent_varname: str
    class_values_column: str     # <dependent_varname>_class_values
    class_values: tuple | None   # None when the labels were packed as one-hot arrays
    normalizing_const: float
    object_table_text: str | None = None  # the summary's object_table: where its custom functions are
    object_table: ObjectTable | None = None  # that table, resolved and checked (only for evaluating)
    # Every dependent variable, one per model output in output order (multi-output models have several);
    # the fields above without an s describe the first. Empty only for a TrainedModel made by hand.
    dependent_varnames: tuple[str, ...] = ()
    independent_varnames: tuple[str, ...] = ()   # one per model input, in input order
    class_values_columns: tuple[str, ...] = ()   # <dependent>_class_values of each dependent
    all_class_values: tuple[tuple | None, ...] = ()  # each dependent's class values; None: one-hot labels

    @property
    def described(self) -> str:
        return self.text if self.mst_key is None else f"{self.text} (mst_key {self.mst_key})"


def load(db, model_table: str | None, mst_key: int | None, argument: str = "model_table") -> TrainedModel:
    """The model of ``model_table`` (and ``mst_key`` for a multi-model table), checked."""
    table = catalog.input_table(db, model_table, argument)
    columns = catalog.columns(db, table)
    missing = [c for c in ("model_weights", "model_arch") if c not in columns]
    if missing:
        raise InvalidArgument(f"{argument}: {model_table!r} is not a model table of madlib_keras_fit or "
                              f"madlib_keras_fit_multiple_model (no column {', '.join(missing)})")
    summary_table = _companion(db, table, "_summary", model_table, argument)
    summary = _one_row(db, summary_table, argument)
    absent = [c for c in SUMMARY_COLUMNS if c not in summary]
    if absent:
        raise InvalidArgument(f"{argument}: summary table {str(summary_table)!r} has no column {', '.join(absent)}")
    if "mst_key" in columns:
        row, config = _multi(db, table, model_table, mst_key, argument)
    else:
        if mst_key is not None:
            raise InvalidArgument(f"mst_key: {model_table!r} holds a single model (madlib_keras_fit), got "
                                  f"mst_key {mst_key}", hint="Pass mst_key NULL.")
        row, config = _single(db, table, model_table, summary, argument)
    if row["model_weights"] is None or row["model_arch"] is None:
        raise InvalidArgument(f"{argument}: the model {model_table!r}{_key(mst_key)} has NULL weights or architecture")
    dependents = _names(summary["dependent_varname"])
    class_columns = tuple(f"{d}_class_values" for d in dependents)
    all_values = tuple(_values(summary.get(c)) for c in class_columns)
    dependent, class_column, class_values = dependents[0], class_columns[0], summary.get(class_columns[0])
    return TrainedModel(
        table=table, text=model_table, mst_key=mst_key, model_arch=row["model_arch"], weights=bytes(row["model_weights"]),
        compile_params=config["compile_params"], metrics_type=tuple(config["metrics_type"]) if config.get("metrics_type") else None,
        loss_type=config.get("loss_type"), dependent_varname=dependent,
        independent_varname=_first(summary["independent_varname"]), class_values_column=class_column,
        class_values=tuple(class_values) if class_values is not None else None,
        normalizing_const=float(summary["normalizing_const"] if summary["normalizing_const"] is not None else 1.0),
        object_table_text=summary.get("object_table"), dependent_varnames=dependents,
        independent_varnames=_names(summary["independent_varname"]), class_values_columns=class_columns,
        all_class_values=all_values)


def _companion(db, table: TableName, suffix: str, text: str, argument: str) -> TableName:
    other = table.sibling(table.name + suffix)
    if not identifiers.table_exists(db, other):
        raise ObjectMissing(f"{argument}: {text!r} has no table {str(other)!r}",
                            hint="Pass the model table a training function wrote (its summary and, for several "
                            "models, info tables go with it).")
    return other


def _one_row(db, table: TableName, argument: str) -> dict:
    rows = db.execute(f"SELECT * FROM {table.sql(db)}")
    if len(rows) != 1:
        raise InvalidArgument(f"{argument}: {str(table)!r} must have exactly one row, has {len(rows)}")
    return rows[0]


def _multi(db, table: TableName, text: str, mst_key, argument: str) -> tuple[dict, dict]:
    if mst_key is None:
        keys = [r["mst_key"] for r in db.execute(f"SELECT mst_key FROM {table.sql(db)} ORDER BY mst_key LIMIT 11")]
        shown = ", ".join(map(str, keys[:10])) + (", ..." if len(keys) > 10 else "")
        raise InvalidArgument(f"mst_key: {text!r} holds several models (madlib_keras_fit_multiple_model) but "
                              "mst_key is NULL", hint=f"Choose one with mst_key (one of {shown}).")
    info_table = _companion(db, table, "_info", text, argument)
    rows = db.execute(f"SELECT model_weights, model_arch::text AS model_arch FROM {table.sql(db)} WHERE mst_key = $1",
                      [mst_key], ["integer"])
    if not rows:
        raise InvalidArgument(f"mst_key: {mst_key} is not a model of {text!r}")
    info = db.execute(f"SELECT * FROM {info_table.sql(db)} WHERE mst_key = $1", [mst_key], ["integer"])
    if not info:
        raise InvalidArgument(f"mst_key: {mst_key} has no row in {str(info_table)!r}")
    return rows[0], info[0]


def _single(db, table: TableName, text: str, summary: dict, argument: str) -> tuple[dict, dict]:
    rows = db.execute(f"SELECT model_weights, model_arch::text AS model_arch FROM {table.sql(db)}")
    if len(rows) != 1:
        raise InvalidArgument(f"{argument}: {text!r} has no mst_key column, so it must hold one model (one row), "
                              f"has {len(rows)} rows")
    if summary.get("compile_params") is None:
        raise InvalidArgument(f"{argument}: the summary of {text!r} has no compile_params")
    return rows[0], summary


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) else value


def _names(value) -> tuple:
    """A summary's TEXT[] of variable names (or one name, as TEXT) as a tuple of at least one."""
    names = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    return names or (None,)


def _values(value) -> tuple | None:
    return tuple(value) if value is not None else None


def _key(mst_key) -> str:
    return "" if mst_key is None else f" (mst_key {mst_key})"
