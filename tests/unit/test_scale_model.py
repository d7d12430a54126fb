"""The scale-out model (madlib_dl.citus.scale_model): the driver's scheduler on simulated time, with
the coordinator's link as one shared server."""

import pytest

from madlib_dl.citus.scale_model import Shape, iteration_seconds, run_seconds


def _shape(**changes) -> Shape:
    base = dict(nodes=2, segments_per_node=2, models=4, epoch_seconds=40.0, state_bytes=0, link_bytes_per_second=1e9)
    return Shape(**{**base, **changes})


def test_without_transfers_every_model_visits_every_segment_back_to_back():
    # 4 models on 4 segments: each model's 4 hops in a row, all segments busy all the time
    assert iteration_seconds(_shape()) == pytest.approx(40.0)
    # fewer models than segments: the models are the limit, segments wait
    assert iteration_seconds(_shape(models=2)) == pytest.approx(40.0)
    # more models than segments: the segments are the limit (8 models x 4 hops on 4 segments)
    assert iteration_seconds(_shape(models=8)) == pytest.approx(80.0)


def test_more_nodes_divide_the_time_while_the_link_keeps_up():
    one = iteration_seconds(_shape(nodes=2, models=16))
    two = iteration_seconds(_shape(nodes=4, models=16))
    assert two == pytest.approx(one / 2)


def test_the_coordinators_link_bounds_an_iteration_when_hops_are_short():
    # no training time: every hop is two transfers of 1 s through one link, one after another
    shape = _shape(epoch_seconds=0.0, state_bytes=10**9, models=4)
    assert iteration_seconds(shape) == pytest.approx(2 * 4 * 4 * 1.0)
    # doubling the nodes does not help then
    assert iteration_seconds(_shape(epoch_seconds=0.0, state_bytes=10**9, models=4, nodes=4, segments_per_node=1)) == \
        pytest.approx(iteration_seconds(shape))


def test_transfers_overlap_other_segments_training():
    # 1 s each way, 10 s of training per hop; one model per segment, 4 hops each
    time = iteration_seconds(_shape(state_bytes=10**9))
    assert 4 * 12.0 <= time < 4 * (10.0 + 2 * 4)  # not every transfer waits for all the others
    assert iteration_seconds(_shape(state_bytes=2 * 10**9)) > time


def test_a_run_is_its_iterations_and_bad_shapes_are_refused():
    assert run_seconds(_shape(), 3) == pytest.approx(3 * 40.0)
    with pytest.raises(ValueError, match="at least one node"):
        iteration_seconds(_shape(nodes=0))
    with pytest.raises(ValueError, match="positive"):
        iteration_seconds(_shape(link_bytes_per_second=0))
