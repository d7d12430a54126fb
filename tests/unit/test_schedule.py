"""The per-iteration hop scheduler: coverage, no idle worker with runnable work, reproducibility."""

import heapq
import itertools

import numpy as np
import pytest

from madlib_dl.training.schedule import Hop, IterationScheduler

SHAPES = [(1, 1), (1, 3), (3, 1), (2, 3), (3, 3), (4, 3), (7, 2), (10, 4), (2, 5), (5, 8)]


def keys(n, start):
    """n keys that are not 0..n-1, so a mix-up of index and key shows."""
    return [start + 7 * i for i in range(n)]


def simulate(models, segments, seed, duration_seed, iteration=1):
    """Run one iteration as a discrete-event simulation, one worker per segment, random hop lengths.

    At every event time the hops that end then are finished, then all free segments are offered to
    assign. After every assign the invariants are checked against state kept here, independently of
    the scheduler. Returns the hops in the order they were started.
    """
    sched = IterationScheduler(models, segments, iteration, seed)
    durations = np.random.default_rng(duration_seed)
    visited = {m: set() for m in models}
    running = {}  # model -> hop
    events = []  # (end time, tie-break counter, hop)
    counter = itertools.count()
    started = []
    now = 0.0
    while True:
        busy = {hop.segment for hop in running.values()}
        new = sched.assign([s for s in segments if s not in busy])
        for hop in new:
            assert hop.iteration == iteration
            assert hop.model not in running, f"model {hop.model} in two hops"
            assert hop.segment not in busy, f"segment {hop.segment} runs two hops"
            assert hop.segment not in visited[hop.model], f"{hop} repeats a visit"
            running[hop.model] = hop
            busy.add(hop.segment)
            heapq.heappush(events, (now + durations.uniform(0.5, 2.0), next(counter), hop))
        started.extend(new)
        assert sorted(sched.running, key=lambda h: h.model) == sorted(running.values(), key=lambda h: h.model)
        for segment in segments:
            if segment not in busy:
                waiting = [m for m in models if m not in running and segment not in visited[m]]
                assert waiting == [], f"segment {segment} is free while {waiting} could run on it"
                assert sched.runnable(segment) == []
        if not events:
            break
        assert not sched.done
        now = events[0][0]
        while events and events[0][0] == now:
            _, _, hop = heapq.heappop(events)
            sched.finish(hop)
            del running[hop.model]
            visited[hop.model].add(hop.segment)
    assert sched.done
    assert all(visited[m] == set(segments) for m in models), "stopped before every visit was made"
    return started


def serial_run(sched):
    """Finish hops one at a time, oldest first, offering every free segment after each finish."""
    hops = []
    while not sched.done:
        busy = {h.segment for h in sched.running}
        hops.extend(sched.assign([s for s in sched.segments if s not in busy]))
        sched.finish(sched.running[0])
    return hops


@pytest.mark.parametrize("n_models, n_segments", SHAPES)
def test_every_model_visits_every_segment_exactly_once(n_models, n_segments):
    models, segments = keys(n_models, 100), keys(n_segments, 3)
    for seed in range(5):
        hops = simulate(models, segments, seed, duration_seed=seed + 1000)
        pairs = [(h.model, h.segment) for h in hops]
        assert sorted(pairs) == sorted(itertools.product(models, segments))
        hops = serial_run(IterationScheduler(models, segments, 2, seed))
        assert sorted((h.model, h.segment) for h in hops) == sorted(itertools.product(models, segments))
        assert {h.iteration for h in hops} == {2}


@pytest.mark.parametrize("n_models, n_segments", SHAPES)
def test_no_worker_waits_while_runnable_work_exists(n_models, n_segments):
    # simulate() checks the invariants after every assign; here over many seeds and iterations.
    for seed in range(40):
        simulate(keys(n_models, 1), keys(n_segments, 50), seed, duration_seed=7 * seed, iteration=1 + seed % 3)


def test_negative_and_huge_seeds_are_accepted():
    for seed in (-1, -(2**70), 2**64 + 5):
        simulate([1, 2, 3], [0, 1], seed, duration_seed=0)


def test_same_seed_and_events_give_the_same_hops():
    for n_models, n_segments in SHAPES:
        models, segments = keys(n_models, 10), keys(n_segments, 0)
        first = simulate(models, segments, seed=42, duration_seed=9)
        assert simulate(models, segments, seed=42, duration_seed=9) == first
        assert serial_run(IterationScheduler(models, segments, 3, 42)) == \
            serial_run(IterationScheduler(models, segments, 3, 42))


def test_different_seeds_give_different_orders():
    models, segments = keys(4, 10), keys(3, 0)
    runs = {tuple(simulate(models, segments, seed, duration_seed=9)) for seed in range(20)}
    assert len(runs) > 1


def test_different_iterations_give_different_orders():
    models, segments = keys(4, 10), keys(3, 0)
    runs = {tuple((h.model, h.segment) for h in serial_run(IterationScheduler(models, segments, it, 5)))
            for it in range(1, 21)}
    assert len(runs) > 1


def test_the_model_with_most_segments_left_is_preferred():
    # After model a has visited segment 10, both a (2 left) and b (3 left) may run on 20: b must win.
    for seed in range(30):
        sched = IterationScheduler([1, 2], [10, 20, 30], 1, seed)
        (first,) = sched.assign([10])
        sched.finish(first)
        other = 2 if first.model == 1 else 1
        assert sched.runnable(20) == [1, 2]
        assert sched.assign([20]) == [Hop(other, 20, 1)]


def test_ties_are_broken_by_the_seed_not_by_key_order():
    firsts = {IterationScheduler([1, 2, 3], [10], 1, seed).assign([10])[0].model for seed in range(30)}
    assert firsts == {1, 2, 3}


def test_free_segments_are_served_in_a_seeded_shuffled_order():
    # One model, two free segments: which segment gets it depends on the shuffle, not on the list order.
    got = {IterationScheduler([1], [10, 20], 1, seed).assign([10, 20])[0].segment for seed in range(30)}
    assert got == {10, 20}


def test_a_segment_without_runnable_model_stays_free():
    sched = IterationScheduler([1], [10, 20], 1, seed=0)
    (hop,) = sched.assign([10, 20])
    assert sched.running == [hop]
    sched.finish(hop)
    other = 20 if hop.segment == 10 else 10
    assert sched.runnable(other) == [1]
    assert sched.assign([other]) == [Hop(1, other, 1)]
    assert sched.assign([hop.segment]) == []  # already visited there


def test_done_is_false_until_the_last_finish():
    sched = IterationScheduler([1, 2], [10, 20], 1, seed=3)
    assert not sched.done
    hops = sched.assign([10, 20])
    assert len(hops) == 2 and not sched.done
    for hop in hops:
        sched.finish(hop)
    assert not sched.done
    last = sched.assign([10, 20])
    assert len(last) == 2
    sched.finish(last[0])
    assert not sched.done
    sched.finish(last[1])
    assert sched.done and sched.running == []
    assert sched.assign([10, 20]) == []


@pytest.mark.parametrize("models, segments, iteration, message", [
    ([], [1], 1, "no models"),
    ([1], [], 1, "no segments"),
    ([1, 2, 1], [1], 1, "duplicate models"),
    ([1], [3, 3], 1, "duplicate segments"),
    ([1], [1], 0, "1-based"),
])
def test_bad_construction_is_refused(models, segments, iteration, message):
    with pytest.raises(ValueError, match=message):
        IterationScheduler(models, segments, iteration, seed=0)


def test_assign_of_a_busy_or_unknown_segment_is_refused_and_changes_nothing():
    sched = IterationScheduler([1, 2, 3], [10, 20], 1, seed=0)
    (hop,) = sched.assign([10])
    with pytest.raises(ValueError, match="busy"):
        sched.assign([20, 10])
    with pytest.raises(ValueError, match="unknown segment 30"):
        sched.assign([20, 30])
    with pytest.raises(ValueError, match="twice"):
        sched.assign([20, 20])
    with pytest.raises(ValueError, match="unknown segment"):
        sched.runnable(30)
    assert sched.running == [hop]  # segment 20 was not started by any refused call
    assert len(sched.assign([20])) == 1


def test_finish_of_a_hop_that_is_not_running_is_refused():
    sched = IterationScheduler([1, 2], [10, 20], 1, seed=0)
    with pytest.raises(ValueError, match="not running"):
        sched.finish(Hop(1, 10, 1))
    (hop,) = sched.assign([10])
    with pytest.raises(ValueError, match="not running"):
        sched.finish(Hop(hop.model, 20, 1))  # right model, wrong segment
    with pytest.raises(ValueError, match="not running"):
        sched.finish(Hop(hop.model, 10, 2))  # another iteration's hop
    sched.finish(hop)
    with pytest.raises(ValueError, match="not running"):
        sched.finish(hop)  # twice
