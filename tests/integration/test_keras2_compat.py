"""What MADlib users carry over from Keras 2 works, each with a NOTICE saying what it became: the
optimizer's decay (a learning rate schedule whose step count travels with the model), epsilon=None,
sample_weight_mode=None, and tf.keras 2.x model JSON (translated to Keras 3's on load_keras_model, and on
read for rows copied in from a MADlib table). What has no Keras 3 meaning is refused in one line saying
what to use instead. Everything runs as a plain role, with background workers required."""

from __future__ import annotations

import json
import math

import numpy as np
import psycopg2
import pytest
from psycopg2.extras import execute_values

from madlib_dl.keras_runtime import serialization, tf_setup

keras = tf_setup.keras()

S = "madlib_dl."
FIT = (f"SELECT {S}madlib_keras_fit(%(source)s, %(model)s, 'arch', %(model_id)s, %(compile)s, %(fit)s, "
       "%(iterations)s)")
SEGMENT_ROWS = (30, 30)  # 60 rows over 2 segments
DECAY_COMPILE = ("loss='categorical_crossentropy', optimizer='SGD(lr=0.01, decay=1e-6, nesterov=True)', "
                 "metrics=['accuracy']")

# A Sequential as tf.keras 2.x's model.to_json() wrote it (MADlib's users keep these in model_arch tables)
_GLOROT = {"class_name": "GlorotUniform", "config": {"seed": None}}
_ZEROS = {"class_name": "Zeros", "config": {}}


def _dense(name, units, activation, **extra):
    return {"class_name": "Dense", "config": {
        "name": name, "trainable": True, "dtype": "float32", "units": units, "activation": activation,
        "use_bias": True, "kernel_initializer": _GLOROT, "bias_initializer": _ZEROS, "kernel_regularizer": None,
        "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None,
        **extra}}


TF_KERAS2_JSON = json.dumps({"class_name": "Sequential", "config": {"name": "sequential", "layers": [
    {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 4], "dtype": "float32", "sparse": False,
                                            "ragged": False, "name": "dense_input"}},
    _dense("dense", 10, "relu", batch_input_shape=[None, 4]),
    {"class_name": "Dropout", "config": {"name": "dropout", "trainable": True, "dtype": "float32", "rate": 0.1,
                                         "noise_shape": None, "seed": None}},
    _dense("dense_1", 3, "softmax")]}, "keras_version": "2.9.0", "backend": "tensorflow"})
# Keras 2.1.6, the format of MADlib's documentation: the config is the layer list
KERAS21_JSON = json.dumps({"class_name": "Sequential", "keras_version": "2.1.6", "backend": "tensorflow", "config": [
    _dense("dense_1", 10, "relu", batch_input_shape=[None, 4],
           kernel_initializer={"class_name": "VarianceScaling", "config": {
               "distribution": "uniform", "scale": 1.0, "seed": None, "mode": "fan_avg"}}),
    _dense("dense_2", 3, "softmax")]})
CONV_LSTM_JSON = json.dumps({"class_name": "Sequential", "keras_version": "2.9.0", "config": {"name": "s", "layers": [
    {"class_name": "ConvLSTM2D", "config": {"name": "conv_lstm", "filters": 2, "kernel_size": [1, 1],
                                            "batch_input_shape": [None, 2, 2, 2, 1]}},
    _dense("out", 3, "softmax")]}})


@pytest.fixture(scope="module")
def db(training_database):
    with training_database("keras2_compat") as conn:
        with conn.cursor() as c:
            rng = np.random.default_rng(3)
            rows = sum(SEGMENT_ROWS)
            c.execute("CREATE TABLE flowers (id INTEGER, x DOUBLE PRECISION[], label INTEGER)")
            execute_values(c, "INSERT INTO flowers VALUES %s",
                           [(i, rng.random(4).tolist(), int(rng.integers(0, 3))) for i in range(rows)])
            c.execute(f"SELECT {S}training_preprocessor_dl('flowers', 'flowers_packed', 'label', 'x', 10, 1.0, NULL, "
                      "'2')")
            keras.utils.set_random_seed(1)
            mlp = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                    keras.layers.Dense(3, activation="softmax")])
            c.execute(f"SELECT {S}load_keras_model('arch', %s::json)", [mlp.to_json()])  # model id 1
        yield conn


@pytest.fixture
def cur(db):
    del db.notices[:]
    with db.cursor() as c:
        c.execute("RESET ALL")
        yield c


def _fit(cur, compile_params, model="m", model_id=1, fit="batch_size=8, epochs=1", iterations=2):
    cur.execute(f"DROP TABLE IF EXISTS {model}, {model}_summary")
    cur.execute(FIT, {"source": "flowers_packed", "model": model, "model_id": model_id, "compile": compile_params,
                      "fit": fit, "iterations": iterations})


def _notices(cur, text):
    return [n for n in cur.connection.notices if text in n]


def _fails(cur, sql, args, code, message):
    with pytest.raises(psycopg2.Error) as raised:
        cur.execute(sql, args)
    assert raised.value.pgcode == code, raised.value.pgerror
    assert message in raised.value.diag.message_primary, raised.value.diag.message_primary
    return raised.value.diag.message_primary


def test_sgd_with_keras2_decay_trains_with_the_step_count_carried_across_hops(cur):
    _fit(cur, DECAY_COMPILE)
    notice, = _notices(cur, "madlib_keras_fit: compile_params:")
    assert ("SGD: Keras 2's decay=1e-06 became learning_rate=InverseTimeDecay(initial_learning_rate=0.01, "
            "decay_steps=1, decay_rate=1e-06)") in notice
    cur.execute("SELECT m.optimizer_state, s.compile_params FROM m, m_summary s")
    state, stored = cur.fetchone()
    assert stored == DECAY_COMPILE  # the user's text is kept; its translation is what trains
    iterations = serialization.deserialize_arrays(bytes(state))[0]
    steps = 2 * sum(math.ceil(n / 8) for n in SEGMENT_ROWS)  # 2 iterations, each hop 1 epoch of batches of 8
    assert int(iterations) == steps  # the schedule's step count went from hop to hop, never restarted
    cur.execute("SELECT training_loss_final FROM m_summary")
    assert math.isfinite(cur.fetchone()[0])


def test_epsilon_none_and_sample_weight_mode_none_are_accepted_with_a_notice(cur):
    _fit(cur, "loss='categorical_crossentropy', optimizer='Adam(lr=0.01, epsilon=None)', metrics=['accuracy'], "
              "sample_weight_mode=None", iterations=1)
    notice, = _notices(cur, "madlib_keras_fit: compile_params:")
    assert "Adam: epsilon=None (Keras 2: the backend's epsilon) became Keras 3's default epsilon 1e-07" in notice
    assert "sample_weight_mode=None (Keras 2; Keras 3 removed it) was left out: it changes nothing" in notice


def test_keras2_settings_without_a_keras3_meaning_are_refused_in_one_line(cur):
    args = {"source": "flowers_packed", "model": "m_bad", "model_id": 1, "fit": "", "iterations": 1}
    message = _fails(cur, FIT, {**args, "compile": "loss='mse', optimizer='SGD', sample_weight_mode='temporal'"},
                     "0A000", "compile_params: sample_weight_mode is not accepted: Keras 3 removed sample_weight_mode")
    assert "\n" not in message
    _fails(cur, FIT, {**args, "compile": "loss='mse', optimizer='Adam(beta_1=None)'"}, "22023",
           "compile_params: optimizer: Adam(beta_1=None): beta_1 cannot be None")
    _fails(cur, f"SELECT {S}training_preprocessor_dl('flowers', 'p_bad', 'label', 'x', 10, 1.0, NULL, 'dbid_table')",
           None, "0A000", "distribution_rules: 'dbid_table'")
    cur.execute("SELECT to_regclass('m_bad'), to_regclass('p_bad')")
    assert cur.fetchone() == (None, None)


def test_a_tf_keras2_json_is_stored_translated_and_trains(cur):
    cur.execute(f"SELECT {S}load_keras_model('arch', %s::json, NULL, 'tf.keras 2')", [TF_KERAS2_JSON])
    notice, = _notices(cur, "load_keras_model: model_arch:")
    assert "the JSON was written by Keras 2.9.0 and was translated to Keras 3's form" in notice
    cur.execute("SELECT model_id, model_arch::text FROM arch WHERE name = 'tf.keras 2'")
    model_id, stored = cur.fetchone()
    assert json.loads(stored)["module"] == "keras" and "keras_version" not in json.loads(stored)
    assert keras.models.model_from_json(stored).input_shape == (None, 4)  # a Keras 3 client reads it back
    _fit(cur, DECAY_COMPILE, model="m_tf2", model_id=model_id)
    cur.execute("SELECT training_loss_final FROM m_tf2_summary")
    assert math.isfinite(cur.fetchone()[0])


def test_a_keras2_row_copied_in_from_madlib_trains_without_being_loaded_again(cur):
    """INSERT ... SELECT from a MADlib model_arch table: the Keras 2.1 JSON is translated where it is read."""
    cur.execute("INSERT INTO arch (model_arch, name) VALUES (%s::json, 'copied') RETURNING model_id", [KERAS21_JSON])
    model_id = cur.fetchone()[0]
    _fit(cur, "loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']",
         model="m_copied", model_id=model_id)
    cur.execute("SELECT training_loss_final FROM m_copied_summary")
    assert math.isfinite(cur.fetchone()[0])


def test_a_keras2_layer_without_translation_is_refused_naming_it(cur):
    cur.execute("SELECT count(*) FROM arch")
    before = cur.fetchone()[0]
    _fails(cur, f"SELECT {S}load_keras_model('arch', %s::json)", [CONV_LSTM_JSON], "22023",
           "model_arch: layer 'conv_lstm' (ConvLSTM2D) in this Keras 2.9.0 JSON has no Keras 3 translation here")
    cur.execute("SELECT count(*) FROM arch")
    assert cur.fetchone()[0] == before


def test_madlibs_random_grid_with_decay_makes_configurations_that_train(cur):
    grid = ("{'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'], 'optimizer_params_list': ["
            "{'optimizer': ['SGD'], 'lr': [0.001, 0.01, 'log'], 'decay': [1e-6, 1e-4, 'log'], 'nesterov': [True]}]}")
    cur.execute("DROP TABLE IF EXISTS mst, mst_summary, mm, mm_summary, mm_info")
    cur.execute(f"SELECT {S}generate_model_configs('arch', 'mst', ARRAY[1], %s, %s, 'random', 2, 5)",
                [grid, "{'batch_size': [8], 'epochs': [1]}"])
    cur.execute("SELECT mst_key, compile_params FROM mst ORDER BY mst_key")
    made = cur.fetchall()
    assert len(made) == 2 and all("decay=" in text for _, text in made)
    notice, = _notices(cur, "generate_model_configs: added 2 configurations")
    assert notice.count("compile_params: SGD: Keras 2's decay=") == 2  # what each will become, said when made
    cur.execute(f"SELECT {S}madlib_keras_fit_multiple_model('flowers_packed', 'mm', 'mst', 1, FALSE, NULL)")
    notice, = _notices(cur, "madlib_keras_fit_multiple_model: compile_params:")
    assert notice.count("InverseTimeDecay") == 2 and "(mst_key 1)" in notice and "(mst_key 2)" in notice
    cur.execute("SELECT count(*) FROM mm_info WHERE training_loss_final IS NOT NULL")
    assert cur.fetchone()[0] == 2
