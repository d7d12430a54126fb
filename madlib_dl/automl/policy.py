"""The seam between deciding and running (KerasTuner's Oracle and Tuner): a policy says which
configurations start, how many iterations each trains before it reports, and which continue or stop;
the driver (madlib_dl/training/automl_driver.py) runs what it says and tells it each result.

No database and no Keras here: every policy is tested with simulated runs.

The protocol, from the driver's side:
* ``start()`` once: the first models to train.
* When a model has trained ``until`` iterations in total, the driver evaluates it and calls
  ``report(key, iterations, loss)``; the model then waits, idle, for a decision about it.
* When a segment's worker is free and no model can use it, the driver calls ``more(idle)``: a policy
  that decides asynchronously (ASHA, TPE) starts or promotes models there; one with a barrier
  (Hyperband's brackets) returns nothing until the results it waits for are in.
* Decisions are :class:`Start`, :class:`Continue` and :class:`Stop`, returned by any of the three. A
  waiting model that never gets one is stopped at the end. The run ends when nothing trains and
  ``more`` returns nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Union

from madlib_dl.model_selection.configs import Config


@dataclass(frozen=True)
class Start:
    """Train a new model: ``config`` from the search space, under ``key`` (mst_key: 1, 2, ... in the
    order the policy creates them), for ``until`` iterations in total, then report."""
    key: int
    config: Config
    until: int
    bracket: int | None = None  # Hyperband's s (the _info table's s column); None for other methods
    rung: int = 0               # Hyperband's i, ASHA's rung: how many times the model was promoted


@dataclass(frozen=True)
class Continue:
    """Train model ``key`` on (it keeps its weights and optimizer state) to ``until`` iterations in
    total, then report again."""
    key: int
    until: int
    rung: int


@dataclass(frozen=True)
class Stop:
    """Model ``key`` trains no more; its state stays in the output tables. ``status`` is 'stopped'
    (not promoted) or 'done' (it reached its full budget)."""
    key: int
    status: str


Decision = Union[Start, Continue, Stop]


class Policy(Protocol):
    method: str  # 'hyperband', 'hyperopt', 'asha'

    def start(self) -> list[Decision]: ...

    def report(self, key: int, iterations: int, loss: float) -> list[Decision]:
        """Model ``key`` has trained ``iterations`` (its last ``until``); ``loss`` is the loss the
        method ranks by (validation loss when there is a validation table, else training loss; NaN for
        a model that diverged, which ranks last)."""
        ...

    def more(self, idle: int) -> list[Decision]:
        """``idle`` workers are free and no model can use them: work for them, or nothing."""
        ...
