"""Loss and metric of one trained model on a packed table, evaluated on the table's segments in parallel.

One call of the internal_keras_evaluate aggregate per segment (over that segment's buffers), in worker
sessions when they can connect (workers.open_executor), else in this session. Each segment returns the
mean loss and metric over its examples, so the table's values are their means weighted by example count.
Nothing is cached: each segment is read once, and its call is the run's last on that segment.
"""

from __future__ import annotations

from dataclasses import dataclass

from madlib_dl.packed_tables import PackedTable
from madlib_dl.trained_models import TrainedModel
from madlib_dl.training import driver, segment_calls, workers
from madlib_dl.training.segment_calls import EvaluateHop

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
class SegmentResult:
    segment: int
    loss: float
    metric: float | None   # None: the model has no metric
    images: int
    worker_pid: int | None


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
    return combine([_segment_result(c) for c in completed], executor.name)


def calls(db, spec: EvaluationSpec) -> list[segment_calls.SegmentCall]:
    """One evaluation per segment, run by that segment's worker; each is the run's last call there."""
    return [segment_calls.evaluate_call(db, spec.schema, spec.source, EvaluateHop(0, spec.model.mst_key, segment, KIND),
                                        segment, spec.run_id, spec.model, spec.model.weights, use_caching=False,
                                        read_table=True, is_final_call=True)
            for segment in sorted(spec.source.segments)]


def _segment_result(completed) -> SegmentResult:
    row = completed.row
    return SegmentResult(completed.call.tag.segment, row["loss"], row["metric"], int(row["images"]), row.get("pid"))


def combine(results: list[SegmentResult], executor: str) -> Evaluation:
    """Means over all examples. Summed in segment order, so the result does not depend on which worker
    finished first."""
    ordered = tuple(sorted(results, key=lambda r: r.segment))
    images = sum(r.images for r in ordered)
    loss = sum(r.loss * r.images for r in ordered) / images
    has_metric = all(r.metric is not None for r in ordered)
    metric = sum(r.metric * r.images for r in ordered) / images if has_metric else None
    return Evaluation(loss, metric, images, executor, ordered)
