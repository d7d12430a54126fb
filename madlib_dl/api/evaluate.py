"""madlib_keras_evaluate(): loss and metric of one trained model on a packed test table.

The model comes from the output of madlib_keras_fit (one model) or madlib_keras_fit_multiple_model
(one per mst_key; trained_models reads both). Every argument is checked before anything runs: the
model, the test table and whether its examples fit the model (shape, classes, class values,
normalizing_const), the output name. The evaluation runs on the test table's segments in parallel
(training/evaluation.py); the one-row output table is written at the end, in the calling transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

import numpy as np

from madlib_dl import catalog, custom_functions, db, identifiers, packed_tables, trained_models
from madlib_dl.api import help as help_topics
from madlib_dl.api.fit_multiple import several_io, show_value
from madlib_dl.errors import InvalidArgument
from madlib_dl.identifiers import TableName
from madlib_dl.keras_runtime import arch_info, builder, params
from madlib_dl.packed_tables import PackedTable
from madlib_dl.trained_models import TrainedModel
from madlib_dl.training import evaluation
from madlib_dl.training.evaluation import Evaluation, EvaluationSpec

NAME = "madlib_keras_evaluate"
PACK_HINT = ("pack the test data with validation_preprocessor_dl(..., training_preprocessor_table => <the model's "
             "training table>)")


@db.sql_function
def evaluate(model_table, test_table, output_table, use_gpus, mst_key) -> None:
    conn = db.current()
    model = trained_models.load(conn, model_table, mst_key)
    where = f"model_table: compile_params of {model.described}"
    model = replace(model, object_table=custom_functions.named(conn, model.object_table_text, where))
    compiled = params.parse_compile_params(model.compile_params, where, custom_functions.available(conn, model.object_table))
    test = packed_tables.describe(conn, test_table, "test_table")
    check_fits(model, test)
    builder.check_size(conn, model.model_arch, f"model_table: the architecture of {model.described}")
    output = identifiers.output_table(conn, output_table, "output_table")
    spec = EvaluationSpec(uuid.uuid4().hex, catalog.extension_schema(conn), test, model, bool(use_gpus), str(output))
    result = evaluation.evaluate(conn, spec)
    write(conn, output, result, model, compiled)


def check_fits(model: TrainedModel, test: PackedTable) -> None:
    """The test table's examples must be what the model was trained on: its input shape and class count,
    and, when both are known, the same class values (in the same order) and normalizing_const."""
    try:
        info = arch_info.read(model.model_arch)
    except InvalidArgument as error:  # the stored architecture, not an argument the caller typed
        raise InvalidArgument(f"model_table: the architecture of {model.described} cannot be read ({error})") from None
    if several_io(info, test):
        _check_several(model, info, test)
        return
    shape = tuple(test.feature_shape)
    if not arch_info.accepts(info.input_shape, shape):
        raise InvalidArgument(f"test_table: {test.text!r} holds examples of shape {arch_info.shape_text(shape)} but the model "
                              f"{model.described} expects input shape {arch_info.shape_text(info.input_shape)}")
    if info.num_classes != test.num_classes:
        raise InvalidArgument(f"test_table: {test.text!r} has {test.num_classes} classes but the model "
                              f"{model.described} has {info.num_classes} outputs")
    if model.class_values is not None and test.class_values is not None and \
            list(model.class_values) != list(test.class_values):
        raise InvalidArgument(f"test_table: its class values {show_value(test.class_values)} differ from the model's "
                              f"{show_value(model.class_values)} (labels would be read as other classes); {PACK_HINT}")
    _check_normalizing(model, test)


def _check_normalizing(model: TrainedModel, test: PackedTable) -> None:
    # Both were stored as REAL: compare them as such, so a value read back through double precision matches.
    if np.float32(test.normalizing_const) != np.float32(model.normalizing_const):
        raise InvalidArgument(f"test_table: {test.text!r} was packed with normalizing_const {test.normalizing_const:g} "
                              f"but the model {model.described} was trained with {model.normalizing_const:g}; "
                              f"{PACK_HINT}")


def _check_several(model: TrainedModel, info: arch_info.ArchInfo, test: PackedTable) -> None:
    """check_fits for a model or table with several inputs or outputs (multi-io)."""
    reason = arch_info.io_mismatch(info, test.feature_shapes, test.output_classes)
    if reason is not None:
        raise InvalidArgument(f"test_table: the model {model.described} {reason} in {test.text!r}")
    for dependent, ours, theirs in zip(test.dependents, model.all_class_values, test.all_class_values):
        if ours is not None and theirs is not None and list(ours) != list(theirs):
            raise InvalidArgument(f"test_table: the class values {show_value(theirs)} of {dependent!r} differ from "
                                  f"the model's {show_value(ours)}; {PACK_HINT}")
    _check_normalizing(model, test)


def write(conn, table: TableName, result: Evaluation, model: TrainedModel, compiled: params.CompileParams) -> None:
    """MADlib's one-row output; the model's recorded metric and loss names, else its compile parameters'."""
    metrics_type = list(model.metrics_type) if model.metrics_type else (list(compiled.metrics) or None)
    columns = ["loss DOUBLE PRECISION", "metric DOUBLE PRECISION", "metrics_type TEXT[]", "loss_type TEXT"]
    values = [result.loss, result.metric, metrics_type, model.loss_type or compiled.loss]
    types = ["double precision", "double precision", "text[]", "text"]
    if result.output_losses is not None:  # several outputs: each one's too, in dependent_varname's order
        columns += ["dependent_varname TEXT[]", "loss_per_output DOUBLE PRECISION[]",
                    "metric_per_output DOUBLE PRECISION[]"]
        values += [list(model.dependent_varnames), list(result.output_losses),
                   list(result.output_metrics) if result.output_metrics is not None else None]
        types += ["text[]", "double precision[]", "double precision[]"]
    conn.execute(f"CREATE TABLE {table.sql(conn)} ({', '.join(columns)})")
    placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    conn.execute(f"INSERT INTO {table.sql(conn)} VALUES ({placeholders})", values, types)


# ---------------------------------------------------------------------------------------------------
# Help

SUMMARY = """madlib_keras_evaluate: loss and metric of a trained model on a packed test table, computed
on the table's segments in parallel (one worker session per segment). The model comes from
madlib_keras_fit (mst_key NULL) or madlib_keras_fit_multiple_model (choose it with mst_key).

For arguments and examples: SELECT madlib_dl.madlib_keras_evaluate('usage');
"""

USAGE = """madlib_keras_evaluate(
    model_table   VARCHAR,  -- output table of madlib_keras_fit or madlib_keras_fit_multiple_model
                            -- (with its _summary, and _info for several models)
    test_table    VARCHAR,  -- packed by training_preprocessor_dl or validation_preprocessor_dl; the same
                            -- example shape, classes and normalizing_const as the model's training data
    output_table  VARCHAR,  -- created; must not exist
    use_gpus      BOOLEAN,  -- DEFAULT FALSE (NULL); one GPU per worker; an error when the server has none
    mst_key       INTEGER   -- DEFAULT NULL; the model of a fit_multiple output table (required there,
                            -- NULL for a madlib_keras_fit table)
) RETURNS VOID

Overloads: (model_table, test_table, output_table [, use_gpus [, mst_key]]).

Output table (one row):
    loss          DOUBLE PRECISION  -- mean over the test examples
    metric        DOUBLE PRECISION  -- the compiled metric's mean; NULL when the model has none
    metrics_type  TEXT[]            -- e.g. {accuracy}
    loss_type     TEXT              -- e.g. categorical_crossentropy

Settings (SET ...): madlib_dl.executor ('auto' | 'workers' | 'in_process'), madlib_dl.worker_idle_timeout,
madlib_dl.worker_threads.

Example:
    SELECT madlib_dl.madlib_keras_evaluate('models', 'digits_test_packed', 'eval_best', FALSE,
        (SELECT mst_key FROM models_info ORDER BY validation_metrics_final DESC LIMIT 1));
    SELECT * FROM eval_best;
"""


@db.sql_function
def evaluate_help(message=None) -> str:
    return help_topics.answer(NAME, message, SUMMARY, USAGE)
