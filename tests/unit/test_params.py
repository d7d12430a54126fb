"""Unit tests for madlib_dl.keras_runtime.params (compile/fit parameter strings).

Pure Python: no Keras, no database. Every error is checked for its type (InvalidArgument /
NotSupported) and for a message fragment that names the argument and the problem.
TestRegressions holds inputs that once crashed the parser with Python errors (RecursionError,
TypeError, ValueError) or were silently accepted ('#' comments, float verbose, repeated dict keys).
"""

from __future__ import annotations

import builtins
import dataclasses
import re
import sys

import pytest

from madlib_dl.errors import InvalidArgument, MadlibDLError, NotSupported
from madlib_dl.keras_runtime import params
from madlib_dl.keras_runtime.params import (
    COMPILE_KEYS_REJECTED,
    FIT_KEYS_REJECTED,
    MAX_NESTING,
    MAX_PARAM_LENGTH,
    OPTIMIZERS,
    CompileParams,
    FitParams,
    OptimizerSpec,
    literal,
    parse_compile_params,
    parse_fit_params,
    parse_optimizer,
    split_params,
)

MADLIB_EXAMPLE = "loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']"


def compile_with(optimizer="adam", loss="mse", **extra):
    """Build a compile_params string; ``extra`` values are inserted verbatim."""
    parts = [f"loss={loss}", f"optimizer={optimizer}"] + [f"{k}={v}" for k, v in extra.items()]
    return ", ".join(parts)


# ===================================================================================================
# 1. Valid compile_params
# ===================================================================================================

class TestValidCompileParams:
    def test_madlib_example_exact_fields(self):
        result = parse_compile_params(MADLIB_EXAMPLE)
        assert result == CompileParams(
            optimizer=OptimizerSpec("Adam", {"learning_rate": 0.01}),
            loss="categorical_crossentropy",
            metrics=("accuracy",),
            loss_weights=None,
            weighted_metrics=None,
        )
        assert isinstance(result.metrics, tuple)
        assert result.keras_kwargs() == {"loss": "categorical_crossentropy", "metrics": ["accuracy"]}

    def test_unquoted_values(self):
        result = parse_compile_params("loss=mse, optimizer=Adam(learning_rate=0.01), metrics=[mae]")
        assert result.loss == "mse"
        assert result.optimizer == OptimizerSpec("Adam", {"learning_rate": 0.01})
        assert result.metrics == ("mae",)

    def test_double_quoted_values(self):
        result = parse_compile_params('loss="mean_squared_error", optimizer="SGD(lr=0.1)", metrics=["mse"]')
        assert result.loss == "mean_squared_error"
        assert result.optimizer == OptimizerSpec("SGD", {"learning_rate": 0.1})
        assert result.metrics == ("mse",)

    def test_key_order_does_not_matter(self):
        a = parse_compile_params("metrics=['acc'], optimizer='adam', loss='mse'")
        b = parse_compile_params("loss='mse', optimizer='adam', metrics=['acc']")
        assert a == b

    @pytest.mark.parametrize("optimizer", ["'adam'", "adam", "'Adam'", "ADAM", "'aDaM'", "adam()", "'Adam()'",
                                           "' adam '", "(adam)"])
    def test_bare_optimizer_forms_give_canonical_adam(self, optimizer):
        result = parse_compile_params(compile_with(optimizer=optimizer))
        assert result.optimizer == OptimizerSpec("Adam", {})
        assert result.optimizer.name == "Adam"
        assert result.optimizer.kwargs == {}

    def test_sgd_with_bools(self):
        result = parse_compile_params(compile_with(optimizer="'SGD(lr=0.1, momentum=0.9, nesterov=True)'"))
        assert result.optimizer.name == "SGD"
        assert result.optimizer.kwargs == {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True}
        assert result.optimizer.kwargs["nesterov"] is True

    def test_false_stays_false(self):
        # MADlib used bool('False'), which is True.
        result = parse_compile_params(compile_with(optimizer="'SGD(lr=0.1, nesterov=False)'"))
        assert result.optimizer.kwargs["nesterov"] is False
        result = parse_compile_params(compile_with(optimizer="Adam(amsgrad=False)"))
        assert result.optimizer.kwargs == {"amsgrad": False}
        assert result.optimizer.kwargs["amsgrad"] is False

    @pytest.mark.parametrize("text, expected", [
        ("Adafactor(beta_2_decay=-0.5)", -0.5),
        ("Adam(lr=+0.5)", 0.5),
        ("Adam(lr=1e-3)", 1e-3),
        ("Adam(lr=1E-07)", 1e-7),
        ("Adafactor(beta_2_decay=-2.5e+2)", -250.0),
        ("Adam(lr=.5)", 0.5),
        ("Adam(lr=1)", 1),
        ("Adam(lr=(0.1))", 0.1),
    ])
    def test_numbers(self, text, expected):
        spec = parse_compile_params(compile_with(optimizer=text)).optimizer
        assert list(spec.kwargs.values()) == [expected]
        assert type(list(spec.kwargs.values())[0]) is type(expected)

    def test_optimizer_kwargs_of_every_literal_kind(self):
        spec = parse_compile_params(compile_with(
            optimizer="'Adam(epsilon=1e-7, beta_1=0.5, amsgrad=False, name=None, clipnorm=1)'")).optimizer
        assert spec == OptimizerSpec("Adam", {"epsilon": 1e-7, "beta_1": 0.5, "amsgrad": False,
                                              "name": None, "clipnorm": 1})

    def test_optimizer_string_kwarg_with_comma(self):
        # Quotes inside the optimizer call protect the comma from the top-level splitter.
        assert parse_compile_params(compile_with(optimizer="Adam(name='a,b')")).optimizer.kwargs == {"name": "a,b"}
        assert parse_compile_params(compile_with(optimizer="'Adam(name=\"a,b\")'")).optimizer.kwargs == {"name": "a,b"}

    def test_whitespace_and_newlines(self):
        text = ("\n  loss = 'categorical_crossentropy' ,\n\toptimizer = 'Adam( lr = 0.01 )' ,\n"
                "   metrics = [ 'accuracy' ]  \n")
        assert parse_compile_params(text) == parse_compile_params(MADLIB_EXAMPLE)

    def test_newline_inside_brackets(self):
        result = parse_compile_params("loss=mse, optimizer=Adam(\n  lr=0.01,\n  beta_1=0.8\n), metrics=[\n'acc'\n]")
        assert result.optimizer.kwargs == {"learning_rate": 0.01, "beta_1": 0.8}
        assert result.metrics == ("acc",)

    @pytest.mark.parametrize("metrics", ["[]", "()"])
    def test_empty_metrics(self, metrics):
        result = parse_compile_params(compile_with(metrics=metrics))
        assert result.metrics == ()
        assert result.keras_kwargs()["metrics"] == []

    def test_no_metrics(self):
        result = parse_compile_params(compile_with())
        assert result.metrics == ()
        assert result.loss_weights is None
        assert result.weighted_metrics is None
        assert result.keras_kwargs() == {"loss": "mse", "metrics": []}

    def test_metric_tuple_is_accepted_as_list(self):
        assert parse_compile_params(compile_with(metrics="('acc',)")).metrics == ("acc",)

    def test_loss_weights_list(self):
        result = parse_compile_params(compile_with(loss_weights="[1, -2.5, 1e3]"))
        assert result.loss_weights == [1, -2.5, 1000.0]
        assert result.keras_kwargs()["loss_weights"] == [1, -2.5, 1000.0]

    def test_loss_weights_dict(self):
        result = parse_compile_params(compile_with(loss_weights="{'out_a': 1.0, 'out_b': 0.5}"))
        assert result.loss_weights == {"out_a": 1.0, "out_b": 0.5}
        assert result.keras_kwargs() == {"loss": "mse", "metrics": [], "loss_weights": {"out_a": 1.0, "out_b": 0.5}}

    def test_weighted_metrics(self):
        result = parse_compile_params(compile_with(metrics="['acc']", weighted_metrics="['accuracy', 'mse']"))
        assert result.weighted_metrics == ("accuracy", "mse")
        assert result.keras_kwargs() == {"loss": "mse", "metrics": ["acc"], "weighted_metrics": ["accuracy", "mse"]}

    def test_empty_weighted_metrics_is_kept(self):
        result = parse_compile_params(compile_with(weighted_metrics="[]"))
        assert result.weighted_metrics == ()
        assert result.keras_kwargs()["weighted_metrics"] == []

    def test_keras_kwargs_lists_are_fresh_copies(self):
        result = parse_compile_params(compile_with(metrics="['acc']"))
        result.keras_kwargs()["metrics"].append("mse")
        assert result.metrics == ("acc",)

    def test_dataclasses_are_frozen(self):
        result = parse_compile_params(MADLIB_EXAMPLE)
        with pytest.raises(dataclasses.FrozenInstanceError):
            result.loss = "mse"  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            result.optimizer.name = "SGD"  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            FitParams().epochs = 2  # type: ignore[misc]

    def test_dataclass_field_names(self):
        assert [f.name for f in dataclasses.fields(CompileParams)] == [
            "optimizer", "loss", "metrics", "loss_weights", "weighted_metrics"]
        assert [f.name for f in dataclasses.fields(OptimizerSpec)] == ["name", "kwargs"]
        assert [f.name for f in dataclasses.fields(FitParams)] == [
            "batch_size", "epochs", "verbose", "shuffle", "class_weight", "initial_epoch", "steps_per_epoch",
            "callbacks"]

    def test_implicit_string_concatenation_is_a_literal(self):
        assert parse_compile_params("loss='m' 'se', optimizer=adam").loss == "mse"

    def test_custom_argument_name(self):
        with pytest.raises(InvalidArgument, match=r"^compile_params_list\[2\]: loss is required$"):
            parse_compile_params("optimizer=adam", argument="compile_params_list[2]")


# ===================================================================================================
# 2. MADlib aliases and case-insensitivity
# ===================================================================================================

class TestOptimizerValues:
    """Values Keras' constructors take without a word and then fail on at the first step, or train
    nonsense with: refused by the parser, naming the argument as written."""

    @pytest.mark.parametrize("optimizer, message", [
        ("Adam(lr='fast')", "Adam(lr='fast'): lr must be a number >= 0"),
        ("Adam(learning_rate=-0.1)", "Adam(learning_rate=-0.1): learning_rate must be a number >= 0"),
        ("Adam(lr=-1)", "Adam(lr=-1): lr must be a number >= 0"),
        ("Adam(lr=True)", "Adam(lr=True): lr must be a number >= 0"),
        ("SGD(momentum=1.5)", "SGD(momentum=1.5): momentum must be a number in [0, 1]"),
        ("SGD(momentum='high')", "momentum must be a number in [0, 1]"),
        ("Adam(beta_1=1.0)", "Adam(beta_1=1.0): beta_1 must be a number in [0, 1)"),
        ("Adam(beta_2=-0.1)", "beta_2 must be a number in [0, 1)"),
        ("RMSprop(rho='x')", "rho must be a number in [0, 1)"),
        ("Adam(epsilon=-1e-7)", "epsilon must be a number >= 0"),
        ("Adam(amsgrad='yes')", "Adam(amsgrad='yes'): amsgrad must be True or False"),
        ("SGD(nesterov=1)", "nesterov must be True or False"),
        ("Adam(clipnorm=0)", "clipnorm must be a number above 0"),
        ("Adam(weight_decay='x')", "weight_decay must be a number >= 0"),
        ("Adam(gradient_accumulation_steps=2.5)", "gradient_accumulation_steps must be an integer >= 2"),
        ("Adam(ema_overwrite_frequency=0)", "ema_overwrite_frequency must be an integer >= 1"),
        ("Ftrl(learning_rate_power=0.5)", "learning_rate_power must be a number <= 0"),
        ("Adam(name=3)", "Adam(name=3): name must be a string"),
    ])
    def test_refused(self, optimizer, message):
        with pytest.raises(InvalidArgument, match=re.escape(message)) as info:
            parse_compile_params(compile_with(optimizer=f'"{optimizer}"'))
        assert str(info.value).startswith(f"compile_params: optimizer: {optimizer.partition('(')[0]}(")

    @pytest.mark.parametrize("optimizer", [
        "Adam(lr=1)", "SGD(lr=0)", "SGD(lr=0.1, momentum=0, nesterov=True)", "SGD(momentum=1.0)", "Adam(beta_1=0, beta_2=0.999)",
        "Adam(epsilon=0, weight_decay=0, amsgrad=False)", "Adam(clipnorm=None, global_clipnorm=2.5)",
        "Adam(gradient_accumulation_steps=2, use_ema=True, ema_momentum=1, ema_overwrite_frequency=1)",
        "Ftrl(learning_rate_power=0, l1_regularization_strength=0.5, beta=0)", "Adafactor(beta_2_decay=-0.8)",
        "Adam(epsilon=None)", "Adam(name='mine')", "Adam(not_a_keras_argument='x')",
    ])
    def test_accepted(self, optimizer):
        parse_compile_params(compile_with(optimizer=f'"{optimizer}"'))

    def test_every_rule_reads_as_an_expectation(self):
        for key, rule in params.OPTIMIZER_VALUES.items():
            assert str(rule).startswith(("a number", "an integer", "True or False", "a string")), key


class TestAliases:
    def test_lr_means_learning_rate(self):
        spec = parse_optimizer("Adam(lr=0.01)")
        assert spec.kwargs == {"learning_rate": 0.01}
        assert "lr" not in spec.kwargs

    def test_learning_rate_unchanged(self):
        assert parse_optimizer("Adam(learning_rate=0.01)") == parse_optimizer("Adam(lr=0.01)")

    def test_lr_rename_keeps_order(self):
        spec = parse_optimizer("SGD(momentum=0.9, lr=0.1)")
        assert list(spec.kwargs) == ["momentum", "learning_rate"]

    @pytest.mark.parametrize("metric", ["acc", "accuracy"])
    def test_acc_metric(self, metric):
        assert parse_compile_params(compile_with(metrics=f"['{metric}']")).metrics == (metric,)

    @pytest.mark.parametrize("canonical", sorted(OPTIMIZERS.values()))
    def test_optimizer_names_are_case_insensitive(self, canonical):
        for spelling in (canonical, canonical.lower(), canonical.upper(), canonical.swapcase()):
            assert parse_optimizer(spelling).name == canonical
            assert parse_optimizer(f"'{spelling}(lr=0.1)'") == OptimizerSpec(canonical, {"learning_rate": 0.1})

    def test_parse_optimizer_default_label(self):
        with pytest.raises(InvalidArgument, match=r"^optimizer: unknown optimizer 'Nope'"):
            parse_optimizer("Nope")


# ===================================================================================================
# 3. Malformed and hostile compile_params
# ===================================================================================================

HOSTILE = "__import__('os').system('x')"

BAD_COMPILE = [
    # (id, text, error type, regex that must be found in the message)
    ("unknown-optimizer", compile_with(optimizer="'Adamm'"), InvalidArgument,
     r"optimizer: unknown optimizer 'Adamm' \(did you mean 'Adam'\?\); expected one of SGD, .*Adam"),
    ("unknown-optimizer-call", compile_with(optimizer="Adamm(lr=0.1)"), InvalidArgument,
     r"optimizer: unknown optimizer 'Adamm'"),
    ("wrapper-optimizer", compile_with(optimizer="LossScaleOptimizer"), InvalidArgument,
     r"unknown optimizer 'LossScaleOptimizer'"),
    ("hostile-optimizer-unquoted", compile_with(optimizer=HOSTILE), InvalidArgument,
     r"optimizer: expected an optimizer like 'Adam\(lr=0.01\)'"),
    ("hostile-optimizer-quoted", compile_with(optimizer="\"__import__('os')\""), InvalidArgument,
     r"optimizer: unknown optimizer '__import__'"),
    ("hostile-optimizer-quoted-call", compile_with(optimizer="'__import__(\"os\").system(\"x\")'"),
     InvalidArgument, r"optimizer: expected an optimizer like"),
    ("hostile-loss", compile_with(loss=HOSTILE), InvalidArgument,
     r"loss: only literal values are accepted, got \"__import__"),
    ("hostile-loss-quoted", compile_with(loss=f'"{HOSTILE}"'), InvalidArgument, r"unknown loss \"__import__"),
    ("hostile-metric", compile_with(metrics=f"[{HOSTILE}]"), InvalidArgument,
     r"metrics: only literal values are accepted"),
    ("hostile-metric-quoted", compile_with(metrics=f'["{HOSTILE}"]'), InvalidArgument, r"unknown metric"),
    ("hostile-optimizer-kwarg", compile_with(optimizer=f"Adam(lr={HOSTILE})"), InvalidArgument,
     r"optimizer: lr: only literal values are accepted"),
    ("attribute-loss-os", compile_with(loss="os.system"), InvalidArgument,
     r"loss: only literal values are accepted, got 'os.system'"),
    ("attribute-loss-keras", compile_with(loss="keras.losses.mse"), InvalidArgument,
     r"loss: only literal values are accepted, got 'keras.losses.mse'"),
    ("attribute-optimizer", compile_with(optimizer="keras.optimizers.Adam()"), InvalidArgument,
     r"optimizer: expected an optimizer like"),
    ("attribute-optimizer-method", compile_with(optimizer="adam.x()"), InvalidArgument,
     r"optimizer: expected an optimizer like"),
    ("starred-builtins", compile_with(metrics="[*__builtins__]"), InvalidArgument,
     r"metrics: only literal values are accepted, got '\[\*__builtins__\]'"),
    ("double-star-optimizer", compile_with(optimizer="'Adam(**__builtins__)'"), InvalidArgument,
     r"optimizer: only name=value arguments are accepted"),
    ("double-star-dict", compile_with(optimizer="Adam(**{'lr': 1})"), InvalidArgument,
     r"optimizer: only name=value arguments are accepted"),
    ("dict-unpack-in-value", compile_with(loss_weights="{**x}"), InvalidArgument,
     r"loss_weights: only literal values are accepted"),
    ("lambda-loss", compile_with(loss="lambda: 1"), InvalidArgument, r"loss: only literal values are accepted"),
    ("lambda-optimizer", compile_with(optimizer="lambda: 1"), InvalidArgument, r"optimizer: expected an optimizer"),
    ("lambda-metric", compile_with(metrics="[lambda y, p: 1]"), InvalidArgument,
     r"metrics: only literal values are accepted"),
    ("lambda-kwarg", compile_with(optimizer="Adam(lr=lambda: 1)"), InvalidArgument,
     r"optimizer: lr: only literal values are accepted"),
    ("comprehension", compile_with(metrics="[x for x in y]"), InvalidArgument,
     r"metrics: only literal values are accepted"),
    ("walrus-loss", compile_with(loss="(x:=1)"), InvalidArgument, r"loss: only literal values are accepted"),
    ("walrus-optimizer", compile_with(optimizer="(x:=1)"), InvalidArgument, r"optimizer: expected an optimizer"),
    ("fstring-loss", compile_with(loss="f'mse'"), InvalidArgument, r"loss: only literal values are accepted"),
    ("fstring-metric", compile_with(metrics="[f'{__import__(\"os\")}']"), InvalidArgument,
     r"metrics: only literal values are accepted"),
    ("fstring-optimizer", compile_with(optimizer="f'{1}'"), InvalidArgument, r"optimizer: expected an optimizer"),
    ("format-method", compile_with(loss="'{}'.format('mse')"), InvalidArgument,
     r"loss: only literal values are accepted"),
    ("format-dunder", compile_with(metrics="['{0.__class__}'.format(1)]"), InvalidArgument,
     r"metrics: only literal values are accepted"),
    ("percent-format", compile_with(loss="'%s' % 'mse'"), InvalidArgument, r"loss: only literal values are accepted"),
    ("binop-number", compile_with(optimizer="Adam(lr=1/10)"), InvalidArgument,
     r"optimizer: lr: only literal values are accepted"),
    ("double-negation", compile_with(optimizer="Adam(lr=--0.1)"), InvalidArgument,
     r"optimizer: lr: only literal values are accepted"),
    ("dunder-chain-loss", compile_with(loss="().__class__.__bases__"), InvalidArgument,
     r"loss: only literal values are accepted, got '\(\)\.__class__\.__bases__'"),
    ("dunder-subclasses-loss", compile_with(loss="().__class__.__bases__[0].__subclasses__()"), InvalidArgument,
     r"loss: only literal values are accepted"),
    ("dunder-subclasses-optimizer", compile_with(optimizer="().__class__.__bases__[0].__subclasses__()"),
     InvalidArgument, r"optimizer: expected an optimizer like"),
    ("dunder-metric", compile_with(metrics="[{}.__class__.__subclasses__()]"), InvalidArgument,
     r"metrics: only literal values are accepted"),
    ("statement-injection", compile_with(optimizer="adam; import os"), InvalidArgument,
     r"optimizer: expected an optimizer like .*'adam; import os'"),
    ("chained-call", compile_with(optimizer="adam()()"), InvalidArgument, r"optimizer: expected an optimizer like"),
    ("complex-number", compile_with(optimizer="Adam(lr=1j)"), InvalidArgument,
     r"optimizer: lr: only literal values are accepted"),
    ("negative-complex", compile_with(optimizer="Adam(lr=-1j)"), InvalidArgument,
     r"optimizer: lr: only literal values are accepted"),
    ("bytes", compile_with(optimizer="Adam(lr=b'x')"), InvalidArgument,
     r"optimizer: lr: only literal values are accepted"),
    ("ellipsis", compile_with(loss="..."), InvalidArgument, r"loss: only literal values are accepted"),
    ("name-in-kwarg", compile_with(optimizer="Adam(lr=x)"), InvalidArgument,
     r"optimizer: lr: only literal values are accepted"),
    ("list-kwarg", compile_with(optimizer="Adam(lr=[0.1])"), InvalidArgument,
     r"optimizer: lr must be a number, boolean, string or None"),
    ("tuple-kwarg", compile_with(optimizer="Adam(lr=(0.1,))"), InvalidArgument,
     r"optimizer: lr must be a number, boolean, string or None"),
    ("number-optimizer", compile_with(optimizer="1"), InvalidArgument, r"optimizer: expected an optimizer like"),
    ("quoted-number-optimizer", compile_with(optimizer="'1'"), InvalidArgument,
     r"optimizer: expected an optimizer like"),
    ("doubly-quoted-optimizer", compile_with(optimizer="\"'adam'\""), InvalidArgument,
     r"optimizer: expected an optimizer like"),
    ("empty-quoted-optimizer", compile_with(optimizer="''"), InvalidArgument,
     r"optimizer: expected an optimizer like"),
    ("quoted-optimizer-concatenation", compile_with(optimizer="'Adam(lr=0.1)' 'x'"), InvalidArgument,
     r"optimizer: expected an optimizer like"),
    ("quoted-optimizer-binop", compile_with(optimizer="'Adam'+'x'"), InvalidArgument,
     r"optimizer: only literal values are accepted"),
    # brackets and quotes
    ("missing-close-paren", compile_with(optimizer="Adam(lr=0.1"), InvalidArgument,
     r"^compile_params: missing '\)' in "),
    ("extra-close-paren", compile_with(optimizer="Adam(lr=0.1))"), InvalidArgument,
     r"^compile_params: unbalanced '\)' at position 33 in "),
    ("missing-close-bracket", compile_with(metrics="['acc'"), InvalidArgument, r"^compile_params: missing '\]' in "),
    ("mismatched-bracket", compile_with(metrics="['acc')"), InvalidArgument, r"unbalanced '\)' at position"),
    ("leading-close-bracket", "]loss=mse, optimizer=adam", InvalidArgument, r"unbalanced '\]' at position 1 in"),
    ("missing-open-bracket", compile_with(metrics="'acc']"), InvalidArgument, r"unbalanced '\]' at position"),
    ("unterminated-single-quote", "loss='mse, optimizer=adam", InvalidArgument,
     r"^compile_params: unterminated string starting with '"),
    ("unterminated-double-quote", 'loss=mse, optimizer="adam', InvalidArgument,
     r"unterminated string starting with \""),
    ("mismatched-quotes", "loss=\"mse', optimizer=adam", InvalidArgument,
     r"unterminated string starting with \""),
    ("escaped-closing-quote", r"loss='mse\', optimizer=adam", InvalidArgument, r"unterminated string"),
    # structure
    ("duplicate-loss", "loss=mse, loss=hinge, optimizer=adam", InvalidArgument,
     r"^compile_params: loss is given more than once$"),
    ("duplicate-optimizer", "loss=mse, optimizer=adam, optimizer=sgd", InvalidArgument,
     r"optimizer is given more than once"),
    ("lr-and-learning-rate", compile_with(optimizer="'Adam(lr=0.1, learning_rate=0.2)'"), InvalidArgument,
     r"optimizer: learning_rate is given more than once \(lr is learning_rate\)"),
    ("learning-rate-and-lr", compile_with(optimizer="Adam(learning_rate=0.1, lr=0.2)"), InvalidArgument,
     r"optimizer: lr is given more than once \(lr is learning_rate\)"),
    ("repeated-optimizer-kwarg", compile_with(optimizer="SGD(momentum=0.1, momentum=0.2)"), InvalidArgument,
     r"optimizer: momentum is given more than once$"),
    ("positional-optimizer-arg", compile_with(optimizer="Adam(0.1)"), InvalidArgument,
     r"optimizer: arguments of Adam must be given as name=value, e.g. Adam\(learning_rate=0.01\)"),
    ("starred-optimizer-arg", compile_with(optimizer="Adam(*x)"), InvalidArgument,
     r"arguments of Adam must be given as name=value"),
    ("empty", "", InvalidArgument, r"^compile_params: expected a string like .* got an empty string$"),
    ("whitespace-only", " \n\t  ", InvalidArgument, r"got an empty string$"),
    ("trailing-comma", "loss='mse', optimizer='adam',", InvalidArgument,
     r"^compile_params: empty parameter \(two commas in a row or a trailing comma\)$"),
    ("leading-comma", ",loss=mse, optimizer=adam", InvalidArgument, r"empty parameter"),
    ("double-comma", "loss=mse,, optimizer=adam", InvalidArgument, r"empty parameter"),
    ("missing-equals", "loss=mse, optimizer adam", InvalidArgument,
     r"^compile_params: expected name=value, got 'optimizer adam'$"),
    ("missing-comma", "optimizer=adam, loss=mse metrics=['acc']", InvalidArgument,
     r"^compile_params: a comma is missing before metrics= \(in \"loss=mse metrics=\['acc'\]\"\)"),
    ("missing-comma-swallows-key", "loss=mse optimizer=adam", InvalidArgument,
     r"^compile_params: a comma is missing before optimizer= \(in 'loss=mse optimizer=adam'\); separate parameters "
     r"with commas, not a space$"),
    ("missing-value", "loss=, optimizer=adam", InvalidArgument, r"^compile_params: loss has no value$"),
    ("missing-value-at-end", "loss=mse, optimizer=", InvalidArgument, r"optimizer has no value$"),
    ("missing-key", "=mse, optimizer=adam", InvalidArgument, r"^compile_params: '' is not a parameter name$"),
    ("quoted-key", "'loss'=mse, optimizer=adam", InvalidArgument, r"\"'loss'\" is not a parameter name"),
    ("numeric-key", compile_with() + ", 1=2", InvalidArgument, r"'1' is not a parameter name"),
    ("dashed-key", compile_with() + ", m-x=2", InvalidArgument, r"'m-x' is not a parameter name"),
    ("double-equals", "loss==mse, optimizer=adam", InvalidArgument, r"loss: '=mse' is not a valid value"),
    ("missing-optimizer", "loss=mse, metrics=['acc']", InvalidArgument, r"^compile_params: optimizer is required$"),
    ("missing-loss", "optimizer=adam", InvalidArgument, r"^compile_params: loss is required$"),
    ("unknown-key", compile_with(foo="1"), InvalidArgument,
     r"^compile_params: unknown parameter 'foo'; expected one of optimizer, loss, metrics, loss_weights, "
     r"weighted_metrics$"),
    ("misspelled-key", "loss=mse, optimiser=adam", InvalidArgument, r"unknown parameter 'optimiser'"),
    ("dunder-key", compile_with(__class__="1"), InvalidArgument, r"unknown parameter '__class__'"),
    # NotSupported
    ("sample-weight-mode", compile_with(sample_weight_mode="'temporal'"), NotSupported,
     r"^compile_params: sample_weight_mode is not accepted: Keras 3 removed sample_weight_mode; leave it out "
     r"\(madlib_dl has no per-example weights; class_weight in fit_params weighs classes\) \(got 'temporal'; only "
     r"None, which changes nothing, is accepted\)$"),
    ("run-eagerly", compile_with(run_eagerly="True"), NotSupported, r"run_eagerly is not accepted"),
    ("sparse-loss", compile_with(loss="'sparse_categorical_crossentropy'"), NotSupported,
     r"loss 'sparse_categorical_crossentropy' is not supported$"),
    ("sparse-metric", compile_with(metrics="['sparse_categorical_accuracy']"), NotSupported,
     r"metric 'sparse_categorical_accuracy' is not supported$"),
    ("sparse-weighted-metric", compile_with(weighted_metrics="[sparse_top_k_categorical_accuracy]"), NotSupported,
     r"metric 'sparse_top_k_categorical_accuracy' is not supported"),
    ("two-metrics", compile_with(metrics="['accuracy', 'mse']"), NotSupported,
     r"metrics holds 2 metrics; one metric per model is supported"),
    # values of the wrong shape
    ("unknown-loss", compile_with(loss="'msee'"), InvalidArgument, r"^compile_params: unknown loss 'msee' \(did you mean 'mse'\?\); expected one of"),
    ("loss-list", compile_with(loss="[mse]"), InvalidArgument,
     r"loss must hold loss names, got \['mse'\]"),
    ("loss-number", compile_with(loss="1"), InvalidArgument, r"loss must hold loss names, got 1"),
    ("loss-none", compile_with(loss="None"), InvalidArgument, r"loss must hold loss names, got None"),
    ("loss-bool", compile_with(loss="True"), InvalidArgument, r"loss must hold loss names, got True"),
    ("unknown-metric", compile_with(metrics="['f1']"), InvalidArgument, r"unknown metric 'f1'; expected one of"),
    ("metrics-string", compile_with(metrics="'accuracy'"), InvalidArgument,
     r"metrics must be a list such as \['accuracy'\], got \"'accuracy'\""),
    ("metrics-bare-word", compile_with(metrics="accuracy"), InvalidArgument, r"metrics must be a list such as"),
    ("metrics-dict", compile_with(metrics="{'acc': 1}"), InvalidArgument, r"metrics must be a list such as"),
    ("metrics-of-numbers", compile_with(metrics="[1]"), InvalidArgument, r"metrics must hold metric names, got 1"),
    ("metrics-of-lists", compile_with(metrics="[['acc']]"), InvalidArgument, r"metrics must hold metric names"),
    ("weighted-metrics-string", compile_with(weighted_metrics="'acc'"), InvalidArgument,
     r"weighted_metrics must be a list of metric names"),
    ("weighted-metrics-unknown", compile_with(weighted_metrics="['nope']"), InvalidArgument, r"unknown metric 'nope'"),
    ("weighted-metrics-of-numbers", compile_with(weighted_metrics="[1]"), InvalidArgument,
     r"weighted_metrics must hold metric names, got 1"),
    ("loss-weights-strings", compile_with(loss_weights="['a', 'b']"), InvalidArgument,
     r"loss_weights must be a list or dict of numbers, got \"\['a', 'b'\]\""),
    ("loss-weights-dict-of-strings", compile_with(loss_weights="{'a': 'b'}"), InvalidArgument,
     r"loss_weights must be a list or dict of numbers"),
    ("loss-weights-bools", compile_with(loss_weights="[True]"), InvalidArgument,
     r"loss_weights must be a list or dict of numbers"),
    ("loss-weights-scalar", compile_with(loss_weights="1"), InvalidArgument,
     r"loss_weights must be a list or dict of numbers"),
    ("loss-weights-bare-word", compile_with(loss_weights="[a]"), InvalidArgument,
     r"loss_weights: only literal values are accepted"),
    ("loss-weights-bare-key", compile_with(loss_weights="{out: 1}"), InvalidArgument,
     r"loss_weights: only literal values are accepted"),
    # limits
    ("nesting-too-deep", compile_with(metrics="[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1)), InvalidArgument,
     rf"^compile_params: brackets nested deeper than {MAX_NESTING} levels$"),
    ("nesting-far-too-deep", compile_with(metrics="(" * 4000 + ")" * 4000), InvalidArgument,
     r"brackets nested deeper than"),
    ("nesting-in-optimizer", compile_with(optimizer="Adam" + "(" * (MAX_NESTING + 1) + ")" * (MAX_NESTING + 1)),
     InvalidArgument, r"brackets nested deeper than"),
    ("too-long", compile_with(loss="'" + "m" * MAX_PARAM_LENGTH + "'"), InvalidArgument,
     rf"^compile_params: longer than {MAX_PARAM_LENGTH} characters$"),
    ("huge-number", compile_with(optimizer="Adam(lr=" + "9" * 5000 + ")"), InvalidArgument,
     r"optimizer: expected an optimizer like"),
]


class TestMalformedCompileParams:
    @pytest.mark.parametrize("text, error, pattern", [c[1:] for c in BAD_COMPILE], ids=[c[0] for c in BAD_COMPILE])
    def test_rejected(self, text, error, pattern):
        with pytest.raises(error, match=pattern) as info:
            parse_compile_params(text)
        assert type(info.value) is error  # NotSupported vs InvalidArgument is not interchangeable
        assert str(info.value).startswith("compile_params: ")

    def test_none(self):
        with pytest.raises(InvalidArgument, match=r"^compile_params: expected a string like .* got NULL$"):
            parse_compile_params(None)

    def test_message_shows_the_expected_form(self):
        with pytest.raises(InvalidArgument) as info:
            parse_compile_params("")
        assert MADLIB_EXAMPLE in str(info.value)

    def test_duplicate_key_even_with_same_value(self):
        with pytest.raises(InvalidArgument, match=r"loss is given more than once"):
            parse_compile_params("loss=mse, optimizer=adam, loss=mse")

    @pytest.mark.parametrize("key", sorted(COMPILE_KEYS_REJECTED))
    def test_every_rejected_compile_key(self, key):
        with pytest.raises(NotSupported, match=re.escape(f"{key} is not accepted: {COMPILE_KEYS_REJECTED[key]}")):
            parse_compile_params(compile_with(**{key: "1"}))

    def test_rejected_key_wins_over_missing_loss(self):
        with pytest.raises(NotSupported, match=r"sample_weight_mode"):
            parse_compile_params("optimizer=adam, sample_weight_mode='temporal'")

    def test_max_length_boundary(self):
        base = compile_with()
        exactly = base + " " * (MAX_PARAM_LENGTH - len(base))
        assert len(exactly) == MAX_PARAM_LENGTH
        assert parse_compile_params(exactly).loss == "mse"
        with pytest.raises(InvalidArgument, match=r"longer than 10000 characters"):
            parse_compile_params(exactly + " ")

    def test_max_nesting_boundary(self):
        # MAX_NESTING levels get past the splitter and fail only on the metric's shape.
        deep = "[" * MAX_NESTING + "]" * MAX_NESTING
        with pytest.raises(InvalidArgument, match=r"metrics must hold metric names"):
            parse_compile_params(compile_with(metrics=deep))

    def test_all_errors_are_madlib_errors(self):
        for _, text, _, _ in BAD_COMPILE:
            with pytest.raises(MadlibDLError):
                parse_compile_params(text)

    def test_sqlstates(self):
        with pytest.raises(NotSupported) as info:
            parse_compile_params(compile_with(metrics="['acc', 'mse']"))
        assert info.value.sqlstate == "0A000"
        with pytest.raises(InvalidArgument) as info:
            parse_compile_params(compile_with(loss="'nope'"))
        assert info.value.sqlstate == "22023"


# ---------------------------------------------------------------------------------------------------
# No code ever runs: hostile strings that would leave a trace if evaluated

class TestNothingIsEvaluated:
    @staticmethod
    def hostile_strings(marker):
        touch = f'open("{marker}", "w").close()'
        set_global = 'setattr(__import__("builtins"), "MADLIB_DL_PWNED", 1)'
        module_global = 'globals().__setitem__("MADLIB_DL_PWNED", 1)'
        return [
            compile_with(optimizer=touch),
            compile_with(optimizer=f"'{touch}'"),
            compile_with(optimizer=f"Adam(lr={touch})"),
            compile_with(loss=touch),
            compile_with(loss=f"'{touch}'"),
            compile_with(metrics=f"[{touch}]"),
            compile_with(loss_weights=f"[{touch}]"),
            compile_with(weighted_metrics=f"[{touch}]"),
            compile_with(optimizer=set_global),
            compile_with(loss=set_global),
            compile_with(metrics=f"[{module_global}]"),
            compile_with(loss=f"f'{{{set_global}}}'"),
            compile_with(optimizer=f"Adam(lr=(lambda: {set_global})())"),
        ]

    def test_hostile_strings_raise_and_leave_no_trace(self, tmp_path, monkeypatch):
        marker = tmp_path / "pwned"
        calls = []

        def forbidden(*args, **kwargs):
            calls.append(args)
            raise AssertionError("eval/exec must never be called")

        monkeypatch.setattr(builtins, "eval", forbidden)
        monkeypatch.setattr(builtins, "exec", forbidden)
        for text in self.hostile_strings(marker):
            with pytest.raises(MadlibDLError):
                parse_compile_params(text)
        fit_hostile = [f'epochs=open("{marker}", "w").close()', 'batch_size=setattr(__import__("builtins"), "X", 1)']
        for text in fit_hostile:
            with pytest.raises(MadlibDLError):
                parse_fit_params(text)
        assert not marker.exists()
        assert not hasattr(builtins, "MADLIB_DL_PWNED")
        assert "MADLIB_DL_PWNED" not in vars(params)
        assert calls == []

    def test_valid_strings_do_not_need_eval(self, monkeypatch):
        def forbidden(*args, **kwargs):
            raise AssertionError("eval/exec must never be called")

        monkeypatch.setattr(builtins, "eval", forbidden)
        monkeypatch.setattr(builtins, "exec", forbidden)
        assert parse_compile_params(MADLIB_EXAMPLE).optimizer.name == "Adam"
        assert parse_fit_params("batch_size=32, epochs=1").batch_size == 32


# ===================================================================================================
# 4. fit_params
# ===================================================================================================

class TestValidFitParams:
    def test_madlib_example(self):
        result = parse_fit_params("batch_size=32, epochs=1")
        assert result == FitParams(batch_size=32, epochs=1)
        assert result.keras_kwargs() == {"batch_size": 32, "epochs": 1, "verbose": 0, "shuffle": True,
                                         "initial_epoch": 0}

    @pytest.mark.parametrize("text", [None, "", "   ", "\n\t"])
    def test_empty_means_defaults(self, text):
        result = parse_fit_params(text)
        assert result == FitParams()
        assert result == FitParams(batch_size=None, epochs=1, verbose=0, shuffle=True, class_weight=None,
                                   initial_epoch=0, steps_per_epoch=None)
        assert result.verbose == 0

    def test_defaults_keras_kwargs_drop_none(self):
        assert FitParams().keras_kwargs() == {"epochs": 1, "verbose": 0, "shuffle": True, "initial_epoch": 0}

    def test_every_key(self):
        result = parse_fit_params("batch_size=64, epochs=3, verbose=2, shuffle=False, "
                                  "class_weight={0: 1.0, 1: 2.5}, initial_epoch=1, steps_per_epoch=10")
        assert result == FitParams(batch_size=64, epochs=3, verbose=2, shuffle=False,
                                   class_weight={0: 1.0, 1: 2.5}, initial_epoch=1, steps_per_epoch=10)
        assert result.shuffle is False
        assert result.keras_kwargs() == {"batch_size": 64, "epochs": 3, "verbose": 2, "shuffle": False,
                                         "class_weight": {0: 1.0, 1: 2.5}, "initial_epoch": 1,
                                         "steps_per_epoch": 10}

    def test_falsy_values_are_kept_by_keras_kwargs(self):
        kwargs = parse_fit_params("shuffle=False, verbose=0, initial_epoch=0").keras_kwargs()
        assert kwargs["shuffle"] is False
        assert kwargs["verbose"] == 0
        assert kwargs["initial_epoch"] == 0
        assert "batch_size" not in kwargs and "class_weight" not in kwargs and "steps_per_epoch" not in kwargs

    @pytest.mark.parametrize("text, field_name, expected", [
        ("batch_size=1", "batch_size", 1),
        ("batch_size=1_024", "batch_size", 1024),
        ("batch_size=0x10", "batch_size", 16),
        ("batch_size=+8", "batch_size", 8),
        ("epochs=100", "epochs", 100),
        ("verbose=0", "verbose", 0),
        ("verbose=1", "verbose", 1),
        ("shuffle=True", "shuffle", True),
        ("initial_epoch=0", "initial_epoch", 0),
        ("steps_per_epoch=1", "steps_per_epoch", 1),
        ("class_weight={}", "class_weight", {}),
        ("class_weight={0: 1, 3: 0.25}", "class_weight", {0: 1, 3: 0.25}),
    ])
    def test_single_values(self, text, field_name, expected):
        value = getattr(parse_fit_params(text), field_name)
        assert value == expected
        assert type(value) is type(expected)

    def test_whitespace_and_newlines(self):
        assert parse_fit_params("\n batch_size = 32 ,\n\tepochs = 2\n") == FitParams(batch_size=32, epochs=2)

    def test_custom_argument_name(self):
        with pytest.raises(InvalidArgument, match=r"^fit_params_list\[1\]: epochs must be an integer >= 1, got 0$"):
            parse_fit_params("epochs=0", argument="fit_params_list[1]")


BAD_FIT = [
    ("batch-size-0", "batch_size=0", InvalidArgument, r"^fit_params: batch_size must be an integer >= 1, got 0$"),
    ("batch-size-negative", "batch_size=-1", InvalidArgument, r"batch_size must be an integer >= 1, got -1$"),
    ("batch-size-float", "batch_size=1.5", InvalidArgument, r"batch_size must be an integer >= 1, got 1.5$"),
    ("batch-size-integral-float", "batch_size=32.0", InvalidArgument, r"batch_size must be an integer >= 1"),
    ("batch-size-bool", "batch_size=True", InvalidArgument, r"batch_size must be an integer >= 1, got True$"),
    ("batch-size-string", "batch_size='32'", InvalidArgument, r"batch_size must be an integer >= 1, got '32'$"),
    ("batch-size-none", "batch_size=None", InvalidArgument, r"batch_size must be an integer >= 1, got None$"),
    ("batch-size-list", "batch_size=[32]", InvalidArgument, r"batch_size must be an integer >= 1, got \[32\]$"),
    ("batch-size-bare-word", "batch_size=big", InvalidArgument,
     r"^fit_params: batch_size: only literal values are accepted, got 'big'$"),
    ("batch-size-expression", "batch_size=10**2", InvalidArgument, r"batch_size: only literal values are accepted"),
    ("batch-size-huge-literal", "batch_size=" + "9" * 5000, InvalidArgument,
     r"batch_size: '9+'\.\.\. \(5000 characters\) is not a valid value"),
    ("epochs-0", "epochs=0", InvalidArgument, r"^fit_params: epochs must be an integer >= 1, got 0$"),
    ("epochs-none", "epochs=None", InvalidArgument, r"epochs must be an integer >= 1, got None"),
    ("verbose-3", "verbose=3", InvalidArgument, r"^fit_params: verbose must be 0, 1 or 2, got 3$"),
    ("verbose-negative", "verbose=-1", InvalidArgument, r"verbose must be 0, 1 or 2, got -1$"),
    ("verbose-bool", "verbose=True", InvalidArgument, r"verbose must be 0, 1 or 2, got True$"),
    ("verbose-string", "verbose='1'", InvalidArgument, r"verbose must be 0, 1 or 2, got '1'$"),
    ("verbose-list", "verbose=[1]", InvalidArgument, r"verbose must be 0, 1 or 2, got \[1\]$"),
    ("shuffle-yes", "shuffle='yes'", InvalidArgument, r"^fit_params: shuffle must be True or False, got 'yes'$"),
    ("shuffle-int", "shuffle=1", InvalidArgument, r"shuffle must be True or False, got 1$"),
    ("shuffle-string-false", "shuffle='False'", InvalidArgument, r"shuffle must be True or False, got 'False'$"),
    ("shuffle-lowercase", "shuffle=true", InvalidArgument, r"shuffle: only literal values are accepted, got 'true'"),
    ("shuffle-batch", "shuffle='batch'", InvalidArgument, r"shuffle must be True or False"),
    ("class-weight-string-value", "class_weight={0: 'a'}", InvalidArgument,
     r"^fit_params: class_weight must be a dict of class index to weight, such as \{0: 1.0, 1: 2.5\}, "
     r"got \{0: 'a'\}$"),
    ("class-weight-string-key", "class_weight={'a': 1}", InvalidArgument,
     r"class_weight must be a dict of class index to weight, .* got \{'a': 1\}$"),
    ("class-weight-negative-key", "class_weight={-1: 1}", InvalidArgument, r"class_weight must be a dict"),
    ("class-weight-float-key", "class_weight={0.5: 1}", InvalidArgument, r"class_weight must be a dict"),
    ("class-weight-bool-key", "class_weight={True: 1}", InvalidArgument, r"class_weight must be a dict"),
    ("class-weight-bool-value", "class_weight={0: True}", InvalidArgument, r"class_weight must be a dict"),
    ("class-weight-none-value", "class_weight={0: None}", InvalidArgument, r"class_weight must be a dict"),
    ("class-weight-list", "class_weight=[1, 2]", InvalidArgument, r"class_weight must be a dict"),
    ("class-weight-none", "class_weight=None", InvalidArgument, r"class_weight must be a dict"),
    ("class-weight-bare-word", "class_weight={0: a}", InvalidArgument,
     r"class_weight: only literal values are accepted"),
    ("class-weight-unpack", "class_weight={**x}", InvalidArgument, r"class_weight: only literal values are accepted"),
    ("initial-epoch-negative", "initial_epoch=-1", InvalidArgument,
     r"^fit_params: initial_epoch must be an integer >= 0, got -1$"),
    ("initial-epoch-float", "initial_epoch=0.0", InvalidArgument, r"initial_epoch must be an integer >= 0"),
    ("steps-per-epoch-0", "steps_per_epoch=0", InvalidArgument,
     r"^fit_params: steps_per_epoch must be an integer >= 1, got 0$"),
    ("steps-per-epoch-none", "steps_per_epoch=None", InvalidArgument, r"steps_per_epoch must be an integer >= 1"),
    # structure
    ("unknown-key", "epoch=1", InvalidArgument,
     r"^fit_params: unknown parameter 'epoch' \(did you mean 'epochs'\?\); expected one of batch_size, epochs, verbose, "
     r"shuffle, class_weight, "
     r"initial_epoch, steps_per_epoch, callbacks$"),
    ("duplicate-key", "batch_size=32, batch_size=64", InvalidArgument,
     r"^fit_params: batch_size is given more than once$"),
    ("duplicate-key-same-value", "epochs=1, epochs=1", InvalidArgument, r"epochs is given more than once"),
    ("trailing-comma", "batch_size=32,", InvalidArgument, r"^fit_params: empty parameter"),
    ("missing-equals", "batch_size 32", InvalidArgument, r"^fit_params: expected name=value, got 'batch_size 32'$"),
    ("missing-value", "batch_size=", InvalidArgument, r"^fit_params: batch_size has no value$"),
    ("unbalanced", "class_weight={0: 1", InvalidArgument, r"^fit_params: missing '\}' in "),
    ("unterminated", "shuffle='yes", InvalidArgument, r"^fit_params: unterminated string starting with '"),
    ("too-long", "epochs=1" + " " * MAX_PARAM_LENGTH, InvalidArgument, r"^fit_params: longer than 10000 characters$"),
    ("too-deep", "class_weight=" + "{0:" * (MAX_NESTING + 1) + "1" + "}" * (MAX_NESTING + 1), InvalidArgument,
     r"brackets nested deeper than 16 levels"),
    ("hostile", f"epochs={HOSTILE}", InvalidArgument, r"^fit_params: epochs: only literal values are accepted"),
    ("hostile-lambda", "epochs=lambda: 1", InvalidArgument, r"epochs: only literal values are accepted"),
    ("hostile-attribute", "epochs=os.cpu_count", InvalidArgument, r"epochs: only literal values are accepted"),
    ("hostile-dunder", "epochs=().__class__", InvalidArgument, r"epochs: only literal values are accepted"),
    ("unknown-key-before-bad-value", "nope=1", InvalidArgument, r"unknown parameter 'nope'"),
]


class TestMalformedFitParams:
    @pytest.mark.parametrize("text, error, pattern", [c[1:] for c in BAD_FIT], ids=[c[0] for c in BAD_FIT])
    def test_rejected(self, text, error, pattern):
        with pytest.raises(error, match=pattern) as info:
            parse_fit_params(text)
        assert type(info.value) is error
        assert str(info.value).startswith("fit_params: ")

    @pytest.mark.parametrize("key", sorted(FIT_KEYS_REJECTED))
    def test_every_rejected_fit_key_is_not_supported(self, key):
        with pytest.raises(NotSupported, match=rf"^fit_params: {key} is not accepted: "
                                               + re.escape(FIT_KEYS_REJECTED[key]) + "$"):
            parse_fit_params(f"epochs=1, {key}=None")

    @pytest.mark.parametrize("text, reason", [
        ("callbacks=[EarlyStopping(patience=2)]", "EarlyStopping cannot act per hop"),
        ("callbacks=[keras.callbacks.ModelCheckpoint('x')]", "madlib_dl checkpoints the whole run itself"),
        ("validation_split=0.2", "validation data comes from the validation_table argument"),
        ("validation_freq=1", "use the metrics_compute_frequency argument"),
        ("sample_weight=None", "use class_weight"),
    ])
    def test_rejected_fit_key_reasons(self, text, reason):
        with pytest.raises(NotSupported, match=re.escape(reason)):
            parse_fit_params(text)


class TestFitParamsTogether:
    @pytest.mark.parametrize("text, epochs", [("initial_epoch=1", 1), ("epochs=3, initial_epoch=3", 3),
                                              ("epochs=2, initial_epoch=5", 2)])
    def test_initial_epoch_must_leave_an_epoch_to_train(self, text, epochs):
        with pytest.raises(InvalidArgument, match=re.escape(
                f"fit_params: initial_epoch must be below epochs ({epochs}), got ") + r"\d+: the hop would train no epoch"):
            parse_fit_params(text)

    def test_initial_epoch_below_epochs_passes(self):
        assert parse_fit_params("epochs=3, initial_epoch=2").initial_epoch == 2
        assert parse_fit_params("initial_epoch=0").epochs == 1


# ===================================================================================================
# 5. split_params and literal
# ===================================================================================================

class TestSplitParams:
    @pytest.mark.parametrize("text, expected", [
        ("metrics=['a,b']", [("metrics", "['a,b']")]),
        ('metrics=["a,b"]', [("metrics", '["a,b"]')]),
        ("a='x,y', b=\"p,q\"", [("a", "'x,y'"), ("b", '"p,q"')]),
        ("a='[', b=']'", [("a", "'['"), ("b", "']'")]),
        ("a='(', b=\"{\"", [("a", "'('"), ("b", '"{"')]),
        ("a=\"it's, fine\", b=1", [("a", "\"it's, fine\""), ("b", "1")]),
        ("a='it\\'s, fine', b=1", [("a", "'it\\'s, fine'"), ("b", "1")]),
        ("a='x\\\\', b=1", [("a", "'x\\\\'"), ("b", "1")]),
        ("a=1, b=[1, 2], c={'k': (1, 2)}", [("a", "1"), ("b", "[1, 2]"), ("c", "{'k': (1, 2)}")]),
        ("optimizer=SGD(lr=0.1, momentum=0.9)", [("optimizer", "SGD(lr=0.1, momentum=0.9)")]),
        ("a=b=c", [("a", "b=c")]),
        ("a='k=v'", [("a", "'k=v'")]),
        ("  a = 1 ,\n b\t=\t2\n", [("a", "1"), ("b", "2")]),
        ("a=1, a=2", [("a", "1"), ("a", "2")]),  # duplicates are caught later, by the parsers
        ("a=" + "[" * MAX_NESTING + "]" * MAX_NESTING, [("a", "[" * MAX_NESTING + "]" * MAX_NESTING)]),
    ])
    def test_split(self, text, expected):
        assert split_params(text, "arg") == expected

    def test_quoted_comma_metric_is_one_unknown_metric(self):
        # 'a,b' stays one item, so the error names the whole string rather than 'a' or 'b'.
        with pytest.raises(InvalidArgument, match=r"unknown metric 'a,b'"):
            parse_compile_params(compile_with(metrics="['a,b']"))

    def test_escaped_quote_in_metric_stays_one_item(self):
        with pytest.raises(InvalidArgument, match=r"unknown metric \"acc',\""):
            parse_compile_params(compile_with(metrics="['acc\\',']"))

    @pytest.mark.parametrize("text, pattern", [
        ("a=)", r"^arg: unbalanced '\)' at position 3 in 'a=\)'$"),
        ("a=(]", r"^arg: unbalanced '\]' at position 4 in "),
        ("a=([)]", r"^arg: unbalanced '\)' at position 5 in "),
        ("a={", r"^arg: missing '\}' in 'a=\{'$"),
        ("a=[(", r"^arg: missing '\)' in "),
        ("a='x", r"^arg: unterminated string starting with ' in "),
        ('a="x\\"', r"^arg: unterminated string starting with \" in "),
        ("a=" + "(" * (MAX_NESTING + 1), rf"^arg: brackets nested deeper than {MAX_NESTING} levels$"),
        ("a=1,,b=2", r"^arg: empty parameter"),
        ("a=1, ", r"^arg: empty parameter"),
        ("", r"^arg: empty parameter"),
        ("a", r"^arg: expected name=value, got 'a'$"),
        ("a=", r"^arg: a has no value$"),
        ("a=  ", r"^arg: a has no value$"),
        ("=1", r"^arg: '' is not a parameter name$"),
        ("a b=1", r"^arg: 'a b' is not a parameter name$"),
        ("1a=1", r"^arg: '1a' is not a parameter name$"),
        ("a.b=1", r"^arg: 'a.b' is not a parameter name$"),
        ("x" * (MAX_PARAM_LENGTH + 1), rf"^arg: longer than {MAX_PARAM_LENGTH} characters$"),
    ])
    def test_split_errors(self, text, pattern):
        with pytest.raises(InvalidArgument, match=pattern):
            split_params(text, "arg")


class TestLiteral:
    @pytest.mark.parametrize("text, expected", [
        ("1", 1), ("-1", -1), ("+1.5", 1.5), ("1e3", 1000.0), ("'s'", "s"), ('"s"', "s"), ("True", True),
        ("False", False), ("None", None), ("[1, 'a']", [1, "a"]), ("(1, 2)", [1, 2]), ("{'a': [1]}", {"a": [1]}),
        ("word", "word"), ("[word]", ["word"]), (" 1 ", 1),
    ])
    def test_values(self, text, expected):
        value = literal(text, "what")
        assert value == expected
        assert type(value) is type(expected)

    @pytest.mark.parametrize("text", ["word", "[word]", "{'a': word}"])
    def test_bare_words_can_be_refused(self, text):
        with pytest.raises(InvalidArgument, match=r"^what: only literal values are accepted"):
            literal(text, "what", bare_words=False)

    def test_dict_keys_are_never_bare_words(self):
        with pytest.raises(InvalidArgument, match=r"only literal values are accepted"):
            literal("{a: 1}", "what")

    @pytest.mark.parametrize("text", ["{1, 2}", "1 + 1", "x.y", "x()", "x[0]", "-x", "not 1", "~1", "1 if 1 else 2",
                                      "[*x]", "{**x}", "b''", "1j", "..."])
    def test_non_literals(self, text):
        with pytest.raises(InvalidArgument, match=r"^what: only literal values are accepted"):
            literal(text, "what")

    @pytest.mark.parametrize("text", ["a b", "1 2", "", "a=1"])
    def test_syntax_errors(self, text):
        with pytest.raises(InvalidArgument, match=r"^what: .* is not a valid value$"):
            literal(text, "what")

    @pytest.mark.parametrize("text, message", [("(", r"^what: missing '\)' in '\('$"),
                                               ("'x", r"^what: unterminated string starting with '")])
    def test_unbalanced_values(self, text, message):
        with pytest.raises(InvalidArgument, match=message):
            literal(text, "what")


# ===================================================================================================
# Regressions: inputs that once escaped as Python errors or were silently accepted
# ===================================================================================================

class TestRegressions:
    # Deeply right-nested expressions are not brackets, so MAX_NESTING does not stop them, and
    # ast.parse raises RecursionError (about 3000 levels) or MemoryError (parser stack, about 6000
    # levels) on Python 3.11; they must come out as InvalidArgument.
    @pytest.mark.parametrize("text", [
        compile_with(loss="-" * 4000 + "1"),
        compile_with(loss="-" * 9000 + "1"),
        compile_with(loss="~" * 9000 + "1"),
        compile_with(loss="a." * 4800 + "b"),
        compile_with(loss="1" + "**1" * 3000),
        compile_with(optimizer="'Adam(lr=" + "-" * 9000 + "1)'"),
    ], ids=["unary-minus-4000", "unary-minus-9000", "invert", "attribute-chain", "power-chain", "optimizer-kwarg"])
    def test_deep_expressions_raise_invalid_argument(self, text):
        with pytest.raises(InvalidArgument):
            parse_compile_params(text)

    def test_deep_expression_in_fit_params(self):
        with pytest.raises(InvalidArgument):
            parse_fit_params("epochs=" + "-" * 9000 + "1")

    # A list or tuple used as a dict key becomes a Python list, which is unhashable.
    @pytest.mark.parametrize("kind, text", [
        ("fit", "class_weight={[0]: 1}"),
        ("fit", "class_weight={(0, 1): 1}"),
        ("compile", compile_with(loss_weights="{(0, 1): 1}")),
        ("compile", compile_with(metrics="[{[1]: 2}]")),
    ], ids=["class-weight-list-key", "class-weight-tuple-key", "loss-weights-tuple-key", "metric-dict-list-key"])
    def test_unhashable_dict_keys_raise_invalid_argument(self, kind, text):
        parse = parse_fit_params if kind == "fit" else parse_compile_params
        with pytest.raises(InvalidArgument):
            parse(text)

    # ast.parse refuses NUL bytes with ValueError on Python < 3.12 (SyntaxError from 3.12 on).
    # PostgreSQL text cannot hold NUL, so this only matters for other callers.
    @pytest.mark.parametrize("text", [
        compile_with(loss="mse\x00"),
        compile_with(loss="'mse\x00'"),
        compile_with(optimizer="'adam\x00'"),
    ], ids=["bare", "quoted-loss", "quoted-optimizer"])
    def test_nul_byte_raises_invalid_argument(self, text):
        with pytest.raises(InvalidArgument):
            parse_compile_params(text)

    # '#' outside quotes starts a Python comment: ast ignores the rest of the value, while the
    # splitter still treats a quote after '#' as opening a string. Text after '#' is silently
    # dropped, which also hides duplicate and rejected keys from the checks.
    @pytest.mark.parametrize("text", [
        "optimizer=adam, loss=mse # categorical_crossentropy",
        "optimizer=adam, loss=mse #', loss=hinge, sample_weight_mode='",
        "optimizer=adam, loss=mse #', metrics=['acc', 'mse'], x='",
    ], ids=["comment", "hides-duplicate-and-rejected-key", "hides-two-metrics"])
    def test_comments_are_rejected(self, text):
        with pytest.raises(MadlibDLError):
            parse_compile_params(text)

    @pytest.mark.parametrize("text", ["verbose=1.0", "verbose=2.0", "verbose=-0.0"])
    def test_float_verbose_is_rejected(self, text):
        with pytest.raises(InvalidArgument, match=r"verbose must be 0, 1 or 2"):
            parse_fit_params(text)

    @pytest.mark.parametrize("kind, text", [
        ("fit", "class_weight={0: 1, 0: 2}"),
        ("compile", compile_with(loss_weights="{'a': 1, 'a': 2}")),
    ], ids=["class-weight", "loss-weights"])
    def test_repeated_dict_key_is_rejected(self, kind, text):
        parse = parse_fit_params if kind == "fit" else parse_compile_params
        with pytest.raises(InvalidArgument, match=r"more than once"):
            parse(text)

    @pytest.mark.parametrize("text, message", [
        (compile_with(optimizer="'Adam(__class__=1)'"), r"optimizer: only name=value arguments are accepted"),
        (compile_with(optimizer="'Adam(lr=1e999)'"), r"numbers must be finite, got inf"),
        (compile_with(loss_weights="[1e999]"), r"numbers must be finite"),
    ], ids=["private-optimizer-argument", "infinite-learning-rate", "infinite-loss-weight"])
    def test_private_names_and_non_finite_numbers_are_rejected(self, text, message):
        with pytest.raises(InvalidArgument, match=message):
            parse_compile_params(text)

    def test_non_text_input_is_rejected(self):
        with pytest.raises(InvalidArgument, match=r"^compile_params: expected text, got int$"):
            parse_compile_params(123)
        with pytest.raises(InvalidArgument, match=r"^fit_params: expected text, got bytes$"):
            parse_fit_params(b"epochs=1")
        with pytest.raises(InvalidArgument, match=r"fit_params: class_weight: numbers must be finite"):
            parse_fit_params("class_weight={0: 1e999}")


@pytest.mark.parametrize("text, name", [
    ("loss='categorical_crossentropy' optimizer='Adam(lr=0.01)', metrics=['accuracy']", "optimizer"),
    ("loss='mse', optimizer='SGD' metrics=['mae']", "metrics"),
    ("optimizer='Adam(lr=0.01)'\tloss='mse'", "loss"),
])
def test_a_missing_comma_is_named_not_taken_for_a_missing_parameter(text, name):
    with pytest.raises(InvalidArgument, match=f"compile_params: a comma is missing before {name}= "):
        params.parse_compile_params(text)


def test_equals_signs_inside_brackets_quotes_and_comparisons_are_not_parameters():
    parsed = params.parse_compile_params("loss='mse', optimizer='Adam(lr=0.01, beta_1=0.9)', metrics=['mae']")
    assert parsed.optimizer.kwargs == {"learning_rate": 0.01, "beta_1": 0.9}
    with pytest.raises(InvalidArgument, match="fit_params: a comma is missing before epochs= "):
        params.parse_fit_params("batch_size=8 epochs=2")
    assert params._next_assignment("'a b=1'", "x") is None and params._next_assignment("x == 1", "x") is None


@pytest.mark.parametrize("text, expected, hint", [
    ("loss: 'mse', optimizer: 'adam'", r"expected name=value, got \"loss: 'mse'\"$",
     "Write name=value, with '=' rather than ':'."),
    ("{'loss': 'mse', 'optimizer': 'adam'}", r"expected name=value, got \"{'loss'",
     "compile_params and fit_params are strings of name=value pairs, such as \"loss='mse', optimizer='Adam'\" "
     "(dictionaries of lists are generate_model_configs' grids)."),
    ("loss='mse', optimizer='adam', loss_weights", r"expected name=value, got 'loss_weights'$", None),
])
def test_other_notations_get_a_hint_saying_what_to_write(text, expected, hint):
    with pytest.raises(InvalidArgument, match=expected) as raised:
        params.parse_compile_params(text)
    assert raised.value.hint == hint


@pytest.mark.parametrize("text, expected", [
    ("loss='categorical_crossentropy'; optimizer='adam'", r"a comma is missing before optimizer= .*not a ';'$"),
    ("loss='mse', optimizer='Adamm'", r"unknown optimizer 'Adamm' \(did you mean 'Adam'\?\); expected one of SGD"),
    ("loss='mse', optimizer='adam', metrics=['acuracy']", r"unknown metric 'acuracy' \(did you mean 'accuracy'\?\)"),
    ("loss='mse', optimizer='adam', metric=['mae']", r"unknown parameter 'metric' \(did you mean 'metrics'\?\)"),
])
def test_near_misses_say_what_was_meant(text, expected):
    with pytest.raises(InvalidArgument, match=expected):
        params.parse_compile_params(text)


def test_a_sparse_loss_or_metric_is_told_to_use_the_categorical_variant():
    for text in (compile_with(loss="'sparse_categorical_crossentropy'"),
                 compile_with(metrics="['sparse_categorical_accuracy']")):
        with pytest.raises(NotSupported) as raised:
            params.parse_compile_params(text)
        assert raised.value.hint == ("Labels are one-hot encoded by the preprocessor: use the categorical_* "
                                     "variant.")


def test_no_suggestion_for_a_word_nothing_resembles():
    assert params.did_you_mean("zzz", ["Adam", "SGD"]) == ""
    assert params.did_you_mean("batchsize", params.FIT_KEYS) == " (did you mean 'batch_size'?)"
