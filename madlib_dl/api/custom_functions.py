"""load_custom_function(), delete_custom_function() and load_top_k_accuracy_function(): the object tables
of custom losses and metrics MADlib users know (custom_functions.py holds the rules of trust).

Only superusers and members of madlib_dl_code_loader may call them; every argument is checked before
anything is written, so a refused call leaves no table and no row.
"""

from __future__ import annotations

from madlib_dl import catalog, custom_functions, db, identifiers
from madlib_dl.api.help import answer
from madlib_dl.custom_functions import LOADER_ROLE
from madlib_dl.errors import InvalidArgument, ObjectExists
from madlib_dl.keras_runtime import params

TABLE_ARGUMENT = "object_table"


@db.sql_function
def load_custom_function(object_table, object, name, description) -> None:  # noqa: A002 (MADlib's name)
    conn = db.current()
    custom_functions.require_loader(conn, "load_custom_function")
    name = function_name(name)
    if object is None:
        raise InvalidArgument("object: expected a dill-pickled function (dill.dumps(f)), got NULL")
    custom_functions.unpickle(bytes(object), "object")
    _add(conn, object_table, name, description, bytes(object))


def function_name(name) -> str:
    if name is None or not str(name).strip():
        raise InvalidArgument("name: expected the name compile_params will use for the function, got "
                              f"{'NULL' if name is None else 'an empty string'}")
    if len(name.encode()) > custom_functions.NAME_LIMIT:
        raise InvalidArgument(f"name: at most {custom_functions.NAME_LIMIT} bytes, got {len(name.encode())}")
    if name in params.LOSSES or name in params.METRICS:
        raise InvalidArgument(f"name: {name!r} is the name of a Keras built-in loss or metric",
                              hint="Choose another name: compile_params would mean the built-in.")
    return name


def _add(conn, object_table, name: str, description, blob: bytes) -> None:
    table = identifiers.named_table(conn, object_table, TABLE_ARGUMENT)
    if table.oid is None:
        conn.execute(custom_functions.CREATE_SQL.format(table=table.sql(conn)))
        table = identifiers.resolve(conn, table)
    ref = custom_functions.check(conn, custom_functions.ObjectTable(table.schema, table.name, table.oid, object_table))
    if name in custom_functions.available(conn, ref):
        raise ObjectExists(f"name: function {name!r} already exists in {object_table!r}",
                           hint="Delete it first with delete_custom_function(), or choose another name.")
    row = conn.execute(f"INSERT INTO {ref.sql(conn)} (name, description, object) VALUES ($1, $2, $3) RETURNING id",
                       [name, description, blob], ["text", "text", "bytea"])[0]
    conn.notice(f"load_custom_function: added function {name!r} (id {row['id']}) to {table.typed_sql(conn)}")


@db.sql_function
def delete_custom_function(object_table, function_id, name) -> None:
    """Delete by id or by name; a table left empty is dropped, as MADlib does."""
    conn = db.current()
    custom_functions.require_loader(conn, "delete_custom_function")
    ref = custom_functions.resolve(conn, object_table, TABLE_ARGUMENT)
    if function_id is None and name is None:
        raise InvalidArgument("id: expected the id (or name) of a function to delete, got NULL")
    where, value, kind = ("id", function_id, "integer") if function_id is not None else ("name", name, "text")
    deleted = conn.execute(f"DELETE FROM ONLY {ref.sql(conn)} WHERE {where} = $1 RETURNING id, name", [value], [kind])
    if not deleted:
        raise InvalidArgument(f"{where}: no function with {where} {value!r} in {object_table!r}")
    done = f"deleted function {deleted[0]['name']!r} (id {deleted[0]['id']})"
    if catalog.is_empty(conn, identifiers.TableName(ref.schema, ref.name)):
        conn.execute(f"DROP TABLE {ref.sql(conn)}")
        conn.notice(f"delete_custom_function: {done}; table {object_table!r} was left empty and has been dropped")
    else:
        conn.notice(f"delete_custom_function: {done} from {object_table!r}")


@db.sql_function
def load_top_k_accuracy_function(object_table, k) -> None:
    conn = db.current()
    custom_functions.require_loader(conn, "load_top_k_accuracy_function")
    if k is None or k < 1:
        raise InvalidArgument(f"k: expected a positive integer, got {'NULL' if k is None else k}")
    import dill

    from madlib_dl.keras_runtime.custom_metrics import TopKAccuracy

    metric = TopKAccuracy(k)
    _add(conn, object_table, metric.__name__, f"top-{k} categorical accuracy", dill.dumps(metric))


# ---- help ------------------------------------------------------------------------------------------

LOAD_SUMMARY = f"""load_custom_function: add a custom loss or metric (a Python function, pickled with dill)
to an object table, creating the table when it does not exist. compile_params then names the function
(loss='my_loss', metrics=['my_metric']) in fit, fit_multiple, evaluate and automl given that object_table.

Only superusers and members of {LOADER_ROLE} may load functions: the code runs as the server's
operating-system user. Any role that can read the table may use its functions.

    SELECT madlib_dl.load_custom_function('custom_functions', <dill.dumps(f)>, 'my_loss', 'my loss');

madlib_dl.load_custom_function('usage') for arguments, table layout and the rules of trust.
"""

LOAD_USAGE = f"""load_custom_function: add a custom loss or metric to an object table.

Usage:
    SELECT madlib_dl.load_custom_function(
        object_table VARCHAR,   -- table to add to; created when missing (schema.table allowed)
        object BYTEA,           -- dill.dumps(f): f(y_true, y_pred) returns a tensor (Keras' loss/metric form)
        name TEXT,              -- the name compile_params uses; not a Keras built-in's name
        description TEXT        -- optional free text
    );

Table layout (MADlib's):
    id SERIAL, name TEXT PRIMARY KEY, description TEXT, object BYTEA

Rules (checked again by every process before it unpickles anything):
    - only superusers and members of {LOADER_ROLE} may load or delete functions (GRANT {LOADER_ROLE} TO <role>);
    - the table's owner must be such a role, no other role may be able to write to it, and it may have no
      triggers; otherwise every use is refused;
    - any role with SELECT on the table may use its functions (GRANT SELECT ON <table> TO <role>).

Example (Python):
    def my_loss(y_true, y_pred):
        import keras
        return keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)
    cur.execute("SELECT madlib_dl.load_custom_function('custom_functions', %s, 'my_loss')",
                (psycopg2.Binary(dill.dumps(my_loss)),))
"""

DELETE_SUMMARY = """delete_custom_function: delete a function from an object table, by id or name; the
table is dropped when its last function is deleted.

    SELECT madlib_dl.delete_custom_function('custom_functions', 'my_loss');

madlib_dl.delete_custom_function('usage') for details.
"""

DELETE_USAGE = f"""delete_custom_function: delete a function from an object table.

Usage:
    SELECT madlib_dl.delete_custom_function(object_table VARCHAR, id INTEGER);
    SELECT madlib_dl.delete_custom_function(object_table VARCHAR, name TEXT);
    An unknown id or name is an error. When the table is left empty it is dropped (a NOTICE says so).
    Superusers and members of {LOADER_ROLE} only.
"""

TOP_K_SUMMARY = """load_top_k_accuracy_function: add the metric top_<k>_accuracy (top-k categorical
accuracy) to an object table.

    SELECT madlib_dl.load_top_k_accuracy_function('custom_functions', 3);  -- metrics=['top_3_accuracy']

madlib_dl.load_top_k_accuracy_function('usage') for details.
"""

TOP_K_USAGE = f"""load_top_k_accuracy_function: add top_<k>_accuracy to an object table.

Usage:
    SELECT madlib_dl.load_top_k_accuracy_function(
        object_table VARCHAR,  -- table to add to; created when missing
        k INTEGER              -- a positive integer
    );
    The function is madlib_dl's own (stored by reference, no code in the table). Superusers and members
    of {LOADER_ROLE} only, as for load_custom_function.
"""


@db.sql_function
def load_custom_function_help(message=None) -> str:
    return answer("load_custom_function", message, LOAD_SUMMARY, LOAD_USAGE)


@db.sql_function
def delete_custom_function_help(message=None) -> str:
    return answer("delete_custom_function", message, DELETE_SUMMARY, DELETE_USAGE)


@db.sql_function
def load_top_k_accuracy_function_help(message=None) -> str:
    return answer("load_top_k_accuracy_function", message, TOP_K_SUMMARY, TOP_K_USAGE)
