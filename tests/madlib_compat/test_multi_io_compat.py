"""MADlib's madlib_keras_multi_io.sql_in, on madlib_dl: a model with two inputs and two outputs, packed
from lists of columns ('class_text, class_text2', 'attributes, attributes2'), trained by fit (with a
validation table, warm start, transfer learning and a custom loss) and evaluated and predicted on. MADlib
refuses such models in fit_multiple; madlib_dl trains them there too (docs/migrating-from-madlib.md).

Beyond MADlib's file: the second output has its own classes (2, not 3), the info and summary tables report
each output's loss and metric, evaluate equals Keras' own evaluate of the stored weights on the same
examples (so the inputs and outputs pair with the right columns), and mismatches are refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from compat import CLASSES, S, create_iris, fails, keras, load_arch, row, rows, scalar

CE = "loss='categorical_crossentropy', optimizer='Adam(learning_rate=0.05)', metrics=['categorical_accuracy']"
FIT = "$$ batch_size=5, epochs=3 $$"
SECOND = ("other", "setosa")  # class_text2's levels, sorted


def two_in_two_out(units=(3, 2), seed=3):
    """MADlib's multi-io test model in Keras 3: input_1 -> dense, input_2 -> dense_2; two softmax heads."""
    k = keras()
    k.utils.set_random_seed(seed)
    first, second = k.Input((4,), name="input_1"), k.Input((4,), name="input_2")
    a = k.layers.Dense(10, activation="relu", name="dense")(first)
    b = k.layers.Dense(10, activation="relu", name="dense_2")(second)
    out1 = k.layers.Dense(units[0], activation="softmax", name="dense_4")(k.layers.Concatenate()([a, b]))
    out2 = k.layers.Dense(units[1], activation="softmax", name="dense_5")(b)
    return k.Model([first, second], [out1, out2])


@pytest.fixture(scope="module")
def data(db):
    with db.cursor() as c:
        create_iris(c)
        c.execute("CREATE TABLE iris_mult AS SELECT id, attributes, "
                  "(SELECT array_agg(v * v ORDER BY n) FROM unnest(attributes) WITH ORDINALITY u(v, n)) AS attributes2, "
                  "class_text, CASE WHEN class_text = 'Iris-setosa' THEN 'setosa' ELSE 'other' END AS class_text2 "
                  "FROM iris_data")
        c.execute(f"SELECT {S}training_preprocessor_dl('iris_mult', 'iris_mult_packed', 'class_text, class_text2', "
                  "'attributes, attributes2', NULL, 255, NULL, '2')")
        c.execute(f"SELECT {S}validation_preprocessor_dl('iris_mult', 'iris_mult_val', 'class_text, class_text2', "
                  "'attributes, attributes2', 'iris_mult_packed')")
        load_arch(c, "iris_model_arch", two_in_two_out().to_json(), name="two in, two out")
        c.execute(f"SELECT {S}madlib_keras_fit('iris_mult_packed', 'iris_model', 'iris_model_arch', 1, $${CE}$$, "
                  f"{FIT}, 3, NULL, 'iris_mult_val', 1)")
    return db


def _stored_model(cur, table: str, where: str = ""):
    """The trained Keras model of ``table`` (MADlib's flat float32 weights)."""
    stored = row(cur, f"SELECT model_arch::text AS arch, model_weights FROM {table} {where}")
    model = keras().models.model_from_json(stored["arch"])
    flat, at, weights = np.frombuffer(bytes(stored["model_weights"]), "<f4"), 0, []
    for w in model.get_weights():
        weights.append(flat[at:at + w.size].reshape(w.shape))
        at += w.size
    assert at == flat.size
    model.set_weights(weights)
    return model


def _examples(cur):
    data = rows(cur, "SELECT attributes, attributes2, class_text, class_text2 FROM iris_mult ORDER BY id")
    scale = scalar(cur, "SELECT normalizing_const FROM iris_mult_packed_summary")  # 255, as MADlib's test packs
    x = [(np.array([[float(v) for v in r[c]] for r in data]) / scale).astype(np.float32)
         for c in ("attributes", "attributes2")]
    y = [np.eye(3, dtype=np.float32)[[CLASSES.index(r["class_text"]) for r in data]],
         np.eye(2, dtype=np.float32)[[SECOND.index(r["class_text2"]) for r in data]]]
    return x, y


def test_packed_summary_lists_every_variable(data, cur):
    s = row(cur, "SELECT * FROM iris_mult_packed_summary")
    assert s["dependent_varname"] == ["class_text", "class_text2"]
    assert s["independent_varname"] == ["attributes", "attributes2"]
    assert s["num_classes"] == [3, 2]
    assert s["class_text_class_values"] == list(CLASSES) and s["class_text2_class_values"] == list(SECOND)


def test_fit_reports_each_output(data, cur):
    s = row(cur, "SELECT * FROM iris_model_summary")
    assert s["dependent_varname"] == ["class_text", "class_text2"] and s["num_classes"] == [3, 2]
    assert s["class_text2_class_values"] == list(SECOND)
    assert len(s["training_loss_per_output"]) == 2 and len(s["validation_metrics_per_output"]) == 2
    # the model's metric is the mean of its outputs' metrics; its loss the sum of theirs (no regularisation)
    assert s["training_metrics_final"] == pytest.approx(np.mean(s["training_metrics_per_output"]), rel=1e-6)
    assert s["validation_loss_final"] == pytest.approx(sum(s["validation_loss_per_output"]), rel=1e-4)
    assert s["validation_metrics_final"] > 0.6  # separable clusters: it learns


def test_evaluate_equals_keras_on_the_stored_weights(data, cur):
    cur.execute(f"SELECT {S}madlib_keras_evaluate('iris_model', 'iris_mult_val', 'evaluate_out', FALSE)")
    e = row(cur, "SELECT * FROM evaluate_out")
    model = _stored_model(cur, "iris_model")
    model.compile(loss="categorical_crossentropy", metrics=[["categorical_accuracy"]] * 2)
    x, y = _examples(cur)
    # one batch: Keras' per-output losses over several batches are not example-weighted means
    expected = model.evaluate(x, y, batch_size=len(x[0]), verbose=0, return_dict=True)
    assert e["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert e["loss_per_output"] == pytest.approx([expected["dense_4_loss"], expected["dense_5_loss"]], rel=1e-4)
    assert e["metric_per_output"] == pytest.approx(
        [expected["dense_4_categorical_accuracy"], expected["dense_5_categorical_accuracy"]], rel=1e-5)
    assert e["dependent_varname"] == ["class_text", "class_text2"]


def test_predict_takes_a_list_of_independent_columns(data, cur):
    cur.execute(f"SELECT {S}madlib_keras_predict('iris_model', 'iris_mult', 'id', 'attributes, attributes2', "
                "'iris_predict', 'response', FALSE)")
    got = rows(cur, "SELECT id, class_name, class_value FROM iris_predict ORDER BY id, class_name")
    assert {r["class_name"] for r in got} == {"class_text", "class_text2"} and len(got) == 2 * 36
    model = _stored_model(cur, "iris_model")
    x, _ = _examples(cur)
    first, second = model.predict(x, verbose=0)
    for r in got:
        probs, levels = (first, CLASSES) if r["class_name"] == "class_text" else (second, SECOND)
        assert r["class_value"] == levels[int(np.argmax(probs[r["id"] - 1]))]


def test_warm_start_continues(data, cur):
    before = scalar(cur, "SELECT training_loss_final FROM iris_model_summary")
    cur.execute(f"SELECT {S}madlib_keras_fit('iris_mult_packed', 'iris_model', 'iris_model_arch', 1, $${CE}$$, "
                f"{FIT}, 3, NULL, 'iris_mult_val', 1, TRUE)")
    s = row(cur, "SELECT training_loss_final, total_iterations FROM iris_model_summary")
    assert s["total_iterations"] == 6 and s["training_loss_final"] < before


def test_transfer_learning_starts_from_the_stored_weights(data, cur):
    cur.execute("CREATE TABLE iris_model_arch_multi AS SELECT * FROM iris_model_arch")
    cur.execute("UPDATE iris_model_arch_multi SET model_weights = (SELECT model_weights FROM iris_model)")
    frozen = "$$ batch_size=5, epochs=1, shuffle=False $$"
    cur.execute(f"SELECT {S}madlib_keras_fit('iris_mult_packed', 'iris_transfer', 'iris_model_arch_multi', 1, "
                f"$$ loss='categorical_crossentropy', optimizer='SGD(learning_rate=0.0)', "
                f"metrics=['categorical_accuracy'] $$, {frozen}, 1)")
    cur.execute(f"SELECT {S}madlib_keras_evaluate('iris_model', 'iris_mult_packed', 'eval_source', FALSE)")
    transferred = scalar(cur, "SELECT training_loss_final FROM iris_transfer_summary")
    assert transferred == pytest.approx(scalar(cur, "SELECT loss FROM eval_source"), rel=1e-4)


def test_fit_multiple_trains_and_reports_each_output(data, cur):
    cur.execute(f"SELECT {S}load_model_selection_table('iris_model_arch', 'mst_multi', ARRAY[1], "
                f"ARRAY[$${CE}$$, $$loss='categorical_crossentropy', optimizer='SGD(learning_rate=0.1)', "
                "metrics=['categorical_accuracy']$$], ARRAY[$$batch_size=8, epochs=1$$])")
    cur.execute(f"SELECT {S}madlib_keras_fit_multiple_model('iris_mult_packed', 'iris_multi_models', 'mst_multi', "
                "3, FALSE, 'iris_mult_val', 1)")
    info = rows(cur, "SELECT * FROM iris_multi_models_info ORDER BY mst_key")
    assert len(info) == 2
    for r in info:
        assert len(r["validation_loss_per_output"]) == 2 and len(r["training_metrics"]) == 3
        assert r["validation_metrics_final"] == pytest.approx(np.mean(r["validation_metrics_per_output"]), rel=1e-6)
    cur.execute(f"SELECT {S}madlib_keras_evaluate('iris_multi_models', 'iris_mult_val', 'eval_multi', FALSE, 2)")
    e = row(cur, "SELECT * FROM eval_multi")
    assert e["loss"] == pytest.approx(info[1]["validation_loss_final"], rel=1e-4)


def test_a_model_that_does_not_match_the_variables_is_refused(data, cur):
    from compat import mlp_json

    one_input = load_arch(cur, "iris_model_arch", mlp_json())
    fails(cur, f"SELECT {S}madlib_keras_fit('iris_mult_packed', 'bad_fit', 'iris_model_arch', {one_input}, "
          f"$${CE}$$, {FIT}, 1)", match="has 1 input(s) but 2 independent variable(s)")
    wrong_units = load_arch(cur, "iris_model_arch", two_in_two_out(units=(3, 3)).to_json())
    fails(cur, f"SELECT {S}madlib_keras_fit('iris_mult_packed', 'bad_fit', 'iris_model_arch', {wrong_units}, "
          f"$${CE}$$, {FIT}, 1)", match="has 3 units at output 2 but dependent variable 2 has 2 classes")
    cur.execute(f"SELECT {S}training_preprocessor_dl('iris_data', 'iris_single', 'class_text', 'attributes', NULL, "
                "1, NULL, '2')")
    fails(cur, f"SELECT {S}madlib_keras_fit('iris_single', 'bad_fit', 'iris_model_arch', 1, $${CE}$$, {FIT}, 1)",
          match="has 2 input(s) but 1 independent variable(s)")
    fails(cur, f"SELECT {S}madlib_keras_evaluate('iris_model', 'iris_single', 'bad_eval', FALSE)",
          match="has 2 input(s) but 1 independent variable(s)")
    assert scalar(cur, "SELECT to_regclass('bad_fit') IS NULL AND to_regclass('bad_eval') IS NULL")


def test_automl_selects_among_multi_io_configurations(data, cur):
    """Hyperband (R=3, eta=3: brackets of 3 and 2 configurations) on the two-output model: every
    configuration reports each output, and the best one's rows are there."""
    grid = ("{'loss': ['categorical_crossentropy'], 'optimizer_params_list': [{'optimizer': ['Adam'], "
            "'lr': [0.01, 0.1, 'log']}], 'metrics': ['categorical_accuracy']}")
    cur.execute(f"SELECT {S}madlib_keras_automl('iris_mult_packed', 'multi_automl', 'iris_model_arch', "
                "'multi_automl_mst', ARRAY[1], %s, %s, 'hyperband', 'R=3, eta=3, skip_last=0', 1, NULL, FALSE, 'iris_mult_val')",
                [grid, "{'batch_size': [8], 'epochs': [1]}"])
    info = rows(cur, "SELECT mst_key, validation_loss_per_output, validation_metrics_per_output FROM multi_automl_info")
    assert len(info) == 5 and all(len(r["validation_loss_per_output"]) == 2 for r in info)
    assert scalar(cur, "SELECT count(*) FROM multi_automl_mst") == 1


def doubled_crossentropy(y_true, y_pred):
    import keras  # inside: pickled by value, runs in the server

    return 2.0 * keras.losses.categorical_crossentropy(y_true, y_pred)


def true_class_probability(y_true, y_pred):
    import keras

    return keras.ops.sum(y_true * y_pred, axis=-1)


def test_custom_loss_and_metric_apply_to_each_output(data, server, cur):
    """MADlib's multi-io file trains with a custom loss and metric: each output gets its own (a loader
    role loads them; alice, granted SELECT, trains). Evaluated, each output's loss is twice Keras'
    cross-entropy of the stored weights."""
    import dill
    import psycopg2

    dbname = data.info.dbname
    role = server.create_role("dora_multi_io")
    with server.connect("postgres") as admin, admin.cursor() as c:
        c.execute(f"GRANT madlib_dl_code_loader TO {role.name}")
    server.grant_plain_role(dbname, role)
    with server.connect(dbname, user=role) as conn, conn.cursor() as c:
        for function in (doubled_crossentropy, true_class_probability):
            function.__module__ = "__main__"  # pickled by value, as a notebook's function is
            c.execute(f"SELECT {S}load_custom_function('multi_io_functions', %s, %s, NULL)",
                      [psycopg2.Binary(dill.dumps(function, recurse=True)), function.__name__])
        c.execute("GRANT SELECT ON multi_io_functions TO alice")
    cur.execute(f"SELECT {S}madlib_keras_fit('iris_mult_packed', 'iris_custom', 'iris_model_arch', 1, "
                "$$ loss='doubled_crossentropy', optimizer='Adam(learning_rate=0.05)', "
                "metrics=['true_class_probability'] $$, $$ batch_size=5, epochs=1 $$, 2, FALSE, NULL, 1, NULL, "
                "NULL, NULL, 'multi_io_functions')")
    cur.execute(f"SELECT {S}madlib_keras_evaluate('iris_custom', 'iris_mult_val', 'custom_eval', FALSE)")
    e = row(cur, "SELECT * FROM custom_eval")
    model = _stored_model(cur, "iris_custom")
    model.compile(loss="categorical_crossentropy")
    x, y = _examples(cur)
    expected = model.evaluate(x, y, batch_size=len(x[0]), verbose=0, return_dict=True)
    assert e["loss_per_output"] == pytest.approx([2 * expected["dense_4_loss"], 2 * expected["dense_5_loss"]],
                                                 rel=1e-4)
    assert e["metrics_type"] == ["true_class_probability"] and len(e["metric_per_output"]) == 2
    assert all(0 < m < 1 for m in e["metric_per_output"])


def _keras2_dense(name, units, activation, inbound):
    initializer = {"class_name": "VarianceScaling", "config": {"distribution": "uniform", "scale": 1.0, "seed": None,
                                                               "mode": "fan_in", "dtype": "float32"}}
    return {"class_name": "Dense", "name": name, "inbound_nodes": [[[inbound, 0, 0, {}]]],
            "config": {"name": name, "units": units, "activation": activation, "use_bias": True, "trainable": True,
                       "dtype": "float32", "kernel_initializer": initializer,
                       "bias_initializer": {"class_name": "Zeros", "config": {"dtype": "float32"}},
                       "kernel_regularizer": None, "bias_regularizer": None, "activity_regularizer": None,
                       "kernel_constraint": None, "bias_constraint": None}}


def keras2_two_in_two_out() -> str:
    """The layout of MADlib's multi-io test architecture: a tf.keras 2.2.4 functional 'Model' JSON (Keras 2
    InputLayers with batch_input_shape, inbound_nodes as nested lists), two inputs, two 3-class heads."""
    import json

    def input_layer(name):
        return {"class_name": "InputLayer", "name": name, "inbound_nodes": [],
                "config": {"dtype": "float32", "batch_input_shape": [None, 4], "name": name, "sparse": False}}

    layers = [input_layer("input_1"), input_layer("input_2"), _keras2_dense("dense", 10, "relu", "input_1"),
              _keras2_dense("dense_2", 10, "relu", "input_2"), _keras2_dense("dense_1", 10, "relu", "dense"),
              _keras2_dense("dense_3", 10, "relu", "dense_2"),
              {"class_name": "Concatenate", "name": "concatenate",
               "inbound_nodes": [[["dense_1", 0, 0, {}], ["dense_3", 0, 0, {}]]],
               "config": {"dtype": "float32", "trainable": True, "name": "concatenate", "axis": -1}},
              _keras2_dense("dense_4", 3, "softmax", "concatenate"), _keras2_dense("dense_5", 3, "softmax", "dense_3")]
    return json.dumps({"class_name": "Model", "keras_version": "2.2.4-tf", "backend": "tensorflow",
                       "config": {"name": "model", "layers": layers,
                                  "input_layers": [["input_1", 0, 0], ["input_2", 0, 0]],
                                  "output_layers": [["dense_4", 0, 0], ["dense_5", 0, 0]]}})


def test_madlibs_keras2_multi_io_architecture_trains_unchanged(data, cur):
    """MADlib's own setup: class_text2 a copy of class_text, normalizing_const 255, its Keras 2 JSON."""
    cur.execute("CREATE TABLE iris_mult_same AS SELECT id, attributes, attributes2, class_text, "
                "class_text AS class_text2 FROM iris_mult")
    cur.execute(f"SELECT {S}training_preprocessor_dl('iris_mult_same', 'iris_same_packed', 'class_text, class_text2', "
                "'attributes, attributes2', NULL, 255)")
    model_id = load_arch(cur, "iris_model_arch", keras2_two_in_two_out(), name="Sophie")
    cur.execute(f"SELECT {S}madlib_keras_fit('iris_same_packed', 'iris_keras2', 'iris_model_arch', {model_id}, "
                f"$$ loss='categorical_crossentropy', optimizer='adam', metrics=['categorical_accuracy'] $$, "
                f"{FIT}, 2)")
    s = row(cur, "SELECT num_classes, training_loss_per_output FROM iris_keras2_summary")
    assert s["num_classes"] == [3, 3] and len(s["training_loss_per_output"]) == 2
