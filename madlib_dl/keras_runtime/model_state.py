"""Everything a model needs to continue training elsewhere: weights and optimizer state.

Moving the optimizer state with the weights (Adam's step counter and moments) is what makes training
that hops between backends equal to training in one place; MADlib moves the weights only.
"""

from __future__ import annotations

from dataclasses import dataclass

from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import serialization


@dataclass(frozen=True)
class ModelState:
    weights: bytes  # MADlib's format: flat little-endian float32 of get_weights()
    optimizer_state: bytes | None = None  # serialization.serialize_arrays of optimizer.variables


def get_state(model) -> ModelState:
    optimizer = getattr(model, "optimizer", None)
    optimizer_state = None
    if optimizer is not None and optimizer.built:
        optimizer_state = serialization.serialize_arrays([v.numpy() for v in optimizer.variables])
    return ModelState(serialization.serialize_weights(model.get_weights()), optimizer_state)


def set_weights(model, weights: bytes) -> None:
    model.set_weights(serialization.deserialize_weights(weights, [w.shape for w in model.get_weights()]))


def set_state(model, state: ModelState) -> None:
    """Load weights, and the optimizer state when there is one, into a compiled ``model``."""
    set_weights(model, state.weights)
    if state.optimizer_state is None:
        return
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    arrays = serialization.deserialize_arrays(state.optimizer_state)
    variables = optimizer.variables
    if len(arrays) != len(variables) or any(tuple(a.shape) != tuple(v.shape) for a, v in zip(arrays, variables)):
        raise InvalidArgument(
            f"optimizer state: holds {len(arrays)} arrays that do not fit the {len(variables)} variables of "
            f"{type(optimizer).__name__} for this model (was it saved from another optimizer or architecture?)")
    for variable, array in zip(variables, arrays):
        variable.assign(array)
