"""Byte formats for model state. Pure numpy, no Keras.

* Weights use MADlib's format so tables interoperate with MADlib (warm start, transfer learning):
  the arrays of ``model.get_weights()``, each flattened, concatenated, as little-endian float32, with no
  header; the shapes come from the model they are loaded into.
* Optimizer state (step counter, moments...) is a list of arrays of mixed dtypes and shapes; it is stored
  as an ``.npz`` archive (numpy's own format, read back with ``allow_pickle=False``, so loading it never
  runs code).
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from madlib_dl.errors import InvalidArgument

_F32_LE = np.dtype("<f4")


def serialize_weights(arrays: Sequence[np.ndarray]) -> bytes:
    if not arrays:
        return b""
    return np.concatenate([np.asarray(a, dtype=_F32_LE).ravel() for a in arrays]).tobytes()


def deserialize_weights(blob: bytes, shapes: Sequence[tuple]) -> list[np.ndarray]:
    """Split a flat float32 buffer into arrays of ``shapes``; sizes must match exactly."""
    if len(blob) % 4:
        raise InvalidArgument(f"model_weights: {len(blob)} bytes is not a whole number of float32 values")
    flat = np.frombuffer(blob, dtype=_F32_LE)
    expected = sum(int(np.prod(s)) for s in shapes)
    if flat.size != expected:
        raise InvalidArgument(
            f"model_weights: holds {flat.size} values but the model architecture has {expected} weights")
    out, offset = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(flat[offset:offset + n].reshape(shape).astype(np.float32))  # a writable copy
        offset += n
    return out


def serialize_arrays(arrays: Sequence[np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(a) for a in arrays])
    return buffer.getvalue()


def deserialize_arrays(blob: bytes) -> list[np.ndarray]:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
            return [archive[f"arr_{i}"] for i in range(len(archive.files))]
    except (ValueError, OSError, KeyError) as error:
        raise InvalidArgument(f"optimizer state: not a madlib_dl optimizer state ({error})") from None
