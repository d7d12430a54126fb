"""The extension files `make install` writes: every placeholder filled, bodies valid Python."""

import os
import re
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest

from madlib_dl import __version__, db
from madlib_dl.errors import WrongVersion
from madlib_dl.tools import install

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
SITE = install.boot_directories("/usr/lib/postgresql/15/lib")


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
        assert body.startswith(install.boot_lines(SITE, __version__, "madlib_dl"))
        # user-facing functions call an API module; the internal aggregates call the segment runtime;
        # internal_take_value hands a writing statement its value
        assert body.splitlines()[-1].startswith(("from madlib_dl.api import", "from madlib_dl.segment import",
                                                 "from madlib_dl import handoff;"))


def test_c_functions_name_symbols_of_the_library():
    script = _script()
    declared = re.findall(r"LANGUAGE C \w+(?: STRICT)? AS '\$libdir/madlib_dl', '(\w+)';", script)
    assert {"madlib_dl_caller_search_path", "madlib_dl_client_connected", "madlib_dl_define_setting",
            "madlib_dl_launch_worker", "madlib_dl_reserve_settings"} <= set(declared)
    assert script.count("LANGUAGE C ") == len(declared)
    source = (SQL_DIR.parent / "src" / "madlib_dl.c").read_text()
    for symbol in declared:
        assert f"PG_FUNCTION_INFO_V1({symbol});" in source
    # the worker calls the function the install script declares, in the extension's schema
    assert "CREATE OR REPLACE FUNCTION madlib_dl.internal_worker_serve(token TEXT) RETURNS BOOLEAN" in script
    assert "internal_worker_serve($1)" in source


def test_every_python_function_pins_its_search_path():
    """No object a role creates in a schema of a caller's search_path may stand in for a built-in in
    madlib_dl's own statements: every PL/Python function runs with pg_catalog, pg_temp only."""
    headers = [h for h in re.findall(r"CREATE OR REPLACE FUNCTION .*?AS \$\$", _script(), re.S) if "plpython3u" in h]
    assert len(headers) > 50
    for header in headers:
        assert "SET search_path = pg_catalog, pg_temp AS $$" in header, header


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
    assert "CREATE OR REPLACE FUNCTION madlib.version()" in script
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
        for package in ("keras", "madlib_dl"):
            (site / package).mkdir(parents=True)
            (site / package / "__init__.py").write_text("")
        top.chmod(0o700)  # like a checkout under /root
        with pytest.raises(SystemExit, match="the postgres OS user cannot read .*keras/__init__.py"):
            install.check_readable_by_server(str(site), site / "madlib_dl")
        top.chmod(0o755)
        install.check_readable_by_server(str(site), site / "madlib_dl")
    finally:
        shutil.rmtree(top)


def test_the_boot_code_refuses_another_versions_code(monkeypatch):
    from madlib_dl import session

    monkeypatch.setattr(session, "_registered", True)  # no server here to register settings in
    boot = install.boot_lines(SITE, "9.9.9", "madlib")
    assert boot.startswith("import sys\n") and boot.endswith(
        "__import__('madlib_dl').require_version('9.9.9'); __import__('madlib_dl.session').session.begin('madlib')")
    exec(compile(install.boot_lines(SITE), "boot", "exec"), {})  # this version: runs
    with db.using(db.PsycopgDatabase(None)), pytest.raises(WrongVersion, match="^this database.s extension is version 9.9.9 but "
                                                           f"this session runs madlib_dl {__version__}$") as raised:
        exec(compile(boot, "boot", "exec"), {})
    assert raised.value.hint == "Run ALTER EXTENSION madlib_dl UPDATE, then reconnect."


def test_the_boot_code_names_a_version_whose_files_are_gone(tmp_path):
    """A database at a version whose directory was removed gets an error saying what to do, not
    "No module named madlib_dl" (a fresh process: madlib_dl not yet imported, as in a new backend)."""
    import subprocess
    import sys

    boot = install.boot_lines([str(tmp_path / "gone"), str(tmp_path / "gone" / "deps")], "0.0.9", "madlib")
    plpy = ("class plpy:\n    Error = type('Error', (Exception,), {})\n"
            "    execute = staticmethod(lambda query: print('executed', query))\n")
    caught = "\nexcept plpy.Error as e:\n    print(type(e).__module__, type(e).__name__, e.sqlstate, e, e.hint, sep='|')"
    code = plpy + "try:\n" + textwrap.indent(boot, "    ") + caught
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # the C library is loaded first, so that its error hook drops PL/Python's traceback from this error
    loaded, error = done.stdout.splitlines()
    assert loaded == "executed SELECT madlib.internal_client_connected()"
    assert error.split("|") == [  # PL/Python reports "madlib_dl: <message>" for a type named so in builtins
        "builtins", "madlib_dl", "55000", f"this database has madlib_dl 0.0.9, whose files are not on this server "
        f"({tmp_path / 'gone'})", "Run ALTER EXTENSION madlib_dl UPDATE to move it to the version installed "
        "(docs/upgrading.md)."]


def test_runtime_requirements_come_from_the_pins_and_the_venv():
    requirements = SQL_DIR.parent / "requirements.txt"
    frozen = "absl-py==2.5.1\nmadlib-dl==0.1.0\n-e git+x#egg=y\npytest==9.2.0\n"
    wanted = install.runtime_requirements(requirements, frozen)
    runtime = len(install.RUNTIME_PACKAGES)
    assert [w.split("==")[0] for w in wanted[:runtime]] == list(install.RUNTIME_PACKAGES)
    assert wanted[runtime:] == ["absl-py==2.5.1", "pytest==9.2.0"]  # constraints only; madlib_dl itself is copied


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
    install.install(str(share), boot=install.Boot(str(tmp_path)))
    assert install.installed_directories(str(share)) == install.boot_directories(str(tmp_path))
    (tmp_path / "madlib_dl.so").write_bytes(b"")
    removed = install.uninstall(str(share), str(tmp_path))
    assert sorted(p.name for p in removed) == sorted(["madlib_dl.control", *install.scripts(SQL_DIR), "madlib_dl.so",
                                                      "madlib_dl"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["share"]
    assert not list((share / "extension").iterdir())


# -- versions: released scripts, update scripts, freezing a release ----------------------------------

def _statements(script: str) -> list[str]:
    """The script's statements that create something (one line each: the statement's first line)."""
    return re.findall(r"^(?:CREATE|ALTER|DROP|GRANT|COMMENT) .*$", script, re.M)


def test_every_version_has_an_install_script_and_an_update_path_to_this_one():
    scripts = install.scripts(SQL_DIR)
    assert scripts[f"madlib_dl--{__version__}.sql"][1] == __version__
    assert scripts["madlib_dl--0.1.0.sql"][1] == "0.1.0"  # released: CREATE EXTENSION ... VERSION '0.1.0'
    assert scripts[f"madlib_dl--0.1.0--{__version__}.sql"][1] == __version__
    # every released version can reach this one through update scripts (PostgreSQL chains them)
    edges = {tuple(install._versions(name)) for name in scripts if name.count("--") == 2}
    for name in scripts:
        if name.count("--") == 1 and name != f"madlib_dl--{__version__}.sql":
            reached, frontier = set(), {install._versions(name)[0]}
            while frontier:
                reached |= frontier
                frontier = {to for frm, to in edges if frm in frontier} - reached
            assert __version__ in reached, name


def test_the_released_script_of_0_1_0_is_the_one_that_was_released():
    """Frozen: 0.1.0's template is the install script template of commit 10e1000, byte for byte."""
    import hashlib

    template, _ = install.scripts(SQL_DIR)["madlib_dl--0.1.0.sql"]
    body = template.split("\n", 3)[3]  # after the three lines of the frozen file's header
    assert hashlib.sha256(body.encode()).hexdigest() == (
        "5e74b51cabe280478b4ce8d5fdaeeb625c4b236e44f5ed342cb07125df46fe21")


def test_the_update_script_replaces_every_function_and_creates_nothing_once_only():
    """An update script runs over the old version's objects: its functions are all CREATE OR REPLACE
    (a plain CREATE would fail on a function the old version has), and it does not create the schema
    or types again; the install script has the same functions."""
    update = install.render(install.scripts(SQL_DIR)[f"madlib_dl--0.1.0--{__version__}.sql"][0], "madlib_dl", SITE)
    fresh = _script()
    # what the version adds once (its upgrade head: new tables) is the head's own; the rest is re-runnable
    head = set(_statements(install.render((SQL_DIR / "upgrades" / f"0.1.0--{__version__}.sql.in").read_text(),
                                          "madlib_dl", SITE)))
    assert not any(s.startswith(("CREATE SCHEMA", "CREATE TYPE")) for s in head)
    creating = [s for s in _statements(update) if s.startswith("CREATE") and s not in head]
    assert creating and all(s.startswith(("CREATE OR REPLACE FUNCTION", "CREATE OR REPLACE AGGREGATE",
                                          "CREATE OR REPLACE VIEW")) for s in creating)
    assert set(creating) == {s for s in _statements(fresh) if s.startswith("CREATE OR REPLACE")}
    assert 'ALTER EXTENSION madlib_dl UPDATE' in update.split("\n\n")[1]  # psql refuses to run it by hand
    assert "require_version('0.1.0')" not in update and f"require_version('{__version__}')" in update


def test_old_versions_boot_from_their_own_directory():
    boot = install.Boot("/usr/lib/postgresql/15/lib")
    assert boot.directories("0.1.0") == ["/usr/lib/postgresql/15/lib/madlib_dl/0.1.0",
                                         "/usr/lib/postgresql/15/lib/madlib_dl/0.1.0/deps"]
    template, version = install.scripts(SQL_DIR)["madlib_dl--0.1.0.sql"]
    script = install.render(template, "madlib_dl", boot.directories(version), version)
    assert "require_version('0.1.0')" in script and "/madlib_dl/0.1.0/deps" in script
    assert f"/madlib_dl/{__version__}" not in script


def test_freezing_a_release_keeps_its_scripts_as_they_were(tmp_path, monkeypatch):
    sql = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql)
    before = install.scripts(sql)
    written = install.freeze(sql)
    assert sorted(p.name for p in written) == sorted(f"{name}.in" for name in before if name.endswith(
        f"{__version__}.sql"))
    assert not list((sql / "upgrades").glob(f"*--{__version__}.sql.in"))
    # the next version: its own scripts are new, the frozen ones render as they did
    monkeypatch.setattr(install, "__version__", "9.0.0")
    (sql / "upgrades" / f"{__version__}--9.0.0.sql.in").write_text("-- nothing\n")
    after = install.scripts(sql)
    newly_frozen = {p.name.removesuffix(".in") for p in written}
    for name, (template, version) in before.items():
        frozen, frozen_version = after[name]
        if name in newly_frozen:
            frozen = frozen.split("\n", 1)[1]  # the line saying it is frozen
        assert frozen_version == version
        assert install.render(frozen, "madlib_dl", SITE, version) == install.render(template, "madlib_dl", SITE, version)
    assert {"madlib_dl--9.0.0.sql", f"madlib_dl--{__version__}--9.0.0.sql"} <= set(after)


def test_an_update_template_to_another_version_is_refused(tmp_path):
    sql = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql)
    (sql / "upgrades" / "0.0.1--0.0.2.sql.in").write_text("-- wrong place\n")
    with pytest.raises(SystemExit, match="updates to 0.0.2, but this is madlib_dl .*belongs in .*released"):
        install.scripts(sql)


def test_install_writes_every_script_removes_stale_ones_and_rewrites_only_changes(tmp_path):
    (tmp_path / "extension").mkdir()
    stale = tmp_path / "extension" / "madlib_dl--0.0.5.sql"
    stale.write_text("-- a development version no longer in the checkout")
    other = tmp_path / "extension" / "vector--0.8.0.sql"
    other.write_text("-- another extension's")
    boot = install.Boot("/usr/lib/postgresql/15/lib")
    written = install.install(str(tmp_path), boot=boot)
    assert sorted(p.name for p in written) == sorted(["madlib_dl.control", *install.scripts(SQL_DIR)])
    assert not stale.exists() and other.exists()
    assert install.install(str(tmp_path), boot=boot) == []
    assert install.installed_boot(str(tmp_path)) == boot
    assert install.installed_boot(str(tmp_path / "nowhere")) is None


def test_the_pg_config_is_chosen_by_PG_CONFIG(tmp_path, monkeypatch):
    fake = tmp_path / "pg_config"
    fake.write_text("#!/bin/sh\necho \"/opt/pg/$1\"\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PG_CONFIG", str(fake))
    assert install.paths.pg_config("--sharedir") == "/opt/pg/--sharedir"
    monkeypatch.setenv("PG_CONFIG", str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="missing not found; .*set PG_CONFIG"):
        install.paths.pg_config("--sharedir")
