"""madlib_keras_automl's automl_method and automl_params: parsed, checked, and made into a policy.

automl_params is a string of name=value pairs, as MADlib's: 'R=6, eta=3, skip_last=0'. Names are
matched case-insensitively (MADlib writes R upper-case, hyperband_schedule's argument is r); the
canonical spelling is the one in the defaults below. A name given twice is an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from madlib_dl.automl import asha, hyperband, tpe
from madlib_dl.automl.policy import Policy
from madlib_dl.errors import InvalidArgument, NotSupported
from madlib_dl.keras_runtime import params
from madlib_dl.model_selection import configs
from madlib_dl.model_selection.grid import SearchSpace

METHOD_ARG = "automl_method"
PARAMS_ARG = "automl_params"
METHODS = ("hyperband", "hyperopt", "asha")
DEFAULT_METHOD = "hyperband"


@dataclass(frozen=True)
class HyperbandParams:
    R: int = 6
    eta: int = 3
    skip_last: int = 0


@dataclass(frozen=True)
class HyperoptParams:
    num_configs: int = 20
    num_iterations: int = 5
    algorithm: str = "tpe"


@dataclass(frozen=True)
class AshaParams:
    # 27 configurations to 1 iteration, 9 go on to 3, 3 to 9: one Hyperband bracket's shape, run asynchronously.
    max_iterations: int = 9
    grace_iterations: int = 1
    reduction_factor: int = 3
    num_configs: int = 27


PARAMS = {"hyperband": HyperbandParams, "hyperopt": HyperoptParams, "asha": AshaParams}
AutomlParams = HyperbandParams | HyperoptParams | AshaParams


def method_name(text: str | None) -> str:
    if text is None:
        return DEFAULT_METHOD
    name = text.strip().lower() if isinstance(text, str) else None
    if name not in METHODS:
        raise InvalidArgument(f"{METHOD_ARG}: expected 'hyperband', 'hyperopt' or 'asha', got {text!r}"
                              + (params.did_you_mean(text, METHODS) if isinstance(text, str) else ""))
    return name


def describe(values: AutomlParams) -> str:
    """The canonical text, for the summary table's automl_params column: 'R=6, eta=3, skip_last=0'."""
    return ", ".join(f"{f.name}={getattr(values, f.name)}" for f in dataclasses.fields(values))


def parse_params(method: str, text: str | None) -> AutomlParams:
    """``method`` as method_name returns it; NULL or '' give the method's defaults."""
    kind = PARAMS[method]
    names = {f.name.lower(): f.name for f in dataclasses.fields(kind)}
    given: dict[str, object] = {}
    if text is not None and text.strip():
        for key, value_text in params.split_params(text, PARAMS_ARG):
            name = names.get(key.lower())
            if name is None:
                raise InvalidArgument(f"{PARAMS_ARG}: unknown parameter {key!r} for {method}"
                                      f"{params.did_you_mean(key, names.values())}; expected "
                                      f"{', '.join(names.values())}")
            if name in given:
                raise InvalidArgument(f"{PARAMS_ARG}: {name} is given more than once")
            given[name] = params.literal(value_text, f"{PARAMS_ARG}: {name}")
    return _CHECKS[kind](kind(**given))


def _integer(values, name: str, minimum: int) -> None:
    value = getattr(values, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgument(f"{PARAMS_ARG}: {name} must be an integer >= {minimum}, got {value!r}")


def _check_hyperband(values: HyperbandParams) -> HyperbandParams:
    rounds = hyperband.schedule(values.R, values.eta, values.skip_last)  # its own errors
    configs.check_count(hyperband.total_configs(rounds), f"{PARAMS_ARG}: {describe(values)} makes")
    return values


def _check_hyperopt(values: HyperoptParams) -> HyperoptParams:
    _integer(values, "num_configs", 1)
    _integer(values, "num_iterations", 1)
    configs.check_count(values.num_configs, f"{PARAMS_ARG}: num_configs asks for")
    algorithm = values.algorithm
    if isinstance(algorithm, str) and algorithm.strip().lower() == "atpe":
        raise NotSupported(f"{PARAMS_ARG}: algorithm 'atpe' (adaptive TPE) is not supported (MADlib disabled it too)",
                           hint="Use algorithm=tpe or algorithm=rand.")
    if not isinstance(algorithm, str) or algorithm.strip().lower() not in tpe.ALGORITHMS:
        raise InvalidArgument(f"{PARAMS_ARG}: algorithm must be 'tpe' or 'rand', got {algorithm!r}")
    return dataclasses.replace(values, algorithm=algorithm.strip().lower())


def _check_asha(values: AshaParams) -> AshaParams:
    asha.rungs(values.max_iterations, values.grace_iterations, values.reduction_factor)  # its own errors
    _integer(values, "num_configs", 1)
    configs.check_count(values.num_configs, f"{PARAMS_ARG}: num_configs asks for")
    return values


_CHECKS = {HyperbandParams: _check_hyperband, HyperoptParams: _check_hyperopt, AshaParams: _check_asha}


def make_policy(method: str, values: AutomlParams, space: SearchSpace, segments: int,
                random_state: int | None) -> Policy:
    """The policy for checked params (parse_params); ``segments`` sizes hyperopt's first batch."""
    if method == "hyperband":
        return hyperband.HyperbandPolicy(space, values.R, values.eta, values.skip_last, random_state)
    if method == "hyperopt":
        return tpe.TpePolicy(space, segments, values.num_configs, values.num_iterations, values.algorithm,
                             random_state)
    if method == "asha":
        return asha.AshaPolicy(space, values.max_iterations, values.grace_iterations, values.reduction_factor,
                               values.num_configs, random_state)
    raise ValueError(f"unknown automl method {method!r}")
