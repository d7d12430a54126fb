"""The body of a background worker: serve one driver's requests over its channel until the driver is
gone, it says stop, or nothing has come for the idle timeout.

The C library's worker main (src/madlib_dl.c) calls :func:`serve` again and again, each call in a
transaction of its own, as long as it returns True. One call waits at most ``WAIT_SECONDS`` for a
request and serves at most one, so no transaction (or snapshot) of a worker lasts much longer than its
request. Between runs (no run's store held) a worker that has had no request for the idle timeout ends. The first call connects to the driver's socket and authenticates; the token the driver gave
the launcher holds the socket's path, the secret and this worker's index.

While waiting, and between training batches (keras_runtime.interrupts), the worker makes an SPI call
(so terminate and cancel signals take effect) and checks that its driver's end of the channel is still
open and that the postmaster is still its parent.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from madlib_dl import channel, db, native
from madlib_dl.errors import MadlibDLError
from madlib_dl.keras_runtime import interrupts
from madlib_dl.segment import hop_progress, recording, requests, server
from madlib_dl.segment import store as stores

GD_KEY = "madlib_dl_worker"
WAIT_SECONDS = 1.0
# How long a new worker waits for its driver's challenge. A training worker is accepted at once, but a
# progress recorder only at its run's next snapshot, which may be a long hop away (it gave up after 10 s
# before: a run whose first hop was longer had no fit_progress and no checkpoints). The wait ends at once
# when the driver's end closes (the driver gone, or its launch given up).
AUTH_SECONDS = 86400.0
DEFAULT_IDLE_SECONDS = 60.0
PROGRESS_KEY = "hop_progress"  # a message whose header has it is a running hop's progress, not a reply


class DriverGone(Exception):
    pass


class DriverClosed(DriverGone):
    """The driver closed the channel: a run's normal end for a pooled worker, nothing to log."""


@dataclass
class WorkerState:
    conn: channel.Connection
    parent: int
    idle_timeout: float = DEFAULT_IDLE_SECONDS
    last_request: float = 0.0
    pooled: bool = False  # idle in its driver's pool: it may give its slot up when asked


@dataclass(frozen=True)
class Token:
    path: str
    secret: bytes
    index: int

    def text(self) -> str:
        return f"{self.path}\t{self.secret.hex()}\t{self.index}"

    @classmethod
    def parse(cls, text: str) -> "Token":
        path, secret, index = text.split("\t")
        return cls(path, bytes.fromhex(secret), int(index))


class NotAWorker(MadlibDLError):
    sqlstate = "42501"  # insufficient_privilege


def serve(gd: dict, token: str) -> bool:
    """Serve at most one request; False when this worker should end. Only in the madlib_dl background
    worker the token was given to (the C library says which token that is): from any other session a
    caller could make this backend connect to a socket of its choosing."""
    own = native.worker_token()
    if own is None or token != own:
        db.current().fail(NotAWorker("internal_worker_serve runs only in the madlib_dl background worker its "
                                     "token was given to",
                                     hint="Only madlib_dl's training functions start and serve its workers."))
    state = gd.get(GD_KEY)
    if state is None:
        state = _connect(token)
        if state is None:
            return False
        gd[GD_KEY] = state
    try:
        message = state.conn.receive(WAIT_SECONDS, lambda: _check(state))
        if message is None:  # the idle timeout counts between runs only: in a run the driver may be busy
            in_run = gd.get(stores.GD_KEY) is not None
            if native.take_give_way_request() and state.pooled and not in_run:
                _log("madlib_dl worker: idle: ending to give its slot to another session's launch")
                return False  # its driver finds it gone when it next takes it from its pool, and starts another
            return in_run or time.monotonic() - state.last_request < state.idle_timeout
        state.last_request = time.monotonic()
        header, blobs = message
        request = requests.decode(header, blobs)
        if isinstance(request, requests.Stop):
            return False
        state.pooled = bool(header.get("pooled"))  # a Release that puts it in its driver's pool
        _apply_envelope(state, header)
        state.conn.send(*_answer(gd, request), check=lambda: _check(state))
        state.last_request = time.monotonic()
        return True
    except (channel.ChannelClosed, DriverClosed):
        recording.forget_current(db.current(), gd)
        return False  # the driver is gone, or ended the run: nothing to say
    except (channel.ChannelError, requests.BadRequest, DriverGone) as error:
        _log(f"madlib_dl worker: ending: {error}")
        recording.forget_current(db.current(), gd)
        return False


def _log(message: str) -> None:
    import plpy

    plpy.log(message)


def _connect(token: str) -> WorkerState | None:
    try:
        parsed = Token.parse(token)
        conn = channel.connect(parsed.path, populate_received=True)  # it reads every state it gets
    except (ValueError, OSError):
        return None  # the driver gave up before this worker got here, and removed its socket
    state = WorkerState(conn, os.getppid(), last_request=time.monotonic())
    try:
        channel.authenticate_driver(conn, parsed.secret, {"index": parsed.index, "pid": os.getpid()}, AUTH_SECONDS,
                                    lambda: _check(state))
    except (channel.ChannelClosed, channel.ChannelError):
        conn.close()
        return None
    interrupts.also_check(lambda: _check_driver(state))
    # A hop's progress goes to the driver ahead of its reply (training.background reads it as such).
    hop_progress.set_sink(lambda report: state.conn.send({PROGRESS_KEY: report}, (), lambda: _check(state)))
    return state


def _check(state: WorkerState) -> None:
    db.current().execute("SELECT 1")  # lets a pending terminate or cancel take effect
    _check_driver(state)


def _check_driver(state: WorkerState) -> None:
    if os.getppid() != state.parent:
        raise DriverGone("the postmaster is gone")
    if state.conn.closed_by_peer():
        raise DriverClosed("the driver closed the channel")


def _apply_envelope(state: WorkerState, header: dict) -> None:
    """What a request's header says besides the request: progress text, idle timeout."""
    progress = header.get("progress")
    if isinstance(progress, str):
        db.current().execute("SELECT set_config('application_name', $1, false)", [progress[:63]], ["text"])
    idle = header.get("idle_timeout")
    if isinstance(idle, (int, float)) and not isinstance(idle, bool):
        state.idle_timeout = float(idle)


def _answer(gd: dict, request) -> tuple[dict, list]:
    """The reply's header and blobs; a failure becomes an error reply the driver raises."""
    try:
        header, blobs = requests.encode(server.handle(db.current(), gd, request))
    except DriverGone:
        raise
    except Exception as error:  # reported to the driver, which fails the run with it
        return {"error": {"message": _message(error), "sqlstate": _sqlstate(error)}}, []
    return header, blobs


def _message(error: Exception) -> str:
    text = str(error.args[0]) if error.args else type(error).__name__
    return text.strip().removeprefix("madlib_dl: ")


def _sqlstate(error: Exception) -> str:
    state = getattr(error, "sqlstate", None)
    return state if isinstance(state, str) and len(state) == 5 else "XX000"
