"""madlib_dl.trained_models.load against a real server: both layouts (a madlib_keras_fit table with its
summary, a fit_multiple table with its summary and info), made by hand so every column is known, and
each way a model table can be wrong. Runs in this process through psycopg2; the server runs no Keras."""

from __future__ import annotations

import json

import pytest

from madlib_dl import db as dbs
from madlib_dl import trained_models
from madlib_dl.errors import InvalidArgument, ObjectMissing
from madlib_dl.identifiers import TableName

ARCH = json.dumps({"module": "keras", "class_name": "Sequential", "config": {"name": "m", "layers": []}})
WEIGHTS = bytes(range(16))
COMPILE = "loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']"
SUMMARY = ("CREATE TABLE {0} (source_table TEXT, dependent_varname TEXT[], independent_varname TEXT[], "
           "class_text_class_values TEXT[], normalizing_const REAL, num_classes INTEGER[]{1})")
SINGLE_EXTRA = ", compile_params TEXT, metrics_type TEXT[], loss_type TEXT"


@pytest.fixture(scope="module")
def connection(server):
    with server.fresh_database("trained_models") as name, server.connect(name) as conn:
        yield conn


@pytest.fixture
def cur(connection):
    with connection.cursor() as c:
        c.execute("DROP SCHEMA IF EXISTS t CASCADE")
        c.execute("CREATE SCHEMA t")
        c.execute("SET search_path = t")
        yield c


@pytest.fixture
def database(connection, cur):
    return dbs.PsycopgDatabase(connection)


def _q(name: str, suffix: str = "") -> str:
    """A quoted table name (the helpers take names as stored, e.g. Mixed Case)."""
    return '"' + name + suffix + '"'


def _multi(cur, name="multi", keys=(1, 2), info=True):
    cur.execute(f"CREATE TABLE {_q(name)} (mst_key INTEGER PRIMARY KEY, model_weights BYTEA, model_arch JSON, "
                "__dist_key__ INTEGER, optimizer_state BYTEA)")
    for key in keys:
        cur.execute(f"INSERT INTO {_q(name)} VALUES (%s, %s, %s, 0, NULL)", [key, WEIGHTS + bytes([key]), ARCH])
    cur.execute(SUMMARY.format(_q(name, "_summary"), ""))
    cur.execute(f"INSERT INTO {_q(name, '_summary')} VALUES ('src', ARRAY['class_text'], ARRAY['attributes'], "
                "ARRAY['a', 'b', NULL], 2.5, ARRAY[3])")
    if info:
        cur.execute(f"CREATE TABLE {_q(name, '_info')} (mst_key INTEGER, compile_params TEXT, metrics_type TEXT[], "
                    "loss_type TEXT)")
        for key in keys:
            cur.execute(f"INSERT INTO {_q(name, '_info')} VALUES (%s, %s, ARRAY['accuracy'], "
                        "'categorical_crossentropy')", [key, COMPILE.replace("0.01", f"0.0{key}")])


def _single(cur, name="single", rows=1, class_values="ARRAY['a', 'b', NULL]", normalizing_const="2.5"):
    cur.execute(f"CREATE TABLE {_q(name)} (model_weights BYTEA, model_arch JSON, optimizer_state BYTEA)")
    for _ in range(rows):
        cur.execute(f"INSERT INTO {_q(name)} VALUES (%s, %s, NULL)", [WEIGHTS, ARCH])
    cur.execute(SUMMARY.format(_q(name, "_summary"), SINGLE_EXTRA))
    cur.execute(f"INSERT INTO {_q(name, '_summary')} VALUES ('src', ARRAY['class_text'], ARRAY['attributes'], "
                f"{class_values}, {normalizing_const}, ARRAY[3], %s, NULL, 'categorical_crossentropy')", [COMPILE])


def _fails(database, error, fragment, table, mst_key=None):
    with pytest.raises(error) as info:
        trained_models.load(database, table, mst_key)
    said = f"{info.value} HINT: {info.value.hint}"
    assert fragment in said, said
    return said


# ---------------------------------------------------------------------------------------------------
# The two layouts

def test_a_multi_model_table_gives_the_row_of_its_mst_key(cur, database):
    _multi(cur)
    model = trained_models.load(database, "multi", 2)
    assert model.table == TableName("t", "multi") and str(model.table) == "multi" and model.text == "multi"
    assert model.mst_key == 2
    assert json.loads(model.model_arch) == json.loads(ARCH)
    assert model.weights == WEIGHTS + bytes([2]) and isinstance(model.weights, bytes)
    assert model.compile_params == COMPILE.replace("0.01", "0.02")  # from _info, for this key
    assert (model.metrics_type, model.loss_type) == (("accuracy",), "categorical_crossentropy")
    assert (model.dependent_varname, model.independent_varname) == ("class_text", "attributes")
    assert model.class_values_column == "class_text_class_values"
    assert model.class_values == ("a", "b", None)
    assert model.normalizing_const == 2.5
    assert model.described == "multi (mst_key 2)"


def test_a_single_model_table_takes_its_configuration_from_the_summary(cur, database):
    _single(cur)
    model = trained_models.load(database, "single", None)
    assert model.mst_key is None and model.weights == WEIGHTS
    assert model.compile_params == COMPILE and model.metrics_type is None
    assert model.loss_type == "categorical_crossentropy"
    assert model.class_values == ("a", "b", None) and model.normalizing_const == 2.5
    assert model.described == "single"


def test_one_hot_labels_and_no_normalizing_const(cur, database):
    _single(cur, class_values="NULL", normalizing_const="NULL")
    model = trained_models.load(database, "single", None)
    assert model.class_values is None and model.normalizing_const == 1.0


def test_schema_qualified_and_quoted_names(cur, database):
    _multi(cur, name="Mixed Case", keys=(7,))
    model = trained_models.load(database, 't."Mixed Case"', 7)
    assert model.table == TableName("t", "Mixed Case") and model.text == 't."Mixed Case"'
    assert model.weights == WEIGHTS + bytes([7])


# ---------------------------------------------------------------------------------------------------
# What is refused

def test_mst_key_is_required_for_several_models_and_refused_for_one(cur, database):
    _multi(cur, keys=range(1, 13))
    message = _fails(database, InvalidArgument, "mst_key: 'multi' holds several models", "multi")
    assert "HINT: Choose one with mst_key (one of 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ...)." in message
    _fails(database, InvalidArgument, "mst_key: 99 is not a model of 'multi'", "multi", 99)
    _single(cur)
    _fails(database, InvalidArgument, "mst_key: 'single' holds a single model (madlib_keras_fit), got mst_key 1 "
           "HINT: Pass mst_key NULL.", "single", 1)


def test_missing_tables(cur, database):
    _fails(database, ObjectMissing, "model_table: table 'nope' does not exist", "nope")
    _fails(database, InvalidArgument, "model_table: expected a table name, got NULL", None)
    _multi(cur, info=False)
    _fails(database, ObjectMissing, "model_table: 'multi' has no table 'multi_info'", "multi", 1)
    cur.execute("DROP TABLE multi_summary")
    _fails(database, ObjectMissing, "model_table: 'multi' has no table 'multi_summary'", "multi", 1)


def test_tables_that_are_not_model_tables(cur, database):
    cur.execute("CREATE TABLE plain (model_weights BYTEA)")
    _fails(database, InvalidArgument, "model_table: 'plain' is not a model table of madlib_keras_fit or "
           "madlib_keras_fit_multiple_model (no column model_arch)", "plain")
    _multi(cur)
    cur.execute("ALTER TABLE multi_summary DROP COLUMN normalizing_const")
    _fails(database, InvalidArgument, "summary table 'multi_summary' has no column normalizing_const", "multi", 1)


def test_info_without_the_key_and_null_weights(cur, database):
    _multi(cur)
    cur.execute("DELETE FROM multi_info WHERE mst_key = 2")
    _fails(database, InvalidArgument, "mst_key: 2 has no row in 'multi_info'", "multi", 2)
    cur.execute("UPDATE multi SET model_weights = NULL WHERE mst_key = 1")
    _fails(database, InvalidArgument, "model_table: the model 'multi' (mst_key 1) has NULL weights", "multi", 1)


def test_single_model_tables_with_the_wrong_rows(cur, database):
    _single(cur, rows=2)
    _fails(database, InvalidArgument, "'single' has no mst_key column, so it must hold one model (one row), has 2",
           "single")
    _single(cur, name="nocompile")
    cur.execute("UPDATE nocompile_summary SET compile_params = NULL")
    _fails(database, InvalidArgument, "the summary of 'nocompile' has no compile_params", "nocompile")
    _single(cur, name="twosummaries")
    cur.execute("INSERT INTO twosummaries_summary SELECT * FROM twosummaries_summary")
    _fails(database, InvalidArgument, "'twosummaries_summary' must have exactly one row, has 2", "twosummaries")
