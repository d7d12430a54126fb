"""Byte formats for model state. Pure numpy, no Keras.

* Weights use MADlib's format so tables interoperate with MADlib (warm start, transfer learning):
  the arrays of ``model.get_weights()``, each flattened, concatenated, as little-endian float32, with no
  header; the shapes come from the model they are loaded into.
* Optimizer state (step counter, moments...) is a list of arrays of mixed dtypes and shapes: ``ARRAYS_MAGIC``,
  the length of a JSON list of (dtype, shape), that list, then each array's bytes at an offset aligned to
  64 bytes. It is read with views into the buffer (no copy) and written straight into a buffer of the
  right size (:func:`write_arrays`), so a large state costs one copy each way. States stored by earlier
  versions as ``.npz`` archives (read with ``allow_pickle=False``: loading never runs code) still load.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Iterable, Sequence

import numpy as np

from madlib_dl.errors import InvalidArgument

_F32_LE = np.dtype("<f4")
ARRAYS_MAGIC = b"MDLA"
_ARRAYS_PREFIX = struct.Struct("<4sI")
ALIGN = 64
ALLOWED_DTYPES = ("<f4", "<f8", "<f2", "<i8", "<i4", "<i2", "|i1", "|u1", "<u8", "<u4", "<u2", "|b1")


def weights_size(shapes: Sequence[tuple]) -> int:
    return 4 * sum(int(np.prod(s)) for s in shapes)


def write_weights(arrays: Iterable[np.ndarray], out) -> None:
    """MADlib's format written into ``out`` (a writable buffer of weights_size bytes), one array at a
    time (``arrays`` may be a generator: only one of them need be in memory)."""
    flat = np.frombuffer(out, dtype=_F32_LE)
    offset = 0
    for array in arrays:
        array = np.asarray(array)
        np.copyto(flat[offset:offset + array.size], array.ravel(), casting="same_kind")
        offset += array.size


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
        out.append(flat[offset:offset + n].reshape(shape))  # views: loading them into a model copies once
        offset += n
    return out


def _layout(specs) -> tuple[bytes, list[int], int]:
    """``specs``: (dtype, shape) of each array."""
    header = json.dumps([[np.dtype(d).newbyteorder("<").str, [int(n) for n in s]] for d, s in specs]).encode()
    offset = _aligned(_ARRAYS_PREFIX.size + len(header))
    offsets = []
    for dtype, shape in specs:
        offsets.append(offset)
        offset = _aligned(offset + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return header, offsets, offset


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def arrays_size(specs) -> int:
    """Bytes of the optimizer-state format for arrays of these (dtype, shape)."""
    return _layout(specs)[2]


def write_arrays(specs, arrays: Iterable[np.ndarray], out) -> None:
    """The optimizer-state format written into ``out`` (a writable buffer of arrays_size(specs) bytes),
    one array at a time."""
    header, offsets, _ = _layout(specs)
    view = memoryview(out).cast("B")
    view[:_ARRAYS_PREFIX.size] = _ARRAYS_PREFIX.pack(ARRAYS_MAGIC, len(header))
    view[_ARRAYS_PREFIX.size:_ARRAYS_PREFIX.size + len(header)] = header
    for (dtype, shape), array, offset in zip(specs, arrays, offsets):
        dtype = np.dtype(dtype).newbyteorder("<")
        target = np.frombuffer(out, dtype=dtype, count=int(np.prod(shape)), offset=offset)
        np.copyto(target, np.asarray(array).ravel())


def _spec(array) -> tuple:
    array = np.asarray(array)
    return array.dtype, array.shape


def serialize_arrays(arrays: Sequence[np.ndarray]) -> bytes:
    specs = [_spec(a) for a in arrays]
    out = bytearray(arrays_size(specs))
    write_arrays(specs, arrays, out)
    return bytes(out)


def deserialize_arrays(blob) -> list[np.ndarray]:
    """The arrays of an optimizer state, as read-only views into ``blob`` (or arrays of an old .npz state)."""
    if bytes(memoryview(blob)[:2]) == b"PK":
        return _npz_arrays(blob)
    try:
        magic, length = _ARRAYS_PREFIX.unpack_from(blob)
        if magic != ARRAYS_MAGIC:
            raise ValueError("no madlib_dl header")
        layout = json.loads(bytes(memoryview(blob)[_ARRAYS_PREFIX.size:_ARRAYS_PREFIX.size + length]))
        offset, arrays = _aligned(_ARRAYS_PREFIX.size + length), []
        for dtype, shape in layout:
            if dtype not in ALLOWED_DTYPES or not all(isinstance(n, int) and n >= 0 for n in shape):
                raise ValueError(f"unexpected array {dtype} {shape}")
            count = int(np.prod(shape))
            arrays.append(np.frombuffer(blob, dtype=np.dtype(dtype), count=count, offset=offset).reshape(shape))
            offset = _aligned(offset + count * np.dtype(dtype).itemsize)
        return arrays
    except (ValueError, TypeError, struct.error) as error:
        raise InvalidArgument(f"optimizer state: not a madlib_dl optimizer state ({error})") from None


def _npz_arrays(blob) -> list[np.ndarray]:
    try:
        with np.load(io.BytesIO(bytes(blob)), allow_pickle=False) as archive:
            return [archive[f"arr_{i}"] for i in range(len(archive.files))]
    except (ValueError, OSError, KeyError) as error:
        raise InvalidArgument(f"optimizer state: not a madlib_dl optimizer state ({error})") from None
