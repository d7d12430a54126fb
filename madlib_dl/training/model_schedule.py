"""Which model works on which segment next when every model goes at its own pace (AutoML).

fit_multiple's IterationScheduler has a barrier at each iteration's end: every model trains every
iteration. Here each model has its own target (train until iteration ``until``, set by an AutoML
policy) and, after the iterations the driver asks for, an evaluation: one task per segment of each
evaluated table, which may run on several workers at once (it does not change the model). There is no
barrier between models: whenever a worker is free it takes an evaluation task bound to it, else any
idle training model that has not yet visited its segment this iteration.

A model's life: ``train(key, done, until)`` -> hops until its iteration ends (``finish`` reports
IterationDone) -> ``evaluate`` (or ``train`` on, or ``pause``) -> ``finish`` reports Evaluated when the
last task is back -> the driver decides. No database and no Keras here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from madlib_dl.training.schedule import SEED_MASK


@dataclass(frozen=True)
class Task:
    """A hop (``evaluate`` None: train on the worker's own segment) or one evaluation of a model on
    segment ``segment`` of table ``evaluate``, run by ``worker``'s backend."""
    model: int
    worker: int
    iteration: int  # the model's iteration (1-based): trained by this hop, or just ended (evaluation)
    evaluate: str | None = None
    segment: int | None = None

    @property
    def data_segment(self) -> int:
        return self.worker if self.segment is None else self.segment


@dataclass(frozen=True)
class IterationDone:
    model: int
    iteration: int


@dataclass(frozen=True)
class Evaluated:
    model: int
    iteration: int


@dataclass
class _Model:
    done: int             # iterations trained
    until: int            # train to this iteration, then stop for the driver
    unvisited: set = field(default_factory=set)  # workers still to visit in iteration done + 1
    evaluations: list = field(default_factory=list)  # evaluation tasks not yet started
    running: int = 0      # tasks of this model now running
    training: bool = True


class ModelScheduler:
    def __init__(self, workers: Sequence[int], seed: int):
        self.workers = tuple(workers)
        if not self.workers or len(set(self.workers)) != len(self.workers):
            raise ValueError(f"workers must be distinct and not empty, got {list(workers)}")
        self._rng = np.random.default_rng([seed & SEED_MASK, 0xA5])
        self._models: dict[int, _Model] = {}
        self._busy: dict[int, Task] = {}  # worker -> its running task

    # -- what the driver tells it ----------------------------------------------------------------

    def train(self, model: int, done: int, until: int) -> None:
        """Model ``model`` (new, or idle after an IterationDone or Evaluated) has trained ``done``
        iterations and is to train until ``until``."""
        if until <= done:
            raise ValueError(f"model {model}: until ({until}) must be after the iterations done ({done})")
        state = self._models.get(model)
        if state is not None and (state.running or state.evaluations or state.unvisited):
            raise ValueError(f"model {model} is not idle")
        self._models[model] = _Model(done, until, set(self.workers))

    def evaluate(self, model: int, tasks: Iterable[tuple[str, int, int]]) -> None:
        """Evaluate an idle model after its last iteration: ``tasks`` are (table, segment, worker)."""
        state = self._idle(model)
        state.training = False
        state.evaluations = [Task(model, worker, state.done, table, segment) for table, segment, worker in tasks]
        if not state.evaluations:
            raise ValueError(f"model {model}: no evaluation tasks")

    def pause(self, model: int) -> None:
        """An idle model waits (for a decision) and takes no worker."""
        self._idle(model).training = False

    # -- handing out work ------------------------------------------------------------------------

    def assign(self, free: Iterable[int], training: bool = True) -> list[Task]:
        """Work for free workers: an evaluation bound to the worker first (it unblocks a decision),
        else a hop of the idle training model with the most of this iteration left (the longest way to
        go), ties broken at random. At most one task per worker; with ``training`` False evaluations
        only (the run is winding down to a checkpoint)."""
        free = list(free)
        for worker in free:
            if worker not in self.workers or worker in self._busy:
                raise ValueError(f"assign of worker {worker}, which is unknown or busy")
        started = []
        for index in self._rng.permutation(len(free)):
            task = self._evaluation_for(free[index]) or (self._hop_for(free[index]) if training else None)
            if task is not None:
                self._busy[task.worker] = task
                self._models[task.model].running += 1
                started.append(task)
        return started

    def finish(self, task: Task) -> IterationDone | Evaluated | None:
        """The task is done; the event it completes, if any (then the model is idle)."""
        if self._busy.get(task.worker) != task:
            raise ValueError(f"finish of {task}, which is not running")
        del self._busy[task.worker]
        state = self._models[task.model]
        state.running -= 1
        if task.evaluate is not None:
            return Evaluated(task.model, task.iteration) if not state.running and not state.evaluations else None
        state.unvisited.discard(task.worker)
        if state.unvisited:
            return None
        state.done += 1
        if state.done < state.until:
            state.unvisited = set(self.workers)
        else:
            state.training = False
        return IterationDone(task.model, state.done)

    def resume(self, model: int) -> None:
        """Train on to the model's ``until`` after an IterationDone that was not its last."""
        state = self._idle(model)
        state.training = state.done < state.until
        if state.training and not state.unvisited:
            state.unvisited = set(self.workers)

    @property
    def quiet(self) -> bool:
        """Nothing runs and no evaluation waits: every model's state is at the driver."""
        return not self._busy and not any(s.evaluations for s in self._models.values())

    def snapshot(self) -> dict:
        """The schedule as JSON values, while it is quiet (a checkpoint)."""
        if not self.quiet:
            raise ValueError("a snapshot of the schedule is taken only while nothing runs")
        return {"models": [[k, s.done, s.until, sorted(s.unvisited), s.training] for k, s in sorted(self._models.items())],
                "rng": self._rng.bit_generator.state}

    def restore(self, snapshot: dict) -> None:
        """Back to a snapshot (of a scheduler over the same workers)."""
        models = {}
        for key, done, until, unvisited, training in snapshot["models"]:
            if not set(unvisited) <= set(self.workers):
                raise ValueError(f"model {key}: the snapshot's workers {unvisited} are not {list(self.workers)}")
            models[key] = _Model(done, until, set(unvisited), training=bool(training))
        self._rng.bit_generator.state = snapshot["rng"]
        self._models, self._busy = models, {}

    @property
    def running(self) -> list[Task]:
        return list(self._busy.values())

    def free_workers(self) -> list[int]:
        return [w for w in self.workers if w not in self._busy]

    def runnable(self, worker: int) -> list[int]:
        """Models that could take ``worker`` now (for tests and the idle check)."""
        return sorted(m for m, s in self._models.items()
                      if any(t.worker == worker for t in s.evaluations)
                      or (s.training and not s.running and worker in s.unvisited))

    # -- helpers ---------------------------------------------------------------------------------

    def _idle(self, model: int) -> _Model:
        state = self._models.get(model)
        if state is None or state.running or state.evaluations:
            raise ValueError(f"model {model} is not idle")
        return state

    def _evaluation_for(self, worker: int) -> Task | None:
        for key in sorted(self._models):
            pending = self._models[key].evaluations
            for index, task in enumerate(pending):
                if task.worker == worker:
                    return pending.pop(index)
        return None

    def _hop_for(self, worker: int) -> Task | None:
        candidates = [m for m, s in self._models.items() if s.training and not s.running and worker in s.unvisited]
        if not candidates:
            return None
        most = max(len(self._models[m].unvisited) for m in candidates)
        best = sorted(m for m in candidates if len(self._models[m].unvisited) == most)
        model = best[int(self._rng.integers(len(best)))]
        return Task(model, worker, self._models[model].done + 1)
