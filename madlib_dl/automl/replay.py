"""A policy's history, so that a checkpoint of an AutoML run can bring its policy back.

Every policy is deterministic given its random_state and the calls it gets (start, report, more, in
order, with the same arguments): it is not saved, its calls are. On resume a fresh policy of the same
method and seed is called again exactly as the log says, which brings it (and Optuna's study inside
TPE) to the state it had. Each entry keeps a digest of what the policy decided then; a replay that
decides otherwise (another Optuna version, a log that is not this run's) is refused, not trusted.
"""

from __future__ import annotations

import hashlib

from madlib_dl.automl.policy import Decision, Policy, Start

CALLS = {"start": 0, "report": 3, "more": 1}  # name -> how many arguments


class NotReplayable(Exception):
    """The log does not bring a fresh policy where the run was."""


def digest(decisions: list[Decision]) -> str:
    return hashlib.sha256(repr(decisions).encode()).hexdigest()[:16]


class LoggedPolicy:
    """``policy``, with every call and its decisions' digest appended to ``log`` (JSON values)."""

    def __init__(self, policy: Policy, log: list | None = None):
        self.policy, self.method = policy, policy.method
        self.log: list = list(log or [])

    def start(self) -> list[Decision]:
        return self._call("start")

    def report(self, key: int, iterations: int, loss: float) -> list[Decision]:
        return self._call("report", key, iterations, loss)

    def more(self, idle: int) -> list[Decision]:
        return self._call("more", idle)

    def _call(self, name: str, *args) -> list[Decision]:
        decisions = getattr(self.policy, name)(*args)
        self.log.append([name, *args, digest(decisions)])
        return decisions


def replay(policy: Policy, log: list) -> tuple[LoggedPolicy, list[Decision]]:
    """``policy`` (fresh) called as ``log`` says, logging on from there, and every decision it made
    in order; NotReplayable when the log is malformed or the policy decides otherwise."""
    logged = LoggedPolicy(policy)
    decided: list[Decision] = []
    for position, entry in enumerate(log):
        if not isinstance(entry, list) or not entry or CALLS.get(entry[0]) != len(entry) - 2:
            raise NotReplayable(f"entry {position} of the policy's log is malformed")
        name, args, expected = entry[0], _arguments(entry[1:-1]), entry[-1]
        try:
            decisions = getattr(logged, name)(*args)
        except (TypeError, ValueError, KeyError) as error:
            raise NotReplayable(f"entry {position} ({name}) failed: {error}") from None
        if logged.log[-1][-1] != expected:
            raise NotReplayable(f"the policy decided otherwise at entry {position} ({name}) than the run did")
        decided.extend(decisions)
    return logged, decided


def _arguments(values: list) -> list:
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise NotReplayable(f"a call's arguments are not numbers: {values!r}")
    return values


def started(decisions: list[Decision]) -> list[Start]:
    return [d for d in decisions if isinstance(d, Start)]
