"""Every help text's calls can be pasted into psql: each names the schema and a function that exists
there (MADlib's help overloads: f() for a summary, f('usage') for the arguments and examples)."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg2
import pytest

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


# ---------------------------------------------------------------------------------------------------
# Every usage text lists the SQL functions' argument names exactly as declared, so that a named argument
# copied from it (use_caching => TRUE) is one PostgreSQL knows

DECLARED = """
    SELECT p.proname, p.proargnames, p.proargmodes::text[] AS modes FROM pg_proc p
    WHERE p.pronamespace = %s::regnamespace AND p.proname = ANY(%s) ORDER BY p.oid"""


def _declared(cur, schema: str, names: list[str]) -> dict[str, list[list[str]]]:
    """Each function's overloads (help overloads left out) as their IN argument names in order."""
    cur.execute(DECLARED, [schema, names])
    found: dict[str, list[list[str]]] = {}
    for name, arguments, modes in cur.fetchall():
        inputs = [a for i, a in enumerate(arguments or []) if modes is None or modes[i] in ("i", "b")]
        if inputs not in ([], ["message"]):
            found.setdefault(name, []).append(inputs)
    return found


def _usage_arguments(text: str, function: str) -> list[str]:
    """The names declared in the usage's calls of ``function``: ``name TYPE`` inside its parentheses
    (the examples' calls pass values, which hold no such pair)."""
    text = re.sub(r"--[^\n]*", "", text)  # comments may hold parentheses
    names = []
    for found in re.finditer(rf"\b{function}\(", text):
        depth, end = 1, found.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        names += re.findall(r"(?:^|[(,])\s*([a-z_][a-z0-9_]*)\s+[A-Z]", text[found.end():end - 1], re.MULTILINE)
    return list(dict.fromkeys(names))


def _in_order(names: list[str], within: list[str]) -> bool:
    positions = [within.index(n) for n in names]
    return positions == sorted(positions)


def test_every_usage_lists_the_declared_argument_names(cur):
    cur.execute("SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'madlib_dl'::regnamespace "
                "AND p.proargnames = ARRAY['message'] ORDER BY 1")
    functions = [r[0] for r in cur.fetchall()]
    declared = _declared(cur, "madlib_dl", functions)
    assert {"madlib_keras_fit_multiple_model", "madlib_keras_fit", "madlib_keras_evaluate", "madlib_keras_predict",
            "madlib_keras_predict_byom", "training_preprocessor_dl", "validation_preprocessor_dl",
            "madlib_keras_automl", "generate_model_configs", "load_model_selection_table"} <= set(declared)
    for function in functions:
        cur.execute(f"SELECT madlib_dl.{function}('usage')")
        listed = _usage_arguments(cur.fetchone()[0], function)
        overloads = declared[function]
        assert set(listed) == {n for names in overloads for n in names}, (function, listed, overloads)
        for names in overloads:
            assert _in_order(names, listed), (function, listed, names)


MISSPELT = ("SELECT madlib_dl.madlib_keras_fit_multiple_model('iris_packed', 'models', 'mst', 10, FALSE, NULL, NULL, FALSE, "
            "NULL, NULL, use_cacheing => TRUE)")


def test_troubleshooting_shows_the_servers_message_for_a_misspelt_argument(plain_cur):
    """docs/troubleshooting.md quotes PostgreSQL's message word for word, and its causes hold."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md").read_text()
    quoted = doc.split("## `function ... does not exist`")[1].split("```text\n")[1].split("```")[0]
    with pytest.raises(psycopg2.errors.UndefinedFunction) as info:
        plain_cur.execute(MISSPELT)
    assert quoted.strip() == f"ERROR:  {info.value}".strip()
    for left_out in (MISSPELT.replace("NULL, NULL, FALSE, NULL, NULL, use_cacheing", "use_caching"),
                     "SELECT madlib_dl.madlib_keras_evaluate('m', 't', 'o', mst_key => 2)",
                     "SELECT madlib_dl.load_keras_model('arch', '{}'::json, name => 'n')",
                     MISSPELT.replace("use_cacheing => TRUE", "use_caching => 1")):
        with pytest.raises(psycopg2.errors.UndefinedFunction):
            plain_cur.execute(left_out)
