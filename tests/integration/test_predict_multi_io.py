"""madlib_keras_predict and madlib_keras_predict_byom with models of several inputs and outputs (MADlib's
multi-io) on a real server, as the plain role.

The trained model tables are made here, as madlib_keras_fit writes them for such a model: the model table
(model_weights BYTEA, model_arch JSON, optimizer_state BYTEA) and its summary, whose dependent_varname lists
one dependent variable per output ({class_text,class_text2}), each with its <dep>_class_values column. The
model is a Keras 3 functional model with two inputs and two softmax outputs (random weights, fixed seed),
as MADlib's iris multi-io example; every probability is compared with Keras' own model.predict on the same
(normalised) inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from psycopg2.extras import execute_values
from sklearn.datasets import load_iris

import refusals

from madlib_dl import db as madlib_db
from madlib_dl import trained_models
from madlib_dl.keras_runtime import serialization, tf_setup

keras = tf_setup.keras()

S = "madlib_dl."
NORMALIZING_CONST = 10.0
NAMES = ("setosa", "versicolor", "virginica")
SIZES = ("small", "medium", "large")
COMPILE = "loss='categorical_crossentropy', optimizer='Adam(learning_rate=0.01)', metrics=['accuracy']"


def _two_in_two_out(seed=7):
    """MADlib's iris multi-io model: inputs input_1 [None, 4] and input_2 [None, 4]; outputs dense_4 and
    dense_5, softmax over 3 classes each."""
    keras.utils.set_random_seed(seed)
    first, second = keras.Input((4,), name="input_1"), keras.Input((4,), name="input_2")
    hidden = keras.layers.Dense(8, activation="relu", name="dense_1")(first)
    hidden2 = keras.layers.Dense(8, activation="tanh", name="dense_2")(second)
    joined = keras.layers.Dense(8, activation="relu", name="dense_3")(keras.layers.Concatenate()([hidden, hidden2]))
    out = keras.layers.Dense(3, activation="softmax", name="dense_4")(joined)
    out2 = keras.layers.Dense(3, activation="softmax", name="dense_5")(hidden2)
    model = keras.Model([first, second], [out, out2])
    # a few epochs, so that the answers differ from row to row: species, and petal length in three bins
    x1, x2 = _features()
    labels = (load_iris().target, np.digitize(x1[:, 2], [3.0, 5.0]))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=["sparse_categorical_crossentropy"] * 2)
    model.fit([_normalised(x1), _normalised(x2)], list(labels), epochs=20, batch_size=16, verbose=0)
    return model


def _uneven(seed=11):
    """Inputs of shapes (4,) and (2, 2); outputs of 3 and 2 classes (the second output's Dense is followed
    by an Activation, as many models are written)."""
    keras.utils.set_random_seed(seed)
    first, second = keras.Input((4,), name="a"), keras.Input((2, 2), name="b")
    joined = keras.layers.Concatenate()([first, keras.layers.Flatten()(second)])
    out = keras.layers.Dense(3, activation="softmax", name="three")(joined)
    logits = keras.layers.Dense(2, name="two_logits")(joined)
    return keras.Model([first, second], [out, keras.layers.Activation("softmax", name="two")(logits)])


def _features():
    """Iris' 150 rows: attributes as they are, attributes2 the same values reversed and shifted."""
    data = load_iris().data
    return data, data[:, ::-1] + 1.0


def _normalised(x):
    """As the preprocessor and predict normalise: divided in double precision, then float32."""
    return (np.asarray(x, dtype=np.float64) / NORMALIZING_CONST).astype(np.float32)


MODEL = _two_in_two_out()
UNEVEN = _uneven()


def _keras_probs(model=MODEL, inputs=None):
    x1, x2 = inputs if inputs is not None else _features()
    return [np.asarray(p, dtype=np.float64) for p in model.predict([_normalised(x1), _normalised(x2)], verbose=0)]


# ---------------------------------------------------------------------------------------------------
# Database

def _model_tables(cur, name, model, dependents=("class_text", "class_text2"), class_values=(NAMES, SIZES),
                  independents=("attributes", "attributes2")):
    """A madlib_keras_fit output for ``model``, as fit writes it for several inputs and outputs."""
    cur.execute(f"CREATE TABLE {name} (model_weights BYTEA, model_arch JSON, optimizer_state BYTEA)")
    cur.execute(f"INSERT INTO {name} VALUES (%s, %s, NULL)",
                [serialization.serialize_weights(model.get_weights()), model.to_json()])
    class_columns = "".join(f", {d}_class_values TEXT[]" for d in dependents)
    cur.execute(f"CREATE TABLE {name}_summary (source_table TEXT, model TEXT, dependent_varname TEXT[], "
                "independent_varname TEXT[], compile_params TEXT, metrics_type TEXT[], loss_type TEXT, "
                f"num_classes INTEGER[], dependent_vartype TEXT[]{class_columns}, normalizing_const REAL)")
    cur.execute(f"INSERT INTO {name}_summary VALUES ('iris_mult_packed', %s, %s, %s, %s, ARRAY['accuracy'], "
                "'categorical_crossentropy', %s, %s" + ", %s" * len(dependents) + ", %s)",
                [name, list(dependents), list(independents), COMPILE,
                 [len(v) if v is not None else 3 for v in class_values], ["text"] * len(dependents),
                 *[list(v) if v is not None else None for v in class_values], NORMALIZING_CONST])


@pytest.fixture(scope="module")
def database(training_database):
    """The module's connection, as the plain role, to a database of its own (predict_multi_io)."""
    x1, x2 = _features()
    with training_database("predict_multi_io") as conn:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE iris_mult (id INTEGER, attributes DOUBLE PRECISION[], attributes2 REAL[], "
                        "flat REAL[], square REAL[], name TEXT)")
            execute_values(cur, "INSERT INTO iris_mult VALUES %s",
                           [(i, a.tolist(), b.tolist(), a.tolist(), b[:4].reshape(2, 2).tolist(), f"p{i}")
                            for i, (a, b) in enumerate(zip(x1, x2))])
            _model_tables(cur, "iris_model", MODEL)
            _model_tables(cur, "iris_onehot", MODEL, class_values=(None, None))
            _model_tables(cur, "uneven_model", UNEVEN, dependents=("kind", "flag"),
                          class_values=(NAMES, ("no", "yes")), independents=("flat", "square"))
            _model_tables(cur, "one_dependent", MODEL, dependents=("class_text",), class_values=(NAMES,))
            cur.execute(f"SELECT {S}load_keras_model('arch', %s::json, %s, 'multi-io')",
                        [MODEL.to_json(), serialization.serialize_weights(MODEL.get_weights())])
            cur.execute(f"SELECT {S}load_keras_model('arch', %s::json, %s, 'uneven')",
                        [UNEVEN.to_json(), serialization.serialize_weights(UNEVEN.get_weights())])
        yield conn


@pytest.fixture
def cur(database):
    with database.cursor() as c:
        c.execute("RESET ALL")
        c.execute("DROP TABLE IF EXISTS out")
        yield c


def _predict(cur, pred_type="prob", model="iris_model", features="attributes, attributes2"):
    cur.execute(f"SELECT {S}madlib_keras_predict(%s, 'iris_mult', 'id', %s, 'out', %s, FALSE)",
                [model, features, pred_type])


def _by_output(cur, class_values=(NAMES, SIZES), class_names=("class_text", "class_text2")):
    """The 'prob' output as one (150, classes) matrix per output, checking every row's class_name."""
    cur.execute("SELECT id, class_name, class_value, prob, rank FROM out")
    rows = cur.fetchall()
    assert len(rows) == 150 * sum(len(v) for v in class_values)
    probs = [np.full((150, len(v)), np.nan) for v in class_values]
    for i, name, value, prob, _ in rows:
        k = class_names.index(name)
        probs[k][i, list(class_values[k]).index(value)] = prob
    return probs, rows


# ---------------------------------------------------------------------------------------------------
# madlib_keras_predict

def test_prob_equals_keras_predict_for_each_output(cur):
    _predict(cur)  # MADlib's call, with pred_type 'prob'
    probs, rows = _by_output(cur)
    expected = _keras_probs()
    for mine, keras_probs in zip(probs, expected):
        np.testing.assert_allclose(mine, keras_probs, rtol=0, atol=1e-5)
    assert {r[1] for r in rows} == {"class_text", "class_text2"}
    # ranks within (id, class_name): 1 the most likely of that output
    for k, name in enumerate(("class_text", "class_text2")):
        ranks = {(i, v): r for i, n, v, _, r in rows if n == name}
        values = (NAMES, SIZES)[k]
        order = np.argsort(-expected[k], axis=1, kind="stable")
        for i in range(150):
            assert [ranks[(i, values[j])] for j in order[i]] == [1, 2, 3]
    cur.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'out'::regclass "
                "AND attnum > 0 ORDER BY attnum")
    assert [t for (t,) in cur.fetchall()] == ["integer", "text", "text", "double precision", "integer"]


def test_response_for_each_output(cur):
    _predict(cur, "response")
    cur.execute("SELECT id, class_name, class_value FROM out ORDER BY id, class_name")
    rows = cur.fetchall()
    expected = _keras_probs()
    assert rows == [row for i in range(150) for row in
                    ((i, "class_text", NAMES[int(np.argmax(expected[0][i]))]),
                     (i, "class_text2", SIZES[int(np.argmax(expected[1][i]))]))]
    cur.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'out' AND column_name = 'rank'")
    assert cur.fetchone() == (0,)
    assert len({r[2] for r in rows if r[1] == "class_text"}) > 1  # the model does not answer one class only


def test_threshold_half_applies_to_each_output(cur):
    _predict(cur, 0.5)
    cur.execute("SELECT id, class_name, class_value, prob, rank FROM out ORDER BY class_name, id, rank")
    rows = cur.fetchall()
    expected = _keras_probs()
    wanted = [(name, i, values[j]) for name, values, p in zip(("class_text", "class_text2"), (NAMES, SIZES), expected)
              for i in range(150) for j in np.argsort(-p[i], kind="stable") if p[i, j] > 0.5]
    assert [(n, i, v) for i, n, v, _, _ in rows] == wanted
    assert all(r[3] > 0.5 and r[4] == 1 for r in rows)  # above 0.5: only ever the most likely class
    assert {r[1] for r in rows} == {"class_text", "class_text2"}


def test_top_k_for_each_output(cur):
    _predict(cur, 2)
    cur.execute("SELECT class_name, count(*), max(rank) FROM out GROUP BY 1 ORDER BY 1")
    assert cur.fetchall() == [("class_text", 300, 2), ("class_text2", 300, 2)]


def test_one_hot_labels_give_each_output_its_indices(cur):
    _predict(cur, model="iris_onehot")
    probs, _ = _by_output(cur, class_values=(("0", "1", "2"), ("0", "1", "2")))
    for mine, keras_probs in zip(probs, _keras_probs()):
        np.testing.assert_allclose(mine, keras_probs, rtol=0, atol=1e-5)


def test_inputs_of_other_shapes_and_outputs_of_other_sizes(cur):
    """The second input is (2, 2), fed from a 2x2 REAL[]; the outputs have 3 and 2 classes."""
    _predict(cur, model="uneven_model", features="flat,square")
    probs, _ = _by_output(cur, class_values=(NAMES, ("no", "yes")), class_names=("kind", "flag"))
    x1, x2 = _features()
    expected = _keras_probs(UNEVEN, (x1, x2[:, :4].reshape(-1, 2, 2)))
    for mine, keras_probs in zip(probs, expected):
        np.testing.assert_allclose(mine, keras_probs, rtol=0, atol=1e-5)


def test_quoted_column_names_in_the_list(cur):
    cur.execute("DROP TABLE IF EXISTS quoted")
    cur.execute('CREATE TABLE quoted AS SELECT id, attributes AS "First, Input", attributes2 AS "x""2" '
                "FROM iris_mult")
    cur.execute(f"SELECT {S}madlib_keras_predict('iris_model', 'quoted', 'id', %s, 'out', 'prob')",
                ['"First, Input" , "x""2"'])
    probs, _ = _by_output(cur)
    for mine, keras_probs in zip(probs, _keras_probs()):
        np.testing.assert_allclose(mine, keras_probs, rtol=0, atol=1e-5)


def test_trained_model_lists_every_dependent(database):
    conn = madlib_db.PsycopgDatabase(database)
    with madlib_db.using(conn):
        model = trained_models.load(conn, "iris_model", None)
    assert model.dependent_varname == "class_text" and model.class_values == NAMES  # the first, as before
    assert model.class_values_column == "class_text_class_values"
    assert model.independent_varname == "attributes"
    assert model.dependent_varnames == ("class_text", "class_text2")
    assert model.independent_varnames == ("attributes", "attributes2")
    assert model.class_values_columns == ("class_text_class_values", "class_text2_class_values")
    assert model.all_class_values == (NAMES, SIZES)


# ---------------------------------------------------------------------------------------------------
# madlib_keras_predict_byom

def test_byom_class_values_one_row_per_output(cur):
    cur.execute(f"SELECT {S}madlib_keras_predict_byom('arch', 1, 'iris_mult', 'id', 'attributes, attributes2', "
                "'out', 'prob', FALSE, %s, %s, 2)", [[list(NAMES), list(SIZES)], NORMALIZING_CONST])
    probs, _ = _by_output(cur, class_names=("dependent_var_0", "dependent_var_1"))
    for mine, keras_probs in zip(probs, _keras_probs()):
        np.testing.assert_allclose(mine, keras_probs, rtol=0, atol=1e-5)


def test_byom_one_list_for_every_output_and_the_default_dependent_count(cur):
    """One list serves every output when each has that many classes; the INTEGER overload (no
    dependent_count) works too."""
    cur.execute(f"SELECT {S}madlib_keras_predict_byom('arch', 1, 'iris_mult', 'id', 'attributes, attributes2', "
                "'out', 1, FALSE, %s, %s)", [list(SIZES), NORMALIZING_CONST])
    cur.execute("SELECT id, class_name, class_value FROM out ORDER BY id, class_name")
    expected = _keras_probs()
    assert cur.fetchall() == [row for i in range(150) for row in
                              ((i, "dependent_var_0", SIZES[int(np.argmax(expected[0][i]))]),
                               (i, "dependent_var_1", SIZES[int(np.argmax(expected[1][i]))]))]


def test_byom_padded_rows_and_defaults(cur):
    """Rows NULL-padded to the longest (PostgreSQL arrays are rectangular); a row of NULLs: 0, 1, ..."""
    cur.execute(f"SELECT {S}madlib_keras_predict_byom('arch', 2, 'iris_mult', 'id', 'flat, square', 'out', "
                "'prob', FALSE, ARRAY[ARRAY['a', 'b', 'c'], ARRAY['no', 'yes', NULL]], 10.0, 2)")
    classes = "SELECT class_name, array_agg(DISTINCT class_value ORDER BY class_value) FROM out GROUP BY 1 ORDER BY 1"
    cur.execute(classes)
    assert cur.fetchall() == [("dependent_var_0", ["a", "b", "c"]), ("dependent_var_1", ["no", "yes"])]
    cur.execute("DROP TABLE out")
    cur.execute(f"SELECT {S}madlib_keras_predict_byom('arch', 2, 'iris_mult', 'id', 'flat, square', 'out', "
                "'prob', FALSE, ARRAY[ARRAY['a', 'b', 'c'], ARRAY[NULL, NULL, NULL]], 10.0)")
    cur.execute(classes)
    assert cur.fetchall() == [("dependent_var_0", ["a", "b", "c"]), ("dependent_var_1", ["0", "1"])]


# ---------------------------------------------------------------------------------------------------
# Errors: one clean error naming the argument, and no table left behind

def _fails(cur, sql, args, sqlstate, argument, *fragments):
    # tables are compared by name
    return refusals.refused(cur, lambda: cur.execute(sql, args), sqlstate, argument, *fragments, oids=False)


PREDICT = f"SELECT {S}madlib_keras_predict(%s, 'iris_mult', 'id', %s, 'out', 'prob')"
BYOM = f"SELECT {S}madlib_keras_predict_byom('arch', %s, 'iris_mult', 'id', 'attributes, attributes2', 'out', " \
       "'prob', FALSE, %s, NULL, %s)"


@pytest.mark.parametrize("features, fragments", [
    ("attributes", ("got 1 column (attributes) but the model has 2 inputs", "expected 2 comma-separated array "
                    "columns, one per input in the model's input order (shapes (4,), (4,))")),
    ("attributes, attributes2, attributes", ("got 3 columns (attributes, attributes2, attributes) but the model "
                                             "has 2 inputs",)),
])
def test_wrong_number_of_independent_columns(cur, features, fragments):
    _fails(cur, PREDICT, ["iris_model", features], "22023", "independent_varname", *fragments)


def test_two_columns_for_a_model_of_one_input(cur, database):
    with database.cursor() as c:
        c.execute("DROP TABLE IF EXISTS single_in, single_in_summary")
        single = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        _model_tables(c, "single_in", single, dependents=("class_text",), class_values=(NAMES,),
                      independents=("attributes",))
    _fails(cur, PREDICT, ["single_in", "attributes, attributes2"], "22023", "independent_varname",
           "got 2 columns (attributes, attributes2) but the model has 1 input;")


def test_wrong_shape_in_the_second_column(cur, database):
    with database.cursor() as c:  # attributes2 holds 4 values in every row but one
        c.execute("DROP TABLE IF EXISTS short_second")
        c.execute("CREATE TABLE short_second AS SELECT id, attributes, attributes2 FROM iris_mult")
        c.execute("UPDATE short_second SET attributes2 = attributes2[1:3] WHERE id = 42")
    _fails(cur, f"SELECT {S}madlib_keras_predict('iris_model', 'short_second', 'id', 'attributes, attributes2', "
           "'out')", [], "22023", "independent_varname",
           "column 'attributes2' of short_second must hold 4 values (the shape of the model's input 2 (4,)) in every "
           "row; 1 row does not: the row with id = '42' has 3 values")
    _fails(cur, f"SELECT {S}madlib_keras_predict('uneven_model', 'iris_mult', 'id', 'flat, name', 'out')",
           [], "22023", "independent_varname", "column 'name' of iris_mult has type text; expected a numeric array")


def test_nan_in_the_second_column_names_it(cur, database):
    with database.cursor() as c:
        c.execute("DROP TABLE IF EXISTS nan_second")
        c.execute("CREATE TABLE nan_second AS SELECT id, attributes, attributes2 FROM iris_mult")
        c.execute("UPDATE nan_second SET attributes2[2] = 'NaN' WHERE id = 7")
    _fails(cur, f"SELECT {S}madlib_keras_predict('iris_model', 'nan_second', 'id', 'attributes, attributes2', "
           "'out')", [], "22023", "independent_varname",
           "the array in column 'attributes2' of the row with id = '7' holds NaN or infinite values; expected 4 "
           "values (the shape of the model's input 2 (4,)), all finite")


def test_summary_with_fewer_dependents_than_outputs(cur):
    _fails(cur, PREDICT, ["one_dependent", "attributes, attributes2"], "22023", "model_table",
           "the model has 2 outputs but its summary lists 1 dependent variables (class_text)")


@pytest.mark.parametrize("model_id, class_values, count, sqlstate, argument, fragments", [
    (1, [list(NAMES), list(SIZES), list(NAMES)], 2, "22023", "class_values",
     ("has 3 rows, one per dependent variable, but the model has 2 outputs; expected 2 rows",)),
    (1, [list(NAMES)], 2, "22023", "class_values", ("has 1 rows", "expected 2 rows")),
    (1, [["a", "b", "c"], ["x", "y", "z"]], 3, "22023", "dependent_count",
     ("expected 2 (the model's 2 outputs) or 1, got 3",)),
    (1, None, 0, "22023", "dependent_count", ("got 0",)),
    (1, ["a", "b"], 2, "22023", "class_values",
     ("one list of 2 values, but the model's 2 outputs have 3, 3 classes",)),
    (2, ["a", "b", "c"], 2, "22023", "class_values",
     ("one list of 3 values, but the model's 2 outputs have 3, 2 classes; one list is used for every output only "
      "when each has that many", "HINT:  Give one row per output")),
    (2, [["a", "b", "c"], ["x", "y", "z"]], 2, "22023", "class_values",
     ("row 2 has 3 values but the model's output 2 has 2 classes",)),
], ids=["three_rows", "one_row", "count_3", "count_0", "short_list", "list_for_uneven", "long_second_row"])
def test_byom_errors(cur, model_id, class_values, count, sqlstate, argument, fragments):
    args = [model_id, class_values, count]
    if model_id == 2:
        sql = BYOM.replace("'attributes, attributes2'", "'flat, square'")
    else:
        sql = BYOM
    _fails(cur, sql, args, sqlstate, argument, *fragments)


def test_byom_wrong_number_of_columns(cur):
    _fails(cur, f"SELECT {S}madlib_keras_predict_byom('arch', 1, 'iris_mult', 'id', 'attributes', 'out')", [],
           "22023", "independent_varname", "got 1 column (attributes) but the model has 2 inputs")


def test_batches_stream_every_row_once(cur, database):
    """2500 rows through batches of 1000: every (row, output, class) once."""
    cur.execute("DROP TABLE IF EXISTS many")
    cur.execute("CREATE TABLE many AS SELECT g AS id, attributes, attributes2 FROM generate_series(1, 2500) g "
                "JOIN iris_mult ON iris_mult.id = g % 150")
    cur.execute(f"SELECT {S}madlib_keras_predict('iris_model', 'many', 'id', 'attributes, attributes2', 'out', 2)")
    cur.execute("SELECT count(*), count(DISTINCT id), count(DISTINCT (id, class_name, class_value)) FROM out")
    assert cur.fetchone() == (2 * 2 * 2500, 2500, 2 * 2 * 2500)


def test_a_list_of_scalar_columns_says_to_make_arrays(cur, database):
    with database.cursor() as c:
        c.execute("DROP TABLE IF EXISTS scalars")
        c.execute("CREATE TABLE scalars AS SELECT id, attributes[1] AS sl, attributes[2] AS sw FROM iris_mult")
    _fails(cur, f"SELECT {S}madlib_keras_predict('iris_model', 'scalars', 'id', 'sl, sw', 'out')", [], "22023",
           "independent_varname", "column 'sl' of scalars has type double precision; expected a numeric array",
           "one column per model input", "HINT:  Make a model input's features one array column")
