"""MADlib-style compile and fit parameter strings, parsed without ever evaluating them.

``"loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']"`` becomes a
:class:`CompileParams`; ``"batch_size=32, epochs=1"`` becomes a :class:`FitParams`. The text is split at
top-level commas (quotes and brackets respected), each value is read with :mod:`ast` and converted by
a walker that accepts literals only, and every optimizer, loss and metric name must be on a whitelist.
MADlib's quirks kept for compatibility: values may be unquoted (``loss=mse``), ``lr`` means
``learning_rate``, names of optimizers are case-insensitive. MADlib's bugs are not kept: a repeated key
is an error (MADlib kept the last), ``False`` stays false, and an optimizer name is resolved to its
canonical Keras class whatever its case.

This module is pure Python (no Keras import) so it is cheap to call while validating arguments.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any

from madlib_dl.errors import InvalidArgument, MadlibDLError, NotSupported
from madlib_dl.keras_runtime import callbacks

MAX_PARAM_LENGTH = 10_000
MAX_NESTING = 16

# Keras 3 optimizer classes, keyed by lower-case name. LossScaleOptimizer wraps another optimizer
# and is not a choice on its own.
OPTIMIZERS = {name.lower(): name for name in (
    "SGD", "RMSprop", "Adam", "AdamW", "Adadelta", "Adagrad", "Adamax", "Adafactor", "Nadam", "Ftrl",
    "Lion", "Lamb",
)}

# Losses for one-hot (categorical) or real-valued targets. Labels are one-hot encoded by the
# preprocessor, so the sparse_* losses and metrics, which expect integer labels, cannot work.
LOSSES = frozenset((
    "categorical_crossentropy", "binary_crossentropy", "categorical_focal_crossentropy",
    "binary_focal_crossentropy", "categorical_hinge", "hinge", "squared_hinge", "kl_divergence",
    "poisson", "huber", "log_cosh", "mean_squared_error", "mean_absolute_error",
    "mean_absolute_percentage_error", "mean_squared_logarithmic_error", "mse", "mae", "mape", "msle",
))

METRICS = frozenset((
    "accuracy", "acc", "categorical_accuracy", "binary_accuracy", "top_k_categorical_accuracy",
    "categorical_crossentropy", "binary_crossentropy", "kl_divergence", "poisson",
    "mean_squared_error", "mean_absolute_error", "mean_absolute_percentage_error",
    "mean_squared_logarithmic_error", "mse", "mae", "mape", "msle",
))

OPTIMIZER_EXAMPLE = "an optimizer like 'Adam(lr=0.01)'"
CUSTOM_HINT = ("A custom loss or metric is a function loaded with load_custom_function(); name its table in "
               "the object_table argument.")
SPARSE_HINT = "Labels are one-hot encoded by the preprocessor: use the categorical_* variant."

COMPILE_KEYS = ("optimizer", "loss", "metrics", "loss_weights", "weighted_metrics")
FIT_KEYS = ("batch_size", "epochs", "verbose", "shuffle", "class_weight", "initial_epoch", "steps_per_epoch",
            "callbacks")
FIT_KEYS_REJECTED = {
    "validation_split": "validation data comes from the validation_table argument",
    "validation_data": "validation data comes from the validation_table argument",
    "validation_steps": "validation data comes from the validation_table argument",
    "validation_freq": "use the metrics_compute_frequency argument",
    "sample_weight": "per-example weights are not supported; use class_weight",
    "x": "the data comes from the source table",
    "y": "the data comes from the source table",
}
COMPILE_KEYS_REJECTED = {
    "sample_weight_mode": ("Keras 3 removed sample_weight_mode; leave it out (madlib_dl has no per-example "
                           "weights; class_weight in fit_params weighs classes)"),
    "run_eagerly": "madlib_dl decides how models run inside the server",
    "jit_compile": "madlib_dl decides how models run inside the server",
    "steps_per_execution": "madlib_dl decides how models run inside the server",
}


@dataclass(frozen=True)
class OptimizerSpec:
    name: str  # canonical Keras class name, e.g. "Adam"
    kwargs: dict = field(default_factory=dict)  # constructor arguments, ``lr`` already renamed


@dataclass(frozen=True)
class CompileParams:
    optimizer: OptimizerSpec
    loss: str
    metrics: tuple = ()
    loss_weights: Any = None
    weighted_metrics: tuple | None = None

    def keras_kwargs(self) -> dict:
        """compile() arguments other than the optimizer object."""
        kwargs = {"loss": self.loss, "metrics": list(self.metrics)}
        if self.loss_weights is not None:
            kwargs["loss_weights"] = self.loss_weights
        if self.weighted_metrics is not None:
            kwargs["weighted_metrics"] = list(self.weighted_metrics)
        return kwargs


DEFAULT_BATCH_SIZE = 32  # Keras fit's default


@dataclass(frozen=True)
class FitParams:
    batch_size: int | None = None
    epochs: int = 1
    verbose: int = 0  # Keras' default progress bar would go to the server log
    shuffle: bool = True
    class_weight: dict | None = None
    initial_epoch: int = 0
    steps_per_epoch: int | None = None
    callbacks: tuple = ()  # callbacks.TensorBoardSpec: written per hop by the runtime, not passed to Keras

    def keras_kwargs(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None and k != "callbacks"}


# ---------------------------------------------------------------------------------------------------
# Splitting "k1=v1, k2=[a, b]" into (key, value text) pairs

_CLOSE = {"(": ")", "[": "]", "{": "}"}


def _show(text: str, limit: int = 80) -> str:
    """The user's text for an error message, cut short when long."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


_ASSIGNMENT = re.compile(r"\s+([A-Za-z_]\w*)\s*=(?!=)")


def _top_level(text: str, argument: str) -> list[int]:
    """Positions of the characters outside quotes and brackets. Refuses unbalanced brackets,
    unterminated strings, deep nesting and comments (Python's '#' would silently drop the rest of a
    value)."""
    if len(text) > MAX_PARAM_LENGTH:
        raise InvalidArgument(f"{argument}: longer than {MAX_PARAM_LENGTH} characters")
    positions, stack, quote, i = [], [], None, 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#":
            raise InvalidArgument(f"{argument}: comments (#) are not accepted, found at position {i + 1}")
        elif c in _CLOSE:
            stack.append(_CLOSE[c])
            if len(stack) > MAX_NESTING:
                raise InvalidArgument(f"{argument}: brackets nested deeper than {MAX_NESTING} levels")
        elif c in ")]}":
            if not stack or stack.pop() != c:
                raise InvalidArgument(f"{argument}: unbalanced {c!r} at position {i + 1} in {_show(text)}")
        elif not stack:
            positions.append(i)
        i += 1
    if quote:
        raise InvalidArgument(f"{argument}: unterminated string starting with {quote} in {_show(text)}")
    if stack:
        raise InvalidArgument(f"{argument}: missing {stack[-1]!r} in {_show(text)}")
    return positions


def split_params(text: str, argument: str) -> list[tuple[str, str]]:
    """Split at top-level commas, then each item at its first '='."""
    bounds = [-1, *(i for i in _top_level(text, argument) if text[i] == ","), len(text)]
    return [_split_item(text[a + 1:b], argument) for a, b in zip(bounds, bounds[1:])]


def _split_item(item: str, argument: str) -> tuple[str, str]:
    if not item.strip():
        raise InvalidArgument(f"{argument}: empty parameter (two commas in a row or a trailing comma)")
    key, eq, value = item.partition("=")
    key, value = key.strip(), value.strip()
    if not eq:
        raise InvalidArgument(f"{argument}: expected name=value, got {item.strip()!r}", hint=_form_hint(item))
    if not key.isidentifier():
        raise InvalidArgument(f"{argument}: {key!r} is not a parameter name")
    if not value:
        raise InvalidArgument(f"{argument}: {key} has no value")
    missing_comma = _next_assignment(value, argument)
    if missing_comma is not None:
        separator = "a ';'" if re.search(r";\s*" + missing_comma + r"\s*=", value) else "a space"
        raise InvalidArgument(f"{argument}: a comma is missing before {missing_comma}= (in "
                              f"{_show(item.strip())}); separate parameters with commas, not {separator}")
    return key, value


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest of ``choices`` to a misspelt ``word``, else ''."""
    spelt = {str(c).lower(): c for c in choices}
    close = difflib.get_close_matches(str(word).lower(), spelt, n=1, cutoff=0.75)
    return f" (did you mean {spelt[close[0]]!r}?)" if close else ""


def _form_hint(item: str) -> str | None:
    """What to write instead of an item with no '=', for the other notations people write out of habit."""
    text = item.strip()
    if text.startswith("{"):
        return ("compile_params and fit_params are strings of name=value pairs, such as \"loss='mse', "
                "optimizer='Adam'\" (dictionaries of lists are generate_model_configs' grids).")
    if re.match(r"['\"]?[A-Za-z_]\w*['\"]?\s*:", text):
        return "Write name=value, with '=' rather than ':'."
    return None


def _next_assignment(value: str, argument: str) -> str | None:
    """The name of a ``name=`` that follows a space outside quotes and brackets in ``value`` (the
    next parameter, when the comma before it was left out), else None."""
    for i in _top_level(value, argument):
        found = _ASSIGNMENT.match(value, i) if value[i].isspace() else None
        if found:
            return found.group(1)
    return None


def _unique(pairs: list[tuple[str, str]], argument: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in pairs:
        if key in found:
            raise InvalidArgument(f"{argument}: {key} is given more than once")
        found[key] = value
    return found


# ---------------------------------------------------------------------------------------------------
# Reading one value: literals only, bare words read as strings (MADlib strips quotes)

def _expression(text: str, what: str, expected: str | None = None):
    """The syntax tree of one value. Whatever Python's parser cannot take (syntax, NUL bytes, nesting
    too deep for its stack) is the user's error, reported as such."""
    _top_level(text, what)  # its checks: length, brackets, strings, comments
    try:
        return ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        problem = f"expected {expected}, got {_show(text)}" if expected else f"{_show(text)} is not a valid value"
        raise InvalidArgument(f"{what}: {problem}") from None


def literal(text: str, what: str, bare_words: bool = True) -> Any:
    return _convert(_expression(text, what), what, text, bare_words)


_SCALARS = (str, int, float, bool, type(None))


def _convert(node, what, text, bare_words):
    if isinstance(node, ast.Constant) and isinstance(node.value, _SCALARS):
        return _finite(node.value, what)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float):
        return _finite(-node.operand.value if isinstance(node.op, ast.USub) else node.operand.value, what)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_convert(e, what, text, bare_words) for e in node.elts]
    if isinstance(node, ast.Dict) and None not in node.keys:
        return _dict(node, what, text, bare_words)
    if bare_words and isinstance(node, ast.Name):
        return node.id
    raise InvalidArgument(f"{what}: only literal values are accepted, got {_show(text.strip())}")


def _finite(value, what):
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument(f"{what}: numbers must be finite, got {value}")
    return value


def _dict(node, what, text, bare_words):
    out = {}
    for key_node, value_node in zip(node.keys, node.values):
        key = _convert(key_node, what, text, False)
        if not isinstance(key, _SCALARS):
            raise InvalidArgument(f"{what}: dictionary keys must be names or numbers, got {_show(text.strip())}")
        if key in out:
            raise InvalidArgument(f"{what}: dictionary key {key!r} is given more than once")
        out[key] = _convert(value_node, what, text, bare_words)
    return out


# ---------------------------------------------------------------------------------------------------
# compile_params

_CUSTOM: contextvars.ContextVar[frozenset] = contextvars.ContextVar("madlib_dl_custom_functions", default=frozenset())


@contextlib.contextmanager
def custom_functions(names):
    """While in this block, parse_compile_params also accepts ``names`` (the functions of the call's
    object table) as losses and metrics: an SQL function's whole call, its model selection and output
    writing included, sees the one object table its caller named."""
    token = _CUSTOM.set(frozenset(names))
    try:
        yield
    finally:
        _CUSTOM.reset(token)


def custom_in_scope() -> frozenset:
    return _CUSTOM.get()


def parse_compile_params(text: str | None, argument: str = "compile_params",
                         custom: frozenset | None = None) -> CompileParams:
    """``custom``: the names of the object table's functions, accepted as losses and metrics (None: those
    of the enclosing :func:`custom_functions` block)."""
    custom = _CUSTOM.get() if custom is None else custom
    _require_text(text, argument)
    if text is None or not text.strip():
        raise InvalidArgument(f"{argument}: expected a string like "
                              "\"loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']\", "
                              f"got {'NULL' if text is None else 'an empty string'}")
    raw = _unique(split_params(text, argument), argument)
    for key in raw:
        if key == "sample_weight_mode":  # Keras 2's; MADlib scripts pass None
            _sample_weight_mode(raw[key], argument)
            continue
        if key in COMPILE_KEYS_REJECTED:
            raise NotSupported(f"{argument}: {key} is not accepted: {COMPILE_KEYS_REJECTED[key]}")
        if key not in COMPILE_KEYS:
            raise InvalidArgument(f"{argument}: unknown parameter {key!r}{did_you_mean(key, COMPILE_KEYS)}; expected one "
                                  f"of {', '.join(COMPILE_KEYS)}")
    for required in ("optimizer", "loss"):
        if required not in raw:
            raise InvalidArgument(f"{argument}: {required} is required")
    return CompileParams(
        optimizer=parse_optimizer(raw["optimizer"], f"{argument}: optimizer"),
        loss=_keras_name(literal(raw["loss"], f"{argument}: loss"), argument, "loss", "loss", LOSSES, custom),
        metrics=_metrics(raw.get("metrics"), argument, custom),
        loss_weights=_loss_weights(raw.get("loss_weights"), argument),
        weighted_metrics=_weighted_metrics(raw.get("weighted_metrics"), argument, custom),
    )


def _require_text(text, argument):
    if text is not None and not isinstance(text, str):
        raise InvalidArgument(f"{argument}: expected text, got {type(text).__name__}")


def parse_optimizer(text: str, what: str = "optimizer") -> OptimizerSpec:
    """``'Adam(lr=0.01)'``, ``Adam(learning_rate=0.01)``, ``'sgd'`` -> OptimizerSpec."""
    value = text.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = literal(value, what)
        if not isinstance(value, str):
            raise InvalidArgument(f"{what}: expected {OPTIMIZER_EXAMPLE}, got {_show(text)}")
    node = _expression(value, what, expected=OPTIMIZER_EXAMPLE)
    if isinstance(node, ast.Name):
        return OptimizerSpec(_optimizer_name(node.id, what), {})
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise InvalidArgument(f"{what}: expected {OPTIMIZER_EXAMPLE}, got {_show(text)}")
    name = _optimizer_name(node.func.id, what)
    if node.args:
        raise InvalidArgument(f"{what}: arguments of {name} must be given as name=value, e.g. {name}(learning_rate=0.01)")
    kwargs: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None or kw.arg.startswith("_"):
            raise InvalidArgument(f"{what}: only name=value arguments are accepted, got {_show(text)}")
        key = "learning_rate" if kw.arg == "lr" else kw.arg
        if key in kwargs:
            raise InvalidArgument(f"{what}: {kw.arg} is given more than once"
                                  + (" (lr is learning_rate)" if key == "learning_rate" else ""))
        kwargs[key] = _convert(kw.value, f"{what}: {kw.arg}", text, bare_words=False)
        if isinstance(kwargs[key], (list, dict)):
            raise InvalidArgument(f"{what}: {kw.arg} must be a number, boolean, string or None")
        _check_optimizer_value(name, kw.arg, key, kwargs[key], what)
    return OptimizerSpec(name, _keras2_arguments(name, kwargs, what))


# What the Keras 3 optimizers' arguments take. Keras' constructors check only a few values (SGD's
# momentum, Ftrl's, clipnorm with clipvalue); others they take as given and then fail at the first
# training step ('x' for beta_1) or train nonsense (a negative learning rate: gradient ascent; amsgrad='no',
# which is true).
# None, where Keras takes it, is judged by _keras2_arguments; an argument missing here is checked by
# name against Keras (builder.check_optimizer_arguments). tests/runtime/test_optimizer_values.py checks
# the table against Keras' constructors.


@dataclass(frozen=True)
class ValueRule:
    kind: str                  # "number", "integer", "boolean" or "text"
    low: float | None = None   # bounds for numbers and integers
    high: float | None = None
    low_open: bool = False     # the bound itself is excluded
    high_open: bool = False

    def holds(self, value) -> bool:
        if self.kind in ("boolean", "text"):
            return isinstance(value, bool if self.kind == "boolean" else str)
        if not _is_number(value) or (self.kind == "integer" and not isinstance(value, int)):
            return False
        above = self.low is None or value > self.low or (value == self.low and not self.low_open)
        below = self.high is None or value < self.high or (value == self.high and not self.high_open)
        return above and below

    def __str__(self) -> str:
        if self.kind == "boolean":
            return "True or False"
        if self.kind == "text":
            return "a string"
        what = "an integer" if self.kind == "integer" else "a number"
        if self.low is not None and self.high is not None:
            return f"{what} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{what} {'above' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{what} {'below' if self.high_open else '<='} {self.high:g}"
        return what


_POSITIVE = ValueRule("number", low=0, low_open=True)
_NOT_NEGATIVE = ValueRule("number", low=0)  # a learning rate of 0 trains nothing, as a test may want
_FRACTION = ValueRule("number", low=0, high=1)                  # Keras' own range for momentum
_DECAY_RATE = ValueRule("number", low=0, high=1, high_open=True)  # 1 never forgets: Adam divides by 1 - beta**t = 0
OPTIMIZER_VALUES = {
    "learning_rate": _NOT_NEGATIVE, "momentum": _FRACTION, "ema_momentum": _FRACTION,
    "beta_1": _DECAY_RATE, "beta_2": _DECAY_RATE, "rho": _DECAY_RATE,
    "epsilon": _NOT_NEGATIVE, "epsilon_1": _NOT_NEGATIVE, "epsilon_2": _NOT_NEGATIVE, "weight_decay": _NOT_NEGATIVE,
    "initial_accumulator_value": _NOT_NEGATIVE, "l1_regularization_strength": _NOT_NEGATIVE,
    "l2_regularization_strength": _NOT_NEGATIVE, "l2_shrinkage_regularization_strength": _NOT_NEGATIVE,
    "beta": _NOT_NEGATIVE, "learning_rate_power": ValueRule("number", high=0), "beta_2_decay": ValueRule("number"),
    "clipnorm": _POSITIVE, "clipvalue": _POSITIVE, "global_clipnorm": _POSITIVE, "clip_threshold": _POSITIVE,
    "loss_scale_factor": _POSITIVE, "gradient_accumulation_steps": ValueRule("integer", low=2),
    "ema_overwrite_frequency": ValueRule("integer", low=1),
    "nesterov": ValueRule("boolean"), "amsgrad": ValueRule("boolean"), "centered": ValueRule("boolean"),
    "use_ema": ValueRule("boolean"), "relative_step": ValueRule("boolean"), "name": ValueRule("text"),
}


def _check_optimizer_value(name: str, written: str, key: str, value, what: str) -> None:
    """``written``: the argument as the caller wrote it (lr), ``key`` its Keras name (learning_rate)."""
    rule = OPTIMIZER_VALUES.get(key)
    if rule is None or value is None or rule.holds(value):
        return
    raise InvalidArgument(f"{what}: {name}({written}={value!r}): {written} must be {rule}")


# Keras 2 optimizer arguments MADlib scripts carry, translated (each with a note for a NOTICE:
# :func:`compile_translations`).

# Keras 3 optimizer arguments whose default is None, so None may be given (weight_decay is Keras 3's
# decoupled weight decay, not Keras 2's decay). tests/runtime/test_keras2_optimizer.py checks it against Keras.
NONE_ACCEPTED = frozenset(("weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "ema_overwrite_frequency",
                           "loss_scale_factor", "gradient_accumulation_steps", "name"))
# Keras 3's default epsilon of the optimizers that have one: Keras 2's epsilon=None meant the backend's
# epsilon, 1e-7, which is Keras 3's default for each of them.
EPSILON_DEFAULTS = {name: 1e-7 for name in ("RMSprop", "Adam", "AdamW", "Adadelta", "Adagrad", "Adamax", "Nadam",
                                            "Lamb")}
# Keras 2 argument names the parser translates: not Keras 3 constructor arguments, still accepted.
KERAS2_OPTIMIZER_ARGUMENTS = frozenset(("decay",))


@dataclass(frozen=True)
class InverseTimeDecay:
    """Keras 2's ``decay``: each step's learning rate is ``lr / (1 + decay * iterations)``, iterations being
    the optimizer's step count before the step. Keras 3's ``InverseTimeDecay(lr, decay_steps=1,
    decay_rate=decay)`` computes exactly that from the optimizer's ``iterations`` variable, which travels
    with the optimizer state from hop to hop, so the decay continues across hops as in one Keras fit.
    The builder makes the Keras schedule (:func:`builder.make_optimizer`). Not a number, so a compiled model
    is not shared between configurations that differ in it (segment.runtime._without_learning_rate):
    the schedule is a constant of the traced training step, unlike a plain learning rate."""
    initial_learning_rate: float | None  # None: the optimizer's default learning rate
    decay_rate: float

    def __str__(self) -> str:
        initial = "the default learning rate" if self.initial_learning_rate is None else self.initial_learning_rate
        return (f"InverseTimeDecay(initial_learning_rate={initial}, decay_steps=1, decay_rate={self.decay_rate})")


_NOTES: contextvars.ContextVar[list | None] = contextvars.ContextVar("madlib_dl_keras2_notes", default=None)


def _note(text: str) -> None:
    notes = _NOTES.get()
    if notes is not None:
        notes.append(text)


def compile_translations(text: str | None, argument: str = "compile_params") -> list[str]:
    """What :func:`parse_compile_params` translates from Keras 2 in ``text`` (one line each), for the
    NOTICE the training functions raise. Of a string it refuses, the translations read before the refusal
    (the refusal itself is reported where the string is checked)."""
    notes: list[str] = []
    token = _NOTES.set(notes)
    try:
        parse_compile_params(text, argument)
    except MadlibDLError:
        pass
    finally:
        _NOTES.reset(token)
    return list(dict.fromkeys(notes))


def _keras2_arguments(name: str, kwargs: dict, what: str) -> dict:
    """decay becomes a learning rate schedule; epsilon=None Keras 3's default epsilon; any other None
    an error unless Keras 3 takes None for that argument."""
    if "decay" in kwargs:
        decay = kwargs.pop("decay")
        if not _is_number(decay) or decay < 0:
            raise InvalidArgument(f"{what}: decay (Keras 2's learning rate decay) must be a number >= 0, got "
                                  f"{decay!r}")
        if decay == 0:
            _note(f"{name}: decay=0 (Keras 2: no decay) was left out")
        else:  # a learning rate given is a number (_check_optimizer_value)
            kwargs["learning_rate"] = schedule = InverseTimeDecay(kwargs.get("learning_rate"), decay)
            _note(f"{name}: Keras 2's decay={decay} became learning_rate={schedule}, the same lr / (1 + decay * "
                  "iterations)")
    for key, value in list(kwargs.items()):
        if value is not None or key in NONE_ACCEPTED:
            continue
        if key == "epsilon" and name in EPSILON_DEFAULTS:
            del kwargs[key]
            _note(f"{name}: epsilon=None (Keras 2: the backend's epsilon) became Keras 3's default epsilon "
                  f"{EPSILON_DEFAULTS[name]:g}")
        else:
            raise InvalidArgument(f"{what}: {name}({key}=None): {key} cannot be None",
                                  hint=f"Give {key} a value, or leave it out for Keras' default.")
    return kwargs


def _sample_weight_mode(text: str, argument: str) -> None:
    """Keras 2's sample_weight_mode: None (no per-example weights) changes nothing; anything else is refused."""
    value = literal(text, f"{argument}: sample_weight_mode")
    if value is not None and not (isinstance(value, str) and value.lower() == "none"):
        reason = COMPILE_KEYS_REJECTED["sample_weight_mode"]
        raise NotSupported(f"{argument}: sample_weight_mode is not accepted: {reason} (got {value!r}; only None, "
                           "which changes nothing, is accepted)")
    _note("sample_weight_mode=None (Keras 2; Keras 3 removed it) was left out: it changes nothing")


def _optimizer_name(name: str, what: str) -> str:
    canonical = OPTIMIZERS.get(name.lower())
    if canonical is None:
        raise InvalidArgument(f"{what}: unknown optimizer {name!r}{did_you_mean(name, OPTIMIZERS.values())}; expected "
                              f"one of {', '.join(OPTIMIZERS.values())}")
    return canonical


def _keras_name(value, argument, key, kind, names, custom=frozenset()):
    """A loss or metric: a name on the whitelist or a custom function of the run's object table;
    sparse_* names get the reason they cannot work."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{argument}: {key} must hold {kind} names, got {value!r}")
    if value in custom:
        return value
    if value.startswith("sparse_"):
        raise NotSupported(f"{argument}: {kind} {value!r} is not supported", hint=SPARSE_HINT)
    if value not in names:
        choices = set(names) | set(custom)
        where = (f" or a function of the object table ({', '.join(sorted(custom))})" if custom else "")
        raise InvalidArgument(f"{argument}: unknown {kind} {value!r}{did_you_mean(value, choices)}; expected one of "
                              f"{', '.join(sorted(names))}{where}", hint=None if custom else CUSTOM_HINT)
    return value


def _metrics(text, argument, custom=frozenset()):
    if text is None:
        return ()
    value = literal(text, f"{argument}: metrics")
    if not isinstance(value, list):
        raise InvalidArgument(f"{argument}: metrics must be a list such as ['accuracy'], got {_show(text)}")
    if len(value) > 1:
        raise NotSupported(f"{argument}: metrics holds {len(value)} metrics; one metric per model is supported "
                           "(output tables keep one metric column)")
    return tuple(_keras_name(m, argument, "metrics", "metric", METRICS, custom) for m in value)


def _weighted_metrics(text, argument, custom=frozenset()):
    if text is None:
        return None
    value = literal(text, f"{argument}: weighted_metrics")
    if not isinstance(value, list):
        raise InvalidArgument(f"{argument}: weighted_metrics must be a list of metric names, got {_show(text)}")
    return tuple(_keras_name(m, argument, "weighted_metrics", "metric", METRICS, custom) for m in value)


def custom_names(parsed: CompileParams) -> frozenset:
    """The loss and metric names of ``parsed`` that are not Keras built-ins (custom functions)."""
    used = {parsed.loss, *parsed.metrics, *(parsed.weighted_metrics or ())}
    return frozenset(n for n in used if n not in LOSSES and n not in METRICS)


def _loss_weights(text, argument):
    if text is None:
        return None
    value = literal(text, f"{argument}: loss_weights", bare_words=False)
    numbers = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    if numbers is None or not all(_is_number(v) for v in numbers):
        raise InvalidArgument(f"{argument}: loss_weights must be a list or dict of numbers, got {_show(text)}")
    return value


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ---------------------------------------------------------------------------------------------------
# fit_params

def parse_fit_params(text: str | None, argument: str = "fit_params") -> FitParams:
    """An empty or NULL string means Keras' defaults (quiet: verbose=0)."""
    _require_text(text, argument)
    if text is None or not text.strip():
        return FitParams()
    raw = _unique(split_params(text, argument), argument)
    values = {}
    for key, value_text in raw.items():
        if key in FIT_KEYS_REJECTED:
            raise NotSupported(f"{argument}: {key} is not accepted: {FIT_KEYS_REJECTED[key]}")
        if key not in FIT_KEYS:
            raise InvalidArgument(f"{argument}: unknown parameter {key!r}{did_you_mean(key, FIT_KEYS)}; expected one of "
                                  f"{', '.join(FIT_KEYS)}")
        if key == "callbacks":  # calls, not literals: parsed by their own walker
            values[key] = callbacks.parse(value_text, f"{argument}: callbacks")
            continue
        values[key] = _fit_value(key, literal(value_text, f"{argument}: {key}", bare_words=False), argument)
    fit = FitParams(**values)
    if fit.initial_epoch >= fit.epochs:  # Keras trains epochs initial_epoch + 1 .. epochs: none
        raise InvalidArgument(f"{argument}: initial_epoch must be below epochs ({fit.epochs}), got "
                              f"{fit.initial_epoch}: the hop would train no epoch")
    return fit


def _fit_value(key, value, argument):
    def positive_int(minimum):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise InvalidArgument(f"{argument}: {key} must be an integer >= {minimum}, got {value!r}")
        return value

    if key in ("batch_size", "epochs", "steps_per_epoch"):
        return positive_int(1)
    if key == "initial_epoch":
        return positive_int(0)
    if key == "verbose":
        if type(value) is not int or value not in (0, 1, 2):
            raise InvalidArgument(f"{argument}: verbose must be 0, 1 or 2, got {value!r}")
        return value
    if key == "shuffle":
        if not isinstance(value, bool):
            raise InvalidArgument(f"{argument}: shuffle must be True or False, got {value!r}")
        return value
    # class_weight
    if not isinstance(value, dict) or not all(
            isinstance(k, int) and not isinstance(k, bool) and k >= 0 and _is_number(v) for k, v in value.items()):
        raise InvalidArgument(f"{argument}: class_weight must be a dict of class index to weight, "
                              f"such as {{0: 1.0, 1: 2.5}}, got {value!r}")
    return value
