"""The driver of an AutoML run: it runs what a policy (madlib_dl.automl.policy) decides, on the same
workers, hops and evaluations as fit_multiple, without a barrier between models.

Each model trains to the iteration its policy asked for, is then evaluated (on the validation table
when there is one, and on the training table as madlib_dl.training_metrics says: training.training_metrics;
a model's final iteration is the most any configuration trains), and its loss goes
to the policy, which says whether it continues, stops, or what starts instead. Whenever a worker is
free and no model can use it, the policy is asked for more work (ASHA promotes or starts a model
there). Models the policy creates after the run began send their constants with their first call to
each backend.

Checkpoints (training.checkpoints): when one is due, no new hop starts; once nothing runs, every
model's state, the schedule and the policy's log of calls (automl.replay) are saved, and the run goes
on. A resumed run replays the log into a fresh policy with the same seed (drawn, and saved, when
random_state is NULL) and continues from the saved schedule, so in process it ends as the uninterrupted
run would.
"""

from __future__ import annotations

import datetime
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from madlib_dl.automl import replay
from madlib_dl.automl.policy import Continue, Decision, Policy, Start, Stop
from madlib_dl.training import checkpoints, driver, hop_tracker, segment_calls, segment_means, training_metrics
from madlib_dl.training.model_schedule import Evaluated, IterationDone, ModelScheduler, Task
from madlib_dl.training.segment_calls import EvaluateHop, TrainHop
from madlib_dl.training.spec import ModelConfig, RunSpec, derive_seed

MAX_DECISION_ROUNDS = 10_000  # more() answering without ever making work runnable is a policy bug


@dataclass(frozen=True)
class AutomlRun:
    """``spec.models`` holds one stand-in per model_id (its architecture and transfer weights), for the
    memory plan and the initial weights; ``model_archs``: model_id -> (architecture, weights or None)."""
    spec: RunSpec
    model_archs: dict
    method: str                           # the policy's: 'hyperband', 'hyperopt', 'asha'
    make_policy: Callable[[int], Policy]  # a fresh policy drawing with this random_state
    random_state: int | None              # the caller's; None: one is drawn (and kept in checkpoints)
    max_models: int
    identity: dict                        # JSON values: what else decides the run (its search), for run_key


@dataclass(frozen=True)
class Saving:
    key: checkpoints.RunKey               # checkpoints.run_key
    when: checkpoints.When
    saved: checkpoints.Saved | None       # the checkpoint to resume from


def draw_random_state() -> int:
    """A seed that random_state (an SQL INTEGER) could have given, so the same run can be called with it."""
    return secrets.randbelow(2 ** 31)


@dataclass
class Trial:
    """How far a configuration got, for the _info table."""
    bracket: int | None
    rung: int
    until: int
    done: int = 0             # iterations trained
    status: str = "training"  # 'training' until the run ends; then 'done' or 'stopped'


@dataclass
class AutomlResult:
    run: driver.RunResult  # its models' metrics_iters are each model's own
    trials: dict           # mst_key -> Trial
    metrics_iters: dict    # mst_key -> iterations evaluated


class AutomlDriver:
    def __init__(self, db, automl: AutomlRun, executor, set_name, initial_weights: dict, plan: driver.MemoryPlan,
                 recorder, saving: Saving):
        self.db, self.spec, self.automl, self.recorder, self.saving = db, automl.spec, automl, recorder, saving
        self.archs, self.executor, self.set_name, self.plan = automl.model_archs, executor, set_name, plan
        self.random_state = automl.random_state if automl.random_state is not None else draw_random_state()
        self.policy: replay.LoggedPolicy | None = None  # made by run: fresh, or the checkpoint's replayed
        self.initial = initial_weights
        self.segments = sorted(self.spec.source.segments)
        self.scheduler = ModelScheduler(self.segments, self.spec.seed)
        self.models: dict[int, driver.ModelProgress] = {}
        self.trials: dict[int, Trial] = {}
        self.metrics_iters: dict[int, list] = {}
        self.known: set = set()     # (worker, mst_key) whose constants that worker's backend has
        self.cached: set = set()    # (worker, kind, segment) whose examples that backend holds
        self.pending: dict = {}     # mst_key -> per-segment evaluation results of the running evaluation
        self.hops: list = driver.LAST_HOPS
        self.trained_hops = 0
        self.clock = time.monotonic()
        self.tracker = hop_tracker.HopTracker({k: c.images for k, c in self.spec.source.segments.items()})
        executor.on_progress = self._hop_progress
        self.metrics_mode = training_metrics.mode(db)
        # checkpoints: numbered on from the one found; models whose rows in the last one are current
        self.sequence = saving.saved.iteration if saving.saved else 0
        self.in_checkpoint: set = set()
        self.changed: set = set()   # models trained or evaluated since the last checkpoint
        self.since, self.saved_at = 0, time.monotonic()  # model iterations ended, and when, since then
        self.draining = False       # a checkpoint is due: no hop starts until nothing runs
        self.saved_text: str | None = None  # how far the last checkpoint got (a cancel's hint)

    def position(self) -> str:
        done = sum(1 for t in self.trials.values() if t.status != "training")
        return f"after {self.trained_hops} hops ({len(self.trials)} configurations started, {done} of them finished)"

    def run(self) -> AutomlResult:
        started = datetime.datetime.now()
        if not self._resume():
            self.policy = replay.LoggedPolicy(self.automl.make_policy(self.random_state))
            self._apply(self.policy.start())
        asked = rounds = 0
        while True:
            if self.draining and self.scheduler.quiet:
                self._save()
            for task in self.scheduler.assign(self.scheduler.free_workers(), training=not self.draining):
                self.executor.submit(self._call(task))
            idle = len(self.scheduler.free_workers())
            if idle and not asked and not self.draining:
                decisions = self.policy.more(idle)
                asked = not decisions
                rounds += 1
                if rounds > MAX_DECISION_ROUNDS:
                    raise RuntimeError(f"{self.policy.method}: the policy keeps deciding without making work")
                if decisions:
                    self._apply(decisions)
                    self._promoted([d for d in decisions if isinstance(d, Continue)])
                    continue
            if not self.scheduler.running:
                break
            for completed in self.executor.wait():
                self._completed(completed)
            asked = rounds = 0
        for key, trial in self.trials.items():
            if trial.status == "training":  # waiting for a promotion that never came
                trial.status = "stopped"
        result = driver.RunResult(self.models, [], started, datetime.datetime.now(), self.executor.name,
                                  list(self.hops))
        return AutomlResult(result, self.trials, self.metrics_iters)

    # -- decisions -------------------------------------------------------------------------------

    def _apply(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            if isinstance(decision, Start):
                self._start(decision)
            elif isinstance(decision, Continue):
                trial = self._trial(decision.key)
                trial.until, trial.rung = decision.until, decision.rung
                self.scheduler.train(decision.key, trial.done, decision.until)
            elif isinstance(decision, Stop):
                self._trial(decision.key).status = decision.status
            else:
                raise TypeError(f"not a policy decision: {decision!r}")

    def _start(self, start: Start) -> None:
        if start.key in self.models:
            raise ValueError(f"{self.policy.method}: mst_key {start.key} was started already")
        self.models[start.key] = self._model(start)
        self.trials[start.key] = Trial(start.bracket, start.rung, start.until)
        self.metrics_iters[start.key] = []
        self.scheduler.train(start.key, 0, start.until)

    def _model(self, start: Start) -> driver.ModelProgress:
        config = start.config
        model_arch, weights = self.archs[config.model_id]
        model = ModelConfig(start.key, config.model_id, model_arch, config.compile_params.text,
                            config.fit_params.text, weights, object_table=self.automl.spec.models[0].object_table)
        self.tracker.add_model(start.key, model.fit_params)
        return driver.ModelProgress(model, weights if weights is not None else self.initial[config.model_id], None)

    def _trial(self, key: int) -> Trial:
        trial = self.trials.get(key)
        if trial is None:
            raise ValueError(f"{self.policy.method}: decision about mst_key {key}, which was never started")
        return trial

    # -- checkpoints -----------------------------------------------------------------------------

    def _save(self) -> None:
        """Every model's state (those that changed since the last checkpoint), the schedule and the
        policy's log, while nothing runs."""
        self.draining, self.since, self.saved_at = False, 0, time.monotonic()
        written = {k: m for k, m in self.models.items() if k in self.changed or k not in self.in_checkpoint}
        kept = checkpoints.Kept(self.sequence, frozenset(self.models) - frozenset(written))
        iterations = sum(t.done for t in self.trials.values())
        state = {"random_state": self.random_state, "policy": self.policy.log, "schedule": self.scheduler.snapshot(),
                 "trials": [[k, t.bracket, t.rung, t.until, t.done, t.status] for k, t in sorted(self.trials.items())],
                 "metrics_iters": sorted(self.metrics_iters.items()), "trained_hops": self.trained_hops,
                 "elapsed": time.monotonic() - self.clock, "model_iterations": iterations}
        messages = checkpoints.requests_for(self.spec, self.saving.key, self.sequence + 1, written, [], state, kept)
        if not self.recorder.checkpoint(messages):
            return
        self.sequence += 1
        self.in_checkpoint, self.changed = set(self.models), set()
        for model in written.values():
            model.owns_state = False  # the recorder holds these states too: the next hop must not overwrite them
        self.saved_text = self._progress_text(iterations)

    def _resume(self) -> bool:
        """Continue from the checkpoint of this very run (same arguments), if there is one that replays."""
        saved = self.saving.saved
        if saved is None:
            return False
        try:
            restored = self._restored(saved)
        except (replay.NotReplayable, KeyError, IndexError, TypeError, ValueError) as error:
            self.db.notice(f"{self.spec.caller.function}: the checkpoint of an earlier call with the same arguments "
                           f"is not used ({error}); the run starts over")
            return False
        self.policy, self.random_state, self.models, self.trials, self.metrics_iters = restored
        state = saved.state
        self.scheduler.restore(state["schedule"])
        self.trained_hops = state["trained_hops"]
        self.clock -= state["elapsed"]  # the metrics' times go on from the checkpoint's
        self.in_checkpoint = set(self.models)
        self.saved_text = self._progress_text(state["model_iterations"])
        self.db.notice(f"{self.spec.caller.function}: resuming from the checkpoint {self.saved_text} (an earlier "
                       "call with the same arguments did not finish)")
        return True

    def _restored(self, saved: checkpoints.Saved):
        """The policy replayed and every model and trial as the checkpoint has them; raises when it
        does not fit together."""
        state = saved.state
        if not isinstance(state, dict):
            raise ValueError("it holds no AutoML state")
        random_state = state["random_state"]
        policy, decided = replay.replay(self.automl.make_policy(random_state), state["policy"])
        starts = {d.key: d for d in replay.started(decided)}
        trials = {key: Trial(bracket, rung, until, done, status)
                  for key, bracket, rung, until, done, status in state["trials"]}
        if set(starts) != set(saved.models) or set(trials) != set(starts):
            raise replay.NotReplayable("its models are not those its policy started")
        models = {}
        for key, start in sorted(starts.items()):
            model, kept = self._model(start), saved.models[key]
            model.weights, model.optimizer_state, model.last_segment = (kept.weights, kept.optimizer_state,
                                                                        kept.last_segment)
            model.metrics, model.hop_results = kept.metrics, list(kept.hop_results)
            models[key] = model
        metrics_iters = {key: list(iters) for key, iters in state["metrics_iters"]}
        return policy, random_state, models, trials, metrics_iters

    def _progress_text(self, model_iterations: int) -> str:
        finished = sum(1 for t in self.trials.values() if t.status != "training")
        return (f"after {model_iterations} model iterations ({len(self.trials)} configurations started, "
                f"{finished} of them finished)")

    # -- calls -----------------------------------------------------------------------------------

    def _call(self, task: Task):
        model = self.models[task.model]
        constants = None
        if (task.worker, task.model) not in self.known:
            self.known.add((task.worker, task.model))
            constants = segment_calls.model_constants(model.config)
        if task.evaluate is None:
            hop = TrainHop(task.iteration, task.model, task.worker)
            call = segment_calls.fit_call(
                self.spec.source, hop, self.spec.run_id, (model.weights, model.optimizer_state),
                seed=derive_seed(self.spec.seed, task.model, task.iteration, task.worker),
                use_caching=self.plan.use_caching, read_table=self._reads(task.worker, "train", task.worker),
                is_final_call=False, overwrite_state=model.owns_state, constants=constants, tag=task)
            model.weights = model.optimizer_state = None  # the state went with the hop
            return call
        table = self.spec.source if task.evaluate == "train" else self.spec.validation
        hop = EvaluateHop(task.iteration, task.model, task.segment, task.evaluate)
        return segment_calls.evaluate_call(table, hop, task.worker, self.spec.run_id, model.weights,
                                           self.plan.use_caching,
                                           self._reads(task.worker, task.evaluate, task.segment),
                                           False, constants=constants, tag=task)

    def _reads(self, worker: int, kind: str, segment: int) -> bool:
        if not self.plan.use_caching:
            return True
        key = (worker, kind, segment)
        if key in self.cached:
            return False
        self.cached.add(key)
        return True

    def _completed(self, completed) -> None:
        task: Task = completed.call.tag
        self.tracker.ended(completed.call.segment, task.model, task.worker if task.evaluate is None else None)
        model = self.models[task.model]
        self.changed.add(task.model)
        if task.evaluate is None:
            model.trained(completed, task.worker)
            self.hops.append(driver.hop_record("train", TrainHop(task.iteration, task.model, task.worker), completed,
                                             self.executor.threads))
            self.trained_hops += 1
        else:
            hop = EvaluateHop(task.iteration, task.model, task.segment, task.evaluate)
            self.pending.setdefault(task.model, {}).setdefault(task.evaluate, []).append(
                segment_means.from_row(task.segment, completed.row))
            self.hops.append(driver.hop_record(f"evaluate {task.evaluate}", hop, completed, self.executor.threads))
        event = self.scheduler.finish(task)
        if isinstance(event, IterationDone):
            self._iteration_done(event)
        elif isinstance(event, Evaluated):
            self._evaluated(event)
        self._record()

    def _hop_progress(self, call, report: dict) -> None:
        """A running hop's progress report: fit_progress shows it."""
        task: Task = call.tag
        self.tracker.progressed(call.segment, task.model, task.evaluate is None, report)
        self._record()

    def _record(self) -> None:
        """The run's state for fit_progress: every configuration started so far (the total is the
        method's to decide, so there is no ETA, and batches count up without a total)."""
        trained = self.trained_hops
        models = []
        for key, trial in self.trials.items():
            m = self.models[key].metrics
            models.append({"mst_key": key, "iterations_done": trial.done,
                           "training_loss": self.models[key].current_loss(),
                           "validation_metric": m["validation_metric"][-1] if m["validation_metric"] else None,
                           "status": trial.status, **self.tracker.model_fields(key)})
        run = {"iteration": max((t.done for t in self.trials.values()), default=0),
               "iterations": self.spec.num_iterations, "hops_done": trained, "hops_total": None,
               "phase": self.policy.method, "eta_seconds": None,
               "batches_done": self.tracker.batches_done + self.tracker.running_batches(), "batches_total": None,
               "examples_per_second": self.tracker.examples_per_second()}
        self.recorder.update(run, models)

    def _iteration_done(self, event: IterationDone) -> None:
        trial = self.trials[event.model]
        trial.done = event.iteration
        self.since += 1
        if self.recorder.saves and self.saving.when.due_after(self.since, (time.monotonic() - self.saved_at) / 60):
            self.draining = True
        model = self.models[event.model]
        model.end_iteration()
        frequency = self.spec.metrics_compute_frequency
        if not (event.iteration >= trial.until or (frequency and event.iteration % frequency == 0)):
            return
        final = event.iteration >= self.spec.num_iterations  # the most any configuration trains
        evaluated = training_metrics.evaluates_training_table(self.metrics_mode, final)
        if not evaluated:  # the iteration's running means stand for the training table's
            self.pending.setdefault(event.model, {})["train"] = list(model.running_hops)
        tasks = self._evaluation_tasks(evaluated)
        if tasks:
            self.scheduler.evaluate(event.model, tasks)
        else:
            self._evaluated(Evaluated(event.model, event.iteration))

    def _evaluation_tasks(self, training_table: bool) -> list[tuple[str, int, int]]:
        tables = ([("train", self.spec.source)] if training_table else []) + \
            ([("validation", self.spec.validation)] if self.spec.validation else [])
        return [(kind, segment, segment if segment in self.segments else self.segments[segment % len(self.segments)])
                for kind, table in tables for segment in sorted(table.segments)]

    def _evaluated(self, event: Evaluated) -> None:
        key, model = event.model, self.models[event.model]
        elapsed = time.monotonic() - self.clock
        for kind, per_segment in self.pending.pop(key).items():
            model.add_metrics(kind, segment_means.combine(per_segment), elapsed)
        self.metrics_iters[key].append(event.iteration)
        trial = self.trials[key]
        if event.iteration < trial.until:
            self.scheduler.resume(key)
            return
        loss = model.metrics["validation_loss" if self.spec.validation else "training_loss"][-1]
        where = f"bracket {trial.bracket}, rung {trial.rung}" if trial.bracket is not None else f"rung {trial.rung}"
        decisions = self.policy.report(key, event.iteration, loss if loss is not None else math.nan)
        self._apply(decisions)
        self._notice(key, event.iteration, decisions, where)

    def _promoted(self, promotions: list[Continue]) -> None:
        for decision in promotions:
            self.db.notice(f"{self.spec.caller.function}: mst_key={decision.key} promoted to rung {decision.rung}: "
                           f"trains on to iteration {decision.until}")

    def _notice(self, key: int, iteration: int, decisions: list[Decision], where: str) -> None:
        """The model's result at the end of a rung (``where``: the rung it ended) and what was decided."""
        said = {d.key: d for d in decisions if not isinstance(d, Start)}
        after = said.get(key)
        outcome = ("continues to iteration " + str(after.until) if isinstance(after, Continue) else
                   after.status if isinstance(after, Stop) else "waits")
        others = [d.key for d in said.values() if d.key != key]
        finished = sum(1 for t in self.trials.values() if t.status != "training")
        progress = (f"madlib_dl {self.spec.caller.label}: {self.policy.method}, {finished} of {len(self.trials)} "
                    "configurations finished")
        self.set_name(progress)
        self.executor.set_progress(progress)
        self.db.notice(f"{self.spec.caller.function}: mst_key={key} ({where}) after iteration {iteration}: "
                       f"{driver.metrics_text(self.models[key])}; {outcome}"
                       + (f" (decided too: mst_key {', '.join(map(str, sorted(others)))})" if others else ""))


def train(db, automl: AutomlRun) -> AutomlResult:
    """Run the policy to its end; the run's data and models leave the workers whatever happens."""
    spec = automl.spec
    driver.LAST_HOPS.clear()
    devices = driver.devices_for(spec)
    tables = {"train": spec.source, **({"validation": spec.validation} if spec.validation else {})}
    set_name = driver.application_name_setter(db)
    when = checkpoints.when(db)
    key = checkpoints.run_key(db, spec, automl.identity)  # the current user's, as fit's
    saving = Saving(key, when, checkpoints.load(db, spec.schema, key))
    runner = None
    try:
        with driver.recording(db, spec, not when.never, model_keys=[]) as recorder, \
                driver.workers.executor_for(db, spec.run_id, spec.schema, tables, {}, devices, spec.caller.function,
                                            automl.max_models, [m.model_arch for m in spec.models],
                                            custom=spec.models[0].object_table is not None,
                                            recorder=recorder) as executor:
            initial = driver.initial_weights(executor, spec)
            driver.check_state_sizes(spec, initial)
            memory_spec = replace(spec, models=tuple(spec.models[i % len(spec.models)] for i in range(automl.max_models)))
            plan = driver.plan_memory(db, memory_spec, initial, executor.worker_count)
            recorder.begin()  # the run is sure to start (as fit's)
            runner = AutomlDriver(db, automl, executor, set_name, initial, plan, recorder, saving)
            set_name(f"madlib_dl {spec.caller.label}: {automl.method}")
            result = runner.run()
            recorder.ending()
        checkpoints.remove(db, spec.schema, key)  # after the recorder is done, as fit's
        return result
    except Exception as error:
        where = runner.position() if runner is not None else "while starting"
        stopped = driver.interruption(error, spec, where, runner.saved_text if runner else None)
        if stopped is None:
            raise
        raise stopped from None
    finally:
        set_name(None)
