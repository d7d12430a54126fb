"""Loss and metric of one trained model on a packed table, evaluated on the table's segments in parallel.

One call of the internal_keras_evaluate aggregate per segment (over that segment's buffers), on
background workers when they can start (workers.executor_for), else in this session; segment_means combines
the segments' means. Nothing is cached: each segment is read once, and its call is the run's last on
that segment.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from madlib_dl.packed_tables import PackedTable
from madlib_dl.segment.runtime import EVALUATE_BATCH_SIZE
from madlib_dl.trained_models import TrainedModel
from madlib_dl.training import driver, hop_tracker, progress, segment_calls, segment_means, workers
from madlib_dl.training.segment_calls import EvaluateHop
from madlib_dl.training.segment_means import SegmentResult

NAME = "madlib_dl evaluate"  # names the worker sessions in pg_stat_activity
FUNCTION = "madlib_keras_evaluate"  # what its NOTICEs begin with
KIND = "test"  # the run's name for the table (and the runtime's cache key; nothing is cached: use_caching is off)


@dataclass(frozen=True)
class EvaluationSpec:
    run_id: str
    schema: str            # where the extension's functions live
    source: PackedTable    # the table evaluated on (named as in RunSpec, so driver.devices_for reads it)
    model: TrainedModel
    use_gpus: bool
    output_table: str | None = None  # for fit_progress


@dataclass(frozen=True)
class Evaluation:
    loss: float
    metric: float | None
    images: int
    executor: str          # 'workers' or 'in_process'
    segments: tuple[SegmentResult, ...]
    output_losses: tuple | None = None   # per output of a model with several (None: one output)
    output_metrics: tuple | None = None


def evaluate(db, spec: EvaluationSpec) -> Evaluation:
    """Evaluate on every segment; the executor's sessions and the run's store are gone when this returns or raises."""
    devices = driver.devices_for(spec)
    set_name = driver.application_name_setter(db)
    try:
        with _recording(db, spec) as shown, \
                workers.executor_for(db, spec.run_id, spec.schema, {KIND: spec.source}, {_key(spec): spec.model},
                                     devices, FUNCTION, None, [spec.model.model_arch], recorder=shown.recorder) as executor:
            text = f"{NAME}: {spec.model.text}"
            set_name(text)
            executor.set_progress(text)
            executor.on_progress = shown.progressed
            shown.recorder.begin()
            shown.record()
            completed = []
            for call in calls(spec):  # one per segment: each worker runs its segments' calls in turn
                executor.submit(call)
            while executor.busy():
                for done in executor.wait():
                    completed.append(done)
                    shown.ended(done)
            shown.recorder.ending()
    finally:
        set_name(None)
    return combine([segment_means.from_row(c.call.tag.segment, c.row) for c in completed], executor.name)


def calls(spec: EvaluationSpec) -> list[segment_calls.SegmentCall]:
    """One evaluation per segment, run by that segment's worker; each is the run's last call there."""
    return [segment_calls.evaluate_call(spec.source, EvaluateHop(0, _key(spec), segment, KIND), segment,
                                        spec.run_id, spec.model.weights, use_caching=False, read_table=True,
                                        is_final_call=True)
            for segment in sorted(spec.source.segments)]


class _Shown:
    """fit_progress's view of an evaluation: one model, a hop per segment, batches of EVALUATE_BATCH_SIZE."""

    def __init__(self, spec: EvaluationSpec, recorder: progress.Recorder):
        self.spec, self.recorder = spec, recorder
        self.tracker = hop_tracker.HopTracker({})
        self.batches = {s: -(-c.images // EVALUATE_BATCH_SIZE) for s, c in spec.source.segments.items()}
        self.done: list[int] = []

    def progressed(self, call, report: dict) -> None:
        self.tracker.progressed(call.segment, _key(self.spec), False, report)
        self.record()

    def ended(self, completed) -> None:
        self.tracker.ended(completed.call.segment, _key(self.spec))
        self.done.append(completed.call.tag.segment)
        self.record()

    def record(self) -> None:
        running = sum(r.batches for r in self.tracker.running.values())
        run = {"iteration": 1, "iterations": 1, "hops_done": len(self.done), "hops_total": len(self.batches),
               "phase": "evaluating", "batches_done": sum(self.batches[s] for s in self.done) + running,
               "batches_total": sum(self.batches.values()),
               "examples_per_second": self.tracker.examples_per_second()}
        self.recorder.update(run, [{"mst_key": _key(self.spec), "iterations_done": 0, "status": "evaluating",
                                    **self.tracker.model_fields(_key(self.spec))}])


@contextlib.contextmanager
def _recording(db, spec: EvaluationSpec):
    recorder = progress.start(db, spec.schema, spec.run_id, FUNCTION, spec.output_table,
                              workers.driver_check(db, spec.schema))
    recorder.update(*driver.starting_snapshot(1, [_key(spec)]))
    try:
        yield _Shown(spec, recorder)
    finally:
        recorder.close()


def _key(spec: EvaluationSpec) -> int:
    """The model's key in the run (a single-model table has no mst_key)."""
    return 0 if spec.model.mst_key is None else spec.model.mst_key


def combine(results: list[SegmentResult], executor: str) -> Evaluation:
    mean = segment_means.combine(results)
    return Evaluation(mean.loss, mean.metric, mean.images, executor, tuple(sorted(results, key=lambda r: r.segment)),
                      mean.output_losses, mean.output_metrics)
