"""Models with several inputs or outputs (multi-io), the pure parts: several variables' buffers joined
into one aggregate argument and split again, Keras' per-output logs read into the hop result, per-output
means over segments, and compile arguments for several outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import builder, output_logs
from madlib_dl.preprocess import joined, packing
from madlib_dl.segment import requests
from madlib_dl.training import segment_means


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def test_one_variable_passes_its_columns_unchanged():
    assert joined.data_sql(_quote, ("x",)) == ('"x"', '"x_shape"')


def test_several_variables_pass_bytes_concatenated_and_shapes_behind_a_header():
    data, shape = joined.data_sql(_quote, ("a", 'b"c'))
    assert data == '"a" || "b""c"'
    assert shape == ('ARRAY[pg_catalog.cardinality("a_shape"), pg_catalog.cardinality("b""c_shape")] || '
                     '"a_shape" || "b""c_shape"')


def test_joined_buffers_decode_to_each_variable():
    """What the SQL expressions above make of a row (bytes ||, shape header ||) decodes to the arrays."""
    first = np.arange(12, dtype=packing.FEATURE_DTYPE).reshape(3, 4)
    second = np.arange(3 * 2 * 2, dtype=packing.FEATURE_DTYPE).reshape(3, 2, 2) / 7
    blob = first.tobytes() + second.tobytes()
    shape = [2, 3] + list(first.shape) + list(second.shape)
    got = joined.decode(blob, shape, packing.FEATURE_DTYPE, 2)
    np.testing.assert_array_equal(got[0], first)
    np.testing.assert_array_equal(got[1], second)
    np.testing.assert_array_equal(joined.decode(first.tobytes(), [3, 4], packing.FEATURE_DTYPE, 1), first)


@pytest.mark.parametrize("shape, blob_size, message", [
    ([2, 3, 3, 4], 48, "does not describe 2 variables"),
    ([2, 2, 3, 4, 3, 4], 40, "bytes"),
])
def test_a_malformed_joined_buffer_is_refused(shape, blob_size, message):
    with pytest.raises(InvalidArgument, match=message):
        joined.decode(b"\0" * blob_size, shape, packing.FEATURE_DTYPE, 2)


def test_table_ref_fills_its_variables_and_checks_them():
    assert requests.TableRef("s", "t", "y", "x", 1).independents == ("x",)
    ref = requests.TableRef("s", "t", "y", "x", 1, dependents=["y", "y2"], independents=["x", "x2"])
    assert ref.dependents == ("y", "y2") and ref.data_sql(_quote)[0] == '"y" || "y2"'
    with pytest.raises(TypeError, match="'x' first"):
        requests.TableRef("s", "t", "y", "x", 1, independents=("x2", "x"))


def test_per_output_logs_go_to_the_longest_matching_output_name():
    logs = {"loss": 3.0, "out_loss": 1.0, "out_2_loss": 2.0, "out_accuracy": 0.5, "out_2_accuracy": 0.25}
    claimed = output_logs.per_output(logs, ["out", "out_2"])
    assert claimed == {"out": {"loss": 1.0, "accuracy": 0.5}, "out_2": {"loss": 2.0, "accuracy": 0.25}}


def test_hop_values_for_one_output_and_for_several():
    assert output_logs.hop_values({"loss": 0.5, "accuracy": 0.75}, ["dense"]) == {
        "loss": 0.5, "metric": 0.75, "output_losses": None, "output_metrics": None}
    assert output_logs.hop_values({"loss": 0.5}, ["dense"])["metric"] is None
    several = output_logs.hop_values({"loss": 3.0, "a_acc": 0.5, "b_acc": 1.0, "a_loss": 1.0, "b_loss": 2.0},
                                     ["a", "b"])
    assert several == {"loss": 3.0, "metric": 0.75, "output_losses": [1.0, 2.0], "output_metrics": [0.5, 1.0]}
    no_metric = output_logs.hop_values({"loss": 3.0, "a_loss": 1.0, "b_loss": 2.0}, ["a", "b"])
    assert no_metric["metric"] is None and no_metric["output_metrics"] is None
    assert math.isnan(output_logs.hop_values({}, ["a", "b"])["loss"])


def test_per_output_means_are_weighted_by_examples():
    rows = [segment_means.SegmentResult(0, 1.0, 0.5, 10, None, (0.4, 0.6), (0.5, 0.5)),
            segment_means.SegmentResult(1, 2.0, 1.0, 30, None, (0.8, 1.2), (1.0, 1.0))]
    mean = segment_means.combine(rows)
    assert mean.loss == pytest.approx(1.75)
    assert mean.output_losses == pytest.approx((0.7, 1.05))
    assert mean.output_metrics == pytest.approx((0.875, 0.875))
    one_output = [segment_means.SegmentResult(0, 1.0, None, 5)]
    assert segment_means.combine(one_output).output_losses is None


def test_a_hop_result_row_gives_per_output_values():
    row = {"loss": 1.0, "metric": 0.5, "images": 4, "pid": 7, "output_losses": [0.25, 0.75],
           "output_metrics": [0.5, 0.5]}
    result = segment_means.from_row(2, row)
    assert result.output_losses == (0.25, 0.75) and result.output_metrics == (0.5, 0.5)


def test_compile_arguments_give_every_output_the_metrics():
    kwargs = {"loss": "categorical_crossentropy", "metrics": ["accuracy", "top_k"]}
    assert builder.for_outputs(kwargs, 1) is kwargs
    assert builder.for_outputs(kwargs, 2)["metrics"] == [["accuracy", "top_k"], ["accuracy", "top_k"]]
    assert builder.for_outputs({"loss": "mse", "metrics": []}, 3)["metrics"] == []
