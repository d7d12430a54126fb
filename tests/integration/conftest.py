"""A throwaway PostgreSQL cluster (testing.postgresql) with madlib_dl installed as `make install` does,
configured like the server Debian 12 ships: Debian's default pg_hba.conf (peer on the Unix socket,
scram-sha-256 over TCP, no trust line), so the tests connect over 127.0.0.1 with a password like any
client would.

The server runs as the postgres OS user through src/pgbin's wrappers (initdb and postgres refuse root).
It gets no PYTHONPATH: the extension must find its venv through the path recorded at install time.

Roles: the tests connect as the superuser `postgres` by default; the `plain_role` fixture makes
`alice`, a login role with only what a DBA grants a data scientist (see `Server.grant_plain_role`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from madlib_dl.tools import install, paths
from madlib_dl.tools.cluster import autocommit_connection

# Debian 12's pg_hba.conf as postgresql-common writes it for a new cluster (comments left out).
DEBIAN_PG_HBA = """\
local   all             postgres                                peer
local   all             all                                     peer
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
local   replication     all                                     peer
host    replication     all             127.0.0.1/32            scram-sha-256
host    replication     all             ::1/128                 scram-sha-256
"""

PLAIN_ROLE = "alice"


@dataclass(frozen=True)
class Role:
    """A login role of the test server and its password."""
    name: str
    password: str


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str = "postgres"
    password: str | None = None
    # Passwords of the roles the fixtures made (name -> password), so `connect(db, user=name)` suffices.
    passwords: dict = field(default_factory=dict, compare=False, repr=False)

    def dsn(self, dbname: str, user: str | Role | None = None, password: str | None = None) -> dict:
        """psycopg2/libpq keywords for `dbname` as `user` (default the superuser; a Role or a role name
        whose password the fixtures know)."""
        if isinstance(user, Role):
            user, password = user.name, password or user.password
        user = user or self.user
        if password is None:
            password = self.password if user == self.user else self.passwords.get(user)
        dsn = {"host": self.host, "port": self.port, "user": user, "dbname": dbname}
        if password is not None:
            dsn["password"] = password
        return dsn

    def connect(self, dbname: str = "test", user: str | Role | None = None, password: str | None = None,
                **keywords):
        """An autocommit connection (a context manager that closes it), as the superuser unless `user`."""
        return autocommit_connection(**self.dsn(dbname, user, password), **keywords)

    def libpq_env(self, dbname: str, user: str | Role | None = None, password: str | None = None) -> dict:
        """PG* environment variables for psql and other libpq programs: the password goes in PGPASSWORD."""
        dsn = self.dsn(dbname, user, password)
        env = {"PGHOST": dsn["host"], "PGPORT": str(dsn["port"]), "PGUSER": dsn["user"], "PGDATABASE": dbname}
        if "password" in dsn:
            env["PGPASSWORD"] = dsn["password"]
        return env

    def as_role(self, role: Role) -> "Server":
        """This server with `role` as its default user (for code that takes a Server and uses dsn())."""
        return Server(self.host, self.port, role.name, role.password, self.passwords)

    def create_role(self, name: str) -> Role:
        """(Re)creates `name` as a plain login role (LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE) with a new
        random password and no other grant (PostgreSQL's default CONNECT for PUBLIC aside, as on Debian):
        `grant_plain_role` gives it a data scientist's privileges in a database."""
        role = Role(name, secrets.token_urlsafe(18))
        with self.connect("postgres") as admin, admin.cursor() as cur:
            cur.execute("SET password_encryption = 'scram-sha-256'")
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name])
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(f'{verb} ROLE "{name}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s',
                        [role.password])
        self.passwords[name] = role.password
        return role

    def grant_plain_role(self, dbname: str, role: Role | str) -> None:
        """What a DBA grants a data scientist in `dbname`: CONNECT on it, USAGE and CREATE on its schema
        public (PostgreSQL 15 no longer lets PUBLIC create there), and nothing else (the extension's
        install script grants USAGE on its schema to PUBLIC)."""
        name = role.name if isinstance(role, Role) else role
        with self.connect("postgres") as admin, admin.cursor() as cur:
            cur.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO "{name}"')
        with self.connect(dbname) as conn, conn.cursor() as cur:
            cur.execute(f'GRANT USAGE, CREATE ON SCHEMA public TO "{name}"')

    @contextlib.contextmanager
    def fresh_database(self, name: str, extension: bool = True, plain_role: Role | str | None = None):
        """A new database (plpython3u comes from template1), dropped afterwards. With `plain_role`, that
        role gets a data scientist's grants in it (after the extension is created)."""
        with self.connect("postgres") as admin, admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{name}"')
        try:
            if extension:
                with self.connect(name) as conn, conn.cursor() as cur:
                    cur.execute("CREATE EXTENSION madlib_dl")
            if plain_role is not None:
                self.grant_plain_role(name, plain_role)
            yield name
        finally:
            with self.connect("postgres") as admin, admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _owned_by_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def _debian_authentication(port: int) -> str:
    """Gives the superuser a random SCRAM password, then replaces initdb's trust pg_hba.conf by Debian's
    and reloads; from then on TCP connections need a password. Returns the password."""
    password = secrets.token_urlsafe(18)
    trusted = Server(host="127.0.0.1", port=port)
    with trusted.connect("postgres") as conn, conn.cursor() as cur:
        cur.execute("SET password_encryption = 'scram-sha-256'")
        cur.execute("ALTER ROLE postgres PASSWORD %s", [password])
        cur.execute("SHOW hba_file")
        hba = Path(cur.fetchone()[0])
        hba.write_text(DEBIAN_PG_HBA)  # the existing file: it stays the postgres OS user's
        cur.execute("SELECT pg_reload_conf()")
    srv = Server(host="127.0.0.1", port=port, password=password)
    with srv.connect("postgres") as conn, conn.cursor() as cur:
        cur.execute("SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL")
        errors = cur.fetchall()
        if errors:
            raise RuntimeError(f"{hba}: the server rejected lines {errors}")
    return password


@pytest.fixture(scope="session")
def server():
    import testing.postgresql

    control = Path(paths.pg_config("--sharedir")) / "extension" / f"{install.EXTENSION}.control"
    if not control.exists():
        pytest.fail(f"{control} is missing: run `make install` (make test does) before the integration tests")
    os.environ.pop("PYTHONPATH", None)
    base = Path(tempfile.mkdtemp(prefix="madlib_dl-test-"))
    for path in (base, base / "data", base / "tmp"):
        path.mkdir(mode=0o700, exist_ok=True)
        _owned_by_postgres(path)
    pg = testing.postgresql.Postgresql(base_dir=str(base), initdb=paths.pg_program("initdb"),
                                       postgres=paths.pg_program("postgres"))
    try:
        port = pg.settings["port"]
        srv = Server(host="127.0.0.1", port=port, password=_debian_authentication(port))
        with srv.connect("template1") as conn, conn.cursor() as cur:
            cur.execute("CREATE EXTENSION plpython3u")
        with srv.connect("test") as conn, conn.cursor() as cur:
            cur.execute("CREATE EXTENSION plpython3u")
            cur.execute("CREATE EXTENSION madlib_dl")
        _POSTMASTERS[port] = pg
        yield srv
    finally:
        _POSTMASTERS.pop(pg.settings["port"], None)
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


_POSTMASTERS: dict = {}  # port -> the testing.postgresql server, for restart_server


@pytest.fixture
def restart_server(server):
    """``restart_server()``: stop the server at once, as a crash would (an immediate shutdown: every
    session ends, and the next start recovers from the WAL), and start it again; returns when it
    accepts connections. Sessions and module connections opened before are gone afterwards."""
    pg = _POSTMASTERS[server.port]

    def restart(timeout: float = 60.0) -> None:
        import psycopg2

        pg.child_process.send_signal(signal.SIGQUIT)
        pg.child_process.wait(timeout)
        with open(os.path.join(pg.base_dir, f"{pg.name}.log"), "at") as log:
            pg.child_process = subprocess.Popen(pg.get_server_commandline(), stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with server.connect("postgres"):
                    return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline or pg.child_process.poll() is not None:
                    raise
                time.sleep(0.2)

    return restart


@pytest.fixture
def conn(server):
    """An autocommit connection to the `test` database, which has madlib_dl, as the superuser."""
    with server.connect("test") as c:
        yield c


@pytest.fixture
def cur(conn):
    with conn.cursor() as c:
        yield c


@pytest.fixture(scope="session")
def plain_role(server) -> Role:
    """`alice`: LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE with a random password, granted only CONNECT on
    database `test` and USAGE, CREATE on its schema public (the extension's schema is usable by PUBLIC).
    For a database of a test's own: `server.fresh_database(name, plain_role=plain_role)` or
    `server.grant_plain_role(name, plain_role)`."""
    role = server.create_role(PLAIN_ROLE)
    server.grant_plain_role("test", role)
    return role


@pytest.fixture
def plain_conn(server, plain_role):
    """An autocommit connection to `test` as the plain role (over TCP with its password)."""
    with server.connect("test", user=plain_role) as c:
        yield c


@pytest.fixture
def plain_cur(plain_conn):
    with plain_conn.cursor() as c:
        yield c


@contextlib.contextmanager
def plain_training_database(server: Server, role: Role, name: str):
    """A connection as ``role`` to a fresh database with the extension, where the role has a data
    scientist's grants and its runs must use background workers: madlib_dl.executor is 'workers' for
    the role there (RESET ALL keeps it), so a run that would fall back to one session fails instead."""
    with server.fresh_database(name, plain_role=role) as db:
        with server.connect(db) as admin, admin.cursor() as cur:
            cur.execute(f'ALTER ROLE "{role.name}" IN DATABASE "{db}" SET madlib_dl.executor = \'workers\'')
        with server.connect(db, user=role) as conn:
            yield conn


@pytest.fixture(scope="session")
def training_database(server, plain_role):
    """``training_database(name)``: plain_training_database for the plain role (a context manager)."""
    return lambda name: plain_training_database(server, plain_role, name)


# internal_launch_worker starts a worker only for a token madlib_dl's Python armed in the same backend
# (src/madlib_dl.c, madlib_dl/native.py): a test launches through a PL/Python function of its own, which
# only a superuser can create. The C library is loaded first (internal_client_connected is one of its
# functions), so that its symbols are in the process.
LAUNCH_FUNCTION = """
CREATE OR REPLACE FUNCTION public.madlib_dl_test_launch(schema TEXT, token TEXT) RETURNS INTEGER
LANGUAGE plpython3u AS $$
import ctypes
plpy.execute("SELECT %s.internal_client_connected()" % plpy.quote_ident(schema))
library = ctypes.CDLL(None)
library.madlib_dl_arm_launch.argtypes = [ctypes.c_char_p]
library.madlib_dl_arm_launch(token.encode())
plan = plpy.prepare("SELECT %s.internal_launch_worker($1) AS pid" % plpy.quote_ident(schema), ["text"])
return plpy.execute(plan, [token])[0]["pid"]
$$"""


def create_launch_function(cur) -> None:
    """public.madlib_dl_test_launch(schema, token) in cur's database (cur: a superuser's)."""
    cur.execute(LAUNCH_FUNCTION)


class WorkerSlots:
    """Takes the server's free background worker slots with real madlib_dl workers (launched through
    internal_launch_worker by the superuser, in the database of the given session, with no per-role cap)
    that connect to a channel this test owns and then wait for requests; ``free(n)`` lets n of them go,
    so exactly n slots are free."""

    def __init__(self, server=None):
        self._server = server
        from madlib_dl import channel

        self._channel = channel
        self._directory = tempfile.mkdtemp(prefix="madlib_dl-slots-")
        _owned_by_postgres(Path(self._directory))
        self._path = os.path.join(self._directory, "socket")
        self._listener = channel.Listener(self._path)
        os.chmod(self._path, 0o666)  # the workers run as the server's OS user
        self._secret = os.urandom(16)
        self.held: list = []  # (pid, connection)

    def fill(self, cur, schema: str = "madlib_dl") -> int:
        """Launch until no slot is left; returns how many were taken."""
        from madlib_dl.segment.worker import Token

        with self._server.connect(cur.connection.info.dbname) as admin, admin.cursor() as acur:
            create_launch_function(acur)
            acur.execute("SET madlib_dl.max_workers_per_role = 1000")
            return self._fill(acur, schema, Token)

    def _fill(self, cur, schema, Token) -> int:
        for index in range(len(self.held), 64):
            cur.execute("SELECT public.madlib_dl_test_launch(%s, %s)",
                        [schema, Token(self._path, self._secret, index).text()])
            pid = cur.fetchone()[0]
            if pid is None:
                return len(self.held)
            conn = self._listener.accept(30)
            assert conn is not None, f"worker {pid} did not connect"
            self._channel.authenticate_worker(conn, self._secret, 10)
            self.held.append((pid, conn))
        raise AssertionError("max_worker_processes is larger than this test expects")

    def free(self, count: int) -> None:
        import time

        for pid, conn in self.held[:count]:
            conn.close()
            deadline = time.monotonic() + 30
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.05)
        del self.held[:count]

    def close(self) -> None:
        self.free(len(self.held))
        self._listener.close()
        shutil.rmtree(self._directory, ignore_errors=True)


@pytest.fixture
def worker_slots(server):
    slots = WorkerSlots(server)
    try:
        yield slots
    finally:
        slots.close()
