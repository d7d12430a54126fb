"""The search spaces of generate_model_configs: the grid dicts, grid expansion and random sampling.

    compile_params_grid: {'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'],
                          'optimizer_params_list': [
                              {'optimizer': ['SGD'], 'lr': [0.0001, 0.001, 'log'], 'momentum': [0.9, 0.99]},
                              {'optimizer': ['Adam'], 'lr': [0.001, 0.01]}]}
    fit_params_grid:     {'batch_size': [32, 64], 'epochs': [1, 2]}

Every value is a list of choices. Each dict of optimizer_params_list is its own sub-space (an optimizer
and its arguments). Inside it, an argument may instead be a distribution ``[low, high, kind]``, which
only random search samples. The dicts are read as Python literals by params.literal (never evaluated).
Entries of optimizer_params_list are counted from 0, as in Python.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from madlib_dl.errors import InvalidArgument, NotSupported
from madlib_dl.keras_runtime import params
from madlib_dl.model_selection import configs
from madlib_dl.model_selection.configs import Config, OptimizerUse

COMPILE_ARG = "compile_params_grid"
FIT_ARG = "fit_params_grid"
OPTIMIZER_LIST = "optimizer_params_list"
# Compile keys outside optimizer_params_list, in the order they are written into generated strings.
COMPILE_GRID_KEYS = ("loss", "metrics", "loss_weights", "weighted_metrics")
LIST_VALUED = ("metrics", "weighted_metrics")  # a bare name choice means a one-element list
DEFAULT_OPTIMIZER = "RMSprop"  # Keras' compile() default, and MADlib's for a dict without 'optimizer'
DISTRIBUTIONS = ("linear", "log", "log_near_one")
SEARCH_TYPES = ("grid", "random")
# Random search redraws a configuration it already has; this many useless draws in a row mean the
# space holds fewer distinct configurations than asked for.
MAX_FUTILE_DRAWS = 1000

COMPILE_EXAMPLE = ("{'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'], "
                   "'optimizer_params_list': [{'optimizer': ['Adam'], 'lr': [0.01, 0.001]}]}")
FIT_EXAMPLE = "{'batch_size': [32, 64], 'epochs': [1, 2]}"
DISTRIBUTION_FORM = "[lower_bound, upper_bound, 'linear' | 'log' | 'log_near_one']"


@dataclass(frozen=True)
class Distribution:
    low: float
    high: float
    kind: str  # one of DISTRIBUTIONS

    def sample(self, rng: np.random.Generator) -> float:
        if self.kind == "linear":
            value = float(rng.uniform(self.low, self.high))
        elif self.kind == "log":
            value = 10.0 ** float(rng.uniform(math.log10(self.low), math.log10(self.high)))
        else:  # log_near_one: log-uniform distance from 1, for momentum-like values such as 0.9 .. 0.999
            value = 1.0 - 10.0 ** float(rng.uniform(math.log10(1 - self.high), math.log10(1 - self.low)))
        return min(max(value, self.low), self.high)  # pow/log rounding must not step outside the range

    def __str__(self) -> str:
        return f"[{self.low!r}, {self.high!r}, {self.kind!r}]"


@dataclass(frozen=True)
class Param:
    """One key of a grid: a list of choices, or (optimizer arguments only) a distribution."""
    name: str  # the name written into generated strings (lr becomes learning_rate)
    choices: tuple = ()
    distribution: Distribution | None = None
    where: str = field(default="", compare=False)  # for error messages

    def draw(self, rng: np.random.Generator) -> Any:
        if self.distribution is not None:
            return self.distribution.sample(rng)
        return self.choices[int(rng.integers(len(self.choices)))]

    def probe_values(self) -> tuple:
        """Values that stand for every possible one when checking: the choices, or both bounds."""
        if self.distribution is not None:
            return (self.distribution.low, self.distribution.high)
        return self.choices

    def first(self) -> Any:
        return self.probe_values()[0]


@dataclass(frozen=True)
class OptimizerEntry:
    names: Param  # canonical Keras class names
    arguments: tuple[Param, ...]
    where: str = field(default="", compare=False)

    def size(self) -> int:
        return len(self.names.choices) * math.prod(len(p.choices) for p in self.arguments)


@dataclass(frozen=True)
class CompileGrid:
    optimizers: tuple[OptimizerEntry, ...]
    others: tuple[Param, ...]  # in COMPILE_GRID_KEYS order


@dataclass(frozen=True)
class FitGrid:
    params: tuple[Param, ...]  # in params.FIT_KEYS order


@dataclass(frozen=True)
class SearchSpace:
    model_ids: tuple[int, ...]
    compile: CompileGrid
    fit: FitGrid

    def grid_size(self) -> int:
        """How many configurations grid search makes, before duplicates collapse."""
        compiles = sum(e.size() for e in self.compile.optimizers) * math.prod(len(p.choices) for p in self.compile.others)
        return len(self.model_ids) * compiles * math.prod(len(p.choices) for p in self.fit.params)


# ---------------------------------------------------------------------------------------------------
# Parsing the grid dicts

def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _grid_dict(text: str | None, argument: str, example: str) -> dict:
    if text is None or not text.strip():
        raise InvalidArgument(f"{argument}: expected a dict such as {example}, "
                              f"got {'NULL' if text is None else 'an empty string'}")
    value = params.literal(text, argument, bare_words=False)
    if not isinstance(value, dict):
        raise InvalidArgument(f"{argument}: expected a dict such as {example}, got {_show(value)}")
    for key in value:
        if not isinstance(key, str):
            raise InvalidArgument(f"{argument}: keys must be parameter names in quotes, got {key!r}")
    return value


def _param(name: str, value: Any, where: str, distributions: bool) -> Param:
    if not isinstance(value, list):
        raise InvalidArgument(f"{where}: values must be given in a list, such as [{_show(value)}], got {_show(value)}")
    if not value:
        raise InvalidArgument(f"{where}: empty list", hint="Give at least one value.")
    distribution = _distribution(value, where)
    if distribution is None:
        return Param(name, tuple(value), where=where)
    if not distributions:
        raise InvalidArgument(f"{where}: {distribution} is a distribution; distributions are accepted for "
                              f"optimizer arguments only (inside {OPTIMIZER_LIST}), give a list of values")
    return Param(name, (), distribution, where)


def _distribution(values: list, where: str) -> Distribution | None:
    """``[low, high, kind]`` -> Distribution; None for a plain list of choices."""
    def is_kind(v):
        return isinstance(v, str) and v.strip().lower() in DISTRIBUTIONS

    shaped = len(values) == 3 and all(_is_number(v) for v in values[:2]) and isinstance(values[2], str)
    if not shaped and not any(is_kind(v) for v in values):
        return None
    if not shaped or any(is_kind(v) for v in values[:2]):
        raise InvalidArgument(f"{where}: a distribution is written {DISTRIBUTION_FORM}, got {_show(values)}")
    low, high, kind = float(values[0]), float(values[1]), values[2].strip().lower()
    if kind not in DISTRIBUTIONS:
        raise InvalidArgument(f"{where}: unknown distribution {values[2]!r}; expected linear, log or log_near_one")
    if not low < high:
        raise InvalidArgument(f"{where}: the lower bound {values[0]!r} must be below the upper bound {values[1]!r}")
    if kind == "log" and low <= 0:
        raise InvalidArgument(f"{where}: 'log' needs bounds above 0, got {values[0]!r}")
    if kind == "log_near_one" and high >= 1:
        raise InvalidArgument(f"{where}: 'log_near_one' needs bounds below 1, got {values[1]!r}")
    return Distribution(low, high, kind)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_compile_grid(text: str | None, argument: str = COMPILE_ARG) -> CompileGrid:
    grid = _grid_dict(text, argument, COMPILE_EXAMPLE)
    for key in grid:
        _check_compile_key(key, argument)
    if "loss" not in grid:
        raise InvalidArgument(f"{argument}: 'loss' is required, such as 'loss': ['categorical_crossentropy']")
    others = tuple(_param(k, grid[k], f"{argument}: {k}", distributions=False) for k in COMPILE_GRID_KEYS if k in grid)
    if OPTIMIZER_LIST in grid:
        optimizers = _optimizer_entries(grid[OPTIMIZER_LIST], f"{argument}: {OPTIMIZER_LIST}")
    else:
        optimizers = (OptimizerEntry(Param("optimizer", (DEFAULT_OPTIMIZER,), where=argument), (), argument),)
    return CompileGrid(optimizers, others)


def _check_compile_key(key: str, argument: str) -> None:
    if key in COMPILE_GRID_KEYS or key == OPTIMIZER_LIST:
        return
    if key in params.COMPILE_KEYS_REJECTED:
        raise NotSupported(f"{argument}: {key} is not accepted: {params.COMPILE_KEYS_REJECTED[key]}")
    if key == "optimizer":
        raise InvalidArgument(f"{argument}: 'optimizer' goes inside {OPTIMIZER_LIST}, such as "
                              f"'{OPTIMIZER_LIST}': [{{'optimizer': ['Adam'], 'lr': [0.01]}}]")
    raise InvalidArgument(f"{argument}: unknown key {key!r}; expected {', '.join(COMPILE_GRID_KEYS)} or "
                          f"{OPTIMIZER_LIST} (optimizer arguments such as lr go inside {OPTIMIZER_LIST})")


def _optimizer_entries(value: Any, where: str) -> tuple[OptimizerEntry, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidArgument(f"{where}: expected a non-empty list of dicts such as "
                              f"[{{'optimizer': ['Adam'], 'lr': [0.01]}}], got {_show(value)}")
    return tuple(_optimizer_entry(entry, f"{where}[{i}]") for i, entry in enumerate(value))


def _optimizer_entry(entry: Any, where: str) -> OptimizerEntry:
    if not isinstance(entry, dict):
        raise InvalidArgument(f"{where}: expected a dict such as {{'optimizer': ['Adam'], 'lr': [0.01]}}, got {_show(entry)}")
    if not entry:
        raise InvalidArgument(f"{where}: empty dict",
                              hint="Give at least the optimizer, such as {'optimizer': ['Adam']}.")
    names = Param("optimizer", (DEFAULT_OPTIMIZER,), where=where)
    arguments: dict[str, Param] = {}
    for key, value in entry.items():
        if not isinstance(key, str):
            raise InvalidArgument(f"{where}: keys must be argument names in quotes, got {key!r}")
        if key == "optimizer":
            names = _optimizer_names(value, f"{where}: optimizer")
            continue
        if key in params.COMPILE_KEYS or key in params.COMPILE_KEYS_REJECTED or key == OPTIMIZER_LIST:
            raise InvalidArgument(f"{where}: {key!r} is a compile parameter, not an optimizer argument; "
                                  f"put it outside {OPTIMIZER_LIST}")
        if not key.isidentifier() or key.startswith("_"):
            raise InvalidArgument(f"{where}: {key!r} is not an optimizer argument name")
        name = "learning_rate" if key == "lr" else key  # Keras 3's name; the parser reads both
        if name in arguments:
            raise InvalidArgument(f"{where}: lr and learning_rate are the same argument",
                                  hint="Give one of them.")
        arguments[name] = _param(name, value, f"{where}: {key}", distributions=True)
    return OptimizerEntry(names, tuple(arguments.values()), where)


def _optimizer_names(value: Any, where: str) -> Param:
    param = _param("optimizer", value, where, distributions=False)
    names = []
    for choice in param.choices:
        canonical = params.OPTIMIZERS.get(choice.strip().lower()) if isinstance(choice, str) else None
        if canonical is None:
            raise InvalidArgument(f"{where}: expected optimizer names such as 'Adam' (arguments go in their own keys), "
                                  f"got {_show(choice)}; known: {', '.join(params.OPTIMIZERS.values())}")
        names.append(canonical)
    return Param("optimizer", tuple(names), where=where)


def parse_fit_grid(text: str | None, argument: str = FIT_ARG) -> FitGrid:
    """``{}`` is accepted: one fit string, '' (Keras' defaults)."""
    grid = _grid_dict(text, argument, FIT_EXAMPLE)
    for key in grid:
        if key in params.FIT_KEYS_REJECTED:
            raise NotSupported(f"{argument}: {key} is not accepted: {params.FIT_KEYS_REJECTED[key]}")
        if key == "callbacks":  # calls, not the literals a grid holds
            raise NotSupported(f"{argument}: callbacks cannot be searched over",
                               hint="Give them in fit_params_list of load_model_selection_table.")
        if key not in params.FIT_KEYS:
            raise InvalidArgument(f"{argument}: unknown key {key!r}; expected some of {', '.join(params.FIT_KEYS)}")
    return FitGrid(tuple(_param(k, grid[k], f"{argument}: {k}", distributions=False)
                         for k in params.FIT_KEYS if k in grid))


# ---------------------------------------------------------------------------------------------------
# search_type, num_configs, random_state

def search_type(text: str | None) -> str:
    """'grid' or 'random' from any case-insensitive start of either; NULL means the default, 'grid'."""
    if text is None:
        return "grid"
    word = text.strip().lower()
    for kind in SEARCH_TYPES:
        if word and kind.startswith(word):
            return kind
    raise InvalidArgument(f"search_type: expected 'grid' or 'random' (or their start, such as 'rand'), got {text!r}")


def check_search(space: SearchSpace, kind: str, num_configs: int | None, random_state: int | None) -> None:
    if kind == "grid":
        for argument, value in (("num_configs", num_configs), ("random_state", random_state)):
            if value is not None:
                raise InvalidArgument(f"{argument}: must be NULL for grid search, which makes every combination "
                                      f"(it is for search_type 'random'), got {value}")
        for entry in space.compile.optimizers:
            for param in entry.arguments:
                if param.distribution is not None:
                    raise InvalidArgument(f"{param.where}: {param.distribution} is a distribution, which only random "
                                          "search samples", hint="Give a list of values for grid search.")
        configs.check_count(space.grid_size(), f"{COMPILE_ARG}, {FIT_ARG}: the grid (with model_id_list) makes")
        return
    if num_configs is None or num_configs < 1:
        raise InvalidArgument(f"num_configs: random search needs the number of configurations to draw, "
                              f"an integer >= 1, got {'NULL' if num_configs is None else num_configs}")
    configs.check_count(num_configs, "num_configs: asks for")


def generator(random_state: int | None) -> np.random.Generator:
    """One generator for every draw of a call, so hyper-parameters are drawn independently of each
    other; seeded by random_state (any INTEGER, negatives included) or, when NULL, by the OS."""
    return np.random.default_rng(None if random_state is None else random_state % 2 ** 32)


# ---------------------------------------------------------------------------------------------------
# Checking every value of a space once

def check_space(space: SearchSpace) -> list[OptimizerUse]:
    """Parse one string per value of every key, each beside known-good values of the other keys, so
    that an error names the key at fault and random search cannot pass or fail depending on what it
    happens to draw (the parser judges each key on its own, so this covers every combination).
    Returns the optimizers probed (each name with the first values, and each value beside the first
    of the others), for the check against Keras."""
    safe = [("loss", "mse")]
    for param in space.compile.others:
        for value in param.probe_values():
            others = [*([] if param.name == "loss" else safe), (param.name, _listed(param.name, value))]
            configs.compile_param(configs.compile_string("SGD", [], others), param.where)
    uses = []
    for entry in space.compile.optimizers:
        for name in entry.names.choices:
            uses.append(_optimizer_use(entry, name, [(p.name, p.first()) for p in entry.arguments]))
        for position, param in enumerate(entry.arguments):
            for value in param.probe_values():
                arguments = [(p.name, value if i == position else p.first()) for i, p in enumerate(entry.arguments)]
                uses.append(_optimizer_use(entry, entry.names.first(), arguments))
    _check_fit_space(space.fit)
    return uses


def _optimizer_use(entry: OptimizerEntry, name: str, arguments) -> OptimizerUse:
    parsed = configs.compile_param(configs.compile_string(name, arguments, [("loss", "mse")]), entry.where)
    return OptimizerUse(entry.where, parsed.parsed.optimizer)


def _check_fit_space(fit: FitGrid) -> None:
    """Each value alone, initial_epoch beside the most epochs (the least is checked after); then the
    least epochs with the most initial_epoch, the combination most likely refused."""
    choices = {p.name: p.choices for p in fit.params}
    for param in fit.params:
        others = [("epochs", max(choices["epochs"]))] if param.name == "initial_epoch" and "epochs" in choices else []
        for value in param.probe_values():
            configs.fit_param(configs.fit_string(others + [(param.name, value)]), param.where)
    if "initial_epoch" in choices:
        least = [("epochs", min(choices["epochs"]))] if "epochs" in choices else []
        configs.fit_param(configs.fit_string(least + [("initial_epoch", max(choices["initial_epoch"]))]),
                          f"{FIT_ARG}: initial_epoch")


def _listed(name: str, value: Any) -> Any:
    return [value] if name in LIST_VALUED and isinstance(value, str) else value


# ---------------------------------------------------------------------------------------------------
# Making configurations

def _compile(name: str, arguments, others) -> configs.ParamText:
    text = configs.compile_string(name, arguments, [(k, _listed(k, v)) for k, v in others])
    return configs.compile_param(text, COMPILE_ARG)


def _fit(items) -> configs.ParamText:
    return configs.fit_param(configs.fit_string(items), FIT_ARG)


def grid_configs(space: SearchSpace) -> list[Config]:
    """Every combination, model id slowest, then each optimizer dict in order, its keys in the order
    written, the other compile keys, the fit keys; duplicates collapse (first kept)."""
    compiles = []
    for entry in space.compile.optimizers:
        for name, values, others in itertools.product(
                entry.names.choices,
                itertools.product(*(p.choices for p in entry.arguments)),
                itertools.product(*(p.choices for p in space.compile.others))):
            compiles.append(_compile(name, list(zip((p.name for p in entry.arguments), values)),
                                     list(zip((p.name for p in space.compile.others), others))))
    fits = [_fit(list(zip((p.name for p in space.fit.params), values)))
            for values in itertools.product(*(p.choices for p in space.fit.params))]
    return configs.product(space.model_ids, _first_of_each(compiles), _first_of_each(fits))


def _first_of_each(items: list[configs.ParamText]) -> list[configs.ParamText]:
    first: dict[str, configs.ParamText] = {}
    for item in items:
        first.setdefault(item.key, item)
    return list(first.values())


def draw(space: SearchSpace, rng: np.random.Generator) -> Config:
    """One random configuration. Draw order (fixed, so a seed always gives the same configurations):
    model id, optimizer dict, optimizer name, its arguments, other compile keys, fit keys."""
    model_id = space.model_ids[int(rng.integers(len(space.model_ids)))]
    entry = space.compile.optimizers[int(rng.integers(len(space.compile.optimizers)))]
    name = entry.names.draw(rng)
    arguments = [(p.name, p.draw(rng)) for p in entry.arguments]
    others = [(p.name, p.draw(rng)) for p in space.compile.others]
    fit = [(p.name, p.draw(rng)) for p in space.fit.params]
    return config_from(model_id, name, arguments, others, fit)


def config_from(model_id: int, optimizer: str, arguments, others, fit) -> Config:
    """The configuration of chosen values (lists of (name, value) pairs, in the space's key order),
    written as random search writes it; other samplers (automl's TPE) use it too."""
    return Config(model_id, _compile(optimizer, arguments, others), _fit(fit))


def random_configs(space: SearchSpace, num_configs: int, rng: np.random.Generator) -> list[Config]:
    """num_configs distinct configurations: a draw equal to one already made is drawn again. When
    MAX_FUTILE_DRAWS draws in a row bring nothing new, the space is taken as exhausted and fewer come back."""
    found: dict[tuple, Config] = {}
    futile = 0
    while len(found) < num_configs and futile < MAX_FUTILE_DRAWS:
        config = draw(space, rng)
        if config.key in found:
            futile += 1
        else:
            found[config.key] = config
            futile = 0
    return list(found.values())
