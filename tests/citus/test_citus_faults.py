"""Faults of a run on the Citus worker nodes, as a plain role: a node that stops mid-run fails the call
soon, naming the node and the segment, and the same call resumes from its checkpoint once the node is
back, ending as the uninterrupted run would (plain Keras on the same hops); data that only the caller's
transaction sees trains in its session, with a NOTICE saying why."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import psycopg2
import pytest
from psycopg2.extras import execute_values

from madlib_dl.keras_runtime import serialization, tf_setup
from tests.citus import replay
from tests.citus.conftest import DATABASE

SEGMENTS = 4
ROWS, FEATURES, CLASSES = 1600, 4, 3  # hops of 400 steps: a node is stopped while they run
ITERATIONS = 4


@pytest.fixture(scope="module")
def conn(citus_cluster, citus_role):
    """alice's session on the coordinator with a packed table over 4 segments on the worker nodes (where
    madlib_dl.packed_table_placement's default puts it on a Citus coordinator), in her schema lab."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(ROWS, FEATURES))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    with citus_cluster.coordinator.connect(DATABASE) as admin, admin.cursor() as cur:
        cur.execute(f'CREATE SCHEMA lab AUTHORIZATION "{citus_role.name}"')  # shards outside public too
    with citus_cluster.coordinator.connect(DATABASE, user=citus_role) as c:
        with c.cursor() as cur:
            cur.execute("SET search_path = lab, public")
            cur.execute("CREATE TABLE fault_points (id INTEGER, x DOUBLE PRECISION[], label INTEGER)")
            execute_values(cur, "INSERT INTO fault_points VALUES %s",
                           [(i, list(map(float, x[i])), int(y[i])) for i in range(ROWS)])
            cur.execute("SELECT madlib_dl.training_preprocessor_dl('fault_points', 'fault_packed', 'label', 'x', "
                        "NULL, 1.0, NULL, %s)", [str(SEGMENTS)])
        yield c


def _model():
    keras = tf_setup.keras()
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(CLASSES, activation="softmax")])


def _mst(cur, arch: str, table: str, epochs: int, rates=(0.01, 0.05)):
    model = _model()
    cur.execute("SELECT madlib_dl.load_keras_model(%s, %s::json, %s)",
                [arch, model.to_json(), serialization.serialize_weights(model.get_weights())])
    for lr in rates:
        cur.execute("SELECT madlib_dl.load_model_selection_table(%s, %s, ARRAY[1], %s, %s)",
                    [arch, table, [f"loss='categorical_crossentropy', optimizer='Adam(learning_rate={lr})'"],
                     [f"batch_size=1,epochs={epochs},shuffle=False"]])
    return model, dict(enumerate(rates, start=1))


def test_data_only_the_callers_transaction_sees_trains_in_its_session(conn):
    """A packed table made, or changed, in the caller's open transaction is not what the nodes' sessions
    see: the run goes on in the caller's session (through Citus), with a NOTICE saying why."""
    with conn.cursor() as cur:
        _mst(cur, "fresh_arch", "fresh_mst", epochs=1, rates=(0.01,))
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT madlib_dl.training_preprocessor_dl('fault_points', 'fresh_packed', 'label', 'x', "
                        "100, 1.0, NULL, %s)", [str(SEGMENTS)])  # 4 buffers a segment
            conn.notices.clear()
            cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('fresh_packed', 'fresh_out', 'fresh_mst', "
                        "1, FALSE)")
            assert any("runs in this session" in n and "the Citus worker nodes cannot see" in n and
                       "not yet committed" in n for n in conn.notices), conn.notices
            cur.execute("SELECT DISTINCT worker_pid, node FROM madlib_dl.last_fit_hops()")
            assert cur.fetchall() == [(conn.get_backend_pid(), None)]
        conn.commit()
        with conn.cursor() as cur:  # committed: on the nodes; a change not yet committed: here again
            cur.execute("DELETE FROM fresh_packed WHERE buffer_id = 0")  # one of its segment's 4 buffers
            cur.execute("DROP TABLE fresh_out, fresh_out_summary, fresh_out_info")
            conn.notices.clear()
            cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('fresh_packed', 'fresh_out', 'fresh_mst', "
                        "1, FALSE)")
            assert any("the Citus worker nodes see other data in" in n for n in conn.notices), conn.notices
            cur.execute("SELECT count(DISTINCT segment), count(DISTINCT node) FROM madlib_dl.last_fit_hops()")
            assert cur.fetchone() == (SEGMENTS, 0)  # every segment, in this session
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("DROP TABLE fresh_out, fresh_out_summary, fresh_out_info")
            conn.notices.clear()
            cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('fresh_packed', 'fresh_out', 'fresh_mst', "
                        "1, FALSE)")
            assert not any("runs in this session" in n for n in conn.notices), conn.notices
            cur.execute("SELECT count(DISTINCT node) FROM madlib_dl.last_fit_hops()")
            assert cur.fetchone() == (2,)
        conn.commit()
    finally:
        conn.rollback()
        conn.autocommit = True


def _own_node_sessions(citus_cluster, pids) -> int:
    found = 0
    for worker in citus_cluster.workers:
        with worker.connect(DATABASE) as c, c.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND "
                        "application_name = 'madlib_dl_node'", [list(pids)])
            found += cur.fetchone()[0]
    return found


def test_node_sessions_wait_past_the_idle_timeout_within_a_run_and_end_after_it(conn, citus_cluster):
    """One model visits the 4 segments in turn (hops of a second or more), so each node session waits
    longer than madlib_dl.worker_idle_timeout = 1 between its hops: it must not end then. Kept after the
    call, the sessions end after that timeout."""
    with conn.cursor() as cur:
        _mst(cur, "idle_arch", "idle_mst", epochs=20, rates=(0.01,))
        cur.execute("SET madlib_dl.worker_idle_timeout = 1")
        cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('fault_packed', 'idle_out', 'idle_mst', 2, FALSE)")
        cur.execute("SELECT DISTINCT worker_pid FROM madlib_dl.last_fit_hops()")
        pids = [pid for (pid,) in cur.fetchall()]
        cur.execute("SELECT max(extract(epoch FROM started) - previous) FROM (SELECT started, extract(epoch FROM "
                    "lag(ended) OVER (PARTITION BY worker_pid ORDER BY started)) AS previous "
                    "FROM madlib_dl.last_fit_hops() WHERE kind = 'train') t")
        assert cur.fetchone()[0] > 1.0  # a session idle past the timeout within the run
        cur.execute("RESET madlib_dl.worker_idle_timeout")
    assert pids and _own_node_sessions(citus_cluster, pids) == len(pids)  # kept for the next call
    deadline = time.monotonic() + 15
    while _own_node_sessions(citus_cluster, pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _own_node_sessions(citus_cluster, pids) == 0


def test_a_kept_node_session_serves_a_call_that_asks_for_other_threads(conn):
    """TensorFlow's threads are set once per session: a kept session keeps its own."""
    with conn.cursor() as cur:
        _mst(cur, "threads_arch", "threads_mst", epochs=1, rates=(0.01,))
        pids = []
        for threads, output in ((1, "threads_one"), (2, "threads_two")):
            cur.execute("SELECT set_config('madlib_dl.worker_threads', %s, false)", [str(threads)])
            cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('fault_packed', %s, 'threads_mst', 1, "
                        "FALSE)", [output])
            cur.execute("SELECT array_agg(DISTINCT worker_pid ORDER BY worker_pid) FROM madlib_dl.last_fit_hops()")
            pids.append(cur.fetchone()[0])
        cur.execute("RESET madlib_dl.worker_threads")
    assert pids[0] == pids[1]  # the same node sessions


def test_a_node_stopped_mid_run_fails_the_call_naming_it_and_the_call_resumes_once_it_is_back(conn, citus_cluster):
    alice = citus_cluster.roles["alice"]
    with conn.cursor() as cur:
        model, rates = _mst(cur, "fault_arch", "fault_mst", epochs=1)
        cur.execute("SELECT nodeport FROM citus_shards WHERE table_name = 'fault_packed'::regclass ORDER BY shardid "
                    "LIMIT 1")
        (port,) = cur.fetchone()
    victim = next(w for w in citus_cluster.workers if w.port == port)
    call = ("SELECT madlib_dl.madlib_keras_fit_multiple_model('fault_packed', 'fault_out', 'fault_mst', %s, FALSE)"
            % ITERATIONS)
    outcome = {}
    with citus_cluster.coordinator.connect(DATABASE, user=alice) as driver:
        def run():
            try:
                with driver.cursor() as cur:
                    cur.execute("SET search_path = lab, public")
                    cur.execute("SET madlib_dl.checkpoint_every = 1")
                    cur.execute(call)
            except psycopg2.Error as error:
                outcome["error"] = error
            outcome["ended"] = time.monotonic()

        thread = threading.Thread(target=run)
        thread.start()
        try:
            with citus_cluster.coordinator.connect(DATABASE, user=alice) as watcher, watcher.cursor() as cur:
                deadline = time.monotonic() + 180
                saved = None
                while saved is None and thread.is_alive() and time.monotonic() < deadline:
                    cur.execute("SELECT max(iteration) FROM madlib_dl.internal_own_checkpoints "
                                "WHERE output_table LIKE '%%fault_out%%'")
                    (saved,) = cur.fetchone()
                    time.sleep(0.1)
            assert saved == 1, outcome  # stopped within iteration 2 (or 3 on a busy machine)
            stopped = time.monotonic()
            citus_cluster.stop_node(victim)
            thread.join(60)
        finally:
            if thread.is_alive() or "error" not in outcome:
                thread.join(120)
        error = outcome["error"]
        assert outcome["ended"] - stopped < 15
        assert error.pgcode == "08006", error
        assert f"Citus worker node 127.0.0.1:{port}" in error.pgerror and "segment " in error.pgerror
        assert re.search(r"stopped at iteration \d of 4 \(\d+ of 8 hops done\)", error.pgerror), error.pgerror
        assert "nothing was written" in error.pgerror
        checkpoint = int(re.search(r"checkpoint after iteration (\d) stays: once the node is back",
                                   error.diag.message_hint).group(1))
        with driver.cursor() as cur:
            cur.execute("SELECT mst_key, segment FROM madlib_dl.last_fit_hops() WHERE kind = 'train' "
                        "AND iteration <= %s ORDER BY ended", [checkpoint])
            before = cur.fetchall()
            cur.execute("SELECT to_regclass('lab.fault_out')")
            assert cur.fetchone() == (None,)
    citus_cluster.start_node(victim)
    with conn.cursor() as cur:
        conn.notices.clear()
        cur.execute(call)
        assert any(f"resuming from the checkpoint after iteration {checkpoint} of 4" in n for n in conn.notices), \
            conn.notices
        cur.execute("SELECT mst_key, segment, iteration FROM madlib_dl.last_fit_hops() WHERE kind = 'train' "
                    "ORDER BY ended")
        after = cur.fetchall()
        assert {i for *_, i in after} == set(range(checkpoint + 1, ITERATIONS + 1))
        _check_against_replay(cur, model, rates, before + [(k, s) for k, s, _ in after])
        cur.execute("SELECT count(*) FROM madlib_dl.internal_own_checkpoints WHERE output_table LIKE '%%fault_out%%'")
        assert cur.fetchone() == (0,)  # the finished run's checkpoint is gone


def _check_against_replay(cur, model, rates, hops):
    replay.check(cur, model, rates, hops, "fault_packed", "fault_out", batch_size=1)
