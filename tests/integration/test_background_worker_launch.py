"""The C library (src/madlib_dl.c) on a real server: internal_launch_worker starts a dynamic background
worker connected to the caller's database as the caller's current role (or as its session user, in the
NOLOGIN role it SET ROLE to), which calls
internal_worker_serve(token) once per transaction until it returns false, then exits; a token too long
for bgw_extra is refused; a full max_worker_processes gives NULL; internal_client_connected notices a
client that went away.

The real internal_worker_serve is madlib_dl/segment/worker.py's; this module's own database replaces it
with a small body that logs each call and returns false on its third call. Its first call waits for a
shared advisory lock, so the test can hold workers alive while it looks at them in pg_stat_activity.
Launches go through conftest's public.madlib_dl_test_launch, a superuser's PL/Python function that arms
each launch as madlib_dl's own Python does (the launcher refuses a launch nobody armed)."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

import psycopg2
import pytest

# The schema the extension owns (pg_extension.extnamespace is only where CREATE EXTENSION ran: public).
from madlib_dl.tools.cluster import EXTENSION_QUERY

from tests.integration.conftest import create_launch_function

LOCK = 4242  # advisory lock key: while the test holds it, a worker's first call waits
TOKEN_BYTES = 115  # bgw_extra is 128 bytes: three OIDs, then the NUL-terminated token

SERVE_BODY = """
calls = GD['calls'] = GD.get('calls', 0) + 1
if calls == 1:
    plpy.execute("SELECT pg_catalog.pg_advisory_xact_lock_shared({lock})")
if token == 'fail':
    plpy.error('madlib_dl test: serve failed')
if 'log' not in GD:
    GD['log'] = plpy.prepare(
        "INSERT INTO public.serve_log VALUES ($1, $2, session_user, current_user, current_database(), "
        "pg_backend_pid(), txid_current(), {schema}.internal_client_connected())", ["text", "int"])
plpy.execute(GD['log'], [token, calls])
return calls < 3
"""


@dataclass(frozen=True)
class Setup:
    db: str
    schema: str
    role: object  # conftest.Role
    team_member: object  # a login role that may SET ROLE to TEAM_ROLE


TEAM_MEMBER = "madlib_dl_bgw_member"
TEAM_ROLE = "madlib_dl_bgw_team"


@pytest.fixture(scope="module")
def setup(server, plain_role):
    try:
        with server.fresh_database("bgw_launch", plain_role=plain_role) as db:
            member = server.create_role(TEAM_MEMBER)
            server.grant_plain_role(db, member)
            with server.connect(db) as conn, conn.cursor() as cur:
                cur.execute(EXTENSION_QUERY)
                schema = cur.fetchone()[1]
                cur.execute("CREATE TABLE public.serve_log (token TEXT, call INTEGER, session_role NAME, "
                            "acting_role NAME, db NAME, pid INTEGER, txid BIGINT, client_connected BOOLEAN)")
                cur.execute("CREATE TABLE public.client_check (connected BOOLEAN)")
                cur.execute(f'CREATE ROLE "{TEAM_ROLE}" NOLOGIN')
                cur.execute(f'GRANT "{TEAM_ROLE}" TO "{TEAM_MEMBER}"')
                for role in (plain_role.name, TEAM_MEMBER, TEAM_ROLE):
                    cur.execute(f'GRANT SELECT, INSERT ON public.serve_log, public.client_check TO "{role}"')
                create_launch_function(cur)
                cur.execute(f"CREATE OR REPLACE FUNCTION {schema}.internal_worker_serve(token TEXT) RETURNS BOOLEAN "
                            f"LANGUAGE plpython3u VOLATILE AS $$\n{SERVE_BODY.format(lock=LOCK, schema=schema)}\n$$")
            yield Setup(db, schema, plain_role, member)
    finally:
        with server.connect("postgres") as admin, admin.cursor() as cur:
            cur.execute(f'DROP ROLE IF EXISTS "{TEAM_MEMBER}"')
            cur.execute(f'DROP ROLE IF EXISTS "{TEAM_ROLE}"')
        server.passwords.pop(TEAM_MEMBER, None)


def _launch(cur, schema: str, token: str):
    cur.execute("SELECT public.madlib_dl_test_launch(%s, %s)", [schema, token])
    return cur.fetchone()[0]


def _wait_until_done(cur, tokens, pids, timeout=10.0) -> None:
    """Until the workers serving `tokens` logged their third call and left pg_stat_activity (a worker
    appears there only once it has connected: a launch returns as soon as the process exists)."""
    deadline = time.monotonic() + timeout
    while True:
        cur.execute("SELECT count(*) FROM public.serve_log WHERE token = ANY(%s) AND call = 3", [list(tokens)])
        if cur.fetchone()[0] == len(tokens):
            break
        assert time.monotonic() < deadline, f"workers {pids} did not make their three calls in {timeout} s"
        time.sleep(0.05)
    while True:
        cur.execute("SELECT pid, backend_type, state, wait_event FROM pg_stat_activity WHERE pid = ANY(%s)",
                    [list(pids)])
        alive = cur.fetchall()
        if not alive:
            return
        assert time.monotonic() < deadline, f"workers still running after {timeout} s: {alive}"
        time.sleep(0.05)


def _wait_until_waiting(cur, pids, timeout=30.0) -> None:
    """Until every worker in `pids` waits for the test's advisory lock in its first call."""
    deadline = time.monotonic() + timeout
    while True:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND wait_event = 'advisory'",
                    [list(pids)])
        if cur.fetchone()[0] == len(pids):
            return
        assert time.monotonic() < deadline, f"workers {pids} never reached their first call"
        time.sleep(0.05)


def _wait_until_gone(cur, pids, timeout=10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", [list(pids)])
        alive = cur.fetchall()
        if not alive:
            return
        assert time.monotonic() < deadline, f"workers still running after {timeout} s: {alive}"
        time.sleep(0.05)


def _log(cur, token: str):
    cur.execute("SELECT call, session_role, acting_role, db, pid, txid, client_connected FROM public.serve_log "
                "WHERE token = %s ORDER BY call", [token])
    return cur.fetchall()


def test_a_worker_serves_three_transactions_as_the_login_role_then_exits(server, setup):
    with server.connect(setup.db) as admin, admin.cursor() as acur, \
            server.connect(setup.db, user=setup.role) as conn, conn.cursor() as cur:
        acur.execute("SELECT pg_advisory_lock(%s)", [LOCK])
        try:
            cur.execute("SELECT pg_backend_pid(), session_user, (SELECT rolsuper FROM pg_roles "
                        "WHERE rolname = session_user)")
            caller_pid, caller, caller_is_superuser = cur.fetchone()
            assert (caller, caller_is_superuser) == (setup.role.name, False)
            pid = _launch(cur, setup.schema, "tok")
            assert isinstance(pid, int) and pid > 0 and pid != caller_pid

            # alive, inside its first call of internal_worker_serve, waiting for the test's lock
            deadline = time.monotonic() + 30
            while True:
                acur.execute("SELECT backend_type, usename, datname, state, wait_event_type, wait_event, query "
                             "FROM pg_stat_activity WHERE pid = %s", [pid])
                row = acur.fetchone()
                if row is not None and row[5] == "advisory":
                    break
                assert time.monotonic() < deadline, f"the worker never reached its first call: {row}"
                time.sleep(0.05)
            assert row == ("madlib_dl worker", setup.role.name, setup.db, "active", "Lock", "advisory",
                           f"SELECT {setup.schema}.internal_worker_serve($1)")
        finally:
            acur.execute("SELECT pg_advisory_unlock(%s)", [LOCK])
        _wait_until_done(acur, ["tok"], [pid])

        rows = _log(acur, "tok")
        assert [r[0] for r in rows] == [1, 2, 3]  # GD kept its count: one process, three calls, then false
        assert {r[1:5] for r in rows} == {(setup.role.name, setup.role.name, setup.db, pid)}
        assert len({r[5] for r in rows}) == 3  # each call its own transaction
        assert all(r[6] is True for r in rows)  # internal_client_connected() is true in a worker
        acur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [rows[0][1]])
        assert acur.fetchone()[0] is False


def test_a_nologin_role_the_caller_set_is_the_workers_from_its_first_statement(server, setup):
    """SET ROLE to a group role that may not log in: the worker logs in as the session user and takes the
    role in C, before any SQL runs."""
    with server.connect(setup.db, user=setup.team_member) as conn, conn.cursor() as cur:
        cur.execute(f'SET ROLE "{TEAM_ROLE}"')
        cur.execute("SELECT session_user, current_user")
        assert cur.fetchone() == (TEAM_MEMBER, TEAM_ROLE)
        pid = _launch(cur, setup.schema, "set-role")
        assert pid is not None
        _wait_until_done(cur, ["set-role"], [pid])
        rows = _log(cur, "set-role")
        assert [r[:3] for r in rows] == [(call, TEAM_MEMBER, TEAM_ROLE) for call in (1, 2, 3)]


def test_a_login_role_the_caller_set_is_the_one_the_worker_logs_in_as(server, setup):
    """The superuser did SET ROLE to a role that may log in: the worker logs in as that role, so neither
    RESET ROLE nor SET ROLE NONE there reaches the superuser."""
    with server.connect(setup.db) as conn, conn.cursor() as cur:
        cur.execute(f'SET ROLE "{setup.role.name}"')
        pid = _launch(cur, setup.schema, "set-login-role")
        assert pid is not None
        _wait_until_done(cur, ["set-login-role"], [pid])
        rows = _log(cur, "set-login-role")
        assert [r[:3] for r in rows] == [(call, setup.role.name, setup.role.name) for call in (1, 2, 3)]


def test_the_longest_token_arrives_whole_and_a_longer_one_is_refused(server, setup):
    longest = "é" * ((TOKEN_BYTES - 1) // 2) + "x"
    assert len(longest.encode()) == TOKEN_BYTES
    with server.connect(setup.db, user=setup.role) as conn, conn.cursor() as cur:
        pid = _launch(cur, setup.schema, longest)
        assert pid is not None
        _wait_until_done(cur, [longest], [pid])
        assert [r[0] for r in _log(cur, longest)] == [1, 2, 3]

        with pytest.raises(psycopg2.Error) as raised:
            _launch(cur, setup.schema, longest + "y")
        assert raised.value.pgcode == "22023"
        assert raised.value.diag.message_primary.endswith(  # through the test's PL/Python launcher
            f"madlib_dl: token: expected at most {TOKEN_BYTES} bytes, got {TOKEN_BYTES + 1}")
        cur.execute(f"SELECT {setup.schema}.internal_launch_worker(NULL)")  # STRICT: no worker
        assert cur.fetchone()[0] is None


def test_launch_returns_null_when_every_worker_slot_is_taken(server, setup):
    with server.connect(setup.db) as admin, admin.cursor() as acur:  # slots, not the per-role cap, run out
        acur.execute(f'ALTER ROLE "{setup.role.name}" IN DATABASE "{setup.db}" SET madlib_dl.max_workers_per_role = 100')
    try:
        _null_when_every_slot_is_taken(server, setup)
    finally:
        with server.connect(setup.db) as admin, admin.cursor() as acur:
            acur.execute(f'ALTER ROLE "{setup.role.name}" IN DATABASE "{setup.db}" RESET madlib_dl.max_workers_per_role')


def _null_when_every_slot_is_taken(server, setup):
    with server.connect(setup.db) as admin, admin.cursor() as acur, \
            server.connect(setup.db, user=setup.role) as conn, conn.cursor() as cur:
        acur.execute("SHOW max_worker_processes")
        slots = int(acur.fetchone()[0])
        acur.execute("SELECT pg_advisory_lock(%s)", [LOCK])
        pids = []
        try:
            for i in range(slots + 1):
                pid = _launch(cur, setup.schema, f"fill-{i}")
                if pid is None:
                    break
                pids.append(pid)
            assert pid is None, f"{slots + 1} workers started with max_worker_processes = {slots}"
            assert 0 < len(pids) < slots  # the logical replication launcher holds a slot too
        finally:
            acur.execute("SELECT pg_advisory_unlock(%s)", [LOCK])
        _wait_until_done(acur, [f"fill-{i}" for i in range(len(pids))], pids)
        for i in range(len(pids)):
            assert [r[0] for r in _log(acur, f"fill-{i}")] == [1, 2, 3]
        # the slots are free again
        pid = _launch(cur, setup.schema, "after-fill")
        assert pid is not None
        _wait_until_done(acur, ["after-fill"], [pid])


def test_cancel_terminate_and_an_error_end_a_worker(server, setup):
    """pg_cancel_backend and pg_terminate_backend from the caller's own role, as in a normal backend; an
    ERROR in internal_worker_serve ends the worker (no restart)."""
    with server.connect(setup.db) as admin, admin.cursor() as acur, \
            server.connect(setup.db, user=setup.role) as conn, conn.cursor() as cur:
        acur.execute("SELECT pg_advisory_lock(%s)", [LOCK])
        try:
            cancelled, terminated = _launch(cur, setup.schema, "cancel-me"), _launch(cur, setup.schema, "kill-me")
            _wait_until_waiting(acur, [cancelled, terminated])
            cur.execute("SELECT pg_cancel_backend(%s), pg_terminate_backend(%s)", [cancelled, terminated])
            assert cur.fetchone() == (True, True)
            _wait_until_gone(acur, [cancelled, terminated])  # while the lock is still held
            failed = _launch(cur, setup.schema, "fail")
            _wait_until_waiting(acur, [failed])
        finally:
            acur.execute("SELECT pg_advisory_unlock(%s)", [LOCK])
        assert _log(acur, "cancel-me") == [] and _log(acur, "kill-me") == []
        _wait_until_gone(acur, [failed])
        time.sleep(0.5)
        acur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'madlib_dl worker'")
        assert acur.fetchone()[0] == 0  # not restarted


def test_client_connected_is_true_in_a_session_and_false_once_its_client_is_gone(server, setup):
    with server.connect(setup.db, user=setup.role) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {setup.schema}.internal_client_connected()")
        assert cur.fetchone()[0] is True

        # psql starts a statement that asks after a second, and is killed before that
        sql = (f"DO $$ BEGIN PERFORM pg_sleep(1.5); INSERT INTO public.client_check "
               f"SELECT {setup.schema}.internal_client_connected(); END $$")
        env = dict(os.environ, **server.libpq_env(setup.db, setup.role), PSQLRC="/dev/null")
        psql = subprocess.Popen(["psql", "-X", "-q", "-c", sql], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:  # the statement runs
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE query = %s AND state = 'active'", [sql])
                if cur.fetchone()[0] == 1:
                    break
                assert time.monotonic() < deadline and psql.poll() is None, "psql's statement never ran"
                time.sleep(0.02)
        finally:
            psql.kill()
            psql.wait()
        deadline = time.monotonic() + 10
        while True:
            cur.execute("SELECT connected FROM public.client_check")
            rows = cur.fetchall()
            if rows:
                break
            assert time.monotonic() < deadline, "the orphaned statement never finished"
            time.sleep(0.05)
        assert rows == [(False,)]
