"""PostgreSQL's binary array format (what ``array_send`` returns) decoded with numpy, many rows at once.

Reading feature arrays as SQL values makes one Python object per element; reading them as
``array_send`` bytes and decoding a whole batch in a few numpy operations is what makes packing,
evaluating and predicting run at the speed of reading the table (bench/FINDINGS.md).

The format: int32 ndim, int32 has-nulls flag, int32 element type oid, then (int32 size, int32 lower
bound) per dimension, then each element as its int32 byte length (-1: NULL) and its bytes, all
big-endian. Only ``real`` (float4) and ``double precision`` (float8) elements are read here; other
numeric types are cast to ``double precision[]`` in SQL first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

FLOAT4_OID, FLOAT8_OID = 700, 701
WIDTHS = {FLOAT4_OID: 4, FLOAT8_OID: 8}
# the column types (as format_type() writes them) whose arrays are sent as they are
ELEMENT_OIDS = {"real[]": FLOAT4_OID, "double precision[]": FLOAT8_OID}
_HEADER = np.dtype([("ndim", ">i4"), ("has_nulls", ">i4"), ("oid", ">i4")])


class RowProblem(ValueError):
    """Row ``index`` of a batch cannot be read: ``reason`` says why ("has NULL elements", ...)."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"row {index} {reason}")
        self.index, self.reason = index, reason


@dataclass(frozen=True)
class Layout:
    """What every row of a batch must be: ``size`` elements of type ``oid`` (any shape)."""
    size: int
    oid: int

    @property
    def width(self) -> int:
        return WIDTHS[self.oid]


def decode(blobs: Sequence[bytes | None], layout: Layout, ndim: int | None = None) -> np.ndarray:
    """The rows' values as a (rows, size) array of float32 (float4 elements) or float64 (float8), in
    storage order. All rows must have the same number of dimensions (``ndim``, or the first row's);
    a NULL array, NULL elements, another element count or another element type raise RowProblem."""
    if not blobs:
        return np.empty((0, layout.size), dtype=_native(layout))
    first = _checked_header(0, blobs[0], layout)
    ndim = first if ndim is None else ndim
    head = 12 + 8 * ndim
    row_bytes = head + layout.size * (4 + layout.width)
    if any(b is None or len(b) != row_bytes for b in blobs):
        index = next(i for i, b in enumerate(blobs) if b is None or len(b) != row_bytes)
        _checked_header(index, blobs[index], layout)  # names what is wrong with it
        raise RowProblem(index, "has another shape than row 0")
    rows = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), row_bytes)
    headers = rows[:, :head]
    different = (headers != headers[0]).any(axis=1)
    if different.any():
        index = int(np.argmax(different))
        _checked_header(index, blobs[index], layout)
        raise RowProblem(index, "has another shape than row 0")
    element = np.dtype([("length", ">i4"), ("value", f">f{layout.width}")])
    elements = rows[:, head:].view(element)
    if (elements["length"] != layout.width).any():  # a length that is not the element's width: corrupt input
        raise RowProblem(int(np.argmax((elements["length"] != layout.width).any(axis=1))), "is not a valid array")
    return elements["value"].astype(_native(layout))


def _native(layout: Layout) -> np.dtype:
    return np.dtype(f"=f{layout.width}")


def _checked_header(index: int, blob, layout: Layout) -> int:
    """The row's number of dimensions, after checking what its header says."""
    if blob is None:
        raise RowProblem(index, "is NULL")
    if len(blob) < 12:
        raise RowProblem(index, "is not a valid array")
    header = np.frombuffer(blob, dtype=_HEADER, count=1)[0]
    ndim, has_nulls, oid = int(header["ndim"]), int(header["has_nulls"]), int(header["oid"])
    if has_nulls:
        raise RowProblem(index, "has NULL elements")
    if oid != layout.oid:
        raise RowProblem(index, f"has elements of type oid {oid}, expected {layout.oid}")
    if ndim == 0:
        raise RowProblem(index, "is empty")
    dims = np.frombuffer(blob, dtype=">i4", count=2 * ndim, offset=12)[0::2] if len(blob) >= 12 + 8 * ndim else None
    if dims is None:
        raise RowProblem(index, "is not a valid array")
    count = int(np.prod(dims.astype(np.int64)))
    if count != layout.size:
        raise RowProblem(index, f"has {count} values, expected {layout.size}")
    return ndim
