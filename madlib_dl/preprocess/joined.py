"""Several variables' buffers of one packed-table row passed to the segment aggregates as one value.

The aggregates take one BYTEA and one shape per side (labels, features). A packed table with several
dependent or independent variables (multi-io) passes their bytes concatenated in column order, and
their shapes as one array: the length of each variable's shape first, then the shapes themselves. So
the aggregates' signatures stay those of one variable, and a table with one variable per side passes
its columns unchanged.
"""

from __future__ import annotations

import math

import numpy as np

from madlib_dl.errors import InvalidArgument
from madlib_dl.preprocess import packing


def data_sql(quote_ident, columns: tuple[str, ...]) -> tuple[str, str]:
    """SQL expressions (bytes, shape) passing ``columns`` (a side's columns) to an aggregate."""
    names = [quote_ident(c) for c in columns]
    shapes = [quote_ident(c + "_shape") for c in columns]
    if len(columns) == 1:
        return names[0], shapes[0]
    header = ", ".join(f"pg_catalog.cardinality({s})" for s in shapes)
    return " || ".join(names), f"ARRAY[{header}] || " + " || ".join(shapes)


def decode(blob: bytes, shape, dtype: np.dtype, count: int):
    """A side's arrays: one array for one variable, a list of ``count`` arrays for several."""
    if count == 1:
        return packing.decode(blob, shape, dtype)
    shape = [int(n) for n in shape]
    lengths, rest = shape[:count], shape[count:]
    if len(lengths) != count or sum(lengths) != len(rest):
        raise InvalidArgument(f"packed buffer: shape header {shape} does not describe {count} variables")
    arrays, offset, start = [], 0, 0
    itemsize = np.dtype(dtype).itemsize
    for length in lengths:
        one = rest[start:start + length]
        size = math.prod(one) * itemsize
        arrays.append(packing.decode(blob[offset:offset + size], one, dtype))
        offset, start = offset + size, start + length
    if offset != len(blob):
        raise InvalidArgument(f"packed buffer: {len(blob)} bytes, but the shapes {rest} need {offset}")
    return arrays
