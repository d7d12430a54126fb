"""madlib_keras_predict() and madlib_keras_predict_byom(): score a table of examples with a model.

The test table is not packed: one row per example, its features a numeric array of any shape holding as
many values as the model's input (a REAL[] of 64 feeds an (8, 8, 1) input). Every argument is checked
before the output table is created. The model is built once and kept in this session (a few of them,
keyed by architecture and weights), and the table is streamed through a server-side cursor: each batch
of rows is decoded, normalised, predicted in this session, and its output rows inserted with one bound
statement, so memory does not grow with the table.

Output (MADlib's): ``<output_table> (<id_col> <its type>, class_name TEXT, class_value TEXT,
prob DOUBLE PRECISION, rank INTEGER)``; 'response' leaves out ``rank``.

Models with several inputs or outputs (MADlib's multi-io): ``independent_varname`` lists one column per
input, in the model's input order, and each is fed to Keras as one array of a list; each output is ranked on
its own, its rows named (``class_name``) by its dependent variable.
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
from madlib_dl.preprocess.columns import split_list

BATCH_ROWS = 1000        # rows per fetch, predict and insert: bounds memory, and amortises each call
MODEL_CACHE_SIZE = 3     # models kept in this session (each holds its weights and traced predict function)
OUTPUT_COLUMNS = ("class_name", "class_value", "prob", "rank")
BYOM_CLASS_NAME = "dependent_var"  # MADlib's name for the class of a model brought without a summary
ARCH_COLUMNS = ("model_id", "model_arch", "model_weights")

_models: collections.OrderedDict = collections.OrderedDict()  # (device, arch, sha256 of weights) -> model


@dataclass(frozen=True)
class Output:
    """One output of a model: the name its rows get and the text of each of its classes."""
    class_name: str                   # written in every row's class_name
    class_values: tuple               # text (or None) of each class (unit), in order


@dataclass(frozen=True)
class Model:
    """A model ready to score with, and how to read its outputs. The fields without ``more_`` describe
    its first input and output (a model with one of each has no others)."""
    arch: str
    weights: bytes
    argument: str                     # the argument that named it, for errors
    class_name: str                   # the first output's class_name
    class_values: tuple               # text (or None) of each class of the first output, in order
    normalizing_const: float
    input_shape: tuple[int, ...]      # the first input's
    more_input_shapes: tuple = ()     # the other inputs', in input order (multi-io)
    more_outputs: tuple = ()          # the other outputs (Output), in output order (multi-io)

    @property
    def input_shapes(self) -> tuple:
        return (self.input_shape,) + self.more_input_shapes

    @property
    def outputs(self) -> tuple:
        return (Output(self.class_name, self.class_values),) + self.more_outputs


def _model(arch, weights, argument, input_shapes, outputs, normalizing_const) -> Model:
    return Model(arch, weights, argument, outputs[0].class_name, outputs[0].class_values, normalizing_const,
                 input_shapes[0], tuple(input_shapes[1:]), tuple(outputs[1:]))


@dataclass(frozen=True)
class Request:
    """What to score and where to write it."""
    test: TableName
    id: Column
    id_text: str                      # id_col as the caller wrote it, for messages
    features: tuple                   # one Column per model input, in input order
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
    input_shapes, class_counts = _arch_facts(trained.model_arch, "model_table")
    outputs = _trained_outputs(conn, trained, class_counts)
    model = _model(trained.model_arch, trained.weights, "model_table", input_shapes, outputs,
                   trained.normalizing_const)
    _score(conn, model, request, use_gpus)


@db.sql_function
def madlib_keras_predict_byom(model_arch_table, model_id, test_table, id_col, independent_varname, output_table,
                              pred_type="prob", use_gpus=None, class_values=None, normalizing_const=None,
                              dependent_count=1) -> None:
    conn = db.current()
    const = _normalizing_const(normalizing_const)
    arch, weights = _arch_row(conn, model_arch_table, model_id)
    request = _request(conn, test_table, id_col, independent_varname, output_table, pred_type)
    argument = f"model_arch_table (model_id {model_id})"
    input_shapes, class_counts = _arch_facts(arch, argument)
    _dependent_count(dependent_count, len(class_counts), argument)
    model = _model(arch, weights, argument, input_shapes, _given_outputs(class_values, class_counts), const)
    _score(conn, model, request, use_gpus)


# ---------------------------------------------------------------------------------------------------
# Checks shared by both

def _request(conn, test_table, id_col, independent_varname, output_table, pred_type) -> Request:
    test = catalog.input_table(conn, test_table, "test_table")
    _refuse_packed(conn, test, test_table)
    id_column = catalog.column(conn, test, id_col, "id_col")
    if id_column.name in OUTPUT_COLUMNS:
        raise InvalidArgument(f"id_col: column {id_column.name!r} has the name of an output column "
                              f"({', '.join(OUTPUT_COLUMNS)})", hint=f"Rename it, e.g. in a view over {test}.")
    names = split_list(independent_varname, "independent_varname")
    features = tuple(_feature_column(conn, test, name, len(names) > 1) for name in names)
    output = identifiers.output_table(conn, output_table, "output_table")
    return Request(test, id_column, id_col.strip(), features, output, prediction.parse_pred_type(pred_type))


PACKED_SUMMARY_COLUMNS = ("source_table", "dependent_varname", "independent_varname")


def _refuse_packed(conn, test: TableName, text: str) -> None:
    """A table the preprocessors made (a readable <table>_summary names its variables, whose columns in
    the table are BYTEA buffers) holds many examples a row: predict reads the table it was packed from."""
    source = _packed_from(conn, test)
    if source is not None:
        raise InvalidArgument(f"test_table: {text!r} is a packed table (made by training_preprocessor_dl or "
                              f"validation_preprocessor_dl from {source!r}); predict reads one example per row: "
                              f"pass {source!r}",
                              hint=f"A packed table such as {text!r} is for madlib_keras_evaluate, which scores it.")


def _packed_from(conn, test: TableName) -> str | None:
    """The summary's source_table when ``test`` is a packed table, else None."""
    name = test.name + "_summary"
    summary = test.sibling(name)
    if len(name.encode()) > 63 or not identifiers.table_exists(conn, summary):
        return None
    readable = conn.execute("SELECT pg_catalog.has_table_privilege(pg_catalog.to_regclass($1), 'SELECT') AS ok",
                            [summary.sql(conn)], ["text"])[0]["ok"]
    if not readable or any(c not in catalog.columns(conn, summary) for c in PACKED_SUMMARY_COLUMNS):
        return None
    rows = conn.execute(f"SELECT source_table::text AS source, independent_varname AS independent "
                        f"FROM {summary.sql(conn)} LIMIT 2")
    if len(rows) != 1 or not rows[0]["independent"] or rows[0]["source"] is None:
        return None
    independent = rows[0]["independent"]  # TEXT[]; MADlib's older preprocessor wrote TEXT
    columns = catalog.columns(conn, test)
    buffers = all(columns.get(c) is not None and columns[c].type == "bytea"
                  for c in (independent if isinstance(independent, list) else [independent]))
    return rows[0]["source"] if buffers else None


def _feature_column(conn, test: TableName, name, listed: bool) -> Column:
    features = catalog.column(conn, test, name, "independent_varname")
    if not features.is_numeric_array:
        scalars = listed and features.category == "N"  # one column per feature, as a table often has
        raise InvalidArgument(f"independent_varname: column {features.name!r} of {test} has type {features.type}; "
                              "expected a numeric array such as REAL[] or DOUBLE PRECISION[] (one example per row)"
                              + (", one column per model input" if listed else ""),
                              hint="Make a model input's features one array column, e.g. ARRAY[a, b, c]::REAL[] "
                              "in a view." if scalars else None)
    return features


def _arch_facts(arch: str, argument: str) -> tuple[tuple, tuple[int, ...]]:
    """The shape of each model input and the number of classes of each output, in order."""
    try:
        info = arch_info.read(arch)
    except InvalidArgument as error:
        raise InvalidArgument(f"{argument}: {error}") from None
    for shape in info.input_shapes:
        if any(d is None for d in shape):
            raise NotSupported(f"{argument}: the model's input shape {arch_info.shape_text(shape)} has a free "
                               "dimension; predict needs a fixed input shape to read each row's array into")
    return tuple(tuple(int(d) for d in shape) for shape in info.input_shapes), tuple(info.class_counts)


def _check_input_count(request: Request, model: Model) -> None:
    columns, shapes = request.features, model.input_shapes
    if len(columns) != len(shapes):
        listed = ", ".join(c.name for c in columns)
        raise InvalidArgument(
            f"independent_varname: got {len(columns)} column{'s' if len(columns) > 1 else ''} ({listed}) but the "
            f"model has {len(shapes)} input{'s' if len(shapes) > 1 else ''}; expected {len(shapes)} comma-separated "
            f"array columns, one per input in the model's input order (shapes "
            f"{', '.join(arch_info.shape_text(s) for s in shapes)})")


# ---------------------------------------------------------------------------------------------------
# madlib_keras_predict: a model trained by madlib_keras_fit or madlib_keras_fit_multiple_model

def _trained_outputs(conn, trained, class_counts: tuple[int, ...]) -> list[Output]:
    """Each output named by its dependent variable, with its class values (the summary lists one
    dependent variable per output, in output order)."""
    names = trained.dependent_varnames or (trained.dependent_varname,)
    columns = trained.class_values_columns or (trained.class_values_column,)
    given = trained.all_class_values or (trained.class_values,)
    if len(names) != len(class_counts):
        raise InvalidArgument(f"model_table: the model has {len(class_counts)} outputs but its summary lists "
                              f"{len(names)} dependent variables ({', '.join(map(str, names))}); expected one per "
                              "output, in output order")
    return [Output(name, _trained_class_values(conn, trained, column, values is not None, count))
            for name, column, values, count in zip(names, columns, given, class_counts)]


def _trained_class_values(conn, trained, column: str, known: bool, classes: int) -> tuple:
    """The class of each unit of an output as text, as PostgreSQL writes the label type (true, not True)."""
    if not known:  # labels packed as one-hot arrays: only the index is known
        values = prediction.default_class_values(classes)
    else:
        summary = trained.table.sibling(trained.table.name + "_summary")
        values = conn.execute(f"SELECT {conn.quote_ident(column)}::text[] AS v FROM {summary.sql(conn)}")[0]["v"]
    if len(values) != classes:
        raise InvalidArgument(f"model_table: the model's output has {classes} classes but its summary lists "
                              f"{len(values)} class values in {column}")
    return tuple(values)


# ---------------------------------------------------------------------------------------------------
# madlib_keras_predict_byom: a model from the architecture table, with its weights

def _dependent_count(value, outputs: int, argument: str) -> None:
    """1 (the default, which the INTEGER and DOUBLE PRECISION pred_type overloads pass) or the model's
    number of outputs, as MADlib's dependent_count is the number of dependent variables."""
    if value is None or value == 1 or value == outputs:
        return
    if outputs == 1:
        if value > 1:
            raise NotSupported(f"dependent_count: several outputs are not supported by a model with one output "
                               f"({argument}); expected 1, got {value}")
        raise InvalidArgument(f"dependent_count: expected 1 (the model's one output), got {value}")
    raise InvalidArgument(f"dependent_count: expected {outputs} (the model's {outputs} outputs) or 1, got {value}")


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


def _given_outputs(values, class_counts: tuple[int, ...]) -> list[Output]:
    """The outputs of a byom model: 'dependent_var' for one output, as MADlib; 'dependent_var_0', ... for
    several (MADlib's names with dependent_count > 1), each with its class values."""
    if len(class_counts) == 1:
        return [Output(BYOM_CLASS_NAME, _given_class_values(values, class_counts[0]))]
    names = [f"{BYOM_CLASS_NAME}_{k}" for k in range(len(class_counts))]
    if values is not None and any(isinstance(v, list) for v in values):
        rows = _rows(values, len(class_counts))
        return [Output(n, _given_class_values(_unpadded(r, c), c, k)) for k, (n, r, c) in
                enumerate(zip(names, rows, class_counts))]
    if values is not None and any(c != len(values) for c in class_counts):
        raise InvalidArgument(
            f"class_values: one list of {len(values)} values, but the model's {len(class_counts)} outputs have "
            f"{', '.join(map(str, class_counts))} classes; one list is used for every output only when each has "
            "that many", hint="Give one row per output, padded with NULLs, e.g. ARRAY[ARRAY['a', 'b', 'c'], "
            "ARRAY['x', 'y', NULL]].")
    return [Output(n, _given_class_values(values, c)) for n, c in zip(names, class_counts)]


def _given_class_values(values, classes: int, row: int | None = None) -> tuple:
    """The class values of one output (``row``: its index, for a model with several)."""
    if values is None:
        return tuple(prediction.default_class_values(classes))
    if row is None and any(isinstance(v, list) for v in values):
        values = _unpadded(_rows(values, 1)[0], classes)
        if values is None:
            return tuple(prediction.default_class_values(classes))
    if len(values) != classes and row is None:
        raise InvalidArgument(f"class_values: has {len(values)} values but the model has {classes} outputs",
                              hint=f"Give one per output, in output order, or NULL for 0 to {classes - 1}.")
    if len(values) != classes:
        raise InvalidArgument(f"class_values: row {row + 1} has {len(values)} values but the model's output "
                              f"{row + 1} has {classes} classes",
                              hint=f"Give one per class, in order, or a row of NULLs for 0 to {classes - 1}.")
    return tuple(values)


def _rows(values: list, outputs: int) -> list[list]:
    """MADlib documents class_values as a 2-D array, one row per dependent variable (one per model output),
    each padded with NULLs to the longest row as PostgreSQL arrays are rectangular."""
    depth = 1
    probe = values
    while probe and isinstance(probe[0], list):
        depth, probe = depth + 1, probe[0]
    if depth != 2:
        raise InvalidArgument(f"class_values: expected a one-dimensional array (one value per model output) or a "
                              f"two-dimensional one with one row per dependent variable, got {depth} dimensions")
    if len(values) != outputs and outputs == 1:
        raise InvalidArgument(f"class_values: has {len(values)} rows, one per dependent variable, but "
                              "dependent_count is 1; expected one row, e.g. ARRAY[ARRAY['a', 'b']]",
                              hint="The model has one output.")
    if len(values) != outputs:
        raise InvalidArgument(f"class_values: has {len(values)} rows, one per dependent variable, but the model has "
                              f"{outputs} outputs; expected {outputs} rows, one per output in output order")
    return values


def _unpadded(row: list, classes: int) -> list | None:
    """The row without NULLs past the output's classes; None for a row of NULLs only (MADlib: the default
    0, 1, ...)."""
    row = list(row)
    while len(row) > classes and row[-1] is None:  # padding
        row.pop()
    return None if all(v is None for v in row) else row


# ---------------------------------------------------------------------------------------------------
# Scoring

@dataclass(frozen=True)
class Input:
    """One model input and the test table's column that feeds it."""
    column: Column
    shape: tuple[int, ...]
    index: int                        # in the model's input order
    count: int                        # the model's number of inputs

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def oid(self) -> int | None:
        """real[] and float8[] are sent as they are (real[] cast to float8[] was twice the bytes, and slower)."""
        return binary_arrays.ELEMENT_OIDS.get(self.column.type)

    def expected(self) -> str:
        where = "the model's input shape" if self.count == 1 else f"the shape of the model's input {self.index + 1}"
        return f"{self.size} values ({where} {arch_info.shape_text(self.shape)})"


def _score(conn, model: Model, request: Request, use_gpus) -> None:
    _check_input_count(request, model)
    shapes = model.input_shapes
    inputs = [Input(column, shape, k, len(shapes)) for k, (column, shape) in enumerate(zip(request.features, shapes))]
    builder.check_size(conn, model.arch, f"{model.argument}: model_arch")  # before Keras allocates it
    for item in inputs:
        _check_sizes(conn, request, item)
    device = _device(use_gpus)
    keras_model = _keras_model(model, device)
    _create_output(conn, request)
    insert, types = _insert_sql(conn, request)
    outputs = model.outputs
    class_values, class_names = [o.class_values for o in outputs], [o.class_name for o in outputs]
    tf = tf_setup.tensorflow()
    for rows in conn.batches(_select_sql(conn, request, inputs), size=BATCH_ROWS):
        ids = [r["id"] for r in rows]
        features = [_features(rows, ids, model, request, item) for item in inputs]
        with tf.device(device):
            result = keras_model.predict_on_batch(features[0] if len(features) == 1 else features)
        out = prediction.outputs_rows(ids, _probabilities(result, model, len(ids)), class_values, class_names,
                                      request.pred)
        args = [out.ids, out.class_names, out.class_values, out.probs] + ([out.ranks] if request.pred.has_rank else [])
        conn.execute(insert, args, types)


def _select_sql(conn, request: Request, inputs: list[Input]) -> str:
    q = conn.quote_ident
    arrays = [f"array_send({q(i.column.name)}{'' if i.oid else '::float8[]'}) AS x{i.index}" for i in inputs]
    return f"SELECT {q(request.id.name)}::text AS id, {', '.join(arrays)} FROM {request.test.sql(conn)}"


def _probabilities(result, model: Model, rows: int) -> list[np.ndarray]:
    """Keras' predictions as one (rows, classes) matrix per output, in output order."""
    if isinstance(result, dict):
        result = list(result.values())
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    outputs = model.outputs
    probs = [np.asarray(r, dtype=np.float64).reshape(rows, -1) for r in results]
    widths = [p.shape[1] for p in probs]
    if widths != [len(o.class_values) for o in outputs]:
        raise InvalidArgument(f"{model.argument}: the model predicted {len(probs)} outputs of "
                              f"{', '.join(map(str, widths))} classes; its architecture says "
                              f"{', '.join(str(len(o.class_values)) for o in outputs)}")
    return probs


def _check_sizes(conn, request: Request, item: Input) -> None:
    """Every row's array must hold its model input (checked before anything is created; the stream
    checks each row again, with NULL elements and non-finite values)."""
    q = conn.quote_ident
    x = q(item.column.name)
    rows = conn.execute(f"SELECT count(*) OVER () AS bad, {q(request.id.name)}::text AS id, cardinality({x}) AS n "
                        f"FROM {request.test.sql(conn)} WHERE cardinality({x}) IS DISTINCT FROM $1 LIMIT 1",
                        [item.size], ["integer"])
    if rows:
        bad = rows[0]["bad"]
        found = "is NULL" if rows[0]["n"] is None else f"has {rows[0]['n']} values"
        raise InvalidArgument(f"independent_varname: column {item.column.name!r} of {request.test} must hold "
                              f"{item.expected()} in every row; {bad} row{'s do' if bad > 1 else ' does'} "
                              f"not: the row with {request.id_text} = {_show(rows[0]['id'])} {found}")


def _show(value) -> str:
    return "NULL" if value is None else repr(value)


def _features(rows: list[dict], ids: list, model: Model, request: Request, item: Input) -> np.ndarray:
    try:
        values = prediction.decode_arrays([r[f"x{item.index}"] for r in rows], item.size,
                                          item.oid or binary_arrays.FLOAT8_OID)
    except prediction.RowProblem as problem:
        raise InvalidArgument(f"independent_varname: the array in column {item.column.name!r} of the row with "
                              f"{request.id_text} = {_show(ids[problem.index])} {problem.reason}; expected "
                              f"{item.expected()}, all finite") from None
    normalised = packing.normalize(values, model.normalizing_const)  # as the preprocessor did for training
    return normalised.reshape((len(rows),) + item.shape)


def _create_output(conn, request: Request) -> None:
    columns = [f"{conn.quote_ident(request.id.name)} {request.id.type}", "class_name TEXT", "class_value TEXT",
               "prob DOUBLE PRECISION"] + (["rank INTEGER"] if request.pred.has_rank else [])
    conn.execute(f"CREATE TABLE {request.output.sql(conn)} ({', '.join(columns)})")


def _insert_sql(conn, request: Request) -> tuple[str, list[str]]:
    """One statement per batch: the batch's rows (of every output) as arrays, unnested. Ids travel as text
    and are cast back to the id column's type, which round-trips any type through its text form."""
    rank = request.pred.has_rank
    sql = (f"INSERT INTO {request.output.sql(conn)} SELECT CAST(u.id AS {request.id.type}), u.class_name, "
           "u.class_value, u.prob" + (", u.rank" if rank else "")
           + " FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[]" + (", $5::integer[]" if rank else "")
           + ") AS u(id, class_name, class_value, prob" + (", rank" if rank else "") + ")")
    types = ["text[]", "text[]", "text[]", "double precision[]"] + (["integer[]"] if rank else [])
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
                                      -- model's normalizing_const, as in training. A model with several
                                      -- inputs: one column per input, in input order ('a, b')
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
    A model with several outputs: the rows of each, class_name its dependent variable; pred_type and rank
    apply to each output on its own.

The table is read in batches of 1000 rows through a cursor and predicted in this session; the model is
built once per session.

Examples:
    SELECT madlib_dl.madlib_keras_predict('iris_model', 'iris_test', 'id', 'attributes', 'iris_pred');
    SELECT madlib_dl.madlib_keras_predict('models', 'digits_test', 'id', 'pixels', 'top3', 3, FALSE, 2);
    SELECT madlib_dl.madlib_keras_predict('models', 'digits_test', 'id', 'pixels', 'likely', 0.25, mst_key => 2);
    SELECT madlib_dl.madlib_keras_predict('iris_model', 'iris_mult', 'id', 'attributes, attributes2', 'iris_pred',
                                0.5, FALSE);   -- two inputs, two outputs
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
        independent_varname VARCHAR,  -- numeric array column with as many values as the model's input;
                                      -- several inputs: one column per input, in input order ('a, b')
        output_table        VARCHAR,  -- created
        pred_type           VARCHAR DEFAULT 'prob',  -- as madlib_keras_predict: 'prob', 'response',
                                      -- an integer k >= 1, or a number in [0.0, 1.0)
        use_gpus            BOOLEAN DEFAULT NULL,   -- TRUE: predict on this session's GPU
        class_values        TEXT[] DEFAULT NULL,    -- one per model output, or MADlib's ARRAY[ARRAY[...]]
                                                    -- (one row per dependent variable, i.e. per output of
                                                    -- a model with several, NULL-padded); NULL: '0', '1', ...
                                                    -- One list for several outputs: each must have that many
        normalizing_const   DOUBLE PRECISION DEFAULT NULL,  -- features are divided by it; NULL: 1.0
        dependent_count     INTEGER DEFAULT 1       -- the model's number of outputs (1 is also accepted)
    ) RETURNS VOID
    The INTEGER and DOUBLE PRECISION pred_type overloads take no dependent_count.

Output table:
    <id_col> (its type), class_name TEXT ('dependent_var'; 'dependent_var_0', 'dependent_var_1', ... for
    a model with several outputs), class_value TEXT, prob DOUBLE PRECISION,
    rank INTEGER (1 = most likely, within each output; no rank column for 'response')

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
