"""params.OPTIMIZER_VALUES against Keras' optimizer constructors, and builder.check_optimizers: what
Keras refuses is refused without TensorFlow's runtime starting, and what the parser accepts trains.

The check that TensorFlow's runtime does not start runs in a process of its own."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import builder, params, tf_setup

keras = tf_setup.keras()


def _signatures():
    for name in params.OPTIMIZERS.values():
        yield name, inspect.signature(getattr(keras.optimizers, name).__init__).parameters


def test_every_keras_argument_has_a_rule_of_its_defaults_kind():
    """A new Keras argument (or a renamed one) shows here; bounds are the table's own choice."""
    for name, signature in _signatures():
        for argument, parameter in signature.items():
            if argument in ("self", "kwargs"):
                continue
            rule = params.OPTIMIZER_VALUES.get(argument)
            assert rule is not None, (name, argument)
            default = parameter.default
            if default is None:
                assert argument in params.NONE_ACCEPTED, (name, argument)
                continue
            kind = "boolean" if isinstance(default, bool) else "text" if isinstance(default, str) else None
            assert rule.kind == kind if kind else rule.kind in ("number", "integer"), (name, argument, rule)
            assert rule.holds(default), (name, argument, default, rule)  # Keras' default passes


def test_each_refusal_names_the_argument_it_came_from():
    checked = [(params.parse_optimizer("Adam(clipnorm=1.0, clipvalue=2.0)"), "compile_params_list[1]"),
               (params.parse_optimizer("Adam(lr=0.1, momentum=0.9)"), "compile_params_list[2]")]
    with pytest.raises(InvalidArgument, match=r"^compile_params_list\[1\]: Adam\(clipnorm=1.0, clipvalue=2.0\): "
                                              r"Only one of `clipnorm`, `clipvalue` and `global_clipnorm`"):
        builder.check_optimizers(checked)
    with pytest.raises(InvalidArgument, match=r"^compile_params_list\[2\]: Adam has no argument momentum; "):
        builder.check_optimizers(checked[1:])


CHECK_IN_A_FRESH_PROCESS = """
from tensorflow.python.eager import context
from madlib_dl.keras_runtime import builder, params
builder.check_optimizers([(params.parse_optimizer(f"SGD(lr={lr}, momentum=0, nesterov=True)"), "x") for lr in (1, 0.5)])
print("runtime started:", context.context()._context_handle is not None)
"""


def test_checking_does_not_start_tensorflows_runtime():
    """Nor its GPUs' memory: TensorFlow creates its devices when its eager context starts. In a process
    of its own, as this one has run TensorFlow already."""
    done = subprocess.run([sys.executable, "-c", CHECK_IN_A_FRESH_PROCESS], capture_output=True, text=True,
                          timeout=300, check=True, cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip().splitlines()[-1] == "runtime started: False", done.stdout + done.stderr


@pytest.mark.parametrize("optimizer", ["SGD(lr=1, momentum=0)", "Adam(lr=1, beta_1=0, epsilon=0)",
                                       "Ftrl(learning_rate_power=0, l1_regularization_strength=1)",
                                       "Adam(lr=0.01, decay=1)", "Lion(lr=1, beta_2=0)"])
def test_integers_where_keras_wants_floats_train(optimizer):
    """Keras 3 refuses an int for a float argument; Keras 2 took it, and so does make_optimizer."""
    spec = params.parse_optimizer(optimizer)
    builder.check_optimizers([(spec, "compile_params")])
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=builder.make_optimizer(spec), loss="mse")
    history = model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])
