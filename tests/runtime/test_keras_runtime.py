"""The Keras runtime in this process (no server): every whitelisted name really works in Keras,
models build from JSON safely, and model state round-trips."""

import json

import numpy as np
import pytest

from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import builder, model_state, params, smoke, tf_setup

keras = tf_setup.keras()
X, Y = smoke.blobs(8, seed=1)


def _model():
    return builder.model_from_json(smoke.mlp_json())


@pytest.mark.parametrize("name", sorted(params.OPTIMIZERS.values()))
def test_every_whitelisted_optimizer_trains(name):
    model = builder.compile_model(_model(), params.parse_compile_params(
        f"loss='categorical_crossentropy', optimizer='{name}(lr=0.01)'"))
    assert type(model.optimizer).__name__ == name
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.01)
    model.fit(X, Y, epochs=1, verbose=0)


@pytest.mark.parametrize("loss", sorted(params.LOSSES))
def test_every_whitelisted_loss_trains(loss):
    model = builder.compile_model(_model(), params.parse_compile_params(f"loss='{loss}', optimizer='SGD'"))
    history = model.fit(X, Y, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])


@pytest.mark.parametrize("metric", sorted(params.METRICS))
def test_every_whitelisted_metric_evaluates(metric):
    model = builder.compile_model(_model(), params.parse_compile_params(
        f"loss='categorical_crossentropy', optimizer='Adam', metrics=['{metric}']"))
    results = model.evaluate(X, Y, verbose=0, return_dict=True)
    assert len(results) == 2 and all(np.isfinite(v) for v in results.values()), results


def test_optimizer_arguments_are_checked_against_keras():
    with pytest.raises(InvalidArgument, match="Adam has no argument lrr; expected some of learning_rate"):
        builder.make_optimizer(params.parse_optimizer("Adam(lrr=0.1)"))
    with pytest.raises(InvalidArgument, match=r"SGD\(lr='fast'\): lr must be a number >= 0"):
        builder.make_optimizer(params.parse_optimizer("SGD(lr='fast')"))  # the parser's refusal
    with pytest.raises(InvalidArgument, match=r"SGD\(learning_rate='fast'\): Argument `learning_rate` should be float"):
        builder.make_optimizer(params.OptimizerSpec("SGD", {"learning_rate": "fast"}))  # Keras' own
    sgd = builder.make_optimizer(params.parse_optimizer("SGD(lr=0.1, momentum=0.9, nesterov=False)"))
    assert sgd.nesterov is False and sgd.momentum == pytest.approx(0.9)


def test_model_json_must_be_a_keras_model():
    for bad in ("", "{", '{"class_name": "NoSuchLayer", "config": {}}', "[1, 2]"):
        with pytest.raises(InvalidArgument, match="model_arch"):
            builder.model_from_json(bad)


def test_model_json_with_python_code_is_refused():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2)])
    with pytest.raises(InvalidArgument, match="not a loadable Keras model JSON"):
        builder.model_from_json(model.to_json())


def test_model_json_keeps_the_architecture():
    model = _model()
    assert [layer.__class__.__name__ for layer in model.layers] == ["Dense", "Dense"]
    assert model.count_params() == 4 * 16 + 16 + 16 * 3 + 3
    assert json.loads(model.to_json())["class_name"] == "Sequential"


def test_state_round_trip_in_process_is_bitwise():
    keras.utils.set_random_seed(3)
    compile_params = params.parse_compile_params(smoke.COMPILE)
    a = builder.compile_model(_model(), compile_params)
    a.fit(X, Y, epochs=2, verbose=0, shuffle=False)
    state = model_state.get_state(a)
    b = builder.compile_model(_model(), compile_params)
    model_state.set_state(b, state)
    assert int(b.optimizer.iterations.numpy()) == int(a.optimizer.iterations.numpy()) == 2
    for model in (a, b):
        model.fit(X, Y, epochs=1, verbose=0, shuffle=False)
    assert model_state.get_state(a) == model_state.get_state(b)


def test_state_of_another_optimizer_is_refused():
    adam = builder.compile_model(_model(), params.parse_compile_params(smoke.COMPILE))
    sgd = builder.compile_model(_model(), params.parse_compile_params("loss='mse', optimizer='SGD'"))
    with pytest.raises(InvalidArgument, match="do not fit the .* variables of SGD"):
        model_state.set_state(sgd, model_state.get_state(adam))


def test_loaded_state_does_not_alias_the_buffer_it_came_from():
    """set_state copies out of the buffer (a page-aligned shared mapping, as a worker receives it):
    overwriting the buffer afterwards, as the next hop's output does, leaves the model's state alone."""
    import mmap

    keras.utils.set_random_seed(4)
    compile_params = params.parse_compile_params(smoke.COMPILE)
    a = builder.compile_model(_model(), compile_params)
    a.fit(X, Y, epochs=1, verbose=0)
    state = model_state.get_state(a)
    weights, optimizer = mmap.mmap(-1, len(state.weights)), mmap.mmap(-1, len(state.optimizer_state))
    weights[:], optimizer[:] = state.weights, state.optimizer_state
    b = builder.compile_model(_model(), compile_params)
    model_state.set_state(b, model_state.ModelState(weights, optimizer))
    weights[:] = b"\xff" * len(weights)
    optimizer[:] = b"\x00" * len(optimizer)
    assert model_state.get_state(b) == state
    out = model_state.get_state(b, reuse=model_state.ModelState(weights, optimizer))
    assert out.weights is weights and bytes(weights) == state.weights
    assert bytes(optimizer) == state.optimizer_state



def test_state_is_read_from_every_kind_of_variable():
    """get_state reads each variable without copying it first: scalars (Adam's step), integer and
    float arrays all come out as they are in the model."""
    keras.utils.set_random_seed(5)
    model = builder.compile_model(_model(), params.parse_compile_params(smoke.COMPILE))
    model.fit(X, Y, epochs=1, verbose=0)
    variables = list(model.weights) + list(model.optimizer.variables)
    assert any(len(v.shape) == 0 for v in variables) and any("int" in str(v.dtype) for v in variables)
    for variable in variables:
        read = model_state._read(variable)
        assert read.dtype == variable.numpy().dtype and np.array_equal(read, variable.numpy())
