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


@dataclass(frozen=True)
class TableMean:
    loss: float
    metric: float | None
    images: int


def from_row(segment: int, row: dict) -> SegmentResult:
    """A hop_result row of an evaluation call."""
    return SegmentResult(segment, row["loss"], row["metric"], int(row["images"]), row.get("pid"))


def combine(results: list[SegmentResult]) -> TableMean:
    ordered = sorted(results, key=lambda r: r.segment)
    images = sum(r.images for r in ordered)
    loss = sum(r.loss * r.images for r in ordered) / images
    has_metric = all(r.metric is not None for r in ordered)
    metric = sum(r.metric * r.images for r in ordered) / images if has_metric else None
    return TableMean(loss, metric, images)
