"""Everything a model needs to continue training elsewhere: weights and optimizer state.

Moving the optimizer state with the weights (Adam's step counter and moments) is what makes training
that hops between backends equal to training in one place; MADlib moves the weights only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import serialization


@dataclass(frozen=True)
class ModelState:
    weights: bytes  # MADlib's format: flat little-endian float32 of get_weights()
    optimizer_state: bytes | None = None  # serialization.serialize_arrays of optimizer.variables


def get_state(model, allocate=bytearray, reuse: ModelState | None = None) -> ModelState:
    """The model's state written into buffers: ``reuse``'s when they are writable and of the right sizes
    (a hop writes its result over the state it was sent, which it no longer needs), else new ones from
    ``allocate(size)``."""
    optimizer = getattr(model, "optimizer", None)
    out_weights = _buffer(serialization.weights_size([tuple(v.shape) for v in model.weights]),
                          reuse and reuse.weights, allocate)
    serialization.write_weights((_read(v) for v in model.weights), out_weights)
    out_optimizer = None
    if optimizer is not None and optimizer.built:
        variables = list(optimizer.variables)
        specs = [(_numpy_dtype(v), tuple(v.shape)) for v in variables]
        out_optimizer = _buffer(serialization.arrays_size(specs), reuse and reuse.optimizer_state, allocate)
        serialization.write_arrays(specs, (_read(v) for v in variables), out_optimizer)
    return ModelState(out_weights, out_optimizer)


def _numpy_dtype(variable):
    return np.dtype(getattr(variable.dtype, "name", None) or str(variable.dtype))


def _buffer(size: int, candidate, allocate):
    if candidate is not None and len(candidate) == size and not memoryview(candidate).readonly:
        return candidate
    return allocate(size)


def set_weights(model, weights: bytes) -> None:
    model.set_weights(serialization.deserialize_weights(weights, [tuple(v.shape) for v in model.weights]))


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
        variable.assign(array)  # copied: TensorFlow adopts the buffers it can, so it is never handed a view


def _read(variable):
    """The variable's value as a read-only array over TensorFlow's own buffer, without the copy
    ``variable.numpy()`` makes (memoryview is TensorFlow's documented copy-free read): the state's
    buffer is filled with one copy, and no fresh memory is touched (page faults cost more than copying;
    bench/FINDINGS.md)."""
    import tensorflow as tf  # Keras runs on TensorFlow here (tf_setup)

    tensor = tf.convert_to_tensor(getattr(variable, "value", variable))
    if "CPU" not in tensor.device.upper():  # a GPU tensor comes to host memory the usual way
        return tensor.numpy()
    return np.asarray(memoryview(tensor))
