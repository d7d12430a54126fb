"""Issue #25 item 8, for outputs and errors: a plain role must not be able to spoil another role's run by
creating its output table while it trains, and a role missing a privilege gets one line naming what it
typed and the grant it lacks, not a Python traceback naming madlib_dl's internal tables."""

from __future__ import annotations

import threading
import time

import digits_data
import psycopg2
import pytest

DB = "sec_outputs"


@pytest.fixture(scope="module")
def bob(server):
    return server.create_role("bob")


@pytest.fixture(scope="module")
def database(server, plain_role, bob):
    with server.fresh_database(DB, plain_role=plain_role) as name:
        server.grant_plain_role(name, bob)
        with server.connect(name, user=bob) as conn, conn.cursor() as cur:
            digits_data.create_table(cur, "public.digits")
            digits_data.pack_and_select(cur, hidden=8, epochs=2)
        yield name


def _wait_until_training(server, database, pid: int, timeout: float = 120.0) -> None:
    """Until bob's call has passed its checks (the driver's application_name shows the run)."""
    deadline = time.monotonic() + timeout
    with server.connect(database) as admin, admin.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute("SELECT application_name FROM pg_catalog.pg_stat_activity WHERE pid = %s", [pid])
            row = cur.fetchone()
            if row and row[0].startswith("madlib_dl"):
                return
            time.sleep(0.05)
    raise AssertionError("bob's run did not start training")


def test_an_output_table_made_by_another_role_mid_run_does_not_spoil_the_run(server, database, plain_role, bob):
    errors: list = []
    with server.connect(database, user=bob) as bob_conn:
        bob_pid = bob_conn.get_backend_pid()

        def train():
            try:
                with bob_conn.cursor() as cur:
                    cur.execute(digits_data.FIT_MULTIPLE, ["public.bob_out", 2])
            except Exception as error:  # reported by the assertion below
                errors.append(error)

        thread = threading.Thread(target=train)
        thread.start()
        try:
            _wait_until_training(server, database, bob_pid)
            with server.connect(database, user=plain_role) as alice, alice.cursor() as cur:
                cur.execute("SET lock_timeout = '2s'")
                with pytest.raises((psycopg2.errors.LockNotAvailable, psycopg2.errors.DuplicateTable,
                                    psycopg2.errors.UniqueViolation)):  # waited, then found it taken
                    cur.execute("CREATE TABLE public.bob_out_info (x INTEGER)")
        finally:
            thread.join(300)
        assert errors == []
        with bob_conn.cursor() as cur:
            cur.execute("SELECT pg_catalog.pg_get_userbyid(relowner) FROM pg_catalog.pg_class "
                        "WHERE oid = 'public.bob_out_info'::regclass")
            assert cur.fetchone() == ("bob",)
            cur.execute("SELECT pg_catalog.count(*) FROM public.bob_out_info")
            assert cur.fetchone() == (2,)


def test_a_missing_privilege_is_one_line_naming_what_was_typed(server, database, plain_role, bob):
    with server.connect(database, user=bob) as conn, conn.cursor() as cur:
        cur.execute("GRANT SELECT ON public.train_packed TO alice")  # not its summary
    with server.connect(database, user=plain_role) as alice, alice.cursor() as cur:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege) as raised:
            cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('train_packed', 'alice_out', 'mst', 1, FALSE)")
        error = raised.value
        assert error.pgerror.startswith("ERROR:  madlib_dl: source_table: permission denied to read table "
                                        "'train_packed_summary' of 'train_packed'")
        assert error.diag.message_hint == 'Its owner can run GRANT SELECT ON public.train_packed_summary TO alice.'
        assert "Traceback" not in error.pgerror and "PL/Python" not in (error.diag.context or "")
        cur.execute("SELECT pg_catalog.to_regclass('public.alice_out')")
        assert cur.fetchone() == (None,)
