"""Live progress for other sessions (the fit_progress view): the driver's side.

A run's own transaction commits only at its end, so its driver cannot write progress that others see.
It starts one more background worker, the recorder (no TensorFlow: it only writes rows), which serves
requests.Record snapshots in its own committed transactions (segment/recording.py). The recorder is
asked for after the training workers, so it takes only a slot they left free, and the driver does not
wait for it: snapshots start once it has connected. A snapshot is sent only when the recorder has
answered the last one; meanwhile newer ones replace it, so a slow write never holds training up.
With madlib_dl.progress = 'off', or no free slot (a NOTICE says so), nothing is recorded.
"""

from __future__ import annotations

import datetime

from madlib_dl import channel, settings
from madlib_dl.segment import requests
from madlib_dl.training import background
from madlib_dl.training.executors import SegmentFailed

RECORDER_IDLE_SECONDS = 7 * 86400  # a recorder waits for the next snapshot as long as its run lasts
FINAL_REPLY_SECONDS = 5.0


class Recorder:
    def __init__(self, db, schema: str, run_id: str, function: str, output_table: str | None, check):
        self.db, self.schema, self.run_id, self.check = db, schema, run_id, check
        self.worker: background.Worker | None = None
        self.launch: background.Launch | None = None
        self.pending: requests.Record | None = None
        self.waiting = False  # a snapshot was sent and its reply has not come
        me = db.execute("SELECT pg_backend_pid() AS pid, backend_start FROM pg_stat_activity "
                        "WHERE pid = pg_backend_pid()")[0]
        self.header = {"pid": me["pid"], "backend_start": me["backend_start"], "function": function,
                       "output_table": output_table, "started": datetime.datetime.now(datetime.timezone.utc)}

    def update(self, run: dict, models: list[dict], wait: bool = False) -> None:
        """The run's state now: ``run`` has the progress columns (iteration, hops...), ``models`` one
        dict per model. Sent at once when the recorder is free, else kept until it is; ``wait``: wait
        for the recorder (a state that will stand for a while, such as evaluation beginning)."""
        self.pending = requests.Record(self.schema, self.run_id, _json_safe({**self.header, **run}), models)
        self._flush(wait)

    def close(self) -> None:
        """The run is over (or failed): its rows go, and the recorder ends. No SQL here: after a cancel
        the session's transaction is aborted, and the run's own error must be the one reported."""
        if self.launch is not None:
            self.launch.abandon()
            self.launch = None
        if self.worker is None:
            return
        try:
            self._receive(block=True, check=None)
            self._send(requests.Record(self.schema, self.run_id, final=True), check=None)
            self._receive(block=True, check=None)
        except Exception:  # best effort: a recorder that went away removed the rows itself
            pass
        finally:
            background.end([self.worker])
            self.worker = None

    def _flush(self, wait: bool = False) -> None:
        if not self._connected():
            return
        try:
            self._receive(block=wait, check=self.check)
            if not self.waiting and self.pending is not None:
                self._send(self.pending, self.check)
                self.pending = None
        except (channel.ChannelClosed, channel.ChannelError, SegmentFailed) as error:
            background.end([self.worker])
            self.worker = None  # progress stops; the run does not
            self.db.notice(f"{self.header['function']}: fit_progress stops showing this run: its recorder {error}")

    def _connected(self) -> bool:
        if self.worker is not None:
            return True
        if self.launch is None:
            return False
        background.poll_launch(self.launch, 0.0, self.check)
        if not self.launch.connected:
            return False
        (self.worker,) = self.launch.connected.values()
        self.launch.close()
        self.launch = None
        return True

    def _send(self, record: requests.Record, check) -> None:
        header, blobs = requests.encode(record)
        header["idle_timeout"] = RECORDER_IDLE_SECONDS
        header["progress"] = f"madlib_dl progress recorder ({self.header['function']})"  # its application_name
        self.worker.conn.send(header, blobs, check)
        self.waiting = True

    def _receive(self, block: bool, check) -> None:
        if not self.waiting:
            return
        message = self.worker.conn.receive(FINAL_REPLY_SECONDS, check) if block else self.worker.conn.poll()
        if message is not None:
            self.waiting = False
            background.decode_reply(message, f"the progress recorder (pid {self.worker.pid})")


def start(db, schema: str, run_id: str, function: str, output_table: str | None, check) -> Recorder:
    """A recorder for the run, launching (not awaiting) its worker unless progress is off."""
    recorder = Recorder(db, schema, run_id, function, output_table, check)
    if settings.read_choice(db, settings.PROGRESS) == "off":
        return recorder
    launch = background.begin_launch(db, schema, 1)
    if not launch.pids:
        launch.close()
        db.notice(f"{function}: fit_progress will not show this run: no background worker slot is free for its "
                  f"recorder (max_worker_processes); training goes on")
        return recorder
    recorder.launch = launch
    return recorder


def _json_safe(values: dict) -> dict:
    """Timestamps as ISO text (the channel's header is JSON); the recorder's SQL casts them back."""
    return {k: v.isoformat() if isinstance(v, (datetime.datetime, datetime.date)) else v for k, v in values.items()}


def eta_seconds(elapsed: float, done: int, total: int) -> float | None:
    """Seconds left if the rest goes at the pace so far; None before anything is done or without a total."""
    if not done or not total or done >= total:
        return None if not done or not total else 0.0
    return elapsed / done * (total - done)

