"""How segment calls run: on background workers in parallel (training.background), or one at a time in
this session (:class:`InProcess`). Both take the same calls (segment_calls: a segment and a request of
segment.requests) and give back the same completions; only the transport differs.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Any

from madlib_dl import db as database
from madlib_dl.errors import MadlibDLError
from madlib_dl.segment import hop_progress, server


class SegmentFailed(MadlibDLError):
    """A call failed where it ran; carries that backend's SQLSTATE."""

    def __init__(self, message: str, sqlstate: str | None):
        super().__init__(message)
        self.sqlstate = sqlstate or "XX000"


@dataclass
class Completed:
    call: Any               # segment_calls.SegmentCall
    row: dict
    submitted: float        # time.time() when sent
    received: float         # time.time() when its result arrived
    weights: bytes | None = None           # a fit hop's new state
    optimizer_state: bytes | None = None


class InProcess:
    """The driver's own backend serves every segment, one call at a time (segment.server, as a worker
    would), with the session's PL/Python GD as the store."""
    name = "in_process"
    threads = None  # this session's TensorFlow set-up, whatever it is
    worker_count = 1

    def __init__(self, db, segments):
        self.db = db
        self.segments = list(segments)
        self._queue: collections.deque = collections.deque()
        self.pids: dict[int, int] = {}
        self.on_progress = None  # (call, report): a running hop's progress, as BackgroundWorkers'

    def submit(self, call) -> None:
        self._queue.append(call)

    def wait(self) -> list[Completed]:
        call = self._queue.popleft()
        started = time.time()  # calls run one at a time: time spent queued is not this call's overhead
        with hop_progress.sink(self._reporter(call)):
            reply = server.handle(self.db, database.session_dict(), call.request)
        return [Completed(call, reply.row, started, time.time(), reply.weights, reply.optimizer_state)]

    def _reporter(self, call):
        on_progress = self.on_progress
        return None if on_progress is None else (lambda report: on_progress(call, report))

    def busy(self) -> bool:
        return bool(self._queue)

    def set_progress(self, text: str) -> None:
        pass  # the driver's own application_name already says it

    def close(self) -> None:
        self._queue.clear()
