"""`make install`: write the extension's control file and install script into the server's share
directory, with the venv's path recorded so PL/Python finds madlib_dl without any server setting, and
build the extension's small C library (src/madlib_dl.c: background workers) into the server's pkglibdir."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from madlib_dl import __version__
from madlib_dl.tools import paths

EXTENSION = "madlib_dl"
DEFAULT_SCHEMA = "madlib_dl"
LIBRARY = f"{EXTENSION}.so"
# What the server reads runs as the postgres OS user: readable by all whatever root's umask is.
READABLE = 0o644


def boot_lines(site: str) -> str:
    """Python run at the top of every function body: once per backend, put the venv on sys.path
    (first, so its numpy wins over any Debian one) and read its .pth files (the editable install)."""
    return ("import sys\n"
            f"if 'madlib_dl' not in sys.modules: sys.path.insert(0, {site!r}); "
            f"__import__('site').addsitedir({site!r})")


def render(template: str, schema: str, site: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise SystemExit(f"install: schema {schema!r} must be a lower-case SQL identifier such as madlib or madlib_dl")
    text = template.replace("@SCHEMA@", schema).replace("@VERSION@", __version__)
    return text.replace("@MADLIB_DL_BOOT@", boot_lines(site))


def script_template(sql_dir: Path) -> str:
    """The install script: the head (schema, core functions), then one file per function family
    from sql/functions/, in name order."""
    parts = [(sql_dir / f"{EXTENSION}.sql.in").read_text()]
    parts += [p.read_text() for p in sorted((sql_dir / "functions").glob("*.sql.in"))]
    return "\n".join(parts)


def check_readable_by_server(site: str) -> None:
    """The server runs as the postgres OS user: a venv under /root (mode 700) would fail at call time."""
    if os.geteuid() != 0:
        return
    for path in (os.path.join(site, "keras", "__init__.py"), str(paths.REPO / "madlib_dl" / "__init__.py")):
        probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-r", path], capture_output=True)
        if probe.returncode != 0:
            raise SystemExit(f"install: the postgres OS user cannot read {path}; put the checkout (and its .venv) "
                             "in a directory other users can read, e.g. /opt or /srv")


def install(sharedir: str, schema: str = DEFAULT_SCHEMA, site: str | None = None) -> list[Path]:
    site = site or paths.site_packages()
    check_readable_by_server(site)
    target = Path(sharedir) / "extension"
    sql_dir = paths.REPO / "sql"
    outputs = {
        target / f"{EXTENSION}.control": (sql_dir / f"{EXTENSION}.control.in").read_text(),
        target / f"{EXTENSION}--{__version__}.sql": script_template(sql_dir),
    }
    for path, template in outputs.items():
        _write_if_changed(path, render(template, schema, site).encode())
    return list(outputs)


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Replace `path` by `data` atomically (a server may have the old library mapped: a new inode
    leaves it intact), mode 644; nothing happens when the contents are the same."""
    if path.exists() and path.read_bytes() == data and (path.stat().st_mode & 0o777) == READABLE:
        return False
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except PermissionError:
        raise SystemExit(f"install: cannot write into {path.parent}; run `make install` as root") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, READABLE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def build_library(pg_config: str = "pg_config") -> Path:
    """Build src/madlib_dl.so with PGXS (make skips it when nothing changed). with_llvm=no: no JIT
    bitcode, so clang is not needed; the library only starts workers and is never worth inlining."""
    src = paths.REPO / "src"
    make = shutil.which("make")
    if make is None:
        raise SystemExit("install: `make` is missing; run `make setup` (as root) to install the build tools")
    result = subprocess.run([make, "-C", str(src), f"PG_CONFIG={pg_config}", "with_llvm=no"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"install: building {src / LIBRARY} failed (the server headers come with "
                         f"`make setup`: postgresql-server-dev-15):\n{(result.stdout + result.stderr).strip()}")
    return src / LIBRARY


def install_library(pkglibdir: str, pg_config: str = "pg_config") -> tuple[Path, bool]:
    """Build the C library and copy it into the server's pkglibdir ($libdir); (path, whether copied)."""
    built = build_library(pg_config)
    target = Path(pkglibdir) / LIBRARY
    return target, _write_if_changed(target, built.read_bytes())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sharedir", default=None, help="default: pg_config --sharedir")
    parser.add_argument("--schema", default=os.environ.get("MADLIB_DL_SCHEMA") or DEFAULT_SCHEMA,
                        help="schema the extension creates (default madlib_dl; 'madlib' for MADlib scripts)")
    parser.add_argument("--pkglibdir", default=None, help="where the C library goes; default: pg_config --pkglibdir")
    args = parser.parse_args(argv)
    for path in install(args.sharedir or paths.pg_config("--sharedir"), args.schema):
        print(f"install: wrote {path}")
    library, copied = install_library(args.pkglibdir or paths.pg_config("--pkglibdir"),
                                      shutil.which("pg_config") or "pg_config")
    print(f"install: {'wrote' if copied else 'up to date:'} {library}")


if __name__ == "__main__":
    main()
