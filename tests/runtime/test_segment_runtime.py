"""The segment runtime outside a server, with a plain dict as GD: hops train from the buffers or the
cache, compiled models are reused (shared by MSTs that differ only in learning rate), caches are keyed by
run and released."""

from __future__ import annotations

import numpy as np
import pytest

from madlib_dl import db
from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import serialization, tf_setup
from madlib_dl.preprocess import packing
from madlib_dl.segment import requests, runtime, store
from madlib_dl.training.spec import derive_seed

keras = tf_setup.keras()
COMPILE = "loss='categorical_crossentropy', optimizer='Adam(learning_rate=0.01)', metrics=['accuracy']"


@pytest.fixture(autouse=True)
def client_side():
    """Outside a server user errors are raised as they are (inside, they become server errors)."""
    with db.using(db.PsycopgDatabase(None)):
        yield


def _arch(activation="softmax"):
    """The same text on every call for the same ``activation``, as a run passes the same model_arch every hop."""
    return ('{"module": "keras", "class_name": "Sequential", "config": {"name": "seq", "layers": ['
            '{"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [null, 4], '
            '"dtype": "float32", "name": "input"}}, {"module": "keras.layers", "class_name": "Dense", "config": '
            f'{{"name": "dense", "units": 3, "activation": "{activation}"}}}}]}}}}')


def _buffers(n=2, rows=10, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.random((rows, 4), dtype=np.float32)
        y = packing.one_hot(rng.integers(0, 3, rows), 3)
        out.append((packing.encode(y, packing.LABEL_DTYPE), packing.encode(x, packing.FEATURE_DTYPE)))
    return out


def _start(arch=None) -> bytes:
    """A model's first-hop weights, as the driver sends them (initial_model_weights with seed 7)."""
    return serialization.serialize_weights(runtime.initial_weights(arch or _arch(), 7))


def _begin(gd, run_id, mst_key, arch, compile_params, fit_params):
    """Register the model in the run (a store for another run is dropped, as a new run does)."""
    constants = requests.ModelConstants(arch or _arch(), compile_params, fit_params)
    held = gd.get(store.GD_KEY)
    if held is not None and held.run_id == run_id:
        held.constants[mst_key] = constants
    else:
        runtime.begin_run(gd, requests.BeginRun(run_id, "madlib_dl", {}, {mst_key: constants}))


def _aggregate(gd, call, buffers, transition, final):
    call_id = runtime.stage(gd, call)
    state = None
    for (y, y_shape), (x, x_shape) in buffers or [((None, None), (None, None))]:
        state = transition(gd, state, y, x, y_shape, x_shape, call.run_id, call_id)
    return final(gd, state)


def _hop(gd, run_id, buffers, weights=None, caching=True, final=False, images=20, compile_params=COMPILE,
         optimizer_state=None, mst_key=1, arch=None, fit_params="batch_size=5, epochs=1, shuffle=False"):
    _begin(gd, run_id, mst_key, arch, compile_params, fit_params)
    call = requests.Fit(run_id, "train", 0, mst_key, 9, images, caching, bool(buffers), final,
                        _start(arch) if weights is None else weights, optimizer_state)
    result = _aggregate(gd, call, buffers, runtime.fit_transition, runtime.fit_final)
    output = runtime.take_output(gd)
    assert "model_weights" not in result  # the state stays in the backend, never in the aggregate's row
    return dict(result, model_weights=output.weights, optimizer_state=output.optimizer_state)


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


def test_msts_differing_only_in_learning_rate_share_one_compiled_model_and_train_as_if_alone():
    buffers, slow = _buffers(), COMPILE.replace("0.01", "0.001")
    shared = {}
    fast_1 = _hop(shared, "run", buffers, compile_params=COMPILE, mst_key=1)
    slow_1 = _hop(shared, "run", None, compile_params=slow, mst_key=2)  # fresh optimizer: its own rate
    fast_2 = _hop(shared, "run", None, fast_1["model_weights"], compile_params=COMPILE,
                  optimizer_state=fast_1["optimizer_state"], mst_key=1)
    run_store = shared[store.GD_KEY]
    assert len(run_store.models) == 1 and len(run_store.configs) == 2

    alone_slow = _hop({}, "other", buffers, compile_params=slow, mst_key=2)
    alone_fast = {}
    first = _hop(alone_fast, "other", buffers, compile_params=COMPILE)
    second = _hop(alone_fast, "other", None, first["model_weights"], compile_params=COMPILE,
                  optimizer_state=first["optimizer_state"])
    assert slow_1["model_weights"] == alone_slow["model_weights"] != fast_1["model_weights"]
    assert slow_1["optimizer_state"] == alone_slow["optimizer_state"]
    assert fast_2["model_weights"] == second["model_weights"]
    rates = [serialization.deserialize_arrays(r["optimizer_state"])[1] for r in (fast_2, slow_1)]
    assert np.isclose(rates[0], 0.01) and np.isclose(rates[1], 0.001)


def test_other_architectures_and_optimizer_settings_get_their_own_compiled_model():
    gd, buffers = {}, _buffers()
    _hop(gd, "run", buffers)
    _hop(gd, "run", None, arch=_arch("sigmoid"), mst_key=2)
    _hop(gd, "run", None, compile_params=COMPILE.replace("0.01)", "0.01, beta_1=0.8)"), mst_key=3)
    _hop(gd, "run", None, compile_params=COMPILE.replace("'Adam(learning_rate=0.01)'", "'SGD(learning_rate=0.01)'"),
         mst_key=4)
    assert len(gd[store.GD_KEY].models) == 4


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


def test_a_hop_without_weights_is_an_error():
    with pytest.raises(InvalidArgument, match="model_weights: expected the model's weights"):
        _hop({}, "r", _buffers(), weights=b"")


def test_a_call_names_a_begun_run_and_one_of_its_models():
    gd = {}
    with pytest.raises(InvalidArgument, match="run r: not begun in this session"):
        runtime.stage(gd, requests.Fit("r", "train", 0, 1, 9, 20, True, True, False, _start()))
    _begin(gd, "r", 1, None, COMPILE, "")
    with pytest.raises(InvalidArgument, match="mst_key 2: not a model of run r"):
        runtime.stage(gd, requests.Fit("r", "train", 0, 2, 9, 20, True, True, False, _start()))
    call_id = runtime.stage(gd, requests.Fit("r", "train", 0, 1, 9, 20, True, True, False, _start()))
    with pytest.raises(InvalidArgument, match=f"call {call_id + 1}: no such call is staged"):
        runtime.fit_transition(gd, None, None, None, None, None, "r", call_id + 1)


def test_initial_weights_depend_only_on_the_seed():
    a, b, c = (runtime.initial_weights(_arch(), s) for s in (5, 5, 6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_evaluate_returns_loss_and_metric_of_the_given_weights():
    gd = {}
    buffers = _buffers()
    trained = _hop(gd, "run1", buffers)
    call = requests.Evaluate("run1", "validation", 0, "validation", 1, 20, True, True, False, trained["model_weights"])
    result = _aggregate(gd, call, buffers, runtime.evaluate_transition, runtime.evaluate_final)
    model = keras.models.model_from_json(_arch())
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.set_weights(serialization.deserialize_weights(trained["model_weights"], [w.shape for w in model.get_weights()]))
    x = np.concatenate([packing.decode(xb, xs, packing.FEATURE_DTYPE) for _, (xb, xs) in buffers])
    y = np.concatenate([packing.decode(yb, ys, packing.LABEL_DTYPE) for (yb, ys), _ in buffers]).astype(np.float32)
    loss, accuracy = model.evaluate(x, y, verbose=0)
    assert result["loss"] == pytest.approx(loss, rel=1e-5) and result["metric"] == pytest.approx(accuracy)


def test_an_aggregate_over_no_rows_returns_null():
    assert runtime.fit_final({}, None) is None


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, 1) == derive_seed(0, 1)
    assert len({derive_seed(0, k, i, s) for k in range(5) for i in range(5) for s in range(5)}) == 125
    assert 0 <= derive_seed(-5, 2**70) < 2**31


@pytest.mark.parametrize("fit_params", ["batch_size=5, epochs=2, class_weight={0: 1.0, 1: 3.0, 2: 1.0}",
                                        "batch_size=5, epochs=2, steps_per_epoch=2"])
def test_fit_options_the_loop_lacks_train_through_keras_fit(fit_params):
    """class_weight and steps_per_epoch go to Keras' fit: the hop trains and reports fit's loss."""
    result = _hop({}, "run_cw", _buffers(), caching=False, fit_params=fit_params)
    assert np.isfinite(result["loss"]) and result["images"] == 20
    start = runtime.initial_weights(_arch(), 7)
    trained = serialization.deserialize_weights(result["model_weights"], [w.shape for w in start])
    assert not np.allclose(trained[0], start[0])


def test_a_later_run_reuses_a_kept_compiled_model_and_trains_as_on_a_fresh_one():
    """After release the backend keeps the compiled model (no data); the next run starts it from a fresh
    optimizer and its own weights, so it trains exactly like a backend that never saw the first run."""
    gd, buffers = {}, _buffers()
    first = _hop(gd, "run1", buffers)
    runtime.release(gd, "run1")
    assert store.GD_KEY not in gd and len(store.compiled_models(gd)) == 1
    kept = next(iter(store.compiled_models(gd).values()))
    again = _hop(gd, "run2", buffers)
    assert next(iter(store.compiled_models(gd).values())) is kept  # not rebuilt
    assert again["model_weights"] == first["model_weights"] and again["optimizer_state"] == first["optimizer_state"]
    fresh = _hop({}, "run3", buffers)
    assert again["model_weights"] == fresh["model_weights"]


def test_kept_compiled_models_are_limited_to_the_most_recent():
    gd = {}
    for i in range(store.KEEP_MODELS + 2):
        _hop(gd, "run", _buffers(), arch=_arch(["softmax", "sigmoid", "relu", "tanh", "elu", "selu"][i]), mst_key=i)
    assert len(store.compiled_models(gd)) == store.KEEP_MODELS + 2  # a run holds all it uses
    runtime.release(gd, "run")
    assert len(store.compiled_models(gd)) == store.KEEP_MODELS
    runtime.worker_init(gd, None, None, None)  # a new worker set-up starts from nothing
    assert store.compiled_models(gd) == {}
