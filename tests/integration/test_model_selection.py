"""load_model_selection_table() and generate_model_configs() on a real server.

One database for the module (its backend imports Keras once for the optimizer-argument check), with
two model architecture tables made by hand, so these tests do not depend on load_keras_model.
Every error test checks the SQLSTATE, the message (it names the argument) and that no table was left.
"""

from __future__ import annotations

import random
import time

import psycopg2
import pytest

from madlib_dl.keras_runtime.params import parse_compile_params, parse_fit_params

S = "madlib_dl."
COMPILE = "loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']"
COMPILE_SGD = "loss='categorical_crossentropy', optimizer='SGD(lr=0.1, momentum=0.9)', metrics=['accuracy']"
COMPILE_GRID = ("{'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'], "
                "'optimizer_params_list': [{'optimizer': ['SGD', 'Adam'], 'lr': [0.01, 0.001]}]}")
FIT_GRID = "{'batch_size': [32, 64], 'epochs': [1, 2]}"
RANDOM_GRID = ("{'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'], 'optimizer_params_list': ["
               "{'optimizer': ['SGD'], 'lr': [0.0001, 0.1, 'log'], 'momentum': [0.9, 0.99, 'log_near_one']},"
               "{'optimizer': ['Adam'], 'lr': [0.001, 0.01, 'log'], 'beta_1': [0.8, 0.95, 'linear']}]}")
LOAD = f"SELECT {S}load_model_selection_table(%s, %s, %s, %s, %s)"
LOAD6 = f"SELECT {S}load_model_selection_table(%s, %s, %s, %s, %s, %s)"
GENERATE = f"SELECT {S}generate_model_configs(%s, %s, %s, %s, %s)"
GENERATE_RANDOM = f"SELECT {S}generate_model_configs(%s, %s, %s, %s, %s, %s, %s, %s, %s)"


@pytest.fixture(scope="module")
def db(server):
    with server.fresh_database("model_selection") as name, server.connect(name) as connection:
        with connection.cursor() as c:
            for table, count in (("arch", 3), ("arch2", 2)):
                c.execute(f"CREATE TABLE {table} (model_id SERIAL PRIMARY KEY, model_arch JSON, model_weights BYTEA, "
                          "name TEXT, description TEXT, __internal_madlib_id__ TEXT)")
                c.execute(f"INSERT INTO {table} (model_arch) SELECT '{{}}' FROM generate_series(1, {count})")
        yield connection


@pytest.fixture
def cur(db):
    del db.notices[:]
    with db.cursor() as c:
        yield c


def rows(cur, table):
    cur.execute(f"SELECT mst_key, model_id, compile_params, fit_params FROM {table} ORDER BY mst_key")
    return cur.fetchall()


def summary(cur, table):
    cur.execute(f"SELECT model_arch_table, object_table FROM {table}")
    return cur.fetchall()


def exists(cur, name):
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
    return cur.fetchone()[0]


def notices(db):
    return [n.strip() for n in db.notices]


def drop(cur, *tables):
    """Drop plain-named mst tables and their summaries."""
    for table in tables:
        cur.execute(f"DROP TABLE IF EXISTS {table}, {table}_summary")
    del cur.connection.notices[:]


def fails(cur, sql, args, sqlstate, fragment):
    with pytest.raises(psycopg2.Error) as info:
        cur.execute(sql, args)
    message = info.value.diag.message_primary
    assert info.value.pgcode == sqlstate, message
    assert fragment in message, message
    return message


# ===================================================================================================
# load_model_selection_table

def test_load_makes_madlib_tables(db, cur):
    drop(cur, "mst_load")
    cur.execute(LOAD, ["arch", "mst_load", [1, 2], [COMPILE, COMPILE_SGD], ["batch_size=32, epochs=1", "batch_size=64, epochs=1"]])
    assert rows(cur, "mst_load") == [
        (1, 1, COMPILE, "batch_size=32, epochs=1"), (2, 1, COMPILE, "batch_size=64, epochs=1"),
        (3, 1, COMPILE_SGD, "batch_size=32, epochs=1"), (4, 1, COMPILE_SGD, "batch_size=64, epochs=1"),
        (5, 2, COMPILE, "batch_size=32, epochs=1"), (6, 2, COMPILE, "batch_size=64, epochs=1"),
        (7, 2, COMPILE_SGD, "batch_size=32, epochs=1"), (8, 2, COMPILE_SGD, "batch_size=64, epochs=1")]
    assert summary(cur, "mst_load_summary") == [("arch", None)]
    assert notices(db) == ["NOTICE:  load_model_selection_table: added 8 configurations to mst_load"]
    cur.execute("SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
                "WHERE attrelid = 'mst_load'::regclass AND attnum > 0 ORDER BY attnum")
    assert cur.fetchall() == [("mst_key", "integer", True), ("model_id", "integer", False),
                              ("compile_params", "character varying", False), ("fit_params", "character varying", False)]
    cur.execute("SELECT contype, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'mst_load'::regclass "
                "ORDER BY contype")
    assert cur.fetchall() == [("p", "PRIMARY KEY (mst_key)"), ("u", "UNIQUE (model_id, compile_params, fit_params)")]
    cur.execute("SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'mst_load'::regclass")
    assert cur.fetchone()[0] == "nextval('mst_load_mst_key_seq'::regclass)"
    cur.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'mst_load_summary'::regclass AND attnum > 0 ORDER BY attnum")
    assert cur.fetchall() == [("model_arch_table", "character varying"), ("object_table", "character varying")]


def test_load_collapses_equal_strings_and_sorts_ids(db, cur):
    drop(cur, "mst_dups")
    cur.execute(LOAD, ["arch", "mst_dups", [3, 1, 3],
                       [f"  {COMPILE}  ", "metrics=['accuracy'],optimizer='adam(learning_rate=0.01)',loss=categorical_crossentropy"],
                       ["batch_size=32, epochs=1", "epochs=1,batch_size=32", " batch_size = 32 , epochs = 1 "]])
    assert rows(cur, "mst_dups") == [(1, 1, COMPILE, "batch_size=32, epochs=1"), (2, 3, COMPILE, "batch_size=32, epochs=1")]
    assert notices(db) == ["NOTICE:  load_model_selection_table: added 2 configurations to mst_dups; "
                           "16 of the 18 combinations of the arguments repeated another and were merged"]


def test_load_appends_skipping_rows_already_there(db, cur):
    drop(cur, "mst_append")
    cur.execute(LOAD, ["arch", "mst_append", [1], [COMPILE], ["batch_size=32, epochs=1"]])
    del db.notices[:]
    cur.execute(LOAD, ["arch", "mst_append", [1, 2], [COMPILE.replace(" ", "")], ["epochs=1,batch_size=32", "batch_size=8"]])
    assert notices(db) == ["NOTICE:  load_model_selection_table: added 3 configurations to mst_append; "
                           "skipped 1 already in the table"]
    assert rows(cur, "mst_append") == [
        (1, 1, COMPILE, "batch_size=32, epochs=1"), (2, 1, COMPILE.replace(" ", ""), "batch_size=8"),
        (3, 2, COMPILE.replace(" ", ""), "epochs=1,batch_size=32"), (4, 2, COMPILE.replace(" ", ""), "batch_size=8")]
    assert summary(cur, "mst_append_summary") == [("arch", None)]
    # everything already there: nothing added, no error from the UNIQUE constraint
    del db.notices[:]
    cur.execute(LOAD, ["arch", "mst_append", [2], [COMPILE], ["batch_size=8"]])
    assert notices(db) == ["NOTICE:  load_model_selection_table: added 0 configurations to mst_append; "
                           "skipped 1 already in the table"]
    assert len(rows(cur, "mst_append")) == 4


def test_load_with_object_table(db, cur):
    drop(cur, "mst_obj")
    cur.execute(LOAD6, ["arch", "mst_obj", [1], [COMPILE], [""], None])
    assert rows(cur, "mst_obj") == [(1, 1, COMPILE, "")]
    drop(cur, "mst_obj")
    fails(cur, LOAD6, ["arch", "mst_obj", [1], [COMPILE], [""], "custom_fns"], "42P01",
          "object_table: table 'custom_fns' does not exist")
    assert not exists(cur, "mst_obj") and not exists(cur, "mst_obj_summary")


def test_optimizer_arguments_are_checked_against_keras(db, cur):
    drop(cur, "mst_keras")
    message = fails(cur, LOAD, ["arch", "mst_keras", [1], [COMPILE, "loss='mse', optimizer='Adam(lr=0.1, momentum=0.9)'"],
                                [""]], "22023", "compile_params_list[2]: Adam has no argument momentum; expected some of")
    assert "weight_decay" in message
    grid = RANDOM_GRID.replace("'beta_1': [0.8, 0.95, 'linear']", "'momentum': [0.8, 0.95, 'linear']")
    fails(cur, GENERATE_RANDOM, ["arch", "mst_keras", [1], grid, FIT_GRID, "random", 5, 1, None], "22023",
          "compile_params_grid: optimizer_params_list[1]: Adam has no argument momentum")
    fails(cur, GENERATE, ["arch", "mst_keras", [1], "{'loss': ['mse'], 'optimizer_params_list': "
                          "[{'optimizer': ['Adam', 'SGD'], 'beta_1': [0.9]}]}", "{}"],
          "22023", "compile_params_grid: optimizer_params_list[0]: SGD has no argument beta_1")
    assert not exists(cur, "mst_keras") and not exists(cur, "mst_keras_summary")


# ===================================================================================================
# generate_model_configs

def assert_rows_parse(found):
    for _key, _model_id, compile_params, fit_params in found:
        parse_compile_params(compile_params)
        parse_fit_params(fit_params)


def test_generate_grid_madlib_count(db, cur):
    drop(cur, "mst_grid")
    cur.execute(GENERATE, ["arch", "mst_grid", [2, 1], COMPILE_GRID, FIT_GRID])
    found = rows(cur, "mst_grid")
    assert len(found) == 32  # 2 model ids x 2 optimizers x 2 lr x 2 batch sizes x 2 epochs
    assert [r[0] for r in found] == list(range(1, 33))
    assert found[0] == (1, 1, "optimizer='SGD(learning_rate=0.01)',loss='categorical_crossentropy',metrics=['accuracy']",
                        "batch_size=32,epochs=1")
    assert found[-1] == (32, 2, "optimizer='Adam(learning_rate=0.001)',loss='categorical_crossentropy',"
                                "metrics=['accuracy']", "batch_size=64,epochs=2")
    assert_rows_parse(found)
    assert summary(cur, "mst_grid_summary") == [("arch", None)]
    assert notices(db) == ["NOTICE:  generate_model_configs: added 32 configurations to mst_grid"]
    # the same grid again adds nothing
    del db.notices[:]
    cur.execute(f"SELECT {S}generate_model_configs('arch', 'mst_grid', ARRAY[1,2], %s, %s, 'G', NULL, NULL, NULL)",
                [COMPILE_GRID, FIT_GRID])
    assert notices(db) == ["NOTICE:  generate_model_configs: added 0 configurations to mst_grid; "
                           "skipped 32 already in the table"]


def test_generate_random_is_reproducible_with_random_state(db, cur):
    drop(cur, "mst_rand_a", "mst_rand_b", "mst_rand_c")
    for table, seed in (("mst_rand_a", 42), ("mst_rand_b", 42), ("mst_rand_c", 43)):
        cur.execute(GENERATE_RANDOM, ["arch", table, [1, 2, 3], RANDOM_GRID, FIT_GRID, "RAND", 12, seed, None])
    a, b, c = (rows(cur, t) for t in ("mst_rand_a", "mst_rand_b", "mst_rand_c"))
    assert len(a) == 12 and a == b and a != c
    assert_rows_parse(a)
    for _key, model_id, compile_params, _fit in a:
        optimizer = parse_compile_params(compile_params).optimizer
        assert model_id in (1, 2, 3)
        if optimizer.name == "SGD":
            assert 0.0001 <= optimizer.kwargs["learning_rate"] <= 0.1
            assert 0.9 <= optimizer.kwargs["momentum"] <= 0.99
        else:
            assert 0.8 <= optimizer.kwargs["beta_1"] <= 0.95
    assert notices(db)[-1] == "NOTICE:  generate_model_configs: added 12 configurations to mst_rand_c"


def test_generate_random_without_random_state_differs(db, cur):
    drop(cur, "mst_free_a", "mst_free_b")
    for table in ("mst_free_a", "mst_free_b"):
        cur.execute(GENERATE_RANDOM, ["arch", table, [1], RANDOM_GRID, FIT_GRID, "random", 3, None, None])
    assert rows(cur, "mst_free_a") != rows(cur, "mst_free_b")


def test_generate_random_from_a_small_space(db, cur):
    drop(cur, "mst_small")
    cur.execute(GENERATE_RANDOM, ["arch", "mst_small", [1], COMPILE_GRID, "{'batch_size': [16]}", "r", 10, 5, None])
    assert len(rows(cur, "mst_small")) == 4
    assert notices(db) == ["NOTICE:  generate_model_configs: added 4 configurations to mst_small; "
                           "the search space gave only 4 distinct configurations of the 10 asked for"]


def test_both_functions_append_to_one_table(db, cur):
    drop(cur, "mst_mixed")
    cur.execute(LOAD, ["arch", "mst_mixed", [1], ["optimizer='SGD(lr=0.01)', loss='categorical_crossentropy', "
                                                  "metrics=['accuracy']"], ["epochs=2, batch_size=64"]])
    del db.notices[:]
    cur.execute(GENERATE, ["arch", "mst_mixed", [1], COMPILE_GRID, FIT_GRID])
    assert notices(db) == ["NOTICE:  generate_model_configs: added 15 configurations to mst_mixed; "
                           "skipped 1 already in the table"]
    assert len(rows(cur, "mst_mixed")) == 16


# ===================================================================================================
# Appending: the table must be a model selection table from the same model arch table

def test_append_needs_the_same_model_arch_table(db, cur):
    drop(cur, "mst_arch")
    cur.execute(LOAD, ["public.arch", "mst_arch", [1], [COMPILE], [""]])
    assert summary(cur, "mst_arch_summary") == [("public.arch", None)]
    cur.execute(LOAD, ["arch", "mst_arch", [2], [COMPILE], [""]])  # the same table, named differently
    fails(cur, LOAD, ["arch2", "mst_arch", [1], [COMPILE], ["batch_size=4"]], "22023",
          "model_arch_table: mst_arch was made from model arch table 'public.arch' (see public.mst_arch_summary), "
          "not 'arch2'; append with that table, or choose another model_selection_table")
    fails(cur, GENERATE, ["arch2", "mst_arch", [1], COMPILE_GRID, FIT_GRID], "22023", "was made from model arch table")
    assert len(rows(cur, "mst_arch")) == 2


def test_append_needs_the_summary(db, cur):
    drop(cur, "mst_nosum")
    cur.execute(LOAD, ["arch", "mst_nosum", [1], [COMPILE], [""]])
    cur.execute("DROP TABLE mst_nosum_summary")
    fails(cur, LOAD, ["arch", "mst_nosum", [2], [COMPILE], [""]], "42P01",
          "model_selection_table: table mst_nosum exists but its summary table public.mst_nosum_summary does not")
    cur.execute("CREATE TABLE mst_nosum_summary (model_arch_table VARCHAR, object_table VARCHAR)")
    fails(cur, LOAD, ["arch", "mst_nosum", [2], [COMPILE], [""]], "22023",
          "model_selection_table: public.mst_nosum_summary must hold exactly one row, it holds 0")
    assert len(rows(cur, "mst_nosum")) == 1


def test_existing_tables_that_are_not_mst_tables(db, cur):
    drop(cur, "not_mst")
    cur.execute("CREATE TABLE not_mst (id INTEGER, model_id INTEGER)")
    fails(cur, LOAD, ["arch", "not_mst", [1], [COMPILE], [""]], "22023",
          "model_selection_table: table not_mst exists but is not a model selection table "
          "(it has no column mst_key, compile_params, fit_params)")
    fails(cur, GENERATE, ["arch", "arch", [1], COMPILE_GRID, FIT_GRID], "22023", "table arch exists but is not a model selection")
    cur.execute("DROP TABLE not_mst; CREATE TABLE orphan_summary (x INT)")
    fails(cur, LOAD, ["arch", "orphan", [1], [COMPILE], [""]], "42P07",
          "model_selection_table: table public.orphan_summary already exists but orphan does not")
    assert not exists(cur, "orphan")
    cur.execute("DROP TABLE orphan_summary; CREATE VIEW mst_view AS SELECT 1 AS mst_key")
    fails(cur, LOAD, ["arch", "mst_view", [1], [COMPILE], [""]], "22023", "mst_view exists and is not a table")
    cur.execute("DROP VIEW mst_view")


# ===================================================================================================
# Names

def test_quoted_and_schema_qualified_names(db, cur):
    cur.execute('DROP SCHEMA IF EXISTS s1 CASCADE; CREATE SCHEMA s1; DROP TABLE IF EXISTS "My Mst", "My Mst_summary"')
    cur.execute('CREATE TABLE s1."Arch Tbl" AS SELECT * FROM arch')
    cur.execute(LOAD, ['s1."Arch Tbl"', '"My Mst"', [1], [COMPILE], [""]])
    assert rows(cur, '"My Mst"') == [(1, 1, COMPILE, "")]
    assert summary(cur, '"My Mst_summary"') == [('s1."Arch Tbl"', None)]
    cur.execute(GENERATE, ['s1."Arch Tbl"', "s1.mst", [1, 2], COMPILE_GRID, "{}"])
    assert len(rows(cur, "s1.mst")) == 8 and summary(cur, "s1.mst_summary") == [('s1."Arch Tbl"', None)]
    cur.execute(GENERATE, ['S1."Arch Tbl"', "S1.MST", [3], COMPILE_GRID, "{}"])  # unquoted names fold
    assert len(rows(cur, "s1.mst")) == 12
    assert not exists(cur, "public.mst_summary")
    cur.execute("DROP SCHEMA s1 CASCADE")


@pytest.mark.parametrize("name", ["x; DROP TABLE arch", "arch2; DROP TABLE arch --", "mst_summary (id int)",
                                  "a.b.c", '"unterminated'])
def test_names_that_are_not_table_names(db, cur, name):
    for sql, args in ((LOAD, [name, "mst_inj", [1], [COMPILE], [""]]),
                      (LOAD, ["arch", name, [1], [COMPILE], [""]]),
                      (GENERATE, ["arch", name, [1], COMPILE_GRID, FIT_GRID])):
        fails(cur, sql, args, "22023", "")
    assert exists(cur, "arch") and exists(cur, "arch2") and not exists(cur, "mst_inj")


def test_summary_name_must_fit(db, cur):
    name = "m" * 56  # + '_summary' = 64 bytes: the server would cut it to 63
    fails(cur, LOAD, ["arch", name, [1], [COMPILE], [""]], "22023",
          f"model_selection_table: name '{name}' is too long: its summary table '{name}_summary' would be longer "
          "than 63 bytes")
    assert not exists(cur, name)
    drop(cur, "m" * 55)
    cur.execute(LOAD, ["arch", "m" * 55, [1], [COMPILE], [""]])
    assert exists(cur, "m" * 55 + "_summary")
    drop(cur, "m" * 55)


# ===================================================================================================
# Errors: one clear error each, and nothing created

ERRORS = [
    # model_arch_table
    (LOAD, [None, "err_mst", [1], [COMPILE], [""]], "22023", "model_arch_table: expected a table name, got NULL"),
    (LOAD, [" ", "err_mst", [1], [COMPILE], [""]], "22023", "model_arch_table: expected a table name, got an empty string"),
    (LOAD, ["no_such_arch", "err_mst", [1], [COMPILE], [""]], "42P01", "model_arch_table: table 'no_such_arch' does not exist"),
    (GENERATE, ["arch_no_id", "err_mst", [1], COMPILE_GRID, FIT_GRID], "22023",
     "model_arch_table: table arch_no_id has no column model_id"),
    (GENERATE, ["arch_text_id", "err_mst", [1], COMPILE_GRID, FIT_GRID], "22023",
     "model_arch_table: column model_id of arch_text_id must be an integer, it is text"),
    # model_selection_table
    (LOAD, ["arch", None, [1], [COMPILE], [""]], "22023", "model_selection_table: expected a table name, got NULL"),
    (GENERATE, ["arch", "", [1], COMPILE_GRID, FIT_GRID], "22023", "model_selection_table: expected a table name, got an empty"),
    (LOAD, ["arch", "nope.err_mst", [1], [COMPILE], [""]], "42P01", "model_selection_table: schema 'nope' of 'nope.err_mst' does not exist"),
    # model_id_list
    (LOAD, ["arch", "err_mst", None, [COMPILE], [""]], "22023", "model_id_list: expected an array such as ARRAY[1, 2], got NULL"),
    (GENERATE, ["arch", "err_mst", [], COMPILE_GRID, FIT_GRID], "22023", "model_id_list: expected an array such as ARRAY[1, 2], got an empty array"),
    (LOAD, ["arch", "err_mst", [1, None], [COMPILE], [""]], "22023", "model_id_list[2]: expected a model id, got NULL"),
    (LOAD, ["arch", "err_mst", [[1, 2], [3, 1]], [COMPILE], [""]], "22023", "model_id_list: expected a one-dimensional array"),
    (LOAD, ["arch", "err_mst", [1, 7], [COMPILE], [""]], "22023", "model_id_list: model id 7 is not in table arch"),
    (GENERATE, ["arch2", "err_mst", [9, 1, 3], COMPILE_GRID, FIT_GRID], "22023", "model_id_list: model ids 3, 9 are not in table arch2"),
    # compile_params_list / fit_params_list
    (LOAD, ["arch", "err_mst", [1], None, [""]], "22023", "compile_params_list: expected an array such as"),
    (LOAD, ["arch", "err_mst", [1], [], [""]], "22023", "compile_params_list: expected an array such as ARRAY[$$loss="),
    (LOAD, ["arch", "err_mst", [1], [COMPILE, None], [""]], "22023", "compile_params_list[2]: expected a parameter string, got NULL"),
    (LOAD, ["arch", "err_mst", [1], [COMPILE, "loss='mse'"], [""]], "22023", "compile_params_list[2]: optimizer is required"),
    (LOAD, ["arch", "err_mst", [1], [COMPILE, "loss='mse', optimizer='Adam', metrics=['sparse_categorical_accuracy']"], [""]],
     "0A000", "compile_params_list[2]: metric 'sparse_categorical_accuracy' is not supported"),
    (LOAD, ["arch", "err_mst", [1], [COMPILE], None], "22023", "fit_params_list: expected an array such as ARRAY['batch_size=32, epochs=1'], got NULL"),
    (LOAD, ["arch", "err_mst", [1], [COMPILE], ["", None]], "22023", "fit_params_list[2]: expected a parameter string, got NULL"),
    (LOAD, ["arch", "err_mst", [1], [COMPILE], ["batch_size=32", "batch_size=0"]], "22023",
     "fit_params_list[2]: batch_size must be an integer >= 1, got 0"),
    # compile_params_grid
    (GENERATE, ["arch", "err_mst", [1], None, FIT_GRID], "22023", "compile_params_grid: expected a dict such as"),
    (GENERATE, ["arch", "err_mst", [1], "{'loss': ['mse']", FIT_GRID], "22023", "compile_params_grid: missing '}'"),
    (GENERATE, ["arch", "err_mst", [1], "['mse']", FIT_GRID], "22023", "compile_params_grid: expected a dict such as"),
    (GENERATE, ["arch", "err_mst", [1], "{'loss': 'mse'}", FIT_GRID], "22023", "compile_params_grid: loss: values must be given in a list"),
    (GENERATE, ["arch", "err_mst", [1], "{'loss': []}", FIT_GRID], "22023", "compile_params_grid: loss: empty list"),
    (GENERATE, ["arch", "err_mst", [1], "{'loss': ['mse'], 'los': ['mse']}", FIT_GRID], "22023", "compile_params_grid: unknown key 'los'"),
    (GENERATE, ["arch", "err_mst", [1], "{'loss': ['mse'], 'optimizer': ['Adam']}", FIT_GRID], "22023",
     "compile_params_grid: 'optimizer' goes inside optimizer_params_list"),
    (GENERATE, ["arch", "err_mst", [1], "{'loss': ['mse'], 'momentum': [0.9]}", FIT_GRID], "22023",
     "(optimizer arguments such as lr go inside optimizer_params_list)"),
    (GENERATE, ["arch", "err_mst", [1], "{'loss': ['mse'], 'optimizer_params_list': [{'optimizer': ['SGD'], 'metrics': ['mae']}]}",
                FIT_GRID], "22023", "optimizer_params_list[0]: 'metrics' is a compile parameter, not an optimizer argument"),
    (GENERATE, ["arch", "err_mst", [1], "{'loss': ['mse'], 'optimizer_params_list': [{'optimizer': ['SGD']}, {}]}", FIT_GRID],
     "22023", "compile_params_grid: optimizer_params_list[1]: empty dict"),
    (GENERATE, ["arch", "err_mst", [1], "{'loss': ['mse', 'nope']}", FIT_GRID], "22023", "compile_params_grid: loss: unknown loss 'nope'"),
    (GENERATE, ["arch", "err_mst", [1], RANDOM_GRID, FIT_GRID], "22023",
     "compile_params_grid: optimizer_params_list[0]: lr: [0.0001, 0.1, 'log'] is a distribution, which only random search samples"),
    # fit_params_grid
    (GENERATE, ["arch", "err_mst", [1], COMPILE_GRID, None], "22023", "fit_params_grid: expected a dict such as"),
    (GENERATE, ["arch", "err_mst", [1], COMPILE_GRID, "{'batch_size': 32}"], "22023", "fit_params_grid: batch_size: values must be given in a list"),
    (GENERATE, ["arch", "err_mst", [1], COMPILE_GRID, "{'batch_size': [32, -1]}"], "22023",
     "fit_params_grid: batch_size: batch_size must be an integer >= 1, got -1"),
    (GENERATE, ["arch", "err_mst", [1], COMPILE_GRID, "{'validation_split': [0.1]}"], "0A000",
     "fit_params_grid: validation_split is not accepted"),
    # search_type, num_configs, random_state, object_table
    (GENERATE_RANDOM, ["arch", "err_mst", [1], COMPILE_GRID, FIT_GRID, "bayes", None, None, None], "22023",
     "search_type: expected 'grid' or 'random' (or their start, such as 'rand'), got 'bayes'"),
    (GENERATE_RANDOM, ["arch", "err_mst", [1], COMPILE_GRID, FIT_GRID, "", None, None, None], "22023", "search_type: expected"),
    (GENERATE_RANDOM, ["arch", "err_mst", [1], COMPILE_GRID, FIT_GRID, "grid", 5, None, None], "22023",
     "num_configs: must be NULL for grid search"),
    (GENERATE_RANDOM, ["arch", "err_mst", [1], COMPILE_GRID, FIT_GRID, "grid", None, 3, None], "22023",
     "random_state: must be NULL for grid search"),
    (GENERATE_RANDOM, ["arch", "err_mst", [1], RANDOM_GRID, FIT_GRID, "random", None, 3, None], "22023",
     "num_configs: random search needs the number of configurations to draw, an integer >= 1, got NULL"),
    (GENERATE_RANDOM, ["arch", "err_mst", [1], RANDOM_GRID, FIT_GRID, "random", 0, 3, None], "22023", "got 0"),
    (f"SELECT {S}generate_model_configs(%s, %s, %s, %s, %s, object_table => %s)",
     ["arch", "err_mst", [1], COMPILE_GRID, FIT_GRID, "objs"], "42P01", "object_table: table 'objs' does not exist"),
]


@pytest.fixture(scope="module")
def bad_arch_tables(db):
    with db.cursor() as c:
        c.execute("CREATE TABLE arch_no_id (id INTEGER); CREATE TABLE arch_text_id (model_id TEXT)")


@pytest.mark.parametrize("sql, args, sqlstate, fragment", ERRORS, ids=[e[3][:60] for e in ERRORS])
def test_errors(db, cur, bad_arch_tables, sql, args, sqlstate, fragment):
    drop(cur, "err_mst")
    message = fails(cur, sql, args, sqlstate, fragment)
    assert message.startswith("madlib_dl: ")
    assert not exists(cur, "err_mst") and not exists(cur, "err_mst_summary")


def test_a_failure_after_creating_leaves_nothing(db, cur):
    # A valid compile string too long for the UNIQUE index fails in the INSERT, after CREATE TABLE:
    # the statement's rollback removes both tables.
    drop(cur, "mst_late")
    rng = random.Random(0)
    weights = ", ".join(repr(rng.random()) for _ in range(450))
    long_compile = f"loss='mse', optimizer='SGD', loss_weights=[{weights}]"
    assert len(long_compile) < 10_000
    parse_compile_params(long_compile)
    with pytest.raises(psycopg2.Error) as info:
        cur.execute(LOAD, ["arch", "mst_late", [1], [long_compile], [""]])
    assert info.value.pgcode == "54000", info.value.diag.message_primary  # index row size exceeds maximum
    assert not exists(cur, "mst_late") and not exists(cur, "mst_late_summary")


# ===================================================================================================
# Help overloads

@pytest.mark.parametrize("function", ["load_model_selection_table", "generate_model_configs"])
def test_help(cur, function):
    cur.execute(f"SELECT {S}{function}()")
    summary_text = cur.fetchone()[0]
    assert summary_text.startswith(f"{function}: make (or append to) a model selection table")
    for word in ("usage", "USAGE", "help", "?"):
        cur.execute(f"SELECT {S}{function}(%s)", [word])
        usage = cur.fetchone()[0]
        assert usage.startswith(f"{function}: make (or append to)") and "Usage:" in usage and "Example" in usage
    cur.execute(f"SELECT {S}{function}(NULL), {S}{function}('')")
    assert cur.fetchone() == (summary_text, summary_text)
    cur.execute(f"SELECT {S}{function}('colour')")
    assert cur.fetchone()[0].startswith(f"{function}: no help topic 'colour'. Use madlib_dl.{function}()")
    cur.execute("SELECT count(*) FROM pg_proc WHERE proname = %s AND pronamespace = 'madlib_dl'::regnamespace", [function])
    assert cur.fetchone()[0] == (4 if function == "load_model_selection_table" else 3)


# ===================================================================================================
# Every value checked at the door, as the plain role: what Keras would refuse (or train nonsense with)
# is refused naming the row or grid entry and the argument, before any table is made

@pytest.fixture(scope="module")
def plain(server, plain_role, db):
    """A connection to the module's database as the plain role, which may read its architecture tables."""
    server.grant_plain_role(db.info.dbname, plain_role)
    with db.cursor() as c:
        c.execute(f'GRANT SELECT ON arch, arch2 TO "{plain_role.name}"')
    with server.connect(db.info.dbname, user=plain_role) as connection:
        yield connection


@pytest.fixture
def pcur(plain):
    del plain.notices[:]
    with plain.cursor() as c:
        yield c


def _grid(entry: str) -> str:
    return "{'loss': ['mse'], 'optimizer_params_list': [" + entry + "]}"


VALUE_ERRORS = [
    # load_model_selection_table: the row (element of compile_params_list) and the argument
    (LOAD, [[COMPILE, "loss='mse', optimizer='Adam(lr=\"fast\")'"], [""]],
     "compile_params_list[2]: optimizer: Adam(lr='fast'): lr must be a number >= 0"),
    (LOAD, [["loss='mse', optimizer='Adam(lr=-0.1)'"], [""]],
     "compile_params_list[1]: optimizer: Adam(lr=-0.1): lr must be a number >= 0"),
    (LOAD, [["loss='mse', optimizer='SGD(lr=0.1, momentum=1.5)'"], [""]],
     "compile_params_list[1]: optimizer: SGD(momentum=1.5): momentum must be a number in [0, 1]"),
    (LOAD, [["loss='mse', optimizer='Adam(beta_1=\"high\")'"], [""]],
     "compile_params_list[1]: optimizer: Adam(beta_1='high'): beta_1 must be a number in [0, 1)"),
    (LOAD, [["loss='mse', optimizer='Adam(amsgrad=\"yes\")'"], [""]],
     "compile_params_list[1]: optimizer: Adam(amsgrad='yes'): amsgrad must be True or False"),
    (LOAD, [["loss='mse', optimizer='Adam(clipnorm=1.0, clipvalue=0.5)'"], [""]],
     "compile_params_list[1]: Adam(clipnorm=1.0, clipvalue=0.5): Only one of `clipnorm`, `clipvalue` and "
     "`global_clipnorm` can be set"),
    (LOAD, [[COMPILE], ["batch_size=32", "epochs=2, initial_epoch=2"]],
     "fit_params_list[2]: initial_epoch must be below epochs (2), got 2: the hop would train no epoch"),
    # generate_model_configs: the grid entry and the key
    (GENERATE, [_grid("{'optimizer': ['Adam'], 'lr': [0.01, 'fast']}"), "{}"],
     "compile_params_grid: optimizer_params_list[0]: optimizer: Adam(learning_rate='fast'): learning_rate must be a "
     "number >= 0"),
    (GENERATE, [_grid("{'optimizer': ['Adam']}, {'optimizer': ['SGD'], 'lr': [0.1], 'momentum': [0.9, -0.5]}"), "{}"],
     "compile_params_grid: optimizer_params_list[1]: optimizer: SGD(momentum=-0.5): momentum must be a number in [0, 1]"),
    (GENERATE, [_grid("{'optimizer': ['SGD', 'Adam'], 'nesterov': [True]}"), "{}"],
     "compile_params_grid: optimizer_params_list[0]: Adam has no argument nesterov"),
    (GENERATE, [_grid("{'optimizer': ['Adam'], 'clipnorm': [1.0], 'clipvalue': [0.5]}"), "{}"],
     "compile_params_grid: optimizer_params_list[0]: Adam(clipnorm=1.0, clipvalue=0.5): Only one of `clipnorm`"),
    (GENERATE, [COMPILE_GRID, "{'epochs': [1, 3], 'initial_epoch': [0, 2]}"],
     "fit_params_grid: initial_epoch: initial_epoch must be below epochs (1), got 2: the hop would train no epoch"),
    (GENERATE_RANDOM, [_grid("{'optimizer': ['Adam'], 'lr': [-0.1, 0.1, 'linear']}"), "{}", "random", 5, 1, None],
     "compile_params_grid: optimizer_params_list[0]: optimizer: Adam(learning_rate=-0.1): learning_rate must be a "
     "number >= 0"),
]


@pytest.mark.parametrize("sql, args, fragment", VALUE_ERRORS, ids=[e[2][:70] for e in VALUE_ERRORS])
def test_every_value_is_checked_before_anything_is_made(pcur, sql, args, fragment):
    drop(pcur, "mst_values")
    message = fails(pcur, sql, ["arch", "mst_values", [1], *args], "22023", fragment)
    assert message.startswith("madlib_dl: ")
    assert not exists(pcur, "mst_values") and not exists(pcur, "mst_values_summary")


def test_values_keras_takes_pass(pcur):
    """Integers where Keras wants floats (Keras 2 took them), and every argument at a bound it allows."""
    drop(pcur, "mst_bounds")
    pcur.execute(LOAD, ["arch", "mst_bounds", [1], [
        "loss='mse', optimizer='SGD(lr=1, momentum=0, nesterov=True)'",
        "loss='mse', optimizer='Adam(lr=0.5, beta_1=0, beta_2=0.999, epsilon=0, amsgrad=False, weight_decay=0)'",
        "loss='mse', optimizer='Adam(clipnorm=None, global_clipnorm=2, gradient_accumulation_steps=2)'",
        "loss='mse', optimizer='Ftrl(learning_rate_power=0, l1_regularization_strength=0.1)'",
        "loss='mse', optimizer='RMSprop(lr=0.01, decay=1e-6)'"], ["epochs=3, initial_epoch=2"]])
    assert len(rows(pcur, "mst_bounds")) == 5
    pcur.execute(GENERATE_RANDOM, ["arch", "mst_bounds", [1], _grid(
        "{'optimizer': ['Adam', 'Nadam'], 'lr': [1e-5, 1, 'log'], 'beta_1': [0.5, 0.99, 'log_near_one']}"),
        "{'batch_size': [1, 4096], 'epochs': [1, 5]}", "random", 20, 7, None])
    assert len(rows(pcur, "mst_bounds")) == 25
    drop(pcur, "mst_bounds")


def test_checking_a_large_grid_is_quick(server, plain_role, plain):
    """100 configurations, each with an optimizer of its own: every one is built with Keras (in a
    TensorFlow graph: TensorFlow's runtime does not start in the session). Timed in a new session, whose
    first check imports TensorFlow; then 100 other optimizers in that session; then the first 100 again
    (Keras took them already)."""
    def grid(step: float) -> str:
        rates = ", ".join(repr(round(step * i, 6)) for i in range(1, 51))
        return _grid("{'optimizer': ['Adam', 'SGD'], 'lr': [" + rates + "]}")

    seconds = []
    with server.connect(plain.info.dbname, user=plain_role) as fresh, fresh.cursor() as c:
        drop(c, "mst_large")
        for model_id, step in ((1, 0.001), (1, 0.00071), (2, 0.001)):
            started = time.monotonic()
            c.execute(GENERATE, ["arch", "mst_large", [model_id], grid(step), "{}"])
            seconds.append(time.monotonic() - started)
        assert len(rows(c, "mst_large")) == 300
        drop(c, "mst_large")
    print(f"generate_model_configs, 100 configurations with 100 distinct optimizers: {seconds[0]:.2f} s in a new "
          f"session (TensorFlow imported), {seconds[1]:.2f} s for 100 others in that session, {seconds[2]:.2f} s "
          "for the first 100 again")
    assert seconds[1] < 5
