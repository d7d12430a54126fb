"""madlib_keras_predict() and madlib_keras_predict_byom(): score a table of examples with a model.

The test table is not packed: one row per example, its features a numeric array of any shape holding as
many values as the model's input (a REAL[] of 64 feeds an (8, 8, 1) input). Every argument is checked
before the output table is created. The model is built once and kept in this session (a few of them,
keyed by architecture and weights), and the table is streamed through a server-side cursor: each batch
of rows is decoded, normalised, predicted in this session, and its output rows inserted with one bound
statement, so memory does not grow with the table.

Output (MADlib's): ``<output_table> (<id_col> <its type>, class_name TEXT, class_value TEXT,
prob DOUBLE PRECISION, rank INTEGER)``; 'response' leaves out ``rank``.
"""

from __future__ import annotations

import collections
import hashlib
import math
import os
from dataclasses import dataclass

import numpy as np

from madlib_dl import binary_arrays, catalog, db, identifiers, trained_models
from madlib_dl.api import help as help_topics
from madlib_dl.catalog import Column
from madlib_dl.errors import InvalidArgument, NotSupported
from madlib_dl.identifiers import TableName
from madlib_dl.keras_runtime import arch_info, builder, model_state, prediction, tf_setup
from madlib_dl.keras_runtime.prediction import PredType
from madlib_dl.preprocess import packing

BATCH_ROWS = 1000        # rows per fetch, predict and insert: bounds memory, and amortises each call
MODEL_CACHE_SIZE = 3     # models kept in this session (each holds its weights and traced predict function)
OUTPUT_COLUMNS = ("class_name", "class_value", "prob", "rank")
BYOM_CLASS_NAME = "dependent_var"  # MADlib's name for the class of a model brought without a summary
ARCH_COLUMNS = ("model_id", "model_arch", "model_weights")

_models: collections.OrderedDict = collections.OrderedDict()  # (device, arch, sha256 of weights) -> model


@dataclass(frozen=True)
class Model:
    """A model ready to score with, and how to read its outputs."""
    arch: str
    weights: bytes
    argument: str                     # the argument that named it, for errors
    class_name: str                   # written in every row's class_name
    class_values: tuple               # text (or None) of each output, in output order
    normalizing_const: float
    input_shape: tuple[int, ...]


@dataclass(frozen=True)
class Request:
    """What to score and where to write it."""
    test: TableName
    id: Column
    id_text: str                      # id_col as the caller wrote it, for messages
    features: Column
    output: TableName
    pred: PredType


# ---------------------------------------------------------------------------------------------------
# Entry points

@db.sql_function
def madlib_keras_predict(model_table, test_table, id_col, independent_varname, output_table, pred_type="prob",
                         use_gpus=False, mst_key=None) -> None:
    conn = db.current()
    trained = trained_models.load(conn, model_table, mst_key)
    request = _request(conn, test_table, id_col, independent_varname, output_table, pred_type)
    input_shape, outputs = _arch_facts(trained.model_arch, "model_table")
    model = Model(trained.model_arch, trained.weights, "model_table", trained.dependent_varname,
                  _trained_class_values(conn, trained, outputs), trained.normalizing_const, input_shape)
    _score(conn, model, request, use_gpus)


@db.sql_function
def madlib_keras_predict_byom(model_arch_table, model_id, test_table, id_col, independent_varname, output_table,
                              pred_type="prob", use_gpus=None, class_values=None, normalizing_const=None,
                              dependent_count=1) -> None:
    conn = db.current()
    _dependent_count(dependent_count)
    const = _normalizing_const(normalizing_const)
    arch, weights = _arch_row(conn, model_arch_table, model_id)
    request = _request(conn, test_table, id_col, independent_varname, output_table, pred_type)
    argument = f"model_arch_table (model_id {model_id})"
    input_shape, outputs = _arch_facts(arch, argument)
    model = Model(arch, weights, argument, BYOM_CLASS_NAME, _given_class_values(class_values, outputs), const,
                  input_shape)
    _score(conn, model, request, use_gpus)


# ---------------------------------------------------------------------------------------------------
# Checks shared by both

def _request(conn, test_table, id_col, independent_varname, output_table, pred_type) -> Request:
    test = catalog.input_table(conn, test_table, "test_table")
    id_column = catalog.column(conn, test, id_col, "id_col")
    if id_column.name in OUTPUT_COLUMNS:
        raise InvalidArgument(f"id_col: column {id_column.name!r} has the name of an output column "
                              f"({', '.join(OUTPUT_COLUMNS)})", hint=f"Rename it, e.g. in a view over {test}.")
    features = catalog.column(conn, test, independent_varname, "independent_varname")
    if not features.is_numeric_array:
        raise InvalidArgument(f"independent_varname: column {features.name!r} of {test} has type {features.type}; "
                              "expected a numeric array such as REAL[] or DOUBLE PRECISION[] (one example per row)")
    output = identifiers.output_table(conn, output_table, "output_table")
    return Request(test, id_column, id_col.strip(), features, output, prediction.parse_pred_type(pred_type))


def _arch_facts(arch: str, argument: str) -> tuple[tuple[int, ...], int]:
    """The model's input shape and number of outputs; one input and one output only."""
    try:
        info = arch_info.read(arch)
    except InvalidArgument as error:
        raise InvalidArgument(f"{argument}: {error}") from None
    if len(info.input_shapes) != 1 or len(info.class_counts) != 1:
        raise NotSupported(f"{argument}: the model has {len(info.input_shapes)} inputs and {len(info.class_counts)} "
                           "outputs; models with several inputs or outputs are not supported yet")
    if any(d is None for d in info.input_shape):
        raise NotSupported(f"{argument}: the model's input shape {arch_info.shape_text(info.input_shape)} has a free dimension; "
                           "predict needs a fixed input shape to read each row's array into")
    return tuple(int(d) for d in info.input_shape), info.num_classes


# ---------------------------------------------------------------------------------------------------
# madlib_keras_predict: a model trained by madlib_keras_fit or madlib_keras_fit_multiple_model

def _trained_class_values(conn, trained, outputs: int) -> tuple:
    """The class of each output as text, as PostgreSQL writes the label type (true, not True)."""
    if trained.class_values is None:  # labels packed as one-hot arrays: only the index is known
        values = prediction.default_class_values(outputs)
    else:
        summary = trained.table.sibling(trained.table.name + "_summary")
        column = conn.quote_ident(trained.class_values_column)
        values = conn.execute(f"SELECT {column}::text[] AS v FROM {summary.sql(conn)}")[0]["v"]
    if len(values) != outputs:
        raise InvalidArgument(f"model_table: the model has {outputs} outputs but its summary lists {len(values)} "
                              f"class values in {trained.class_values_column}")
    return tuple(values)


# ---------------------------------------------------------------------------------------------------
# madlib_keras_predict_byom: a model from the architecture table, with its weights

def _dependent_count(value) -> None:
    if value is None or value == 1:
        return
    if value > 1:
        raise NotSupported(f"dependent_count: models with several outputs are not supported yet; expected 1, "
                           f"got {value}")
    raise InvalidArgument(f"dependent_count: expected 1 (the model's one output), got {value}")


def _normalizing_const(value) -> float:
    if value is None:
        return 1.0
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"normalizing_const: expected a positive number (features are divided by it) or "
                              f"NULL for 1.0, got {value}")
    return float(value)


def _arch_row(conn, model_arch_table, model_id) -> tuple[str, bytes]:
    table = catalog.input_table(conn, model_arch_table, "model_arch_table")
    missing = [c for c in ARCH_COLUMNS if c not in catalog.columns(conn, table)]
    if missing:
        raise InvalidArgument(f"model_arch_table: {model_arch_table!r} is not a model architecture table (no column "
                              f"{', '.join(missing)})", hint="Make one with load_keras_model().")
    if model_id is None:
        raise InvalidArgument(f"model_id: expected the id of a model in {table}, got NULL")
    rows = conn.execute(f"SELECT model_arch::text AS model_arch, model_weights FROM {table.sql(conn)} "
                        "WHERE model_id = $1", [model_id], ["integer"])
    if not rows:
        raise InvalidArgument(f"model_id: no model with id {model_id} in table {table}")
    if rows[0]["model_arch"] is None:
        raise InvalidArgument(f"model_id: model {model_id} of {table} has no architecture (model_arch is NULL)")
    if rows[0]["model_weights"] is None:
        raise InvalidArgument(f"model_id: model {model_id} of {table} has no weights (model_weights is NULL); "
                              "predict_byom scores with trained weights: load them with "
                              "load_keras_model(table, model_arch, model_weights)")
    return rows[0]["model_arch"], bytes(rows[0]["model_weights"])


def _given_class_values(values, outputs: int) -> tuple:
    if values is None:
        return tuple(prediction.default_class_values(outputs))
    if any(isinstance(v, list) for v in values):
        values = _one_row(values, outputs)
        if values is None:
            return tuple(prediction.default_class_values(outputs))
    if len(values) != outputs:
        raise InvalidArgument(f"class_values: has {len(values)} values but the model has {outputs} outputs",
                              hint=f"Give one per output, in output order, or NULL for 0 to {outputs - 1}.")
    return tuple(values)


def _one_row(values: list, outputs: int) -> list | None:
    """MADlib documents class_values as a 2-D array, one row per dependent variable (dependent_count rows,
    here 1), each padded with NULLs to the longest row as PostgreSQL arrays are rectangular: the one row,
    without NULLs past the model's outputs; None for a row of NULLs only (MADlib: the default 0, 1, ...)."""
    depth = 1
    probe = values
    while probe and isinstance(probe[0], list):
        depth, probe = depth + 1, probe[0]
    if depth != 2:
        raise InvalidArgument(f"class_values: expected a one-dimensional array (one value per model output) or a "
                              f"two-dimensional one with one row per dependent variable, got {depth} dimensions")
    if len(values) != 1:
        raise InvalidArgument(f"class_values: has {len(values)} rows, one per dependent variable, but "
                              "dependent_count is 1; expected one row, e.g. ARRAY[ARRAY['a', 'b']]",
                              hint="Models with several outputs are not supported yet.")
    row = list(values[0])
    while len(row) > outputs and row[-1] is None:  # padding
        row.pop()
    return None if all(v is None for v in row) else row


# ---------------------------------------------------------------------------------------------------
# Scoring

def _score(conn, model: Model, request: Request, use_gpus) -> None:
    size = int(np.prod(model.input_shape))
    builder.check_size(conn, model.arch, f"{model.argument}: model_arch")  # before Keras allocates it
    _check_sizes(conn, request, model, size)
    device = _device(use_gpus)
    keras_model = _keras_model(model, device)
    _create_output(conn, request)
    q = conn.quote_ident
    # real[] and float8[] are sent as they are (real[] cast to float8[] was twice the bytes, and slower)
    oid = binary_arrays.ELEMENT_OIDS.get(request.features.type)
    x = q(request.features.name) if oid else f"{q(request.features.name)}::float8[]"
    select = f"SELECT {q(request.id.name)}::text AS id, array_send({x}) AS x FROM {request.test.sql(conn)}"
    insert, types = _insert_sql(conn, request)
    tf = tf_setup.tensorflow()
    for rows in conn.batches(select, size=BATCH_ROWS):
        ids = [r["id"] for r in rows]
        features = _features(rows, ids, model, request, size, oid or binary_arrays.FLOAT8_OID)
        with tf.device(device):
            probs = np.asarray(keras_model.predict_on_batch(features), dtype=np.float64)
        out = prediction.output_rows(ids, probs.reshape(len(ids), -1), model.class_values, request.pred)
        args = [out.ids, model.class_name, out.class_values, out.probs] + ([out.ranks] if request.pred.has_rank else [])
        conn.execute(insert, args, types)


def _check_sizes(conn, request: Request, model: Model, size: int) -> None:
    """Every row's array must hold the model's input (checked before anything is created; the stream
    checks each row again, with NULL elements and non-finite values)."""
    q = conn.quote_ident
    x = q(request.features.name)
    rows = conn.execute(f"SELECT count(*) OVER () AS bad, {q(request.id.name)}::text AS id, cardinality({x}) AS n "
                        f"FROM {request.test.sql(conn)} WHERE cardinality({x}) IS DISTINCT FROM $1 LIMIT 1",
                        [size], ["integer"])
    if rows:
        bad = rows[0]["bad"]
        found = "is NULL" if rows[0]["n"] is None else f"has {rows[0]['n']} values"
        raise InvalidArgument(f"independent_varname: column {request.features.name!r} of {request.test} must hold "
                              f"{_expected(model, size)} in every row; {bad} row{'s do' if bad > 1 else ' does'} "
                              f"not: the row with {request.id_text} = {_show(rows[0]['id'])} {found}")


def _expected(model: Model, size: int) -> str:
    return f"{size} values (the model's input shape {arch_info.shape_text(model.input_shape)})"


def _show(value) -> str:
    return "NULL" if value is None else repr(value)


def _features(rows: list[dict], ids: list, model: Model, request: Request, size: int, oid: int) -> np.ndarray:
    try:
        values = prediction.decode_arrays([r["x"] for r in rows], size, oid)
    except prediction.RowProblem as problem:
        raise InvalidArgument(f"independent_varname: the array in column {request.features.name!r} of the row with "
                              f"{request.id_text} = {_show(ids[problem.index])} {problem.reason}; expected "
                              f"{_expected(model, size)}, all finite") from None
    normalised = packing.normalize(values, model.normalizing_const)  # as the preprocessor did for training
    return normalised.reshape((len(rows),) + model.input_shape)


def _create_output(conn, request: Request) -> None:
    columns = [f"{conn.quote_ident(request.id.name)} {request.id.type}", "class_name TEXT", "class_value TEXT",
               "prob DOUBLE PRECISION"] + (["rank INTEGER"] if request.pred.has_rank else [])
    conn.execute(f"CREATE TABLE {request.output.sql(conn)} ({', '.join(columns)})")


def _insert_sql(conn, request: Request) -> tuple[str, list[str]]:
    """One statement per batch: the batch's rows as arrays, unnested. Ids travel as text and are cast
    back to the id column's type, which round-trips any type through its text form."""
    rank = request.pred.has_rank
    sql = (f"INSERT INTO {request.output.sql(conn)} SELECT CAST(u.id AS {request.id.type}), $2, u.class_value, u.prob"
           + (", u.rank" if rank else "")
           + " FROM unnest($1::text[], $3::text[], $4::float8[]" + (", $5::integer[]" if rank else "")
           + ") AS u(id, class_value, prob" + (", rank" if rank else "") + ")")
    types = ["text[]", "text", "text[]", "double precision[]"] + (["integer[]"] if rank else [])
    return sql, types


# ---------------------------------------------------------------------------------------------------
# Keras in this session

def _device(use_gpus) -> str:
    """The TensorFlow device to predict on. FALSE (or NULL) before TensorFlow starts in this session hides
    the GPUs from it, as fit_multiple does for its workers, so the session never takes GPU memory."""
    if not use_gpus:
        if not tf_setup.started():
            os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
        return "/CPU:0"
    fresh = not tf_setup.started()
    tf = tf_setup.tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES") == "-1"
        if hidden:
            raise InvalidArgument("use_gpus: TRUE, but an earlier call in this session (use_gpus FALSE) hid the "
                                  "GPUs from TensorFlow", hint="Use a new session.")
        raise InvalidArgument("use_gpus: TRUE, but TensorFlow sees no GPU on the database host",
                              hint="Use use_gpus => FALSE.")
    if fresh:  # take GPU memory as needed rather than nearly all of it, as TensorFlow would by default
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # already initialised: the setting no longer applies
                pass
    return "/GPU:0"


def _keras_model(model: Model, device: str):
    """The model built with its weights, from this session's cache when it was built before."""
    key = (device, model.arch, hashlib.sha256(model.weights).hexdigest())
    keras_model = _models.get(key)
    if keras_model is not None:
        _models.move_to_end(key)
        return keras_model
    tf = tf_setup.tensorflow()
    with tf.device(device):
        keras_model = builder.model_from_json(model.arch, f"{model.argument}: model_arch")
        try:
            model_state.set_weights(keras_model, model.weights)
        except InvalidArgument as error:
            raise InvalidArgument(f"{model.argument}: {error}") from None
    _models[key] = keras_model
    while len(_models) > MODEL_CACHE_SIZE:
        _models.popitem(last=False)
    return keras_model


# ---------------------------------------------------------------------------------------------------
# Help

PREDICT_SUMMARY = """madlib_keras_predict: score a table of examples (one row each, not packed) with a model
trained by madlib_keras_fit or madlib_keras_fit_multiple_model, writing each example's class
probabilities, ranked, to a new table.

    SELECT madlib_dl.madlib_keras_predict('models', 'digits_test', 'id', 'pixels', 'digits_pred', 'response',
                                FALSE, 3);

madlib_dl.madlib_keras_predict('usage') for arguments, output and examples.
"""

PREDICT_USAGE = """madlib_keras_predict: score a table of examples with a trained model.

Usage:
    SELECT madlib_dl.madlib_keras_predict(
        model_table         VARCHAR,  -- output table of madlib_keras_fit or madlib_keras_fit_multiple_model
        test_table          VARCHAR,  -- one example per row (not packed)
        id_col              VARCHAR,  -- the examples' id column, copied to the output with its type
        independent_varname VARCHAR,  -- numeric array column with as many values as the model's input
                                      -- (a REAL[] of 64 feeds an (8, 8, 1) input); divided by the
                                      -- model's normalizing_const, as in training
        output_table        VARCHAR,  -- created
        pred_type           VARCHAR DEFAULT 'prob',
                                      -- 'prob': every class with its probability and rank
                                      -- 'response': the most likely class (no rank column)
                                      -- integer k >= 1: the k most likely classes
                                      -- number in [0.0, 1.0): the classes whose probability is above it
                                      -- (also as text: '3', '0.5'; INTEGER and DOUBLE PRECISION overloads)
        use_gpus            BOOLEAN DEFAULT FALSE,  -- predict on this session's GPU; an error without one
        mst_key             INTEGER DEFAULT NULL    -- which model of a madlib_keras_fit_multiple_model table
    ) RETURNS VOID

Output table:
    <id_col> (its type), class_name TEXT (the dependent variable), class_value TEXT, prob DOUBLE PRECISION,
    rank INTEGER (1 = most likely; equal probabilities rank the lower class index first)

The table is read in batches of 1000 rows through a cursor and predicted in this session; the model is
built once per session.

Examples:
    SELECT madlib_dl.madlib_keras_predict('iris_model', 'iris_test', 'id', 'attributes', 'iris_pred');
    SELECT madlib_dl.madlib_keras_predict('models', 'digits_test', 'id', 'pixels', 'top3', 3, FALSE, 2);
    SELECT madlib_dl.madlib_keras_predict('models', 'digits_test', 'id', 'pixels', 'likely', 0.25, mst_key => 2);
"""

BYOM_SUMMARY = """madlib_keras_predict_byom: score a table of examples (one row each, not packed) with a model
brought from elsewhere: its architecture and trained weights in a model architecture table
(load_keras_model), writing each example's class probabilities, ranked, to a new table.

    SELECT madlib_dl.madlib_keras_predict_byom('model_arch_library', 1, 'iris_test', 'id', 'attributes', 'iris_pred',
                                     'response', NULL, ARRAY['setosa', 'versicolor', 'virginica']);

madlib_dl.madlib_keras_predict_byom('usage') for arguments, output and examples.
"""

BYOM_USAGE = """madlib_keras_predict_byom: score a table of examples with a model of an architecture table.

Usage:
    SELECT madlib_dl.madlib_keras_predict_byom(
        model_arch_table    VARCHAR,  -- table of load_keras_model
        model_id            INTEGER,  -- the model; its model_weights must be set (trained weights)
        test_table          VARCHAR,  -- one example per row (not packed)
        id_col              VARCHAR,  -- the examples' id column, copied to the output with its type
        independent_varname VARCHAR,  -- numeric array column with as many values as the model's input
        output_table        VARCHAR,  -- created
        pred_type           VARCHAR DEFAULT 'prob',  -- as madlib_keras_predict: 'prob', 'response',
                                      -- an integer k >= 1, or a number in [0.0, 1.0)
        use_gpus            BOOLEAN DEFAULT NULL,   -- TRUE: predict on this session's GPU
        class_values        TEXT[] DEFAULT NULL,    -- one per model output, or MADlib's ARRAY[ARRAY[...]]
                                                    -- (one row per dependent variable); NULL: '0', '1', ...
        normalizing_const   DOUBLE PRECISION DEFAULT NULL,  -- features are divided by it; NULL: 1.0
        dependent_count     INTEGER DEFAULT 1       -- only 1 (models with several outputs: not yet)
    ) RETURNS VOID
    The INTEGER and DOUBLE PRECISION pred_type overloads take no dependent_count.

Output table:
    <id_col> (its type), class_name TEXT ('dependent_var'), class_value TEXT, prob DOUBLE PRECISION,
    rank INTEGER (1 = most likely; no rank column for 'response')

Examples:
    SELECT madlib_dl.madlib_keras_predict_byom('model_arch_library', 1, 'iris_test', 'id', 'attributes', 'iris_pred');
    SELECT madlib_dl.madlib_keras_predict_byom('model_arch_library', 2, 'digits_test', 'id', 'pixels', 'digits_pred',
                                     'response', FALSE, NULL, 16.0);
"""


@db.sql_function
def predict_help(message=None) -> str:
    return help_topics.answer("madlib_keras_predict", message, PREDICT_SUMMARY, PREDICT_USAGE)


@db.sql_function
def predict_byom_help(message=None) -> str:
    return help_topics.answer("madlib_keras_predict_byom", message, BYOM_SUMMARY, BYOM_USAGE)
