"""load_keras_model() and delete_keras_model(): the model architecture table MADlib users know.

The table holds one Keras architecture (``model.to_json()``) per row, optionally with initial weights
in MADlib's flat float32 format, and is what the training functions read their models from. Layout
(MADlib's): model_id SERIAL PRIMARY KEY, model_arch JSON, model_weights BYTEA, name TEXT,
description TEXT, __internal_madlib_id__ TEXT.

Every argument is checked before anything is written, so a refused call leaves no table and no row.
"""

from __future__ import annotations

import json
import uuid

from madlib_dl import catalog, db, identifiers
from madlib_dl.api.help import answer
from madlib_dl.errors import InvalidArgument
from madlib_dl.identifiers import TableName
from madlib_dl.keras_runtime import arch_info, builder, keras2, serialization

TABLE_ARGUMENT = "keras_model_arch_table"

# Columns the functions read or write. __internal_madlib_id__ is MADlib's (it read the new id back
# through it); it is filled when present, but a table without it still works.
REQUIRED_COLUMNS = ("model_id", "model_arch", "model_weights", "name", "description")
INTERNAL_ID_COLUMN = "__internal_madlib_id__"

CREATE_SQL = ("CREATE TABLE {table} (model_id SERIAL PRIMARY KEY, model_arch JSON, model_weights BYTEA, "
              "name TEXT, description TEXT, __internal_madlib_id__ TEXT)")


# ---- load_keras_model ------------------------------------------------------------------------------

@db.sql_function
def load_keras_model(keras_model_arch_table: str | None, model_arch: str | None, model_weights: bytes | None = None,
                     name: str | None = None, description: str | None = None) -> None:
    """Add one architecture (and optional initial weights) to the table, creating the table if missing."""
    conn = db.current()
    table = identifiers.named_table(conn, keras_model_arch_table, TABLE_ARGUMENT)
    _check_arch_readable(model_arch)  # pure JSON checks first: no TensorFlow import for a malformed JSON
    # A Keras 2 JSON (tf.keras 2.x model.to_json(), as MADlib's users have them) is stored translated to
    # Keras 3's form: the table then holds what is built and trained, and a Keras 3 client reads it back
    # with model_from_json. Readers translate too (keras2), for rows copied in from a MADlib table.
    translation = keras2.translate(model_arch)
    if translation.translated:
        model_arch = json.dumps(translation.model)
    existing_columns = _existing_columns(conn, table, keras_model_arch_table)
    builder.check_size(conn, model_arch, "model_arch")  # from the JSON, before Keras allocates anything
    _check_buildable(model_arch, None if model_weights is None else bytes(model_weights))
    if existing_columns is None:
        conn.execute(CREATE_SQL.format(table=table.sql(conn)))
        existing_columns = set(REQUIRED_COLUMNS) | {INTERNAL_ID_COLUMN}
    model_id = _insert(conn, table, existing_columns, model_arch, model_weights, name, description)
    if translation.translated:
        conn.notice(f"load_keras_model: model_arch: {translation.summary()}; model id {model_id} holds the "
                    "translation")
    conn.notice(f"load_keras_model: added model id {model_id} to table {table.typed_sql(conn)}")


def _check_arch_readable(model_arch: str | None) -> arch_info.ArchInfo:
    info = arch_info.read(model_arch)
    reason = arch_info.refusal(info)
    if reason is not None:
        raise InvalidArgument(f"model_arch: {reason}")
    return info


def _check_buildable(model_arch: str, model_weights: bytes | None) -> None:
    """Keras must build the model (safe mode: no Python code in the JSON), and initial weights must
    hold exactly one float32 per weight of that model."""
    model = builder.model_from_json(model_arch, "model_arch")
    if model_weights is not None:
        shapes = [tuple(w.shape) for w in model.get_weights()]
        serialization.deserialize_weights(model_weights, shapes)  # raises, naming model_weights and both counts


def _existing_columns(conn, table: TableName, text: str) -> set[str] | None:
    """The columns of an existing table (None when it does not exist); refuses one that lacks ours."""
    if not identifiers.table_exists(conn, table):
        identifiers.check_schema_exists(conn, table, text, TABLE_ARGUMENT)
        return None
    found = set(catalog.columns(conn, table))
    missing = [c for c in REQUIRED_COLUMNS if c not in found]
    if missing:
        raise InvalidArgument(f"{TABLE_ARGUMENT}: table {text!r} exists but is not a model architecture table: "
                              f"missing column(s) {', '.join(missing)}")
    return found


def _insert(conn, table: TableName, columns: set[str], model_arch: str, model_weights: bytes | None,
            name: str | None, description: str | None) -> int:
    names = ["model_arch", "model_weights", "name", "description"]
    values = [model_arch, model_weights, name, description]
    types = ["json", "bytea", "text", "text"]
    if INTERNAL_ID_COLUMN in columns:
        names.append(INTERNAL_ID_COLUMN)
        values.append(f"madlib_dl_{uuid.uuid4().hex}")
        types.append("text")
    if not _has_default(conn, table, "model_id"):
        # A table made without SERIAL (MADlib 2.1 dropped it): number the model ourselves, under a lock
        # that keeps two concurrent loads from taking the same id.
        conn.execute(f"LOCK TABLE {table.sql(conn)} IN SHARE ROW EXCLUSIVE MODE")
        names.insert(0, "model_id")
        values.insert(0, _next_id(conn, table))
        types.insert(0, "integer")
    placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    column_sql = ", ".join(conn.quote_ident(n) for n in names)
    rows = conn.execute(f"INSERT INTO {table.sql(conn)} ({column_sql}) VALUES ({placeholders}) RETURNING model_id",
                        values, types)
    return int(rows[0]["model_id"])


def _has_default(conn, table: TableName, column: str) -> bool:
    rows = conn.execute("SELECT a.atthasdef OR a.attidentity <> '' AS has_default FROM pg_attribute a "
                        "WHERE a.attrelid = $1::regclass AND a.attname = $2",
                        [table.sql(conn), column], ["text", "text"])
    return bool(rows and rows[0]["has_default"])


def _next_id(conn, table: TableName) -> int:
    rows = conn.execute(f"SELECT coalesce(max(model_id), 0) + 1 AS next_id FROM {table.sql(conn)}")
    return int(rows[0]["next_id"])


# ---- delete_keras_model ----------------------------------------------------------------------------

@db.sql_function
def delete_keras_model(keras_model_arch_table: str | None, model_id: int | None) -> None:
    """Delete one model; a table left empty is dropped, as MADlib does."""
    conn = db.current()
    table = catalog.input_table(conn, keras_model_arch_table, TABLE_ARGUMENT)
    _existing_columns(conn, table, keras_model_arch_table)
    if model_id is None:
        raise InvalidArgument("model_id: expected the id of a model to delete, got NULL")
    deleted = conn.execute(f"DELETE FROM {table.sql(conn)} WHERE model_id = $1 RETURNING model_id",
                           [model_id], ["integer"])
    if not deleted:
        raise InvalidArgument(f"model_id: no model with id {model_id} in table {table.typed_sql(conn)}")
    if catalog.is_empty(conn, table):
        conn.execute(f"DROP TABLE {table.sql(conn)}")
        conn.notice(f"delete_keras_model: deleted model id {model_id}; table {table.typed_sql(conn)} "
                    "was left empty and has been dropped")
    else:
        conn.notice(f"delete_keras_model: deleted model id {model_id} from table {table.typed_sql(conn)}")


# ---- help ------------------------------------------------------------------------------------------

LOAD_SUMMARY = """load_keras_model: add a Keras model architecture (and optional initial weights) to a
model architecture table, creating the table when it does not exist. The training functions read
their models from this table by model_id.

    SELECT madlib_dl.load_keras_model('model_arch_library', $$<model.to_json()>$$::json);

madlib_dl.load_keras_model('usage') for arguments, table layout and examples; madlib_dl.delete_keras_model() to remove one.
"""

LOAD_USAGE = """load_keras_model: add a Keras model architecture to a model architecture table.

Usage:
    SELECT madlib_dl.load_keras_model(
        keras_model_arch_table VARCHAR,  -- table to add to; created when missing (schema.table allowed)
        model_arch JSON,                 -- the model's model.to_json() (Keras 3); it must have an input
                                         -- shape (e.g. keras.Input(shape=(4,))) and end in a Dense layer
        model_weights BYTEA,             -- optional initial weights: the arrays of model.get_weights(),
                                         -- flattened, concatenated, little-endian float32 (NULL: none)
        name TEXT,                       -- optional free text
        description TEXT                 -- optional free text
    );
    The last three arguments may be left out (NULL). A NOTICE gives the new model_id.

Table layout:
    model_id SERIAL PRIMARY KEY, model_arch JSON, model_weights BYTEA, name TEXT, description TEXT,
    __internal_madlib_id__ TEXT

Checks: Keras must be able to build the architecture (Lambda layers, which carry Python code, are
refused); the weights must hold exactly one value per weight of that model.

Examples:
    -- in Python: model.to_json(); weights: np.concatenate([w.ravel() for w in model.get_weights()])
    --           .astype('<f4').tobytes()
    SELECT madlib_dl.load_keras_model('model_arch_library', $$<json>$$::json);
    SELECT madlib_dl.load_keras_model('model_arch_library', $$<json>$$::json, NULL, 'iris MLP', '4-10-3');
    SELECT model_id, name, description FROM model_arch_library;
"""

DELETE_SUMMARY = """delete_keras_model: delete one model from a model architecture table; the table
is dropped when its last model is deleted.

    SELECT madlib_dl.delete_keras_model('model_arch_library', 1);

madlib_dl.delete_keras_model('usage') for details.
"""

DELETE_USAGE = """delete_keras_model: delete one model from a model architecture table.

Usage:
    SELECT madlib_dl.delete_keras_model(
        keras_model_arch_table VARCHAR,  -- the table load_keras_model wrote
        model_id INTEGER                 -- the model to delete
    );
    An unknown model_id is an error. When the table is left empty it is dropped (a NOTICE says so).

Example:
    SELECT madlib_dl.delete_keras_model('model_arch_library', 2);
"""


@db.sql_function
def load_keras_model_help(message: str | None = None) -> str:
    return answer("load_keras_model", message, LOAD_SUMMARY, LOAD_USAGE)


@db.sql_function
def delete_keras_model_help(message: str | None = None) -> str:
    return answer("delete_keras_model", message, DELETE_SUMMARY, DELETE_USAGE)
