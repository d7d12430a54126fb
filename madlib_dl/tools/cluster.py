"""The embedded cluster: a PostgreSQL cluster in a project-local directory, for the demo and for users
without a server. It runs as the postgres OS user (the server refuses root), listens on its own port
and socket directory so it never clashes with a system server, and has madlib_dl created in its
database. Every command is safe to re-run."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from madlib_dl.tools import install, paths

DEFAULT_PORT = 54329
LISTEN_CONF = "madlib_dl_listen.conf"
SERVER_USER = paths.SERVER_USER
# The extension's version and the schema it owns (its install script creates that schema).
EXTENSION_QUERY = """
    SELECT e.extversion, n.nspname
    FROM pg_extension e
    JOIN pg_depend d ON d.refobjid = e.oid AND d.deptype = 'e' AND d.classid = 'pg_namespace'::regclass
    JOIN pg_namespace n ON n.oid = d.objid
    WHERE e.extname = 'madlib_dl'"""


def _listen_port(conf: Path) -> int | None:
    """The port a cluster's listen file (written at each start) names; None when there is none."""
    try:
        found = re.search(r"^port = (\d+)$", conf.read_text(), re.M)
    except OSError:
        return None
    return int(found.group(1)) if found else None


# Where a checkout's cluster lives when the postgres OS user cannot enter the checkout (one under /root).
RELOCATED_HOMES = Path("/var/lib/madlib_dl/clusters")


def default_home() -> Path:
    """The checkout's .cluster when the server's OS user can reach it, else a directory of its own under
    RELOCATED_HOMES, named after the checkout (``.cluster`` becomes a symlink to it at init)."""
    local = paths.REPO / ".cluster"
    if local.is_symlink() or paths.server_user_can("x", paths.REPO):
        return local
    digest = hashlib.sha256(str(paths.REPO).encode()).hexdigest()[:12]
    return RELOCATED_HOMES / f"{paths.REPO.name}-{digest}"


def _link_local_home(home: Path) -> None:
    """A relocated home gets the checkout's .cluster as a symlink to it, so that the cluster is found
    where it would otherwise be (and `make clean` removes both)."""
    local = paths.REPO / ".cluster"
    if home.parent != RELOCATED_HOMES or local.is_symlink():
        return
    if local.exists():
        if any(local.iterdir()):
            raise SystemExit(f"cluster: {local} cannot hold the cluster (the postgres OS user cannot enter "
                             f"{paths.REPO}) and is not empty; move it away, or set MADLIB_DL_HOME")
        local.rmdir()
    _make_reachable(home)
    local.symlink_to(home)


def _make_reachable(directory: Path) -> None:
    """mkdir -p, the new directories mode 755 whatever root's umask: the postgres user goes through them."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    for new in reversed(missing):
        new.mkdir()
        os.chmod(new, 0o755)


@contextlib.contextmanager
def autocommit_connection(**dsn):
    """An autocommit psycopg2 connection, closed on exit (psycopg2's own `with` does not close it)."""
    import psycopg2

    conn = psycopg2.connect(**dsn)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


@dataclass(frozen=True)
class Cluster:
    home: Path
    port: int = DEFAULT_PORT
    dbname: str = "madlib_dl"
    user: str = SERVER_USER
    preload: str = ""  # shared_preload_libraries ('citus' for a node of the embedded Citus cluster)

    @classmethod
    def from_environment(cls) -> "Cluster":
        """MADLIB_DL_HOME and MADLIB_DL_PORT when set; else the checkout's cluster, on the port it was
        last started with (its own listen file), so `make status` finds a cluster `MADLIB_DL_PORT=...
        make start` started."""
        home = (Path(os.environ["MADLIB_DL_HOME"]) if os.environ.get("MADLIB_DL_HOME") else default_home()).resolve()
        port = os.environ.get("MADLIB_DL_PORT") or _listen_port(home / "data" / LISTEN_CONF) or DEFAULT_PORT
        return cls(home=home, port=int(port))

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "run"

    @property
    def log(self) -> Path:
        return self.home / "postgres.log"

    def dsn(self) -> dict:
        return {"host": str(self.socket_dir), "port": self.port, "dbname": self.dbname, "user": self.user}

    def connection_help(self) -> str:
        return (f"socket directory {self.socket_dir} (or host 127.0.0.1), port {self.port}, "
                f"database {self.dbname}, user {self.user}, no password\n"
                f"  psql -h {self.socket_dir} -p {self.port} -U {self.user} {self.dbname}\n"
                f"  psycopg2.connect(host='127.0.0.1', port={self.port}, dbname='{self.dbname}', user='{self.user}')")

    # -- server life cycle ------------------------------------------------------------------------

    def _run(self, *args, check=True, env=None) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), capture_output=True, text=True, cwd=self.home, env=env)
        if check and result.returncode != 0:
            raise SystemExit(f"cluster: {' '.join(os.path.basename(str(a)) for a in args[:2])} failed: "
                             f"{(result.stderr or result.stdout).strip()}")
        return result

    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def init(self) -> None:
        if self.initialized():
            return
        _link_local_home(self.home)
        for d in (self.home, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(d, SERVER_USER, SERVER_USER)
        self._run(paths.pg_program("initdb"), "-D", str(self.data), "-U", SERVER_USER, "-A", "trust",
                  "-E", "UTF8", "--locale=C.UTF-8", "--lc-messages=C")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\ninclude_if_exists = '{LISTEN_CONF}'  # written by madlib-dl start\n")

    def _write_listen_conf(self) -> None:
        """Port and socket are rewritten at every start, so a changed MADLIB_DL_PORT takes effect."""
        path = self.data / LISTEN_CONF
        preload = f"shared_preload_libraries = '{self.preload}'\n" if self.preload else ""
        path.write_text(f"port = {self.port}\nunix_socket_directories = '{self.socket_dir}'\n"
                        f"listen_addresses = '127.0.0.1'\n{preload}")
        if os.geteuid() == 0:
            shutil.chown(path, SERVER_USER, SERVER_USER)

    def running(self) -> bool:
        return self.initialized() and self._run(paths.pg_program("pg_ctl"), "status", "-D", str(self.data),
                                                check=False).returncode == 0

    def start(self, extension: bool = True) -> None:
        """Start the server, and create the database (and madlib_dl in it unless ``extension`` is false)."""
        self.init()
        if not self.running():
            self._write_listen_conf()
            # lets users' own plpython3u code import TensorFlow and Keras: the directories madlib_dl runs from
            directories = install.installed_directories(paths.pg_config("--sharedir")) or []
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(directories))
            if os.geteuid() == 0:  # the server's HOME is its OS user's (libpq looks there, e.g. Citus's connections)
                env["HOME"] = pwd.getpwnam(SERVER_USER).pw_dir
            result = self._run(paths.pg_program("pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
                               "-l", str(self.log), check=False, env=env)
            if result.returncode != 0:
                raise SystemExit(f"cluster: the server did not start on port {self.port} (another server there? "
                                 f"set MADLIB_DL_PORT); see {self.log}")
        self.create_database(extension)

    def stop(self) -> bool:
        if not self.running():
            return False
        self._run(paths.pg_program("pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data))
        return True

    # -- database and extension -------------------------------------------------------------------

    def connect(self, dbname: str | None = None):
        return autocommit_connection(**dict(self.dsn(), dbname=dbname or self.dbname))

    def create_database(self, extension: bool = True) -> None:
        """plpython3u goes into template1 so that every new database can CREATE EXTENSION madlib_dl
        (and Citus into the database, where it is preloaded, before madlib_dl)."""
        with self.connect("template1") as conn, conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [self.dbname])
            if cur.fetchone() is None:
                cur.execute(f"CREATE DATABASE {self.dbname}")
        if self.preload:
            with self.connect() as conn, conn.cursor() as cur:
                cur.execute(f"CREATE EXTENSION IF NOT EXISTS {self.preload}")
        if extension:
            self.create_extension()

    def create_extension(self) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'madlib_dl'")
            row = cur.fetchone()
            cur.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'madlib_dl'")
            available = cur.fetchone()
            if available is None:
                raise SystemExit("cluster: the madlib_dl extension is not installed in this server; run `make install`")
            if row is None:
                cur.execute("CREATE EXTENSION madlib_dl")
            elif row[0] != available[0]:
                _run_or_exit(cur, "ALTER EXTENSION madlib_dl UPDATE", f"update madlib_dl {row[0]} to {available[0]}")
            elif _script_changed(cur, row[0]):
                # Development: new code under the same version number has no update script; it replaces
                # the old one. Without CASCADE, so tables a user keeps in the extension's schema stop the
                # replacement instead of being dropped.
                _run_or_exit(cur, "DROP EXTENSION madlib_dl; CREATE EXTENSION madlib_dl",
                             f"replace madlib_dl {row[0]} by the newly installed {available[0]}")
            else:
                return
            _mark_script(cur, available[0])

    def status(self) -> str:
        if not self.initialized():
            return f"embedded cluster: not created ({self.home}); `make start` creates it"
        if not self.running():
            return f"embedded cluster: stopped ({self.data}); `make start` starts it"
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(EXTENSION_QUERY)
            ext = cur.fetchone()
        extension = "not created" if ext is None else f"{ext[0]} in schema {ext[1]}"
        return f"embedded cluster: running ({self.data}); madlib_dl extension {extension}\n  {self.connection_help()}"

    def psql_command(self, *extra: str) -> list[str]:
        """psql on the cluster, as PGUSER on PGDATABASE where they are set (as psql itself would)."""
        user = os.environ.get("PGUSER") or self.user
        dbname = os.environ.get("PGDATABASE") or self.dbname
        return ["psql", "-h", str(self.socket_dir), "-p", str(self.port), "-U", user, "-d", dbname, *extra]


SCRIPT_MARK = " [install script sha256 "


def _run_or_exit(cur, statement: str, what: str) -> None:
    import psycopg2

    try:
        cur.execute(statement)
    except psycopg2.Error as error:
        raise SystemExit(f"cluster: could not {what}: {error.diag.message_primary}") from None


def _script_digest(version: str) -> str | None:
    script = Path(paths.pg_config("--sharedir")) / "extension" / f"madlib_dl--{version}.sql"
    return hashlib.sha256(script.read_bytes()).hexdigest()[:16] if script.exists() else None


def _extension_comment(cur) -> str | None:
    cur.execute("SELECT obj_description(oid, 'pg_extension') FROM pg_extension WHERE extname = 'madlib_dl'")
    return cur.fetchone()[0]


def _mark_script(cur, version: str) -> None:
    """Note in the extension's comment which install script created it, so that a `make install` of
    new code under the same version number is noticed (no update scripts during development)."""
    digest = _script_digest(version)
    comment = (_extension_comment(cur) or "madlib_dl").split(SCRIPT_MARK)[0]
    cur.execute("COMMENT ON EXTENSION madlib_dl IS %s", [f"{comment}{SCRIPT_MARK}{digest}]"])


def _script_changed(cur, version: str) -> bool:
    """Whether the installed script differs from the one that created the database's extension."""
    digest = _script_digest(version)
    comment = _extension_comment(cur) or ""
    return digest is not None and not comment.endswith(f"{SCRIPT_MARK}{digest}]")
