"""What a successful run leaves in the server log: nothing a DBA reads as a problem. Its workers and its
progress recorder end cleanly (a Stop request, or their driver's session closing), not by a terminate that
logs `FATAL: terminating background worker`; TensorFlow's start-up lines (absl's "All log messages
before absl::InitializeLog()" and the oneDNN INFO line, once per worker) stay out; at most one LOG line."""

from __future__ import annotations

import glob
import os
import time

import numpy as np
from psycopg2.extras import execute_values

S = "madlib_dl."
NOISE = ("FATAL", "ERROR", "PANIC", "absl::InitializeLog", "oneDNN", "I0000")


def _log_path(server) -> str:
    """The throwaway server's log (testing.postgresql writes it beside the data directory)."""
    with server.connect("postgres") as admin, admin.cursor() as cur:
        cur.execute("SELECT current_setting('data_directory')")
        (data,) = cur.fetchone()
    (path,) = glob.glob(os.path.join(os.path.dirname(data), "*.log"))
    return path


def _workers_gone(server, pids: set[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with server.connect("postgres") as admin, admin.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [list(pids)])
            if cur.fetchone()[0] == 0:
                return
            time.sleep(0.2)
    raise AssertionError(f"workers {sorted(pids)} still running {timeout} s after their session closed")


def test_a_successful_run_leaves_no_fatal_lines_and_no_tensorflow_chatter(server, plain_role):
    path = _log_path(server)
    start = os.path.getsize(path)
    with server.fresh_database("server_log", plain_role=plain_role) as name:
        pids = _run(server, plain_role, name)
        # the session is closed: its pooled workers end on their own, before the database is dropped
        # (DROP DATABASE ... FORCE would terminate them)
        _workers_gone(server, pids)
        time.sleep(1.0)  # the recorder's and the postmaster's last lines
    with open(path, errors="replace") as log:
        log.seek(start)
        lines = log.read().splitlines()
    noisy = [line for line in lines if any(word in line for word in NOISE)]
    assert noisy == [], "\n".join(noisy)
    assert len([line for line in lines if "LOG:" in line and "madlib_dl" in line]) <= 1, "\n".join(lines)


def _run(server, role, name: str) -> set[int]:
    """A fit_multiple run and an evaluation as ``role``, on background workers; their pids."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 4))
    with server.connect(name, user=role) as conn, conn.cursor() as cur:
        cur.execute("SET madlib_dl.executor = 'workers'")
        cur.execute("CREATE TABLE points (id INTEGER, x REAL[], label INTEGER)")
        execute_values(cur, "INSERT INTO points VALUES %s",
                       [(i, list(map(float, x[i])), int(x[i, 0] > 0)) for i in range(len(x))])
        cur.execute(f"SELECT {S}training_preprocessor_dl('points', 'packed', 'label', 'x', NULL, 1, NULL, '2')")
        cur.execute(f"SELECT {S}load_keras_model('arch', %s::json)", [_mlp_json()])
        cur.execute(f"SELECT {S}load_model_selection_table('arch', 'mst', ARRAY[1], ARRAY[%s, %s], "
                    "ARRAY['batch_size=8, epochs=1'])",
                    ["loss='categorical_crossentropy', optimizer='Adam', metrics=['accuracy']",
                     "loss='categorical_crossentropy', optimizer='SGD', metrics=['accuracy']"])
        cur.execute(f"SELECT {S}madlib_keras_fit_multiple_model('packed', 'models', 'mst', 2, FALSE, 'packed', 1)")
        cur.execute(f"SELECT {S}madlib_keras_evaluate('models', 'packed', 'evaluated', FALSE, 1)")
        cur.execute(f"SELECT DISTINCT worker_pid FROM {S}last_fit_hops()")
        pids = {pid for (pid,) in cur.fetchall() if pid is not None}
    assert pids  # the run used background workers
    return pids


def _mlp_json() -> str:
    from madlib_dl.keras_runtime import tf_setup

    keras = tf_setup.keras()
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation="relu"),
                             keras.layers.Dense(2, activation="softmax")]).to_json()
