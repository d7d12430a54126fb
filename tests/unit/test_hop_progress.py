"""A running hop's progress: the serving side's reporter (how often it tells, and what) and the
driver's tracker (batches of the iteration, the hops running, their rates)."""

from __future__ import annotations

import pytest

from madlib_dl.segment import hop_progress
from madlib_dl.training import hop_tracker


def test_a_reporter_tells_its_sink_at_most_every_report_seconds(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(hop_progress.time, "monotonic", lambda: now[0])
    heard = []
    with hop_progress.sink(heard.append):
        report = hop_progress.reporter("train")
        report(1, 10, 32)  # at once: a short hop says nothing
        now[0] += hop_progress.REPORT_SECONDS
        report(5, 10, 160)
        now[0] += hop_progress.REPORT_SECONDS / 2
        report(7, 10, 224)
        now[0] += hop_progress.REPORT_SECONDS / 2
        report(9, 10, 288)
    assert heard == [{"kind": "train", "batches": 5, "batches_total": 10, "examples": 160, "seconds": 2.0},
                     {"kind": "train", "batches": 9, "batches_total": 10, "examples": 288, "seconds": 4.0}]
    assert hop_progress.reporter("train") is None  # no sink outside the block: nothing to build


def test_hop_batches_follow_the_fit_params():
    assert hop_tracker.hop_batches("batch_size=10, epochs=3", 53) == 18
    assert hop_tracker.hop_batches("epochs=2", 64) == 4  # Keras' default batch of 32
    assert hop_tracker.hop_batches("batch_size=8, epochs=5, initial_epoch=3", 16) == 4
    assert hop_tracker.hop_batches("batch_size=8, epochs=2, steps_per_epoch=7", 1000) == 14


def test_the_tracker_counts_ended_hops_and_running_ones():
    tracker = hop_tracker.HopTracker({0: 100, 1: 50})
    tracker.add_model(1, "batch_size=10, epochs=2")  # 20 batches on segment 0, 10 on segment 1
    tracker.add_model(2, "batch_size=25, epochs=1")  # 4 and 2
    assert tracker.model_batches(1) == 30 and tracker.model_batches(2) == 6
    tracker.progressed(0, 1, True, {"batches": 7, "batches_total": 20, "examples": 700, "seconds": 2.0})
    tracker.progressed(1, 2, True, {"batches": 1, "batches_total": 2, "examples": 25, "seconds": 0.5})
    assert tracker.running_batches() == 8
    assert tracker.examples_per_second() == pytest.approx(350 + 50)
    assert tracker.model_fields(1) == {"hop_batches_done": 7, "hop_batches_total": 20,
                                       "hop_examples_per_second": 350.0}
    tracker.ended(1, 2, segment=1)
    assert tracker.batches_done == 2 and tracker.running_batches() == 7
    assert tracker.model_fields(2)["hop_batches_done"] is None  # no hop of it runs
    tracker.progressed(1, 2, False, {"batches": 3, "batches_total": 9, "examples": 0, "seconds": 1.0})
    assert tracker.running_batches() == 7  # an evaluation's batches are not training's
    assert tracker.model_fields(2)["hop_examples_per_second"] is None  # no examples counted: no rate
    tracker.ended(1, 2)  # an evaluation ended: no training batches
    assert tracker.batches_done == 2


def test_a_node_sessions_notice_carries_a_report_and_nothing_else_passes_for_one():
    report = {"kind": "train", "batches": 5, "batches_total": 10, "examples": 40, "seconds": 2.5}
    assert hop_progress.from_notice(hop_progress.as_notice(report)) == report
    assert hop_progress.from_notice("some other NOTICE") is None
    assert hop_progress.from_notice(None) is None
    # what the caller's own code could send in the node session: only well-formed reports count
    for bad in ('{"kind": "train"}', "not json", '{"kind": "t", "batches": "x", "batches_total": 1, '
                '"examples": 1, "seconds": 1}', '{"kind": "t", "batches": 1, "batches_total": 1, "examples": 1, '
                '"seconds": "NaN"}', "[1, 2]"):
        assert hop_progress.from_notice(hop_progress.NOTICE_PREFIX + bad) is None, bad


def test_an_evaluation_shows_its_segments_and_batches_as_they_go():
    """evaluate's fit_progress rows: a hop per segment, its batches of EVALUATE_BATCH_SIZE, the running
    segment's reports counted until it ends."""
    from types import SimpleNamespace

    from madlib_dl.segment.runtime import EVALUATE_BATCH_SIZE
    from madlib_dl.training import evaluation

    class Recorder:
        def __init__(self):
            self.snapshots = []

        def update(self, run, models, wait=False):
            self.snapshots.append((run, models))

    source = SimpleNamespace(segments={0: SimpleNamespace(images=3 * EVALUATE_BATCH_SIZE),
                                       1: SimpleNamespace(images=EVALUATE_BATCH_SIZE + 1)})
    spec = SimpleNamespace(source=source, model=SimpleNamespace(mst_key=4))
    recorder = Recorder()
    shown = evaluation._Shown(spec, recorder)
    shown.record()
    first_run, (model,) = recorder.snapshots[-1]
    assert (first_run["hops_done"], first_run["hops_total"], first_run["batches_done"], first_run["batches_total"]) == (
        0, 2, 0, 5)
    assert model["mst_key"] == 4 and model["status"] == "evaluating" and model["hop_batches_done"] is None
    call = SimpleNamespace(segment=1, tag=SimpleNamespace(segment=1))
    shown.progressed(call, {"kind": "evaluate", "batches": 1, "batches_total": 2, "examples": 256, "seconds": 2.0})
    run, (model,) = recorder.snapshots[-1]
    assert (run["batches_done"], run["examples_per_second"], model["hop_batches_done"]) == (1, 128.0, 1)
    shown.ended(SimpleNamespace(call=call))
    run, (model,) = recorder.snapshots[-1]
    assert (run["hops_done"], run["batches_done"], run["examples_per_second"]) == (1, 2, None)
    assert model["hop_batches_done"] is None
