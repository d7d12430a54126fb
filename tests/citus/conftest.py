"""A throwaway Citus cluster for the distributed suite: a coordinator and 2 worker nodes on localhost,
each its own data directory and port, each with Debian's pg_hba (scram-sha-256 over TCP), and
madlib_dl created on the coordinator (Citus creates it on the worker nodes). The nodes reach each other
as Citus documents for password authentication: a password file of the server's OS user
(PGPASSFILE, one line per role). Citus comes from the server, else `make citus` builds it
(madlib_dl/tools/citus.py); where neither is possible the suite is skipped with the reason."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from tests.integration.conftest import (PLAIN_ROLE, Role, Server, _debian_authentication,  # noqa: E402
                                        _owned_by_postgres)

from madlib_dl.tools import citus, paths  # noqa: E402

NODES = ("coordinator", "worker1", "worker2")
DATABASE = "test"  # testing.postgresql's; Citus needs the same database name on every node
SERVER_ARGS = "-h 127.0.0.1 -F -c logging_collector=off -c shared_preload_libraries=citus -c max_worker_processes=32"


@dataclass
class CitusCluster:
    coordinator: Server
    workers: list[Server]
    passfile: Path
    roles: dict = field(default_factory=dict)  # name -> Role, known to every node
    postmasters: dict = field(default_factory=dict)  # port -> its testing.postgresql.Postgresql

    def stop_node(self, node: Server) -> None:
        """Stops a node as a crash would (pg_ctl stop -m immediate: SIGQUIT to the postmaster)."""
        self.postmasters[node.port].terminate(signal.SIGQUIT)

    def start_node(self, node: Server, timeout: float = 60) -> None:
        """Starts a stopped node again (crash recovery), on its port, as before."""
        pg = self.postmasters[node.port]
        with open(Path(pg.base_dir) / "restart.log", "ab") as log:
            pg.child_process = subprocess.Popen(pg.get_server_commandline(), stdout=log, stderr=log,
                                                env={**os.environ, "HOME": str(Path(pg.base_dir).parent)})
        deadline = time.monotonic() + timeout
        while True:
            try:
                with node.connect(DATABASE):
                    return
            except Exception:
                if time.monotonic() > deadline or pg.child_process.poll() is not None:
                    raise
                time.sleep(0.2)

    @property
    def nodes(self) -> list[Server]:
        return [self.coordinator, *self.workers]

    def create_role(self, name: str) -> Role:
        """A plain login role made on the coordinator (Citus creates it on the worker nodes with its
        password), with a data scientist's grants in the database, and its line in the password file."""
        role = Role(name, secrets.token_urlsafe(18))
        with self.coordinator.connect(DATABASE) as conn, conn.cursor() as cur:  # Citus propagates it from here
            cur.execute("SET password_encryption = 'scram-sha-256'")
            cur.execute(f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s',
                        [role.password])
        self.coordinator.passwords[name] = role.password
        self.coordinator.grant_plain_role(DATABASE, role)
        for worker in self.workers:
            worker.passwords[name] = role.password
        self.roles[name] = role
        self._write_passfile()
        return role

    def _write_passfile(self) -> None:
        lines = [f"127.0.0.1:{node.port}:*:{node.user}:{node.password}" for node in self.nodes]
        lines += [f"127.0.0.1:*:*:{role.name}:{role.password}" for role in self.roles.values()]
        self.passfile.write_text("\n".join(lines) + "\n")
        self.passfile.chmod(0o600)
        _owned_by_postgres(self.passfile)


def _start_node(base: Path, name: str):
    import testing.postgresql

    home = base / name
    for path in (home, home / "data", home / "tmp"):
        path.mkdir(mode=0o700, exist_ok=True)
        _owned_by_postgres(path)
    # The server's HOME is its OS user's, as on Debian (/var/lib/postgresql): libpq looks there for
    # client certificates when Citus connects to another node, and root's is not readable to it.
    saved, os.environ["HOME"] = os.environ.get("HOME"), str(base)
    try:
        pg = testing.postgresql.Postgresql(base_dir=str(home), initdb=paths.pg_program("initdb"),
                                           postgres=paths.pg_program("postgres"), postgres_args=SERVER_ARGS)
    finally:
        if saved is not None:
            os.environ["HOME"] = saved
    port = pg.settings["port"]
    return pg, Server(host="127.0.0.1", port=port, password=_debian_authentication(port))


@pytest.fixture(scope="session")
def citus_cluster():
    reason = citus.missing()
    if reason is not None:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="madlib_dl-citus-"))
    _owned_by_postgres(base)
    passfile = base / "pgpass"
    saved = os.environ.get("PGPASSFILE")
    os.environ["PGPASSFILE"] = str(passfile)  # the servers' libpq reads it: Citus's inter-node connections
    os.environ.pop("PYTHONPATH", None)
    postmasters = []
    try:
        servers = []
        for name in NODES:
            pg, server = _start_node(base, name)
            postmasters.append(pg)
            servers.append(server)
        # One superuser password for every node: Citus copies the coordinator's roles, passwords
        # included, to the worker nodes it adds.
        for i, server in enumerate(servers[1:], start=1):
            with server.connect("postgres") as conn, conn.cursor() as cur:
                cur.execute("SET password_encryption = 'scram-sha-256'")
                cur.execute("ALTER ROLE postgres PASSWORD %s", [servers[0].password])
            servers[i] = Server(server.host, server.port, password=servers[0].password)
        cluster = CitusCluster(servers[0], servers[1:], passfile,
                               postmasters={server.port: pg for server, pg in zip(servers, postmasters)})
        cluster._write_passfile()
        for server in servers:
            with server.connect("template1") as conn, conn.cursor() as cur:
                cur.execute("CREATE EXTENSION plpython3u")
            with server.connect(DATABASE) as conn, conn.cursor() as cur:
                cur.execute("CREATE EXTENSION citus")
                cur.execute("CREATE EXTENSION plpython3u")
        with cluster.coordinator.connect(DATABASE) as conn, conn.cursor() as cur:
            cur.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", [cluster.coordinator.port])
            for worker in cluster.workers:
                cur.execute("SELECT citus_add_node('127.0.0.1', %s)", [worker.port])
            cur.execute("CREATE EXTENSION madlib_dl")
        yield cluster
    finally:
        for pg in reversed(postmasters):
            pg.stop()
        if saved is None:
            os.environ.pop("PGPASSFILE", None)
        else:
            os.environ["PGPASSFILE"] = saved
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def citus_role(citus_cluster) -> Role:
    """The plain role alice on every node."""
    return citus_cluster.create_role(PLAIN_ROLE)
