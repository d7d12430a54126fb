"""Versions as PostgreSQL extensions have them: a database created at the released 0.1.0 moves to this
version with ALTER EXTENSION madlib_dl UPDATE and then has exactly the catalog of a fresh install; until
then its functions say to run that update (0.1.0's files are no longer installed)."""

from __future__ import annotations

import psycopg2
import pytest

from madlib_dl import __version__
from madlib_dl.tools import install, paths

# Everything the extension owns, described so that two databases can be compared: its members, and
# for every routine its signature, result, body, language, volatility, strictness and comment.
MEMBERS = """
    SELECT pg_describe_object(d.classid, d.objid, d.objsubid)
    FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
    WHERE e.extname = 'madlib_dl' AND d.deptype = 'e' ORDER BY 1"""
ROUTINES = """
    SELECT p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid), p.prosrc, p.probin,
           l.lanname, p.prokind, p.provolatile, p.proisstrict, p.prosecdef, p.proacl::text,
           obj_description(p.oid, 'pg_proc'),
           a.aggtransfn::text, a.aggfinalfn::text, a.aggtranstype::regtype::text
    FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang LEFT JOIN pg_aggregate a ON a.aggfnoid = p.oid
    WHERE p.pronamespace = 'madlib_dl'::regnamespace ORDER BY 1, 2"""
TYPES = """
    SELECT t.typname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), obj_description(t.oid, 'pg_type')
    FROM pg_type t JOIN pg_class c ON c.oid = t.typrelid JOIN pg_attribute a ON a.attrelid = c.oid
    WHERE t.typnamespace = 'madlib_dl'::regnamespace AND a.attnum > 0 ORDER BY 1, 2"""
SCHEMA = "SELECT nspacl::text, obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = 'madlib_dl'"


def _catalog(cur) -> dict:
    out = {}
    for name, query in (("members", MEMBERS), ("routines", ROUTINES), ("types", TYPES), ("schema", SCHEMA)):
        cur.execute(query)
        out[name] = cur.fetchall()
    cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'madlib_dl'")
    out["version"] = cur.fetchone()[0]
    return out


pytestmark = pytest.mark.skipif(
    install.installed_boot(paths.pg_config("--sharedir")) != install.Boot(paths.pg_config("--pkglibdir")),
    reason="the extension was installed with make dev-install (every version boots from the venv)")


def test_a_database_at_0_1_0_updates_to_the_catalog_of_a_fresh_install(server):
    assert not install.package_dir(paths.pg_config("--pkglibdir"), "0.1.0").exists()  # one version installed
    with server.fresh_database("upgrade_fresh") as fresh, server.connect(fresh) as conn, conn.cursor() as cur:
        expected = _catalog(cur)
    assert expected["version"] == __version__ and len(expected["routines"]) > 40
    with server.fresh_database("upgrade_old", extension=False) as old:
        with server.connect(old) as conn, conn.cursor() as cur:
            cur.execute("CREATE EXTENSION madlib_dl VERSION '0.1.0'")
            at_010 = _catalog(cur)
            assert at_010["version"] == "0.1.0"
            assert set(at_010["members"]) < set(expected["members"])  # 0.2.0 adds settings()
            assert ("function madlib_dl.settings()",) in set(expected["members"]) - set(at_010["members"])
            with pytest.raises(psycopg2.Error, match=r"this database has madlib_dl 0\.1\.0, whose files are not "
                               r"on this server \(.*\)\nHINT:  Run ALTER EXTENSION madlib_dl UPDATE to move it") as raised:
                cur.execute("SELECT madlib_dl.version()")
            assert raised.value.diag.context is None, raised.value.diag.context  # no PL/Python traceback
            cur.execute("ALTER EXTENSION madlib_dl UPDATE")
            assert _catalog(cur) == expected
        with server.connect(old) as conn, conn.cursor() as cur:
            cur.execute("SELECT madlib_dl.version()")
            assert cur.fetchone()[0].startswith(f"madlib_dl {__version__}")


def test_a_session_that_ran_the_old_code_is_told_to_reconnect_after_the_update(server):
    """The files of the old version are gone here, so the old code can only be in a session that was
    running it before the update: simulate that with a session that imported this version's code
    and a database whose functions then move to another version."""
    with server.fresh_database("upgrade_session") as name, server.connect(name) as conn, conn.cursor() as cur:
        cur.execute("SELECT madlib_dl.version()")  # this backend now has madlib_dl imported
        cur.execute("SELECT prosrc FROM pg_proc WHERE oid = 'madlib_dl.version()'::regprocedure")
        body = cur.fetchone()[0].replace(f"require_version({__version__!r})", "require_version('9.9.9')")
        assert "require_version('9.9.9')" in body
        cur.execute("CREATE OR REPLACE FUNCTION madlib_dl.version() RETURNS TEXT LANGUAGE plpython3u AS %s", [body])
        with pytest.raises(psycopg2.Error, match=r"extension is version 9\.9\.9 but this session runs madlib_dl "
                           rf"{__version__}\nHINT:  Run ALTER EXTENSION madlib_dl UPDATE, then reconnect\.") as raised:
            cur.execute("SELECT madlib_dl.version()")
        assert raised.value.diag.context is None, raised.value.diag.context


def test_there_is_no_update_path_downwards(server):
    with server.fresh_database("upgrade_down") as name, server.connect(name) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.Error, match=f'no update path from version "{__version__}" to version "0.1.0"'):
            cur.execute("ALTER EXTENSION madlib_dl UPDATE TO '0.1.0'")
        cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'madlib_dl'")
        assert cur.fetchone()[0] == __version__
