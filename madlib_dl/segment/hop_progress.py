"""How far a running hop is, told while it runs (fit_progress shows it): the backend serving a hop
reports batches done of the hop's total, and the examples they held, at most every REPORT_SECONDS.

Where a report goes depends on the process, so the serving side registers a sink: a background worker
sends it on its channel to the driver (segment.worker) ahead of the hop's reply; the driver's own backend
running in process hands it to the driver directly (training.executors); a Citus node's session sends it
as a NOTICE to the driver's connection (segment.node, training.citus_nodes). With no sink (a client
process) nothing is reported. A sink's failure is the hop's: a worker whose driver went away must stop."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from typing import Callable

REPORT_SECONDS = 2.0  # fit_progress is updated within a few seconds, and a short hop reports nothing
NOTICE_PREFIX = "madlib_dl hop progress: "  # a Citus node session's report, as a NOTICE's message
FIELDS = {"kind": str, "batches": int, "batches_total": int, "examples": int, "seconds": float}

_sink: Callable[[dict], None] | None = None


def set_sink(sink: Callable[[dict], None] | None) -> None:
    global _sink
    _sink = sink


@contextlib.contextmanager
def sink(receiver: Callable[[dict], None]):
    """Reports go to ``receiver`` while the block runs (the in-process executor's calls)."""
    previous = _sink
    set_sink(receiver)
    try:
        yield
    finally:
        set_sink(previous)


@dataclass
class Reporter:
    """Called by the training loop as batches finish; sends a report when REPORT_SECONDS have passed
    since the hop began or since the last one. ``kind``: 'train' or 'evaluate'."""
    kind: str
    started: float = 0.0
    last: float = 0.0

    def __post_init__(self):
        self.started = self.last = time.monotonic()

    def __call__(self, batches: int, batches_total: int, examples: int) -> None:
        now = time.monotonic()
        if _sink is None or now - self.last < REPORT_SECONDS:
            return
        self.last = now
        _sink({"kind": self.kind, "batches": int(batches), "batches_total": int(batches_total),
               "examples": int(examples), "seconds": now - self.started})


def reporter(kind: str) -> Reporter | None:
    """A reporter for a hop starting now; None where nothing would receive its reports."""
    return Reporter(kind) if _sink is not None else None


def as_notice(report: dict) -> str:
    return NOTICE_PREFIX + json.dumps(report)


def from_notice(message: str | None) -> dict | None:
    """The report a NOTICE carries; None for any other message. Only the report's fields, of their
    types, are taken: the node session also runs the caller's own code (custom functions), which could
    send any NOTICE, and this affects nothing but the caller's own progress rows."""
    if not isinstance(message, str) or not message.startswith(NOTICE_PREFIX):
        return None
    try:
        found = json.loads(message[len(NOTICE_PREFIX):])
        report = {k: kind(found[k]) for k, kind in FIELDS.items()}
    except (ValueError, TypeError, KeyError):
        return None
    if not math.isfinite(report["seconds"]):
        return None
    return report
