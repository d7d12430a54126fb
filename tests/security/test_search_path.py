"""Issue #25 items 1 and 2: a plain role plants objects in schema public, on every role's search_path,
and waits for a superuser to pack, train and predict.

1. search_path capture: functions and operators that match madlib_dl's own statements better than
   pg_catalog's built-ins (array_send(real[]), array_dims(real[]), cardinality(real[]), =(oid, regclass),
   ||(integer, text)) would run their body as whoever runs those statements.
2. Workers resolving bare names: with ``search_path = admin_s, public`` the superuser's train_packed is
   admin_s.train_packed; a worker that resolved the bare name in its own session (default search_path,
   "$user", public) would read alice's view public.train_packed, whose WHERE clause calls her function.

Each trap records who ran it and, when that is not alice, tries to make alice a superuser. Before the
defences, one fit_multiple made alice a superuser."""

from __future__ import annotations

import digits_data
import pytest

DB = "sec_search_path"

TRAPS = """
CREATE TABLE public.fired (what TEXT, who NAME DEFAULT current_user, login NAME DEFAULT session_user);
GRANT INSERT, SELECT ON public.fired TO PUBLIC;
CREATE FUNCTION public.fire(what TEXT) RETURNS BOOLEAN LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO public.fired (what) VALUES (what);
    IF current_user OPERATOR(pg_catalog.<>) 'alice' THEN
        BEGIN
            EXECUTE 'ALTER ROLE alice SUPERUSER';
        EXCEPTION WHEN OTHERS THEN NULL;
        END;
    END IF;
    RETURN TRUE;
END $f$;
CREATE FUNCTION public.array_send(REAL[]) RETURNS BYTEA LANGUAGE sql AS
    $f$ SELECT CASE WHEN public.fire('array_send') THEN pg_catalog.array_send($1) END $f$;
CREATE FUNCTION public.array_dims(REAL[]) RETURNS TEXT LANGUAGE sql AS
    $f$ SELECT CASE WHEN public.fire('array_dims') THEN pg_catalog.array_dims($1) END $f$;
CREATE FUNCTION public.cardinality(REAL[]) RETURNS INTEGER LANGUAGE sql AS
    $f$ SELECT CASE WHEN public.fire('cardinality') THEN pg_catalog.cardinality($1) END $f$;
CREATE FUNCTION public.trap_eq(OID, REGCLASS) RETURNS BOOLEAN LANGUAGE sql AS
    $f$ SELECT public.fire('=(oid, regclass)') AND $1 OPERATOR(pg_catalog.=) $2::pg_catalog.oid $f$;
CREATE OPERATOR public.= (LEFTARG = OID, RIGHTARG = REGCLASS, FUNCTION = public.trap_eq);
CREATE FUNCTION public.trap_concat(INTEGER, TEXT) RETURNS TEXT LANGUAGE sql AS
    $f$ SELECT CASE WHEN public.fire('||(integer, text)') THEN pg_catalog.textcat($1::pg_catalog.text, $2) END $f$;
CREATE OPERATOR public.|| (LEFTARG = INTEGER, RIGHTARG = TEXT, FUNCTION = public.trap_concat);
"""


@pytest.fixture(scope="module")
def database(server, plain_role):
    with server.fresh_database(DB, plain_role=plain_role) as name:
        try:
            yield name
        finally:
            with server.connect("postgres") as admin, admin.cursor() as cur:
                cur.execute("ALTER ROLE alice NOSUPERUSER")  # whatever happened, no later test inherits it


@pytest.fixture(scope="module")
def traps(server, database, plain_role):
    """alice's traps in public, and her view public.train_packed over a packed table of her own."""
    with server.connect(database, user=plain_role) as conn, conn.cursor() as cur:
        cur.execute(TRAPS)
        digits_data.create_table(cur, "public.alice_digits")
        cur.execute("DELETE FROM public.alice_digits WHERE id >= 300")
        cur.execute("SELECT madlib_dl.training_preprocessor_dl('public.alice_digits', 'public.alice_packed', "
                    "'label', 'pixels', 100, 16.0, NULL, '2')")
        cur.execute("CREATE VIEW public.train_packed AS SELECT * FROM public.alice_packed WHERE public.fire('view')")
        cur.execute("GRANT SELECT ON public.train_packed, public.alice_packed TO PUBLIC")
        cur.execute("TRUNCATE public.fired")  # her own packing ran her traps as herself: not the point
    return database


def _fired_as_others(cur) -> list:
    cur.execute("SELECT what, who, login FROM public.fired WHERE who <> 'alice' OR login <> 'alice'")
    return cur.fetchall()


def test_a_superusers_pack_train_and_predict_run_none_of_a_plain_roles_objects(server, traps):
    with server.connect(traps) as conn, conn.cursor() as cur:
        cur.execute("CREATE SCHEMA admin_s")
        cur.execute("SET search_path = admin_s, public")
        digits_data.create_table(cur, "admin_s.digits")
        # Made with qualified names (a bare train_packed would be taken: alice's view is on the path) ...
        cur.execute("SELECT madlib_dl.training_preprocessor_dl('digits', 'admin_s.train_packed', 'label', 'pixels', "
                    "100, 16.0, NULL, '2')")
        cur.execute("SELECT madlib_dl.load_keras_model('arch', %s::json)", [digits_data.mlp_json(8)])
        cur.execute("SELECT madlib_dl.load_model_selection_table('arch', 'mst', ARRAY[1], %s, %s)",
                    [digits_data.TWO_CONFIGS, ["batch_size=8, epochs=1"]])
        # ... then named bare, as the superuser's search_path finds them: admin_s first.
        cur.execute("SELECT madlib_dl.validation_preprocessor_dl('digits', 'valid_packed', 'label', 'pixels', "
                    "'train_packed', 100)")
        cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('train_packed', 'out', 'mst', 1, FALSE, "
                    "'valid_packed', 1, FALSE, NULL, NULL, TRUE)")
        cur.execute("SELECT madlib_dl.madlib_keras_evaluate('out', 'valid_packed', 'evaluated', FALSE, 1)")
        cur.execute("SELECT madlib_dl.madlib_keras_predict('out', 'digits', 'id', 'pixels', 'predicted', "
                    "'response', FALSE, 1)")

        assert _fired_as_others(cur) == []
        cur.execute("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'alice'")
        assert cur.fetchone() == (False,)

        # The superuser's own results, from its own data (alice's view has 300 rows, its table 1797).
        cur.execute("SELECT pg_catalog.count(*) FROM admin_s.out_info")
        assert cur.fetchone() == (2,)
        cur.execute("SELECT pg_catalog.count(*), pg_catalog.count(DISTINCT id) FROM admin_s.predicted")
        assert cur.fetchone() == (1797, 1797)
        cur.execute("SELECT loss IS NOT NULL AND loss::float8 < 'Infinity' FROM admin_s.evaluated")
        assert cur.fetchone() == (True,)


def test_workers_read_the_table_the_caller_resolved(server, traps):
    """The workers are handed the schema-qualified name and OID the caller resolved; no stale or other
    relation of the same name is read (the view of alice's would have been, in the workers' own
    search_path)."""
    with server.connect(traps) as conn, conn.cursor() as cur:
        cur.execute("SET search_path = admin_s, public")
        cur.execute("SET madlib_dl.executor = 'workers'")  # no fallback to this session may hide it
        cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('train_packed', 'out_workers', 'mst', 1, FALSE)")
        assert _fired_as_others(cur) == []
        cur.execute("SELECT pg_catalog.count(*) FROM admin_s.out_workers_info")
        assert cur.fetchone() == (2,)


def test_a_temporary_table_is_read_only_in_the_callers_session(server, traps, plain_role):
    """pg_temp names resolve to the caller's own temporary schema; no worker (another session) is asked
    to read one: the run trains in this session, with a NOTICE saying why."""
    with server.connect(traps, user=plain_role) as conn, conn.cursor() as cur:
        cur.execute("SELECT madlib_dl.training_preprocessor_dl('public.alice_digits', 'pg_temp.tpacked', 'label', "
                    "'pixels', 100, 16.0, NULL, '2')")
        cur.execute("SELECT relpersistence FROM pg_catalog.pg_class WHERE oid = 'pg_temp.tpacked'::regclass")
        assert cur.fetchone() == ("t",)
        cur.execute("SELECT madlib_dl.load_keras_model('pg_temp.tarch', %s::json)", [digits_data.mlp_json(8)])
        cur.execute("SELECT madlib_dl.load_model_selection_table('pg_temp.tarch', 'pg_temp.tmst', ARRAY[1], %s, %s)",
                    [digits_data.TWO_CONFIGS[:1], ["batch_size=8, epochs=1"]])
        del conn.notices[:]
        cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('tpacked', 'pg_temp.tout', 'tmst', 1, FALSE)")
        assert any("tpacked is a temporary table, which no other session can read" in n for n in conn.notices), \
            conn.notices
        cur.execute("SELECT pg_catalog.count(*) FROM pg_temp.tout_info")
        assert cur.fetchone() == (1,)
