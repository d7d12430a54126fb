"""Keras models from their JSON architecture and parsed compile parameters."""

from __future__ import annotations

import inspect
import math

from madlib_dl import settings
from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import arch_size, keras2, tf_setup
from madlib_dl.keras_runtime.params import KERAS2_OPTIMIZER_ARGUMENTS, CompileParams, InverseTimeDecay, OptimizerSpec


def model_from_json(model_json: str, argument: str = "model_arch"):
    """Build (uncompiled) a model from ``model.to_json()`` text. Keras' safe mode stays on, so a JSON
    that smuggles Python code (a serialized lambda) is refused rather than run. A Keras 2 JSON is
    translated first (keras2)."""
    keras = tf_setup.keras()
    if not isinstance(model_json, str) or not model_json.strip():
        raise InvalidArgument(f"{argument}: expected the JSON of a Keras model (model.to_json())")
    model_json = keras2.keras3_json(model_json, argument)
    try:
        model = keras.models.model_from_json(model_json)
    except Exception as error:  # Keras raises many types for bad configs; all mean the same to the user
        raise InvalidArgument(f"{argument}: not a loadable Keras model JSON: {type(error).__name__}: {error}") from None
    if not isinstance(model, keras.Model):
        raise InvalidArgument(f"{argument}: the JSON describes a {type(model).__name__}, not a Keras model")
    return model


def check_size(db, model_json: str, argument: str = "model_arch", budget: bool = True) -> arch_size.ArchSize:
    """Refuse, before Keras allocates anything, a model whose building would take more memory than
    the DBA's cap madlib_dl.max_model_memory_mb allows one model (or, with ``budget``, than the caller's
    madlib_dl.memory_budget_mb). Errors start with ``argument``."""
    measured = size(model_json, argument)
    cap = settings.read(db, settings.MAX_MODEL_MEMORY_MB)
    arch_size.check(measured, argument, cap)
    if budget:
        with settings.naming_the_cap(db, settings.MEMORY_BUDGET_MB):  # the budget may be the DBA's cap's
            arch_size.check(measured, argument, cap, settings.read(db, settings.MEMORY_BUDGET_MB))
    return measured


def size(model_json: str, argument: str = "model_arch") -> arch_size.ArchSize:
    """The memory building this model takes, before anything is built: the closed forms of
    :mod:`arch_size` (no TensorFlow), else Keras' own count without allocation (:func:`symbolic_size`)."""
    if isinstance(model_json, str):
        model_json = keras2.keras3_json(model_json, argument)  # refuses, naming it, a layer it cannot translate
    try:
        return arch_size.closed_form(model_json)
    except arch_size.NotClosedForm:
        return symbolic_size(model_json, argument)


def symbolic_size(model_json: str, argument: str = "model_arch") -> arch_size.ArchSize:
    """Every variable Keras creates for this model (its layers', and an optimizer's if the JSON compiles
    it), counted without allocating one: the model is deserialized (safe mode) inside a TensorFlow graph,
    where no operation runs and no tensor holds values, and inside a StatelessScope, where Keras creates
    a variable without its value (deferred: only its shape and dtype are kept, and it is never
    initialized here). So an unknown layer's size is known without building it for real."""
    keras = tf_setup.keras()
    tf = tf_setup.tensorflow()
    from keras.src.backend.common import global_state

    if not isinstance(model_json, str) or not model_json.strip():
        raise InvalidArgument(f"{argument}: expected the JSON of a Keras model (model.to_json())")
    model_json = keras2.keras3_json(model_json, argument)
    saved = list(global_state.get_global_attribute("uninitialized_variables") or [])
    global_state.set_global_attribute("uninitialized_variables", [])
    try:
        with tf.Graph().as_default(), keras.StatelessScope(initialize_variables=False):
            keras.models.model_from_json(model_json)
        created = list(global_state.get_global_attribute("uninitialized_variables") or [])
    except Exception as error:  # what building it for real would refuse too
        raise InvalidArgument(f"{argument}: not a loadable Keras model JSON: {type(error).__name__}: {error}") from None
    finally:  # the deferred variables are dropped, never initialized
        global_state.set_global_attribute("uninitialized_variables", saved)
    params = weight_bytes = 0
    for variable in created:
        count = math.prod(int(d) for d in variable.shape)
        params += count
        weight_bytes += count * _DTYPE_BYTES.get(str(variable.dtype), 8)
    return arch_size.ArchSize(params, weight_bytes)


_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1, "int16": 2,
                "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8, "bool": 1}


def check_optimizer_arguments(name: str, arguments, argument: str) -> None:
    """Argument names against the Keras optimizer's constructor. Only imports Keras: building an
    optimizer would start TensorFlow's runtime and fix its thread pools for this backend."""
    cls = getattr(tf_setup.keras().optimizers, name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters
                if p not in ("self", "kwargs", "name")]
    unknown = [a for a in arguments if a not in accepted and a not in KERAS2_OPTIMIZER_ARGUMENTS]
    if unknown:
        raise InvalidArgument(f"{argument}: {name} has no argument {', '.join(sorted(unknown))}; "
                              f"expected some of {', '.join(accepted)} (lr is accepted for learning_rate)")


def check_optimizers(optimizers) -> None:
    """What Keras' constructors refuse of each (spec, argument) of ``optimizers``: argument names, and
    the values Keras checks itself (clipnorm with clipvalue, say), found by building each optimizer in
    one TensorFlow graph: its variables are graph nodes, so no operation runs and TensorFlow's runtime
    (its thread pools, the GPUs' memory) does not start in this session. About 3 ms an optimizer
    (measured). params.parse_optimizer has checked each value on its own already."""
    with tf_setup.tensorflow().Graph().as_default():
        for spec, argument in optimizers:
            make_optimizer(spec, argument)


def make_optimizer(spec: OptimizerSpec, argument: str = "compile_params: optimizer"):
    check_optimizer_arguments(spec.name, spec.kwargs, argument)
    return _build_optimizer(spec, argument)


def _build_optimizer(spec: OptimizerSpec, argument: str):
    keras = tf_setup.keras()
    cls = getattr(keras.optimizers, spec.name)
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()}
    kwargs = {k: _as_default_type(v, defaults.get(k)) for k, v in spec.kwargs.items()}
    decay = kwargs.get("learning_rate")
    if isinstance(decay, InverseTimeDecay):  # Keras 2's decay (params._keras2_arguments)
        initial = decay.initial_learning_rate
        if initial is None:
            initial = defaults["learning_rate"]
        kwargs["learning_rate"] = keras.optimizers.schedules.InverseTimeDecay(
            float(initial), decay_steps=1, decay_rate=decay.decay_rate)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise InvalidArgument(f"{argument}: {spec.name}({_format_kwargs(spec.kwargs)}): {error}") from None


def _as_default_type(value, default):
    """An integer where Keras' default is a float (SGD(momentum=0), Adam(lr=1)) as that float: Keras 3
    refuses it where Keras 2 took any number."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _format_kwargs(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def compile_model(model, params: CompileParams, custom: dict | None = None):
    """Compile ``model`` in place with a fresh optimizer and build the optimizer's state variables, so
    that state can be loaded into it before the first training step. ``custom``: name -> function,
    the custom losses and metrics the parameters name."""
    kwargs = for_outputs(params.keras_kwargs(), len(model.outputs))
    model.compile(optimizer=make_optimizer(params.optimizer), **with_custom(kwargs, custom or {}))
    model.optimizer.build(model.trainable_variables)
    return model


def for_outputs(kwargs: dict, outputs: int) -> dict:
    """compile() arguments for a model with ``outputs`` outputs: as Keras 2 did, every metric applies to
    every output (Keras 3 wants a list per output); the loss applies to each output as given."""
    if outputs < 2:
        return kwargs
    out = dict(kwargs)
    for name in ("metrics", "weighted_metrics"):
        if out.get(name):
            out[name] = [list(out[name]) for _ in range(outputs)]
    return out


def with_custom(kwargs: dict, custom: dict) -> dict:
    """compile() arguments with custom functions in place of their names. A metric is wrapped so that
    Keras names it as the object table does (a function's own __name__ may differ)."""
    if not custom:
        return kwargs
    keras = tf_setup.keras()

    def metric(name):
        if name not in custom:
            return name
        return keras.metrics.MeanMetricWrapper(custom[name], name=name)

    def metrics(names):  # a list per output for several: each output gets metric objects of its own
        return [metrics(n) if isinstance(n, list) else metric(n) for n in names]

    out = dict(kwargs)
    out["loss"] = custom.get(kwargs["loss"], kwargs["loss"])
    out["metrics"] = metrics(kwargs["metrics"])
    if kwargs.get("weighted_metrics") is not None:
        out["weighted_metrics"] = metrics(kwargs["weighted_metrics"])
    return out
