"""Where things are: the checkout, the venv, PostgreSQL's programs and share directory."""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PGBIN_WRAPPERS = REPO / "src" / "pgbin"  # initdb/postgres/pg_ctl, run as the postgres OS user under root


def site_packages() -> str:
    """The venv's site-packages: where the server's PL/Python finds madlib_dl and TensorFlow."""
    return sysconfig.get_paths()["purelib"]


SERVER_USER = "postgres"  # the OS user a Debian server runs as


def server_user_can(test: str, path) -> bool:
    """Whether the server's OS user passes ``test -<test> path`` (-r: read it, -x: enter it). Only root
    runs the server as that user; anyone else runs it as themselves."""
    if os.geteuid() != 0:
        return True
    return subprocess.run(["runuser", "-u", SERVER_USER, "--", "test", f"-{test}", str(path)],
                          capture_output=True).returncode == 0


def pg_config_program() -> str:
    """The server's pg_config: $PG_CONFIG (`make install PG_CONFIG=...`, as PGXS extensions take it), else
    the one on PATH."""
    return os.environ.get("PG_CONFIG") or "pg_config"


def pg_config(option: str) -> str:
    program = pg_config_program()
    try:
        return subprocess.run([program, option], check=True, capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        raise SystemExit(f"madlib_dl: {program} not found; install PostgreSQL's server development files "
                         "(make setup) or set PG_CONFIG to the server's pg_config") from None


def pg_program(name: str) -> str:
    """A server program; under root the wrapper that drops to the postgres user."""
    if name in ("initdb", "postgres", "pg_ctl"):
        return str(PGBIN_WRAPPERS / name)
    return os.path.join(pg_config("--bindir"), name)
