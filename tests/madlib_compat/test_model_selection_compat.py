"""MADlib's madlib_keras_model_selection.sql_in (and the fit_multiple end-to-end part of
madlib_keras_model_selection_e2e.sql_in), on madlib_dl: generate_model_configs (grid size, random search,
appending to an existing table, a recreated summary, a mismatching arch table), load_model_selection_table
(Cartesian product, de-duplication of equal strings), and madlib_keras_fit_multiple_model's output
tables for as many, fewer and more configurations than segments, with and without caching, on one-hot
labels, NULL class values, schema-qualified tables and a temporary mst table. MADlib runs the training
part on Greenplum only; madlib_dl runs it on PostgreSQL (docs/fit-multiple.md)."""

from __future__ import annotations

import pytest

from compat import (S, create_iris, dl_schema, exists, fails, load_arch, mlp_json, pack_iris, persistent, row, rows,
                    scalar)

GRID_COMPILE = """
    {'loss': ['categorical_crossentropy'],
    'optimizer_params_list': [ {'optimizer': ['Adam', 'SGD'], 'lr': [0.0001, 0.1, %s]} ],
    'metrics': ['accuracy']}
"""
GRID_FIT = "{'batch_size': [8, 32], 'epochs': [4]}"
GEN = f"SELECT {S}generate_model_configs(%s, %s, %s, %s, %s"
LOAD = f"SELECT {S}load_model_selection_table(%s, %s, %s, %s, %s)"
CE = "loss='categorical_crossentropy'"
FIT_MULTIPLE = f"SELECT {S}madlib_keras_fit_multiple_model(%s, %s, %s, %s, FALSE"


@pytest.fixture(scope="module")
def data(db, admin):
    dl_schema(admin, db.info.user)
    with db.cursor() as c:
        create_iris(c)
        pack_iris(c, "iris_data_packed")
        c.execute(f"SELECT {S}training_preprocessor_dl('iris_data_one_hot_encoded', "
                  "'iris_data_one_hot_encoded_packed', 'class_one_hot_encoded', 'attributes', NULL, 1.0, NULL, '2')")
        c.execute(f"SELECT {S}validation_preprocessor_dl('iris_data_one_hot_encoded', "
                  "'iris_data_one_hot_encoded_val', 'class_one_hot_encoded', 'attributes', "
                  "'iris_data_one_hot_encoded_packed')")
        c.execute(f"SELECT {S}validation_preprocessor_dl('iris_data', 'iris_data_val', 'class_text', 'attributes', "
                  "'iris_data_packed')")
        load_arch(c, "iris_model_arch", mlp_json())
        load_arch(c, "iris_model_arch", mlp_json(hidden=6, seed=2))
    return db


def _drop(cur, *tables):
    cur.execute("DROP TABLE IF EXISTS " + ", ".join(f"{t}, {t}_summary" for t in tables))


# --- generate_model_configs ----------------------------------------------------------------------

def test_grid_search_size_and_summary(data, cur):
    cur.execute(GEN + ")", ["iris_model_arch", "mst_grid", [1, 2], GRID_COMPILE % "1", GRID_FIT])
    # 2 models x 2 optimizers x 3 learning rates x 2 batch sizes
    assert scalar(cur, "SELECT count(*) FROM mst_grid") == 24
    assert scalar(cur, "SELECT count(DISTINCT mst_key) FROM mst_grid") == 24
    assert row(cur, "SELECT model_arch_table, object_table FROM mst_grid_summary") == {
        "model_arch_table": "iris_model_arch", "object_table": None}


@pytest.mark.parametrize("model_ids, compile_grid, fit_grid", [
    ([-1, 2], GRID_COMPILE % "1", GRID_FIT),  # a model id that is not in the arch table
    ([1], "{foo='bar'}", "{batch_size='bar'}"),  # not parameters
], ids=["unknown_model_id", "invalid_params"])
def test_generate_refuses_bad_input(data, cur, model_ids, compile_grid, fit_grid):
    fails(cur, GEN + ")", ["iris_model_arch", "mst_bad", model_ids, compile_grid, fit_grid])
    assert not exists(cur, "mst_bad") and not exists(cur, "mst_bad_summary")


def test_random_search_appends(data, cur):
    cur.execute(GEN + ", 'random', 8)", ["iris_model_arch", "mst_rand", [1], GRID_COMPILE % "'log'", GRID_FIT])
    assert scalar(cur, "SELECT count(*) FROM mst_rand") == 8
    # MADlib recreates a dropped summary when appending. madlib_dl appends only to a table with its summary
    # (docs/model-selection-tables.md, "Appending"): refused, nothing added
    cur.execute("ALTER TABLE mst_rand_summary RENAME TO mst_rand_summary_saved")
    fails(cur, GEN + ", 'random', 7)", ["iris_model_arch", "mst_rand", [2], GRID_COMPILE % "'log'", GRID_FIT],
          match="summary")
    assert scalar(cur, "SELECT count(*) FROM mst_rand") == 8
    cur.execute("ALTER TABLE mst_rand_summary_saved RENAME TO mst_rand_summary")
    cur.execute(GEN + ", 'random', 7)", ["iris_model_arch", "mst_rand", [2], GRID_COMPILE % "'log'", GRID_FIT])
    assert scalar(cur, "SELECT model_arch_table FROM mst_rand_summary") == "iris_model_arch"
    assert scalar(cur, "SELECT count(*) FROM mst_rand") == 15
    cur.execute(GEN + ", 'random', 12)", ["iris_model_arch", "mst_rand", [1, 2], GRID_COMPILE % "'linear'",
                                         GRID_FIT])
    assert scalar(cur, "SELECT count(*) FROM mst_rand") == 27
    assert scalar(cur, "SELECT count(DISTINCT mst_key) FROM mst_rand") == 27
    # appending with another architecture table than the summary's is refused, and adds nothing
    cur.execute("CREATE TABLE other_arch AS SELECT * FROM iris_model_arch")
    fails(cur, GEN + ", 'random', 14)", ["other_arch", "mst_rand", [1, 2], GRID_COMPILE % "'log'", GRID_FIT])
    assert scalar(cur, "SELECT count(*) FROM mst_rand") == 27


# --- load_model_selection_table ------------------------------------------------------------------

def test_load_cartesian_product(data, cur):
    cur.execute(LOAD, ["iris_model_arch", "mst_load", [1],
                       [f"{CE},optimizer='Adam(lr=0.1)',metrics=['accuracy']",
                        f"{CE}, optimizer='Adam(lr=0.01)',metrics=['accuracy']",
                        f"{CE},optimizer='Adam(lr=0.001)',metrics=['accuracy']"],
                       ["batch_size=5,epochs=1", "batch_size=10,epochs=1"]])
    assert scalar(cur, "SELECT count(*) FROM mst_load") == 6
    assert scalar(cur, "SELECT model_arch_table FROM mst_load_summary") == "iris_model_arch"


@pytest.mark.parametrize("model_ids, compile_list, fit_list", [
    ([-1], [f"{CE},optimizer='Adam(lr=0.1)',metrics=['accuracy']"], ["batch_size=5,epochs=1"]),
    ([1], ["foo='bar'"], ["batch_size='bar'"]),
], ids=["unknown_model_id", "invalid_params"])
def test_load_refuses_bad_input(data, cur, model_ids, compile_list, fit_list):
    fails(cur, LOAD, ["iris_model_arch", "mst_load_bad", model_ids, compile_list, fit_list])
    assert not exists(cur, "mst_load_bad")


@pytest.mark.parametrize("compile_list, fit_list, expected", [
    # extra white space does not make a configuration different
    ([f"{CE},optimizer='Adam(lr=0.1)',metrics=['accuracy']",
      f"  {CE}, optimizer='Adam(lr=0.1)',metrics=['accuracy'] ",
      f"{CE},optimizer='Adam(lr=0.001)',metrics=['accuracy']"],
     ["batch_size=5,epochs=1", "batch_size=10,epochs=1"], 4),
    # nor does the order of the keys
    ([f"{CE},optimizer='Adam(lr=0.1)',metrics=['accuracy']",
      f"metrics=  ['accuracy'], {CE}, optimizer='Adam(lr=0.1)'",
      "loss='mse',optimizer='Adam(lr=0.001)', metrics=['accuracy']"],
     ["batch_size=5,epochs=1", "epochs=1, batch_size=5"], 2),
], ids=["white_space", "key_order"])
def test_load_deduplicates(data, cur, compile_list, fit_list, expected):
    _drop(cur, "mst_dedup")
    cur.execute(LOAD, ["iris_model_arch", "mst_dedup", [1], compile_list, fit_list])
    assert scalar(cur, "SELECT count(*) FROM mst_dedup") == expected


# --- madlib_keras_fit_multiple_model ---------------------------------------------------------------

ADAM = [f"{CE}, optimizer='Adam(lr=0.01)', metrics=['accuracy']",
        f"{CE}, optimizer='Adam(lr=0.001)', metrics=['accuracy']",
        f"{CE}, optimizer='Adam(lr=0.0001)', metrics=['accuracy']"]


@pytest.fixture(scope="module")
def msts(data):
    with data.cursor() as c:
        c.execute(LOAD, ["iris_model_arch", "mst_table", [1], ADAM, ["batch_size=8, epochs=1"]])  # 3 rows
        c.execute(LOAD, ["iris_model_arch", "mst_table_1row", [1], ADAM[:1], ["batch_size=16, epochs=1"]])
        c.execute(LOAD, ["iris_model_arch", "mst_table_4row", [1], ADAM[:2],
                         ["batch_size=16, epochs=1", "batch_size=32, epochs=1"]])
    return data


def _outputs(cur, name):
    cur.execute(f"DROP TABLE IF EXISTS {name}, {name}_summary, {name}_info")


@pytest.mark.parametrize("caching", [False, True], ids=["no_caching", "caching"])
def test_one_hot_encoded_input(msts, cur, caching):
    _outputs(cur, "iris_multiple_model")
    cur.execute(FIT_MULTIPLE + ", NULL, NULL, NULL, NULL, NULL, %s)",
                ["iris_data_one_hot_encoded_packed", "iris_multiple_model", "mst_table_4row", 3, caching])
    s = row(cur, "SELECT * FROM iris_multiple_model_summary")
    assert s["model_arch_table"] == "iris_model_arch" and s["validation_table"] is None
    assert s["model_info"] == "iris_multiple_model_info" and s["model"] == "iris_multiple_model"
    assert s["source_table"] == "iris_data_one_hot_encoded_packed"
    assert s["model_selection_table"] == "mst_table_4row" and s["object_table"] is None
    assert s["dependent_varname"] == ["class_one_hot_encoded"] and s["independent_varname"] == ["attributes"]
    assert s["madlib_version"] and s["num_iterations"] == 3
    assert s["start_training_time"] < s["end_training_time"]
    assert s["dependent_vartype"] == ["integer[]"]
    # madlib_dl: num_classes is the class count (MADlib wrote NULL here; docs/fit-multiple.md)
    assert s["num_classes"] == [3]
    assert s["class_one_hot_encoded_class_values"] is None
    assert s["normalizing_const"] == 1 and s["metrics_iters"] == [3]
    for table in ("iris_multiple_model", "iris_multiple_model_summary", "iris_multiple_model_info"):
        assert persistent(cur, table), table
    assert scalar(cur, "SELECT count(*) FROM iris_multiple_model_info") == 4


@pytest.mark.parametrize("caching", [False, True], ids=["no_caching", "caching"])
def test_as_many_configs_as_segments_with_validation(msts, cur, caching):
    """3 configurations; MADlib's test has 3 segments, here 3 configurations on 2 segments: every model
    still visits every segment each iteration."""
    _outputs(cur, "iris_mm_equal")
    cur.execute(FIT_MULTIPLE + ", 'iris_data_val', 1, NULL, NULL, NULL, %s)",
                ["iris_data_packed", "iris_mm_equal", "mst_table", 4, caching])
    s = row(cur, "SELECT * FROM iris_mm_equal_summary")
    assert s["source_table"] == "iris_data_packed" and s["validation_table"] == "iris_data_val"
    assert s["model"] == "iris_mm_equal" and s["model_info"] == "iris_mm_equal_info"
    assert s["dependent_varname"] == ["class_text"] and s["num_iterations"] == 4
    assert s["num_classes"] == [3]
    assert s["class_text_class_values"] == ["Iris-setosa", "Iris-versicolor", "Iris-virginica"]
    assert "char" in s["dependent_vartype"][0] and s["normalizing_const"] == 1
    assert s["name"] is None and s["description"] is None and s["metrics_compute_frequency"] == 1
    info = rows(cur, "SELECT * FROM iris_mm_equal_info ORDER BY mst_key")
    assert len(info) == 3
    assert sorted(r["compile_params"] for r in info) == sorted(ADAM)  # stored as written
    for r in info:
        assert r["model_id"] == 1 and r["model_type"] == "madlib_keras" and r["model_size"] > 0
        assert r["fit_params"] == "batch_size=8, epochs=1" and r["metrics_type"] == ["accuracy"]
        assert r["training_metrics_final"] >= 0 and r["training_loss_final"] >= 0
        assert r["validation_metrics_final"] >= 0 and r["validation_loss_final"] >= 0
        for key in ("training_metrics", "training_loss", "validation_metrics", "validation_loss",
                    "metrics_elapsed_time"):
            assert len(r[key]) == 4, key
    learner = next(r for r in info if "lr=0.01)" in r["compile_params"])
    assert learner["training_loss"][-1] - learner["training_loss"][0] < 0.1
    assert learner["training_metrics"][-1] - learner["training_metrics"][0] > -0.1


@pytest.mark.parametrize("caching", [False, True], ids=["no_caching", "caching"])
def test_fewer_configs_than_segments(msts, cur, caching):
    _outputs(cur, "iris_mm_less")
    cur.execute(FIT_MULTIPLE + ", NULL, 1, FALSE, 'multi_model_name', 'multi_model_descr', %s)",
                ["iris_data_packed", "iris_mm_less", "mst_table_1row", 3, caching])
    info = row(cur, "SELECT * FROM iris_mm_less_info")
    assert info["fit_params"] == "batch_size=16, epochs=1" and info["compile_params"] == ADAM[0]
    assert len(info["training_metrics"]) == len(info["training_loss"]) == len(info["metrics_elapsed_time"]) == 3
    assert info["metrics_elapsed_time"][2] > info["metrics_elapsed_time"][0]
    s = row(cur, "SELECT name, description, metrics_compute_frequency FROM iris_mm_less_summary")
    assert s == {"name": "multi_model_name", "description": "multi_model_descr", "metrics_compute_frequency": 1}


@pytest.mark.parametrize("caching", [False, True], ids=["no_caching", "caching"])
def test_more_configs_than_segments(msts, cur, caching):
    _outputs(cur, "iris_mm_more")
    cur.execute(FIT_MULTIPLE + ", NULL, NULL, NULL, NULL, NULL, %s)",
                ["iris_data_packed", "iris_mm_more", "mst_table_4row", 2, caching])
    info = rows(cur, "SELECT * FROM iris_mm_more_info")
    assert len(info) == 4
    assert scalar(cur, "SELECT count(*) FROM iris_mm_more WHERE model_weights IS NOT NULL") == 4
    for r in info:
        assert r["model_id"] == 1 and r["model_size"] > 0 and r["metrics_type"] == ["accuracy"]
        assert len(r["training_loss"]) == 1 and r["training_loss_final"] >= 0
    assert scalar(cur, "SELECT count(*) FROM iris_mm_more_info WHERE compile_params = %s AND "
                       "fit_params = 'batch_size=32, epochs=1'", [ADAM[0]]) == 1


def test_null_class_value_and_schema_qualified_tables(msts, cur):
    """MADlib edits the packed summary to hold a NULL class; here the data has NULL labels, which the
    preprocessor makes a class of its own (sorted first)."""
    cur.execute("CREATE TABLE iris_null AS SELECT id, attributes, CASE WHEN class_text = 'Iris-virginica' "
                "THEN NULL ELSE class_text END AS class_text FROM iris_data")
    cur.execute(f"SELECT {S}training_preprocessor_dl('iris_null', 'dl_schema.iris_null_packed', 'class_text', "
                "'attributes', NULL, 1.0, NULL, '2')")
    cur.execute(FIT_MULTIPLE + ", NULL, 1, FALSE)",
                ["dl_schema.iris_null_packed", "dl_schema.iris_mm_null", "mst_table_1row", 1])
    s = row(cur, "SELECT * FROM dl_schema.iris_mm_null_summary")
    assert s["num_classes"] == [3]
    assert s["class_text_class_values"] == [None, "Iris-setosa", "Iris-versicolor"]
    assert s["model"] == "dl_schema.iris_mm_null" and s["model_info"] == "dl_schema.iris_mm_null_info"
    assert scalar(cur, "SELECT count(*) FROM dl_schema.iris_mm_null") == 1


def test_temporary_mst_and_output_tables_end_to_end(msts, cur):
    """MADlib's e2e test keeps its mst table (and predict/evaluate outputs) in pg_temp. madlib_dl trains
    a run that reads temporary tables in the calling session (docs/fit-multiple.md), so this test lets
    the session choose (madlib_dl.executor 'auto' instead of the database's 'workers')."""
    cur.execute("SET madlib_dl.executor = 'auto'")
    try:
        cur.execute(LOAD, ["iris_model_arch", "pg_temp.mst_temp", [1],
                           [c.replace("'accuracy'", "'categorical_accuracy'") for c in ADAM],
                           ["batch_size=16, epochs=1"]])
        cur.execute(FIT_MULTIPLE + ")", ["iris_data_packed", "dl_schema.iris_mm_e2e", "pg_temp.mst_temp", 2])
        s = row(cur, "SELECT * FROM dl_schema.iris_mm_e2e_summary")
        assert s["model_info"] == "dl_schema.iris_mm_e2e_info" and s["num_iterations"] == 2
        cur.execute(f"SELECT {S}madlib_keras_predict('dl_schema.iris_mm_e2e', 'iris_data', 'id', 'attributes', "
                    "'pg_temp.iris_predict', 'prob', NULL, 1)")
        assert scalar(cur, "SELECT count(*) FROM pg_temp.iris_predict") == 3 * scalar(
            cur, "SELECT count(*) FROM iris_data")
        cur.execute(f"SELECT {S}madlib_keras_evaluate('dl_schema.iris_mm_e2e', 'iris_data_val', "
                    "'pg_temp.evaluate_out', NULL, 1)")
        e = row(cur, "SELECT * FROM pg_temp.evaluate_out")
        assert e["loss"] >= 0 and e["metric"] >= 0 and e["metrics_type"] == ["categorical_accuracy"]
    finally:
        cur.execute("RESET madlib_dl.executor")
