"""The memory check before the first hop.

With use_caching each worker keeps its segment's training data (and validation data) in memory for the
whole run, plus one compiled Keras model per model configuration: every model visits every segment, so
every worker ends up holding all of them. The run is refused up front when that would exceed the memory
budget, rather than failing hours later when the last model arrives on a segment.

Without use_caching nothing stays cached between hops, but during a hop every worker reads its whole
segment at the same time, and evaluation reads the validation data the same way. The peak is then at
most the cached case's, so the same sum (all training plus all validation data) is used: a safe upper
bound that keeps one rule for both modes.

Model state is counted where it is held: every worker compiles every model (weights, gradients,
optimizer slots) and, during a hop, also holds the state that arrived and the one it sends back; the
driver holds every model's state (weights and optimizer slots) and one more arriving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from madlib_dl.errors import InvalidArgument

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
# Budgets suggested in the error are rounded up to whole GiB (given in MiB, as the setting takes them).
SUGGESTION_STEP_MIB = 1024

_UNITS = (("B", 1), ("KiB", KIB), ("MiB", MIB), ("GiB", GIB), ("TiB", 1 << 40))


@dataclass(frozen=True)
class MemoryEstimate:
    data_bytes: int  # cached training + validation data, all segments together
    largest_segment_bytes: int
    model_bytes_per_worker: int  # all models, as held by one worker
    workers: int
    use_caching: bool = True
    driver_bytes: int = 0  # the model states the driver holds
    segments: int = 0      # the data's segments (0: as many as workers)

    @property
    def total_bytes(self) -> int:
        return self.data_bytes + self.workers * self.model_bytes_per_worker + self.driver_bytes


def model_bytes(weight_bytes: int, optimizer_slots: int = 2) -> int:
    """Memory of one compiled model: weights, their gradients and the optimizer's slots (Adam keeps 2
    per weight, SGD with momentum 1, plain SGD 0)."""
    if weight_bytes < 0:
        raise ValueError(f"weight_bytes: expected at least 0, got {weight_bytes}")
    if optimizer_slots < 0:
        raise ValueError(f"optimizer_slots: expected at least 0, got {optimizer_slots}")
    return weight_bytes * (2 + optimizer_slots)


def state_bytes(weight_bytes: int, optimizer_slots: int = 2) -> int:
    """One model's state as it travels: weights and the optimizer's slots."""
    return weight_bytes * (1 + optimizer_slots)


def estimate(training_bytes: Mapping[int, int], validation_bytes: Mapping[int, int],
             model_weight_bytes: Sequence[int], use_caching: bool, workers: int | None = None) -> MemoryEstimate:
    """Memory the run needs at its peak.

    ``training_bytes`` / ``validation_bytes``: per segment, bytes of the data as cached (features and
    labels as float32; the caller computes them). ``workers``: how many hold the models (None: one per
    training segment). ``model_weight_bytes``:
    the weights of each model configuration (Adam's slots assumed). See the module docstring for why
    use_caching FALSE counts the same data.
    """
    if not training_bytes:
        raise ValueError("training_bytes: expected at least one segment with training data")
    for name, sizes in (("training_bytes", training_bytes), ("validation_bytes", validation_bytes)):
        for segment, size in sizes.items():
            if size < 0:
                raise ValueError(f"{name}: segment {segment} has {size} bytes, expected at least 0")
    per_segment: dict[int, int] = {}
    for sizes in (training_bytes, validation_bytes):
        for segment, size in sizes.items():
            per_segment[segment] = per_segment.get(segment, 0) + size
    largest_state = max((state_bytes(weights) for weights in model_weight_bytes), default=0)
    return MemoryEstimate(
        data_bytes=sum(training_bytes.values()) + sum(validation_bytes.values()),
        largest_segment_bytes=max(per_segment.values()),
        model_bytes_per_worker=sum(model_bytes(weights) for weights in model_weight_bytes) + 2 * largest_state,
        workers=workers or len(training_bytes),
        use_caching=use_caching,
        driver_bytes=sum(state_bytes(weights) for weights in model_weight_bytes) + largest_state,
        segments=len(per_segment),
    )


def suggested_budget_mib(total_bytes: int) -> int:
    """A budget that fits ``total_bytes``: its MiB rounded up to a whole number of GiB."""
    needed_mib = -(-total_bytes // MIB)
    return max(1, -(-needed_mib // SUGGESTION_STEP_MIB)) * SUGGESTION_STEP_MIB


def check(estimate: MemoryEstimate, budget_bytes: int, setting: str = "madlib_dl.memory_budget_mb") -> None:
    """Refuse the run when it needs more than ``budget_bytes``; exactly the budget is allowed."""
    if budget_bytes < 0:
        raise ValueError(f"budget_bytes: expected at least 0, got {budget_bytes}")
    total = estimate.total_bytes
    if total <= budget_bytes:
        return
    data = "cached data" if estimate.use_caching else "data"
    count = estimate.segments or estimate.workers
    segments = "segment" if count == 1 else "segments"
    workers = "worker" if estimate.workers == 1 else "workers"
    budget_mib = budget_bytes // MIB
    suggestion = f"Raise it (SET {setting} = {suggested_budget_mib(total)})"
    if estimate.use_caching:
        hint = f"{suggestion}, use fewer segments, or run with use_caching => FALSE."
    else:
        hint = f"{suggestion} or use fewer segments."
    raise InvalidArgument(
        f"{'use_caching' if estimate.use_caching else 'memory'}: the run needs about {format_bytes(total)} "
        f"({data} {format_bytes(estimate.data_bytes)} over {count} {segments}, "
        f"largest {format_bytes(estimate.largest_segment_bytes)}; "
        f"models {format_bytes(estimate.model_bytes_per_worker)} per worker x {estimate.workers} {workers}"
        + (f"; model states in the driver {format_bytes(estimate.driver_bytes)}" if estimate.driver_bytes else "")
        + ") "
        f"but the memory budget {setting} is {budget_mib} MiB", hint=hint)


def _round_half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


def format_bytes(n: int) -> str:
    """``n`` bytes for people: whole bytes below 1 KiB, then the largest binary unit that fits, with one
    decimal below 10 and none from 10 on ("512 B", "3.0 KiB", "80 MiB", "3.2 GiB"); halves round up,
    and a value that rounds to 1024 moves to the next unit."""
    if n < 0:
        raise ValueError(f"n: expected at least 0 bytes, got {n}")
    if n < KIB:
        return f"{n} B"
    unit = max(i for i, (_, size) in enumerate(_UNITS) if n >= size)
    while True:
        name, size = _UNITS[unit]
        tenths = _round_half_up(n * 10, size)
        if tenths < 100:
            return f"{tenths // 10}.{tenths % 10} {name}"
        whole = _round_half_up(n, size)
        if whole >= 1024 and unit + 1 < len(_UNITS):
            unit += 1
            continue
        return f"{whole} {name}"
