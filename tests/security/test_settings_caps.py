"""Issue #25, item 5: the DBA caps what a role's madlib_dl settings may spend of the server's shared
resources. The caps (madlib_dl.max_*) are superuser-only settings (PGC_SUSET): a plain role cannot set or
raise them in any way (SET, set_config, ALTER ROLE for itself, a value SET before its session's first
madlib_dl call, defining the setting itself through the C function every session may call), and the
settings they cap are clamped to them when madlib_dl reads them (SHOW still shows what the role set).

Each test is an attack that worked before the caps: a plain role's worker_idle_timeout = 86400 kept its
idle workers (and their background worker slots) for a day, whatever the DBA wanted; its memory budget
was whatever it set; the progress recorder kept its slot for up to 7 days without a request."""

from __future__ import annotations

import os
import threading
import time

import psycopg2
import psycopg2.errors
import pytest
from psycopg2.extras import execute_values
from sklearn.datasets import load_iris

from madlib_dl import settings
from madlib_dl.keras_runtime import tf_setup

DB = "settings_caps"
CLASSES = ("setosa", "versicolor", "virginica")
FIT = ("SELECT madlib_dl.madlib_keras_fit_multiple_model('iris_packed', %s, %s, 1, FALSE, NULL, NULL, FALSE, NULL, "
       "NULL, TRUE)")
ADAM = "loss='categorical_crossentropy', optimizer='Adam(learning_rate=0.01)', metrics=['accuracy']"
CAPS = tuple(cap.name for cap in settings.CAPS)


@pytest.fixture(scope="module")
def db(training_database):
    with training_database(DB) as conn, conn.cursor() as cur:
        iris = load_iris()
        cur.execute("CREATE TABLE iris (id INTEGER, attributes DOUBLE PRECISION[], class_text TEXT)")
        execute_values(cur, "INSERT INTO iris VALUES %s",
                       [(i, list(map(float, x)), CLASSES[y]) for i, (x, y) in enumerate(zip(iris.data, iris.target))])
        cur.execute("SELECT madlib_dl.training_preprocessor_dl('iris', 'iris_packed', 'class_text', 'attributes', "
                    "NULL, 1.0, NULL, '2')")
        keras = tf_setup.keras()
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(3, activation="softmax")])
        cur.execute("SELECT madlib_dl.load_keras_model('arch', %s::json)", [model.to_json()])
        big = keras.Sequential([keras.Input((4,)), keras.layers.Dense(20000, activation="relu"),
                                keras.layers.Dense(3, activation="softmax")])  # 2 MiB of weights and more
        cur.execute("SELECT madlib_dl.load_keras_model('arch', %s::json)", [big.to_json()])
        cur.execute("SELECT madlib_dl.load_model_selection_table('arch', 'mst_big', ARRAY[2], ARRAY[%s], "
                    "ARRAY['batch_size=8,epochs=1'])", [ADAM])
        # quick: one model of quick hops; mixed: that one and one whose hops take many seconds each
        cur.execute("SELECT madlib_dl.load_model_selection_table('arch', 'mst_quick', ARRAY[1], ARRAY[%s], "
                    "ARRAY['batch_size=8,epochs=1'])", [ADAM])
        cur.execute("SELECT madlib_dl.load_model_selection_table('arch', 'mst_mixed', ARRAY[1], ARRAY[%s], "
                    "ARRAY['batch_size=8,epochs=1', 'batch_size=1,epochs=600'])", [ADAM])
        yield conn


@pytest.fixture
def dba(server, db, plain_role):
    """The superuser's connection to the database; every cap it sets for the plain role is reset after."""
    with server.connect(DB) as conn, conn.cursor() as cur:
        yield cur
        for name in CAPS:
            cur.execute(f'ALTER ROLE "{plain_role.name}" IN DATABASE "{DB}" RESET {name}')
            cur.execute(f'ALTER DATABASE "{DB}" RESET {name}')


def _session(server, role):
    conn = psycopg2.connect(**server.dsn(DB, user=role))
    conn.autocommit = True
    return conn


def _show(cur, name):
    cur.execute("SELECT current_setting(%s, true)", [name])
    return cur.fetchone()[0]


def _fit(cur, out, mst="mst_quick"):
    cur.execute(f"DROP TABLE IF EXISTS {out}, {out}_summary, {out}_info")
    cur.execute(FIT, [out, mst])


def _worker_pids(cur):
    cur.execute("SELECT DISTINCT worker_pid FROM madlib_dl.last_fit_hops()")
    return {r[0] for r in cur.fetchall()}


def _gone_within(pids, seconds) -> float:
    started = time.monotonic()
    while any(os.path.exists(f"/proc/{p}") for p in pids):
        assert time.monotonic() - started < seconds, f"still running after {seconds} s: {pids}"
        time.sleep(0.05)
    return time.monotonic() - started


def _refused(cur, sql, args=()):
    with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="permission denied to set parameter"):
        cur.execute(sql, args)


def test_a_plain_role_cannot_set_a_cap(dba, server, plain_role):
    dba.execute(f'ALTER ROLE "{plain_role.name}" IN DATABASE "{DB}" SET madlib_dl.max_worker_idle_timeout = 3')
    conn = _session(server, plain_role)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM madlib_dl.settings()")  # the session's first call registers them
            for name in CAPS:
                _refused(cur, f"SET {name} = 86400")
                _refused(cur, f"SET LOCAL {name} = 86400")
                _refused(cur, "SELECT set_config(%s, '86400', false)", [name])
                _refused(cur, f'ALTER ROLE "{plain_role.name}" SET {name} = 86400')
                _refused(cur, f'ALTER ROLE "{plain_role.name}" IN DATABASE "{DB}" SET {name} = 86400')
                _refused(cur, f'ALTER ROLE "{plain_role.name}" IN DATABASE "{DB}" RESET {name}')
            assert _show(cur, "madlib_dl.max_worker_idle_timeout") == "3"
            cur.execute("SELECT name FROM madlib_dl.settings() WHERE name LIKE 'madlib\\_dl.max\\_%%'")
            assert set(CAPS) <= {r[0] for r in cur.fetchall()}
    finally:
        conn.close()
    # the caps are the DBA's: superuser-only in pg_settings, and a superuser sets them
    dba.execute("SELECT count(*) FROM madlib_dl.settings()")
    dba.execute("SELECT name, context FROM pg_settings WHERE name LIKE 'madlib\\_dl.%%'")
    contexts = dict(dba.fetchall())
    assert {"madlib_dl.max_worker_idle_timeout", "madlib_dl.max_memory_budget_mb", "madlib_dl.max_recorder_idle_timeout",
            "madlib_dl.max_workers_per_role"} <= set(CAPS)
    assert {name: contexts[name] for name in CAPS} == {name: "superuser" for name in CAPS}
    assert {context for name, context in contexts.items() if name not in CAPS} == {"user"}
    dba.execute("SET madlib_dl.max_worker_idle_timeout = 5")
    assert _show(dba, "madlib_dl.max_worker_idle_timeout") == "5"


def test_defining_a_cap_first_does_not_make_it_the_roles(dba, server, plain_role):
    """The C function that registers settings is callable by every role: called before the session's
    first madlib_dl call with a cap's name, it must neither make the cap settable nor change its
    default or range."""
    conn = _session(server, plain_role)
    try:
        with conn.cursor() as cur:
            name = "madlib_dl.max_worker_idle_timeout"
            for args in (("integer", "86400", 0, 86400), ("bigint", "86400", 0, 0), ("enum", "x", 0, 0)):
                for setting in (name, "madlib_dl.max_something_new"):
                    try:
                        cur.execute("SELECT madlib_dl.internal_define_setting(%s, %s, %s, %s, %s, '{x}', 'mine')",
                                    [setting, *args])
                    except psycopg2.Error:
                        pass  # refused: a cap's kind, range and default are madlib_dl's, not the caller's
            try:
                cur.execute(f"SET {name} = 86400")  # refused, or kept as a placeholder and dropped below
            except psycopg2.errors.InsufficientPrivilege:
                pass
            cur.execute("SELECT count(*) FROM madlib_dl.settings()")
            assert _show(cur, name) == str(settings.MAX_WORKER_IDLE_TIMEOUT.default())
            _refused(cur, f"SET {name} = 86400")
            with pytest.raises(psycopg2.errors.InvalidName):  # no such setting, and none can be made
                cur.execute("SET madlib_dl.max_something_new = 'x'")
            cur.execute("SELECT name, context, min_val, max_val, boot_val FROM pg_settings WHERE name LIKE "
                        "'madlib\\_dl.max\\_%%'")
            assert {row[0]: row[1:] for row in cur.fetchall()} == {
                cap.name: ("superuser", str(cap.minimum), str(cap.maximum), str(cap.default())) for cap in settings.CAPS}
    finally:
        conn.close()


def test_a_cap_set_before_the_first_call_is_dropped_and_idle_workers_end_by_the_cap(dba, server, plain_role):
    """Before its first madlib_dl call a session can SET any madlib_dl.* name (PostgreSQL keeps it as a
    placeholder); a cap's value set so is dropped when the cap is registered, and the role's idle
    workers (worker_idle_timeout = 86400, also SET early) end by the DBA's cap."""
    dba.execute(f'ALTER ROLE "{plain_role.name}" IN DATABASE "{DB}" SET madlib_dl.max_worker_idle_timeout = 3')
    conn = _session(server, plain_role)
    try:
        with conn.cursor() as cur:
            cur.execute("SET madlib_dl.max_worker_idle_timeout = 86400")
            cur.execute("SET madlib_dl.worker_idle_timeout = 86400")
            _fit(cur, "early_idle")
            assert _show(cur, "madlib_dl.max_worker_idle_timeout") == "3"
            assert _show(cur, "madlib_dl.worker_idle_timeout") == "86400"  # SHOW: what the role set
            pids = _worker_pids(cur)
            assert pids and all(os.path.exists(f"/proc/{p}") for p in pids)
            waited = _gone_within(pids, 3 + 12)
            print(f"idle workers ended {waited:.1f} s after the call (cap 3 s)")
    finally:
        conn.close()


def test_the_database_cap_clamps_a_roles_idle_timeout(dba, server, plain_role):
    dba.execute(f'ALTER DATABASE "{DB}" SET madlib_dl.max_worker_idle_timeout = 2')
    conn = _session(server, plain_role)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM madlib_dl.settings()")  # registered: the role may ALTER ROLE it
            cur.execute(f'ALTER ROLE "{plain_role.name}" SET madlib_dl.worker_idle_timeout = 86400')
            cur.execute("SET madlib_dl.worker_idle_timeout = 86400")
            _fit(cur, "db_cap_idle")
            pids = _worker_pids(cur)
            assert pids
            _gone_within(pids, 2 + 12)
    finally:
        with server.connect(DB) as admin, admin.cursor() as cur:
            cur.execute(f'ALTER ROLE "{plain_role.name}" RESET madlib_dl.worker_idle_timeout')
        conn.close()


def test_the_memory_budget_is_clamped_to_its_cap(dba, server, plain_role):
    dba.execute(f'ALTER ROLE "{plain_role.name}" IN DATABASE "{DB}" SET madlib_dl.max_memory_budget_mb = 1')
    conn = _session(server, plain_role)
    try:
        with conn.cursor() as cur:
            cur.execute("SET madlib_dl.memory_budget_mb = 1000000")
            with pytest.raises(psycopg2.Error) as raised:
                _fit(cur, "budget_out", "mst_big")
            message = str(raised.value)
            assert "madlib_dl.memory_budget_mb" in message and " 1 MiB" in message, message
            assert "capped at 1 by madlib_dl.max_memory_budget_mb" in message, message  # it says who limits it
            assert _show(cur, "madlib_dl.memory_budget_mb") == "1000000"
    finally:
        conn.close()


def test_the_recorder_does_not_hold_a_slot_past_its_cap(dba, server, plain_role):
    """The quick model's hops are recorded, then the slow model's hops leave nothing to record for many
    seconds. The recorder (the run's background worker that is not one of its training workers) ends
    after the DBA's cap of idle time, giving its slot back while the run goes on without it (a NOTICE
    says so), instead of holding the slot until the run ends."""
    cap = 1
    dba.execute(f'ALTER ROLE "{plain_role.name}" IN DATABASE "{DB}" SET madlib_dl.max_recorder_idle_timeout = {cap}')
    conn = _session(server, plain_role)
    result = {}

    def run():
        try:
            with conn.cursor() as cur:
                _fit(cur, "slow_recorded", "mst_mixed")
        except Exception as error:  # the test looks at it
            result["error"] = error

    dba.execute("SELECT now()")
    began = dba.fetchone()[0]
    thread = threading.Thread(target=run)
    seen: dict[int, list[float]] = {}  # pid -> [first, last] seen (monotonic)
    try:
        thread.start()
        while thread.is_alive():
            dba.execute("SELECT pg_stat_clear_snapshot()")
            dba.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'madlib_dl worker' AND usename = %s "
                        "AND backend_start >= %s", [plain_role.name, began])
            now = time.monotonic()
            for (pid,) in dba.fetchall():
                seen.setdefault(pid, [now, now])[1] = now
            time.sleep(0.05)
        ended = time.monotonic()
        thread.join()
        assert "error" not in result, result.get("error")
        with conn.cursor() as cur:
            training = _worker_pids(cur)
        recorders = {pid: times for pid, times in seen.items() if pid not in training}
        assert len(recorders) == 1, (seen, training)
        (pid, (first, last)), = recorders.items()
        print(f"recorder {pid} seen for {last - first:.1f} s (cap {cap} s); the run went on {ended - last:.1f} s more")
        assert ended - last > 5, "the recorder stayed until the run ended"
        assert last - first < cap + 10
        assert any("recorder" in n for n in conn.notices), conn.notices
    finally:
        thread.join(300)
        conn.close()
