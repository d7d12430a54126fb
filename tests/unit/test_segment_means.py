"""Per-segment evaluation means combined over a table: weighted by examples, in segment order."""

import pytest

from madlib_dl.training.segment_means import SegmentResult, combine, from_row


def test_means_are_weighted_by_each_segments_examples():
    mean = combine([SegmentResult(0, 1.0, 0.5, 80), SegmentResult(1, 3.0, 1.0, 20)])
    assert mean.images == 100
    assert mean.loss == pytest.approx(1.4)     # not 2.0, the unweighted mean
    assert mean.metric == pytest.approx(0.6)


def test_the_order_results_arrive_in_does_not_change_the_sum():
    results = [SegmentResult(s, 0.1 * (s + 1) / 3, 0.7 / (s + 1), 7 + s) for s in range(5)]
    forward, backward = combine(results), combine(list(reversed(results)))
    assert (forward.loss, forward.metric) == (backward.loss, backward.metric)  # bitwise: summed in segment order


def test_no_metric_when_the_model_has_none():
    assert combine([SegmentResult(0, 1.0, None, 3), SegmentResult(1, 2.0, None, 1)]).metric is None


def test_from_row_reads_a_hop_result():
    result = from_row(2, {"loss": 0.5, "metric": 0.25, "images": 12, "pid": 99})
    assert result == SegmentResult(2, 0.5, 0.25, 12, 99)
