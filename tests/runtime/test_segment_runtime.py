"""The segment runtime outside a server, with a plain dict as GD: hops train from the buffers or the
cache, models are compiled once per MST, caches are keyed by run and released."""

from __future__ import annotations

import numpy as np
import pytest

from madlib_dl import db
from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import serialization, tf_setup
from madlib_dl.preprocess import packing
from madlib_dl.segment import runtime, store
from madlib_dl.training import executors
from madlib_dl.training.spec import derive_seed

keras = tf_setup.keras()
COMPILE = "loss='categorical_crossentropy', optimizer='Adam(learning_rate=0.01)', metrics=['accuracy']"


@pytest.fixture(autouse=True)
def client_side():
    """Outside a server user errors are raised as they are (inside, they become server errors)."""
    with db.using(db.PsycopgDatabase(None)):
        yield


def _arch():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")]).to_json()


def _buffers(n=2, rows=10, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.random((rows, 4), dtype=np.float32)
        y = packing.one_hot(rng.integers(0, 3, rows), 3)
        out.append((packing.encode(y, packing.LABEL_DTYPE), packing.encode(x, packing.FEATURE_DTYPE)))
    return out


def _hop(gd, run_id, buffers, weights=None, caching=True, final=False, images=20):
    state = None
    args = (run_id, 0, 1, _arch(), COMPILE, "batch_size=5, epochs=1, shuffle=False", weights, None, 7, 9, images,
            caching, final)
    for (y, y_shape), (x, x_shape) in buffers or [((None, None), (None, None))]:
        state = runtime.fit_transition(gd, state, y, x, y_shape, x_shape, *args)
    return runtime.fit_final(gd, state)


def test_a_cached_hop_trains_like_a_hop_that_read_the_buffers():
    gd = {}
    buffers = _buffers()
    first = _hop(gd, "run1", buffers)
    assert first["buffers_read"] == 2 and first["images"] == 20
    again = _hop(gd, "run1", None, weights=first["model_weights"])  # NULL data: from the cache
    assert again["buffers_read"] == 0 and again["images"] == 20
    plain = {}
    reread = _hop(plain, "run2", buffers, caching=False)
    reread = _hop(plain, "run2", buffers, weights=reread["model_weights"], caching=False)
    assert reread["model_weights"] == again["model_weights"]
    assert len(gd[store.GD_KEY].models) == 1  # one compiled model reused across hops


def test_the_cache_belongs_to_one_run_and_the_final_call_drops_it():
    gd = {}
    _hop(gd, "run1", _buffers())
    with pytest.raises(InvalidArgument, match="none are cached"):
        _hop(gd, "run2", None)  # another run never sees run1's data
    _hop(gd, "run3", _buffers(), final=True)
    assert gd[store.GD_KEY].data == {}
    assert runtime.release(gd, "run3") is True and store.GD_KEY not in gd
    assert runtime.release(gd, None) is False


def test_a_wrong_example_count_is_an_error():
    with pytest.raises(InvalidArgument, match="read 20 train examples but the run counted 21"):
        _hop({}, "run1", _buffers(), images=21)


def test_initial_weights_depend_only_on_the_seed():
    a, b, c = (runtime.initial_weights(_arch(), s) for s in (5, 5, 6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_evaluate_returns_loss_and_metric_of_the_given_weights():
    gd = {}
    buffers = _buffers()
    trained = _hop(gd, "run1", buffers)
    state = None
    for (y, ys), (x, xs) in buffers:
        state = runtime.evaluate_transition(gd, state, y, x, ys, xs, "run1", 0, "validation", 1, _arch(), COMPILE,
                                            trained["model_weights"], 20, True, False)
    result = runtime.evaluate_final(gd, state)
    model = keras.models.model_from_json(_arch())
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.set_weights(serialization.deserialize_weights(trained["model_weights"], [w.shape for w in model.get_weights()]))
    x = np.concatenate([packing.decode(xb, xs, packing.FEATURE_DTYPE) for _, (xb, xs) in buffers])
    y = np.concatenate([packing.decode(yb, ys, packing.LABEL_DTYPE) for (yb, ys), _ in buffers]).astype(np.float32)
    loss, accuracy = model.evaluate(x, y, verbose=0)
    assert result["loss"] == pytest.approx(loss, rel=1e-5) and result["metric"] == pytest.approx(accuracy)


def test_an_aggregate_over_no_rows_returns_null():
    assert runtime.fit_final({}, None) is None


def test_parameters_become_psycopg2_placeholders_with_casts():
    sql = executors.to_pyformat("SELECT f($1, $2, $10) FROM \"a%b\"", ["text"] * 9 + ["bytea"])
    assert sql == 'SELECT f(%(p1)s::text, %(p2)s::text, %(p10)s::bytea) FROM "a%%b"'


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, 1) == derive_seed(0, 1)
    assert len({derive_seed(0, k, i, s) for k in range(5) for i in range(5) for s in range(5)}) == 125
    assert 0 <= derive_seed(-5, 2**70) < 2**31


@pytest.mark.parametrize("fit_params", ["batch_size=5, epochs=2, class_weight={0: 1.0, 1: 3.0, 2: 1.0}",
                                        "batch_size=5, epochs=2, steps_per_epoch=2"])
def test_fit_options_the_loop_lacks_train_through_keras_fit(fit_params):
    """class_weight and steps_per_epoch go to Keras' fit: the hop trains and reports fit's loss."""
    gd = {}
    state = None
    for (y, y_shape), (x, x_shape) in _buffers():
        state = runtime.fit_transition(gd, state, y, x, y_shape, x_shape, "run_cw", 0, 1, _arch(), COMPILE, fit_params,
                                       None, None, 7, 9, 20, False, False)
    result = runtime.fit_final(gd, state)
    assert np.isfinite(result["loss"]) and result["images"] == 20
    start = runtime.initial_weights(_arch(), 7)
    trained = serialization.deserialize_weights(result["model_weights"], [w.shape for w in start])
    assert not np.allclose(trained[0], start[0])
