"""The test server is configured like the one Debian 12 ships: its pg_hba.conf is Debian's default (peer
on the Unix socket, scram-sha-256 over TCP, no trust anywhere), so a client needs the role's password;
and the plain role the fixtures make has nothing a DBA would not grant a data scientist."""

from __future__ import annotations

import psycopg2
import pytest

from madlib_dl.tools.cluster import autocommit_connection

# pg_hba.conf of a new Debian 12 cluster, as pg_hba_file_rules shows it: (type, database, user, address, method).
DEBIAN_RULES = [
    ("local", ["all"], ["postgres"], None, "peer"),
    ("local", ["all"], ["all"], None, "peer"),
    ("host", ["all"], ["all"], "127.0.0.1", "scram-sha-256"),
    ("host", ["all"], ["all"], "::1", "scram-sha-256"),
    ("local", ["replication"], ["all"], None, "peer"),
    ("host", ["replication"], ["all"], "127.0.0.1", "scram-sha-256"),
    ("host", ["replication"], ["all"], "::1", "scram-sha-256"),
]


def _refused(**dsn) -> psycopg2.OperationalError:
    # passfile: a ~/.pgpass on this machine must not supply the password the test leaves out
    with pytest.raises(psycopg2.OperationalError) as caught:
        with autocommit_connection(passfile="/dev/null", connect_timeout=10, **dsn):
            pass
    return caught.value


def test_pg_hba_is_debians_default_without_trust(cur):
    cur.execute("SELECT type, database, user_name, address, auth_method, error FROM pg_hba_file_rules "
                "ORDER BY line_number")
    rules = cur.fetchall()
    assert [r[:5] for r in rules] == DEBIAN_RULES
    assert all(r[5] is None for r in rules)
    cur.execute("SELECT count(*) FROM pg_hba_file_rules WHERE auth_method = 'trust'")
    assert cur.fetchone()[0] == 0


@pytest.mark.parametrize("user", ["postgres", "alice"])
def test_a_tcp_connection_without_a_password_is_refused(server, plain_role, user):
    dsn = server.dsn("test", user)
    del dsn["password"]
    error = _refused(**dsn)
    assert "no password supplied" in str(error)  # the server asked for SCRAM authentication


@pytest.mark.parametrize("user", ["postgres", "alice"])
def test_a_wrong_password_is_refused(server, plain_role, user):
    error = _refused(**server.dsn("test", user, password="not-the-password"))
    assert f'password authentication failed for user "{user}"' in str(error)


def test_the_unix_socket_wants_the_os_user_of_the_role(server, cur):
    """peer: root (the test process) is not the postgres OS user, so the socket refuses it, password or not."""
    import os

    cur.execute("SELECT split_part(current_setting('unix_socket_directories'), ',', 1)")
    socket_dir = cur.fetchone()[0]
    if os.geteuid() != 0:
        pytest.skip("peer authentication of the postgres role succeeds only for other OS users than postgres")
    error = _refused(host=socket_dir, port=server.port, user="postgres", dbname="test", password=server.password)
    assert 'Peer authentication failed for user "postgres"' in str(error)


def test_passwords_are_scram_verifiers(cur, plain_role):
    cur.execute("SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN ('postgres', %s) ORDER BY 1",
                [plain_role.name])
    rows = cur.fetchall()
    assert [name for name, _ in rows] == sorted(["postgres", plain_role.name])
    assert all(verifier.startswith("SCRAM-SHA-256$") for _, verifier in rows)


def test_the_plain_role_is_a_plain_login_role(cur, plain_role):
    cur.execute("SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
                "FROM pg_roles WHERE rolname = %s", [plain_role.name])
    assert cur.fetchone() == (True, False, False, False, False, False)
    cur.execute("SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s",
                [plain_role.name])
    assert cur.fetchone()[0] == 0  # a member of no role (pg_read_all_data and the like)


def test_the_plain_role_has_a_data_scientists_grants(plain_cur):
    plain_cur.execute("SELECT current_user, session_user, "
                      "has_database_privilege('test', 'CONNECT'), has_database_privilege('test', 'CREATE'), "
                      "has_schema_privilege('public', 'USAGE'), has_schema_privilege('public', 'CREATE')")
    assert plain_cur.fetchone() == ("alice", "alice", True, False, True, True)
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        plain_cur.execute("CREATE DATABASE alices")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        plain_cur.execute("SELECT * FROM pg_authid")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        plain_cur.execute("CREATE SCHEMA alices")  # CREATE on the database was not granted


def test_psql_gets_the_password_from_pgpassword(server, plain_role):
    import os
    import subprocess

    for user in ("postgres", plain_role.name):
        env = dict(os.environ, **server.libpq_env("test", user), PGPASSFILE="/dev/null", PSQLRC="/dev/null")
        done = subprocess.run(["psql", "-X", "-At", "-c", "SELECT current_user"], capture_output=True, text=True,
                              env=env, timeout=60)
        assert (done.returncode, done.stdout.strip()) == (0, user), done.stderr
        del env["PGPASSWORD"]
        done = subprocess.run(["psql", "-X", "-w", "-At", "-c", "SELECT 1"], capture_output=True, text=True,
                              env=env, timeout=60)
        assert done.returncode != 0 and "no password supplied" in done.stderr
