"""Citus for the distributed test suite: the server's own if it has one, else built once per machine
from ../shared/vendor/citus/ (Citus 13.2.2's source, AGPL-3.0, and build.sh, which patches it for
PostgreSQL 15.20 and installs it into the server's directories). Neither Debian 12 nor PyPI packages
Citus. Without root or without the vendored source nothing is built, and the suite says why it skips."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from madlib_dl.tools import paths

BUILD_SCRIPT = paths.REPO.parent / "shared" / "vendor" / "citus" / "build.sh"


def library() -> Path:
    return Path(paths.pg_config("--pkglibdir")) / "citus.so"


def missing() -> str | None:
    """Why the Citus suite cannot run here (None: the server has Citus)."""
    if library().exists():
        return None
    return f"Citus is not installed into this server ({library()} is missing): `make citus` builds it"


def why_not_buildable() -> str | None:
    if not BUILD_SCRIPT.exists():
        return f"its source is not here ({BUILD_SCRIPT} is missing)"
    if os.geteuid() != 0:
        return "building it installs packages and writes into the server's directories, which needs root"
    return None


def ensure() -> str:
    """Build and install Citus unless the server has it; a line saying what happened."""
    if missing() is None:
        return f"citus: {library()}"
    reason = why_not_buildable()
    if reason is not None:
        return f"citus: not installed, and not built because {reason}; the Citus suite will be skipped"
    print(f"citus: building Citus from {BUILD_SCRIPT.parent} (once per machine, a few minutes)", flush=True)
    pg_config = shutil.which(paths.pg_config_program()) or paths.pg_config_program()
    result = subprocess.run(["bash", str(BUILD_SCRIPT), "", pg_config], capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise SystemExit("citus: build.sh failed:\n" + "\n".join(tail))
    return f"citus: built and installed: {library()}"
