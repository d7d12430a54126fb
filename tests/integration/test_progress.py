"""fit_progress: a run's progress seen from another session while it runs, as a plain role on a server
with Debian's pg_hba; only the role's own runs (superusers and pg_monitor see all); gone when the run
ends, and when its driver is terminated."""

from __future__ import annotations

import datetime
import threading
import time

import psycopg2
import pytest

import digits_data
from tests.bar_double import RecordingBar

DB = "progress"
ITERATIONS = 4
FIT = digits_data.FIT_MULTIPLE
PROGRESS = ("SELECT function, output_table, iteration, iterations, hops_total, mst_key, status, role, phase "
            "FROM madlib_dl.fit_progress ORDER BY mst_key")


@pytest.fixture(scope="module")
def db(training_database):
    with training_database(DB) as conn, conn.cursor() as cur:
        digits_data.create_table(cur)
        digits_data.pack_and_select(cur, hidden=64, epochs=6)
        conn.commit()
        yield conn


class Running:
    """fit_multiple in its own session, in a thread."""

    def __init__(self, server, role, out, progress="on"):
        self.conn = psycopg2.connect(**server.dsn(DB, user=role))
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute("SELECT set_config('madlib_dl.progress', %s, false)", [progress])
        self.pid = self.conn.get_backend_pid()
        self.error, self.done = None, threading.Event()
        self.thread = threading.Thread(target=self._run, args=(out,))
        self.thread.start()

    def _run(self, out):
        try:
            with self.conn.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {out}, {out}_summary, {out}_info")
                cur.execute(FIT, [out, ITERATIONS])
        except Exception as error:  # the test looks at it
            self.error = error
        finally:
            self.done.set()

    def join(self):
        assert self.done.wait(300), "the run did not end"
        self.thread.join()
        self.conn.close()


def _rows(cur):
    cur.execute(PROGRESS)
    return cur.fetchall()


def _seen_while_running(cur, run, wanted):
    """Snapshots of fit_progress until ``wanted`` of them differ or the run ends."""
    seen = []
    while not run.done.is_set() and len({tuple(r) for s in seen for r in s}) < wanted:
        rows = _rows(cur)
        if rows and rows not in seen:
            seen.append(rows)
        time.sleep(0.05)
    return seen


def test_progress_is_seen_from_another_session_while_the_run_is_on_and_gone_after(db, server, plain_role):
    run = Running(server, plain_role, "watched")
    with psycopg2.connect(**server.dsn(DB, user=plain_role)) as watcher, watcher.cursor() as cur:
        watcher.autocommit = True
        seen = _seen_while_running(cur, run, wanted=6)
        run.join()
        assert run.error is None, run.error
        assert seen, "fit_progress showed nothing while the run was on"
        assert all(r[8].startswith("starting") for r in seen[0]), seen[0]  # shown while its workers start
        for rows in seen:
            assert [r[5] for r in rows] == [1, 2]  # both models
            for function, output, iteration, iterations, hops_total, _, status, role, phase in rows:
                assert (function, output, iterations, role) == (
                    "madlib_keras_fit_multiple_model", "watched", ITERATIONS, plain_role.name)
                if phase.startswith("starting"):
                    assert (iteration, hops_total, status) == (0, None, "starting")
                else:
                    assert 1 <= iteration <= ITERATIONS and phase in ("training", "evaluating")
                    assert (hops_total, status) == (4, "training")
        assert len({rows[0][2] for rows in seen}) >= 3, "the iteration never moved in the snapshots"
        assert _rows(cur) == []
        cur.execute("SELECT count(*) FROM madlib_dl.internal_progress_runs")
        assert cur.fetchone()[0] == 0


def test_a_role_sees_only_its_own_runs_and_a_superuser_sees_every_run(db, server, plain_role):
    run = Running(server, plain_role, "shared")
    with server.connect(DB) as admin, admin.cursor() as su, \
            psycopg2.connect(**server.dsn(DB, user=plain_role)) as own, own.cursor() as cur:
        admin.autocommit = own.autocommit = True
        su.execute("SELECT session_user")
        superuser = su.fetchone()[0]
        # a superuser's own (pretend) run, with a live driver: its session
        su.execute("INSERT INTO madlib_dl.internal_progress_runs (run_id, pid, backend_start, function, started) "
                   "SELECT 'other', pid, backend_start, 'madlib_keras_fit', now() FROM pg_stat_activity "
                   "WHERE pid = pg_backend_pid()")
        su.execute("INSERT INTO madlib_dl.internal_progress_models (run_id, mst_key, status) VALUES ('other', 1, 'x')")
        deadline = time.monotonic() + 120
        while not _rows(cur) and not run.done.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        mine = _rows(cur)
        su.execute("SELECT DISTINCT role FROM madlib_dl.fit_progress")
        everyone = {r[0] for r in su.fetchall()}
        run.join()
        su.execute("DELETE FROM madlib_dl.internal_progress_runs WHERE run_id = 'other'")
    assert run.error is None, run.error
    assert mine and {r[7] for r in mine} == {plain_role.name}
    assert everyone == {plain_role.name, superuser}


def test_a_terminated_driver_leaves_no_progress_rows(db, server, plain_role):
    run = Running(server, plain_role, "killed")
    with server.connect(DB) as admin, admin.cursor() as su:
        admin.autocommit = True
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not run.done.is_set():
            su.execute("SELECT count(*) FROM madlib_dl.internal_progress_runs WHERE pid = %s", [run.pid])
            if su.fetchone()[0]:
                break
            time.sleep(0.05)
        su.execute("SELECT pg_terminate_backend(%s)", [run.pid])
        run.join()
        assert run.error is not None  # the connection was terminated
        deadline = time.monotonic() + 30  # the recorder sees its driver gone and removes the rows
        while True:
            su.execute("SELECT count(*) FROM madlib_dl.internal_progress_runs WHERE pid = %s", [run.pid])
            if su.fetchone()[0] == 0:
                break
            assert time.monotonic() < deadline, "the terminated run's rows stayed"
            time.sleep(0.1)


def test_progress_off_records_nothing(db, server, plain_role):
    run = Running(server, plain_role, "quiet", progress="off")
    with psycopg2.connect(**server.dsn(DB, user=plain_role)) as watcher, watcher.cursor() as cur:
        watcher.autocommit = True
        seen = _seen_while_running(cur, run, wanted=1)
        run.join()
    assert run.error is None, run.error
    assert seen == []


HOP = ("SELECT clock_timestamp(), phase, iteration, hops_done, updated, hop_batches_done, hop_batches_total, "
       "hop_examples_per_second, batches_done, batches_total, examples_per_second, pid "
       "FROM madlib_dl.fit_progress WHERE output_table = 'long_hops'")
WATCH_SECONDS = 16  # of the first hop, which would take minutes


def test_a_long_first_hop_shows_at_once_and_then_every_few_seconds_and_the_client_bar_moves(db, server, plain_role):
    """A run whose first hop would take minutes (5,000 epochs on a segment): fit_progress shows it within
    10 s of the call (its workers starting), and while that hop runs its row is updated at least every
    5 s with the hop's batches and examples/s; the notebook client's bar moves by batches meanwhile.
    Then the run is cancelled (its recorder was there from the start: no hop is too long for it)."""
    from madlib_dl_client import Client

    with db.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS mst_long, mst_long_summary")
        cur.execute("SELECT madlib_dl.load_model_selection_table('arch', 'mst_long', ARRAY[1], %s, %s)",
                    [digits_data.TWO_CONFIGS[:1], ["batch_size=8, epochs=5000"]])
        db.commit()
    bars, outcome = [], {}

    def make_bar(**kwargs):
        bars.append(RecordingBar(**kwargs))
        return bars[-1]

    def train():
        try:
            Client(server.dsn(DB, user=plain_role)).fit_multiple(
                progress=make_bar, source_table="train_packed", model_output_table="long_hops",
                model_selection_table="mst_long", num_iterations=1, use_gpus=False)
        except Exception as error:  # the cancel, looked at below
            outcome["error"] = error

    called = time.monotonic()
    thread = threading.Thread(target=train)
    thread.start()
    samples = []
    with psycopg2.connect(**server.dsn(DB, user=plain_role)) as watcher, watcher.cursor() as cur:
        watcher.autocommit = True
        first = None
        while thread.is_alive():
            cur.execute(HOP)
            row = cur.fetchone()
            if row is not None and first is None:
                first = time.monotonic() - called
            if row is not None and row[5] is not None:
                samples.append(row)
            if samples and time.monotonic() - called > 10 + WATCH_SECONDS:
                break
            time.sleep(0.2)
        assert samples, f"fit_progress never showed the hop's progress: {outcome}"
        cur.execute("SELECT pg_catalog.pg_cancel_backend(%s)", [samples[-1][-1]])
    thread.join(120)
    assert not thread.is_alive(), "the cancelled run did not end"
    assert first is not None and first < 10, f"fit_progress showed the run {first} s after the call"
    assert "canceling statement" in str(outcome.get("error")), outcome
    assert all(r[1] == "training" and r[2] == 1 and r[3] == 0 for r in samples)  # all within the first hop
    updates = sorted({r[4] for r in samples})
    assert updates[-1] - updates[0] > datetime.timedelta(seconds=WATCH_SECONDS / 2), updates
    gaps = [(b - a).total_seconds() for a, b in zip(updates, updates[1:])]
    assert max(gaps) <= 5, gaps
    batches = [r[5] for r in samples]
    assert batches == sorted(batches) and len(set(batches)) >= 3, batches
    hop_total, run_total = samples[-1][6], samples[-1][9]  # one segment's hop; the iteration: both segments'
    assert hop_total % 5000 == 0 and run_total % 5000 == 0 and batches[-1] < hop_total < run_total
    assert all(r[7] > 0 and r[10] == r[7] and r[8] == r[5] for r in samples)  # the one hop running: the run's
    (bar,) = bars
    moved = [n for unit, n, _ in bar.shown if unit == "batch"]
    assert bar.total == run_total and len(set(moved)) >= 3 and moved == sorted(moved), bar.shown


def test_a_long_hop_in_process_through_keras_fit_shows_its_batches(db, server, plain_role):
    """The other ways a hop runs: in the calling session (madlib_dl.executor = 'in_process': the driver
    hears its own hop) and through Keras' fit (class_weight), for madlib_keras_fit. Its batches move in
    fit_progress while the hop runs; then it is cancelled."""
    conn = psycopg2.connect(**server.dsn(DB, user=plain_role))
    conn.autocommit = True
    pid, outcome = conn.get_backend_pid(), {}

    def train():
        try:
            with conn.cursor() as cur:
                cur.execute("SET madlib_dl.executor = 'in_process'")
                cur.execute("DROP TABLE IF EXISTS one_long, one_long_summary")
                cur.execute("SELECT madlib_dl.madlib_keras_fit('train_packed', 'one_long', 'arch', 1, %s, "
                            "'batch_size=8, epochs=5000, class_weight={0: 2.0}', 1, FALSE)",
                            [digits_data.TWO_CONFIGS[0]])
        except psycopg2.Error as error:
            outcome["error"] = error

    thread = threading.Thread(target=train)
    thread.start()
    seen, deadline = [], time.monotonic() + 90
    with psycopg2.connect(**server.dsn(DB, user=plain_role)) as watcher, watcher.cursor() as cur:
        watcher.autocommit = True
        while len({r[1] for r in seen}) < 3 and thread.is_alive() and time.monotonic() < deadline:
            cur.execute("SELECT function, hop_batches_done, hop_batches_total, batches_total, examples_per_second "
                        "FROM madlib_dl.fit_progress WHERE pid = %s AND hop_batches_done IS NOT NULL", [pid])
            seen += cur.fetchall()
            time.sleep(0.2)
        cur.execute("SELECT pg_catalog.pg_cancel_backend(%s)", [pid])
    thread.join(60)
    conn.close()
    assert "canceling statement" in str(outcome.get("error")), outcome
    assert len({r[1] for r in seen}) >= 3, seen  # the hop moved, as its reports came
    function, _, hop_total, run_total, rate = seen[-1]
    assert function == "madlib_keras_fit" and hop_total % 5000 == 0 and run_total > hop_total and rate > 0
