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
SITE = "/opt/madlib_dl/.venv/lib/python3.11/site-packages"


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
