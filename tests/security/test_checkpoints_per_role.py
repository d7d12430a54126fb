"""Issue #25, item 4: checkpoints and progress rows belong to the role that made the run (its current
user, by OID). The same call made by two roles has two run keys and two sets of rows: a superuser never
resumes from a plain role's (forged) checkpoint, two plain roles never collide, and a plain role can
neither write the tables directly nor read, change or squat another role's rows through any path it has.

Each test is an attack that worked before the fix (the run key hashed the call's arguments only, the
tables were keyed by that hash alone and writable by PUBLIC under row-level security, which superusers
bypass): (a) the superuser resumed from the plain role's all-zero weights and wrote them as its output;
(b) the second role's recorder died on the first role's rows, so it lost its checkpoints and progress;
(c) a role that squatted the key of another's call made it lose its checkpoints, and could write the
tables directly. Runs are in process, so a run's weights are exactly those of any other run of the call.
"""

from __future__ import annotations

import threading
import time

import psycopg2
import psycopg2.errors
import pytest

import digits_data

DB = "checkpoints_per_role"
ITERATIONS, MODELS, SEGMENTS = 4, 2, 2
FULL_HOPS = ITERATIONS * MODELS * SEGMENTS
FIT = digits_data.FIT_MULTIPLE
# each table, and a column of it that a role may write in its own rows (through the views of the fix)
TABLES = {"internal_checkpoints": "function", "internal_checkpoint_models": "metrics",
          "internal_progress_runs": "phase", "internal_progress_models": "status"}
LOST = "no more checkpoints are saved"  # the NOTICE of a run whose recorder failed
REFUSED = (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.WithCheckOptionViolation,
           psycopg2.errors.FeatureNotSupported)  # a column of a view that cannot be written


@pytest.fixture(scope="module")
def db(training_database):
    with training_database(DB) as conn, conn.cursor() as cur:
        digits_data.create_table(cur)
        digits_data.pack_and_select(cur, hidden=32, epochs=4, segments=SEGMENTS)
        yield conn


@pytest.fixture(scope="module")
def bob(db, server):
    """A second plain role, allowed to read alice's packed data, model and model selection tables."""
    role = server.create_role("ckpt_bob")
    server.grant_plain_role(DB, role)
    with db.cursor() as cur:
        cur.execute("GRANT SELECT ON train_packed, train_packed_summary, arch, mst, mst_summary TO ckpt_bob")
    return role


@pytest.fixture(scope="module")
def reference(db, server):
    """The weights of an uninterrupted run of the call (the superuser's; every role's are these)."""
    conn = _session(server, None)
    hops, notices = _fit(conn, "reference")
    assert hops == FULL_HOPS and not any("resuming" in n for n in notices)
    with conn.cursor() as cur:
        weights = _weights(cur, "reference")
    conn.close()
    return weights


def _session(server, role):
    """A session of ``role`` (None: the superuser) that trains in process and saves every iteration."""
    conn = psycopg2.connect(**server.dsn(DB, user=role))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET madlib_dl.executor = 'in_process'; SET madlib_dl.checkpoint_every = 1")
    return conn


def _fit(conn, out):
    with conn.cursor() as cur:
        conn.notices.clear()
        cur.execute(FIT, [out, ITERATIONS])
        cur.execute("SELECT count(*) FROM madlib_dl.last_fit_hops() WHERE kind = 'train'")
        return cur.fetchone()[0], list(conn.notices)


def _weights(cur, table):
    cur.execute(f"SELECT mst_key, model_weights, optimizer_state FROM {table} ORDER BY mst_key")
    return [(k, bytes(w), bytes(o)) for k, w, o in cur.fetchall()]


def _checkpoint_iteration(su, role: str):
    su.execute("SELECT max(iteration) FROM madlib_dl.internal_checkpoints WHERE role::text = %s", [role])
    return su.fetchone()[0]


def _checkpoint_rows(su, role: str):
    """Everything of ``role``'s checkpoints, as the superuser reads it."""
    su.execute("SELECT c.run_key, c.iteration, c.function, c.metrics_iters, m.iteration, m.mst_key, "
               "md5(m.weights), md5(m.optimizer_state), m.metrics FROM madlib_dl.internal_checkpoints c "
               "JOIN madlib_dl.internal_checkpoint_models m ON m.run_key = c.run_key AND m.role = c.role "
               "WHERE c.role::text = %s ORDER BY 1, 5, 6", [role])
    return su.fetchall()


def _stopped_after_checkpoint(su, server, role, out, iteration):
    """``role`` makes the call; it is cancelled once its checkpoint of ``iteration`` stands (a cancel
    keeps the checkpoint). Fails when the run ends without one."""
    conn = _session(server, role)
    ended = []

    def run():
        try:
            _fit(conn, out)
            ended.append(None)
        except psycopg2.Error as error:
            ended.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 240
    while (_checkpoint_iteration(su, role.name) or 0) < iteration:
        assert thread.is_alive() and time.monotonic() < deadline, \
            f"{role.name}'s run saved no checkpoint of iteration {iteration}: {list(conn.notices)}"
        time.sleep(0.05)
    su.execute("SELECT pg_cancel_backend(%s)", [conn.get_backend_pid()])
    thread.join(120)
    assert isinstance(ended[0], psycopg2.errors.QueryCanceled), ended
    conn.close()


def _paths(table):
    """Every way a plain role might write ``table``: the table itself, and the view of its own rows."""
    return [f"madlib_dl.{table}", f"madlib_dl.internal_own_{table[len('internal_'):]}"]


def _try(cur, sql, args=()):
    """The statement's row count, or None when it is refused or the path does not exist."""
    try:
        cur.execute(sql, args)
        return cur.rowcount
    except REFUSED:
        return None
    except psycopg2.errors.UndefinedTable:  # the view of one's own rows (the fix) is not there
        return None


def _forge(cur) -> int:
    """The attacker's checkpoint rows get all-zero weights, through the first write path it has."""
    for path in _paths("internal_checkpoint_models"):
        count = _try(cur, f"UPDATE {path} SET weights = decode(repeat('00', length(weights)), 'hex')")
        if count:
            return count
    return 0


def test_a_superuser_never_resumes_from_a_plain_roles_forged_checkpoint(db, server, plain_role, reference):
    with server.connect(DB) as admin, admin.cursor() as su:
        su.execute("DELETE FROM madlib_dl.internal_checkpoints")
        # the attacker makes the superuser's call, lets it save a checkpoint, and zeroes its weights
        _stopped_after_checkpoint(su, server, plain_role, "nightly", 2)
        attacker = _session(server, plain_role)
        with attacker.cursor() as cur:
            assert _forge(cur) == MODELS
        attacker.close()
        forged = _checkpoint_rows(su, plain_role.name)
        assert forged

        victim = _session(server, None)  # the DBA's nightly job: the same call
        hops, notices = _fit(victim, "nightly")
        assert not any("resuming" in n for n in notices), notices
        assert hops == FULL_HOPS  # trained from the start
        with victim.cursor() as cur:
            assert _weights(cur, "nightly") == reference  # its own training result, not the forger's
        victim.close()
        su.execute("SELECT session_user")
        assert _checkpoint_rows(su, su.fetchone()[0]) == []  # its success removed its own checkpoint...
        assert _checkpoint_rows(su, plain_role.name) == forged  # ...and nothing of the plain role's
        su.execute("DROP TABLE nightly, nightly_summary, nightly_info")
        su.execute("DELETE FROM madlib_dl.internal_checkpoints")


def test_two_roles_making_the_same_call_keep_their_own_checkpoints_and_progress(db, server, plain_role, bob,
                                                                                reference):
    with server.connect(DB) as admin, admin.cursor() as su:
        su.execute("DELETE FROM madlib_dl.internal_checkpoints")
        _stopped_after_checkpoint(su, server, plain_role, "shared", 2)
        alices = _checkpoint_rows(su, plain_role.name)

        second = _session(server, bob)
        result = []
        thread = threading.Thread(target=lambda: result.append(_fit(second, "shared")))
        thread.start()
        checkpoints, progress = set(), set()
        with psycopg2.connect(**server.dsn(DB, user=bob)) as watcher, watcher.cursor() as cur:
            watcher.autocommit = True
            while thread.is_alive():
                checkpoints.add(_checkpoint_iteration(su, bob.name))
                cur.execute("SELECT role, iteration, mst_key FROM madlib_dl.fit_progress")
                progress.update(cur.fetchall())
                time.sleep(0.05)
        thread.join()
        assert result, "bob's run failed"
        hops, notices = result[0]
        assert not any(LOST in n or "resuming" in n for n in notices), notices
        assert hops == FULL_HOPS
        assert {1, 2, 3} <= checkpoints  # bob's checkpoints stood after every iteration but the last
        assert {(bob.name, ITERATIONS, mst) for mst in (1, 2)} <= progress  # his progress, to the end
        assert {r[0] for r in progress} == {bob.name}
        with second.cursor() as cur:
            assert _weights(cur, "shared") == reference
        second.close()
        assert _checkpoint_iteration(su, bob.name) is None  # bob's success removed his checkpoint only
        assert _checkpoint_rows(su, plain_role.name) == alices
        su.execute("DROP TABLE shared, shared_summary, shared_info")
        su.execute("DELETE FROM madlib_dl.internal_checkpoints")


def test_a_plain_role_can_neither_squat_nor_touch_another_roles_rows(db, server, plain_role, bob, reference):
    with server.connect(DB) as admin, admin.cursor() as su:
        su.execute("DELETE FROM madlib_dl.internal_checkpoints")
        # bob learns the run key of the call alice is going to make (his own run of it) and squats it:
        # rows for every iteration of every model, through whatever path he may write
        _stopped_after_checkpoint(su, server, bob, "squatted", 1)
        attacker = _session(server, bob)
        cur = attacker.cursor()
        cur.execute("SELECT run_key FROM madlib_dl.internal_checkpoints")
        (key,) = cur.fetchone()
        squatted = 0
        for path in _paths("internal_checkpoint_models"):
            squatted = _try(cur, f"INSERT INTO {path} (run_key, iteration, mst_key, weights) SELECT %s, i, m, "
                                 "'\\x00' FROM generate_series(1, %s) i, generate_series(1, %s) m "
                                 "ON CONFLICT DO NOTHING", [key, ITERATIONS, MODELS])
            if squatted:
                break
        assert squatted

        # alice makes the call: her checkpoints stand, and she resumes from them alone
        _stopped_after_checkpoint(su, server, plain_role, "squatted", 2)
        alices = _checkpoint_rows(su, plain_role.name)
        bobs = _checkpoint_rows(su, bob.name)

        # every path bob has to alice's rows, and to the tables themselves
        su.execute("SELECT pg_backend_pid()")  # a live 'run' of alice's, so that fit_progress shows it
        su.execute("INSERT INTO madlib_dl.internal_progress_runs (run_id, pid, backend_start, role, function, "
                   "started) SELECT 'alices', pid, backend_start, %s, 'madlib_keras_fit', now() "
                   "FROM pg_stat_activity WHERE pid = pg_backend_pid()", [plain_role.name])
        su.execute("INSERT INTO madlib_dl.internal_progress_models (run_id, role, mst_key, status) "
                   "VALUES ('alices', %s, 1, 'training')", [plain_role.name])
        alices_rows = "role::regrole::text = %s"
        for table, column in TABLES.items():
            su.execute(f"SELECT count(*) FROM madlib_dl.{table} WHERE {alices_rows}", [plain_role.name])
            assert su.fetchone()[0] > 0  # there is something of alice's to aim at
            assert _try(cur, f"INSERT INTO madlib_dl.{table} SELECT * FROM madlib_dl.{table} LIMIT 0") is None, \
                f"bob may write {table} directly"
            for path in _paths(table):
                assert _try(cur, f"SELECT 1 FROM {path} WHERE {alices_rows}", [plain_role.name]) in (None, 0)
                assert _try(cur, f"UPDATE {path} SET {column} = {column} WHERE {alices_rows}",
                            [plain_role.name]) in (None, 0)
                assert _try(cur, f"DELETE FROM {path} WHERE {alices_rows}", [plain_role.name]) in (None, 0)
                assert _try(cur, f"UPDATE {path} SET role = %s::regrole", [plain_role.name]) in (None, 0)
        for path in _paths("internal_checkpoints"):
            assert _try(cur, f"INSERT INTO {path} (run_key, role, function) VALUES ('x', %s::regrole, 'f')",
                        [plain_role.name]) is None
        for path in _paths("internal_progress_runs"):
            assert _try(cur, f"INSERT INTO {path} (run_id, pid, backend_start, role, function, started) "
                             "VALUES ('x', 1, now(), %s::regrole, 'f', now())", [plain_role.name]) is None
        cur.execute("SELECT count(*) FROM madlib_dl.fit_progress")
        assert cur.fetchone()[0] == 0
        su.execute("GRANT pg_monitor TO ckpt_bob")  # a monitoring role sees every run
        cur.execute("SELECT role FROM madlib_dl.fit_progress")
        assert cur.fetchall() == [(plain_role.name,)]
        su.execute("REVOKE pg_monitor FROM ckpt_bob")
        attacker.close()
        su.execute("DELETE FROM madlib_dl.internal_progress_runs WHERE run_id = 'alices'")
        assert _checkpoint_rows(su, plain_role.name) == alices
        assert _checkpoint_rows(su, bob.name) == bobs

        again = _session(server, plain_role)
        hops, notices = _fit(again, "squatted")
        saved = alices[0][1]
        assert any(f"resuming from the checkpoint after iteration {saved} of" in n for n in notices), notices
        assert not any(LOST in n for n in notices), notices
        assert hops == (ITERATIONS - saved) * MODELS * SEGMENTS
        with again.cursor() as c:
            assert _weights(c, "squatted") == reference
        again.close()
        su.execute("DROP TABLE squatted, squatted_summary, squatted_info")
        su.execute("DELETE FROM madlib_dl.internal_checkpoints")
