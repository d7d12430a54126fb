"""MADlib's madlib_keras_fit.sql_in, on madlib_dl: the summary table's columns and values (with and
without a validation table, metrics_compute_frequency, name and description, no metric), the compile and
fit parameter strings MADlib's tests use (Keras 2 optimizers such as SGD(lr=0.01, decay=1e-6,
nesterov=True), Adam(epsilon=None), loss_weights, sample_weight_mode=None, shuffle, initial_epoch,
steps_per_epoch, NULL fit_params), class values of text and integer types with NULL as a class and
padding, a non-numeric label column refused, and a quoted architecture table name."""

from __future__ import annotations

import math

import pytest
from psycopg2.extras import execute_values

from compat import S, create_iris, exists, fails, load_arch, mlp_json, pack_iris, row, scalar

SGD_DECAY = "optimizer=SGD(lr=0.01, decay=1e-6, nesterov=True), loss='categorical_crossentropy'"
FIT_PARAMS = " batch_size=4, epochs=1, verbose=0 "
FIT = f"SELECT {S}madlib_keras_fit(%s, %s, %s, %s, %s, %s, %s"


@pytest.fixture(scope="module")
def data(db):
    with db.cursor() as c:
        create_iris(c)
        # normalizing_const as in MADlib's cifar setup (not 1, so that it is really recorded); 2 segments
        pack_iris(c, normalizing_const=2.0)
        c.execute(f"SELECT {S}validation_preprocessor_dl('iris_data', 'iris_val', 'class_text', 'attributes', "
                  "'iris_packed')")
        load_arch(c, "model_arch", mlp_json())  # model id 1
        load_arch(c, "model_arch", mlp_json(classes=5))  # model id 2: five classes
    return db


def _summary(cur, table):
    return row(cur, f"SELECT * FROM {table}_summary")


def test_summary_with_validation_table(data, cur):
    compile_params = f" {SGD_DECAY}, metrics=['mae']"
    cur.execute(FIT + ", NULL, 'iris_val')",
                ["iris_packed", "keras_saved_out", "model_arch", 1, compile_params, FIT_PARAMS, 3])
    s = _summary(cur, "keras_saved_out")
    assert s["model_arch_table"] == "model_arch" and s["model_id"] == 1
    assert s["model_type"] == "madlib_keras"
    assert s["start_training_time"] < s["end_training_time"]
    assert scalar(cur, "SELECT end_training_time <= now() FROM keras_saved_out_summary")
    assert s["source_table"] == "iris_packed" and s["validation_table"] == "iris_val"
    assert s["model"] == "keras_saved_out"
    assert s["dependent_varname"] == ["class_text"] and s["independent_varname"] == ["attributes"]
    assert s["dependent_vartype"] == ["character varying"]
    assert s["normalizing_const"] == 2.0
    assert scalar(cur, "SELECT pg_typeof(normalizing_const) = 'real'::regtype FROM keras_saved_out_summary")
    assert s["name"] is None and s["description"] is None
    assert s["model_size"] > 0 and s["madlib_version"]
    # the strings are stored as the caller wrote them (MADlib's test compares them verbatim)
    assert s["compile_params"] == compile_params and s["fit_params"] == FIT_PARAMS
    assert s["num_iterations"] == 3
    assert s["metrics_compute_frequency"] == 3  # NULL means num_iterations
    assert s["num_classes"] == [3]
    assert s["class_text_class_values"] == ["Iris-setosa", "Iris-versicolor", "Iris-virginica"]
    assert s["metrics_type"] == ["mae"] and s["loss_type"] == "categorical_crossentropy"
    assert s["training_metrics_final"] >= 0 and s["training_loss_final"] >= 0
    assert len(s["training_metrics"]) == len(s["training_loss"]) == len(s["metrics_elapsed_time"]) == 1
    assert s["validation_metrics_final"] >= 0 and s["validation_loss_final"] >= 0
    assert len(s["validation_metrics"]) == len(s["validation_loss"]) == 1
    assert s["metrics_iters"] == [3]
    m = row(cur, "SELECT model_weights IS NOT NULL AS w, model_arch IS NOT NULL AS a FROM keras_saved_out")
    assert m == {"w": True, "a": True}
    # madlib_dl: Keras 2's decay is translated to a learning rate schedule, with a NOTICE (parameters.md)
    assert any("decay" in n for n in cur.connection.notices), cur.connection.notices


def test_metrics_compute_frequency(data, cur):
    cur.execute(FIT + ", NULL, 'iris_val', 2)",
                ["iris_packed", "keras_freq", "model_arch", 1, f"{SGD_DECAY}, metrics=['accuracy']", FIT_PARAMS, 3])
    s = _summary(cur, "keras_freq")
    assert s["num_iterations"] == 3 and s["metrics_compute_frequency"] == 2
    assert s["metrics_type"] == ["accuracy"]
    for key in ("training_metrics", "training_loss", "metrics_elapsed_time", "validation_metrics",
                "validation_loss"):
        assert len(s[key]) == 2, key  # iterations 2 and 3 (the last always)
    assert s["metrics_iters"] == [2, 3]
    assert 0 <= s["training_metrics_final"] <= 1 and 0 <= s["validation_metrics_final"] <= 1


def test_name_description_and_no_validation_table(data, cur):
    cur.execute(FIT + ", NULL, NULL, 1, NULL, 'model name', 'model desc')",
                ["iris_packed", "keras_out", "model_arch", 1, f"{SGD_DECAY}, metrics=['accuracy']", FIT_PARAMS, 2])
    s = _summary(cur, "keras_out")
    assert s["name"] == "model name" and s["description"] == "model desc"
    assert s["validation_table"] is None and s["metrics_compute_frequency"] == 1
    assert len(s["training_metrics"]) == len(s["training_loss"]) == len(s["metrics_elapsed_time"]) == 2
    assert s["training_metrics_final"] is not None and s["training_loss_final"] is not None
    for key in ("validation_metrics_final", "validation_loss_final", "validation_metrics", "validation_loss"):
        assert s[key] is None, key
    assert scalar(cur, "SELECT count(*) FROM keras_out WHERE model_weights IS NOT NULL") == 1


@pytest.mark.parametrize("metrics", ["", ", metrics=[]"], ids=["no_metrics", "empty_metrics"])
def test_no_metric(data, cur, metrics):
    out = "keras_nometric" + ("_empty" if metrics else "")
    cur.execute(FIT + ", NULL, 'iris_val')",
                ["iris_packed", out, "model_arch", 1, SGD_DECAY + metrics, FIT_PARAMS, 1])
    s = _summary(cur, out)
    assert s["metrics_type"] is None
    assert s["training_metrics"] is None and s["training_metrics_final"] is None
    assert s["validation_metrics"] is None and s["validation_metrics_final"] is None
    assert len(s["training_loss"]) == 1 and len(s["metrics_elapsed_time"]) == 1
    assert s["validation_loss_final"] >= 0 and len(s["validation_loss"]) == 1


@pytest.mark.parametrize("compile_params, fit_params, notice", [
    ("optimizer='SGD', loss='categorical_crossentropy', metrics=['accuracy']", FIT_PARAMS, None),
    ("optimizer='Adam()', loss='categorical_crossentropy', metrics=['accuracy']", FIT_PARAMS, None),
    ("optimizer=Adam(epsilon=None), loss='categorical_crossentropy', metrics=['accuracy']", FIT_PARAMS, "epsilon"),
    ("optimizer=SGD(lr=0.01, decay=1e-6, nesterov=True), metrics=['accuracy'], loss_weights=[2], "
     "sample_weight_mode=None, loss='categorical_crossentropy' ",
     " epochs=3, verbose=0, shuffle=True, initial_epoch=1, steps_per_epoch=2 ", "sample_weight_mode"),
    ("optimizer=SGD(lr=0.01, decay=1e-6, nesterov=True), metrics=['accuracy'], loss_weights=[2], "
     "sample_weight_mode=None, loss='categorical_crossentropy' ", None, "decay"),
], ids=["sgd_name", "adam_call", "epsilon_none", "keras2_everything", "null_fit_params"])
def test_compile_and_fit_parameter_strings(data, cur, compile_params, fit_params, notice):
    """Each string of MADlib's 'Compile and fit parameter tests' trains. madlib_dl translates what Keras 3
    removed (decay, epsilon=None, sample_weight_mode=None) and says so in a NOTICE (parameters.md)."""
    cur.execute("DROP TABLE IF EXISTS keras_params, keras_params_summary")
    cur.execute(FIT + ", NULL, NULL, NULL, FALSE, 'model name', 'model desc')",
                ["iris_packed", "keras_params", "model_arch", 1, compile_params, fit_params, 1])
    s = _summary(cur, "keras_params")
    assert s["compile_params"] == compile_params
    assert (s["fit_params"] or None) == fit_params  # NULL fit_params: the defaults, stored as ''
    assert math.isfinite(s["training_loss_final"]) and 0 <= s["training_metrics_final"] <= 1
    if notice:
        assert any(notice in n for n in cur.connection.notices), cur.connection.notices


def test_non_numeric_label_column_in_validation_table_is_refused(data, cur):
    """MADlib: a validation table whose label column is not the packed BYTEA (here an INTEGER) fails."""
    cur.execute("CREATE TABLE iris_val_failure AS SELECT * FROM iris_val")
    cur.execute("CREATE TABLE iris_val_failure_summary AS SELECT * FROM iris_val_summary")
    cur.execute("ALTER TABLE iris_val_failure RENAME class_text TO class_text_original")
    cur.execute("ALTER TABLE iris_val_failure RENAME buffer_id TO class_text")
    fails(cur, FIT + ", NULL, 'iris_val_failure')",
          ["iris_packed", "keras_failure", "model_arch", 1, f"{SGD_DECAY}, metrics=['accuracy']", FIT_PARAMS, 2])
    assert not exists(cur, "keras_failure") and not exists(cur, "keras_failure_summary")


@pytest.fixture(scope="module")
def labelled(data):
    """Rows with a text label and a SMALLINT label, each with NULL as one of its classes."""
    with data.cursor() as c:
        c.execute("CREATE TABLE labelled (id INTEGER, x REAL[], y_text TEXT, y SMALLINT)")
        texts = [None, "cat", "dog"]
        ints = [None, 0, 1, 4, 5]
        execute_values(c, "INSERT INTO labelled VALUES %s",
                       [(i, [i % 3 / 3.0, i % 5 / 5.0, 0.5, 1.0], texts[i % 3], ints[i % 5]) for i in range(30)])
    return data


@pytest.mark.parametrize("label, expected_type, expected_values", [
    ("y_text", "text", [None, "cat", "dog", None, None]),  # NULL a class; two NULLs of padding to 5
    ("y", "smallint", [None, 0, 1, 4, 5]),
], ids=["text", "smallint"])
def test_class_values_of_other_types(labelled, cur, label, expected_type, expected_values):
    packed = f"labelled_{label}_packed"
    cur.execute(f"SELECT {S}training_preprocessor_dl('labelled', %s, %s, 'x', 2, 255, ARRAY[5], '2')",
                [packed, label])
    out = f"keras_{label}_out"
    cur.execute(FIT + ")", [packed, out, "model_arch", 2, f"{SGD_DECAY}, metrics=['accuracy']", FIT_PARAMS, 1])
    s = _summary(cur, out)
    assert s["dependent_vartype"] == [expected_type]
    assert s[f"{label}_class_values"] == expected_values
    assert s["num_classes"] == [5]
    assert scalar(cur, f"SELECT pg_typeof({label}_class_values)::text FROM {out}_summary") == f"{expected_type}[]"


def test_quoted_architecture_table_name(data, cur):
    cur.execute('CREATE TABLE "special-char?" AS SELECT * FROM model_arch')
    cur.execute(FIT + ")", ["iris_packed", "keras_special", '"special-char?"', 1,
                            f"{SGD_DECAY}, metrics=['accuracy']", FIT_PARAMS, 1])
    assert row(cur, "SELECT model_arch_table, model_id FROM keras_special_summary") == {
        "model_arch_table": '"special-char?"', "model_id": 1}
