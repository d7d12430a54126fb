"""fit_progress: a run's progress seen from another session while it runs, as a plain role on a server
with Debian's pg_hba; only the role's own runs (superusers and pg_monitor see all); gone when the run
ends, and when its driver is terminated."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest

import digits_data

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
        for rows in seen:
            assert [r[5] for r in rows] == [1, 2]  # both models
            for function, output, iteration, iterations, hops_total, _, status, role, phase in rows:
                assert (function, output, iterations, hops_total, status, role) == (
                    "madlib_keras_fit_multiple_model", "watched", ITERATIONS, 4, "training", plain_role.name)
                assert 1 <= iteration <= ITERATIONS and phase in ("training", "evaluating")
        assert len({rows[0][2] for rows in seen}) >= 2, "the iteration never moved in the snapshots"
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


def test_a_first_hop_longer_than_ten_seconds_keeps_the_recorder(db, server, plain_role):
    """The recorder is accepted at the run's first snapshot after it started, the end of the first hop;
    its worker waits that long for the driver's challenge (it gave up after 10 s, and a run whose first
    hop was longer had no fit_progress and saved no checkpoints, without a word)."""
    with db.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS mst_long, mst_long_summary")
        cur.execute("SELECT madlib_dl.load_model_selection_table('arch', 'mst_long', ARRAY[1], %s, %s)",
                    [digits_data.TWO_CONFIGS[:1], ["batch_size=8, epochs=600"]])
        db.commit()
    conn = psycopg2.connect(**server.dsn(DB, user=plain_role))
    conn.autocommit = True
    seen, done = [], threading.Event()

    def watch():
        with psycopg2.connect(**server.dsn(DB, user=plain_role)) as watcher, watcher.cursor() as cur:
            watcher.autocommit = True
            while not done.is_set():
                cur.execute("SELECT iteration FROM madlib_dl.fit_progress WHERE output_table = 'long_hops'")
                seen.extend(cur.fetchall())
                time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS long_hops, long_hops_summary, long_hops_info")
            cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('train_packed', 'long_hops', 'mst_long', "
                        "2, FALSE)")
            cur.execute("SELECT min(seconds) FROM madlib_dl.last_fit_hops() WHERE kind = 'train'")
            shortest = cur.fetchone()[0]
    finally:
        done.set()
        watcher.join()
        conn.close()
    assert shortest > 11, f"hops of {shortest:.1f} s test nothing here: give mst_long more epochs"
    assert not [n for n in conn.notices if "fit_progress stops showing" in n], conn.notices
    assert seen, "fit_progress never showed the run"
