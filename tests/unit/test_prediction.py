"""keras_runtime.prediction: pred_type parsing, feature arrays as the server sends them, output rows."""

import struct

import numpy as np
import pytest

from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import prediction
from madlib_dl.keras_runtime.prediction import PROB, RESPONSE, THRESHOLD, TOP_K, PredType


# ---------------------------------------------------------------------------------------------------
# pred_type

@pytest.mark.parametrize("given, expected", [
    ("prob", PredType(PROB)), ("response", PredType(RESPONSE)), (" Response ", PredType(RESPONSE)),
    ("PROB", PredType(PROB)),
    (1, PredType(TOP_K, 1)), (3, PredType(TOP_K, 3)), (np.int32(2), PredType(TOP_K, 2)),
    ("2", PredType(TOP_K, 2)), (" +7 ", PredType(TOP_K, 7)), ("1", PredType(TOP_K, 1)),
    (0.0, PredType(THRESHOLD, 0.0)), (0.2, PredType(THRESHOLD, 0.2)), (0.999, PredType(THRESHOLD, 0.999)),
    ("0.2", PredType(THRESHOLD, 0.2)), (".5", PredType(THRESHOLD, 0.5)), ("0.0", PredType(THRESHOLD, 0.0)),
    ("2e-1", PredType(THRESHOLD, 0.2)), ("0.", PredType(THRESHOLD, 0.0)),
    (None, PredType(PROB)),  # MADlib's default, for NULL too
])
def test_pred_type_accepted(given, expected):
    parsed = prediction.parse_pred_type(given)
    assert parsed == expected and type(parsed.value) is type(expected.value)


@pytest.mark.parametrize("given, shown", [
    (0, "got 0"), (-1, "got -1"), ("0", "got '0'"), ("-3", "got '-3'"),
    (1.0, "got 1.0"), (-0.1, "got -0.1"), (2.5, "got 2.5"), (float("nan"), "got nan"), (float("inf"), "got inf"),
    ("1.0", "got '1.0'"), ("1.5", "got '1.5'"), ("nan", "got 'nan'"), ("inf", "got 'inf'"), ("1_000", "got '1_000'"),
    ("foo", "got 'foo'"), ("", "got ''"), ("probability", "got 'probability'"), (True, "got True"),
])
def test_pred_type_refused_saying_what_is_accepted(given, shown):
    with pytest.raises(InvalidArgument) as error:
        prediction.parse_pred_type(given)
    message = str(error.value)
    assert message.startswith("pred_type: expected 'prob'")
    assert "'response'" in message and "integer k >= 1" in message and "[0.0, 1.0)" in message
    assert shown in message


def test_pred_type_rank_column():
    assert not PredType(RESPONSE).has_rank
    assert PredType(PROB).has_rank and PredType(TOP_K, 2).has_rank and PredType(THRESHOLD, 0.5).has_rank


# ---------------------------------------------------------------------------------------------------
# Feature arrays: the binary form of float8[] (array_send)

def _array_send(values, dims=None, nulls=()):
    """What PostgreSQL's array_send writes for a float8[] (OID 701) of ``dims``."""
    values = list(values)
    dims = dims if dims is not None else ([len(values)] if values else [])
    out = struct.pack(">iii", len(dims), 1 if nulls else 0, 701)
    for d in dims:
        out += struct.pack(">ii", d, 1)
    for i, v in enumerate(values):
        out += struct.pack(">i", -1) if i in nulls else struct.pack(">id", 8, v)
    return out


def test_decode_arrays_any_dimensions():
    flat = _array_send(range(4))
    square = _array_send([4, 5, 6, 7], dims=[2, 2])
    cube = _array_send([8, 9, 10, 11], dims=[2, 2, 1])
    out = prediction.decode_arrays([flat, square, memoryview(cube)], 4)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, np.arange(12, dtype=np.float64).reshape(3, 4))


def test_decode_arrays_exact_values():
    values = [0.1, -1e300, 5e-324, 16.0]
    np.testing.assert_array_equal(prediction.decode_arrays([_array_send(values)], 4)[0], np.array(values))


def test_decode_arrays_empty_batch():
    assert prediction.decode_arrays([], 4).shape == (0, 4)


@pytest.mark.parametrize("bad, reason", [
    (None, "is NULL"),
    (_array_send([1, 2, 3]), "has 3 values"),
    (_array_send([1, 2, 3, 4, 5]), "has 5 values"),
    (_array_send([]), "has 0 values"),
    (_array_send([1, 2, 3, 4], nulls={2}), "has NULL elements"),
    (_array_send([1, float("nan"), 3, 4]), "holds NaN or infinite values"),
    (_array_send([1, 2, float("-inf"), 4]), "holds NaN or infinite values"),
])
def test_decode_arrays_names_the_bad_row(bad, reason):
    good = _array_send([1, 2, 3, 4])
    with pytest.raises(prediction.RowProblem) as problem:
        prediction.decode_arrays([good, good, bad, good], 4)
    assert problem.value.index == 2 and problem.value.reason == reason


# ---------------------------------------------------------------------------------------------------
# Output rows

PROBS = np.array([[0.1, 0.6, 0.3],
                  [0.5, 0.2, 0.3],
                  [1 / 3, 1 / 3, 1 / 3],   # a tie: the lower class index ranks first
                  [0.25, 0.25, 0.5]])
IDS = [10, 11, 12, 13]
CLASSES = ["a", "b", None]


def _rows(pred):
    out = prediction.output_rows(IDS, PROBS, CLASSES, pred)
    return list(zip(out.ids, out.class_values, out.probs, out.ranks))


def test_prob_every_class_by_example_then_rank():
    third = 1 / 3
    assert _rows(PredType(PROB)) == [
        (10, "b", 0.6, 1), (10, None, 0.3, 2), (10, "a", 0.1, 3),
        (11, "a", 0.5, 1), (11, None, 0.3, 2), (11, "b", 0.2, 3),
        (12, "a", third, 1), (12, "b", third, 2), (12, None, third, 3),
        (13, None, 0.5, 1), (13, "a", 0.25, 2), (13, "b", 0.25, 3)]


def test_response_is_rank_one():
    assert _rows(PredType(RESPONSE)) == [(10, "b", 0.6, 1), (11, "a", 0.5, 1), (12, "a", 1 / 3, 1),
                                         (13, None, 0.5, 1)]


def test_top_k():
    assert _rows(PredType(TOP_K, 2)) == [
        (10, "b", 0.6, 1), (10, None, 0.3, 2), (11, "a", 0.5, 1), (11, None, 0.3, 2),
        (12, "a", 1 / 3, 1), (12, "b", 1 / 3, 2), (13, None, 0.5, 1), (13, "a", 0.25, 2)]
    assert _rows(PredType(TOP_K, 7)) == _rows(PredType(PROB))  # more than the classes: all of them


def test_threshold_is_strictly_above():
    assert _rows(PredType(THRESHOLD, 0.3)) == [(10, "b", 0.6, 1), (11, "a", 0.5, 1), (12, "a", 1 / 3, 1),
                                               (12, "b", 1 / 3, 2), (12, None, 1 / 3, 3), (13, None, 0.5, 1)]
    assert _rows(PredType(THRESHOLD, 0.0)) == _rows(PredType(PROB))
    assert _rows(PredType(THRESHOLD, 0.6)) == []


def test_ranked_keeps_float32_values_exactly():
    probs = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)
    _, klass, prob, rank = prediction.ranked(probs, PredType(PROB))
    assert klass.tolist() == [1, 2, 0] and rank.tolist() == [1, 2, 3]
    assert prob.tolist() == [float(np.float32(0.7)), float(np.float32(0.2)), float(np.float32(0.1))]


def test_output_rows_plain_python_values():
    out = prediction.output_rows(["x"], np.array([[0.25, 0.75]]), ["0", "1"], PredType(PROB))
    assert out == prediction.OutputRows(["x", "x"], ["1", "0"], [0.75, 0.25], [1, 2])
    assert all(type(v) is float for v in out.probs) and all(type(r) is int for r in out.ranks)


def test_output_rows_empty_batch():
    out = prediction.output_rows([], np.zeros((0, 3)), CLASSES, PredType(PROB))
    assert out == prediction.OutputRows([], [], [], [])


def test_output_rows_shape_must_match():
    with pytest.raises(ValueError):
        prediction.output_rows(IDS, PROBS, ["a", "b"], PredType(PROB))


def test_default_class_values():
    assert prediction.default_class_values(3) == ["0", "1", "2"]


def test_decode_arrays_of_float4_rows_of_several_shapes():
    def send4(values, dims):
        out = struct.pack(">iii", len(dims), 0, 700) + b"".join(struct.pack(">ii", d, 1) for d in dims)
        return out + b"".join(struct.pack(">if", 4, v) for v in values)

    blobs = [send4([0.5, 1, 2, 3], [4]), send4([4, 5, 6, 7], [2, 2])]
    out = prediction.decode_arrays(blobs, 4, 700)
    assert out.dtype == np.float64 and out.tolist() == [[0.5, 1, 2, 3], [4, 5, 6, 7]]
    same = prediction.decode_arrays([blobs[0], blobs[0]], 4, 700)
    assert same.tolist() == [[0.5, 1, 2, 3]] * 2


# ---------------------------------------------------------------------------------------------------
# Several outputs (multi-io): each output ranked on its own, its rows named by its dependent variable

SECOND = np.array([[0.9, 0.1],
                   [0.3, 0.7],
                   [0.5, 0.5],
                   [0.2, 0.8]])


def _multi_rows(pred):
    out = prediction.outputs_rows(IDS, [PROBS, SECOND], [CLASSES, ["no", "yes"]], ["kind", "flag"], pred)
    assert len(out.class_names) == len(out.ids)
    return list(zip(out.ids, out.class_names, out.class_values, out.probs, out.ranks))


def test_outputs_rows_prob_each_output_ranked_on_its_own():
    first = [(i, "kind", v, p, r) for i, v, p, r in _rows(PredType(PROB))]
    assert _multi_rows(PredType(PROB)) == first + [
        (10, "flag", "no", 0.9, 1), (10, "flag", "yes", 0.1, 2),
        (11, "flag", "yes", 0.7, 1), (11, "flag", "no", 0.3, 2),
        (12, "flag", "no", 0.5, 1), (12, "flag", "yes", 0.5, 2),
        (13, "flag", "yes", 0.8, 1), (13, "flag", "no", 0.2, 2)]


@pytest.mark.parametrize("pred", [PredType(RESPONSE), PredType(TOP_K, 2), PredType(TOP_K, 3),
                                  PredType(THRESHOLD, 0.5), PredType(THRESHOLD, 0.0)], ids=repr)
def test_outputs_rows_pred_type_applies_to_each_output(pred):
    expected = [(i, "kind", v, p, r) for i, v, p, r in _rows(pred)]
    second = prediction.output_rows(IDS, SECOND, ["no", "yes"], pred)
    expected += [(i, "flag", v, p, r) for i, v, p, r in zip(second.ids, second.class_values, second.probs, second.ranks)]
    assert _multi_rows(pred) == expected


def test_outputs_rows_threshold_half_by_hand():
    assert _multi_rows(PredType(THRESHOLD, 0.5)) == [
        (10, "kind", "b", 0.6, 1),
        (10, "flag", "no", 0.9, 1), (11, "flag", "yes", 0.7, 1), (13, "flag", "yes", 0.8, 1)]


def test_outputs_rows_one_output_is_output_rows():
    single = prediction.output_rows(IDS, PROBS, CLASSES, PredType(TOP_K, 2))
    multi = prediction.outputs_rows(IDS, [PROBS], [CLASSES], ["kind"], PredType(TOP_K, 2))
    assert (multi.ids, multi.class_values, multi.probs, multi.ranks) == \
        (single.ids, single.class_values, single.probs, single.ranks)
    assert multi.class_names == ["kind"] * len(single.ids)


def test_outputs_rows_counts_must_match():
    with pytest.raises(ValueError):
        prediction.outputs_rows(IDS, [PROBS, SECOND], [CLASSES], ["kind", "flag"], PredType(PROB))
    with pytest.raises(ValueError):
        prediction.outputs_rows(IDS, [PROBS, SECOND], [CLASSES, ["no"]], ["kind", "flag"], PredType(PROB))
