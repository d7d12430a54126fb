"""The driver of a training run (fit_multiple's models, or fit's one model): it wires the run spec to
the scheduler, the executor, the metrics and the progress reports, and returns every model's final
state and metric history.

Model state (weights and optimizer state) comes back to the driver after every hop and goes out with
the model's next hop, so any worker can take any model; the driver's memory holds one state per model
(while a hop runs, the worker holds it).
"""

from __future__ import annotations

import contextlib
import datetime
import re
import time
from dataclasses import dataclass, field
from typing import Callable

from madlib_dl import custom_functions, settings
from madlib_dl.errors import Cancelled, ConnectionLost, InvalidArgument
from madlib_dl.keras_runtime import gpus
from madlib_dl.keras_runtime import params as keras_params
from madlib_dl.training import (checkpoints, executors, hop_tracker, memory, placement, progress, segment_calls,
                                segment_means, stored_state, training_metrics, workers)
from madlib_dl.training.schedule import Hop, IterationScheduler
from madlib_dl.training.segment_calls import EvaluateHop, TrainHop
from madlib_dl.training.spec import ModelConfig, RunSpec, derive_seed

SERIES = {"train": "training", "validation": "validation"}  # evaluation kind -> name of its metric series


@dataclass
class ModelProgress:
    config: ModelConfig
    weights: bytes | None
    optimizer_state: bytes | None
    last_segment: int | None = None
    owns_state: bool = False  # the state came back from this model's last hop (no other model shares it)
    metrics: dict = field(default_factory=lambda: {k: [] for k in (
        "training_loss", "training_metric", "validation_loss", "validation_metric",
        "training_elapsed", "validation_elapsed")})
    hop_results: list = field(default_factory=list)  # SegmentResults (running means) of this iteration's hops
    running_hops: list = field(default_factory=list)  # the hop results of its last iteration trained

    def trained(self, completed, segment: int) -> None:
        """A hop of this model came back: its new state, and its running loss and metrics."""
        self.weights, self.optimizer_state, self.last_segment = completed.weights, completed.optimizer_state, segment
        self.owns_state = True
        self.hop_results.append(segment_means.from_row(segment, completed.row))

    def end_iteration(self) -> None:
        """Every hop of an iteration is back: their combined running means are the iteration's."""
        self.running_hops, self.hop_results = self.hop_results, []

    @property
    def running(self) -> segment_means.TableMean | None:
        """The running loss and metrics of the last iteration trained."""
        return training_metrics.running_mean(self.running_hops)

    def current_loss(self) -> float | None:
        """For progress: this iteration's hops so far, else the last iteration's, else the last evaluation's."""
        mean = training_metrics.running_mean(self.hop_results) or self.running
        if mean is not None:
            return mean.loss
        return self.metrics["training_loss"][-1] if self.metrics["training_loss"] else None

    def add_metrics(self, kind: str, mean: segment_means.TableMean, elapsed: float) -> None:
        """One point of a metric series (``kind``: 'train' or 'validation')."""
        prefix = SERIES[kind]
        self.metrics[f"{prefix}_loss"].append(mean.loss)
        self.metrics[f"{prefix}_metric"].append(mean.metric)
        self.metrics[f"{prefix}_elapsed"].append(elapsed)
        if mean.output_losses is not None:  # a model with several outputs: each one's, too
            self.metrics.setdefault(f"{prefix}_output_losses", []).append(list(mean.output_losses))
            self.metrics.setdefault(f"{prefix}_output_metrics", []).append(
                list(mean.output_metrics) if mean.output_metrics is not None else None)


@dataclass(frozen=True)
class HopRecord:
    kind: str  # 'train', 'evaluate train', 'evaluate validation'
    iteration: int
    mst_key: int
    segment: int
    worker_pid: int | None
    started: float
    ended: float
    seconds: float           # inside Keras (fit or evaluate)
    overhead_seconds: float  # the rest of the call's wall time as the driver saw it
    buffers_read: int
    images: int
    loss: float | None
    rss_bytes: int | None = None         # the worker's memory right after the call (process_memory)
    peak_rss_bytes: int | None = None
    shared_rss_bytes: int | None = None
    metric: float | None = None          # a training hop's running metric, an evaluation's metric
    worker_threads: int | None = None    # TensorFlow threads of the worker (None: this session's own set-up)
    node: str | None = None              # the Citus worker node (host:port) that ran it; None: this server


@dataclass
class RunResult:
    models: dict[int, ModelProgress]
    metrics_iters: list[int]
    started: datetime.datetime
    ended: datetime.datetime
    executor: str
    hops: list[HopRecord]


LAST_HOPS: list[HopRecord] = []  # the last run's hops in this session, for last_fit_hops()


@dataclass(frozen=True)
class MemoryPlan:
    use_caching: bool
    # Evaluation visits the segments in turn as training does, so that one segment's examples at a
    # time are in memory (a single model read from the table on every hop: madlib_keras_fit).
    one_segment_at_a_time: bool = False


def devices_for(spec: RunSpec) -> list[placement.WorkerDevice]:
    found = placement.parse_nvidia_smi_memory(gpus.nvidia_gpu_memory()) if spec.use_gpus else []
    return placement.place(len(spec.source.segments), found, spec.use_gpus)


def train(db, spec: RunSpec, on_final: Callable | None = None) -> RunResult:
    """Run every iteration; the run's data and models are gone from its backends when this returns or
    raises (and its workers too, when it raises). ``on_final(mst_key, model)``: called once a model's
    state is final (its last training hop came back), while workers go on with the run's other hops
    (model_table.ModelTable.writer: its row is written then)."""
    LAST_HOPS.clear()
    keras2_notice(db, spec)
    for model in spec.models:  # before anything starts; each backend checks again (segment.server._register)
        custom_functions.require_callbacks_allowed(db, model.fit_params, _fit_params_where(spec, model))
    devices = devices_for(spec)
    tables = {"train": spec.source, **({"validation": spec.validation} if spec.validation else {})}
    set_name = application_name_setter(db)
    models = {m.mst_key: m for m in spec.models}
    driver = None
    when = checkpoints.when(db)
    try:
        with recording(db, spec, not when.never) as recorder, \
                workers.executor_for(db, spec.run_id, spec.schema, tables, models, devices, spec.caller.function,
                                     len(spec.models), [m.model_arch for m in spec.models],
                                     recorder=recorder) as executor:
            initial = initial_weights(executor, spec)
            check_state_sizes(spec, initial)
            plan = plan_memory(db, spec, initial, executor.worker_count)
            recorder.begin()  # in process: the run is sure to start (its workers have begun it already)
            driver = Driver(db, spec, executor, set_name, initial, plan, recorder, when, on_final)
            result = driver.run()
            recorder.ending()
        # after the recorder is done (no checkpoint write of this run is still under way)
        checkpoints.remove(db, spec.schema, driver.key)
        return result
    except Exception as error:
        where = driver.position() if driver is not None else f"while starting, before iteration 1 of {spec.num_iterations}"
        stopped = interruption(error, spec, where, driver.saved_text if driver is not None else None)
        if stopped is None:
            raise
        raise stopped from None
    finally:
        set_name(None)


def _fit_params_where(spec: RunSpec, model: ModelConfig) -> str:
    return "fit_params" if spec.caller.one_model else f"model_selection_table: mst_key {model.mst_key}: fit_params"


def keras2_notice(db, spec: RunSpec) -> None:
    """One NOTICE saying what the models' compile_params had of Keras 2 and what it became
    (params.compile_translations), each translation once with the mst_keys it serves."""
    found: dict[str, list[int]] = {}
    for model in spec.models:
        for note in keras_params.compile_translations(model.compile_params):
            found.setdefault(note, []).append(model.mst_key)
    if not found:
        return
    lines = [note if spec.caller.one_model else f"{note} (mst_key {', '.join(map(str, keys))})"
             for note, keys in found.items()]
    db.notice(f"{spec.caller.function}: compile_params: " + "\n".join(lines))


@contextlib.contextmanager
def recording(db, spec: RunSpec, saves_checkpoints: bool = False, model_keys=None):
    """The run's progress recorder (training.progress), with the run's first snapshot (its workers
    starting; ``model_keys``: its models, default spec's); workers.executor_for asks for its worker
    once the run's workers have theirs. It ends with the run."""
    recorder = progress.start(db, spec.schema, spec.run_id, spec.caller.function,
                              None if spec.output_table is None else str(spec.output_table),
                              workers.driver_check(db, spec.schema), saves_checkpoints)
    recorder.update(*starting_snapshot(spec.num_iterations,
                                       [m.mst_key for m in spec.models] if model_keys is None else model_keys))
    try:
        yield recorder
    finally:
        recorder.close()


def starting_snapshot(iterations: int, model_keys) -> tuple[dict, list[dict]]:
    """fit_progress's run and model columns before anything ran (Recorder.update's arguments)."""
    return ({"iteration": 0, "iterations": iterations, "hops_done": 0, "phase": "starting"},
            [{"mst_key": key, "iterations_done": 0, "status": "starting"} for key in model_keys])


def is_cancel(error: BaseException) -> bool:
    """A cancel or statement_timeout, raised here or passed on from a worker."""
    return getattr(error, "sqlstate", None) == Cancelled.sqlstate


def interruption(error: BaseException, spec: RunSpec, where: str, checkpoint: str | None = None):
    """The error of a run stopped from outside (a cancel, a Citus worker node's connection lost), saying
    where it got and (``checkpoint``: how far its last checkpoint got, if it saved one) how to resume;
    None for any other error."""
    reason = re.sub(r"^spiexceptions\.\w+: ", "", str(error).strip())  # as Keras passes it on
    again = f"call {spec.caller.function} again with the same arguments to resume from it"
    if is_cancel(error):
        hint = None if checkpoint is None else f"Its checkpoint {checkpoint} stays: {again}."
        return Cancelled(f"{spec.caller.function}: cancelled {where}: {reason}; nothing was written", hint=hint)
    if isinstance(error, executors.SegmentFailed) and error.sqlstate.startswith("08"):  # connection_exception
        hint = (f"Its checkpoint {checkpoint} stays: once the node is back, {again}." if checkpoint is not None else
                f"Once the node is back, call {spec.caller.function} again with the same arguments: it resumes "
                "from this run's last checkpoint if one was saved (madlib_dl.checkpoint_every, checkpoint_minutes).")
        return ConnectionLost(f"{spec.caller.function}: stopped {where}: {reason}; nothing was written", hint=hint)
    return None


def initial_weights(executor, spec: RunSpec) -> dict[int, bytes]:
    """Seeded initial weights of every model_id that does not bring its own (transfer learning, warm
    start), computed once per model_id before any hop, spread over the workers (the same architecture
    and seed give the same weights in every backend)."""
    needed = sorted({m.model_id: m.model_arch for m in spec.models if m.weights is None}.items())
    segments = executor.segments
    calls = [segment_calls.initial_weights_call(segments[i % len(segments)], model_arch,
                                                derive_seed(spec.seed, model_id), model_id)
             for i, (model_id, model_arch) in enumerate(needed)]
    return {c.call.tag: c.weights for c in workers.run_calls(executor, calls)}


def check_state_sizes(spec: RunSpec, initial: dict[int, bytes]) -> None:
    if spec.output_table is not None:
        sizes = {m.model_id: len(m.weights if m.weights is not None else initial[m.model_id]) for m in spec.models}
        stored_state.check_sizes(sizes, spec.output_table, spec.caller.output_argument)


def plan_memory(db, spec: RunSpec, initial: dict[int, bytes], workers: int | None = None) -> MemoryPlan:
    """Refuse a run that does not fit madlib_dl.memory_budget_mb. With use_caching None (fit, whose
    MADlib signature has no such argument) the run caches when the cached run fits, and otherwise
    reads every hop's examples from the table with a NOTICE: one model trains on one segment at a time,
    and evaluation then visits the segments in turn too, so the bound is the largest segment's
    examples plus the model compiled in every worker."""
    sizes = [len(m.weights if m.weights is not None else initial[m.model_id]) for m in spec.models]
    training = {k: s.cache_bytes for k, s in spec.source.segments.items()}
    validation = {k: s.cache_bytes for k, s in spec.validation.segments.items()} if spec.validation else {}
    budget = settings.read(db, settings.MEMORY_BUDGET_MB) << 20
    estimate = memory.estimate(training, validation, sizes, spec.use_caching is not False, workers)
    with settings.naming_the_cap(db, settings.MEMORY_BUDGET_MB):
        if spec.use_caching is not None or estimate.total_bytes <= budget:
            memory.check(estimate, budget)
            return MemoryPlan(estimate.use_caching)
        _check_one_segment(spec, estimate, budget)
    setting, total = settings.MEMORY_BUDGET_MB.name, estimate.total_bytes
    db.notice(f"{spec.caller.function}: caching the examples would need about {memory.format_bytes(total)} but "
              f"{setting} is {budget >> 20} MiB, so every hop reads its segment's buffers from {spec.source.text} "
              f"and evaluation visits one segment at a time (slower); SET {setting} = "
              f"{memory.suggested_budget_mib(total)} to cache them")
    return MemoryPlan(False, one_segment_at_a_time=True)


def _check_one_segment(spec: RunSpec, estimate: memory.MemoryEstimate, budget: int) -> None:
    workers_models = estimate.workers * estimate.model_bytes_per_worker
    needed = estimate.largest_segment_bytes + workers_models
    if needed <= budget:
        return
    size = memory.format_bytes
    raise InvalidArgument(
        f"memory: {spec.caller.function} needs about {size(needed)} even reading one segment at a time (largest "
        f"segment {size(estimate.largest_segment_bytes)}; model {size(estimate.model_bytes_per_worker)} per worker x "
        f"{estimate.workers} workers) but the memory budget {settings.MEMORY_BUDGET_MB.name} is {budget >> 20} MiB",
        hint=f"Raise it, e.g. SET {settings.MEMORY_BUDGET_MB.name} = {memory.suggested_budget_mib(needed)}.")


def application_name_setter(db):
    """A setter for this session's application_name (shown in pg_stat_activity at once); the setting
    is transaction-local, and None puts back the value it had when the run began."""
    original = db.execute("SELECT current_setting('application_name') AS a")[0]["a"]

    def set_name(text: str | None) -> None:
        db.execute("SELECT set_config('application_name', $1, true)", [original if text is None else text[:63]],
                   ["text"])

    return set_name


class Driver:
    def __init__(self, db, spec: RunSpec, executor, set_name, initial_weights: dict[int, bytes], plan: MemoryPlan,
                 recorder: progress.Recorder, when: checkpoints.When, on_final: Callable | None = None):
        self.db, self.spec, self.executor, self.set_name, self.plan = db, spec, executor, set_name, plan
        self.recorder, self.when, self.on_final = recorder, when, on_final
        self.finals: list[int] = []  # models whose state became final, for on_final
        self.metrics_mode = training_metrics.mode(db)
        self.key = checkpoints.run_key(db, spec)  # the current user's: never another role's checkpoint
        self.trained_hops = 0  # of the whole run
        self.model_hops: dict[int, int] = {m.mst_key: 0 for m in spec.models}
        self.models = {m.mst_key: ModelProgress(m, m.weights if m.weights is not None else initial_weights[m.model_id],
                                                m.optimizer_state) for m in spec.models}
        self.segments = sorted(spec.source.segments)
        self.cached: set = set()  # (kind, segment) whose examples the serving backend holds
        self.metrics_iters: list[int] = []
        self.best: tuple[float, int] | None = None
        self.hops: list[HopRecord] = LAST_HOPS
        self.iteration, self.evaluating = 0, False  # where the run is (position)
        self.saved_text: str | None = None  # how far the last checkpoint got (a cancel's hint)
        self.clock = time.monotonic()
        self.tracker = hop_tracker.HopTracker({k: c.images for k, c in spec.source.segments.items()})
        for m in spec.models:
            self.tracker.add_model(m.mst_key, m.fit_params)
        self.iteration_batches = 0  # the tracker's batches done when the iteration began
        executor.on_progress = self._hop_progress

    def position(self) -> str:
        """How far the run got, for a cancel's message."""
        iteration, total = self.iteration, self.spec.num_iterations
        if self.evaluating:
            return f"evaluating after iteration {iteration} of {total}"
        done = sum(1 for h in self.hops if h.kind == "train" and h.iteration == iteration)
        return f"at iteration {iteration} of {total} ({done} of {len(self.models) * len(self.segments)} hops done)"

    def run(self) -> RunResult:
        started = datetime.datetime.now()
        first = self._resume(checkpoints.load(self.db, self.spec.schema, self.key))
        saved_at = time.monotonic()
        for iteration in range(first, self.spec.num_iterations + 1):
            self.iteration, self.evaluating = iteration, False
            where = f"madlib_dl {self.spec.caller.label}: iteration {iteration}/{self.spec.num_iterations}"
            self.set_name(where)
            self.executor.set_progress(where)
            begun = time.monotonic()
            self._train_iteration(iteration)
            trained = time.monotonic() - begun
            if self.spec.metrics_iteration(iteration):
                self.evaluating = True
                self._record(wait=True)
                self._evaluate(iteration, time.monotonic() - self.clock)
                self.metrics_iters.append(iteration)
            self._report(iteration, time.monotonic() - begun, trained)
            if self.when.due(iteration, (time.monotonic() - saved_at) / 60, iteration == self.spec.num_iterations):
                self._save(iteration)
                saved_at = time.monotonic()
        self._finished()
        return RunResult(self.models, self.metrics_iters, started, datetime.datetime.now(), self.executor.name,
                         list(self.hops))

    # -- checkpoints ---------------------------------------------------------------------------------

    def _resume(self, saved: checkpoints.Saved | None) -> int:
        """Continue from a checkpoint of this very run (same arguments); the first iteration to train."""
        if saved is None or set(saved.models) != set(self.models):
            return 1
        for mst_key, model in self.models.items():
            state = saved.models[mst_key]
            model.weights, model.optimizer_state, model.last_segment = (state.weights, state.optimizer_state,
                                                                        state.last_segment)
            model.metrics, model.owns_state = state.metrics, False
        self.metrics_iters = list(saved.metrics_iters)
        per_iteration = len(self.segments)
        self.trained_hops = saved.iteration * per_iteration * len(self.models)
        self.model_hops = {k: saved.iteration * per_iteration for k in self.models}
        elapsed = [m.metrics["training_elapsed"][-1] for m in self.models.values() if m.metrics["training_elapsed"]]
        self.clock -= max(elapsed, default=0.0)  # the metrics' times go on from the checkpoint's
        self.saved_text = f"after iteration {saved.iteration}"
        self.db.notice(f"{self.spec.caller.function}: resuming from the checkpoint after iteration {saved.iteration} "
                       f"of {self.spec.num_iterations} (an earlier call with the same arguments did not finish)")
        return saved.iteration + 1

    def _save(self, iteration: int) -> None:
        messages = checkpoints.requests_for(self.spec, self.key, iteration, self.models, self.metrics_iters)
        if self.recorder.checkpoint(messages):
            self.saved_text = f"after iteration {iteration}"
            for model in self.models.values():
                model.owns_state = False  # the recorder holds these states too: the next hop must not overwrite them

    # -- training ------------------------------------------------------------------------------------

    def _train_iteration(self, iteration: int) -> None:
        # Seeds and the schedule count iterations from the model's first run, so that a warm start
        # continues exactly where the earlier run stopped (iteration_offset: fit's warm start).
        offset = self.spec.iteration_offset
        scheduler = IterationScheduler(list(self.models), self.segments, iteration + offset, self.spec.seed)
        free = list(self.segments)
        self.iteration_batches = self.tracker.batches_done
        self._record()
        while not scheduler.done:
            for hop in scheduler.assign(sorted(free)):
                free.remove(hop.segment)
                self.executor.submit(self._fit_call(TrainHop(iteration, hop.model, hop.segment)))
                # The state went with the hop; the model's next state is what comes back. Not keeping
                # both halves the driver's memory for large models.
                model = self.models[hop.model]
                model.weights = model.optimizer_state = None
            self._finished()  # while the workers train
            for completed in self.executor.wait():
                hop = completed.call.tag
                scheduler.finish(Hop(hop.mst_key, hop.segment, hop.iteration + offset))
                free.append(hop.segment)
                self._trained(completed)
        for model in self.models.values():
            model.end_iteration()

    def _fit_call(self, hop: TrainHop):
        model = self.models[hop.mst_key]
        read = self._reads(("train", hop.segment))
        return segment_calls.fit_call(
            self.spec.source, hop, self.spec.run_id, (model.weights, model.optimizer_state),
            seed=derive_seed(self.spec.seed, hop.mst_key, hop.iteration + self.spec.iteration_offset, hop.segment),
            use_caching=self.plan.use_caching, read_table=read, is_final_call=False, overwrite_state=model.owns_state)

    def _reads(self, key) -> bool:
        """Whether this call must read the table; with caching only the first call per segment does."""
        if not self.plan.use_caching:
            return True
        if key in self.cached:
            return False
        self.cached.add(key)  # one call at a time per backend: the next one finds the cache filled
        return True

    def _trained(self, completed) -> None:
        hop = completed.call.tag
        self.tracker.ended(completed.call.segment, hop.mst_key, hop.segment)
        model = self.models[hop.mst_key]
        model.trained(completed, hop.segment)
        if hop.iteration == self.spec.num_iterations and len(model.hop_results) == len(self.segments):
            self.finals.append(hop.mst_key)
        self.hops.append(hop_record("train", hop, completed, self.executor.threads))
        self.trained_hops += 1
        self.model_hops[hop.mst_key] += 1
        self._record()

    def _finished(self) -> None:
        """Hand the models whose state became final to on_final (a model's row written while the
        workers train others or evaluate; the driver would only wait for them meanwhile)."""
        finals, self.finals = self.finals, []
        for mst_key in finals:
            if self.on_final is not None:
                begun, model = time.monotonic(), self.models[mst_key]
                size = sum(len(s) for s in (model.weights, model.optimizer_state) if s is not None)
                self.on_final(mst_key, model)
                whose = "the model's" if self.spec.caller.one_model else f"mst_key {mst_key}'s"
                self.db.debug(f"{self.spec.caller.function}: {whose} final state written "
                              f"({memory.format_bytes(size)} in {time.monotonic() - begun:.2f} s)")

    # -- metrics -------------------------------------------------------------------------------------

    def _evaluate(self, iteration: int, trained_at: float) -> None:
        """The iteration's metrics: an evaluation of every model on the validation table, and on the
        training table when the mode asks for it (else the hops' running means, as of ``trained_at``)."""
        final = iteration == self.spec.num_iterations
        evaluated = training_metrics.evaluates_training_table(self.metrics_mode, final)
        kinds = ([("train", self.spec.source)] if evaluated else []) + \
            ([("validation", self.spec.validation)] if self.spec.validation else [])
        results, finished = self._evaluations(iteration, kinds) if kinds else ({}, {})
        for model in self.models.values():
            if not evaluated:
                model.add_metrics("train", model.running, trained_at)
            for kind, _ in kinds:
                model.add_metrics(kind, segment_means.combine(results[(kind, model.config.mst_key)]), finished[kind])

    def _evaluations(self, iteration: int, kinds: list) -> tuple[dict, dict]:
        """Every model on every segment of each table: the per-segment results by (kind, mst_key), and
        when each kind's last evaluation came back (seconds on the run's clock)."""
        calls = []
        for kind, table in kinds:
            for segment in sorted(table.segments):
                worker = segment if segment in self.segments else self.segments[segment % len(self.segments)]
                for mst_key in self.models:
                    calls.append((worker, EvaluateHop(iteration, mst_key, segment, kind), table))
        segment_call_list = self._evaluation_calls(calls, iteration == self.spec.num_iterations)
        if self.plan.one_segment_at_a_time:
            completions = [c for call in segment_call_list
                           for c in workers.run_calls(self.executor, [call], self._finished, self._evaluated)]
        else:
            completions = workers.run_calls(self.executor, segment_call_list, self._finished, self._evaluated)
        results: dict = {}
        finished: dict = {}
        for completed in completions:
            hop = completed.call.tag
            results.setdefault((hop.kind, hop.mst_key), []).append(segment_means.from_row(hop.segment, completed.row))
            finished[hop.kind] = time.monotonic() - self.clock
            self.hops.append(hop_record(f"evaluate {hop.kind}", hop, completed, self.executor.threads))
        return results, finished

    def _evaluation_calls(self, calls: list, final: bool) -> list:
        """The calls of an evaluation: with caching, from the run's cache (the run's last call on a
        worker drops it); without, each segment is read once for all models (the calls of one segment
        follow each other on its worker: the first reads and keeps its examples, the last drops them),
        so evaluating M models costs one pass over the table, not M."""
        if self.plan.use_caching:
            last = {worker: index for index, (worker, _, _) in enumerate(calls)}
            return [segment_calls.evaluate_call(table, hop, worker, self.spec.run_id,
                                                self.models[hop.mst_key].weights, True,
                                                self._reads((hop.kind, hop.segment)), final and last[worker] == index)
                    for index, (worker, hop, table) in enumerate(calls)]
        group = [(hop.kind, hop.segment) for _, hop, _ in calls]
        return [segment_calls.evaluate_call(table, hop, worker, self.spec.run_id, self.models[hop.mst_key].weights,
                                            True, index == 0 or group[index - 1] != group[index],
                                            index == len(calls) - 1 or group[index + 1] != group[index])
                for index, (worker, hop, table) in enumerate(calls)]

    # -- progress ------------------------------------------------------------------------------------

    def _evaluated(self, completed) -> None:
        """An evaluation call came back: its progress reports no longer count."""
        self.tracker.ended(completed.call.segment, completed.call.tag.mst_key)

    def _hop_progress(self, call, report: dict) -> None:
        """A running hop's progress report (training or evaluation): fit_progress shows it."""
        tag = call.tag
        self.tracker.progressed(call.segment, tag.mst_key, isinstance(tag, TrainHop), report)
        self._record()

    def _record(self, wait: bool = False) -> None:
        """The run's state for fit_progress (as every iteration begins, after every hop, as running hops
        report, and when evaluation begins)."""
        per_iteration = len(self.models) * len(self.segments)
        done_now = self.trained_hops - per_iteration * (self.iteration - 1)
        batches = sum(self.tracker.model_batches(k) for k in self.models)  # of an iteration
        batches_now = self.tracker.batches_done - self.iteration_batches + self.tracker.running_batches()
        elapsed = time.monotonic() - self.clock
        if batches:
            eta = progress.eta_seconds(elapsed, batches * (self.iteration - 1) + batches_now,
                                       batches * self.spec.num_iterations)
        else:  # no batch to count (epochs = initial_epoch): hops
            eta = progress.eta_seconds(elapsed, self.trained_hops, per_iteration * self.spec.num_iterations)
        run = {"iteration": self.iteration, "iterations": self.spec.num_iterations, "hops_done": done_now,
               "hops_total": per_iteration, "phase": "evaluating" if self.evaluating else "training",
               "eta_seconds": eta, "batches_done": batches_now, "batches_total": batches,
               "examples_per_second": self.tracker.examples_per_second()}
        self.recorder.update(run, [self._model_progress(k, m) for k, m in self.models.items()], wait)

    def _model_progress(self, mst_key: int, model: ModelProgress) -> dict:
        m = model.metrics
        return {"mst_key": mst_key, "iterations_done": self.model_hops[mst_key] // len(self.segments),
                "training_loss": model.current_loss(), "validation_metric": m["validation_metric"][-1] if m["validation_metric"] else None,
                "status": "training", **self.tracker.model_fields(mst_key)}

    def _report(self, iteration: int, seconds: float, trained: float) -> None:
        evaluated = bool(self.metrics_iters) and self.metrics_iters[-1] == iteration
        lines, losses = [], {}
        for mst_key, model in sorted(self.models.items()):
            if evaluated:
                losses[mst_key] = model.metrics["training_loss"][-1]
                lines.append(f"  mst_key={mst_key}: {metrics_text(model)}")
            else:
                losses[mst_key] = model.running.loss if model.running is not None else float("nan")
        head = (f"{self.spec.caller.function}: iteration {iteration}/{self.spec.num_iterations} took {seconds:.2f} s "
                f"(training {trained:.2f} s, {self.executor.name}); ")
        if self.spec.caller.one_model:
            (model,) = self.models.values()
            (loss,) = losses.values()
            self.db.notice(head + (metrics_text(model) if evaluated else
                                   f"training loss={loss:.6g} (mean over this iteration's hops)"))
            return
        for mst_key, loss in losses.items():
            if loss == loss and (self.best is None or loss < self.best[0]):
                self.best = (loss, mst_key)
        best = f"best training loss so far {self.best[0]:.6g} (mst_key {self.best[1]})" if self.best else \
            "no finite training loss yet"
        self.db.notice("\n".join([head + best] + lines))


def hop_record(kind: str, hop, completed, threads: int | None = None) -> HopRecord:
    """The log entry of a completed hop or evaluation (``hop``: a TrainHop or EvaluateHop; ``threads``:
    the executor's threads per worker)."""
    row = completed.row
    wall = completed.received - completed.submitted
    return HopRecord(kind, hop.iteration, hop.mst_key, hop.segment, row.get("pid"), row["started"], row["ended"],
                     row["seconds"], max(0.0, wall - row["seconds"]), row["buffers_read"], row["images"], row["loss"],
                     row.get("rss_bytes"), row.get("peak_rss_bytes"), row.get("shared_rss_bytes"), row.get("metric"),
                     threads, row.get("node"))


def metrics_text(model: ModelProgress) -> str:
    m = model.metrics
    text = f"training loss={m['training_loss'][-1]:.6g}"
    if m["training_metric"][-1] is not None:
        text += f" metric={m['training_metric'][-1]:.6g}"
    if m["validation_loss"]:
        text += f"; validation loss={m['validation_loss'][-1]:.6g}"
        if m["validation_metric"][-1] is not None:
            text += f" metric={m['validation_metric'][-1]:.6g}"
    return text
