"""load_keras_model / delete_keras_model in a real server: the table MADlib users know, every overload as
a user would type it, and one clear error per bad argument with nothing created or changed."""

import re
import time

import numpy as np
import psycopg2
import pytest

from madlib_dl.keras_runtime import serialization, tf_setup

keras = tf_setup.keras()
L = keras.layers
DB = "it_model_arch"


def _iris_mlp():
    return keras.Sequential([keras.Input((4,)), L.Dense(10, activation="relu"), L.Dense(3, activation="softmax")])


def _conv_net():
    inputs = keras.Input((8, 8, 1))
    x = L.Flatten()(L.Conv2D(4, 3, activation="relu")(inputs))
    return keras.Model(inputs, L.Dense(10, activation="softmax")(x))


IRIS = _iris_mlp()
IRIS_JSON = IRIS.to_json()
IRIS_WEIGHTS = serialization.serialize_weights(IRIS.get_weights())
IRIS_WEIGHT_COUNT = 4 * 10 + 10 + 10 * 3 + 3
CONV_JSON = _conv_net().to_json()
LAMBDA_JSON = keras.Sequential([keras.Input((4,)), L.Lambda(lambda t: t * 2), L.Dense(3)]).to_json()
NO_INPUT_JSON = keras.Sequential([L.Dense(10), L.Dense(3)]).to_json()
NO_DENSE_JSON = keras.Sequential([keras.Input((4, 2)), L.Flatten()]).to_json()
UNKNOWN_LAYER_JSON = ('{"module": "keras", "class_name": "Sequential", "config": {"name": "s", "layers": ['
                      '{"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [null, 4]}}, '
                      '{"module": "keras.layers", "class_name": "NoSuchLayer", "config": {"units": 3}}]}}')
# Keras 2 JSON is translated (tests/integration/test_keras2_compat.py); a layer without translation is refused
KERAS2_JSON = ('{"class_name": "Sequential", "keras_version": "2.10.0", "backend": "tensorflow", "config": {'
               '"name": "s", "layers": [{"class_name": "ConvLSTM1D", "config": {"name": "clstm", "filters": 3, '
               '"batch_input_shape": [null, 2, 4]}}, {"class_name": "Dense", "config": {"units": 3}}]}}')

LOAD = "SELECT madlib_dl.load_keras_model(%s, %s::json, %s)"
COLUMNS = [("model_id", "integer"), ("model_arch", "json"), ("model_weights", "bytea"), ("name", "text"),
           ("description", "text"), ("__internal_madlib_id__", "text")]


@pytest.fixture(scope="module")
def database(server):
    with server.fresh_database(DB) as name:  # a database of its own: other modules' tables stay apart
        yield name


@pytest.fixture(scope="module")
def connection(server, database):
    """One backend for the module's tests: TensorFlow is imported once, not once per test."""
    with server.connect(database) as conn:
        yield conn


@pytest.fixture
def db(connection):
    """A cursor on an empty public schema; the connection's notices are in cur.connection.notices."""
    with connection.cursor() as cursor:
        # Drop the tables, not the schema: dropping public would take the extension along.
        cursor.execute("SELECT format('DROP TABLE %I CASCADE', tablename) FROM pg_tables WHERE schemaname = 'public'")
        for (drop,) in cursor.fetchall():
            cursor.execute(drop)
        cursor.execute("DROP SCHEMA IF EXISTS s1 CASCADE")
        del connection.notices[:]
        yield cursor


def _notices(cur):
    notices = [n.strip() for n in cur.connection.notices]
    del cur.connection.notices[:]
    return notices


def _exists(cur, table):
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
    return cur.fetchone()[0]


def _rows(cur, table="arch"):
    cur.execute(f"SELECT model_id, model_arch::text, model_weights, name, description FROM {table} ORDER BY 1")
    return [(i, a, None if w is None else bytes(w), n, d) for i, a, w, n, d in cur.fetchall()]


def _error(cur, sql, args=None):
    """(SQLSTATE, message) of a statement that must fail."""
    with pytest.raises(psycopg2.Error) as caught:
        cur.execute(sql, args)
    return caught.value.pgcode, caught.value.diag.message_primary


# ---- loading ---------------------------------------------------------------------------------------

def test_load_creates_madlibs_table_and_numbers_models(db):
    db.execute("SELECT madlib_dl.load_keras_model('arch', %s::json)", [IRIS_JSON])
    assert _notices(db) == ["NOTICE:  load_keras_model: added model id 1 to table arch"]
    db.execute("SELECT madlib_dl.load_keras_model('arch', %s::json)", [CONV_JSON])
    assert _notices(db) == ["NOTICE:  load_keras_model: added model id 2 to table arch"]
    db.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
               "WHERE attrelid = 'arch'::regclass AND attnum > 0 ORDER BY attnum")
    assert db.fetchall() == COLUMNS
    db.execute("SELECT pg_get_serial_sequence('arch', 'model_id') IS NOT NULL, "
               "(SELECT array_agg(a.attname) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
               " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'arch'::regclass AND i.indisprimary)")
    assert db.fetchone() == (True, ["model_id"])
    rows = _rows(db)
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [(1, None, None, None), (2, None, None, None)]
    assert rows[0][1] == IRIS_JSON and rows[1][1] == CONV_JSON  # the JSON text is kept as given
    db.execute("SELECT count(DISTINCT __internal_madlib_id__), count(*) FROM arch")
    assert db.fetchone() == (2, 2)


def test_every_overload_stores_its_arguments(db):
    db.execute("SELECT madlib_dl.load_keras_model('arch', %s::json, %s)", [IRIS_JSON, IRIS_WEIGHTS])
    db.execute("SELECT madlib_dl.load_keras_model('arch', %s::json, NULL, 'iris mlp')", [IRIS_JSON])
    db.execute("SELECT madlib_dl.load_keras_model('arch', %s::json, %s, 'iris', '4-10-3 MLP')",
               [IRIS_JSON, IRIS_WEIGHTS])
    db.execute("SELECT madlib_dl.load_keras_model(description => 'named arguments', name => NULL, "
               "model_weights => NULL, model_arch => %s::json, keras_model_arch_table => 'arch')", [CONV_JSON])
    assert [(r[0], r[2], r[3], r[4]) for r in _rows(db)] == [
        (1, IRIS_WEIGHTS, None, None), (2, None, "iris mlp", None), (3, IRIS_WEIGHTS, "iris", "4-10-3 MLP"),
        (4, None, None, "named arguments")]


def test_the_forms_a_user_types_reach_the_loader(db):
    literal = IRIS_JSON.replace("'", "''")
    for sql in [f"SELECT madlib_dl.load_keras_model('arch', '{literal}')",        # untyped literal
                f"SELECT madlib_dl.load_keras_model('arch', $${IRIS_JSON}$$)",    # dollar quoting
                f"SELECT madlib_dl.load_keras_model('arch', '{literal}'::json)",
                f"SELECT madlib_dl.load_keras_model('arch'::text, $${IRIS_JSON}$$::json, NULL)",
                f"SELECT madlib_dl.load_keras_model('arch', $${IRIS_JSON}$$, NULL, 'n')"]:
        db.execute(sql)
    db.execute("CREATE TABLE src (j json)")
    db.execute("INSERT INTO src VALUES (%s)", [CONV_JSON])
    db.execute("SELECT madlib_dl.load_keras_model('arch', j, NULL, 'from a table') FROM src")
    assert [r[0] for r in _rows(db)] == [1, 2, 3, 4, 5, 6]
    assert len(_notices(db)) == 6


def test_a_jsonb_or_text_value_needs_a_json_cast_as_in_madlib(db):
    code, message = _error(db, "SELECT madlib_dl.load_keras_model('arch', %s::jsonb)", [IRIS_JSON])
    assert code == "42883" and "load_keras_model(unknown, jsonb) does not exist" in message
    db.execute("SELECT madlib_dl.load_keras_model('arch', %s::jsonb::json)", [IRIS_JSON])
    assert len(_rows(db)) == 1


def test_weights_from_get_weights_are_accepted_and_kept_bitwise(db):
    db.execute("SELECT madlib_dl.load_keras_model('arch', %s::json, %s)", [IRIS_JSON, IRIS_WEIGHTS])
    stored = _rows(db)[0][2]
    assert stored == IRIS_WEIGHTS and len(stored) == 4 * IRIS_WEIGHT_COUNT
    model = _iris_mlp()
    model.set_weights(serialization.deserialize_weights(stored, [w.shape for w in model.get_weights()]))
    for mine, theirs in zip(model.get_weights(), IRIS.get_weights()):
        np.testing.assert_array_equal(mine, theirs)


def test_quoted_and_schema_qualified_names(db):
    db.execute("CREATE SCHEMA s1")
    db.execute("""SELECT madlib_dl.load_keras_model('"My Arch"', %s::json)""", [IRIS_JSON])
    db.execute("SELECT madlib_dl.load_keras_model('s1.arch', %s::json)", [CONV_JSON])
    db.execute("SELECT madlib_dl.load_keras_model('S1.Arch', %s::json)", [CONV_JSON])  # unquoted: folded
    assert _notices(db) == ['NOTICE:  load_keras_model: added model id 1 to table "My Arch"',
                            "NOTICE:  load_keras_model: added model id 1 to table s1.arch",
                            "NOTICE:  load_keras_model: added model id 2 to table s1.arch"]
    assert [r[0] for r in _rows(db, '"My Arch"')] == [1]
    assert [r[0] for r in _rows(db, "s1.arch")] == [1, 2]
    assert not _exists(db, "public.arch")
    db.execute("""SELECT madlib_dl.delete_keras_model('"My Arch"', 1)""")
    assert not _exists(db, '"My Arch"')


def test_an_existing_madlib_table_without_serial_or_internal_id(db):
    # MADlib 2.1 dropped SERIAL, and a table may lack __internal_madlib_id__: both still work.
    db.execute("CREATE TABLE arch (model_id INTEGER PRIMARY KEY, model_arch JSON, model_weights BYTEA, "
               "name TEXT, description TEXT)")
    db.execute("INSERT INTO arch VALUES (7, %s, NULL, 'old', NULL)", [IRIS_JSON])
    db.execute("SELECT madlib_dl.load_keras_model('arch', %s::json, NULL, 'new')", [CONV_JSON])
    assert _notices(db) == ["NOTICE:  load_keras_model: added model id 8 to table arch"]
    assert [(r[0], r[3]) for r in _rows(db)] == [(7, "old"), (8, "new")]


def test_first_call_in_a_fresh_backend_imports_tensorflow_once(server, database):
    timings = []
    with server.connect(database) as connection, connection.cursor() as cur:
        for _ in range(2):
            start = time.perf_counter()
            cur.execute("SELECT madlib_dl.load_keras_model('timed', %s::json)", [IRIS_JSON])
            timings.append(time.perf_counter() - start)
        cur.execute("DROP TABLE timed")
    print(f"load_keras_model: first call in a fresh backend {timings[0]:.2f} s, second {timings[1]:.3f} s")
    assert timings[1] < timings[0]  # the import is paid once per backend


def test_help_and_malformed_json_never_import_tensorflow(server, database):
    # A fresh backend: PL/Python functions of one session share an interpreter, so a DO block sees
    # what load_keras_model imported.
    with server.connect(database) as connection, connection.cursor() as cur:
        cur.execute("SELECT madlib_dl.load_keras_model(), madlib_dl.delete_keras_model('usage')")
        for arch in ('{"class_name": "Sequential"}', NO_INPUT_JSON, NO_DENSE_JSON):
            _error(cur, LOAD, ["arch", arch, None])
        cur.execute("DO $$ import sys; plpy.notice('tensorflow imported: %s' % ('tensorflow' in sys.modules)) $$ "
                    "LANGUAGE plpython3u")
        assert connection.notices[-1].strip() == "NOTICE:  tensorflow imported: False"


# ---- refused arguments: one error each, nothing created or changed ---------------------------------

@pytest.mark.parametrize("table, arch, weights, code, message", [
    (None, IRIS_JSON, None, "22023", "keras_model_arch_table: expected a table name, got NULL"),
    ("  ", IRIS_JSON, None, "22023", "keras_model_arch_table: expected a table name, got an empty string"),
    ("x; DROP TABLE y", IRIS_JSON, None, "22023",
     "keras_model_arch_table: expected a table name such as my_table or my_schema.my_table, got 'x; DROP TABLE y'"),
    ("a.b.c", IRIS_JSON, None, "22023", "keras_model_arch_table: expected table or schema.table, got 3 parts"),
    ("nope.arch", IRIS_JSON, None, "42P01", "keras_model_arch_table: schema 'nope' of 'nope.arch' does not exist"),
    ("arch", None, None, "22023", "model_arch: not a Keras model JSON: got NULL"),
    ("arch", '{"a": 1}', None, "22023", "model_arch: not a Keras model JSON: expected an object with class_name"),
    ("arch", "[1, 2]", None, "22023", "model_arch: not a Keras model JSON"),
    ("arch", LAMBDA_JSON, None, "22023", "model_arch: a Lambda layer is refused: it carries Python code"),
    ("arch", NO_INPUT_JSON, None, "22023", "model_arch: cannot find the input shape; the first layer must define one"),
    ("arch", NO_DENSE_JSON, None, "22023",
     "model_arch: cannot find the number of classes: the last layer must be a Dense layer with units"),
    ("arch", UNKNOWN_LAYER_JSON, None, "22023",
     "model_arch: not a loadable Keras model JSON: ValueError: Could not deserialize 'keras.layers.NoSuchLayer'"),
    ("arch", KERAS2_JSON, None, "22023", "model_arch: layer 'clstm' (ConvLSTM1D) in this Keras 2.10.0 JSON has no Keras 3 "
                                          "translation here"),
    ("arch", IRIS_JSON, IRIS_WEIGHTS[:-4], "22023",
     f"model_weights: holds {IRIS_WEIGHT_COUNT - 1} values but the model architecture has {IRIS_WEIGHT_COUNT} weights"),
    ("arch", IRIS_JSON, IRIS_WEIGHTS + b"\0" * 8, "22023",
     f"model_weights: holds {IRIS_WEIGHT_COUNT + 2} values but the model architecture has {IRIS_WEIGHT_COUNT} weights"),
    ("arch", IRIS_JSON, b"", "22023",
     f"model_weights: holds 0 values but the model architecture has {IRIS_WEIGHT_COUNT} weights"),
    ("arch", IRIS_JSON, b"\0" * 5, "22023", "model_weights: 5 bytes is not a whole number of float32 values"),
], ids=["null-table", "blank-table", "injection", "three-parts", "no-schema", "null-arch", "not-a-model", "array",
        "lambda", "no-input", "no-dense", "unknown-layer", "keras2", "weights-short", "weights-long", "weights-empty",
        "weights-odd"])
def test_bad_arguments_create_nothing(db, table, arch, weights, code, message):
    db.execute("CREATE TABLE y (v int)")
    got_code, got_message = _error(db, LOAD, [table, arch, weights])
    assert got_code == code and got_message.startswith(f"madlib_dl: {message}"), got_message
    db.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    assert db.fetchone()[0] == 1 and _exists(db, "y")  # y survived, arch was not created
    assert _notices(db) == []


def test_bad_arguments_leave_an_existing_table_unchanged(db):
    db.execute("SELECT madlib_dl.load_keras_model('arch', %s::json, %s, 'kept')", [IRIS_JSON, IRIS_WEIGHTS])
    before = _rows(db)
    for arch, weights in [(IRIS_JSON, IRIS_WEIGHTS[:8]), (LAMBDA_JSON, None), ('{"class_name": "Sequential"}', None)]:
        _error(db, LOAD, ["arch", arch, weights])
    assert _rows(db) == before
    db.execute("SELECT last_value FROM arch_model_id_seq")
    assert db.fetchone()[0] == 1  # refused before the INSERT: no id was consumed


def test_invalid_json_text_is_refused_by_the_server_itself(db):
    code, message = _error(db, "SELECT madlib_dl.load_keras_model('arch', '{not json')")
    assert code == "22P02" and message == "invalid input syntax for type json"
    assert not _exists(db, "arch")


def test_an_existing_table_missing_columns_is_named(db):
    db.execute("CREATE TABLE arch (model_id SERIAL, model_arch JSON, label TEXT)")
    code, message = _error(db, LOAD, ["arch", IRIS_JSON, None])
    assert code == "22023"
    assert message == ("madlib_dl: keras_model_arch_table: table 'arch' exists but is not a model architecture "
                       "table: missing column(s) model_weights, name, description")
    db.execute("SELECT count(*) FROM arch")
    assert db.fetchone()[0] == 0


# ---- delete_keras_model ----------------------------------------------------------------------------

def test_delete_one_then_the_last_drops_the_table(db):
    for _ in range(2):
        db.execute("SELECT madlib_dl.load_keras_model('arch', %s::json)", [IRIS_JSON])
    _notices(db)
    db.execute("SELECT madlib_dl.delete_keras_model('arch', 1)")
    assert _notices(db) == ["NOTICE:  delete_keras_model: deleted model id 1 from table arch"]
    assert [r[0] for r in _rows(db)] == [2]
    db.execute("SELECT madlib_dl.delete_keras_model('arch', 2)")
    assert _notices(db) == ["NOTICE:  delete_keras_model: deleted model id 2; table arch was left empty "
                            "and has been dropped"]
    assert not _exists(db, "arch")


@pytest.mark.parametrize("table, model_id, code, message", [
    ("arch", 99, "22023", "model_id: no model with id 99 in table arch"),
    ("arch", None, "22023", "model_id: expected the id of a model to delete, got NULL"),
    ("missing", 1, "42P01", "keras_model_arch_table: table 'missing' does not exist"),
    (None, 1, "22023", "keras_model_arch_table: expected a table name, got NULL"),
    ("arch; DROP TABLE arch", 1, "22023", "keras_model_arch_table: expected a table name such as my_table"),
    ("other", 1, "22023", "keras_model_arch_table: table 'other' exists but is not a model architecture table: "
                          "missing column(s) model_arch, model_weights, name, description"),
])
def test_delete_refuses_and_changes_nothing(db, table, model_id, code, message):
    db.execute("SELECT madlib_dl.load_keras_model('arch', %s::json)", [IRIS_JSON])
    db.execute("CREATE TABLE other (model_id int)")
    db.execute("INSERT INTO other VALUES (1)")
    got_code, got_message = _error(db, "SELECT madlib_dl.delete_keras_model(%s, %s)", [table, model_id])
    assert got_code == code and got_message.startswith(f"madlib_dl: {message}"), got_message
    assert [r[0] for r in _rows(db)] == [1]
    db.execute("SELECT count(*) FROM other")
    assert db.fetchone()[0] == 1


# ---- help ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("function", ["load_keras_model", "delete_keras_model"])
def test_help_overloads(db, function):
    def ask(args):
        db.execute(f"SELECT madlib_dl.{function}({args})")
        return db.fetchone()[0]

    summary, usage = ask(""), ask("'usage'")
    assert summary.startswith(f"{function}: ") and "Usage:" not in summary
    assert usage.startswith(f"{function}: ") and "Usage:" in usage and "keras_model_arch_table VARCHAR" in usage
    assert ask("NULL") == ask("''") == summary
    assert ask("'help'") == ask("' ? '") == ask("'USAGE'") == usage
    assert ask("'bogus'") == (f"{function}: no help topic 'bogus'. Use madlib_dl.{function}() for a summary "
                              f"or madlib_dl.{function}('usage') for arguments and examples.")
    assert not _exists(db, "usage") and not _exists(db, "bogus")
