"""MADlib's madlib_keras_predict.sql_in (and the byom basics of madlib_keras_predict_byom.sql_in), on
madlib_dl: the output table's columns and types for each pred_type (prob, a probability threshold, top
k, response), class values of text type with NULL as a class and padding, one-hot labels (class indexes),
a packed table and a wrongly shaped test table refused, the architecture read from the model table (the
architecture table may be gone), and a fit_multiple model predicting its training rows with the accuracy
of its info table."""

from __future__ import annotations

import pytest
from psycopg2.extras import execute_values

from compat import CLASSES, S, columns, create_iris, exists, fails, load_arch, mlp_json, pack_iris, scalar

SGD = "optimizer=SGD(lr=0.01, decay=1e-6, nesterov=True), loss='categorical_crossentropy', metrics=['accuracy']"
PREDICT = f"SELECT {S}madlib_keras_predict(%s, %s, 'id', %s, %s, %s, FALSE"


@pytest.fixture(scope="module")
def data(db):
    with db.cursor() as c:
        create_iris(c)
        pack_iris(c)
        load_arch(c, "model_arch", mlp_json())
        load_arch(c, "model_arch", mlp_json(classes=5))
        c.execute(f"SELECT {S}madlib_keras_fit('iris_packed', 'keras_saved_out', 'model_arch', 1, %s, "
                  "'batch_size=4, epochs=1', 2)", [SGD])
    return db


@pytest.fixture(scope="module")
def n(data):
    return scalar(data.cursor(), "SELECT count(*) FROM iris_data")


def test_predict_prob(data, cur, n):
    cur.execute(PREDICT + ")", ["keras_saved_out", "iris_data", "attributes", "iris_predict", None])
    assert columns(cur, "iris_predict") == {"id": "integer", "class_name": "text", "class_value": "text",
                                            "prob": "double precision", "rank": "integer"}
    assert scalar(cur, "SELECT count(*) FROM iris_predict") == 3 * n  # NULL pred_type: 'prob', every class
    assert set(scalar(cur, "SELECT array_agg(DISTINCT class_value) FROM iris_predict")) == set(CLASSES)
    assert scalar(cur, "SELECT max(abs(s - 1)) FROM (SELECT sum(prob) s FROM iris_predict GROUP BY id) t") < 1e-5


def test_packed_table_is_refused(data, cur):
    fails(cur, PREDICT + ")", ["keras_saved_out", "iris_packed", "attributes", "predict_bad", None])
    assert not exists(cur, "predict_bad")


def test_pred_type_threshold_and_top_k(data, cur, n):
    cur.execute(PREDICT + ")", ["keras_saved_out", "iris_data", "attributes", "predict_threshold", 0.2])
    assert len(columns(cur, "predict_threshold")) == 5
    assert columns(cur, "predict_threshold")["prob"] == "double precision"
    assert scalar(cur, "SELECT min(prob) FROM predict_threshold") > 0.2
    cur.execute(PREDICT + ")", ["keras_saved_out", "iris_data", "attributes", "predict_top2", 2])
    assert len(columns(cur, "predict_top2")) == 5
    assert scalar(cur, "SELECT count(*) FROM predict_top2") == 2 * n
    assert scalar(cur, "SELECT array_agg(DISTINCT rank ORDER BY rank) FROM predict_top2") == [1, 2]


def test_pred_type_response(data, cur, n):
    cur.execute(PREDICT + ")", ["keras_saved_out", "iris_data", "attributes", "predict_response", "response"])
    assert "rank" not in columns(cur, "predict_response")  # dropped for 'response', as in MADlib
    assert scalar(cur, "SELECT count(*) FROM predict_response") == n
    assert scalar(cur, "SELECT count(DISTINCT id) FROM predict_response") == n


def test_text_class_values_with_null_class(data, cur):
    """Labels 'cat', 'dog' and NULL (a class), padded to 5 classes: every class gets a row with 'prob';
    'response' writes one text class_value per id."""
    cur.execute("CREATE TABLE labelled (id INTEGER, x REAL[], y TEXT)")
    execute_values(cur, "INSERT INTO labelled VALUES %s",
                   [(i, [i % 3 / 3.0, i % 5 / 5.0, 0.5, 1.0], [None, "cat", "dog"][i % 3]) for i in range(30)])
    cur.execute(f"SELECT {S}training_preprocessor_dl('labelled', 'labelled_packed', 'y', 'x', 2, 1.0, ARRAY[5], "
                "'2')")
    cur.execute(f"SELECT {S}madlib_keras_fit('labelled_packed', 'text_model', 'model_arch', 2, %s, "
                "'batch_size=4, epochs=1', 1)", [SGD])
    assert scalar(cur, "SELECT y_class_values FROM text_model_summary") == [None, "cat", "dog", None, None]
    cur.execute(PREDICT + ")", ["text_model", "labelled", "x", "text_prob", "prob"])
    assert scalar(cur, "SELECT count(*) FROM text_prob WHERE id = 0") == 5
    assert scalar(cur, "SELECT count(*) FROM text_prob WHERE class_value = 'cat'") == 30
    cur.execute(PREDICT + ")", ["text_model", "labelled", "x", "text_response", "response"])
    assert columns(cur, "text_response")["class_value"] == "text"
    assert scalar(cur, "SELECT count(*) FROM text_response") == 30


def test_one_hot_labels_give_class_indexes(data, cur, n):
    cur.execute(f"SELECT {S}training_preprocessor_dl('iris_data_one_hot_encoded', 'one_hot_packed', "
                "'class_one_hot_encoded', 'attributes', NULL, 1.0, NULL, '2')")
    cur.execute(f"SELECT {S}madlib_keras_fit('one_hot_packed', 'one_hot_model', 'model_arch', 1, %s, "
                "'batch_size=4, epochs=1', 1)", [SGD])
    cur.execute(PREDICT + ")", ["one_hot_model", "iris_data_one_hot_encoded", "attributes", "one_hot_prob",
                                "prob"])
    assert scalar(cur, "SELECT array_agg(DISTINCT class_value ORDER BY class_value) FROM one_hot_prob") == [
        "0", "1", "2"]
    cur.execute(PREDICT + ")", ["one_hot_model", "iris_data_one_hot_encoded", "attributes", "one_hot_response",
                                "response"])
    assert scalar(cur, "SELECT count(*) FROM one_hot_response") == n


def test_wrong_shape_is_refused(data, cur):
    cur.execute("CREATE TABLE iris_shape AS SELECT id, attributes[1:3] AS attributes FROM iris_data")
    fails(cur, PREDICT + ")", ["keras_saved_out", "iris_shape", "attributes", "predict_bad", "prob"])
    assert not exists(cur, "predict_bad")


def test_architecture_comes_from_the_model_table(data, cur, n):
    cur.execute("CREATE TABLE model_arch_saved AS SELECT * FROM model_arch")
    cur.execute("DROP TABLE model_arch")
    try:
        cur.execute(PREDICT + ")", ["keras_saved_out", "iris_data", "attributes", "predict_no_arch", "prob"])
        assert scalar(cur, "SELECT count(*) FROM predict_no_arch") == 3 * n
    finally:
        cur.execute("ALTER TABLE model_arch_saved RENAME TO model_arch")


def test_multi_model_predict_matches_training_accuracy(data, cur, n):
    cur.execute(f"SELECT {S}load_model_selection_table('model_arch', 'mst_table', ARRAY[1], %s, %s)",
                [[f"loss='categorical_crossentropy', optimizer='Adam(lr={lr})', metrics=['accuracy']"
                  for lr in ("0.01", "0.001")], ["batch_size=8, epochs=1"]])
    cur.execute(f"SELECT {S}madlib_keras_fit_multiple_model('iris_packed', 'iris_multiple_model', 'mst_table', "
                "3, FALSE)")
    cur.execute(f"SELECT {S}madlib_keras_predict('iris_multiple_model', 'iris_data', 'id', 'attributes', "
                "'iris_predict_mm', 'response', NULL, 2)")
    accuracy = scalar(cur, "SELECT avg((p.class_value = d.class_text)::int) FROM iris_predict_mm p "
                           "JOIN iris_data d USING (id)")
    final = scalar(cur, "SELECT training_metrics_final FROM iris_multiple_model_info WHERE mst_key = 2")
    # predicting every training row is the final evaluation on the training table
    assert abs(float(accuracy) - final) < 1e-5


def test_predict_byom(data, cur, n):
    """byom: the architecture table's model with weights loaded, class values and normalizing_const given;
    the same probabilities as predicting from the model table. NULL weights are refused."""
    cur.execute(f"SELECT {S}load_keras_model('byom_arch', model_arch, model_weights) FROM keras_saved_out")
    cur.execute(f"SELECT {S}madlib_keras_predict_byom('byom_arch', 1, 'iris_data', 'id', 'attributes', "
                "'byom_out', 'prob', NULL, %s, 1.0)", [list(CLASSES)])
    cur.execute(PREDICT + ")", ["keras_saved_out", "iris_data", "attributes", "byom_ref", "prob"])
    assert scalar(cur, "SELECT count(*) FROM byom_out") == 3 * n
    assert scalar(cur, "SELECT max(abs(b.prob - r.prob)) FROM byom_out b JOIN byom_ref r "
                       "USING (id, class_value)") < 1e-6
    assert scalar(cur, "SELECT array_agg(DISTINCT class_name) FROM byom_out") == ["dependent_var"]
    cur.execute(f"SELECT {S}madlib_keras_predict_byom('byom_arch', 1, 'iris_data', 'id', 'attributes', "
                "'byom_idx', 'response')")
    assert set(scalar(cur, "SELECT array_agg(DISTINCT class_value) FROM byom_idx")) <= {"0", "1", "2"}
    cur.execute(f"SELECT {S}load_keras_model('byom_arch', %s::json)", [mlp_json()])  # model 2: no weights
    fails(cur, f"SELECT {S}madlib_keras_predict_byom('byom_arch', 2, 'iris_data', 'id', 'attributes', "
               "'byom_bad')")
    assert not exists(cur, "byom_bad")
