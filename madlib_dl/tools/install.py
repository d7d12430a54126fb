"""`make install`: install the extension the way PostgreSQL extensions are installed, into server-owned
directories that outlive the checkout:

* the madlib_dl package (a copy, not editable) and the packages the server imports (TensorFlow, Keras,
  numpy, at the versions of this venv) into ``<pkglibdir>/madlib_dl/<version>/`` (:func:`install_package`);
* the extension's small C library (src/madlib_dl.c: background workers) into ``<pkglibdir>``;
* the control file and install script into ``<sharedir>/extension``, every function body booting from
  that version's directory and refusing to run another version's code.

`make dev-install` (``--dev``) boots from the venv instead, which holds madlib_dl editable: the server
runs the checkout's code as it is edited. `make uninstall` removes what `make install` wrote."""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from madlib_dl import __version__
from madlib_dl.tools import paths

EXTENSION = "madlib_dl"
DEFAULT_SCHEMA = "madlib_dl"
LIBRARY = f"{EXTENSION}.so"
# What the server reads runs as the postgres OS user: readable by all whatever root's umask is.
READABLE = 0o644
# What the server imports (tests and client tools need more: requirements.txt pins them all).
RUNTIME_PACKAGES = ("tensorflow-cpu", "keras", "numpy")
DEPS_STAMP = ".madlib_dl-requirements"


def boot_lines(directories: list[str], version: str = __version__) -> str:
    """Python run at the top of every function body: once per backend, check that ``directories`` are
    there (a version's files removed from the server), put them first on sys.path and read their .pth
    files; on every call, refuse another version's code."""
    missing = (f"RuntimeError('madlib_dl: the files of madlib_dl {version}, which this database\\'s extension "
               f"runs, are not on this server (' + d + '); install that version (make install) or run ALTER "
               f"EXTENSION madlib_dl UPDATE to an installed one')")
    return ("import sys\n"
            "if 'madlib_dl' not in sys.modules:\n"
            f"    for d in {directories!r}:\n"
            f"        if not __import__('os').path.isdir(d): raise {missing}\n"
            f"    sys.path[0:0] = {directories!r}; [__import__('site').addsitedir(d) for d in {directories!r}]\n"
            f"__import__('madlib_dl').require_version({version!r})")


def render(template: str, schema: str, directories: list[str]) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise SystemExit(f"install: schema {schema!r} must be a lower-case SQL identifier such as madlib or madlib_dl")
    text = template.replace("@SCHEMA@", schema).replace("@VERSION@", __version__)
    return text.replace("@MADLIB_DL_BOOT@", boot_lines(directories))


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


def install(sharedir: str, schema: str = DEFAULT_SCHEMA, directories: list[str] | None = None) -> list[Path]:
    """The control file and install script, booting from ``directories`` (default: the venv's)."""
    if directories is None:
        directories = [paths.site_packages()]
        check_readable_by_server(directories[0])
    target = Path(sharedir) / "extension"
    sql_dir = paths.REPO / "sql"
    outputs = {
        target / f"{EXTENSION}.control": (sql_dir / f"{EXTENSION}.control.in").read_text(),
        target / f"{EXTENSION}--{__version__}.sql": script_template(sql_dir),
    }
    for path, template in outputs.items():
        _write_if_changed(path, render(template, schema, directories).encode())
    return list(outputs)


def installed_directories(sharedir: str) -> list[str] | None:
    """The directories the installed script of this version boots from (None: not installed)."""
    script = Path(sharedir) / "extension" / f"{EXTENSION}--{__version__}.sql"
    if not script.exists():
        return None
    found = re.search(r"sys\.path\[0:0\] = (\[[^\]]*\])", script.read_text())
    return ast.literal_eval(found.group(1)) if found else None


# ---------------------------------------------------------------------------------------------------
# The package and what it imports, in a server-owned directory per version

def package_dir(pkglibdir: str) -> Path:
    return Path(pkglibdir) / EXTENSION / __version__


def boot_directories(pkglibdir: str) -> list[str]:
    """Where an installed version's function bodies import from: the package, then its dependencies."""
    root = package_dir(pkglibdir)
    return [str(root), str(root / "deps")]


def runtime_requirements(requirements: Path, constraints: str) -> list[str]:
    """The pins of RUNTIME_PACKAGES from requirements.txt (the one place that pins them), then every
    package this venv has (``constraints``: pip freeze), so that their dependencies resolve to the
    versions the tests ran with."""
    pins = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            pins[line.split("==", 1)[0].strip().lower()] = line
    missing = [name for name in RUNTIME_PACKAGES if name not in pins]
    if missing:
        raise SystemExit(f"install: {requirements} pins no version of {', '.join(missing)}")
    frozen = [line for line in constraints.splitlines() if "==" in line and not line.startswith(("-e", "#"))
              and not line.lower().startswith(EXTENSION.replace("_", "-") + "==")]
    return [pins[name] for name in RUNTIME_PACKAGES] + sorted(frozen)


def install_package(pkglibdir: str, pip: list[str] | None = None) -> tuple[Path, list[str]]:
    """madlib_dl and its runtime dependencies into package_dir(pkglibdir); (the directory, what
    changed). The dependencies are installed again only when their pins changed; the package is
    copied when its files changed. Each is replaced whole (a new directory renamed into place)."""
    pip = pip or [sys.executable, "-m", "pip"]
    root = package_dir(pkglibdir)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    changed = []
    frozen = subprocess.run(pip + ["freeze", "--exclude-editable"], check=True, capture_output=True, text=True).stdout
    wanted = "\n".join(runtime_requirements(paths.REPO / "requirements.txt", frozen)) + "\n"
    deps = root / "deps"
    if not (deps / DEPS_STAMP).is_file() or (deps / DEPS_STAMP).read_text() != wanted:
        _replace_dir(deps, lambda new: _pip_install(pip, new, wanted))
        changed.append(str(deps))
    package = root / EXTENSION
    if _tree_digest(package) != _tree_digest(paths.REPO / EXTENSION):
        _replace_dir(package, lambda new: shutil.copytree(paths.REPO / EXTENSION, new, ignore=_not_source))
        changed.append(str(package))
    return root, changed


def _pip_install(pip: list[str], target: Path, requirements: str) -> None:
    pins = [line for line in requirements.splitlines() if line.split("==")[0].lower() in RUNTIME_PACKAGES]
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
        constraints.write(requirements)
        constraints.flush()
        result = subprocess.run(pip + ["install", "--quiet", "--no-warn-script-location", "--target", str(target),
                                       "--constraint", constraints.name, *pins], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"install: installing {', '.join(pins)} into {target} failed:\n{result.stderr.strip()}")
    (target / DEPS_STAMP).write_text(requirements)


def _not_source(directory: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))]


def _tree_digest(root: Path) -> str | None:
    """A digest of the source files under ``root`` (names and contents); None when it does not exist."""
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _replace_dir(target: Path, fill) -> None:
    """Fill a new directory beside ``target``, make it readable by the server, then swap it in."""
    new, old = target.with_name(f".{target.name}.new"), target.with_name(f".{target.name}.old")
    for leftover in (new, old):
        shutil.rmtree(leftover, ignore_errors=True)
    fill(new)
    _readable(new)
    if target.exists():
        os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _readable(root: Path) -> None:
    for directory, dirs, files in os.walk(root):
        os.chmod(directory, 0o755)
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode & 0o111 | READABLE)


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


def uninstall(sharedir: str, pkglibdir: str) -> list[Path]:
    """Remove what install wrote: every version's script, the control file, the library, the packages."""
    extension = Path(sharedir) / "extension"
    removed = [p for p in [extension / f"{EXTENSION}.control", *extension.glob(f"{EXTENSION}--*.sql"),
                           Path(pkglibdir) / LIBRARY, Path(pkglibdir) / EXTENSION] if p.exists()]
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return removed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sharedir", default=None, help="default: pg_config --sharedir")
    parser.add_argument("--schema", default=os.environ.get("MADLIB_DL_SCHEMA") or DEFAULT_SCHEMA,
                        help="schema the extension creates (default madlib_dl; 'madlib' for MADlib scripts)")
    parser.add_argument("--pkglibdir", default=None, help="where the C library and the packages go; default: "
                        "pg_config --pkglibdir")
    parser.add_argument("--dev", action="store_true", help="boot from this venv (madlib_dl editable) instead of a "
                        "copy in pkglibdir: the server runs the checkout's code as it is edited")
    parser.add_argument("--uninstall", action="store_true", help="remove what install wrote")
    args = parser.parse_args(argv)
    sharedir = args.sharedir or paths.pg_config("--sharedir")
    pkglibdir = args.pkglibdir or paths.pg_config("--pkglibdir")
    if args.uninstall:
        for path in uninstall(sharedir, pkglibdir):
            print(f"uninstall: removed {path}")
        return
    directories = None
    if not args.dev:
        root, changed = install_package(pkglibdir)
        print(f"install: {'wrote ' + ', '.join(changed) if changed else 'up to date: ' + str(root)}")
        directories = boot_directories(pkglibdir)
    for path in install(sharedir, args.schema, directories):
        print(f"install: wrote {path}")
    library, copied = install_library(pkglibdir, shutil.which("pg_config") or "pg_config")
    print(f"install: {'wrote' if copied else 'up to date:'} {library}")


if __name__ == "__main__":
    main()
