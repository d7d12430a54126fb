"""Checkpoints and resume, as a plain role on a server with Debian's pg_hba: a run whose driver is
terminated mid-run (fit_multiple, madlib_keras_automl) or whose server restarts continues from its last
checkpoint when called again with the same arguments, ends bitwise equal to an uninterrupted run (in
process), trains only what was left, and leaves no checkpoint once it succeeds; other arguments never
use it, nor does an automl checkpoint whose policy log does not replay; a cancel or a client that
disappears leaves the checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import psycopg2
import pytest

import digits_data

DB = "checkpoints"
ITERATIONS, MODELS, SEGMENTS = 4, 2, 2
FIT = digits_data.FIT_MULTIPLE


@pytest.fixture(scope="module")
def db(training_database):
    with training_database(DB) as conn, conn.cursor() as cur:
        digits_data.create_table(cur)
        digits_data.pack_and_select(cur, hidden=32, epochs=4, segments=SEGMENTS)
        conn.commit()
        yield conn


def _session(server, role):
    conn = psycopg2.connect(**server.dsn(DB, user=role))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET madlib_dl.executor = 'in_process'; SET madlib_dl.checkpoint_every = 1")
    return conn


def _fit(conn, out, iterations=ITERATIONS):
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {out}, {out}_summary, {out}_info")
        conn.notices.clear()
        cur.execute(FIT, [out, iterations])
        cur.execute("SELECT count(*) FROM madlib_dl.last_fit_hops() WHERE kind = 'train'")
        return cur.fetchone()[0], list(conn.notices)


def _weights(cur, table):
    cur.execute(f"SELECT mst_key, model_weights, optimizer_state FROM {table} ORDER BY mst_key")
    return [(k, bytes(w), bytes(o)) for k, w, o in cur.fetchall()]


def _checkpoint_iteration(su, role) -> int | None:
    su.execute("SELECT max(iteration) FROM madlib_dl.internal_checkpoints WHERE role = %s::regrole", [role])
    return su.fetchone()[0]


def test_a_terminated_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(db, server, plain_role):
    with server.connect(DB) as admin, admin.cursor() as su:
        admin.autocommit = True
        error = _terminated_after_checkpoint(su, server, plain_role, "resumed", 2)
        assert isinstance(error, psycopg2.Error), "the terminated run did not fail"
        saved = _checkpoint_iteration(su, plain_role.name)
        assert 2 <= saved < ITERATIONS
        su.execute("SELECT count(*) FROM madlib_dl.internal_checkpoint_models m JOIN madlib_dl.internal_checkpoints c "
                   "USING (run_key) WHERE m.iteration = c.iteration")
        assert su.fetchone()[0] == MODELS
        su.execute("SELECT to_regclass('resumed')")
        assert su.fetchone()[0] is None  # a failed run writes no output

        again = _session(server, plain_role)
        hops, notices = _fit(again, "resumed")
        assert any(f"resuming from the checkpoint after iteration {saved} of {ITERATIONS}" in n for n in notices)
        assert hops == (ITERATIONS - saved) * MODELS * SEGMENTS  # only what was left
        assert _checkpoint_iteration(su, plain_role.name) is None  # success removes it
        fresh = _session(server, plain_role)
        full_hops, notices = _fit(fresh, "uninterrupted")
        assert full_hops == ITERATIONS * MODELS * SEGMENTS and not any("resuming" in n for n in notices)
        with again.cursor() as cur:
            assert _weights(cur, "resumed") == _weights(cur, "uninterrupted")
            cur.execute("SELECT mst_key, training_loss, metrics_iters FROM resumed_info ORDER BY 1")
            resumed_info = cur.fetchall()
            cur.execute("SELECT mst_key, training_loss, metrics_iters FROM uninterrupted_info ORDER BY 1")
            assert resumed_info == cur.fetchall()
        for conn in (again, fresh):
            conn.close()


def test_other_arguments_never_use_a_checkpoint(db, server, plain_role):
    with server.connect(DB) as admin, admin.cursor() as su:
        admin.autocommit = True
        _terminated_after_checkpoint(su, server, plain_role, "other", 1)
        conn = _session(server, plain_role)
        hops, notices = _fit(conn, "other", iterations=ITERATIONS - 1)  # another run: from the start
        assert hops == (ITERATIONS - 1) * MODELS * SEGMENTS and not any("resuming" in n for n in notices)
        assert _checkpoint_iteration(su, plain_role.name) is not None  # the other run's stays, unused
        su.execute("DELETE FROM madlib_dl.internal_checkpoints")
        conn.close()


def _terminated_after_checkpoint(su, server, role, out: str, iteration: int, call=None, stop=None):
    """Run ``call(conn, out)`` (fit_multiple by default) in a thread, stop its driver once a checkpoint
    of at least ``iteration`` stands (``stop(pid)``; by default pg_terminate_backend), and return the
    error the run ended with (None if it did not fail)."""
    su.execute("DELETE FROM madlib_dl.internal_checkpoints")
    driver = _session(server, role)
    ended = []

    def run():
        try:
            (call or _fit)(driver, out)
            ended.append(None)
        except Exception as error:  # the test looks at it
            ended.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 180
    while (_checkpoint_iteration(su, role.name) or 0) < iteration:
        assert time.monotonic() < deadline and thread.is_alive(), f"no checkpoint of iteration {iteration} came"
        time.sleep(0.05)
    pid = driver.get_backend_pid()
    if stop is None:
        su.execute("SELECT pg_terminate_backend(%s)", [pid])
    else:
        stop(pid)
    thread.join(120)
    assert not thread.is_alive(), "the run did not end"
    return ended[0]


# ---------------------------------------------------------------------------------------------------
# madlib_keras_automl

COMPILE_GRID = ("{'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'], "
                "'optimizer_params_list': [{'optimizer': ['Adam'], 'lr': [0.0003, 0.1, 'log']}]}")
FIT_GRID = "{'batch_size': [16, 64], 'epochs': [1]}"
AUTOML = ("SELECT madlib_dl.madlib_keras_automl('train_packed', %s, 'arch', %s, ARRAY[1], %s, %s, %s, %s, %s, "
          "use_caching => TRUE)")
ASHA = ("asha", "max_iterations=4, grace_iterations=1, reduction_factor=2, num_configs=6")
HYPEROPT_CONFIGS, HYPEROPT_ITERATIONS = 4, 3
HYPEROPT = ("hyperopt", f"num_configs={HYPEROPT_CONFIGS}, num_iterations={HYPEROPT_ITERATIONS}, algorithm=tpe")


def _automl(method, random_state):
    def call(conn, out):
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {out}, {out}_summary, {out}_info, {out}_mst, {out}_mst_summary")
            conn.notices.clear()
            cur.execute(AUTOML, [out, f"{out}_mst", COMPILE_GRID, FIT_GRID, *method, random_state])
            cur.execute("SELECT count(*) FROM madlib_dl.last_fit_hops() WHERE kind = 'train'")
            return cur.fetchone()[0], list(conn.notices)
    return call


def _automl_state(su, role):
    su.execute("SELECT state::json FROM madlib_dl.internal_checkpoints WHERE role = %s::regrole "
               "AND iteration IS NOT NULL", [role])
    return su.fetchone()[0]


def _automl_result(cur, out):
    cur.execute(f"SELECT mst_key, compile_params, fit_params, automl_status, iterations_trained, training_loss, "
                f"metrics_iters FROM {out}_info ORDER BY mst_key")
    return cur.fetchall(), _weights(cur, out)


def test_a_terminated_automl_run_resumes_and_ends_as_an_uninterrupted_one(db, server, plain_role):
    with server.connect(DB) as admin, admin.cursor() as su:
        admin.autocommit = True
        call = _automl(ASHA, 7)
        error = _terminated_after_checkpoint(su, server, plain_role, "am_resumed", 3, call)
        assert isinstance(error, psycopg2.Error), "the terminated run did not fail"
        state = _automl_state(su, plain_role.name)
        assert state["random_state"] == 7 and state["trained_hops"] > 0
        su.execute("SELECT count(*) FROM madlib_dl.internal_checkpoint_models m JOIN madlib_dl.internal_checkpoints c "
                   "USING (run_key) WHERE m.iteration = c.iteration")
        assert su.fetchone()[0] == len(state["trials"])  # every model started so far, kept or written again

        again = _session(server, plain_role)
        hops, notices = call(again, "am_resumed")
        assert any(f"resuming from the checkpoint after {state['model_iterations']} model iterations" in n
                   for n in notices), notices
        assert _checkpoint_iteration(su, plain_role.name) is None  # success removes it
        fresh = _session(server, plain_role)
        full_hops, notices = call(fresh, "am_full")
        assert not any("resuming" in n for n in notices)
        assert hops == full_hops - state["trained_hops"]  # only what was left
        with again.cursor() as cur:
            assert _automl_result(cur, "am_resumed") == _automl_result(cur, "am_full")
            cur.execute("SELECT count(*) FROM am_resumed_info WHERE automl_status = 'stopped'")
            assert cur.fetchone()[0] > 0  # the policy decided after the resume too
        for conn in (again, fresh):
            conn.close()


def test_an_automl_run_without_random_state_resumes_with_the_seed_it_drew(db, server, plain_role):
    with server.connect(DB) as admin, admin.cursor() as su:
        admin.autocommit = True
        call = _automl(HYPEROPT, None)
        _terminated_after_checkpoint(su, server, plain_role, "tpe_resumed", 2, call)
        state = _automl_state(su, plain_role.name)
        drawn = state["random_state"]
        assert isinstance(drawn, int)
        again = _session(server, plain_role)
        hops, notices = call(again, "tpe_resumed")
        assert any("resuming from the checkpoint" in n for n in notices)
        assert hops == HYPEROPT_CONFIGS * HYPEROPT_ITERATIONS * SEGMENTS - state["trained_hops"]
        seeded = _session(server, plain_role)  # the run it resumed, had its seed been given
        _automl(HYPEROPT, drawn)(seeded, "tpe_seeded")
        with again.cursor() as cur:
            assert _automl_result(cur, "tpe_resumed") == _automl_result(cur, "tpe_seeded")
        for conn in (again, seeded):
            conn.close()


def test_an_automl_checkpoint_whose_policy_does_not_replay_is_not_used(db, server, plain_role):
    with server.connect(DB) as admin, admin.cursor() as su:
        admin.autocommit = True
        call = _automl(HYPEROPT, 7)
        _terminated_after_checkpoint(su, server, plain_role, "tpe_tampered", 2, call)
        su.execute("UPDATE madlib_dl.internal_checkpoints SET state = "
                   "jsonb_set(state::jsonb, '{random_state}', '8')::text WHERE role = %s::regrole", [plain_role.name])
        again = _session(server, plain_role)
        hops, notices = call(again, "tpe_tampered")
        assert any("is not used (the policy decided otherwise at entry 0 (start)" in n and "starts over" in n
                   for n in notices), notices
        assert not any("resuming" in n for n in notices)
        assert hops == HYPEROPT_CONFIGS * HYPEROPT_ITERATIONS * SEGMENTS  # all of it, from the start
        assert _checkpoint_iteration(su, plain_role.name) is None
        again.close()


# ---------------------------------------------------------------------------------------------------
# What stops a run leaves its checkpoint

def test_a_cancelled_run_keeps_its_checkpoint_and_says_so(db, server, plain_role):
    with server.connect(DB) as admin, admin.cursor() as su:
        admin.autocommit = True
        error = _terminated_after_checkpoint(su, server, plain_role, "cancelled", 1,
                                             stop=lambda pid: su.execute("SELECT pg_cancel_backend(%s)", [pid]))
        assert isinstance(error, psycopg2.errors.QueryCanceled), error
        saved = _checkpoint_iteration(su, plain_role.name)
        assert saved is not None and saved >= 1
        assert "nothing was written" in error.diag.message_primary
        assert error.diag.message_hint.startswith("Its checkpoint after iteration ")
        assert "again with the same arguments to resume" in error.diag.message_hint
        su.execute("DELETE FROM madlib_dl.internal_checkpoints")


def test_a_client_that_disappears_leaves_the_checkpoint(db, server, plain_role):
    env = dict(os.environ, **server.libpq_env(DB, user=plain_role), PGOPTIONS="-c madlib_dl.checkpoint_every=1")
    with server.connect(DB) as admin, admin.cursor() as su:
        admin.autocommit = True
        su.execute("DELETE FROM madlib_dl.internal_checkpoints")
        sql = FIT.replace("%s", "'gone'", 1).replace("%s", str(ITERATIONS))
        psql = subprocess.Popen(["psql", "-X", "-q", "-c", sql], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 180
            while (_checkpoint_iteration(su, plain_role.name) or 0) < 1:
                assert time.monotonic() < deadline and psql.poll() is None, "no checkpoint came"
                time.sleep(0.05)
            psql.send_signal(signal.SIGKILL)
            psql.wait()
            deadline = time.monotonic() + 30
            while True:  # the driver notices its client is gone and ends
                su.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND query LIKE %s",
                           [plain_role.name, "%'gone'%"])
                if su.fetchone()[0] == 0:
                    break
                assert time.monotonic() < deadline, "the run went on without its client"
                time.sleep(0.1)
            assert _checkpoint_iteration(su, plain_role.name) >= 1
            su.execute("SELECT to_regclass('gone')")
            assert su.fetchone()[0] is None
        finally:
            if psql.poll() is None:
                psql.kill()
        su.execute("DELETE FROM madlib_dl.internal_checkpoints")


def test_a_run_resumes_after_the_server_restarts(db, server, plain_role, restart_server):
    """Last in this module: the restart ends every session, the module's connection too."""
    with server.connect(DB) as admin, admin.cursor() as su:
        admin.autocommit = True
        restarted = []
        _terminated_after_checkpoint(su, server, plain_role, "restarted", 2,
                                     stop=lambda pid: restarted.append(restart_server()))
    assert restarted
    with server.connect(DB) as admin, admin.cursor() as su:
        admin.autocommit = True
        saved = _checkpoint_iteration(su, plain_role.name)  # committed before the crash, recovered after
        assert 2 <= saved < ITERATIONS
        again = _session(server, plain_role)
        hops, notices = _fit(again, "restarted")
        assert any(f"resuming from the checkpoint after iteration {saved} of {ITERATIONS}" in n for n in notices)
        assert hops == (ITERATIONS - saved) * MODELS * SEGMENTS
        fresh = _session(server, plain_role)
        _fit(fresh, "restarted_full")
        with again.cursor() as cur:
            assert _weights(cur, "restarted") == _weights(cur, "restarted_full")
        assert _checkpoint_iteration(su, plain_role.name) is None
        for conn in (again, fresh):
            conn.close()
