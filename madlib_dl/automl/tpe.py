"""MADlib's 'hyperopt' method: each configuration is proposed by a sampler that learns from the results
so far (TPE, the Tree-structured Parzen Estimator, or plain random sampling), through Optuna's
ask-and-tell interface; every model trains num_iterations and is done.

The search space is asked define-by-run, in grid.draw's order: the model id, the optimizer dict (its
index in optimizer_params_list), that dict's optimizer name and arguments, the other compile keys, the
fit keys. Choices are asked as the *index* of the choice (Optuna's categoricals hold only scalars, and
a choice may be a list such as metrics); distributions as floats, log-scaled for 'log', and for
'log_near_one' as 1 - x with x log-scaled in [1 - high, 1 - low].

A proposal equal to an earlier configuration is kept, as a new model: TPE concentrates where results
were good, so repeats are part of how it works, and in a small discrete space a redraw could loop.
MADlib runs hyperopt in batches of one configuration per segment; here the first batch is that size
(``start``) and later configurations are asked one at a time as workers free up (``more``), each
sampled with what has been told by then (Optuna's constant liar keeps running trials in mind).
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import Trial, TrialState

from madlib_dl.automl.policy import Decision, Start, Stop
from madlib_dl.errors import InvalidArgument
from madlib_dl.model_selection import grid
from madlib_dl.model_selection.configs import Config
from madlib_dl.model_selection.grid import Param, SearchSpace

ARGUMENT = "automl_params"
ALGORITHMS = ("tpe", "rand")


def sampler(algorithm: str, random_state: int | None) -> optuna.samplers.BaseSampler:
    seed = None if random_state is None else random_state % 2 ** 32  # as grid.generator folds it
    if algorithm == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if algorithm == "rand":
        return optuna.samplers.RandomSampler(seed=seed)
    raise InvalidArgument(f"{ARGUMENT}: algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")


def _value(trial: Trial, name: str, param: Param):
    """One key's value, asked of the trial under ``name``."""
    d = param.distribution
    if d is None:
        return param.choices[trial.suggest_categorical(name, list(range(len(param.choices))))]
    if d.kind == "log_near_one":
        value = 1.0 - trial.suggest_float(name, 1.0 - d.high, 1.0 - d.low, log=True)
    else:
        value = trial.suggest_float(name, d.low, d.high, log=d.kind == "log")
    return min(max(value, d.low), d.high)  # 1 - x may round just outside the bounds


def suggest(trial: Trial, space: SearchSpace) -> Config:
    """The configuration the trial proposes (parameter names are unique per optimizer dict, so each
    dict's arguments are their own dimensions)."""
    model_id = trial.suggest_categorical("model_id", list(space.model_ids))
    index = trial.suggest_categorical("optimizer_params_list", list(range(len(space.compile.optimizers))))
    entry = space.compile.optimizers[index]
    name = _value(trial, f"{index}:optimizer", entry.names)
    arguments = [(p.name, _value(trial, f"{index}:{p.name}", p)) for p in entry.arguments]
    others = [(p.name, _value(trial, f"compile:{p.name}", p)) for p in space.compile.others]
    fit = [(p.name, _value(trial, f"fit:{p.name}", p)) for p in space.fit.params]
    return grid.config_from(model_id, name, arguments, others, fit)


class TpePolicy:
    method = "hyperopt"

    def __init__(self, space: SearchSpace, segments: int, num_configs: int = 20, num_iterations: int = 5,
                 algorithm: str = "tpe", random_state: int | None = None):
        if segments < 1:
            raise ValueError(f"segments must be >= 1, got {segments}")
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the server log must not get Optuna's INFO lines
        self.study = optuna.create_study(direction="minimize", sampler=sampler(algorithm, random_state))
        self._space = space
        self.segments = segments
        self.num_configs = num_configs
        self.num_iterations = num_iterations
        self.configs: dict[int, Config] = {}
        self._trials: dict[int, Trial] = {}  # running models' trials

    def start(self) -> list[Decision]:
        return self.more(self.segments)

    def more(self, idle: int) -> list[Decision]:
        return [self._ask() for _ in range(min(idle, self.num_configs - len(self.configs)))]

    def report(self, key: int, iterations: int, loss: float) -> list[Decision]:
        trial = self._trials.pop(key, None)
        if trial is None:
            raise ValueError(f"report of model {key}, which is not training")
        if iterations != self.num_iterations:
            raise ValueError(f"report of model {key} at {iterations} iterations, expected {self.num_iterations}")
        if math.isnan(loss):
            self.study.tell(trial, state=TrialState.FAIL)  # Optuna refuses NaN values; a diverged model failed
        else:
            self.study.tell(trial, float(loss))
        return [Stop(key, "done")]

    def _ask(self) -> Start:
        trial = self.study.ask()
        key = len(self.configs) + 1
        self.configs[key] = suggest(trial, self._space)
        self._trials[key] = trial
        return Start(key, self.configs[key], self.num_iterations)
