"""Loss and metric of one trained model on a packed table, evaluated on the table's segments in parallel.

One call of the internal_keras_evaluate aggregate per segment (over that segment's buffers), on
background workers when they can start (workers.executor_for), else in this session; segment_means combines
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
FUNCTION = "madlib_keras_evaluate"  # what its NOTICEs begin with
KIND = "test"  # the run's name for the table (and the runtime's cache key; nothing is cached: use_caching is off)


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
    output_losses: tuple | None = None   # per output of a model with several (None: one output)
    output_metrics: tuple | None = None


def evaluate(db, spec: EvaluationSpec) -> Evaluation:
    """Evaluate on every segment; the executor's sessions and the run's store are gone when this returns or raises."""
    devices = driver.devices_for(spec)
    set_name = driver.application_name_setter(db)
    try:
        with workers.executor_for(db, spec.run_id, spec.schema, {KIND: spec.source}, {_key(spec): spec.model},
                                  devices, FUNCTION, None, [spec.model.model_arch]) as executor:
            progress = f"{NAME}: {spec.model.text}"
            set_name(progress)
            executor.set_progress(progress)
            completed = workers.run_calls(executor, calls(spec))
    finally:
        set_name(None)
    return combine([segment_means.from_row(c.call.tag.segment, c.row) for c in completed], executor.name)


def calls(spec: EvaluationSpec) -> list[segment_calls.SegmentCall]:
    """One evaluation per segment, run by that segment's worker; each is the run's last call there."""
    return [segment_calls.evaluate_call(spec.source, EvaluateHop(0, _key(spec), segment, KIND), segment,
                                        spec.run_id, spec.model.weights, use_caching=False, read_table=True,
                                        is_final_call=True)
            for segment in sorted(spec.source.segments)]


def _key(spec: EvaluationSpec) -> int:
    """The model's key in the run (a single-model table has no mst_key)."""
    return 0 if spec.model.mst_key is None else spec.model.mst_key


def combine(results: list[SegmentResult], executor: str) -> Evaluation:
    mean = segment_means.combine(results)
    return Evaluation(mean.loss, mean.metric, mean.images, executor, tuple(sorted(results, key=lambda r: r.segment)),
                      mean.output_losses, mean.output_metrics)
