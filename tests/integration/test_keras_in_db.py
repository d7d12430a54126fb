"""Keras inside a backend: training lowers the loss, model state moves between backends bitwise, and
TensorFlow's thread count is fixed before its first op; the demo trains on background workers."""

import re

import psycopg2
import pytest

from madlib_dl import __version__
from madlib_dl.tools import demo, install, paths

TRAIN_BODY = """
from madlib_dl.keras_runtime import builder, model_state, params, smoke, tf_setup
keras = tf_setup.keras(threads=1)
tf_setup.tensorflow().config.experimental.enable_op_determinism()
keras.utils.set_random_seed(7)
x, y = smoke.blobs(256, seed=3)
model = builder.compile_model(builder.model_from_json(smoke.mlp_json()), params.parse_compile_params(smoke.COMPILE))
fit = params.parse_fit_params("batch_size=32, epochs=1, shuffle=False").keras_kwargs()
"""

FUNCTIONS = """
CREATE SCHEMA IF NOT EXISTS kt;
CREATE OR REPLACE FUNCTION kt.train(epochs INTEGER, OUT losses FLOAT8[], OUT weights BYTEA,
                                    OUT optimizer_state BYTEA, OUT next_weights BYTEA)
LANGUAGE plpython3u AS $body$
{boot}
{train}
losses = [model.fit(x, y, **fit).history['loss'][0] for _ in range(epochs)]
state = model_state.get_state(model)
model.fit(x, y, **fit)
return dict(losses=losses, weights=state.weights, optimizer_state=state.optimizer_state,
            next_weights=model_state.get_state(model).weights)
$body$;

CREATE OR REPLACE FUNCTION kt.continue_from(weights BYTEA, optimizer_state BYTEA) RETURNS BYTEA
LANGUAGE plpython3u AS $body$
{boot}
{train}
model_state.set_state(model, model_state.ModelState(weights, optimizer_state))
model.fit(x, y, **fit)
return model_state.get_state(model).weights
$body$;

CREATE OR REPLACE FUNCTION kt.threads(n INTEGER) RETURNS INTEGER LANGUAGE plpython3u AS $body$
{boot}
from madlib_dl.keras_runtime import tf_setup
tf_setup.keras(threads=n)
tf = tf_setup.tensorflow()
tf.reduce_sum(tf.ones((4, 4)))  # an op: the thread pools are fixed from here on
return tf.config.threading.get_intra_op_parallelism_threads()
$body$;
"""


@pytest.fixture(scope="module")
def functions(server):
    # the directories the installed extension boots from: the server cannot read a checkout under /root
    directories = install.installed_directories(paths.pg_config("--sharedir"))
    sql = FUNCTIONS.format(boot=install.boot_lines(directories), train=TRAIN_BODY)
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute(sql)
    return server


def _train(server, epochs):
    with server.connect() as conn, conn.cursor() as cur:  # a backend of its own
        cur.execute("SELECT losses, weights, optimizer_state, next_weights FROM kt.train(%s)", [epochs])
        return cur.fetchone()


def _continue(server, weights, optimizer_state):
    with server.connect() as conn, conn.cursor() as cur:  # another backend
        cur.execute("SELECT kt.continue_from(%s, %s)", [weights, optimizer_state])
        return bytes(cur.fetchone()[0])


def test_training_inside_a_backend_lowers_the_loss(functions):
    losses, weights, optimizer_state, _ = _train(functions, 6)
    assert losses[-1] < 0.5 * losses[0], losses
    assert len(weights) == 4 * (4 * 16 + 16 + 16 * 3 + 3)  # MADlib format: one float32 per weight
    assert optimizer_state is not None


def test_state_restored_in_another_backend_continues_bitwise_identically(functions):
    _, weights, optimizer_state, next_weights = _train(functions, 3)
    resumed = _continue(functions, bytes(weights), bytes(optimizer_state))
    assert resumed == bytes(next_weights)
    # Without Adam's moments and step counter the continuation differs: the state is what carries it.
    weights_only = _continue(functions, bytes(weights), None)
    assert weights_only != bytes(next_weights)


def test_state_that_does_not_fit_the_model_is_refused(functions):
    _, weights, optimizer_state, _ = _train(functions, 1)
    with pytest.raises(psycopg2.Error, match="holds 130 values but the model architecture has 131 weights"):
        _continue(functions, bytes(weights)[:-4], bytes(optimizer_state))


def test_threads_are_set_before_the_first_op_and_fixed_after(functions):
    with functions.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT kt.threads(1)")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT kt.threads(1)")  # the same count again is fine
        assert cur.fetchone()[0] == 1
        with pytest.raises(psycopg2.Error, match="2 threads can only be set before its first operation"):
            cur.execute("SELECT kt.threads(2)")


def test_demo_runs_a_model_selection_inside_the_database(server, capsys):
    ranking = demo.run(server, iterations=2)
    out = capsys.readouterr().out
    assert f"server runs: madlib_dl {__version__}" in out
    assert "1437 for training, 360 for validation" in out
    assert "NOTICE:  madlib_keras_fit_multiple_model: iteration 2/2" in out  # the server's progress, relayed
    assert re.search(r"NOTICE:  madlib_keras_fit_multiple_model: starting \d+ background workers; each loads TensorFlow",
                     out)  # the default
    assert "6 configurations trained with Model Hopper Parallelism" in out
    assert len(ranking) == 6 and {name for _, name, *_ in ranking} == {"cnn", "mlp"}
    accuracies = [row[3] for row in ranking]
    assert accuracies == sorted(accuracies, reverse=True) and accuracies[0] >= demo.MIN_BEST_ACCURACY
    # the winner is evaluated, then scores the validation rows; the demo itself fails when the two disagree
    assert f"madlib_keras_evaluate(mst_key {ranking[0][0]}) on the validation table" in out
    assert f"madlib_keras_predict(mst_key {ranking[0][0]}, 'response') on the 360 validation rows" in out
    header = next(line for line in out.splitlines() if "val accuracy" in line)
    assert header.split() == ["rank", "mst_key", "model", "lr", "val", "accuracy", "val", "loss", "train", "loss"]
