"""MADlib's madlib_keras_evaluate.sql_in, on madlib_dl: the output table of a single-model evaluate (with
and without use_gpus), mst_key refused for a single model and required for a multi-model table, NULL
table names and a model table without model_arch refused, and a fit_multiple model evaluated on its
training table reproducing its info table's final training loss and metric."""

from __future__ import annotations

import pytest

from compat import S, columns, create_iris, exists, fails, load_arch, mlp_json, pack_iris, row, scalar

CE = "loss='categorical_crossentropy'"


@pytest.fixture(scope="module")
def data(db):
    with db.cursor() as c:
        create_iris(c)
        pack_iris(c)
        c.execute(f"SELECT {S}validation_preprocessor_dl('iris_data', 'iris_val', 'class_text', 'attributes', "
                  "'iris_packed')")
        load_arch(c, "model_arch", mlp_json())
        c.execute(f"SELECT {S}madlib_keras_fit('iris_packed', 'keras_saved_out', 'model_arch', 1, "
                  f"$$ optimizer=SGD(lr=0.01, decay=1e-6, nesterov=True), {CE}, metrics=['mae']$$, "
                  "$$ batch_size=4, epochs=1, verbose=0 $$, 2)")
    return db


def test_evaluate_single_model(data, cur):
    cur.execute(f"SELECT {S}madlib_keras_evaluate('keras_saved_out', 'iris_val', 'evaluate_out', FALSE)")
    e = row(cur, "SELECT * FROM evaluate_out")
    assert e["loss"] >= 0 and e["metric"] >= 0
    assert e["metrics_type"] == ["mae"] and e["loss_type"] == "categorical_crossentropy"
    assert columns(cur, "evaluate_out") == {"loss": "double precision", "metric": "double precision",
                                            "metrics_type": "text[]", "loss_type": "text"}


def test_evaluate_without_use_gpus(data, cur):
    cur.execute(f"SELECT {S}madlib_keras_evaluate('keras_saved_out', 'iris_val', 'evaluate_out3')")
    e = row(cur, "SELECT * FROM evaluate_out3")
    assert e["loss"] >= 0 and e["metric"] >= 0 and e["metrics_type"] == ["mae"]
    # the same model on the same table: the same numbers
    cur.execute(f"SELECT {S}madlib_keras_evaluate('keras_saved_out', 'iris_val', 'evaluate_out4', NULL)")
    assert abs(scalar(cur, "SELECT loss FROM evaluate_out4") - e["loss"]) < 1e-6


@pytest.mark.parametrize("call", [
    "'keras_saved_out', 'iris_val', 'evaluate_bad', FALSE, 1",  # mst_key for a single-model table
    "NULL, 'iris_val', 'evaluate_bad', FALSE",
    "'keras_saved_out', NULL, 'evaluate_bad', FALSE",
], ids=["mst_key_for_single_model", "null_model_table", "null_test_table"])
def test_evaluate_refuses(data, cur, call):
    fails(cur, f"SELECT {S}madlib_keras_evaluate({call})")
    assert not exists(cur, "evaluate_bad")


def test_model_table_without_model_arch(data, cur):
    cur.execute("CREATE TABLE no_arch AS SELECT * FROM keras_saved_out")
    cur.execute("CREATE TABLE no_arch_summary AS SELECT * FROM keras_saved_out_summary")
    cur.execute("ALTER TABLE no_arch DROP COLUMN model_arch")
    fails(cur, f"SELECT {S}madlib_keras_evaluate('no_arch', 'iris_val', 'evaluate_bad')")
    assert not exists(cur, "evaluate_bad")


def test_multi_model_evaluate(data, cur):
    cur.execute(f"SELECT {S}load_model_selection_table('model_arch', 'mst_table', ARRAY[1], %s, %s)",
                [[f"{CE},optimizer='Adam(lr=0.1)',metrics=['accuracy']",
                  f"{CE}, optimizer='Adam(lr=0.01)',metrics=['accuracy']"],
                 ["batch_size=5,epochs=1"]])
    cur.execute(f"SELECT {S}madlib_keras_fit_multiple_model('iris_packed', 'multiple_model', 'mst_table', 2, "
                "FALSE)")
    cur.execute(f"SELECT {S}madlib_keras_evaluate('multiple_model', 'iris_packed', 'evaluate_mm', FALSE, 2)")
    e = row(cur, "SELECT * FROM evaluate_mm")
    i = row(cur, "SELECT * FROM multiple_model_info WHERE mst_key = 2")
    assert abs(e["metric"] - i["training_metrics_final"]) <= 1e-5 * max(1.0, abs(i["training_metrics_final"]))
    assert abs(e["loss"] - i["training_loss_final"]) <= 1e-5 * max(1.0, abs(i["training_loss_final"]))
    assert e["metrics_type"] == ["accuracy"]
    # a multi-model table needs mst_key
    fails(cur, f"SELECT {S}madlib_keras_evaluate('multiple_model', 'iris_val', 'evaluate_mm_bad')")
    assert not exists(cur, "evaluate_mm_bad")
