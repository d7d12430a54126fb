"""Keras models from their JSON architecture and parsed compile parameters."""

from __future__ import annotations

import inspect

from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import tf_setup
from madlib_dl.keras_runtime.params import CompileParams, OptimizerSpec


def model_from_json(model_json: str, argument: str = "model_arch"):
    """Build (uncompiled) a model from ``model.to_json()`` text. Keras' safe mode stays on, so a JSON
    that smuggles Python code (a serialized lambda) is refused rather than run."""
    keras = tf_setup.keras()
    if not isinstance(model_json, str) or not model_json.strip():
        raise InvalidArgument(f"{argument}: expected the JSON of a Keras model (model.to_json())")
    try:
        model = keras.models.model_from_json(model_json)
    except Exception as error:  # Keras raises many types for bad configs; all mean the same to the user
        raise InvalidArgument(f"{argument}: not a loadable Keras model JSON: {type(error).__name__}: {error}") from None
    if not isinstance(model, keras.Model):
        raise InvalidArgument(f"{argument}: the JSON describes a {type(model).__name__}, not a Keras model")
    return model


def check_optimizer_arguments(name: str, arguments, argument: str) -> None:
    """Argument names against the Keras optimizer's constructor. Only imports Keras: building an
    optimizer would start TensorFlow's runtime and fix its thread pools for this backend."""
    cls = getattr(tf_setup.keras().optimizers, name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters
                if p not in ("self", "kwargs", "name")]
    unknown = [a for a in arguments if a not in accepted]
    if unknown:
        raise InvalidArgument(f"{argument}: {name} has no argument {', '.join(sorted(unknown))}; "
                              f"expected some of {', '.join(accepted)} (lr is accepted for learning_rate)")


def make_optimizer(spec: OptimizerSpec, argument: str = "compile_params: optimizer"):
    check_optimizer_arguments(spec.name, spec.kwargs, argument)
    cls = getattr(tf_setup.keras().optimizers, spec.name)
    try:
        return cls(**spec.kwargs)
    except (TypeError, ValueError) as error:
        raise InvalidArgument(f"{argument}: {spec.name}({_format_kwargs(spec.kwargs)}): {error}") from None


def _format_kwargs(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def compile_model(model, params: CompileParams):
    """Compile ``model`` in place with a fresh optimizer and build the optimizer's state variables, so
    that state can be loaded into it before the first training step."""
    model.compile(optimizer=make_optimizer(params.optimizer), **params.keras_kwargs())
    model.optimizer.build(model.trainable_variables)
    return model
