"""madlib_keras_predict and madlib_keras_predict_byom on a real server.

* Exact rows for every pred_type form, from a model whose probabilities are known in advance: a Dense(3,
  softmax) on 4 inputs whose kernel rows are log-probabilities, so the example e_i (a one-hot input) has
  exactly the probabilities of row i, and the zero example a three-way tie.
* Model tables of both layouts (made by hand here: fit_multiple's and madlib_keras_fit's), then a real
  fit_multiple run on digits compared with Keras on the same weights, and predict_byom with a model
  trained outside the database compared with model.predict.
* Errors: each names its argument and leaves no table behind.
* Streaming: batches of BATCH_ROWS rows, every row scored once; the model built once per session.

Everything runs as a plain role on a server with Debian's pg_hba; its training run (digits) must use
background workers (conftest.training_database).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from psycopg2.extras import execute_values
from sklearn.datasets import load_digits, load_iris

import refusals

from madlib_dl import db as madlib_db
from madlib_dl.api import predict as predict_api
from madlib_dl.keras_runtime import builder, serialization, tf_setup

keras = tf_setup.keras()

S = "madlib_dl."
P = np.array([[0.65, 0.10, 0.25],
              [0.05, 0.35, 0.60],
              [0.375, 0.25, 0.375],  # a tie at rank 1: the lower class index ranks first
              [0.10, 0.80, 0.10]])   # a tie at rank 2
KERNEL = np.log(P).astype(np.float32)        # example e_i has logits log(P[i]): softmax gives P[i]
BIAS = np.zeros(3, dtype=np.float32)
THIRD = 1 / 3                                # the zero example: equal logits, equal probabilities
IDS = (101, 102, 103, 104, 105)              # e_0 .. e_3, then zeros


def _tiny_model():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])


TINY_JSON = _tiny_model().to_json()
TINY_WEIGHTS = serialization.serialize_weights([KERNEL, BIAS])
SWAPPED_WEIGHTS = serialization.serialize_weights([KERNEL[:, ::-1].copy(), BIAS])  # classes in reverse order


def _examples(scale=1.0):
    return [(i, [scale * float(v) for v in row]) for i, row in zip(IDS, np.vstack([np.eye(4), np.zeros(4)]))]


def _expected_prob(classes=("0", "1", "2"), swapped=False):
    """Every (id, class_value, prob, rank) of pred_type 'prob', written out (not computed by the code).
    ``swapped``: the model whose output j is the tiny model's output 2 - j."""
    a, b, c = classes
    return [(101, a, 0.65, 1), (101, c, 0.25, 2), (101, b, 0.10, 3),
            (102, c, 0.60, 1), (102, b, 0.35, 2), (102, a, 0.05, 3),
            (103, a, 0.375, 1), (103, c, 0.375, 2), (103, b, 0.25, 3),
            (104, b, 0.80, 1), (104, a, 0.10, 2), (104, c, 0.10, 3),
            (105, a, THIRD, 1), (105, b, THIRD, 2), (105, c, THIRD, 3)] if not swapped else [
            (101, c, 0.65, 1), (101, a, 0.25, 2), (101, b, 0.10, 3),
            (102, a, 0.60, 1), (102, b, 0.35, 2), (102, c, 0.05, 3),
            (103, a, 0.375, 1), (103, c, 0.375, 2), (103, b, 0.25, 3),
            (104, b, 0.80, 1), (104, a, 0.10, 2), (104, c, 0.10, 3),
            (105, a, THIRD, 1), (105, b, THIRD, 2), (105, c, THIRD, 3)]


# pred_type as given -> which of the 'prob' rows remain, and whether the rank column stays
PRED_TYPES = {
    "prob": (lambda r: True, True),
    "response": (lambda r: r[3] == 1, False),
    2: (lambda r: r[3] <= 2, True),
    0.2: (lambda r: r[2] > 0.2, True),
    "2": (lambda r: r[3] <= 2, True),
    "0.2": (lambda r: r[2] > 0.2, True),
    "RESPONSE": (lambda r: r[3] == 1, False),
    4: (lambda r: True, True),
    0.0: (lambda r: True, True),
    "0.5": (lambda r: r[2] > 0.5, True),
}


def _expected(pred_type, **kwargs):
    keep, has_rank = PRED_TYPES[pred_type]
    return [r if has_rank else r[:3] for r in _expected_prob(**kwargs) if keep(r)]


# ---------------------------------------------------------------------------------------------------
# Database

def _multi_model_tables(cur):
    """A madlib_keras_fit_multiple_model output, by hand: mst_key 1 the tiny model, 2 with its classes
    swapped; labels 'animal' with class values cat, dog, eel; features were divided by 2."""
    cur.execute("CREATE TABLE multi (mst_key INTEGER PRIMARY KEY, model_weights BYTEA, model_arch JSON, "
                "__dist_key__ INTEGER, optimizer_state BYTEA)")
    cur.execute("INSERT INTO multi VALUES (1, %s, %s, 0, NULL), (2, %s, %s, 1, NULL)",
                [TINY_WEIGHTS, TINY_JSON, SWAPPED_WEIGHTS, TINY_JSON])
    cur.execute("CREATE TABLE multi_info (mst_key INTEGER, model_id INTEGER, compile_params VARCHAR, "
                "fit_params VARCHAR, metrics_type TEXT[], loss_type TEXT)")
    compile_params = "loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']"
    cur.execute("INSERT INTO multi_info VALUES (1, 1, %s, 'batch_size=8', ARRAY['accuracy'], "
                "'categorical_crossentropy'), (2, 1, %s, 'batch_size=8', ARRAY['accuracy'], "
                "'categorical_crossentropy')", [compile_params, compile_params])
    cur.execute("CREATE TABLE multi_summary (source_table VARCHAR, dependent_varname TEXT[], "
                "independent_varname TEXT[], num_classes INTEGER[], animal_class_values TEXT[], "
                "normalizing_const REAL)")
    cur.execute("INSERT INTO multi_summary VALUES ('zoo_packed', ARRAY['animal'], ARRAY['x'], ARRAY[3], "
                "ARRAY['cat', 'dog', 'eel'], 2.0)")


def _single_model_tables(cur):
    """A madlib_keras_fit output, by hand: one model; integer class values 3, 5, 7; no normalisation."""
    cur.execute("CREATE TABLE single (model_weights BYTEA, model_arch JSON, optimizer_state BYTEA)")
    cur.execute("INSERT INTO single VALUES (%s, %s, NULL)", [TINY_WEIGHTS, TINY_JSON])
    cur.execute("CREATE TABLE single_summary (source_table VARCHAR, dependent_varname TEXT[], "
                "independent_varname TEXT[], compile_params VARCHAR, metrics_type TEXT[], loss_type TEXT, "
                "num_classes INTEGER[], y_class_values INTEGER[], normalizing_const REAL)")
    cur.execute("INSERT INTO single_summary VALUES ('t_packed', ARRAY['y'], ARRAY['x'], "
                "$$loss='categorical_crossentropy', optimizer='SGD()'$$, NULL, 'categorical_crossentropy', "
                "ARRAY[3], ARRAY[3, 5, 7], 1.0)")
    cur.execute("CREATE TABLE onehot (LIKE single)")
    cur.execute("INSERT INTO onehot SELECT * FROM single")
    cur.execute("CREATE TABLE onehot_summary AS SELECT source_table, dependent_varname, independent_varname, "
                "compile_params, metrics_type, loss_type, num_classes, normalizing_const FROM single_summary")


@pytest.fixture(scope="module")
def database(training_database):
    """The module's connection, as the plain role, to a database of its own (predict)."""
    with training_database("predict") as conn:
        with conn.cursor() as cur:
            # x: DOUBLE PRECISION[]; x2: REAL[2][2] holding 2x (read in storage order, divided by 2);
            # rank: a column named like an output column
            cur.execute("CREATE TABLE points (id BIGINT, x DOUBLE PRECISION[], x2 REAL[], name TEXT, rank INTEGER)")
            for i, x in _examples():
                cur.execute("INSERT INTO points VALUES (%s, %s, %s, %s, 0)",
                            [i, x, [[2 * x[0], 2 * x[1]], [2 * x[2], 2 * x[3]]], f"p{i}"])
            cur.execute(f"SELECT {S}load_keras_model('arch', %s::json, %s, 'tiny', 'known probabilities')",
                        [TINY_JSON, TINY_WEIGHTS])
            cur.execute(f"SELECT {S}load_keras_model('arch', %s::json)", [TINY_JSON])  # 2: no weights
            _multi_model_tables(cur)
            _single_model_tables(cur)
        yield conn


@pytest.fixture(scope="module")
def conn(database):
    return database


@pytest.fixture
def cur(conn):
    with conn.cursor() as c:
        c.execute("RESET ALL")
        c.execute("DROP TABLE IF EXISTS out")
        yield c


def _rows(cur, table="out", order="id, rank"):
    cur.execute(f"SELECT * FROM {table} ORDER BY {order}")
    return [d.name for d in cur.description], cur.fetchall()


def _assert_rows(cur, expected, id_column="id", class_name="dependent_var", id_type="bigint"):
    has_rank = len(expected[0]) == 4 if expected else True
    names, rows = _rows(cur, order=f"{id_column}, " + ("rank" if has_rank else "prob DESC"))
    assert names == [id_column, "class_name", "class_value", "prob"] + (["rank"] if has_rank else [])
    assert [(r[0], r[2]) + ((r[4],) if has_rank else ()) for r in rows] == \
        [(e[0], e[1]) + ((e[3],) if has_rank else ()) for e in expected]
    assert all(r[1] == class_name for r in rows)
    np.testing.assert_allclose([r[3] for r in rows], [e[2] for e in expected], rtol=0, atol=1e-6)
    cur.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'out'::regclass "
                "AND attnum > 0 ORDER BY attnum")
    assert [t for (t,) in cur.fetchall()] == [id_type, "text", "text", "double precision"] + \
        (["integer"] if has_rank else [])


def _byom(cur, *args, **named):
    arguments = ["arch", 1, "points", "id", "x", "out", *args]
    params = {f"p{i}": a for i, a in enumerate(arguments)}
    params.update(named)
    sql = ", ".join([f"%(p{i})s" for i in range(len(arguments))] + [f"{k} => %({k})s" for k in named])
    cur.execute(f"SELECT {S}madlib_keras_predict_byom({sql})", params)


def _predict(cur, model="multi", *args, test="points", features="x2", **named):
    arguments = [model, test, "id", features, "out", *args]
    params = {f"p{i}": a for i, a in enumerate(arguments)}
    params.update(named)
    sql = ", ".join([f"%(p{i})s" for i in range(len(arguments))] + [f"{k} => %({k})s" for k in named])
    cur.execute(f"SELECT {S}madlib_keras_predict({sql})", params)


# ---------------------------------------------------------------------------------------------------
# Exact rows for every pred_type

@pytest.mark.parametrize("pred_type", list(PRED_TYPES), ids=[repr(p) for p in PRED_TYPES])
def test_byom_every_pred_type_exact_rows(cur, pred_type):
    _byom(cur, pred_type)
    _assert_rows(cur, _expected(pred_type))


@pytest.mark.parametrize("pred_type", ["prob", "response", 2, 0.2, "2", "0.2"], ids=repr)
def test_predict_multi_model_every_pred_type_exact_rows(cur, pred_type):
    _predict(cur, "multi", pred_type, False, 1)
    _assert_rows(cur, _expected(pred_type, classes=("cat", "dog", "eel")), class_name="animal")


def test_default_pred_type_is_prob_and_mst_key_chooses_the_model(cur):
    _predict(cur, "multi", mst_key=2)  # classes in reverse order; features 2x, divided by the summary's 2.0
    _assert_rows(cur, _expected_prob(classes=("cat", "dog", "eel"), swapped=True), class_name="animal")
    cur.execute("DROP TABLE out")
    _byom(cur)
    _assert_rows(cur, _expected("prob"))


def test_predict_single_model_class_values_as_postgres_writes_them(cur):
    _predict(cur, "single", "prob", features="x")
    _assert_rows(cur, _expected_prob(classes=("3", "5", "7")), class_name="y")


def test_predict_one_hot_labels_without_class_values_give_indices(cur):
    _predict(cur, "onehot", "response", features="x")
    _assert_rows(cur, _expected("response"), class_name="y")


def test_byom_class_values_and_normalizing_const(cur):
    _byom(cur, "prob", False, ["cat", None, "eel"], 1.0)
    _assert_rows(cur, _expected_prob(classes=("cat", None, "eel")))
    cur.execute("DROP TABLE out")
    cur.execute(f"SELECT {S}madlib_keras_predict_byom('arch', 1, 'points', 'id', 'x2', 'out', 'prob', FALSE, "
                "NULL, 2.0, 1)")
    _assert_rows(cur, _expected("prob"))


@pytest.mark.parametrize("class_values", [[["cat", None, "eel"]], [["cat", None, "eel", None]]],
                         ids=["one_row", "padded_row"])
def test_byom_two_dimensional_class_values_as_madlib_documents(cur, class_values):
    """MADlib documents class_values as one row per dependent variable, e.g. ARRAY[ARRAY['a','b','c']]
    (NULL-padded to the longest row, PostgreSQL arrays being rectangular)."""
    _byom(cur, "prob", False, class_values, 1.0)
    _assert_rows(cur, _expected_prob(classes=("cat", None, "eel")))
    cur.execute("DROP TABLE out")
    _byom(cur, "prob", False, [[None, None, None]], 1.0)  # a row of NULLs: the default 0, 1, 2 (as MADlib)
    _assert_rows(cur, _expected("prob"))


@pytest.mark.parametrize("class_values, fragments", [
    ([["a", "b", "c"], ["d", "e", "f"]], ("has 2 rows, one per dependent variable, but dependent_count is 1",)),
    ([["a", "b"]], ("has 2 values but the model has 3 outputs",)),
    ([[["a", "b", "c"]]], ("expected a one-dimensional array", "got 3 dimensions")),
], ids=["two_rows", "short_row", "three_dimensions"])
def test_byom_class_values_that_cannot_fit_are_refused(cur, class_values, fragments):
    _fails(cur, lambda: _byom(cur, "prob", False, class_values), "22023", "class_values", *fragments)


def test_id_column_keeps_its_type_and_any_values(cur):
    cur.execute("DROP TABLE IF EXISTS named_points")
    cur.execute('CREATE TABLE named_points ("Point Id" VARCHAR(12), x DOUBLE PRECISION[])')
    cur.execute("INSERT INTO named_points SELECT 'it''s ' || name, x FROM points "
                "UNION ALL SELECT NULL, x FROM points WHERE id = 101")
    cur.execute(f"SELECT {S}madlib_keras_predict_byom('arch', 1, 'named_points', '\"Point Id\"', 'x', 'out', "
                "'response')")
    cur.execute('SELECT "Point Id", class_value FROM out ORDER BY 1 NULLS FIRST')
    assert cur.fetchall() == [(None, "0"), ("it's p101", "0"), ("it's p102", "2"), ("it's p103", "0"),
                              ("it's p104", "1"), ("it's p105", "0")]
    cur.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'out'::regclass "
                "AND attname = 'Point Id'")
    assert cur.fetchone() == ("character varying(12)",)


def test_schema_qualified_tables(cur, server, plain_role):
    with server.connect("predict") as admin, admin.cursor() as c:  # a schema the DBA gave the role
        c.execute("DROP SCHEMA IF EXISTS s1 CASCADE")
        c.execute(f"CREATE SCHEMA s1 AUTHORIZATION {plain_role.name}")
    cur.execute('CREATE TABLE s1."Test Points" AS SELECT * FROM points')
    cur.execute(f"""SELECT {S}madlib_keras_predict('multi', 's1."Test Points"', 'id', 'x2', 's1.out', 'response',
                FALSE, 1)""")
    cur.execute("SELECT id, class_value FROM s1.out ORDER BY id")
    assert cur.fetchall() == [(101, "cat"), (102, "eel"), (103, "cat"), (104, "dog"), (105, "cat")]
    cur.execute("DROP SCHEMA s1 CASCADE")


def test_view_and_empty_table(cur):
    cur.execute("CREATE OR REPLACE VIEW odd_points AS SELECT id AS key, x FROM points WHERE id % 2 = 1")
    cur.execute(f"SELECT {S}madlib_keras_predict_byom('arch', 1, 'odd_points', 'key', 'x', 'out', 'response')")
    cur.execute("SELECT key, class_value FROM out ORDER BY key")
    assert cur.fetchall() == [(101, "0"), (103, "0"), (105, "0")]
    cur.execute("DROP TABLE out")
    cur.execute("DROP TABLE IF EXISTS no_points")
    cur.execute("CREATE TABLE no_points (LIKE points)")
    cur.execute(f"SELECT {S}madlib_keras_predict_byom('arch', 1, 'no_points', 'id', 'x', 'out')")
    cur.execute("SELECT count(*) FROM out")
    assert cur.fetchone() == (0,)


def test_help_texts(cur):
    for function in ("madlib_keras_predict", "madlib_keras_predict_byom"):
        cur.execute(f"SELECT {S}{function}(), {S}{function}('usage'), {S}{function}('?'), {S}{function}('nonsense')")
        summary, usage, question, unknown = cur.fetchone()
        assert function in summary and "usage" in summary
        assert usage == question and "pred_type" in usage and "Output table" in usage
        assert "no help topic 'nonsense'" in unknown
        cur.execute("SELECT p.provolatile FROM pg_proc p WHERE p.proname = %s AND p.pronargs <= 1", [function])
        assert [v for (v,) in cur.fetchall()] == ["i", "i"]


# ---------------------------------------------------------------------------------------------------
# Real models: fit_multiple on digits; a model trained outside the database

@pytest.fixture(scope="module")
def digits(conn):
    """Digits: 1400 training rows as REAL[8][8][1], the other 397 held out as flat REAL[64]."""
    data = load_digits()
    images, labels = data.images.astype(np.float32), data.target
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE digits_train (id INTEGER, pixels REAL[], label INTEGER)")
        execute_values(cur, "INSERT INTO digits_train VALUES %s",
                       [(i, images[i][:, :, None].tolist(), int(labels[i])) for i in range(1400)])
        cur.execute("CREATE TABLE digits_test (id INTEGER, pixels REAL[], label INTEGER)")
        execute_values(cur, "INSERT INTO digits_test VALUES %s",
                       [(i, images[i].ravel().tolist(), int(labels[i])) for i in range(1400, len(labels))])
        cur.execute(f"SELECT {S}training_preprocessor_dl('digits_train', 'digits_packed', 'label', 'pixels', NULL, "
                    "16.0, NULL, '2')")
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10, activation="softmax")])
        cur.execute(f"SELECT {S}load_keras_model('digits_arch', %s::json)", [model.to_json()])
        compile_params = [f"loss='categorical_crossentropy', optimizer='Adam(learning_rate={lr})', metrics=['accuracy']"
                          for lr in (0.01, 0.003)]
        cur.execute(f"SELECT {S}load_model_selection_table('digits_arch', 'digits_mst', ARRAY[1], %s, "
                    "ARRAY['batch_size=32, epochs=1'])", [compile_params])
        cur.execute(f"SELECT {S}madlib_keras_fit_multiple_model('digits_packed', 'digits_models', 'digits_mst', 2, "
                    "FALSE)")  # on background workers
        cur.execute("SELECT mst_key FROM digits_models_info ORDER BY training_metrics_final DESC, mst_key LIMIT 1")
        best = cur.fetchone()[0]
        cur.execute("SELECT model_arch::text, model_weights FROM digits_models WHERE mst_key = %s", [best])
        arch, weights = cur.fetchone()
    trained = builder.model_from_json(arch)
    trained.set_weights(serialization.deserialize_weights(bytes(weights), [w.shape for w in trained.get_weights()]))
    x = (images[1400:].astype(np.float64) / 16.0).astype(np.float32)[:, :, :, None]
    return best, trained.predict(x, verbose=0), labels[1400:]


def test_fit_multiple_then_predict_agrees_with_keras(cur, digits):
    best, keras_probs, labels = digits
    cur.execute(f"SELECT {S}madlib_keras_predict('digits_models', 'digits_test', 'id', 'pixels', 'out', 'prob', "
                "FALSE, %s)", [best])
    cur.execute("SELECT id, class_value::int, prob, rank, class_name FROM out ORDER BY id, class_value::int")
    rows = cur.fetchall()
    assert len(rows) == 10 * len(labels) and {r[4] for r in rows} == {"label"}
    probs = np.array([r[2] for r in rows]).reshape(len(labels), 10)
    np.testing.assert_allclose(probs, keras_probs, rtol=0, atol=1e-6)
    ranks = np.array([r[3] for r in rows]).reshape(len(labels), 10)
    np.testing.assert_array_equal(np.argmin(ranks, axis=1), np.argmax(keras_probs, axis=1))

    cur.execute("DROP TABLE out")
    cur.execute(f"SELECT {S}madlib_keras_predict('digits_models', 'digits_test', 'id', 'pixels', 'out', 'response', "
                "FALSE, %s)", [best])
    cur.execute("SELECT o.id, o.class_value::int, t.label FROM out o JOIN digits_test t USING (id) ORDER BY o.id")
    response = cur.fetchall()
    predicted = np.array([r[1] for r in response])
    np.testing.assert_array_equal(predicted, np.argmax(keras_probs, axis=1))  # every row
    assert [r[0] for r in response] == list(range(1400, 1400 + len(labels)))
    accuracy = np.mean(predicted == np.array([r[2] for r in response]))
    assert accuracy == np.mean(np.argmax(keras_probs, axis=1) == labels)
    assert accuracy > 0.8  # the run trained something


@pytest.fixture(scope="module")
def iris_model(conn):
    """A model trained outside the database on iris / 10, loaded with its weights as model id 3."""
    iris = load_iris()
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    model.fit(iris.data / 10.0, iris.target, epochs=30, batch_size=16, verbose=0)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE iris (id INTEGER, attributes DOUBLE PRECISION[])")
        execute_values(cur, "INSERT INTO iris VALUES %s", [(i, list(map(float, x))) for i, x in enumerate(iris.data)])
        cur.execute(f"SELECT {S}load_keras_model('arch', %s::json, %s, 'iris')",
                    [model.to_json(), serialization.serialize_weights(model.get_weights())])
        cur.execute("SELECT max(model_id) FROM arch")
        model_id = cur.fetchone()[0]
    x = (iris.data / 10.0).astype(np.float32)
    return model_id, model.predict(x, verbose=0)


def test_byom_model_trained_outside_equals_model_predict(cur, iris_model):
    model_id, keras_probs = iris_model
    names = ["setosa", "versicolor", "virginica"]
    cur.execute(f"SELECT {S}madlib_keras_predict_byom('arch', %s, 'iris', 'id', 'attributes', 'out', 'prob', NULL, "
                "%s, 10.0)", [model_id, names])
    cur.execute("SELECT id, class_value, prob FROM out ORDER BY id, rank")
    rows = cur.fetchall()
    assert len(rows) == 3 * 150
    probs = np.zeros((150, 3))
    for i, value, prob in rows:
        probs[i, names.index(value)] = prob
    np.testing.assert_allclose(probs, keras_probs, rtol=0, atol=1e-6)

    cur.execute("DROP TABLE out")
    cur.execute(f"SELECT {S}madlib_keras_predict_byom('arch', %s, 'iris', 'id', 'attributes', 'out', 'response', "
                "FALSE, NULL, 10.0)", [model_id])
    cur.execute("SELECT class_value FROM out ORDER BY id")
    assert [int(v) for (v,) in cur.fetchall()] == np.argmax(keras_probs, axis=1).tolist()

    cur.execute("DROP TABLE out")  # without normalizing_const the features are not divided: other results
    cur.execute(f"SELECT {S}madlib_keras_predict_byom('arch', %s, 'iris', 'id', 'attributes', 'out', 1)", [model_id])
    cur.execute("SELECT prob FROM out ORDER BY id")
    assert not np.allclose([p for (p,) in cur.fetchall()], keras_probs.max(axis=1), atol=1e-3)


# ---------------------------------------------------------------------------------------------------
# Errors: one clean error naming the argument, and no table left behind

def _fails(cur, call, sqlstate, argument, *fragments):
    # a remedy is the error's HINT; tables are compared by name
    return refusals.refused(cur, call, sqlstate, argument, *fragments, oids=False)


@pytest.fixture(scope="module")
def bad_tables(conn):
    with conn.cursor() as cur:
        for name, value in (("short", "ARRAY[1, 2, 3]"), ("null_array", "NULL"), ("empty_array", "'{}'"),
                            ("null_element", "ARRAY[1, NULL, 0, 0]"), ("nan_value", "ARRAY[1, 'NaN', 0, 0]"),
                            ("inf_value", "ARRAY[1, 0, '-Infinity', 0]")):
            cur.execute(f"CREATE TABLE bad_{name} AS SELECT id, x FROM points")
            cur.execute(f"INSERT INTO bad_{name} VALUES (7, {value}::float8[])")
        cur.execute("CREATE TABLE text_array (id INTEGER, x TEXT[])")


@pytest.mark.parametrize("table, fragments", [
    ("bad_short", ("column 'x' of bad_short must hold 4 values (the model's input shape (4,)) in every row; "
                   "1 row does not: the row with id = '7' has 3 values",)),
    ("bad_null_array", ("the row with id = '7' is NULL",)),
    ("bad_empty_array", ("the row with id = '7' has 0 values",)),
    ("bad_null_element", ("the row with id = '7' has NULL elements",)),
    ("bad_nan_value", ("the row with id = '7' holds NaN or infinite values",)),
    ("bad_inf_value", ("the row with id = '7' holds NaN or infinite values",)),
])
def test_bad_feature_arrays(cur, bad_tables, table, fragments):
    _fails(cur, lambda: cur.execute(f"SELECT {S}madlib_keras_predict_byom('arch', 1, %s, 'id', 'x', 'out')", [table]),
           "22023", "independent_varname", *fragments)
    _fails(cur, lambda: cur.execute(f"SELECT {S}madlib_keras_predict('single', %s, 'id', 'x', 'out')", [table]),
           "22023", "independent_varname", *fragments)


def test_a_null_pred_type_is_prob_as_in_madlib(cur):
    _byom(cur, "prob")
    expected = _rows(cur)
    cur.execute("DROP TABLE out")
    _byom(cur, None)
    assert _rows(cur) == expected and expected[1]
    cur.execute("DROP TABLE out")
    _predict(cur, "multi", None, False, 1)
    assert _rows(cur)[1]


@pytest.mark.parametrize("pred_type", [0, -1, 1.0, 1.5, -0.5, "foo", "0", "1.0", ""], ids=repr)
def test_invalid_pred_type(cur, pred_type):
    _fails(cur, lambda: _byom(cur, pred_type), "22023", "pred_type", "expected 'prob'", "'response'",
           "integer k >= 1", "[0.0, 1.0)")
    _fails(cur, lambda: _predict(cur, "multi", pred_type, False, 1), "22023", "pred_type", "expected 'prob'")


def _byom_call(cur, *args):
    return lambda: cur.execute(f"SELECT {S}madlib_keras_predict_byom(" + ", ".join(["%s"] * len(args)) + ")",
                               list(args))


def _predict_call(cur, *args):
    return lambda: cur.execute(f"SELECT {S}madlib_keras_predict(" + ", ".join(["%s"] * len(args)) + ")", list(args))


BYOM = ("arch", 1, "points", "id", "x", "out")
PREDICT = ("multi", "points", "id", "x2", "out", "prob", False, 1)


def _with(base, index, value):
    return base[:index] + (value,) + base[index + 1:]


@pytest.mark.parametrize("index, value, sqlstate, argument, fragments", [
    (3, "nope", "22023", "id_col", ("column 'nope' does not exist in table points",)),
    (3, None, "22023", "id_col", ("expected a column name",)),
    (3, "rank", "22023", "id_col", ("name of an output column",)),
    (4, "nope", "22023", "independent_varname", ("column 'nope' does not exist",)),
    (4, "name", "22023", "independent_varname", ("has type text; expected a numeric array",)),
    (2, "nope", "42P01", "test_table", ("table 'nope' does not exist",)),
    (2, "a; DROP TABLE points", "22023", "test_table", ("expected a table name",)),
    (5, "points", "42P07", "output_table", ("table 'points' already exists",)),
    (5, "nowhere.out", "42P01", "output_table", ("schema 'nowhere'",)),
    (0, "nope", "42P01", "model_arch_table", ("does not exist",)),
    (0, "points", "22023", "model_arch_table", ("not a model architecture table", "model_id, model_arch")),
    (1, 99, "22023", "model_id", ("no model with id 99 in table arch",)),
    (1, None, "22023", "model_id", ("got NULL",)),
    (1, 2, "22023", "model_id", ("has no weights (model_weights is NULL)", "load_keras_model")),
])
def test_byom_errors(cur, index, value, sqlstate, argument, fragments):
    _fails(cur, _byom_call(cur, *_with(BYOM, index, value)), sqlstate, argument, *fragments)


def test_text_array_features_refused(cur, bad_tables):
    _fails(cur, _byom_call(cur, "arch", 1, "text_array", "id", "x", "out"), "22023", "independent_varname",
           "has type text[]")


@pytest.mark.parametrize("extra, sqlstate, argument, fragments", [
    (("prob", False, ["a", "b"]), "22023", "class_values", ("has 2 values but the model has 3 outputs",)),
    (("prob", False, ["a", "b", "c", "d"]), "22023", "class_values", ("has 4 values",)),
    (("prob", False, None, 0.0), "22023", "normalizing_const", ("expected a positive number",)),
    (("prob", False, None, -2.0), "22023", "normalizing_const", ("got -2.0",)),
    (("prob", False, None, None, 2), "0A000", "dependent_count", ("several outputs are not supported", "got 2")),
    (("prob", False, None, None, 0), "22023", "dependent_count", ("expected 1",)),
])
def test_byom_argument_errors(cur, extra, sqlstate, argument, fragments):
    _fails(cur, _byom_call(cur, *BYOM, *extra), sqlstate, argument, *fragments)


@pytest.mark.parametrize("index, value, sqlstate, argument, fragments", [
    (7, 9, "22023", "mst_key", ("9 is not a model of 'multi'",)),
    (7, None, "22023", "mst_key", ("holds several models", "HINT:  Choose one with mst_key (one of 1, 2")),
    (0, "nope", "42P01", "model_table", ("does not exist",)),
    (0, "points", "22023", "model_table", ("not a model table",)),
    (3, "nope", "22023", "independent_varname", ("column 'nope' does not exist",)),
    (5, "foo", "22023", "pred_type", ("got 'foo'",)),
])
def test_predict_errors(cur, index, value, sqlstate, argument, fragments):
    _fails(cur, _predict_call(cur, *_with(PREDICT, index, value)), sqlstate, argument, *fragments)


@pytest.fixture(scope="module")
def packed_points(conn):
    with conn.cursor() as cur:
        cur.execute(f"SELECT {S}training_preprocessor_dl('points', 'points_packed', 'name', 'x')")
        cur.execute(f"SELECT {S}validation_preprocessor_dl('points', 'points_val_packed', 'name', 'x', 'points_packed')")


@pytest.mark.parametrize("packed", ["points_packed", "points_val_packed"])
def test_a_packed_test_table_is_refused_naming_the_table_it_was_made_from(cur, packed_points, packed):
    said = (f"test_table: '{packed}' is a packed table (made by training_preprocessor_dl or validation_preprocessor_dl "
            "from 'points'); predict reads one example per row: pass 'points'")
    hint = f"HINT:  A packed table such as '{packed}' is for madlib_keras_evaluate, which scores it."
    _fails(cur, _byom_call(cur, "arch", 1, packed, "id", "x", "out"), "22023", "test_table", said, hint)
    _fails(cur, _predict_call(cur, "single", packed, "id", "x", "out"), "22023", "test_table", said, hint)


def test_single_model_refuses_mst_key(cur):
    _fails(cur, _predict_call(cur, "single", "points", "id", "x", "out", "prob", False, 1), "22023", "mst_key",
           "holds a single model")


def test_use_gpus(cur, server, plain_role):
    """TRUE predicts on a GPU where TensorFlow in the server sees one, and is an error naming use_gpus
    elsewhere; a fresh session, so that no earlier call has hidden the GPUs."""
    with server.connect("predict", user=plain_role) as fresh, fresh.cursor() as c:
        has_gpu = bool(tf_setup.tensorflow().config.list_physical_devices("GPU"))
        call = _byom_call(c, *BYOM, "response", True)
        if has_gpu:
            call()
            c.execute("SELECT count(*) FROM out")
            assert c.fetchone() == (5,)
            c.execute("DROP TABLE out")
        else:
            _fails(c, call, "22023", "use_gpus", "sees no GPU")
        # FALSE after that works in the same session, on the CPU
        _byom_call(c, *BYOM, "response", False)()
        _assert_rows(c, _expected("response"))
        c.execute("DROP TABLE out")


# ---------------------------------------------------------------------------------------------------
# Streaming and the session's model cache

def test_2500_rows_each_scored_exactly_once(cur):
    cur.execute("DROP TABLE IF EXISTS many")
    cur.execute("CREATE TABLE many AS SELECT g AS id, ARRAY[(g % 4 = 0)::int, (g % 4 = 1)::int, (g % 4 = 2)::int, "
                "(g % 4 = 3)::int]::real[] AS x FROM generate_series(1, 2500) g")
    cur.execute(f"SELECT {S}madlib_keras_predict_byom('arch', 1, 'many', 'id', 'x', 'out', 'response')")
    cur.execute("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM out")
    assert cur.fetchone() == (2500, 2500, 1, 2500)
    cur.execute("SELECT id % 4, class_value, count(*) FROM out GROUP BY 1, 2 ORDER BY 1")
    assert cur.fetchall() == [(0, "0", 625), (1, "2", 625), (2, "0", 625), (3, "1", 625)]


class _Recording:
    """A database that records the batches it streams and the statements it runs."""

    def __init__(self, inner):
        self.inner = inner
        self.batch_sizes = []
        self.fetch_sizes = []
        self.statements = []

    def execute(self, sql, args=(), types=()):
        self.statements.append(sql)
        return self.inner.execute(sql, args, types)

    def batches(self, sql, args=(), types=(), size=1000):
        self.fetch_sizes.append(size)
        for batch in self.inner.batches(sql, args, types, size):
            self.batch_sizes.append(len(batch))
            yield batch

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_batches_are_bounded_and_the_model_is_built_once(conn, monkeypatch):
    """Run in this process against the server's tables: 2500 rows go through in batches of at most
    BATCH_ROWS, one INSERT per batch, and a second call with the same model builds nothing."""
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS many2, out_a, out_b, out_c")
        cur.execute("CREATE TABLE many2 AS SELECT g AS id, ARRAY[1, 0, 0, 0]::real[] AS x "
                    "FROM generate_series(1, 2500) g")
    built = []
    real_build = builder.model_from_json
    monkeypatch.setattr(builder, "model_from_json", lambda *a, **k: built.append(1) or real_build(*a, **k))
    predict_api._models.clear()
    recording = _Recording(madlib_db.PsycopgDatabase(conn))
    with madlib_db.using(recording):
        predict_api.madlib_keras_predict_byom("arch", 1, "many2", "id", "x", "out_a", "prob")
        assert recording.fetch_sizes == [predict_api.BATCH_ROWS] == [1000]
        assert recording.batch_sizes == [1000, 1000, 500]
        assert sum(s.startswith("INSERT INTO") for s in recording.statements) == 3
        predict_api.madlib_keras_predict_byom("arch", 1, "many2", "id", "x", "out_b", "response")
        assert len(built) == 1 and len(predict_api._models) == 1
        predict_api.madlib_keras_predict("multi", "many2", "id", "x", "out_c", "response", False, 2)
        assert len(built) == 2 and len(predict_api._models) == 2
    with conn.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM out_a), (SELECT count(DISTINCT id) FROM out_a), "
                    "(SELECT count(*) FROM out_b), (SELECT min(class_value) || max(class_value) FROM out_c)")
        assert cur.fetchone() == (7500, 2500, 2500, "eeleel")
        cur.execute("DROP TABLE many2, out_a, out_b, out_c")


def test_model_cache_is_bounded():
    predict_api._models.clear()
    for i in range(predict_api.MODEL_CACHE_SIZE + 2):
        weights = serialization.serialize_weights([KERNEL + i, BIAS])
        model = predict_api.Model(TINY_JSON, weights, "test", "y", ("a", "b", "c"), 1.0, (4,))
        predict_api._keras_model(model, "/CPU:0")
    assert len(predict_api._models) == predict_api.MODEL_CACHE_SIZE
    assert math.isclose(float(list(predict_api._models.values())[-1].get_weights()[0][0, 0]), KERNEL[0, 0] + 4,
                        rel_tol=1e-6)
