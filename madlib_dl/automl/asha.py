"""ASHA, Asynchronous Successive Halving (Li et al., "A System for Massively Parallel Hyperparameter
Tuning", MLSys 2020): successive halving without waiting for a rung to fill.

Rung k trains models to until_k = min(grace_iterations * reduction_factor^k, max_iterations) iterations
in total; the last rung is max_iterations. Whenever a worker is free, a model that waits at rung k and
is among the best floor(n_k / eta) of the n_k models that reported at rung k (promoted ones included,
as in the paper) goes on to rung k+1, top rung first; when none can, a new configuration starts at
rung 0, until num_configs have started. A model that diverged (NaN loss) is never promoted.

Protocol notes for the driver:
* ``start()`` returns nothing: every worker is free then, and the driver calls ``more(idle)`` for
  them at once, which starts the first ``idle`` configurations.
* ``report`` below the last rung returns nothing: the model waits, and ``more`` may promote it later.
  Models still waiting when the run ends were not good enough to promote; the driver stops them.
"""

from __future__ import annotations

import math

from madlib_dl.automl.hyperband import rank
from madlib_dl.automl.policy import Continue, Decision, Start, Stop
from madlib_dl.errors import InvalidArgument
from madlib_dl.model_selection import grid
from madlib_dl.model_selection.configs import Config
from madlib_dl.model_selection.grid import SearchSpace

ARGUMENT = "automl_params"


def _at_least(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgument(f"{ARGUMENT}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def rungs(max_iterations: int, grace_iterations: int = 1, reduction_factor: int = 3) -> list[int]:
    """until_k for every rung, increasing, the last one max_iterations."""
    top = _at_least("max_iterations", max_iterations, 1)
    grace = _at_least("grace_iterations", grace_iterations, 1)
    eta = _at_least("reduction_factor", reduction_factor, 2)
    if grace > top:
        raise InvalidArgument(f"{ARGUMENT}: grace_iterations must be at most max_iterations = {top}, got {grace}")
    untils = [grace]
    while untils[-1] < top:
        untils.append(min(untils[-1] * eta, top))
    return untils


class AshaPolicy:
    method = "asha"

    def __init__(self, space: SearchSpace, max_iterations: int, grace_iterations: int = 1,
                 reduction_factor: int = 3, num_configs: int = 27, random_state: int | None = None):
        self.rungs = rungs(max_iterations, grace_iterations, reduction_factor)
        self.eta = reduction_factor
        self.num_configs = _at_least("num_configs", num_configs, 1)
        self._space = space
        self._rng = grid.generator(random_state)  # one stream, drawn lazily: random_configs' order
        self._seen: set[tuple] = set()
        self._exhausted = False
        self.configs: dict[int, Config] = {}
        self._results: list[dict[int, float]] = [{} for _ in self.rungs]  # rung -> key -> loss
        self._promoted: list[set[int]] = [set() for _ in self.rungs]     # rung -> keys sent up from it
        self._running: dict[int, int] = {}                                 # key -> rung it trains to

    def start(self) -> list[Decision]:
        return []

    def report(self, key: int, iterations: int, loss: float) -> list[Decision]:
        if key not in self._running:
            raise ValueError(f"report of model {key}, which is not training")
        rung = self._running[key]
        if iterations != self.rungs[rung]:
            raise ValueError(f"report of model {key} at {iterations} iterations, expected {self.rungs[rung]}")
        del self._running[key]
        self._results[rung][key] = float(loss)
        return [Stop(key, "done")] if rung == len(self.rungs) - 1 else []

    def more(self, idle: int) -> list[Decision]:
        jobs: list[Decision] = []
        while len(jobs) < idle:
            job = self._promotion() or self._new()
            if job is None:
                break
            jobs.append(job)
        return jobs

    def promotable(self, rung: int) -> list[int]:
        """Models waiting at ``rung`` that may go up now, best first."""
        if rung >= len(self.rungs) - 1:
            return []
        results = self._results[rung]
        best = rank(results)[:len(results) // self.eta]
        return [k for k in best if k not in self._promoted[rung] and not math.isnan(results[k])]

    @property
    def started(self) -> int:
        return len(self.configs)

    def can_start(self) -> bool:
        return self.started < self.num_configs and not self._exhausted

    def _promotion(self) -> Continue | None:
        for rung in range(len(self.rungs) - 2, -1, -1):
            for key in self.promotable(rung):
                self._promoted[rung].add(key)
                self._running[key] = rung + 1
                return Continue(key, self.rungs[rung + 1], rung + 1)
        return None

    def _new(self) -> Start | None:
        config = self._draw() if self.can_start() else None
        if config is None:
            return None
        key = self.started + 1
        self.configs[key] = config
        self._running[key] = 0
        return Start(key, config, self.rungs[0], rung=0)

    def _draw(self) -> Config | None:
        """A configuration not drawn before; None once the space looks exhausted (as random_configs)."""
        for _ in range(grid.MAX_FUTILE_DRAWS):
            config = grid.draw(self._space, self._rng)
            if config.key not in self._seen:
                self._seen.add(config.key)
                return config
        self._exhausted = True
        return None
