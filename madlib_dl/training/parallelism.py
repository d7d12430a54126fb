"""How many background workers a run uses, and how many TensorFlow threads each: chosen per run from
the models, the segments and the machine, unless settings force it.

Why not one worker per segment, each with the CPUs divided among them: a run's parallelism then
depends on how the table was packed, not on what trains. Measured on this project's 2-core machines
(bench/FINDINGS.md, issue 26): a small CNN runs 1.08–1.24x faster on 2 threads than on 1, so two
one-thread workers hopping two models (2x) win; a large dense model (29.4M parameters) runs 1.95x
faster on 2 threads, and two one-thread workers training two of them at once compete for memory
bandwidth (the pair took 1.5x the time of one 2-thread process training both in turn). A worker may
serve several segments (training.background: segment i to worker i % workers), each cached there.

The rules, in order:

1. GPUs: one worker per segment, as placement spreads them over the GPUs.
2. settings: madlib_dl.training_workers and madlib_dl.worker_threads, when set, are used (the other
   one then follows from the CPUs).
3. one model trains at a time (fit, or a single configuration): one worker with every CPU.
4. a large model (at least LARGE_MODEL_PARAMS parameters, where one layer's matrix products are big
   enough to use several threads well and the weights no longer fit in the CPU's caches): workers
   of LARGE_MODEL_THREADS threads each (on 2 CPUs: one worker with both).
5. otherwise: one worker per CPU, one thread each (never more workers than hops can run at once).

No calibration run: TensorFlow fixes a process's thread count when it starts, so timing a batch at 1
and at N threads would cost one more TensorFlow start (seconds) per run.
"""

from __future__ import annotations

from dataclasses import dataclass

LARGE_MODEL_PARAMS = 4_000_000
LARGE_MODEL_THREADS = 4


@dataclass(frozen=True)
class RunShape:
    cpus: int
    segments: int             # of the run's training table
    models_at_once: int       # how many models (or evaluations) can run at the same time
    largest_params: int | None  # parameters of the run's largest model (None: unknown)
    gpus: bool = False
    forced_workers: int = 0   # madlib_dl.training_workers (0: choose)
    forced_threads: int = 0   # madlib_dl.worker_threads (0: choose)


@dataclass(frozen=True)
class Parallelism:
    workers: int
    threads: int
    reason: str

    def text(self) -> str:
        return (f"{self.workers} worker{'s' if self.workers != 1 else ''} x {self.threads} "
                f"thread{'s' if self.threads != 1 else ''} ({self.reason})")


def choose(shape: RunShape) -> Parallelism:
    cpus, segments = max(1, shape.cpus), max(1, shape.segments)
    at_once = max(1, min(segments, shape.models_at_once))
    if shape.gpus:
        return Parallelism(segments, shape.forced_threads or max(1, cpus // segments),
                           "one worker per segment, placed on the GPUs")
    if shape.forced_workers:
        workers = min(shape.forced_workers, segments)
        return Parallelism(workers, shape.forced_threads or max(1, cpus // min(workers, at_once)),
                           "madlib_dl.training_workers" + (" and madlib_dl.worker_threads" if shape.forced_threads
                                                            else ""))
    if shape.forced_threads:
        return Parallelism(max(1, min(at_once, cpus // shape.forced_threads)), shape.forced_threads,
                           "madlib_dl.worker_threads")
    if at_once == 1:
        return Parallelism(1, cpus, "one model trains at a time: one worker with every CPU")
    if shape.largest_params is not None and shape.largest_params >= LARGE_MODEL_PARAMS:
        threads = min(cpus, LARGE_MODEL_THREADS)
        return Parallelism(max(1, min(at_once, cpus // threads)), threads,
                           f"a model of {shape.largest_params:,} parameters: its matrix products use several "
                           "threads well, and models trained side by side would compete for memory bandwidth")
    workers = min(at_once, cpus)
    return Parallelism(workers, max(1, cpus // workers),
                       f"models of at most {_params(shape.largest_params)} parameters: one thread per worker, "
                       "one worker per CPU runs them fastest side by side")


def _params(count: int | None) -> str:
    return "an unknown number of" if count is None else f"{count:,}"


def largest_params(model_archs) -> int | None:
    """The parameter count of the largest architecture, counted from the JSON (None when some
    architecture is outside what keras_runtime.arch_size counts without Keras)."""
    from madlib_dl.keras_runtime import arch_size

    counts = []
    for model_arch in set(model_archs):
        try:
            counts.append(arch_size.closed_form(model_arch).params)
        except arch_size.NotClosedForm:
            return None
    return max(counts, default=None)
