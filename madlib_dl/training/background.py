"""Background workers: the executor that runs a run's segments in parallel, one PostgreSQL dynamic
background worker per segment (or fewer, each then serving several segments).

The driver asks the C library (internal_launch_worker) to start workers, arming each launch first
(native.arm_launch: only madlib_dl's own Python in this backend can). Each logs in to the caller's
database as the caller's current role (or as its session user, taking the role in C, when the current
role may not log in), with no authentication and no pg_hba entry, so it has exactly the caller's
privileges, taken from the backend itself and never from a message. No worker starts for a caller in
a security-restricted operation, a SECURITY DEFINER function or autovacuum (native.launch_refusal): a
worker would not be bound by their restrictions. A worker connects back to the driver over a Unix
socket in a private directory made for this start-up only, and both ends prove they know a per-start
secret (channel). Requests and model state then travel as raw bytes.

Workers of a session stay for the next call for ``madlib_dl.worker_idle_timeout`` seconds once a run
has succeeded (their run's data and models dropped), so a second call starts at once, when the
session's identity (session user, current user, security context) is still the one they were started
for; a launch of another session that finds no slot asks one of them to give way (it exits if still
idle), and a driver that takes a pooled worker first claims it (a Release round trip). A failed or
cancelled run ends its workers: they are told nothing, their channel closes and they exit as soon as
they can (a worker still importing TensorFlow exits right after the import).
"""

from __future__ import annotations

import collections
import os
import select
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, fields, replace

from madlib_dl import channel, native
from madlib_dl.errors import InvalidArgument
from madlib_dl.segment import requests
from madlib_dl.segment.worker import PROGRESS_KEY, Token
from madlib_dl.training.executors import Completed, SegmentFailed

POLL_SECONDS = channel.POLL_SECONDS
CONNECT_SECONDS = 120.0   # a worker that neither connects nor exits by then is given up on
AUTH_SECONDS = 10.0
EXIT_WAIT_SECONDS = 2.0   # how long a failing run waits for its workers to exit before returning its error
TOKEN_BYTES = 115          # what internal_launch_worker can hand a worker (bgw_extra: three OIDs and the token)
IDLE_APPLICATION_NAME = "madlib_dl worker (idle)"
IDLE_MARGIN_SECONDS = 2.0  # a pooled worker this close to its idle timeout is not reused (it may be exiting)


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker was started with; a pooled worker serves a later run only with the same. ``identity``:
    the caller's (session user, current user, security context) OIDs as the backend holds them."""
    identity: tuple
    threads: int | None
    cuda_visible_devices: str | None
    memory_limit_mib: int | None


@dataclass
class Worker:
    index: int     # its place in the start-up that launched it (each start-up counts from 0)
    pid: int       # what identifies a worker: the session's idle workers and new ones are mixed
    conn: channel.Connection
    config: WorkerConfig | None = None
    idle_since: float = 0.0


_POOL: list[Worker] = []  # this session's idle workers, kept between calls


def acquire(db, schema: str, configs: list[WorkerConfig], idle_timeout: float, check, notice,
            launched=None) -> list[Worker]:
    """Started workers, one per config: idle ones of this session first, then new ones. Fewer come back
    when fewer slots are free (max_worker_processes): the caller decides what to do with those.
    ``launched()``: called once new workers have their slots, before they are waited for."""
    workers = _take_pooled(configs, idle_timeout, check)
    wanted = [position for position, worker in enumerate(workers) if worker is None]
    if wanted:
        reused = len(configs) - len(wanted)
        notice(f"starting {len(wanted)} background worker{'s' if len(wanted) > 1 else ''}"
               + (f" ({reused} idle worker{'s' if reused > 1 else ''} of this session reused)" if reused else "")
               + "; each loads TensorFlow, which takes seconds (the session's next calls reuse them)")
        started = launch(db, schema, len(wanted), check, launched)
        try:
            _start(started, [configs[p] for p in wanted], idle_timeout, check)
        except BaseException:
            end([w for w in workers if w is not None] + started, EXIT_WAIT_SECONDS)
            raise
        for position, worker in zip(wanted, started):
            workers[position] = worker
    return [w for w in workers if w is not None]


def _take_pooled(configs: list[WorkerConfig], idle_timeout: float, check) -> list[Worker | None]:
    now, taken = time.monotonic(), [None] * len(configs)
    keep: list[Worker] = []
    for worker in _POOL:
        alive = now - worker.idle_since < idle_timeout - IDLE_MARGIN_SECONDS and not worker.conn.closed_by_peer()
        slot = next((i for i, c in enumerate(configs) if taken[i] is None and c == worker.config), None) if alive else None
        if slot is None:
            keep.append(worker) if alive else worker.conn.close()
        else:
            taken[slot] = worker
    # Idle workers no run of this call wants are stopped: the session's needs (or its identity) have
    # changed. Waited for, so that they no longer count against the role's workers when new ones start.
    stop(keep, EXIT_WAIT_SECONDS)
    _POOL.clear()
    return _claimed(taken, check)


def _claimed(taken: list[Worker | None], check) -> list[Worker | None]:
    """The pooled workers that answer a Release: a worker asked to give way by another session's launch
    exits if it is still idle, and from its answer on it no longer is. One that does not answer is
    ended, and its place is launched anew."""
    for position, worker in enumerate(taken):
        if worker is None:
            continue
        try:
            worker.conn.send(*requests.encode(requests.Release(None)), check=check)
            _reply(worker, "its claim", check)
        except (channel.ChannelClosed, SegmentFailed):
            end([worker])
            taken[position] = None
    return taken


def forget_unless(identity: tuple) -> None:
    """A session whose identity changed (SET ROLE, SET SESSION AUTHORIZATION) ends its idle workers: they
    act as the identity they were started for."""
    stale = [w for w in _POOL if w.config is None or w.config.identity != identity]
    if stale:
        _POOL[:] = [w for w in _POOL if w not in stale]
        stop(stale, EXIT_WAIT_SECONDS)


def keep_idle(workers: list[Worker]) -> None:
    now = time.monotonic()
    for worker in workers:
        worker.idle_since = now
        _POOL.append(worker)


@dataclass
class Launch:
    """Workers asked for and not yet connected: the socket they connect to, and their pids by index."""
    directory: str
    listener: channel.Listener
    secret: bytes
    pids: dict
    connected: dict

    def close(self) -> None:
        self.listener.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def give_up(self, wait: float) -> None:
        """Close without signalling: a worker not yet connected finds no socket and exits cleanly (a
        terminate would log a FATAL line); connected ones are asked to stop. Those still there after
        ``wait`` seconds are terminated."""
        _send_stop(list(self.connected.values()), None, (channel.ChannelClosed, channel.ChannelError))
        self.close()
        pids = list(self.pids.values())
        deadline = time.monotonic() + wait
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        _terminate([p for p in pids if _alive(p)])

    def abandon(self) -> None:
        """End the workers asked for, connected or not, and close."""
        end(list(self.connected.values()))
        _terminate([pid for index, pid in self.pids.items() if index not in self.connected])
        self.close()


def launch(db, schema: str, count: int, check, launched=None) -> list[Worker]:
    """Start up to ``count`` workers (as many as slots are free) and wait until each has connected and
    authenticated (``launched()`` between the two). The socket's directory exists only during this call."""
    started = begin_launch(db, schema, count)
    try:
        if launched is not None:
            try:
                launched()
            except BaseException:
                _terminate(list(started.pids.values()))
                raise
        return finish_launch(started, check)
    finally:
        started.close()


def begin_launch(db, schema: str, count: int) -> Launch:
    """Ask for up to ``count`` workers (as many as slots are free) without waiting for them; the caller
    finishes (finish_launch, poll_launch) and closes the launch."""
    directory = tempfile.mkdtemp(prefix="madlib_dl-")  # mode 0700: only the server's OS user enters it
    path = os.path.join(directory, "socket")
    if len(Token(path, b"\0" * 16, count).text().encode()) > TOKEN_BYTES:
        shutil.rmtree(directory, ignore_errors=True)
        raise InvalidArgument(f"the server's temporary directory {tempfile.gettempdir()!r} has too long a path for "
                              "a worker socket", hint="Set TMPDIR to a shorter one in the server's environment.")
    refusal = native.launch_refusal()
    if refusal is not None:
        shutil.rmtree(directory, ignore_errors=True)
        raise InvalidArgument(f"no background worker can start: {refusal}", hint=native.REFUSAL_HINT)
    started = Launch(directory, channel.Listener(path), os.urandom(16), {}, {})
    try:
        for index in range(count):
            token = Token(path, started.secret, index).text()
            native.arm_launch(token)  # the launcher starts a worker only for the token armed here
            row = db.execute(f"SELECT {db.quote_ident(schema)}.internal_launch_worker($1) AS pid",
                             [token], ["text"])[0]
            if row["pid"] is None:
                break
            started.pids[index] = int(row["pid"])
    except BaseException:
        _terminate(list(started.pids.values()))
        started.close()
        raise
    return started


def finish_launch(started: Launch, check) -> list[Worker]:
    """Wait until every worker asked for has connected and authenticated; on failure they are ended."""
    try:
        deadline = time.monotonic() + CONNECT_SECONDS
        while len(started.connected) < len(started.pids):
            if poll_launch(started, POLL_SECONDS, check):
                continue
            gone = [pid for index, pid in started.pids.items() if index not in started.connected and not _alive(pid)]
            if gone or time.monotonic() > deadline:
                raise InvalidArgument(
                    f"background worker{'s' if len(gone) > 1 else ''} {', '.join(map(str, gone or started.pids.values()))} "
                    f"{'exited' if gone else 'did not connect'} before serving this run",
                    hint="The server log says why (a role that has reached its connection limit, say).")
        return [started.connected[i] for i in sorted(started.connected)]
    except BaseException:
        for worker in started.connected.values():
            worker.conn.close()
        _terminate(list(started.pids.values()))
        raise


def poll_launch(started: Launch, timeout: float, check) -> bool:
    """Take one connection waiting on the launch's socket, if one comes within ``timeout`` seconds
    (``started.connected`` gets it once it has authenticated); whether one came."""
    conn = started.listener.accept(timeout)
    check()
    if conn is None:
        return False
    worker = _authenticated(conn, started.secret, started.pids, started.connected, check)
    if worker is not None:
        started.connected[worker.index] = worker
    return True


def _authenticated(conn, secret, pids, connected, check) -> Worker | None:
    try:
        about = channel.authenticate_worker(conn, secret, AUTH_SECONDS, check)
    except (channel.ChannelClosed, channel.ChannelError):
        conn.close()
        return None
    index, pid = about.get("index"), about.get("pid")
    if index not in pids or index in connected or pids[index] != pid:
        conn.close()
        return None
    return Worker(index, pid, conn)


def _start(workers: list[Worker], configs: list[WorkerConfig], idle_timeout: float, check) -> None:
    """Send each new worker its Start (role, threads, GPU) and wait for all: TensorFlow starts in each
    at once."""
    for worker, config in zip(workers, configs):
        request = requests.Start(config.threads, config.cuda_visible_devices, config.memory_limit_mib)
        header, blobs = requests.encode(request)
        header["idle_timeout"] = idle_timeout
        try:
            worker.conn.send(header, blobs, check)
        except channel.ChannelClosed:
            raise _lost_at_start(worker) from None
        worker.config = config
    for worker in workers:
        reply = _reply(worker, "start", check)
        if reply.row.get("pid") != worker.pid:
            raise InvalidArgument(f"background worker {worker.pid} answered as another process")


def _reply(worker: Worker, what: str, check) -> requests.Reply:
    try:
        message = worker.conn.receive(None, check)
    except channel.ChannelClosed:
        if what == "start":
            raise _lost_at_start(worker) from None
        raise SegmentFailed(f"background worker {worker.pid} exited during {what}; see the server log", "XX000") \
            from None
    return decode_reply(message, f"background worker {worker.pid}")


class WorkerLost(SegmentFailed):
    def __init__(self, message: str, hint: str):
        super().__init__(message, "XX000")
        self.hint = hint


def _lost_at_start(worker: Worker) -> WorkerLost:
    return WorkerLost(f"background worker {worker.pid} exited while it started (before it could serve this run)",
                      "The server log says why (out of memory, a terminate, a role that may not log in or has "
                      "reached its connection limit); SET madlib_dl.executor = 'in_process' trains in this session.")


def decode_reply(message, who: str) -> requests.Reply:
    header, blobs = message
    error = header.get("error") if isinstance(header, dict) else None
    if error is not None:
        raise SegmentFailed(f"{who}: {error.get('message')}", error.get("sqlstate"))
    reply = requests.decode(header, blobs)
    if not isinstance(reply, requests.Reply):
        raise SegmentFailed(f"{who}: answered with {type(reply).__name__}", "XX000")
    return reply


def end(workers: list[Worker], wait: float = 0.0) -> None:
    """Close the workers' channels (they exit on their own) and signal them to exit now; wait up to
    ``wait`` seconds for them to be gone."""
    for worker in workers:
        worker.conn.close()
    _terminate([w.pid for w in workers], wait)


def stop(workers: list[Worker], wait: float) -> None:
    """Ask the workers to exit (a Stop request: a clean exit, where a terminate logs a FATAL line a DBA
    reads as a crash); those still there after ``wait`` seconds are terminated."""
    _send_stop(workers, None, (channel.ChannelClosed, channel.ChannelError))
    pids = [w.pid for w in workers]
    deadline = time.monotonic() + wait
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    _terminate([p for p in pids if _alive(p)])


def _send_stop(workers: list[Worker], check, ignored=(channel.ChannelClosed,)) -> None:
    """Send each worker a Stop (it exits cleanly at once) and close its channel; a send failing with
    ``ignored`` is a worker already gone."""
    for worker in workers:
        try:
            worker.conn.send(*requests.encode(requests.Stop()), check=check)
        except ignored:
            pass
        worker.conn.close()


def _terminate(pids: list[int], wait: float = 0.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)  # a worker this session started; it exits at its next interrupt check
        except OSError:
            pass
    deadline = time.monotonic() + wait
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # the postmaster reaps its children quickly, but a zombie still answers kill(0)
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _without_state(request):
    blobs = {f.name: (b"" if f.type in ("bytes", bytes) else None) for f in fields(request)
             if isinstance(getattr(request, f.name), requests.BLOB_TYPES)}
    return replace(request, **blobs) if blobs else request


class BackgroundWorkers:
    """The executor over started workers: a segment's calls go to the worker that serves it (segment
    ``i`` of the run to worker ``i % workers``), one call at a time per worker, queued in order."""
    name = "workers"

    def __init__(self, workers: list[Worker], segments, check, idle_timeout: float, threads: int | None = None):
        self.workers = workers
        self.threads = threads  # TensorFlow threads per worker
        self.worker_count = len(workers)
        self.segments = list(segments)
        self._worker_of = {s: workers[i % len(workers)] for i, s in enumerate(self.segments)}
        self.pids = {s: w.pid for s, w in self._worker_of.items()}
        self._check = check
        self._idle_timeout = idle_timeout
        self._by_pid = {w.pid: w for w in workers}
        self._busy: dict[int, tuple] = {}  # worker pid -> (call, submitted)
        self._queues: dict[int, collections.deque] = {w.pid: collections.deque() for w in workers}
        self._progress: dict[int, str] = {}  # worker pid -> application_name for its next call
        self.on_progress = None  # (call, report): a running hop's progress (segment.hop_progress)

    def submit(self, call) -> None:
        worker = self._worker_of[call.segment]
        if worker.pid in self._busy:
            self._queues[worker.pid].append(call)
        else:
            self._send(worker, call)

    def _send(self, worker: Worker, call) -> None:
        header, blobs = requests.encode(call.request)
        progress = self._progress.pop(worker.pid, None)
        if progress is not None:
            header["progress"] = progress
        try:
            worker.conn.send(header, blobs, self._check)
        except channel.ChannelClosed:
            raise self._exited(worker, call) from None
        # What was sent is the worker's now: the driver keeps the call without its model state.
        self._busy[worker.pid] = (replace(call, request=_without_state(call.request)), time.time())

    def busy(self) -> bool:
        return bool(self._busy)

    def wait(self) -> list[Completed]:
        while True:
            done = self._collect()
            if done:
                return done
            select.select([self._by_pid[pid].conn for pid in self._busy], [], [], POLL_SECONDS)
            if native.cancel_pending():
                self.close()  # the check below may raise past every Python handler (native.cancel_pending)
            self._check()

    def _collect(self) -> list[Completed]:
        done = []
        for pid, (call, submitted) in list(self._busy.items()):
            worker = self._by_pid[pid]
            message = self._next(worker, call)
            while message is not None and isinstance(message[0], dict) and PROGRESS_KEY in message[0]:
                if self.on_progress is not None:
                    self.on_progress(call, message[0][PROGRESS_KEY])
                message = self._next(worker, call)
            if message is None:
                continue
            del self._busy[pid]
            reply = decode_reply(message, f"worker of segment {call.segment}")
            done.append(Completed(call, reply.row, submitted, time.time(), reply.weights, reply.optimizer_state))
            if self._queues[pid]:
                self._send(worker, self._queues[pid].popleft())
        return done

    def _next(self, worker: Worker, call):
        """The worker's next message, if one has come."""
        try:
            return worker.conn.poll()
        except channel.ChannelClosed:
            raise self._exited(worker, call) from None
        except channel.ChannelError as error:
            raise SegmentFailed(f"the background worker of segment {call.segment} (pid {worker.pid}) sent "
                                f"something unreadable ({error})", "XX000") from None

    @staticmethod
    def _exited(worker: Worker, call) -> SegmentFailed:
        return SegmentFailed(f"the background worker of segment {call.segment} (pid {worker.pid}) exited while "
                             f"serving {type(call.request).__name__.lower()} calls; see the server log", "XX000")

    def set_progress(self, text: str) -> None:
        """Shown as the workers' application_name from their next call on."""
        for worker in self.workers:
            segments = [s for s, w in self._worker_of.items() if w is worker]
            self._progress[worker.pid] = f"{text} (segment {', '.join(map(str, segments))})"[:63]

    def finish(self, run_id: str) -> None:
        """After a successful run: drop the run from every worker and keep them for the session's next
        call, or end them when the idle timeout is 0."""
        if self._idle_timeout <= 0:
            self._stop()
            return
        for worker in self.workers:
            header, blobs = requests.encode(requests.Release(run_id))
            header["idle_timeout"] = self._idle_timeout
            header["progress"] = IDLE_APPLICATION_NAME  # src/madlib_dl.c asks only these to give way
            header["pooled"] = True
            try:
                worker.conn.send(header, blobs, self._check)
            except channel.ChannelClosed:
                pass  # its reply says so
        kept = []
        for worker in self.workers:
            try:
                _reply(worker, "release", self._check)
                kept.append(worker)
            except SegmentFailed:  # gone after the run's last call: the run stands, the worker is not kept
                end([worker])
        keep_idle(kept)
        self.workers = []

    def _stop(self) -> None:
        """Ask every worker to end (they exit cleanly at once: no signal needed)."""
        _send_stop(self.workers, self._check)
        self.workers = []

    def close(self) -> None:
        """End every worker (a failed or cancelled run): their channels close and they are signalled."""
        self._busy.clear()
        end(self.workers, EXIT_WAIT_SECONDS)
        self.workers = []
