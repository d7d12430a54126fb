"""A throwaway PostgreSQL cluster (testing.postgresql) with madlib_dl installed as `make install` does.

The server runs as the postgres OS user through src/pgbin's wrappers (initdb and postgres refuse root).
It gets no PYTHONPATH: the extension must find its venv through the path recorded at install time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from madlib_dl.tools import install, paths
from madlib_dl.tools.cluster import autocommit_connection


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str = "postgres"

    def dsn(self, dbname: str) -> dict:
        return {"host": self.host, "port": self.port, "user": self.user, "dbname": dbname}

    def connect(self, dbname: str = "test"):
        return autocommit_connection(**self.dsn(dbname))

    @contextlib.contextmanager
    def fresh_database(self, name: str, extension: bool = True):
        """A new database (plpython3u comes from template1), dropped afterwards."""
        with self.connect("postgres") as admin, admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{name}"')
        try:
            if extension:
                with self.connect(name) as conn, conn.cursor() as cur:
                    cur.execute("CREATE EXTENSION madlib_dl")
            yield name
        finally:
            with self.connect("postgres") as admin, admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _owned_by_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


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
        srv = Server(host="127.0.0.1", port=pg.settings["port"])
        with srv.connect("template1") as conn, conn.cursor() as cur:
            cur.execute("CREATE EXTENSION plpython3u")
        with srv.connect("test") as conn, conn.cursor() as cur:
            cur.execute("CREATE EXTENSION plpython3u")
            cur.execute("CREATE EXTENSION madlib_dl")
        yield srv
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def conn(server):
    """An autocommit connection to the `test` database, which has madlib_dl."""
    with server.connect("test") as c:
        yield c


@pytest.fixture
def cur(conn):
    with conn.cursor() as c:
        yield c
