"""Hyperband (Li et al., "Hyperband: A Novel Bandit-Based Approach to Hyperparameter Optimization",
JMLR 2018): its schedule of brackets and the policy that runs it.

A bracket s starts n configurations with r iterations each and runs successive halving on them: at
stage i, n_i models have trained r_i iterations in total, and the best n_{i+1} of them go on to r_{i+1}.
Brackets are independent, so they all run at the same time: MADlib's "diagonal" schedule without its
barrier between diagonals (a bracket waits only for its own stage to finish).

The formulas are computed exactly (integers and fractions, never float logarithms), and n uses the
paper's ceil((s_max+1)/(s+1) * eta^s), not MADlib's int((s_max+1)/(s+1)) which truncates the ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from madlib_dl.automl.policy import Continue, Decision, Start, Stop
from madlib_dl.errors import InvalidArgument
from madlib_dl.model_selection import grid
from madlib_dl.model_selection.grid import SearchSpace

ARGUMENT = "automl_params"


@dataclass(frozen=True)
class Round:
    """Stage i of bracket s: n_i models train to r_i iterations in total (a row of hyperband_schedule's
    table, columns s, i, n_i, r_i)."""
    s: int
    i: int
    n_i: int
    r_i: int


def _integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{ARGUMENT}: {name} must be an integer, got {value!r}")
    return value


def s_max(R: int, eta: int) -> int:
    """floor(log_eta(R)) for R >= 1, eta >= 2: the largest s with eta^s <= R, in integers."""
    s = 0
    while eta ** (s + 1) <= R:
        s += 1
    return s


def check(R: int, eta: int, skip_last: int) -> int:
    """The arguments' errors, in MADlib's order; returns s_max. Since R >= eta, s_max >= 1, so
    skip_last = 0 is always accepted; skip_last = s_max (as MADlib allows) leaves the first round only."""
    R, eta, skip_last = _integer("R", R), _integer("eta", eta), _integer("skip_last", skip_last)
    if eta <= 1:
        raise InvalidArgument(f"{ARGUMENT}: eta must be greater than 1, got {eta}")
    if R < eta:
        raise InvalidArgument(f"{ARGUMENT}: R should not be less than eta, got R={R}, eta={eta}")
    top = s_max(R, eta)
    if not 0 <= skip_last <= top:
        raise InvalidArgument(f"{ARGUMENT}: skip_last must be non-negative and at most s_max = {top}, "
                              f"got {skip_last}")
    return top


def schedule(R: int, eta: int = 3, skip_last: int = 0) -> list[Round]:
    """Every stage of every bracket, s descending then i ascending (hyperband_schedule's row order).
    skip_last=k drops the last k diagonals (d = (s_max - s) + i > s_max - k); a bracket left with no
    stage disappears."""
    top = check(R, eta, skip_last)
    rounds = []
    for s in range(top, -1, -1):
        n = math.ceil(Fraction(top + 1, s + 1) * eta ** s)
        r = Fraction(R, eta ** s)
        for i in range(s + 1):
            if (top - s) + i <= top - skip_last:
                r_i = min(max(math.ceil(r * eta ** i), 1), R)
                rounds.append(Round(s, i, n // eta ** i, r_i))
    return rounds


def total_configs(rounds: list[Round]) -> int:
    """How many configurations the schedule starts: every bracket's n_0."""
    return sum(r.n_i for r in rounds if r.i == 0)


@dataclass
class _Bracket:
    """One bracket's progress: its stages, the models alive in the current one and their losses."""
    stages: list[Round]
    stage: int
    alive: list[int]
    losses: dict[int, float]

    @property
    def until(self) -> int:
        return self.stages[self.stage].r_i


def rank(losses: dict[int, float]) -> list[int]:
    """Keys best first: lowest loss, NaN last (a diverged model), ties by key."""
    def order(key):
        loss = losses[key]
        return (1, 0.0, key) if math.isnan(loss) else (0, loss, key)
    return sorted(losses, key=order)


class HyperbandPolicy:
    """Every configuration is drawn up front (distinct, like generate_model_configs' random search),
    keys 1..total bracket by bracket, largest s first. When the space holds fewer distinct
    configurations than the schedule asks, the brackets are filled in that order, so the later
    (smaller s) ones get fewer or none; a stage then keeps min(n_i, models left). ``more`` never has
    work: a bracket waits for its whole stage to report."""

    method = "hyperband"

    def __init__(self, space: SearchSpace, R: int, eta: int = 3, skip_last: int = 0,
                 random_state: int | None = None):
        self.rounds = schedule(R, eta, skip_last)
        drawn = grid.random_configs(space, total_configs(self.rounds), grid.generator(random_state))
        self.configs = dict(enumerate(drawn, 1))
        self._brackets: dict[int, _Bracket] = {}
        self._bracket_of: dict[int, int] = {}
        key = 1
        for s in sorted({r.s for r in self.rounds}, reverse=True):
            stages = [r for r in self.rounds if r.s == s]
            keys = [k for k in range(key, key + stages[0].n_i) if k in self.configs]
            key += stages[0].n_i
            if keys:
                self._brackets[s] = _Bracket(stages, 0, keys, {})
                self._bracket_of.update((k, s) for k in keys)

    def start(self) -> list[Decision]:
        return [Start(k, self.configs[k], b.until, bracket=s, rung=0)
                for s, b in self._brackets.items() for k in b.alive]

    def report(self, key: int, iterations: int, loss: float) -> list[Decision]:
        bracket = self._brackets.get(self._bracket_of.get(key))
        if bracket is None or key not in bracket.alive or key in bracket.losses:
            raise ValueError(f"report of model {key}, which is not training")
        if iterations != bracket.until:
            raise ValueError(f"report of model {key} at {iterations} iterations, expected {bracket.until}")
        bracket.losses[key] = float(loss)
        if len(bracket.losses) < len(bracket.alive):
            return []
        return self._next_stage(bracket)

    def more(self, idle: int) -> list[Decision]:
        return []

    def _next_stage(self, bracket: _Bracket) -> list[Decision]:
        ranked = rank(bracket.losses)
        if bracket.stage + 1 == len(bracket.stages):
            bracket.alive, bracket.losses = [], {}
            return [Stop(k, "done") for k in ranked]
        bracket.stage += 1
        # A diverged model (NaN) does not go on, even when the stage has room for it.
        keep = [k for k in ranked if not math.isnan(bracket.losses[k])][:bracket.stages[bracket.stage].n_i]
        bracket.alive, bracket.losses = sorted(keep), {}
        return ([Continue(k, bracket.until, bracket.stage) for k in bracket.alive]
                + [Stop(k, "stopped") for k in ranked[len(keep):]])
