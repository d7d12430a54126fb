"""Attacks through madlib_dl's background workers (issue #25, items 3, 5, 6 and 8).

A worker used to log in as the caller's session user and SET ROLE to its current role from a message:
code the worker ran (here a row-level security policy's function on the attacker's packed table, which
every worker read evaluates) could RESET ROLE, and a call made by a superuser's session from inside a
security-restricted operation (an index expression ANALYZE evaluates) or from a pooled worker of another
identity handed the attacker the superuser. Workers now log in as the caller's current role, never start
from a security-restricted operation or a SECURITY DEFINER function, are pooled per identity, and only
madlib_dl's own Python can start or serve one. Each attack's function records who it ran as in a table
of the attacker's and tries ALTER ROLE <attacker> SUPERUSER."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time

import psycopg2
import pytest

import digits_data

DB = "sec_workers"
ATTACKER = "mallory_w"
VICTIM = "bob_w"
FIT = ("SELECT madlib_dl.madlib_keras_fit_multiple_model('{schema}.train_packed', '{out}', '{schema}.mst', 1, FALSE, "
       "NULL, NULL, FALSE, NULL, NULL, TRUE)")

# The attacker's trap: the policy on its packed table runs spy() for every row any backend reads. spy()
# writes who it runs as into the attacker's own table, then tries to become (or make the attacker) a
# superuser: RESET ROLE reaches the worker's login role.
TRAP = """
CREATE TABLE {a}.seen (who NAME, login NAME, pid INTEGER, backend TEXT, note TEXT);
GRANT INSERT, SELECT ON {a}.seen TO PUBLIC;
CREATE FUNCTION {a}.spy() RETURNS BOOLEAN LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO {a}.seen SELECT current_user, session_user, pg_backend_pid(), backend_type, 'before'
        FROM pg_stat_activity WHERE pid = pg_backend_pid();
    BEGIN
        RESET ROLE;
        ALTER ROLE {a} SUPERUSER;
        INSERT INTO {a}.seen VALUES (current_user, session_user, pg_backend_pid(), NULL, 'escalated');
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO {a}.seen VALUES (current_user, session_user, pg_backend_pid(), NULL, SQLERRM);
    END;
    RETURN TRUE;
END $f$;
ALTER TABLE {a}.train_packed ENABLE ROW LEVEL SECURITY;
ALTER TABLE {a}.train_packed FORCE ROW LEVEL SECURITY;
CREATE POLICY spy ON {a}.train_packed USING ({a}.spy());
"""


@pytest.fixture(scope="module")
def setup(server):
    attacker = server.create_role(ATTACKER)
    victim = server.create_role(VICTIM)
    try:
        with server.fresh_database(DB) as db:
            for role in (attacker, victim):
                server.grant_plain_role(db, role)
                with server.connect(db) as admin, admin.cursor() as cur:
                    cur.execute(f'CREATE SCHEMA "{role.name}" AUTHORIZATION "{role.name}"')
            with server.connect(db, user=attacker) as conn, conn.cursor() as cur:
                cur.execute(f"SET search_path = {ATTACKER}")
                digits_data.create_table(cur)
                digits_data.pack_and_select(cur, hidden=8, epochs=1)
                cur.execute(TRAP.format(a=ATTACKER))
                cur.execute(f"GRANT USAGE ON SCHEMA {ATTACKER} TO PUBLIC")
                cur.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {ATTACKER} TO PUBLIC")
            with server.connect(db, user=victim) as conn, conn.cursor() as cur:
                cur.execute(f"SET search_path = {VICTIM}")
                digits_data.create_table(cur)
                digits_data.pack_and_select(cur, hidden=8, epochs=1)
            yield db
    finally:
        with server.connect("postgres") as admin, admin.cursor() as cur:
            for role in (ATTACKER, VICTIM):
                cur.execute(f'DROP ROLE IF EXISTS "{role}"')


def _spy_rows(server, db):
    """(current_user, session_user, backend_type where visible, note, pid) of each record of spy()."""
    with server.connect(db) as admin, admin.cursor() as cur:
        cur.execute(f"SELECT who, login, backend, note, pid FROM {ATTACKER}.seen")
        return cur.fetchall()


def _clear_spy(server, db):
    with server.connect(db) as admin, admin.cursor() as cur:
        cur.execute(f"TRUNCATE {ATTACKER}.seen")


def _assert_never_ran_as_another_role(server, db, rows):
    assert rows, "the attacker's code never ran: the attack did not happen"
    assert {r[0] for r in rows} == {ATTACKER}, rows  # current_user, before and after RESET ROLE
    assert not [r for r in rows if r[3] == "escalated"], rows
    with server.connect(db) as admin, admin.cursor() as cur:
        cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [ATTACKER])
        assert cur.fetchone()[0] is False


def _drop_outputs(cur, out):
    cur.execute(f"DROP TABLE IF EXISTS {out}, {out}_summary, {out}_info")


# ---------------------------------------------------------------------------------------------------
# Item 3: a worker started from a security-restricted operation or a SECURITY DEFINER function

def test_an_index_expression_that_trains_during_a_superusers_analyze_starts_no_worker(server, setup):
    """The attacker's expression index calls fit_multiple on its trapped table when someone else's
    session evaluates it; the DBA's ANALYZE does (as the table's owner, in a security-restricted
    operation). A worker started from there used to log in as the DBA and RESET ROLE to it."""
    db = setup
    _clear_spy(server, db)
    with server.connect(db, user=ATTACKER) as conn, conn.cursor() as cur:
        cur.execute(f"""
            CREATE FUNCTION {ATTACKER}.do_fit() RETURNS VOID LANGUAGE plpgsql SET search_path = {ATTACKER} AS $f$
            BEGIN
                DROP TABLE IF EXISTS {ATTACKER}.out_analyze, {ATTACKER}.out_analyze_summary,
                    {ATTACKER}.out_analyze_info;
                PERFORM madlib_dl.madlib_keras_fit_multiple_model('{ATTACKER}.train_packed',
                    '{ATTACKER}.out_analyze', '{ATTACKER}.mst', 1, FALSE, NULL, NULL, FALSE, NULL, NULL, TRUE);
            EXCEPTION WHEN OTHERS THEN
                INSERT INTO {ATTACKER}.seen VALUES (current_user, session_user, pg_backend_pid(), NULL,
                                                     'fit failed: ' || SQLERRM);
            END $f$""")
        cur.execute(f"""
            CREATE FUNCTION {ATTACKER}.trigger_fit(x INTEGER) RETURNS INTEGER LANGUAGE plpgsql IMMUTABLE AS $f$
            BEGIN
                IF session_user <> '{ATTACKER}' THEN
                    PERFORM {ATTACKER}.do_fit();
                END IF;
                RETURN x;
            END $f$""")
        cur.execute(f"CREATE TABLE {ATTACKER}.trap (x INTEGER)")
        cur.execute(f"INSERT INTO {ATTACKER}.trap VALUES (1)")
        cur.execute(f"CREATE INDEX ON {ATTACKER}.trap (({ATTACKER}.trigger_fit(x)))")
    with server.connect(db) as admin, admin.cursor() as cur:
        cur.execute(f"ANALYZE {ATTACKER}.trap")
        notices, dba = list(admin.notices), admin.get_backend_pid()
    rows = _spy_rows(server, db)
    _assert_never_ran_as_another_role(server, db, rows)
    assert {r[4] for r in rows} == {dba}, rows  # trained in the DBA's backend, in its sandbox
    assert not [r for r in rows if r[3].startswith("fit failed")], rows
    assert any("security-restricted operation" in n for n in notices), notices


def test_a_security_definer_function_that_trains_starts_no_worker(server, setup):
    """The attacker's SECURITY DEFINER function trains on its trapped table; the DBA calls it. Inside it the
    DBA's session cannot RESET ROLE; a worker started from there could."""
    db = setup
    _clear_spy(server, db)
    with server.connect(db, user=ATTACKER) as conn, conn.cursor() as cur:
        cur.execute(f"""
            CREATE FUNCTION {ATTACKER}.report() RETURNS TEXT LANGUAGE plpgsql SECURITY DEFINER
                SET search_path = {ATTACKER} AS $f$
            BEGIN
                DROP TABLE IF EXISTS {ATTACKER}.out_definer, {ATTACKER}.out_definer_summary, {ATTACKER}.out_definer_info;
                PERFORM madlib_dl.madlib_keras_fit_multiple_model('{ATTACKER}.train_packed', '{ATTACKER}.out_definer',
                    '{ATTACKER}.mst', 1, FALSE, NULL, NULL, FALSE, NULL, NULL, TRUE);
                RETURN 'ok';
            END $f$""")
    with server.connect(db) as admin, admin.cursor() as cur:
        cur.execute(f"SELECT {ATTACKER}.report()")
        notices, dba = list(admin.notices), admin.get_backend_pid()
    rows = _spy_rows(server, db)
    _assert_never_ran_as_another_role(server, db, rows)
    assert {r[4] for r in rows} == {dba}, rows
    assert any("SECURITY DEFINER" in n for n in notices), notices


# ---------------------------------------------------------------------------------------------------
# Item 6: pooled workers serve only the identity they were started for

def test_after_set_session_authorization_the_superusers_idle_workers_do_not_serve_the_role(server, setup):
    db = setup
    _clear_spy(server, db)
    with server.connect(db) as admin, admin.cursor() as cur:
        cur.execute("SET madlib_dl.progress = 'off'")
        cur.execute(f"SET search_path = {VICTIM}")  # the mst table's summary names arch as the victim's
        _drop_outputs(cur, f"{VICTIM}.out_dba")
        cur.execute(FIT.format(schema=VICTIM, out=f"{VICTIM}.out_dba"))  # the DBA's own run
        cur.execute("SELECT DISTINCT worker_pid FROM madlib_dl.last_fit_hops()")
        dba_workers = {r[0] for r in cur.fetchall()}
        assert admin.get_backend_pid() not in dba_workers  # pooled workers, idle now
        cur.execute(f"SET SESSION AUTHORIZATION {ATTACKER}")
        cur.execute(f"SET search_path = {ATTACKER}")  # the mst table's summary names arch as the attacker's
        cur.execute(FIT.format(schema=ATTACKER, out=f"{ATTACKER}.out_pool"))
        cur.execute("SELECT DISTINCT worker_pid FROM madlib_dl.last_fit_hops()")
        attacker_workers = {r[0] for r in cur.fetchall()}
    rows = _spy_rows(server, db)
    _assert_never_ran_as_another_role(server, db, rows)
    assert not attacker_workers & dba_workers
    assert {r[1] for r in rows if r[4] in attacker_workers} == {ATTACKER}, rows  # they logged in as the role
    with server.connect(db) as admin, admin.cursor() as cur:  # the DBA's results are intact
        cur.execute(f"SELECT count(*) FROM {VICTIM}.out_dba_info")
        assert cur.fetchone()[0] == 2


# ---------------------------------------------------------------------------------------------------
# Item 8: the internal entry points serve only madlib_dl's own callers

class Socket:
    """A Unix socket of the test's, in a directory the server's OS user can enter: does anything connect?"""

    def __init__(self):
        import socket

        self.directory = tempfile.mkdtemp(prefix="madlib_dl-sec-")
        os.chmod(self.directory, 0o755)
        self.path = os.path.join(self.directory, "s")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o777)
        self.sock.listen(8)
        self.sock.settimeout(0.2)

    def connected_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
                conn.close()
                return True
            except OSError:
                pass
        return False

    def close(self):
        self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _token(path: str) -> str:
    return f"{path}\t{'00' * 16}\t0"


def test_a_plain_role_cannot_launch_a_worker_at_a_socket_of_its_choosing(server, setup):
    sock = Socket()
    try:
        with server.connect(setup, user=ATTACKER) as conn, conn.cursor() as cur:
            with pytest.raises(psycopg2.Error) as raised:
                cur.execute("SELECT madlib_dl.internal_launch_worker(%s)", [_token(sock.path)])
            assert raised.value.pgcode == "42501", raised.value
            assert raised.value.diag.message_primary.startswith("madlib_dl: ")
        assert not sock.connected_within(3.0)
    finally:
        sock.close()


def test_a_plain_role_cannot_make_its_session_serve_a_socket(server, setup):
    sock = Socket()
    try:
        with server.connect(setup, user=ATTACKER) as conn, conn.cursor() as cur:
            with pytest.raises(psycopg2.Error) as raised:
                cur.execute("SELECT madlib_dl.internal_worker_serve(%s)", [_token(sock.path)])
            assert raised.value.pgcode == "42501", raised.value
            assert raised.value.diag.message_primary.startswith("madlib_dl: internal_worker_serve runs only")
            assert "Traceback" not in (raised.value.diag.context or "")
        assert not sock.connected_within(1.0)
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------------
# Item 5: one role never holds every worker slot; idle workers give way

def test_one_roles_idle_sessions_cannot_hold_every_worker_slot(server, setup):
    """The attacker trains in three sessions, keeping their workers idle for an hour: with
    max_workers_per_role 2 it never holds more than two workers, each new session's launch makes an idle
    one give way, and the victim's run (workers only) gets its two."""
    db = setup
    with server.connect(db) as admin, admin.cursor() as cur:
        cur.execute(f'ALTER DATABASE "{db}" SET madlib_dl.max_workers_per_role = 2')
    sessions = []
    try:
        with server.connect(db) as admin, admin.cursor() as acur:
            for index in range(3):
                conn = psycopg2.connect(**server.dsn(db, user=ATTACKER))
                conn.autocommit = True
                sessions.append(conn)
                with conn.cursor() as cur:
                    cur.execute("SET madlib_dl.progress = 'off'")
                    cur.execute("SET madlib_dl.worker_idle_timeout = 3600")
                    out = f"{ATTACKER}.out_hold{index}"
                    _drop_outputs(cur, out)
                    cur.execute(FIT.format(schema=ATTACKER, out=out))
                acur.execute("SELECT pg_stat_clear_snapshot()")
                acur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'madlib_dl worker' AND "
                             "usename = %s", [ATTACKER])
                held = acur.fetchone()[0]
                assert held <= 2, f"the attacker holds {held} workers after {index + 1} sessions"
        with server.connect(db, user=VICTIM) as conn, conn.cursor() as cur:
            cur.execute("SET madlib_dl.executor = 'workers'")
            cur.execute("SET madlib_dl.progress = 'off'")
            _drop_outputs(cur, f"{VICTIM}.out_victim")
            cur.execute(FIT.format(schema=VICTIM, out=f"{VICTIM}.out_victim"))
            cur.execute("SELECT count(DISTINCT worker_pid) FROM madlib_dl.last_fit_hops()")
            assert cur.fetchone()[0] == 2
            cur.execute(f"SELECT count(*) FROM {VICTIM}.out_victim_info")
            assert cur.fetchone()[0] == 2
    finally:
        for conn in sessions:
            conn.close()
        with server.connect(db) as admin, admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{db}" RESET madlib_dl.max_workers_per_role')


# ---------------------------------------------------------------------------------------------------
# Item 8: start-up faults

def _attacker_workers(acur):
    acur.execute("SELECT pg_stat_clear_snapshot()")
    acur.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'madlib_dl worker' AND usename = %s",
                 [ATTACKER])
    return {r[0] for r in acur.fetchall()}


def _run_in_thread(conn, sql):
    result = {}

    def run():
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        except psycopg2.Error as error:
            result["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _end_idle_workers(server, db):
    with server.connect(db) as admin, admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'madlib_dl worker'")
        deadline = time.monotonic() + 30
        while _attacker_workers(cur) and time.monotonic() < deadline:
            time.sleep(0.1)


def test_a_worker_lost_while_it_starts_is_one_line_with_a_hint(server, setup):
    db = setup
    _end_idle_workers(server, db)
    conn = psycopg2.connect(**server.dsn(db, user=ATTACKER))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SET madlib_dl.executor = 'workers'")
            cur.execute("SET madlib_dl.progress = 'off'")
            _drop_outputs(cur, f"{ATTACKER}.out_lost")
        with server.connect(db) as admin, admin.cursor() as acur:
            thread, result = _run_in_thread(conn, FIT.format(schema=ATTACKER, out=f"{ATTACKER}.out_lost"))
            deadline = time.monotonic() + 60
            while not _attacker_workers(acur):
                assert time.monotonic() < deadline, "no worker started"
                time.sleep(0.02)
            acur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s)",
                         [list(_attacker_workers(acur))])
            thread.join(120)
        error = result.get("error")
        assert error is not None, "the run did not fail"
        assert error.diag.message_primary.startswith("madlib_dl: "), error
        assert "background worker" in error.diag.message_primary
        assert "Traceback" not in str(error) and "ChannelClosed" not in str(error), str(error)
        assert error.diag.message_hint, str(error)
    finally:
        conn.close()


def test_a_cancel_while_workers_start_leaves_no_worker_15_seconds_later(server, setup):
    db = setup
    _end_idle_workers(server, db)
    conn = psycopg2.connect(**server.dsn(db, user=ATTACKER))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SET madlib_dl.progress = 'off'")
            _drop_outputs(cur, f"{ATTACKER}.out_cancel")
        with server.connect(db) as admin, admin.cursor() as acur:
            thread, result = _run_in_thread(conn, FIT.format(schema=ATTACKER, out=f"{ATTACKER}.out_cancel"))
            deadline = time.monotonic() + 60
            while not _attacker_workers(acur):
                assert time.monotonic() < deadline, "no worker started"
                time.sleep(0.02)
            acur.execute("SELECT pg_cancel_backend(%s)", [conn.get_backend_pid()])
            cancelled = time.monotonic()
            thread.join(60)
            assert isinstance(result.get("error"), psycopg2.errors.QueryCanceled), result
            while _attacker_workers(acur):
                assert time.monotonic() - cancelled < 15, f"workers alive 15 s after the cancel: {_attacker_workers(acur)}"
                time.sleep(0.1)
    finally:
        conn.close()
