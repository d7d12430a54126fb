"""CREATE/DROP EXTENSION, the schema choice, version() and gpu_configuration() on a real server."""

import re

import psycopg2
import pytest

from madlib_dl import __version__
from madlib_dl.tools import install, paths

MEMBER_OBJECTS = """
    SELECT count(*) FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
    WHERE e.extname = 'madlib_dl' AND d.deptype = 'e'"""


def _functions_in(cur, schema):
    cur.execute("SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = %s ORDER BY 1", [schema])
    return [r[0] for r in cur.fetchall()]


def _declared_functions():
    """(name, count of signatures) as the install script templates declare them."""
    names = re.findall(r"^CREATE OR REPLACE (?:FUNCTION|AGGREGATE) @SCHEMA@\.(\w+)\(", install.script_template(paths.REPO / "sql"),
                       re.M)
    return set(names), len(names)


def _declared_types():
    return re.findall(r"^CREATE TYPE @SCHEMA@\.(\w+) ", install.script_template(paths.REPO / "sql"), re.M)


def _declared_relations():
    """Tables and views: the progress and checkpoint tables, the views of one's own rows, and fit_progress."""
    return re.findall(r"^CREATE (?:TABLE|VIEW) @SCHEMA@\.(\w+) ", install.script_template(paths.REPO / "sql"), re.M)


def test_create_and_drop_extension_leave_nothing_behind(server):
    with server.fresh_database("ext_life", extension=False) as db, server.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_namespace")
        namespaces_before = cur.fetchone()[0]
        cur.execute("CREATE EXTENSION madlib_dl")
        names, signatures = _declared_functions()
        assert {"version", "gpu_configuration", "training_preprocessor_dl", "load_keras_model",
                "internal_launch_worker", "internal_client_connected", "internal_worker_serve"} <= names
        assert set(_functions_in(cur, "madlib_dl")) == names
        cur.execute(MEMBER_OBJECTS)
        relations = _declared_relations()
        assert set(relations) == {"internal_progress_runs", "internal_progress_models", "fit_progress",
                                  "internal_checkpoints", "internal_checkpoint_models",
                                  "internal_own_progress_runs", "internal_own_progress_models",
                                  "internal_own_checkpoints", "internal_own_checkpoint_models"}
        # the schema, functions, types, tables and the views
        assert cur.fetchone()[0] == 1 + signatures + len(_declared_types()) + len(relations)
        cur.execute("SELECT madlib_dl.version()")
        assert cur.fetchone()[0].startswith("madlib_dl ")
        cur.execute("DROP EXTENSION madlib_dl")
        cur.execute("SELECT count(*) FROM pg_namespace")
        assert cur.fetchone()[0] == namespaces_before
        assert _functions_in(cur, "madlib_dl") == []
        cur.execute("SELECT count(*) FROM pg_depend d WHERE d.deptype = 'e' AND NOT EXISTS "
                    "(SELECT 1 FROM pg_extension e WHERE e.oid = d.refobjid)")
        assert cur.fetchone()[0] == 0
        # and it can be created again in the same database
        cur.execute("CREATE EXTENSION madlib_dl")
        assert "version" in _functions_in(cur, "madlib_dl")


def test_the_c_library_is_loaded_from_libdir_and_the_schema_is_usable_by_everyone(cur):
    cur.execute("SELECT p.proname, p.probin, p.prosrc, p.provolatile, p.proisstrict FROM pg_proc p "
                "JOIN pg_language l ON l.oid = p.prolang WHERE l.lanname = 'c' "
                "AND p.pronamespace = 'madlib_dl'::regnamespace ORDER BY 1")
    assert cur.fetchall() == [
        ("internal_caller_search_path", "$libdir/madlib_dl", "madlib_dl_caller_search_path", "s", False),
        ("internal_client_connected", "$libdir/madlib_dl", "madlib_dl_client_connected", "v", False),
        ("internal_define_setting", "$libdir/madlib_dl", "madlib_dl_define_setting", "v", True),
        ("internal_launch_worker", "$libdir/madlib_dl", "madlib_dl_launch_worker", "v", True),
        ("internal_reserve_settings", "$libdir/madlib_dl", "madlib_dl_reserve_settings", "v", False),
        ("internal_take_file", "$libdir/madlib_dl", "madlib_dl_take_file", "v", True),
    ]
    cur.execute("SELECT madlib_dl.internal_client_connected()")
    assert cur.fetchone()[0] is True
    cur.execute("SELECT has_schema_privilege('public', 'madlib_dl', 'USAGE')")
    assert cur.fetchone()[0] is True


def test_extension_refuses_a_schema_it_did_not_create(server):
    with server.fresh_database("ext_clash", extension=False) as db, server.connect(db) as conn, conn.cursor() as cur:
        cur.execute("CREATE SCHEMA madlib_dl")
        with pytest.raises(psycopg2.errors.DuplicateSchema, match='schema "madlib_dl" already exists'):
            cur.execute("CREATE EXTENSION madlib_dl")
        cur.execute("SELECT count(*) FROM pg_extension WHERE extname = 'madlib_dl'")
        assert cur.fetchone()[0] == 0


def test_install_with_another_schema_for_madlib_scripts(server):
    sharedir = paths.pg_config("--sharedir")
    boot = install.installed_boot(sharedir)  # make install's copy, or dev-install's venv
    try:
        install.install(sharedir, schema="madlib", boot=boot)
        with server.fresh_database("ext_madlib") as db, server.connect(db) as conn, conn.cursor() as cur:
            cur.execute("SELECT madlib.version()")
            assert cur.fetchone()[0].startswith("madlib_dl ")
            assert _functions_in(cur, "madlib_dl") == []
            cur.execute("DROP EXTENSION madlib_dl")
            cur.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'madlib'")
            assert cur.fetchone()[0] == 0
    finally:
        install.install(sharedir, boot=boot)


def test_the_segment_interface_carries_no_model_state(cur):
    """Model state travels over the workers' channel as raw bytes: the aggregates take the run and the
    staged call (run_id, call_id), hop_result has no weights, and a worker is set up without a run id."""
    cur.execute("SELECT p.proname, pg_get_function_identity_arguments(p.oid) FROM pg_proc p "
                "WHERE p.pronamespace = 'madlib_dl'::regnamespace AND p.prokind = 'a' ORDER BY 1")
    assert cur.fetchall() == [
        ("fit_step_multiple_model", "bytea, bytea, integer[], integer[], text, bigint"),
        ("internal_keras_evaluate", "bytea, bytea, integer[], integer[], text, bigint"),
    ]
    cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'madlib_dl.hop_result'::regclass AND attnum > 0 "
                "ORDER BY attnum")
    assert [a for (a,) in cur.fetchall()] == ["loss", "metric", "images", "buffers_read", "seconds", "started", "ended",
                                             "pid", "rss_bytes", "peak_rss_bytes", "shared_rss_bytes",
                                             "output_losses", "output_metrics"]
    cur.execute("SELECT pg_get_function_identity_arguments('madlib_dl.internal_fit_worker_init'::regproc), "
                "pg_get_function_identity_arguments('madlib_dl.internal_fit_release'::regproc), "
                "to_regproc('madlib_dl.internal_model_initial_weights')")
    assert cur.fetchone() == ("threads integer, cuda_visible_devices text, gpu_memory_limit_mib integer, "
                              "worker_session boolean", "run_id text", None)


def test_version_names_every_component(cur):
    cur.execute("SELECT madlib_dl.version()")
    text = cur.fetchone()[0]
    assert re.fullmatch(rf"madlib_dl {re.escape(__version__)}, Python 3\.11\.\d+, TensorFlow 2\.21\.0, Keras 3\.15\.1",
                        text), text


def test_gpu_configuration_on_a_host_without_gpus(conn, cur):
    cur.execute("DROP TABLE IF EXISTS gpus_tf, gpus_nv")
    cur.execute("SELECT madlib_dl.gpu_configuration('gpus_tf')")
    assert any("found no GPU" in n for n in conn.notices)
    cur.execute("SELECT madlib_dl.gpu_configuration('gpus_nv', 'NVIDIA')")
    for table in ("gpus_tf", "gpus_nv"):
        cur.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = %s::regclass AND attnum > 0 ORDER BY attnum", [table])
        assert cur.fetchall() == [("hostname", "text"), ("gpu_descr", "text")]
        cur.execute(f"SELECT count(*) FROM {table}")
        assert cur.fetchone()[0] == 0


def test_gpu_configuration_quoted_and_schema_qualified_names(cur):
    cur.execute('DROP SCHEMA IF EXISTS "Gpu Info" CASCADE')
    cur.execute('CREATE SCHEMA "Gpu Info"')
    cur.execute("""SELECT madlib_dl.gpu_configuration('"Gpu Info"."My GPUs"')""")
    cur.execute("""SELECT count(*) FROM "Gpu Info"."My GPUs" """)
    assert cur.fetchone()[0] == 0
    cur.execute('DROP SCHEMA "Gpu Info" CASCADE')


@pytest.mark.parametrize("args, sqlstate, message", [
    (("gpus_bad", "cuda"), "22023", "source: expected 'tensorflow' or 'nvidia', got 'cuda'"),
    ((None, "tensorflow"), "22023", "output_table: expected a table name, got NULL"),
    (("  ", "tensorflow"), "22023", "output_table: expected a table name, got an empty string"),
    (("x; DROP TABLE victim", None), "22023", "output_table: expected a table name"),
    (("victim", None), "42P07", "output_table: table 'victim' already exists"),
    (("no_schema.gpus", None), "42P01", "output_table: schema 'no_schema' of 'no_schema.gpus' does not exist"),
    (("a.b.c.d", None), "22023", "expected table or schema.table"),
])
def test_gpu_configuration_bad_input_is_one_clear_error_and_creates_nothing(cur, args, sqlstate, message):
    cur.execute("CREATE TABLE IF NOT EXISTS victim (v int)")
    cur.execute("SELECT count(*) FROM pg_class")
    tables_before = cur.fetchone()[0]
    with pytest.raises(psycopg2.Error) as raised:
        cur.execute("SELECT madlib_dl.gpu_configuration(%s, %s)", list(args))
    assert raised.value.pgcode == sqlstate
    assert message in raised.value.diag.message_primary
    cur.execute("SELECT count(*) FROM pg_class")
    assert cur.fetchone()[0] == tables_before
    cur.execute("SELECT count(*) FROM victim")  # still there


def test_gpu_configuration_help(cur):
    cur.execute("SELECT madlib_dl.gpu_configuration()")
    text = cur.fetchone()[0]
    assert "output_table" in text and "'nvidia'" in text


@pytest.mark.parametrize("args, message", [
    (("madlib_dl.x", "enum", "a", 0, 0, [None], "d"), "choices must be a non-empty array without NULLs"),
    (("madlib_dl.x", "enum", "a", 0, 0, [], "d"), "choices must be a non-empty array without NULLs"),
    (("auto_explain.x", "integer", "1", 0, 5, [], "d"), "setting name auto_explain.x: expected madlib_dl.<name>"),
    (("madlib_dl.a.b", "integer", "1", 0, 5, [], "d"), "expected madlib_dl.<name>"),
    (("madlib_dl.x", "integer", "9", 0, 5, [], "d"), "default 9 outside its range"),
    (("madlib_dl.x", "integer", "1", 0, 2**40, [], "d"), "default 1 outside its range"),
    (("madlib_dl.x", "bigint", "1x", 0, 0, [], "d"), "default 1x is not an integer"),
    (("madlib_dl.x", "float", "1", 0, 0, [], "d"), "unknown kind float"),
])
def test_the_c_function_defining_settings_refuses_what_it_cannot_define(conn, args, message):
    """Any role can call it (sessions register their settings at their first call): bad input is an
    error, never a crash or a setting outside madlib_dl's names."""
    with conn.cursor() as c:
        with pytest.raises(psycopg2.errors.InvalidParameterValue, match=re.escape(message)):
            c.execute("SELECT madlib_dl.internal_define_setting(%s, %s, %s, %s, %s, %s::text[], %s)", list(args))
        c.execute("SELECT 1")  # the backend is alive
        assert c.fetchone() == (1,)
