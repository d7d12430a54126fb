"""Packed-table buffers: how many, how big, which segment each goes to, and their byte format.

Features are stored as little-endian float32 and one-hot labels as little-endian int16, each buffer
flattened row-major with its shape in a ``_shape`` column whose first element is the row count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from madlib_dl.errors import InvalidArgument

FEATURE_DTYPE = np.dtype("<f4")
LABEL_DTYPE = np.dtype("<i2")
# MADlib caps a default buffer at 75 million feature values (300 MB of float32). Packing holds about
# three times one buffer (its rows, their bytes, the value being written), so the default is smaller:
# 32 MiB of features, which bounds packing's memory whatever the table's size. Training concatenates a
# segment's buffers, so their size changes nothing there.
DEFAULT_BUFFER_BYTES = 32 << 20
# A BYTEA value cannot reach 1 GiB; stay well below it.
MAX_BUFFER_BYTES = 512 << 20


@dataclass(frozen=True)
class BufferPlan:
    """``sizes[i]`` rows go to buffer i, which lives on segment ``i % segments``, whose ``__dist_key__`` is
    that number, or ``keys[segment]`` where a segment's key was chosen for it (a Citus shard: citus.placement)."""
    sizes: tuple[int, ...]
    segments: int
    keys: tuple[int, ...] | None = None

    @property
    def buffer_size(self) -> int:
        return max(self.sizes)

    def dist_key(self, buffer_id: int) -> int:
        segment = buffer_id % self.segments
        return segment if self.keys is None else self.keys[segment]

    def bounds(self):
        """(buffer_id, first row, end row) of every buffer, in order."""
        start = 0
        for buffer_id, size in enumerate(self.sizes):
            yield buffer_id, start, start + size
            start += size


def plan_buffers(rows: int, segments: int, feature_size: int, buffer_size: int | None = None) -> BufferPlan:
    """MADlib's rule: start from ``buffer_size`` (default: all rows of a segment in one buffer, capped
    at DEFAULT_BUFFER_BYTES of features, at least one row), then round the buffer count up to a
    multiple of the segment count so every segment gets the same number of buffers; buffer sizes then
    differ by at most one row."""
    if rows < 1 or segments < 1 or feature_size < 1:
        raise ValueError("plan_buffers: rows, segments and feature_size must be positive")
    if buffer_size is None:
        per_buffer = max(1, DEFAULT_BUFFER_BYTES // (feature_size * FEATURE_DTYPE.itemsize))
        buffer_size = math.ceil(min(per_buffer, rows / segments))
    count = segments * math.ceil(rows / buffer_size / segments)
    count = min(count, rows)  # never an empty buffer: fewer rows than segments leaves some segments empty
    sizes = tuple(len(part) for part in np.array_split(np.arange(rows), count))
    if max(sizes) * feature_size * FEATURE_DTYPE.itemsize > MAX_BUFFER_BYTES:
        raise InvalidArgument(
            f"buffer_size: {max(sizes)} rows of {feature_size} features is more than "
            f"{MAX_BUFFER_BYTES >> 20} MiB per buffer", hint="Give a smaller buffer_size.")
    return BufferPlan(sizes, segments)


def describe(plan: BufferPlan, requested: int | None) -> str:
    """What a preprocessor made and why its buffers have that size, for its closing NOTICE."""
    count, low, high = len(plan.sizes), min(plan.sizes), max(plan.sizes)
    rows = sum(plan.sizes)
    sizes = f"{low}" if low == high else f"{low} to {high}"
    head = (f"{rows} rows in {count} buffer{'s' if count != 1 else ''} of {sizes} row{'s' if high != 1 else ''} "
            f"over {plan.segments} segment{'s' if plan.segments != 1 else ''}")
    if count < plan.segments:
        empty = plan.segments - count
        why = f"fewer rows than segments: {empty} segment{'s hold' if empty != 1 else ' holds'} none"
    elif requested is None and count == plan.segments:
        why = "buffer_size NULL: one buffer per segment"
    elif requested is None:
        why = (f"buffer_size NULL: {count // plan.segments} buffers per segment, each under "
               f"{DEFAULT_BUFFER_BYTES >> 20} MiB of features")
    elif high != requested:
        why = (f"buffer_size {requested} became {high} so that every segment holds the same number of buffers "
               f"({count // plan.segments})")
    else:
        why = f"buffer_size {requested}, {count // plan.segments} buffers per segment"
    return f"{head} ({why})"


PACKING_COPIES = 3  # a buffer while it is written: its rows, their bytes, the value PostgreSQL makes


def packing_bytes(plan: BufferPlan, feature_size: int, num_classes: int) -> int:
    """About what packing holds at its peak beyond the backend itself: copies of its largest buffer."""
    row = feature_size * FEATURE_DTYPE.itemsize + num_classes * LABEL_DTYPE.itemsize
    return PACKING_COPIES * plan.buffer_size * row


def normalize(features: np.ndarray, normalizing_const: float) -> np.ndarray:
    """Divide in double precision, then store as float32 (a constant of 1 leaves values unchanged)."""
    values = np.asarray(features, dtype=np.float64)
    if normalizing_const != 1.0:
        values = values / normalizing_const
    return values.astype(FEATURE_DTYPE)


def one_hot(class_indices: np.ndarray, num_classes: int) -> np.ndarray:
    indices = np.asarray(class_indices, dtype=np.int64)
    out = np.zeros((indices.size, num_classes), dtype=LABEL_DTYPE)
    out[np.arange(indices.size), indices] = 1
    return out


def pad_classes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Already one-hot labels widened with zero columns up to ``num_classes``."""
    labels = np.asarray(labels, dtype=LABEL_DTYPE)
    if labels.shape[1] == num_classes:
        return labels
    return np.pad(labels, ((0, 0), (0, num_classes - labels.shape[1])))


def encode(array: np.ndarray, dtype: np.dtype) -> tuple[bytes, list[int]]:
    """A buffer's bytes and its ``_shape`` value."""
    array = np.ascontiguousarray(array, dtype=dtype)
    return array.tobytes(), [int(n) for n in array.shape]


def decode(blob: bytes, shape, dtype: np.dtype) -> np.ndarray:
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(blob) != expected:
        raise InvalidArgument(f"packed buffer: {len(blob)} bytes, but shape {list(shape)} needs {expected}")
    return np.frombuffer(blob, dtype=dtype).reshape(shape)
