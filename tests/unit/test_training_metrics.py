"""training.training_metrics: which metrics iterations evaluate the training table, and the running
means that stand for it otherwise."""

from __future__ import annotations

import math

import pytest

from madlib_dl import settings
from madlib_dl.training import training_metrics
from madlib_dl.training.segment_means import SegmentResult


@pytest.mark.parametrize("mode, before_last, last", [("running", False, True), ("evaluate", True, True),
                                                     ("running_only", False, False)])
def test_which_iterations_evaluate_the_training_table(mode, before_last, last):
    assert training_metrics.evaluates_training_table(mode, final=False) is before_last
    assert training_metrics.evaluates_training_table(mode, final=True) is last


def test_the_modes_are_the_settings_choices_running_first():
    assert settings.TRAINING_METRICS.choices[0] == training_metrics.RUNNING == "running"
    assert set(settings.TRAINING_METRICS.choices) == {"running", "evaluate", "running_only"}


def test_running_means_weigh_each_hop_by_its_examples_in_segment_order():
    hops = [SegmentResult(1, 2.0, 0.5, 300), SegmentResult(0, 1.0, 1.0, 100)]
    mean = training_metrics.running_mean(hops)
    assert (mean.loss, mean.metric, mean.images) == (1.75, 0.625, 400)


def test_no_hops_or_no_metric():
    assert training_metrics.running_mean([]) is None
    mean = training_metrics.running_mean([SegmentResult(0, float("nan"), None, 10)])
    assert math.isnan(mean.loss) and mean.metric is None
