"""Live progress for other sessions (the fit_progress view): the driver's side.

A run's own transaction commits only at its end, so its driver cannot write progress that others see.
It starts one more background worker, the recorder (no TensorFlow: it only writes rows), which serves
requests.Record snapshots in its own committed transactions (segment/recording.py). The recorder is
made before the run's workers, with the run's first snapshot (phase: starting workers), and may be
asked for once they have their slots (:meth:`Recorder.begin`), so it takes only a slot they left free;
it is asked for when the run has lasted START_SECONDS (a shorter call has returned before anyone could
look: it needs no worker more). The driver does not wait for it: snapshots start once it has connected,
which the driver's waits for its workers notice (:meth:`Recorder.tick`), so a run shows within a
few seconds of its start. A snapshot is sent only
when the recorder has answered the last one; meanwhile newer ones replace it, so a slow write never
holds training up. While a hop runs, its backend reports its batches every few seconds
(segment.hop_progress), and each report is a snapshot.
The same recorder writes the run's checkpoints (training.checkpoints): their requests are queued in
order and never dropped. With madlib_dl.progress = 'off' the recorder starts only for a run that saves
checkpoints; with no free slot (a NOTICE says so), neither is recorded.
Every row the recorder writes is the run's role's (the caller's current user, which the recorder acts
as; segment/recording.py).
"""

from __future__ import annotations

import datetime
import time

from madlib_dl import channel, native, settings
from madlib_dl.errors import MadlibDLError
from madlib_dl.segment import requests
from madlib_dl.training import background, checkpoints
from madlib_dl.training.executors import SegmentFailed

MIN_INTERVAL_SECONDS = 0.2  # snapshots closer together wait: every hop longer than this is still shown
START_SECONDS = 1.0  # a run shorter than this starts no recorder (unless it saves a checkpoint)
FINAL_REPLY_SECONDS = 5.0
EXIT_WAIT_SECONDS = 1.0


class Recorder:
    def __init__(self, db, schema: str, run_id: str, function: str, output_table: str | None, check):
        self.db, self.schema, self.run_id, self.check = db, schema, run_id, check
        self.worker: background.Worker | None = None
        self.launch: background.Launch | None = None
        self.pending: requests.Record | None = None
        self.outstanding = 0  # requests sent whose replies have not come
        self.sent_at = 0.0    # when the last snapshot went
        self.recording = True  # progress snapshots (madlib_dl.progress); the recorder may serve checkpoints only
        self.wanted = True     # a recorder is to start (for progress, or checkpoints)
        self.checkpoints = False  # the run may save checkpoints (what a NOTICE says it loses)
        self.allowed = False   # the run's workers have their slots: the recorder may take one
        self.begun = False     # its worker was asked for
        self.created = time.monotonic()
        self.last: tuple[dict, list] | None = None  # the last snapshot asked for (run, models)
        # How long the recorder waits for the next request before it ends and gives its slot back: the
        # DBA's cap (a hop with no snapshot for longer loses the recorder: progress and checkpoints stop).
        self.idle_timeout = settings.read(db, settings.MAX_RECORDER_IDLE_TIMEOUT)
        self.role = checkpoints.current_role(db)  # whose rows these are: the recorder acts as this role too
        me = db.execute("SELECT pg_backend_pid() AS pid, backend_start FROM pg_stat_activity "
                        "WHERE pid = pg_backend_pid()")[0]
        self.header = {"pid": me["pid"], "backend_start": me["backend_start"], "function": function,
                       "output_table": output_table, "started": datetime.datetime.now(datetime.timezone.utc)}

    def update(self, run: dict, models: list[dict], wait: bool = False) -> None:
        """The run's state now: ``run`` has the progress columns (iteration, hops...), ``models`` one
        dict per model. Sent at once when the recorder is free, else kept until it is; ``wait``: wait
        for the recorder (a state that will stand for a while, such as evaluation beginning)."""
        if not self.recording:
            return
        self.last = (run, models)
        self.pending = requests.Record(self.schema, self.role, self.run_id, _json_safe({**self.header, **run}), models)
        self._flush(wait)

    def phase(self, text: str) -> None:
        """The last snapshot again, in another phase (the run's workers starting, say)."""
        if self.last is not None:
            self.update({**self.last[0], "phase": text}, self.last[1])

    def tick(self) -> None:
        """Send what waits, if the recorder is free (called while the driver waits for its workers)."""
        if self.recording and self.pending is not None:
            self._flush()

    def begin(self) -> None:
        """The run's workers have their slots: the recorder may take one, once the run has lasted
        START_SECONDS."""
        self.allowed = True
        self.tick()

    def _launch(self, now: bool = False) -> None:
        """Ask for the recorder's worker (once), when allowed and due (``now``: a checkpoint needs it)."""
        if self.begun or not self.wanted or not self.allowed:
            return
        if not now and time.monotonic() - self.created < START_SECONDS:
            return
        self.begun = True
        lost = f"{self.header['function']}: fit_progress will not show this run" + (
            " and it saves no checkpoints" if self.checkpoints else "")
        refusal = native.launch_refusal()  # the recorder acts as the caller too: it starts where workers may
        if refusal is not None:
            self.db.notice(f"{lost}: its recorder is a background worker, and none starts here because {refusal}; "
                           "the run goes on")
            return
        launch = background.begin_launch(self.db, self.schema, 1)
        if not launch.pids:
            launch.close()
            self.db.notice(f"{lost}: no background worker slot is free for its recorder (max_worker_processes); "
                           "the run goes on")
            return
        self.launch = launch

    def ending(self) -> None:
        """The run's work is done: no recorder starts from here (the workers' release would start one
        for a run that just passed START_SECONDS, only to stop it)."""
        self.wanted = False

    @property
    def saves(self) -> bool:
        """Whether checkpoints can be sent: the recorder is connected, starting, or may yet start."""
        return self.worker is not None or self.launch is not None or (self.wanted and self.allowed and not self.begun)

    def checkpoint(self, messages: list) -> bool:
        """Send every request of a checkpoint, in order (never dropped, as snapshots may be); whether
        there is a recorder to send them to. Waits for it to connect if it has not yet."""
        self._launch(now=True)
        if self.worker is None and self.launch is not None:
            try:
                background.finish_launch(self.launch, self.check)
            except MadlibDLError as error:
                self.launch.close()
                self.launch = None
                self.db.notice(f"{self.header['function']}: no checkpoints are saved: the recorder did not start "
                               f"({error})")
                return False
            self._connected()
        if self.worker is None:
            return False
        try:
            self._receive(block=False, check=self.check)
            for message in messages:
                self._send(message, self.check)
            return True
        except (channel.ChannelClosed, channel.ChannelError, SegmentFailed) as error:
            self._lost(error)
            return False

    def close(self) -> None:
        """The run is over (or failed): its rows go, and the recorder ends. No SQL here: after a cancel
        the session's transaction is aborted, and the run's own error must be the one reported."""
        self.wanted = False
        if self.launch is not None:  # not connected yet: it exits on its own, when it finds no socket
            self.launch.give_up(EXIT_WAIT_SECONDS)
            self.launch = None
        if self.worker is None:
            return
        try:
            self._receive(block=True, check=None)
            self._send(requests.Record(self.schema, self.role, self.run_id, final=True), check=None)
            self._receive(block=True, check=None)
        except Exception:  # best effort: a recorder that went away removed the rows itself
            pass
        finally:
            background.stop([self.worker], EXIT_WAIT_SECONDS)  # gone by the time the call returns
            self.worker = None

    def _flush(self, wait: bool = False) -> None:
        if not self._connected():
            return
        try:
            self._receive(block=wait, check=self.check)
            soon = time.monotonic() - self.sent_at < MIN_INTERVAL_SECONDS and not wait
            if not self.outstanding and self.pending is not None and not soon:
                self._send(self.pending, self.check)
                self.pending = None
                self.sent_at = time.monotonic()
        except (channel.ChannelClosed, channel.ChannelError, SegmentFailed) as error:
            self._lost(error)

    def _lost(self, error) -> None:
        background.end([self.worker])
        self.worker = None  # progress and checkpoints stop; the run does not
        self.db.notice(f"{self.header['function']}: fit_progress stops showing this run and no more checkpoints "
                       f"are saved: its recorder {error}")

    def _connected(self) -> bool:
        if self.worker is not None:
            return True
        self._launch()
        if self.launch is None:
            return False
        background.poll_launch(self.launch, 0.0, self.check)
        if not self.launch.connected:
            return False
        (self.worker,) = self.launch.connected.values()
        self.launch.close()
        self.launch = None
        return True

    def _send(self, record, check) -> None:
        header, blobs = requests.encode(record)
        header["idle_timeout"] = self.idle_timeout
        header["progress"] = f"madlib_dl progress recorder ({self.header['function']})"  # its application_name
        self.worker.conn.send(header, blobs, check)
        self.outstanding += 1

    def _receive(self, block: bool, check) -> None:
        """Take the replies that have come (``block``: all of them, each within FINAL_REPLY_SECONDS of
        the last; a checkpoint's large states may take that long each)."""
        while self.outstanding:
            message = self.worker.conn.receive(FINAL_REPLY_SECONDS, check) if block else self.worker.conn.poll()
            if message is None:
                if block:
                    raise channel.ChannelError("the progress recorder did not answer")
                return
            self.outstanding -= 1
            background.decode_reply(message, f"the progress recorder (pid {self.worker.pid})")


def start(db, schema: str, run_id: str, function: str, output_table: str | None, check,
          checkpoints: bool = False) -> Recorder:
    """A recorder for the run; its worker is asked for by :meth:`Recorder.begin` (unless progress is off
    and the run saves no checkpoints)."""
    recorder = Recorder(db, schema, run_id, function, output_table, check)
    recorder.recording = settings.read_choice(db, settings.PROGRESS) != "off"
    recorder.wanted = recorder.recording or checkpoints
    recorder.checkpoints = checkpoints
    return recorder


def _json_safe(values: dict) -> dict:
    """Timestamps as ISO text (the channel's header is JSON); the recorder's SQL casts them back."""
    return {k: v.isoformat() if isinstance(v, (datetime.datetime, datetime.date)) else v for k, v in values.items()}


def eta_seconds(elapsed: float, done: int, total: int) -> float | None:
    """Seconds left if the rest goes at the pace so far; None before anything is done or without a total."""
    if not done or not total:
        return None
    return elapsed / done * max(0, total - done)

