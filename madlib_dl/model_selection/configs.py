"""One model configuration (a row of an mst table) and the rules that say when two are the same.

A configuration is a model id with a compile string and a fit string. Two strings are the same when
they parse to the same settings (params.parse_compile_params / parse_fit_params), so whitespace, key
order, quoting, ``lr`` versus ``learning_rate`` and the optimizer name's case do not make a new row.
The strings themselves are stored as the user wrote them (stripped), or as generated here.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from madlib_dl.errors import InvalidArgument, MadlibDLError
from madlib_dl.keras_runtime import params

# One call makes at most this many configurations: a grid that multiplies out beyond it is almost
# certainly a mistake, and no model-selection run trains that many models.
MAX_CONFIGS = 100_000


@dataclass(frozen=True)
class ParamText:
    """A compile or fit string, its canonical meaning (``key``) and where it came from (for errors)."""
    text: str
    key: str
    parsed: Any = field(compare=False, repr=False)
    where: str = field(default="", compare=False)


@dataclass(frozen=True)
class Config:
    model_id: int
    compile_params: ParamText
    fit_params: ParamText

    @property
    def key(self) -> tuple:
        return (self.model_id, self.compile_params.key, self.fit_params.key)


@dataclass(frozen=True, eq=False)
class OptimizerUse:
    """An optimizer as some configuration gives it; ``where`` names the argument (and element) it came
    from, for the error if Keras refuses it."""
    where: str
    spec: params.OptimizerSpec

    @property
    def key(self) -> str:
        """Equal for the same optimizer, wherever it came from (1, 1.0 and True kept apart)."""
        return canonical(self.spec)


# ---------------------------------------------------------------------------------------------------
# Canonical keys

def canonical(value: Any) -> str:
    """A text that is equal for equal parsed values: dicts sorted, lists and tuples alike, and scalars
    by repr so 1, 1.0 and True stay apart (Python's == would merge them)."""
    return repr(_normal(value))


def _normal(value):
    if dataclasses.is_dataclass(value):
        return (type(value).__name__,) + tuple(
            (f.name, _normal(getattr(value, f.name))) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return ("dict",) + tuple(sorted((repr(k), _normal(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("list",) + tuple(_normal(v) for v in value)
    return repr(value)


def compile_param(text: str, where: str) -> ParamText:
    """Parse a compile string (errors name ``where``; custom functions: params.custom_functions)."""
    return _param(text, where, _compile_parser(params.custom_in_scope()))


def fit_param(text: str, where: str) -> ParamText:
    return _param(text, where, params.parse_fit_params)


@functools.lru_cache(maxsize=16)
def _compile_parser(custom: frozenset) -> Callable:
    """A compile parser for one set of custom function names (hashable: the caches below key on it)."""
    return functools.partial(params.parse_compile_params, custom=custom)


@functools.lru_cache(maxsize=4096)  # random search meets the same generated strings again and again
def _param(text: str, where: str, parse: Callable) -> ParamText:
    parsed = parse(text, where)
    return ParamText(text, canonical(parsed), parsed, where)


def stored_key(model_id: int, compile_text: str | None, fit_text: str | None) -> tuple:
    """The key of a row already in an mst table. A row someone edited into something unparsable
    still gets a key (its exact text), so it only matches an identical string."""
    return (model_id, _stored(compile_text, _compile_parser(params.custom_in_scope())),
            _stored(fit_text, params.parse_fit_params))


@functools.lru_cache(maxsize=4096)  # an mst table repeats each string for every model id and partner
def _stored(text, parse) -> str:
    try:
        return canonical(parse(text, "stored row"))
    except MadlibDLError:
        return "text:" + repr(text)


# ---------------------------------------------------------------------------------------------------
# Arguments of load_model_selection_table (SQL arrays: elements are counted from 1, as in SQL)

def _array(values, argument: str, example: str) -> None:
    if values is None:
        raise InvalidArgument(f"{argument}: expected an array such as {example}, got NULL")
    if not isinstance(values, (list, tuple)):
        raise InvalidArgument(f"{argument}: expected an array such as {example}, got {values!r}")
    if not values:
        raise InvalidArgument(f"{argument}: expected an array such as {example}, got an empty array")
    if any(isinstance(v, (list, tuple)) for v in values):
        raise InvalidArgument(f"{argument}: expected a one-dimensional array such as {example}")


def model_ids(values, argument: str = "model_id_list") -> tuple[int, ...]:
    """Distinct model ids, sorted (MADlib's order)."""
    _array(values, argument, "ARRAY[1, 2]")
    for i, value in enumerate(values, 1):
        if value is None:
            raise InvalidArgument(f"{argument}[{i}]: expected a model id, got NULL")
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"{argument}[{i}]: expected an integer model id, got {value!r}")
    return tuple(sorted(set(values)))


def param_list(values, argument: str, parse_one: Callable[[str, str], ParamText]) -> list[ParamText]:
    """Each string parsed (the error names the element), stripped, duplicates dropped (first kept)."""
    example = ("ARRAY['batch_size=32, epochs=1']" if parse_one is fit_param
               else "ARRAY[$$loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']$$]")
    _array(values, argument, example)
    distinct: dict[str, ParamText] = {}
    for i, value in enumerate(values, 1):
        where = f"{argument}[{i}]"
        if value is None:
            raise InvalidArgument(f"{where}: expected a parameter string, got NULL"
                                  + (" (an empty string means Keras' defaults)" if parse_one is fit_param else ""))
        item = parse_one(value.strip(), where)
        distinct.setdefault(item.key, item)
    return list(distinct.values())


def optimizer_uses(compiles: Iterable[ParamText]) -> list[OptimizerUse]:
    return [OptimizerUse(p.where, p.parsed.optimizer) for p in compiles]


def check_count(count: int, what: str) -> None:
    if count > MAX_CONFIGS:
        raise InvalidArgument(f"{what} {count} configurations; at most {MAX_CONFIGS} are made per call")


def product(ids: Sequence[int], compiles: Sequence[ParamText], fits: Sequence[ParamText]) -> list[Config]:
    """model id x compile x fit, in that order (the mst_key order); the three lists hold distinct items,
    so the product does too."""
    ids = list(dict.fromkeys(ids))
    check_count(len(ids) * len(compiles) * len(fits),
                "model_id_list, compile_params_list, fit_params_list: their combinations make")
    return [Config(m, c, f) for m in ids for c in compiles for f in fits]


def distinct(configs: Iterable[Config]) -> list[Config]:
    """Configurations with equal keys collapse; the first one stays, order is kept."""
    first: dict[tuple, Config] = {}
    for config in configs:
        first.setdefault(config.key, config)
    return list(first.values())


# ---------------------------------------------------------------------------------------------------
# Generated strings

def compile_string(optimizer: str, arguments: Sequence[tuple[str, Any]], others: Sequence[tuple[str, Any]]) -> str:
    """``optimizer='Adam(learning_rate=0.001)',loss='categorical_crossentropy',metrics=['accuracy']``.
    Values are written with repr(), which reads back as the same Python value (floats exactly)."""
    call = f"{optimizer}({', '.join(f'{k}={v!r}' for k, v in arguments)})"
    return ",".join([f"optimizer={call!r}"] + [f"{k}={v!r}" for k, v in others])


def fit_string(items: Sequence[tuple[str, Any]]) -> str:
    """``batch_size=32,epochs=1``; no items give '' (Keras' defaults)."""
    return ",".join(f"{k}={v!r}" for k, v in items)
