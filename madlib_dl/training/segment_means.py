"""Per-segment evaluation results combined into one loss and metric over a whole table.

Each segment returns the mean loss and metric over its own examples, so the table's values are their
means weighted by example count. They are summed in segment order, so the result does not depend on
which worker finished first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SegmentResult:
    segment: int
    loss: float
    metric: float | None   # None: the model has no metric
    images: int
    worker_pid: int | None = None
    # A model with several outputs: each output's loss and first metric (None: one output, or no metric)
    output_losses: tuple | None = None
    output_metrics: tuple | None = None


@dataclass(frozen=True)
class TableMean:
    loss: float
    metric: float | None
    images: int
    output_losses: tuple | None = None
    output_metrics: tuple | None = None


def from_row(segment: int, row: dict) -> SegmentResult:
    """A hop_result row of an evaluation call."""
    return SegmentResult(segment, row["loss"], row["metric"], int(row["images"]), row.get("pid"),
                         _floats(row.get("output_losses")), _floats(row.get("output_metrics")))


def _floats(values) -> tuple | None:
    return None if values is None else tuple(float(v) for v in values)


def combine(results: list[SegmentResult]) -> TableMean:
    ordered = sorted(results, key=lambda r: r.segment)
    images = sum(r.images for r in ordered)
    return TableMean(_mean([r.loss for r in ordered], ordered), _mean([r.metric for r in ordered], ordered), images,
                     _per_output([r.output_losses for r in ordered], ordered),
                     _per_output([r.output_metrics for r in ordered], ordered))


def _mean(values: list, ordered: list[SegmentResult]) -> float | None:
    """The segments' values weighted by their example counts; None if any segment has none."""
    if any(v is None for v in values):
        return None
    return sum(v * r.images for v, r in zip(values, ordered)) / sum(r.images for r in ordered)


def _per_output(values: list, ordered: list[SegmentResult]) -> tuple | None:
    if any(v is None for v in values) or len({len(v) for v in values}) != 1:
        return None
    return tuple(_mean([v[i] for v in values], ordered) for i in range(len(values[0])))
