"""Every help text's calls can be pasted into psql: each names the schema and a function that exists
there (MADlib's help overloads: f() for a summary, f('usage') for the arguments and examples)."""

from __future__ import annotations

import re

from madlib_dl.tools import install, paths

HELP_FUNCTIONS = """
    SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args FROM pg_proc p
    WHERE p.pronamespace = %s::regnamespace AND p.prorettype = 'varchar'::regtype
      AND (p.pronargs = 0 OR pg_get_function_identity_arguments(p.oid) = 'message character varying')
    ORDER BY 1, 2"""


def _help_texts(cur, schema: str) -> dict[str, str]:
    cur.execute(HELP_FUNCTIONS, [schema])
    texts = {}
    for name, args in cur.fetchall():
        call = f"{schema}.{name}({'%s' if args else ''})"
        for topic in (["usage", "nonsense"] if args else [None]):
            cur.execute(f"SELECT {call}", [topic] if args else [])
            texts[f"{call} {topic or ''}".strip()] = cur.fetchone()[0]
    return texts


def _functions(cur, schema: str) -> set[str]:
    cur.execute("SELECT proname FROM pg_proc WHERE pronamespace = %s::regnamespace", [schema])
    return {r[0] for r in cur.fetchall()}


def _check(cur, schema: str) -> int:
    functions, checked = _functions(cur, schema), 0
    texts = _help_texts(cur, schema)
    assert len(texts) >= 20, sorted(texts)  # every family's help
    for where, text in texts.items():
        for unqualified in re.findall(r"SELECT (\w+)\(", text):
            assert unqualified not in functions, f"{where}: SELECT {unqualified}(...) without the schema"
        for called_schema, name in re.findall(r"\b(\w+)\.(\w+)\(", text):
            if called_schema in ("madlib_dl", "madlib", schema):
                assert called_schema == schema and name in functions, f"{where}: {called_schema}.{name}"
                checked += 1
    return checked


def test_every_help_call_names_the_schema_and_an_existing_function(cur):
    assert _check(cur, "madlib_dl") >= 30


def test_help_names_the_schema_the_extension_was_installed_in(server):
    sharedir = paths.pg_config("--sharedir")
    boot = install.installed_boot(sharedir)
    try:
        install.install(sharedir, schema="madlib", boot=boot)
        with server.fresh_database("help_madlib") as db, server.connect(db) as conn, conn.cursor() as c:
            assert _check(c, "madlib") >= 30
            c.execute("SELECT madlib.load_keras_model()")
            assert "SELECT madlib.load_keras_model('model_arch_library'" in c.fetchone()[0]
    finally:
        install.install(sharedir, boot=boot)
