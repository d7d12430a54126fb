"""Loss and metric of one trained model on a packed table, evaluated on the table's segments in parallel.

One call of the internal_keras_evaluate aggregate per segment (over that segment's buffers), in worker
sessions when they can connect (workers.open_executor), else in this session; segment_means combines
the segments' means. Nothing is cached: each segment is read once, and its call is the run's last on
that segment.
"""

from __future__ import annotations

from dataclasses import dataclass

from madlib_dl.packed_tables import PackedTable
from madlib_dl.trained_models import TrainedModel
from madlib_dl.training import driver, segment_calls, segment_means, workers
from madlib_dl.training.segment_calls import EvaluateHop
from madlib_dl.training.segment_means import SegmentResult

NAME = "madlib_dl evaluate"  # names the worker sessions in pg_stat_activity
KIND = "test"  # the runtime's cache key for these examples (nothing is cached: use_caching is off)


@dataclass(frozen=True)
class EvaluationSpec:
    run_id: str
    schema: str            # where the extension's functions live
    source: PackedTable    # the table evaluated on (named as in RunSpec, so driver.devices_for reads it)
    model: TrainedModel
    use_gpus: bool


@dataclass(frozen=True)
class Evaluation:
    loss: float
    metric: float | None
    images: int
    executor: str          # 'workers' or 'in_process'
    segments: tuple[SegmentResult, ...]


def evaluate(db, spec: EvaluationSpec) -> Evaluation:
    """Evaluate on every segment; the executor's sessions and the run's store are gone when this returns or raises."""
    devices = driver.devices_for(spec)
    executor = workers.open_executor(db, spec.run_id, spec.schema, [spec.source], devices, NAME)
    try:
        completed = workers.run_calls(executor, calls(db, spec))
    finally:
        workers.close(db, executor, spec.schema, spec.run_id)
    return combine([segment_means.from_row(c.call.tag.segment, c.row) for c in completed], executor.name)


def calls(db, spec: EvaluationSpec) -> list[segment_calls.SegmentCall]:
    """One evaluation per segment, run by that segment's worker; each is the run's last call there."""
    return [segment_calls.evaluate_call(db, spec.schema, spec.source, EvaluateHop(0, spec.model.mst_key, segment, KIND),
                                        segment, spec.run_id, spec.model, spec.model.weights, use_caching=False,
                                        read_table=True, is_final_call=True)
            for segment in sorted(spec.source.segments)]


def combine(results: list[SegmentResult], executor: str) -> Evaluation:
    mean = segment_means.combine(results)
    return Evaluation(mean.loss, mean.metric, mean.images, executor, tuple(sorted(results, key=lambda r: r.segment)))
