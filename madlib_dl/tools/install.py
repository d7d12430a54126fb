"""`make install`: write the extension's control file and install script into the server's share
directory, with the venv's path recorded so PL/Python finds madlib_dl without any server setting."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

from madlib_dl import __version__
from madlib_dl.tools import paths

EXTENSION = "madlib_dl"
DEFAULT_SCHEMA = "madlib_dl"


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
        path.write_text(render(template, schema, site))
    return list(outputs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sharedir", default=None, help="default: pg_config --sharedir")
    parser.add_argument("--schema", default=os.environ.get("MADLIB_DL_SCHEMA") or DEFAULT_SCHEMA,
                        help="schema the extension creates (default madlib_dl; 'madlib' for MADlib scripts)")
    args = parser.parse_args(argv)
    for path in install(args.sharedir or paths.pg_config("--sharedir"), args.schema):
        print(f"install: wrote {path}")


if __name__ == "__main__":
    main()
