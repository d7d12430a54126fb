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
from dataclasses import dataclass
from pathlib import Path

from madlib_dl import __version__
from madlib_dl.tools import constraints as constraint_pins
from madlib_dl.tools import paths

EXTENSION = "madlib_dl"
DEFAULT_SCHEMA = "madlib_dl"
LIBRARY = f"{EXTENSION}.so"
# What the server reads runs as the postgres OS user: readable by all whatever root's umask is.
READABLE = 0o644
# What the server imports (the client tools need psycopg2 too; requirements.txt pins them all).
RUNTIME_PACKAGES = ("tensorflow-cpu", "keras", "numpy", "optuna", "psycopg", "dill")
DEPS_STAMP = ".madlib_dl-requirements"


def boot_lines(directories: list[str], version: str = __version__, schema: str = DEFAULT_SCHEMA) -> str:
    """Python run at the top of every function body: once per backend, check that ``directories`` are
    there (a version's files removed from the server), put them first on sys.path and read their .pth
    files; on every call, refuse another version's code (require_version, which every version has: a
    session still running an older version's code must get that message, not an ImportError), then
    register the settings at the first call (madlib_dl.session.begin). The once-per-backend part first
    calls one of the C library's functions, which loads it: its error hook then keeps these errors,
    raised before madlib_dl is imported, as free of PL/Python's traceback as madlib_dl's own."""
    load = f"SELECT {schema}.internal_client_connected()"  # render() allows lower-case identifiers only
    # PL/Python names an exception by its type, so a plpy.Error type called madlib_dl in builtins reads
    # "madlib_dl: ..." (as madlib_dl.db reports errors; madlib_dl cannot be imported here)
    missing = (f"e = type('madlib_dl', (plpy.Error,), {{'__module__': 'builtins'}})('this database has madlib_dl "
               f"{version}, whose files are not on this server (' + d + ')'); e.sqlstate = '55000'; "
               "e.hint = 'Run ALTER EXTENSION madlib_dl UPDATE to move it to the version installed "
               "(docs/upgrading.md).'; raise e")
    return ("import sys\n"
            "if 'madlib_dl' not in sys.modules:\n"
            f"    plpy.execute({load!r})\n"
            f"    for d in {directories!r}:\n"
            f"        if not __import__('os').path.isdir(d): {missing}\n"
            f"    sys.path[0:0] = {directories!r}; [__import__('site').addsitedir(d) for d in {directories!r}]\n"
            f"__import__('madlib_dl').require_version({version!r}); __import__('madlib_dl.session').session.begin({schema!r})")


@dataclass(frozen=True)
class Boot:
    """Where function bodies import madlib_dl from: a version's directory under ``pkglibdir`` (make
    install), or this venv, where madlib_dl is editable (make dev-install: ``pkglibdir`` None)."""
    pkglibdir: str | None

    def directories(self, version: str = __version__) -> list[str]:
        if self.pkglibdir is None:
            return [paths.site_packages()]
        return boot_directories(self.pkglibdir, version)


def render(template: str, schema: str, directories: list[str], version: str = __version__) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise SystemExit(f"install: schema {schema!r} must be a lower-case SQL identifier such as madlib or madlib_dl")
    text = template.replace("@SCHEMA@", schema).replace("@VERSION@", version)
    return text.replace("@MADLIB_DL_BOOT@", boot_lines(directories, version, schema))


def _function_files(sql_dir: Path) -> list[str]:
    return [p.read_text() for p in sorted((sql_dir / "functions").glob("*.sql.in"))]


def script_template(sql_dir: Path) -> str:
    """This version's install script: the head (schema, types), then one file per function family from
    sql/functions/, in name order."""
    return "\n".join([(sql_dir / f"{EXTENSION}.sql.in").read_text(), *_function_files(sql_dir)])


def update_template(upgrade: Path, sql_dir: Path) -> str:
    """An update script to this version: what CREATE OR REPLACE cannot do (sql/upgrades/FROM--TO.sql.in),
    then every function file, replacing the old version's functions and adding the new ones."""
    return "\n".join([upgrade.read_text(), *_function_files(sql_dir)])


def _versions(name: str) -> list[str]:
    """The versions in a script's name: madlib_dl--0.1.0.sql, madlib_dl--0.1.0--0.2.0.sql, 0.1.0--0.2.0.sql.in."""
    stem = name.removesuffix(".in").removesuffix(".sql").removeprefix(f"{EXTENSION}--")
    return stem.split("--")


def scripts(sql_dir: Path) -> dict[str, tuple[str, str]]:
    """Every script PostgreSQL may need, by file name: (template, the version its functions belong to).
    Released versions' install and update scripts are frozen in sql/released/; this version's install
    script and its update scripts (sql/upgrades/) are assembled from the current files."""
    out = {}
    for path in sorted((sql_dir / "released").glob(f"{EXTENSION}--*.sql.in")):
        out[path.name.removesuffix(".in")] = (path.read_text(), _versions(path.name)[-1])
    out[f"{EXTENSION}--{__version__}.sql"] = (script_template(sql_dir), __version__)
    for path in sorted((sql_dir / "upgrades").glob("*--*.sql.in")):
        source, target = _versions(path.name)
        if target != __version__:
            raise SystemExit(f"install: {path} updates to {target}, but this is madlib_dl {__version__}; an update "
                             f"script of a released version belongs in {sql_dir / 'released'} (install.py --freeze)")
        out[f"{EXTENSION}--{source}--{target}.sql"] = (update_template(path, sql_dir), __version__)
    return out


def freeze(sql_dir: Path, version: str = __version__) -> list[Path]:
    """Releasing ``version``: write its install script and its update scripts, as they are now, into
    sql/released/ (never edited again), and remove the update templates they came from. Then bump
    __version__ and add sql/upgrades/VERSION--NEXT.sql.in (docs/upgrading.md)."""
    if version != __version__:
        raise SystemExit(f"install: --freeze releases this version ({__version__}), not {version}")
    written = []
    for name, (template, _) in scripts(sql_dir).items():
        if _versions(name)[-1] != version:
            continue
        target = sql_dir / "released" / f"{name}.in"
        if target.exists():  # frozen already (a second --freeze): released files are never rewritten
            continue
        head = f"-- madlib_dl {version}'s script template {name}, as released. Frozen: never edit.\n"
        target.write_text(head + template.replace("@VERSION@", version))
        written.append(target)
    for path in (sql_dir / "upgrades").glob(f"*--{version}.sql.in"):
        path.unlink()
    return written


def check_readable_by_server(site: str, package: Path = paths.REPO / EXTENSION) -> None:
    """make dev-install: the server runs as the postgres OS user, so a venv or checkout under /root
    (mode 700) would fail at call time."""
    for path in (os.path.join(site, "keras", "__init__.py"), str(package / "__init__.py")):
        if not paths.server_user_can("r", path):
            raise SystemExit(f"install: the postgres OS user cannot read {path}; make dev-install needs a checkout "
                             "(and .venv) other users can read, e.g. under /opt or /srv (make install does not)")


def install(sharedir: str, schema: str = DEFAULT_SCHEMA, boot: Boot | None = None) -> list[Path]:
    """The control file and every version's scripts (``scripts``), their functions booting as ``boot``
    says (default: the venv's); scripts of versions no longer in the checkout are removed. Returns the
    files written (those whose contents changed)."""
    boot = boot or Boot(None)
    if boot.pkglibdir is None:
        check_readable_by_server(paths.site_packages())
    target = Path(sharedir) / "extension"
    sql_dir = paths.REPO / "sql"
    control = sql_dir / f"{EXTENSION}.control.in"
    outputs = {target / f"{EXTENSION}.control": render(control.read_text(), schema, [])}
    for name, (template, version) in scripts(sql_dir).items():
        outputs[target / name] = render(template, schema, boot.directories(version), version)
    written = [path for path, text in outputs.items() if _write_if_changed(path, text.encode())]
    for stale in sorted(set(target.glob(f"{EXTENSION}--*.sql")) - set(outputs)):
        stale.unlink()
    return written


def installed_directories(sharedir: str) -> list[str] | None:
    """The directories the installed script of this version boots from (None: not installed)."""
    script = Path(sharedir) / "extension" / f"{EXTENSION}--{__version__}.sql"
    if not script.exists():
        return None
    found = re.search(r"sys\.path\[0:0\] = (\[[^\]]*\])", script.read_text())
    return ast.literal_eval(found.group(1)) if found else None


def installed_boot(sharedir: str) -> Boot | None:
    """How the installed extension boots (None: not installed), to install it again the same way."""
    directories = installed_directories(sharedir)
    if not directories:
        return None
    root = Path(directories[0])
    if root.name == __version__ and root.parent.name == EXTENSION:
        return Boot(str(root.parent.parent))
    return Boot(None)


# ---------------------------------------------------------------------------------------------------
# The package and what it imports, in a server-owned directory per version

def package_dir(pkglibdir: str, version: str = __version__) -> Path:
    return Path(pkglibdir) / EXTENSION / version


def boot_directories(pkglibdir: str, version: str = __version__) -> list[str]:
    """Where an installed version's function bodies import from: the package, then its dependencies."""
    root = package_dir(pkglibdir, version)
    return [str(root), str(root / "deps")]


def remove_other_versions(pkglibdir: str) -> list[Path]:
    """One version's files are installed at a time: a database still at an older version is told to
    ALTER EXTENSION madlib_dl UPDATE (its scripts stay: PostgreSQL needs them for the update path)."""
    others = [p for p in (Path(pkglibdir) / EXTENSION).glob("*") if p.is_dir() and p.name != __version__]
    for path in others:
        shutil.rmtree(path)
    return others


def runtime_requirements(requirements: Path, constraints: str) -> list[str]:
    """The pins of RUNTIME_PACKAGES from requirements.txt (the one place that pins them), then every
    package this venv has (``constraints``: pip freeze), so that their dependencies resolve to the
    versions the tests ran with."""
    pins = constraint_pins.pins(requirements.read_text())
    missing = [name for name in RUNTIME_PACKAGES if name not in pins]
    if missing:
        raise SystemExit(f"install: {requirements} pins no version of {', '.join(missing)}")
    frozen = [line for name, line in constraint_pins.pins(constraints).items()
              if name != constraint_pins.canonical(EXTENSION)]
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
    if not _same_requirements(deps, wanted):
        previous = [d for d in root.parent.glob(f"*/deps") if d != deps and _same_requirements(d, wanted)]
        if previous:  # another version's, about to be removed: the same packages, moved instead of installed
            _replace_dir(deps, lambda new: os.rename(previous[0], new))
        else:
            _replace_dir(deps, lambda new: _pip_install(pip, new, wanted))
        changed.append(str(deps))
    package = root / EXTENSION
    if _tree_digest(package) != _tree_digest(paths.REPO / EXTENSION):
        _replace_dir(package, lambda new: shutil.copytree(paths.REPO / EXTENSION, new, ignore=_not_source))
        changed.append(str(package))
    return root, changed


def _same_requirements(deps: Path, wanted: str) -> bool:
    return (deps / DEPS_STAMP).is_file() and (deps / DEPS_STAMP).read_text() == wanted


def _pip_install(pip: list[str], target: Path, requirements: str) -> None:
    pins = [line for name, line in constraint_pins.pins(requirements).items() if name in RUNTIME_PACKAGES]
    print(f"install: installing {', '.join(pins)} for the server into {target.parent / 'deps'} "
          "(about 1.5 GB; a minute or so)", flush=True)
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


def build_library(pg_config: str | None = None) -> Path:
    """Build src/madlib_dl.so with PGXS (make skips it when nothing changed). with_llvm=no: no JIT
    bitcode, so clang is not needed; the library only starts workers and is never worth inlining."""
    src = paths.REPO / "src"
    make = shutil.which("make")
    if make is None:
        raise SystemExit("install: `make` is missing; run `make setup` (as root) to install the build tools")
    result = subprocess.run([make, "-C", str(src), f"PG_CONFIG={pg_config or paths.pg_config_program()}", "with_llvm=no"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"install: building {src / LIBRARY} failed (the server headers come with "
                         f"`make setup`: postgresql-server-dev-15):\n{(result.stdout + result.stderr).strip()}")
    return src / LIBRARY


def install_library(pkglibdir: str, built: Path | None = None) -> tuple[Path, bool]:
    """Copy the C library (``built``, else built now) into the server's pkglibdir ($libdir); (path,
    whether copied)."""
    built = built or build_library()
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
    parser.add_argument("--freeze", action="store_true", help="maintainers, releasing this version: freeze its "
                        "scripts into sql/released/ (docs/upgrading.md)")
    args = parser.parse_args(argv)
    sharedir = args.sharedir or paths.pg_config("--sharedir")
    pkglibdir = args.pkglibdir or paths.pg_config("--pkglibdir")
    if args.uninstall:
        for path in uninstall(sharedir, pkglibdir):
            print(f"uninstall: removed {path}")
        return
    if args.freeze:
        for path in freeze(paths.REPO / "sql"):
            print(f"install: froze {path}")
        return
    # What can fail comes first (the build, pip), so a failure leaves the installed version working;
    # other versions' files go last.
    built = build_library()
    boot = Boot(None)
    if not args.dev:
        root, changed = install_package(pkglibdir)
        print(f"install: {'wrote ' + ', '.join(changed) if changed else 'up to date: ' + str(root)}")
        boot = Boot(pkglibdir)
    written = install(sharedir, args.schema, boot)
    for path in written:
        print(f"install: wrote {path}")
    if not written:
        print(f"install: up to date: {Path(sharedir) / 'extension'}/{EXTENSION}*")
    library, copied = install_library(pkglibdir, built)
    print(f"install: {'wrote' if copied else 'up to date:'} {library}")
    if not args.dev:
        for path in remove_other_versions(pkglibdir):
            print(f"install: removed {path} (databases at that version: ALTER EXTENSION madlib_dl UPDATE)")

if __name__ == "__main__":
    main()
