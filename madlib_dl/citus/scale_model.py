"""A model of a Model Hopper Parallelism iteration on a Citus cluster, for projecting run times to W
worker nodes (docs/scale-out.md). It replays the driver's own scheduler (training.schedule) on simulated
time: every hop of a model on a segment trains on the node for the segment's share of an epoch, and its state
crosses the coordinator's network link twice (to the node before the hop, back after it). The link is
one first-come-first-served server of ``link_bytes_per_second``: all states go through the coordinator,
so its link is shared by every node, which is where scaling out stops paying. Calibrated by the bench's
citus workload (the hop overhead at a known state size gives the link rate of this executor)."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from madlib_dl.training.schedule import IterationScheduler


@dataclass(frozen=True)
class Shape:
    nodes: int
    segments_per_node: int
    models: int
    epoch_seconds: float        # one model's pass over the whole table on one segment's cores
    state_bytes: int            # one model's state (weights and optimizer state)
    link_bytes_per_second: float  # the coordinator's link, shared by all transfers
    hop_latency_seconds: float = 0.0  # per hop round trip besides the bytes (request, Python, Keras set-up)

    @property
    def segments(self) -> int:
        return self.nodes * self.segments_per_node

    @property
    def hop_seconds(self) -> float:
        return self.epoch_seconds / self.segments


def iteration_seconds(shape: Shape, seed: int = 0) -> float:
    """Simulated wall time of one iteration: every model visits every segment once."""
    if shape.nodes < 1 or shape.segments_per_node < 1 or shape.models < 1:
        raise ValueError(f"a cluster and a run need at least one node, segment and model: {shape}")
    if shape.link_bytes_per_second <= 0 or shape.epoch_seconds < 0 or shape.state_bytes < 0:
        raise ValueError(f"rates and times must be positive: {shape}")
    transfer = shape.state_bytes / shape.link_bytes_per_second
    scheduler = IterationScheduler(range(shape.models), range(shape.segments), 1, seed)
    link_free, now, events = 0.0, 0.0, []  # events: (time, order, kind, hop)
    order = 0

    def start(hops) -> None:
        nonlocal link_free, order
        for hop in hops:  # the state goes out over the link, then the node trains
            sent = max(now, link_free) + transfer
            link_free = sent
            heapq.heappush(events, (sent + shape.hop_latency_seconds + shape.hop_seconds, order, "trained", hop))
            order += 1

    start(scheduler.assign(range(shape.segments)))
    while events:
        now, _, kind, hop = heapq.heappop(events)
        if kind == "trained":  # the state comes back over the link; the segment is free once it has
            back = max(now, link_free) + transfer
            link_free = back
            heapq.heappush(events, (back, order, "back", hop))
            order += 1
            continue
        scheduler.finish(hop)
        start(scheduler.assign([hop.segment]) + scheduler.assign(
            [s for s in range(shape.segments) if s != hop.segment and _free(scheduler, s)]))
    if not scheduler.done:
        raise AssertionError("the simulated iteration ended with hops left")  # a bug in this model
    return now


def _free(scheduler: IterationScheduler, segment: int) -> bool:
    return all(h.segment != segment for h in scheduler.running)


def run_seconds(shape: Shape, iterations: int, seed: int = 0) -> float:
    """Simulated wall time of ``iterations`` iterations (each its own schedule, as the driver runs them)."""
    return sum(iteration_seconds(shape, seed + i) for i in range(iterations))
