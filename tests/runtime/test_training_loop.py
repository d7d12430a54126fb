"""training_loop against Keras itself: a pass over permuted examples trains exactly like Keras' fit on
the permuted arrays, evaluation gives Keras' evaluate, and the loop returns to Python to check for a
cancel (whose exception stops it)."""

from __future__ import annotations

import numpy as np
import pytest

from madlib_dl.keras_runtime import tf_setup, training_loop

keras = tf_setup.keras()


def _model(seed=0, dropout=False):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((6,)), keras.layers.Dense(8, activation="relu")]
    layers += [keras.layers.Dropout(0.3)] if dropout else []
    model = keras.Sequential(layers + [keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def _data(n=53, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 6), dtype=np.float32)
    return x, np.eye(3, dtype=np.float32)[(x[:, 0] * 3).astype(int) % 3]


@pytest.mark.parametrize("shuffle", [True, False])
def test_epochs_train_like_keras_fit_on_the_documented_permutations(shuffle):
    x, y = _data()  # 53 examples, batch 10: the last batch has 3
    ours, reference = _model(), _model()
    loss, accuracy = training_loop.train(training_loop.loop_for(ours), *training_loop.as_tensors(x, y), batch_size=10,
                               epochs=3, shuffle=shuffle, seed=42)
    permutations = np.random.default_rng(42)
    for _ in range(3):
        p = permutations.permutation(len(x)) if shuffle else np.arange(len(x))
        history = reference.fit(x[p], y[p], batch_size=10, epochs=1, shuffle=False, verbose=0)
    for got, expected in zip(ours.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert loss == pytest.approx(history.history["loss"][-1], abs=1e-6)
    # the last epoch's running metric, as fit reports it (not an evaluation of the final weights)
    assert accuracy == pytest.approx(history.history["accuracy"][-1], abs=1e-6)
    assert not np.allclose(ours.get_weights()[0], _model().get_weights()[0])  # it did train


def test_the_seed_decides_the_order():
    x, y = _data()
    a, b, c = _model(), _model(), _model()
    for model, seed in ((a, 1), (b, 1), (c, 2)):
        training_loop.train(training_loop.loop_for(model), x, y, batch_size=10, epochs=1, shuffle=True, seed=seed)
    np.testing.assert_array_equal(a.get_weights()[0], b.get_weights()[0])
    assert not np.allclose(a.get_weights()[0], c.get_weights()[0])


def test_evaluate_matches_keras_evaluate():
    x, y = _data(n=700)
    model = _model()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    got = training_loop.evaluate(training_loop.loop_for(model), x, y, batch_size=256)
    expected = model.evaluate(x, y, batch_size=256, verbose=0)
    assert len(got) == 2
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_a_compiled_loop_is_reused_and_runs_many_batches_per_call_once_timed():
    x, y = _data(n=400)
    loop = training_loop.loop_for(_model())
    calls = []
    for _ in range(3):
        training_loop.train(loop, x, y, batch_size=4, epochs=1, shuffle=True, seed=0, check=lambda: calls.append(1))
    assert "train" in loop.traced and loop.step_seconds["train"] > 0
    # 100 batches per pass: the first passes run one batch per call to time a step; later calls run
    # CHUNK_SECONDS' worth, so the last pass returns to Python far fewer than 100 times.
    assert 3 <= len(calls) < 300
    assert training_loop._chunk(loop, "train", 100) > 1


def test_check_runs_during_a_pass_and_its_error_stops_training():
    x, y = _data(n=400)
    loop = training_loop.loop_for(_model())
    training_loop.train(loop, x, y, batch_size=4, epochs=1, shuffle=False, seed=0)  # traced and timed
    before = [w.copy() for w in loop.model.get_weights()]

    def cancel():
        raise KeyboardInterrupt("canceling statement due to user request")

    with pytest.raises(KeyboardInterrupt):
        training_loop.train(loop, x, y, batch_size=4, epochs=5, shuffle=False, seed=0, check=cancel)
    moved = loop.model.get_weights()
    assert not np.allclose(before[0], moved[0])  # some batches ran ...
    reference = _model()
    reference.set_weights(before)
    reference.fit(x, y, batch_size=4, epochs=5, shuffle=False, verbose=0)
    assert not np.allclose(reference.get_weights()[0], moved[0])  # ... but not all five epochs


def test_seed_layers_makes_dropout_depend_on_the_seed_only():
    x, y = _data()
    a, b, c = _model(dropout=True), _model(dropout=True), _model(dropout=True)
    for _ in range(3):
        b(x, training=True)  # b's dropout has drawn masks before: its generator is elsewhere than a's
    for model, seed in ((a, 5), (b, 5), (c, 6)):
        training_loop.seed_layers(model, seed)
        training_loop.train(training_loop.loop_for(model), x, y, batch_size=10, epochs=1, shuffle=False, seed=3)
    np.testing.assert_array_equal(a.get_weights()[0], b.get_weights()[0])
    assert not np.allclose(a.get_weights()[0], c.get_weights()[0])  # other dropout masks


def _two_in_two_out(seed=0):
    """MADlib's multi-io test model: two inputs, two softmax outputs; compiled as compile_params would be."""
    from madlib_dl.keras_runtime import builder, params

    keras.utils.set_random_seed(seed)
    first, second = keras.Input((4,), name="input_1"), keras.Input((4,), name="input_2")
    a, b = keras.layers.Dense(6, activation="relu")(first), keras.layers.Dense(6, activation="relu")(second)
    out1 = keras.layers.Dense(3, activation="softmax", name="dense_4")(keras.layers.Concatenate()([a, b]))
    out2 = keras.layers.Dense(3, activation="softmax", name="dense_5")(b)
    model = keras.Model([first, second], [out1, out2])
    parsed = params.parse_compile_params("loss='categorical_crossentropy', optimizer='Adam(learning_rate=0.05)', "
                                         "metrics=['categorical_accuracy']")
    return builder.compile_model(model, parsed)


def _multi_data(n=41, seed=2):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.random((n, 4), dtype=np.float32), rng.random((n, 4), dtype=np.float32)
    labels = np.eye(3, dtype=np.float32)
    return [x1, x2], [labels[(x1[:, 0] * 3).astype(int) % 3], labels[(x2[:, 1] * 3).astype(int) % 3]]


def test_a_model_with_two_inputs_and_two_outputs_trains_and_evaluates_like_keras():
    """Lists of arrays (one per input, one per output) are gathered batch by batch like single arrays:
    the weights after three epochs and the per-output losses and metrics are Keras' own."""
    from madlib_dl.keras_runtime import output_logs

    x, y = _multi_data()
    ours, reference = _two_in_two_out(), _two_in_two_out()
    logs = training_loop.train_logs(training_loop.loop_for(ours), *training_loop.as_tensors(x, y), batch_size=8,
                                    epochs=3, shuffle=False, seed=0)
    history = reference.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    for got, expected in zip(ours.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    for name in ("loss", "dense_4_loss", "dense_5_loss", "dense_4_categorical_accuracy",
                 "dense_5_categorical_accuracy"):
        assert logs[name] == pytest.approx(history.history[name][-1], rel=1e-5), name
    values = output_logs.hop_values(
        training_loop.evaluate_logs(training_loop.loop_for(ours), *training_loop.as_tensors(x, y), batch_size=16),
        ours.output_names)
    expected = reference.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert values["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert values["output_losses"] == pytest.approx([expected["dense_4_loss"], expected["dense_5_loss"]], rel=1e-5)
    accuracies = [expected["dense_4_categorical_accuracy"], expected["dense_5_categorical_accuracy"]]
    assert values["output_metrics"] == pytest.approx(accuracies, rel=1e-5)
    assert values["metric"] == pytest.approx(sum(accuracies) / 2, rel=1e-5)


def test_a_hop_reports_its_batches_and_examples_as_it_goes():
    """``report`` hears how far the hop is after every chunk: batches counted over all its epochs, up to
    the total, and examples done (the last batch of an epoch counts only the examples it held)."""
    x, y = _data()  # 53 examples in batches of 10: 6 batches per epoch
    loop = training_loop.loop_for(_model())
    heard = []
    training_loop.train_logs(loop, *training_loop.as_tensors(x, y), batch_size=10, epochs=3, shuffle=True, seed=0,
                             report=lambda *values: heard.append(values))
    assert heard[-1] == (18, 18, 159)
    assert all(total == 18 for _, total, _ in heard)
    assert [b for b, _, _ in heard] == sorted(b for b, _, _ in heard)  # only forward
    assert all(examples == b // 6 * 53 + (b % 6) * 10 for b, _, examples in heard)  # an epoch's 6 batches: 53
    evaluated = []
    training_loop.evaluate_logs(loop, *training_loop.as_tensors(x, y), batch_size=20,
                                report=lambda *values: evaluated.append(values))
    assert evaluated[-1] == (3, 3, 53)
