"""Keras 2's optimizer ``decay`` runs as Keras 3's InverseTimeDecay schedule: the optimizer's step count
travels with its state from hop to hop, so training split into hops (each in a fresh backend, as on
another worker) equals one continuous Keras training with that schedule; configurations that differ in
a decayed learning rate never share a compiled model."""

from __future__ import annotations

import numpy as np
import pytest

from madlib_dl import db
from madlib_dl.keras_runtime import builder, params, serialization, tf_setup
from madlib_dl.preprocess import packing
from madlib_dl.segment import requests, runtime, store

keras = tf_setup.keras()
DECAY = "loss='categorical_crossentropy', optimizer='SGD(lr=0.2, decay=0.5, momentum=0.9, nesterov=True)'"
FIT = "batch_size=5, epochs=1, shuffle=False"
ARCH = ('{"module": "keras", "class_name": "Sequential", "config": {"name": "seq", "layers": ['
        '{"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [null, 4], '
        '"dtype": "float32", "name": "input"}}, {"module": "keras.layers", "class_name": "Dense", "config": '
        '{"name": "dense", "units": 3, "activation": "softmax"}}]}}')


@pytest.fixture(autouse=True)
def client_side():
    with db.using(db.PsycopgDatabase(None)):
        yield


def _segment(seed, rows=20):
    rng = np.random.default_rng(seed)
    x = rng.random((rows, 4), dtype=np.float32)
    y = packing.one_hot(rng.integers(0, 3, rows), 3)
    buffers = [(packing.encode(y[i:i + 10], packing.LABEL_DTYPE), packing.encode(x[i:i + 10], packing.FEATURE_DTYPE))
               for i in range(0, rows, 10)]
    return buffers, x, y.astype(np.float32)


def _hop(gd, buffers, weights, optimizer_state, compile_params=DECAY, mst_key=1, run_id="run"):
    """One hop in the backend whose GD is ``gd``."""
    constants = requests.ModelConstants(ARCH, compile_params, FIT)
    held = gd.get(store.GD_KEY)
    if held is not None and held.run_id == run_id:
        held.constants[mst_key] = constants
    else:
        runtime.begin_run(gd, requests.BeginRun(run_id, "madlib_dl", {}, {mst_key: constants}))
    call = requests.Fit(run_id, "train", 0, mst_key, 9, 20, False, True, False, weights, optimizer_state)
    call_id = runtime.stage(gd, call)
    state = None
    for (y, y_shape), (x, x_shape) in buffers:
        state = runtime.fit_transition(gd, state, y, x, y_shape, x_shape, run_id, call_id)
    runtime.fit_final(gd, state)
    return runtime.take_output(gd)


def _start():
    return serialization.serialize_weights(runtime.initial_weights(ARCH, 7))


def _weights(blob):
    return serialization.deserialize_weights(blob, [w.shape for w in runtime.initial_weights(ARCH, 7)])


def test_keras2_decay_is_keras3_inverse_time_decay():
    schedule = keras.optimizers.schedules.InverseTimeDecay(0.2, decay_steps=1, decay_rate=0.5)
    for step in (0, 1, 7, 100):
        assert np.isclose(float(schedule(step)), 0.2 / (1 + 0.5 * step))  # Keras 2: lr / (1 + decay * iterations)
    optimizer = builder.make_optimizer(params.parse_compile_params(DECAY).optimizer)
    assert isinstance(optimizer._learning_rate, keras.optimizers.schedules.InverseTimeDecay)
    assert optimizer._learning_rate.get_config()["decay_rate"] == 0.5
    assert optimizer.nesterov and optimizer.momentum == 0.9
    default = builder.make_optimizer(params.parse_optimizer("Adam(decay=0.1)"))
    assert default._learning_rate.get_config()["initial_learning_rate"] == 0.001  # Adam's default rate


def test_hops_in_separate_backends_equal_one_continuous_keras_training_with_the_schedule():
    (buffers_a, x_a, y_a), (buffers_b, x_b, y_b) = _segment(1), _segment(2)
    first = _hop({}, buffers_a, _start(), None)                                   # a backend of its own
    second = _hop({}, buffers_b, first.weights, first.optimizer_state)            # another, from the state
    third = _hop({}, buffers_a, second.weights, second.optimizer_state)           # and a third

    model = keras.models.model_from_json(ARCH)
    model.set_weights(runtime.initial_weights(ARCH, 7))
    schedule = keras.optimizers.schedules.InverseTimeDecay(0.2, decay_steps=1, decay_rate=0.5)
    model.compile(loss="categorical_crossentropy",
                  optimizer=keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True))
    for x, y in ((x_a, y_a), (x_b, y_b), (x_a, y_a)):
        model.fit(x, y, batch_size=5, epochs=1, shuffle=False, verbose=0)

    state = serialization.deserialize_arrays(third.optimizer_state)
    assert int(state[0]) == 12 == int(model.optimizer.iterations.numpy())  # the step count carried: 3 hops x 4 steps
    for hopped, continuous in zip(_weights(third.weights), model.get_weights()):
        np.testing.assert_allclose(hopped, continuous, rtol=1e-6, atol=1e-7)  # bitwise equal here

    # Without the carried step count every hop would restart the decay: measurably different weights.
    restarted = _hop({}, buffers_b, first.weights, None)
    assert not np.allclose(_weights(restarted.weights)[0], _weights(second.weights)[0], atol=1e-6)


def test_configurations_differing_in_a_decayed_learning_rate_do_not_share_a_compiled_model():
    """A plain learning rate is an optimizer variable, so MSTs differing only in it share one compiled
    model; a schedule is a constant of the traced step, so they must not."""
    buffers = _segment(1)[0]
    slow = DECAY.replace("lr=0.2", "lr=0.02")
    shared = {}
    fast_shared = _hop(shared, buffers, _start(), None, DECAY, mst_key=1)
    slow_shared = _hop(shared, buffers, _start(), None, slow, mst_key=2)
    assert len(shared[store.GD_KEY].models) == 2
    fast_alone, slow_alone = _hop({}, buffers, _start(), None, DECAY), _hop({}, buffers, _start(), None, slow)
    assert fast_shared.weights == fast_alone.weights != slow_alone.weights == slow_shared.weights
    keys = [runtime._without_learning_rate(params.parse_compile_params(c)) for c in (DECAY, slow)]
    assert keys[0] != keys[1]


def test_the_parsers_tables_of_keras3_defaults_match_keras():
    """params is pure Python, so it keeps Keras 3's defaults in tables: they must be Keras' own."""
    import inspect

    for name in params.OPTIMIZERS.values():
        signature = inspect.signature(getattr(keras.optimizers, name).__init__).parameters
        takes_none = {p for p, v in signature.items() if v.default is None}
        assert takes_none <= params.NONE_ACCEPTED, name
        epsilon = signature.get("epsilon")
        assert params.EPSILON_DEFAULTS.get(name) == (epsilon.default if epsilon is not None else None), name
        assert "decay" not in signature  # Keras 3 dropped it (and would ignore it, with a warning)
    builder.check_optimizer_arguments("Adam", ("learning_rate", "decay"), "grid")  # decay is translated
