"""Byte formats of model state: MADlib's flat float32 weights and the npz optimizer state."""

import io
import struct

import numpy as np
import pytest

from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import serialization as s


def test_weights_use_madlibs_flat_little_endian_float32_layout():
    arrays = [np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.5, -1.5], dtype=np.float64)]
    blob = s.serialize_weights(arrays)
    assert blob == struct.pack("<6f", 1.0, 2.0, 3.0, 4.0, 0.5, -1.5)


def test_weights_round_trip_to_the_models_shapes():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=shape).astype(np.float32) for shape in [(3, 4), (4,), (2, 2, 3), ()]]
    back = s.deserialize_weights(s.serialize_weights(arrays), [a.shape for a in arrays])
    assert all(b.dtype == np.float32 and b.shape == a.shape and np.array_equal(a, b) for a, b in zip(arrays, back))
    assert all(not b.flags.writeable for b in back)  # views of the bytes: loading them into a model is the one copy


def test_weights_of_the_wrong_size_are_refused_with_both_counts():
    blob = s.serialize_weights([np.zeros(5)])
    with pytest.raises(InvalidArgument, match=r"holds 5 values but the model architecture has 6 weights"):
        s.deserialize_weights(blob, [(2, 3)])
    with pytest.raises(InvalidArgument, match="not a whole number of float32 values"):
        s.deserialize_weights(blob[:-1], [(5,)])


def test_empty_weights():
    assert s.serialize_weights([]) == b""
    assert s.deserialize_weights(b"", []) == []


def test_arrays_round_trip_with_dtypes_and_shapes():
    arrays = [np.array(7, dtype=np.int64), np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1e-8])]
    back = s.deserialize_arrays(s.serialize_arrays(arrays))
    assert [(b.dtype, b.shape) for b in back] == [(a.dtype, a.shape) for a in arrays]
    assert all(np.array_equal(a, b) for a, b in zip(arrays, back))


def test_arrays_from_garbage_or_pickles_are_refused():
    with pytest.raises(InvalidArgument, match="not a madlib_dl optimizer state"):
        s.deserialize_arrays(b"definitely not npz")
    import io
    buffer = io.BytesIO()
    np.savez(buffer, np.array([{"a": 1}], dtype=object))  # would need pickle to load
    with pytest.raises(InvalidArgument, match="not a madlib_dl optimizer state"):
        s.deserialize_arrays(buffer.getvalue())


def test_state_written_into_a_buffer_reads_back_as_views_of_it():
    rng = np.random.default_rng(1)
    arrays = [np.array(7, dtype=np.int64), rng.normal(size=(3, 5)).astype(np.float32), np.zeros((0, 2), np.float16)]
    specs = [(a.dtype, a.shape) for a in arrays]
    out = bytearray(s.arrays_size(specs))
    assert len(out) % s.ALIGN == 0
    s.write_arrays(specs, iter(arrays), out)
    back = s.deserialize_arrays(out)
    assert [(b.dtype, b.shape) for b in back] == specs and all(np.array_equal(a, b) for a, b in zip(arrays, back))
    assert all(np.shares_memory(b, np.frombuffer(out, np.uint8)) for b in back if b.size)
    assert s.serialize_arrays(arrays) == bytes(out)


def test_weights_written_into_a_buffer_one_array_at_a_time():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([0.5], np.float32)]
    out = bytearray(s.weights_size([a.shape for a in arrays]))
    s.write_weights((a for a in arrays), out)
    assert bytes(out) == s.serialize_weights(arrays)


def test_optimizer_states_saved_as_npz_by_earlier_versions_still_load():
    buffer = io.BytesIO()
    np.savez(buffer, np.array(3), np.ones((2, 2), np.float32))
    back = s.deserialize_arrays(buffer.getvalue())
    assert back[0] == 3 and np.array_equal(back[1], np.ones((2, 2)))


@pytest.mark.parametrize("blob", [b"MDLA\x05\x00\x00\x00[[\"O\"", b"MDLA\x0f\x00\x00\x00[[\"|O\", [2]]]",
                                  b"XXXX\x00\x00\x00\x00"])
def test_a_state_that_is_not_ours_is_refused(blob):
    with pytest.raises(InvalidArgument, match="optimizer state: not a madlib_dl optimizer state"):
        s.deserialize_arrays(blob)
