"""Which model trains on which segment next: one iteration of Model Hopper Parallelism.

A segment is one data partition, served by the one worker bound to it for the run. A model trains on
one segment at a time (a hop); an iteration is done when every model has visited every segment once.
The schedule is asynchronous, as in Cerebro: there is no barrier between hops, so whenever a worker is
free it takes any idle model that has not yet visited its segment this iteration. The driver makes a
new IterationScheduler per iteration and calls ``assign`` for free segments and ``finish`` for done
hops. No database and no Keras here, so the whole policy is unit-tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

SEED_MASK = 2**64 - 1  # numpy seeds are non-negative; any Python int seed is folded into 64 bits


@dataclass(frozen=True)
class Hop:
    """One model training on one segment during one iteration."""

    model: int  # mst_key
    segment: int  # segment key (__dist_key__)
    iteration: int  # 1-based


class IterationScheduler:
    """Hands out hops for one iteration so that no worker waits while runnable work exists.

    The state is the set of segments each model has still to visit and the hops now running. Choices
    between equally good models, and the order free segments are served in, come from an RNG seeded
    with (seed, iteration): the same calls give the same hops, and iterations differ from each other.
    """

    def __init__(self, models: Sequence[int], segments: Sequence[int], iteration: int, seed: int):
        self.models = _distinct(models, "models")
        self.segments = _distinct(segments, "segments")
        self._known = frozenset(self.segments)
        if iteration < 1:
            raise ValueError(f"iteration is 1-based, got {iteration}")
        self.iteration = iteration
        self._rng = np.random.default_rng([seed & SEED_MASK, iteration])
        self._unvisited = {m: set(self.segments) for m in self.models}
        self._by_model: dict[int, Hop] = {}  # running hops, in the order they started
        self._by_segment: dict[int, Hop] = {}

    def assign(self, free_segments: Iterable[int]) -> list[Hop]:
        """Start work on the given free segments: for each, pick a runnable model (idle, not yet
        visited that segment this iteration); at most one hop per segment; a model is in at most one hop.
        Returns the hops started (possibly empty). Marks their models and segments busy."""
        free = self._checked_free(free_segments)
        hops = []
        # Serve segments in a shuffled order, so that no segment always gets the first pick.
        for index in self._rng.permutation(len(free)):
            model = self._choose(free[index])
            if model is not None:
                hops.append(self._start(Hop(model, free[index], self.iteration)))
        return hops

    def finish(self, hop: Hop) -> None:
        """The hop is done: its model is idle again and has visited hop.segment; the segment is free."""
        if self._by_model.get(hop.model) != hop:
            raise ValueError(f"finish of {hop}, which is not running")
        del self._by_model[hop.model]
        del self._by_segment[hop.segment]
        self._unvisited[hop.model].discard(hop.segment)

    @property
    def done(self) -> bool:
        """Every model visited every segment and nothing is running."""
        return not self._by_model and not any(self._unvisited.values())

    def runnable(self, segment: int) -> list[int]:
        """Idle models that have not yet visited ``segment`` this iteration, sorted."""
        self._check_known(segment)
        return sorted(m for m, left in self._unvisited.items()
                      if segment in left and m not in self._by_model)

    @property
    def running(self) -> list[Hop]:
        """The hops now running, oldest first."""
        return list(self._by_model.values())

    def _checked_free(self, free_segments: Iterable[int]) -> list[int]:
        # Check the whole request before changing anything, so that a bad call leaves no half-made hops.
        free = list(free_segments)
        for segment in free:
            self._check_known(segment)
            if segment in self._by_segment:
                raise ValueError(f"assign of segment {segment}, which is busy with {self._by_segment[segment]}")
        if len(set(free)) != len(free):
            raise ValueError(f"assign of a segment twice in one call: {free}")
        return free

    def _choose(self, segment: int) -> int | None:
        # The model with the most segments left has the longest way to go; starting it first shortens
        # the iteration's tail. Ties are broken at random, so no model is always favoured.
        candidates = self.runnable(segment)
        if not candidates:
            return None
        most = max(len(self._unvisited[m]) for m in candidates)
        best = [m for m in candidates if len(self._unvisited[m]) == most]
        return best[int(self._rng.integers(len(best)))]

    def _start(self, hop: Hop) -> Hop:
        self._by_model[hop.model] = hop
        self._by_segment[hop.segment] = hop
        return hop

    def _check_known(self, segment: int) -> None:
        if segment not in self._known:
            raise ValueError(f"unknown segment {segment}; the segments are {list(self.segments)}")


def _distinct(keys: Sequence[int], what: str) -> tuple[int, ...]:
    """The keys as a tuple, refusing none or a repeat (either is a bug in the caller)."""
    keys = tuple(keys)
    if not keys:
        raise ValueError(f"no {what} to schedule")
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate {what}: {list(keys)}")
    return keys
