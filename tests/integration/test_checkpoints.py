"""Checkpoints and resume, as a plain role on a server with Debian's pg_hba: a run whose driver is
terminated mid-run continues from its last checkpoint when called again with the same arguments, ends
bitwise equal to an uninterrupted run (in process), trains only what was left, and leaves no checkpoint
once it succeeds; other arguments never use it."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest

import digits_data

DB = "checkpoints"
ITERATIONS, MODELS, SEGMENTS = 4, 2, 2
FIT = ("SELECT madlib_dl.madlib_keras_fit_multiple_model('train_packed', %s, 'mst', %s, FALSE, NULL, NULL, FALSE, "
       "NULL, NULL, TRUE)")


@pytest.fixture(scope="module")
def db(training_database):
    with training_database(DB) as conn, conn.cursor() as cur:
        digits_data.create_table(cur)
        cur.execute("SELECT madlib_dl.training_preprocessor_dl('digits', 'train_packed', 'label', 'pixels', 100, "
                    "16.0, NULL, %s)", [str(SEGMENTS)])
        cur.execute("SELECT madlib_dl.load_keras_model('arch', %s::json)", [digits_data.mlp_json(32)])
        cur.execute("SELECT madlib_dl.load_model_selection_table('arch', 'mst', ARRAY[1], ARRAY[%s, %s], "
                    "ARRAY['batch_size=8, epochs=4'])",
                    ["loss='categorical_crossentropy', optimizer='Adam(learning_rate=0.01)', metrics=['accuracy']",
                     "loss='categorical_crossentropy', optimizer='SGD(learning_rate=0.1)', metrics=['accuracy']"])
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
    su.execute("SELECT max(iteration) FROM madlib_dl.internal_checkpoints WHERE role = %s", [role])
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


def _terminated_after_checkpoint(su, server, role, out: str, iteration: int):
    """Run fit_multiple into ``out`` in a thread, terminate its driver once a checkpoint of at least
    ``iteration`` stands, and return the error the run ended with (None if it did not fail)."""
    su.execute("DELETE FROM madlib_dl.internal_checkpoints")
    driver = _session(server, role)
    ended = []

    def run():
        try:
            _fit(driver, out)
            ended.append(None)
        except Exception as error:  # the test looks at it
            ended.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 180
    while (_checkpoint_iteration(su, role.name) or 0) < iteration:
        assert time.monotonic() < deadline and thread.is_alive(), f"no checkpoint of iteration {iteration} came"
        time.sleep(0.05)
    su.execute("SELECT pg_terminate_backend(%s)", [driver.get_backend_pid()])
    thread.join(120)
    return ended[0]
