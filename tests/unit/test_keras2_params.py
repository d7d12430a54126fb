"""Keras 2 settings in MADlib compile strings: decay becomes a learning rate schedule, epsilon=None Keras 3's
default epsilon, sample_weight_mode=None nothing; each translation is reported (compile_translations, for
a NOTICE), and what Keras 3 cannot take is refused naming the argument."""

from __future__ import annotations

import pytest

from madlib_dl.errors import InvalidArgument, NotSupported
from madlib_dl.keras_runtime.params import (InverseTimeDecay, OptimizerSpec, compile_translations,
                                            parse_compile_params, parse_optimizer)
from madlib_dl.model_selection import configs


def compile_with(optimizer, **extra):
    text = f"loss='categorical_crossentropy', optimizer='{optimizer}', metrics=['accuracy']"
    return ", ".join([text, *(f"{k}={v}" for k, v in extra.items())])


def test_decay_becomes_an_inverse_time_decay_of_the_learning_rate():
    spec = parse_compile_params(compile_with("SGD(lr=0.01, decay=1e-6, nesterov=True)")).optimizer
    assert spec == OptimizerSpec("SGD", {"learning_rate": InverseTimeDecay(0.01, 1e-6), "nesterov": True})
    assert compile_translations(compile_with("SGD(lr=0.01, decay=1e-6, nesterov=True)")) == [
        "SGD: Keras 2's decay=1e-06 became learning_rate=InverseTimeDecay(initial_learning_rate=0.01, decay_steps=1, "
        "decay_rate=1e-06), the same lr / (1 + decay * iterations)"]


def test_decay_without_a_learning_rate_decays_the_optimizers_default():
    assert parse_optimizer("Adam(decay=0.5)").kwargs == {"learning_rate": InverseTimeDecay(None, 0.5)}
    assert "initial_learning_rate=the default learning rate" in compile_translations(compile_with("Adam(decay=0.5)"))[0]


def test_decay_zero_is_no_decay():
    assert parse_optimizer("SGD(lr=0.1, decay=0.0)").kwargs == {"learning_rate": 0.1}
    assert compile_translations(compile_with("SGD(lr=0.1, decay=0)")) == [
        "SGD: decay=0 (Keras 2: no decay) was left out"]


@pytest.mark.parametrize("optimizer, message", [
    ("SGD(decay=-0.1)", r"decay \(Keras 2's learning rate decay\) must be a number >= 0, got -0.1"),
    ("SGD(decay=\"fast\")", r"decay .* must be a number >= 0, got 'fast'"),
    ("SGD(decay=True)", r"decay .* must be a number >= 0, got True"),
    ("SGD(lr=\"big\", decay=0.1)", r"SGD\(lr='big'\): lr must be a number >= 0"),
])
def test_bad_decay(optimizer, message):
    with pytest.raises(InvalidArgument, match=r"^compile_params: optimizer: " + message):
        parse_compile_params(compile_with(optimizer))


def test_same_settings_same_key_whatever_the_spelling():
    one = configs.compile_param(compile_with("SGD(lr=0.01, decay=1e-6)"), "a")
    other = configs.compile_param(compile_with("sgd(learning_rate=0.01, decay=0.000001)"), "b")
    assert one.key == other.key
    assert configs.compile_param(compile_with("SGD(lr=0.02, decay=1e-6)"), "c").key != one.key


def test_epsilon_none_is_keras3s_default_epsilon():
    assert parse_optimizer("Adam(lr=0.01, epsilon=None)").kwargs == {"learning_rate": 0.01}
    assert compile_translations(compile_with("RMSprop(epsilon=None)")) == [
        "RMSprop: epsilon=None (Keras 2: the backend's epsilon) became Keras 3's default epsilon 1e-07"]


def test_none_where_keras3_takes_none_is_kept_and_elsewhere_refused_naming_the_argument():
    assert parse_optimizer("Adam(clipnorm=None, weight_decay=None, name=None)").kwargs == {
        "clipnorm": None, "weight_decay": None, "name": None}
    for optimizer, argument in (("Adam(beta_1=None)", "beta_1"), ("SGD(momentum=None)", "momentum"),
                                ("SGD(lr=None)", "learning_rate"), ("SGD(epsilon=None)", "epsilon")):
        name = optimizer.split("(")[0]
        with pytest.raises(InvalidArgument, match=rf"^compile_params: optimizer: {name}\({argument}=None\): "
                                                   rf"{argument} cannot be None$") as raised:
            parse_compile_params(compile_with(optimizer))
        assert raised.value.hint == f"Give {argument} a value, or leave it out for Keras' default."


def test_sample_weight_mode_none_changes_nothing():
    plain = parse_compile_params(compile_with("Adam"))
    for value in ("None", "'None'"):
        assert parse_compile_params(compile_with("Adam", sample_weight_mode=value)) == plain
    assert compile_translations(compile_with("Adam", sample_weight_mode="None")) == [
        "sample_weight_mode=None (Keras 2; Keras 3 removed it) was left out: it changes nothing"]


@pytest.mark.parametrize("value", ["'temporal'", "temporal", "1", "['temporal']"])
def test_other_sample_weight_modes_are_refused_in_one_line_saying_what_to_do(value):
    with pytest.raises(NotSupported, match=r"^compile_params: sample_weight_mode is not accepted: Keras 3 removed "
                                           r"sample_weight_mode; leave it out \(madlib_dl has no per-example weights; "
                                           r"class_weight in fit_params weighs classes\) \(got .*\)$"):
        parse_compile_params(compile_with("Adam", sample_weight_mode=value))


def test_translations_of_plain_and_refused_strings():
    assert compile_translations(compile_with("Adam(lr=0.01)")) == []  # lr is MADlib's own spelling: no NOTICE
    assert compile_translations("loss=") == []
    # what was read before the refusal is still reported (the refusal itself is reported by the caller)
    assert compile_translations("optimizer='SGD(decay=0)', loss='no_such_loss'") == [
        "SGD: decay=0 (Keras 2: no decay) was left out"]
    parse_compile_params(compile_with("SGD(decay=0.1)"))  # outside compile_translations nothing is collected
