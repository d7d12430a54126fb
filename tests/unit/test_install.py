"""The extension files `make install` writes: every placeholder filled, bodies valid Python."""

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from madlib_dl import __version__
from madlib_dl.tools import install

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
SITE = ["/usr/lib/postgresql/15/lib/madlib_dl/0.1.0", "/usr/lib/postgresql/15/lib/madlib_dl/0.1.0/deps"]


def _script(schema="madlib_dl"):
    return install.render(install.script_template(SQL_DIR), schema, SITE)


def test_every_placeholder_is_filled():
    assert not re.search(r"@[A-Z_]+@", _script())
    assert not re.search(r"@[A-Z_]+@", install.render((SQL_DIR / "madlib_dl.control.in").read_text(), "madlib_dl", SITE))
    control = install.render((SQL_DIR / "madlib_dl.control.in").read_text(), "madlib_dl", SITE)
    assert f"default_version = '{__version__}'" in control


def test_function_bodies_are_valid_python_that_boots_the_venv():
    script = _script()
    bodies = re.findall(r"AS \$\$\n(.*?)\n\$\$;", script, re.S)
    assert len(bodies) == script.count("LANGUAGE plpython3u") >= 4
    for body in bodies:
        code = compile(f"def f():\n" + "\n".join("    " + line for line in body.splitlines()), "body", "exec")
        assert code is not None
        assert body.startswith(install.boot_lines(SITE))
        # user-facing functions call an API module; the internal aggregates call the segment runtime;
        # internal_take_value hands a writing statement its value
        assert body.splitlines()[-1].startswith(("from madlib_dl.api import", "from madlib_dl.segment import",
                                                 "from madlib_dl import handoff;"))


def test_c_functions_name_symbols_of_the_library():
    script = _script()
    declared = re.findall(r"LANGUAGE C \w+(?: STRICT)? AS '\$libdir/madlib_dl', '(\w+)';", script)
    assert sorted(declared) == ["madlib_dl_client_connected", "madlib_dl_launch_worker"]
    assert script.count("LANGUAGE C ") == len(declared)
    source = (SQL_DIR.parent / "src" / "madlib_dl.c").read_text()
    for symbol in declared:
        assert f"PG_FUNCTION_INFO_V1({symbol});" in source
    # the worker calls the function the install script declares, in the extension's schema
    assert "CREATE FUNCTION madlib_dl.internal_worker_serve(token TEXT) RETURNS BOOLEAN" in script
    assert "internal_worker_serve($1)" in source


def test_plain_roles_may_use_the_schema():
    assert "CREATE SCHEMA madlib;\nGRANT USAGE ON SCHEMA madlib TO PUBLIC;" in _script("madlib")


def _server_headers() -> bool:
    if shutil.which("pg_config") is None:
        return False
    return (Path(install.paths.pg_config("--includedir-server")) / "postgres.h").exists()


@pytest.mark.skipif(not _server_headers(), reason="needs the server headers (postgresql-server-dev-15, `make setup`)")
def test_library_is_built_and_copied_readable_and_only_when_changed(tmp_path):
    target, copied = install.install_library(str(tmp_path))
    assert (target, copied) == (tmp_path / "madlib_dl.so", True)
    assert target.read_bytes() == (SQL_DIR.parent / "src" / "madlib_dl.so").read_bytes()
    assert target.stat().st_mode & 0o777 == 0o644  # the postgres OS user reads what root installs
    inode = target.stat().st_ino
    assert install.install_library(str(tmp_path)) == (target, False)  # nothing changed: nothing written
    assert target.stat().st_ino == inode
    target.write_bytes(b"old library")
    assert install.install_library(str(tmp_path)) == (target, True)
    assert target.read_bytes() == (SQL_DIR.parent / "src" / "madlib_dl.so").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["madlib_dl.so"]  # no temporary file left


def test_schema_is_chosen_at_install():
    script = _script("madlib")
    assert "CREATE SCHEMA madlib;" in script
    assert "CREATE FUNCTION madlib.version()" in script
    assert "madlib_dl.version()" not in script


@pytest.mark.parametrize("schema", ["Madlib", "madlib; drop table x", "1abc", "", "a" * 64])
def test_schema_must_be_a_plain_identifier(schema):
    with pytest.raises(SystemExit, match="must be a lower-case SQL identifier"):
        _script(schema)


@pytest.mark.skipif(os.geteuid() != 0, reason="the check runs only for root, who installs for the postgres user")
def test_a_venv_the_server_cannot_read_is_refused():
    top = Path(tempfile.mkdtemp(prefix="madlib_dl-install-"))  # not pytest's tmp_path: that is mode 700
    try:
        site = top / "site-packages"
        (site / "keras").mkdir(parents=True)
        (site / "keras" / "__init__.py").write_text("")
        top.chmod(0o700)  # like a checkout under /root
        with pytest.raises(SystemExit, match="the postgres OS user cannot read .*keras/__init__.py"):
            install.check_readable_by_server(str(site))
        top.chmod(0o755)
        install.check_readable_by_server(str(site))
    finally:
        shutil.rmtree(top)


def test_the_boot_code_refuses_another_versions_code():
    boot = install.boot_lines(SITE, "9.9.9")
    assert boot.startswith("import sys\n") and boot.endswith("require_version('9.9.9')")
    exec(compile(install.boot_lines(SITE), "boot", "exec"), {})  # this version: runs
    with pytest.raises(RuntimeError, match="extension is version 9.9.9 but this session runs madlib_dl "
                       f"{__version__}; run ALTER EXTENSION madlib_dl UPDATE"):
        exec(compile(boot, "boot", "exec"), {})


def test_the_boot_code_names_a_version_whose_files_are_gone(tmp_path):
    """A database at a version whose directory was removed gets an error saying what to do, not
    "No module named madlib_dl" (a fresh process: madlib_dl not yet imported, as in a new backend)."""
    import subprocess
    import sys

    boot = install.boot_lines([str(tmp_path / "gone"), str(tmp_path / "gone" / "deps")], "0.0.9")
    done = subprocess.run([sys.executable, "-c", boot], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode != 0
    assert (f"the files of madlib_dl 0.0.9, which this database's extension runs, are not on this server "
            f"({tmp_path / 'gone'}); install that version (make install) or run ALTER EXTENSION madlib_dl UPDATE"
            in done.stderr), done.stderr


def test_runtime_requirements_come_from_the_pins_and_the_venv():
    requirements = SQL_DIR.parent / "requirements.txt"
    frozen = "absl-py==2.5.1\nmadlib-dl==0.1.0\n-e git+x#egg=y\npytest==9.2.0\n"
    wanted = install.runtime_requirements(requirements, frozen)
    assert [w.split("==")[0] for w in wanted[:3]] == list(install.RUNTIME_PACKAGES)
    assert wanted[3:] == ["absl-py==2.5.1", "pytest==9.2.0"]  # constraints only; madlib_dl itself is copied


def test_the_package_is_copied_whole_and_only_when_it_changed(tmp_path, monkeypatch):
    """install_package with the dependencies already in place (their stamp matches): the package is
    copied readable, then left alone, then replaced when a file changes; uninstall removes it all."""
    monkeypatch.setattr(install, "_pip_install", lambda *a: pytest.fail("the dependencies were reinstalled"))
    root = install.package_dir(str(tmp_path))
    frozen = install.subprocess.run([install.sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                                    check=True, capture_output=True, text=True).stdout
    (root / "deps").mkdir(parents=True)
    (root / "deps" / install.DEPS_STAMP).write_text(
        "\n".join(install.runtime_requirements(SQL_DIR.parent / "requirements.txt", frozen)) + "\n")
    assert install.install_package(str(tmp_path)) == (root, [str(root / "madlib_dl")])
    copied = root / "madlib_dl" / "__init__.py"
    assert copied.read_text() == (SQL_DIR.parent / "madlib_dl" / "__init__.py").read_text()
    assert copied.stat().st_mode & 0o777 == 0o644 and not list(root.rglob("__pycache__"))
    assert install.install_package(str(tmp_path)) == (root, [])
    (root / "madlib_dl" / "stale.py").write_text("")
    assert install.install_package(str(tmp_path)) == (root, [str(root / "madlib_dl")])
    assert not (root / "madlib_dl" / "stale.py").exists() and sorted(p.name for p in root.iterdir()) == ["deps", "madlib_dl"]
    share = tmp_path / "share"
    (share / "extension").mkdir(parents=True)
    install.install(str(share), directories=install.boot_directories(str(tmp_path)))
    assert install.installed_directories(str(share)) == install.boot_directories(str(tmp_path))
    (tmp_path / "madlib_dl.so").write_bytes(b"")
    removed = install.uninstall(str(share), str(tmp_path))
    assert len(removed) == 4 and sorted(p.name for p in tmp_path.iterdir()) == ["share"]
    assert not list((share / "extension").iterdir())

