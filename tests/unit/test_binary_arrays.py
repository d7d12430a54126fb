"""Decoding array_send output many rows at once: values, shapes and every malformed row refused."""

import struct

import numpy as np
import pytest

from madlib_dl import binary_arrays
from madlib_dl.binary_arrays import FLOAT4_OID, FLOAT8_OID, Layout, RowProblem


def _send(values, dims, oid=FLOAT4_OID, nulls=()):
    """What PostgreSQL's array_send writes for an array of ``dims`` holding ``values`` (NULL at ``nulls``)."""
    width, code = (4, ">f") if oid == FLOAT4_OID else (8, ">d")
    out = struct.pack(">iii", len(dims), 1 if nulls else 0, oid) + b"".join(struct.pack(">ii", d, 1) for d in dims)
    for i, v in enumerate(values):
        out += struct.pack(">i", -1) if i in nulls else struct.pack(">i", width) + struct.pack(code, v)
    return out


def test_rows_decode_to_their_values_in_storage_order():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5, 2, 3)).astype(np.float32)
    blobs = [_send(v.ravel(), (2, 3)) for v in values]
    out = binary_arrays.decode(blobs, Layout(6, FLOAT4_OID))
    assert out.dtype == np.float32 and out.shape == (5, 6)
    assert np.array_equal(out, values.reshape(5, 6))


def test_float8_rows_keep_double_precision():
    values = [[0.1, 1e300], [-2.5, 1 / 3]]
    out = binary_arrays.decode([_send(v, (2,), FLOAT8_OID) for v in values], Layout(2, FLOAT8_OID))
    assert out.dtype == np.float64 and out.tolist() == values


def test_no_rows_is_an_empty_matrix():
    assert binary_arrays.decode([], Layout(3, FLOAT4_OID)).shape == (0, 3)


@pytest.mark.parametrize("bad, reason", [
    (None, "is NULL"),
    (_send([1, 2, 3, 4], (4,), nulls=(2,)), "has NULL elements"),
    (_send([1, 2, 3], (3,)), "has 3 values, expected 4"),
    (_send([1, 2, 3, 4], (4,), FLOAT8_OID), "has elements of type oid 701, expected 700"),
    (_send([1, 2, 3, 4], (4, 1)), "has another shape than row 0"),
    (b"\x00\x00", "is not a valid array"),
])
def test_a_bad_row_is_named_with_what_is_wrong(bad, reason):
    good = _send([1, 2, 3, 4], (4,))
    with pytest.raises(RowProblem) as raised:
        binary_arrays.decode([good, good, bad], Layout(4, FLOAT4_OID))
    assert raised.value.index == 2 and raised.value.reason == reason


def test_the_same_count_in_another_shape_is_refused():
    with pytest.raises(RowProblem, match="another shape"):
        binary_arrays.decode([_send([1, 2, 3, 4], (2, 2)), _send([1, 2, 3, 4], (1, 4))], Layout(4, FLOAT4_OID))


def test_a_corrupt_element_length_is_refused():
    blob = bytearray(_send([1, 2], (2,)))
    blob[20:24] = struct.pack(">i", 3)  # the first element's length
    with pytest.raises(RowProblem, match="not a valid array"):
        binary_arrays.decode([bytes(blob)], Layout(2, FLOAT4_OID))
