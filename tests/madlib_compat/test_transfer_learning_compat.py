"""MADlib's madlib_keras_transfer_learning.sql_in, on madlib_dl: warm start and transfer learning for
madlib_keras_fit (with a schema-qualified output table) and for madlib_keras_fit_multiple_model (which
MADlib runs on Greenplum only). As in MADlib's test, a copy of the architecture with every layer frozen
(trainable false) makes the check exact: trained from the earlier weights it learns nothing, so every
metrics iteration reports the earlier run's final loss and metric. Warm start with configurations removed
from and added to the mst table trains exactly the current ones."""

from __future__ import annotations

import pytest

from compat import S, create_iris, dl_schema, load_arch, mlp_json, pack_iris, persistent, row, rows, scalar

COMPILE = " loss='categorical_crossentropy', optimizer='adam', metrics=['accuracy'] "
FIT_PARAMS = " batch_size=5, epochs=3 "
FIT = f"SELECT {S}madlib_keras_fit('iris_packed', %s, 'iris_model_arch', %s, %s, %s, %s, NULL, NULL, 1"
FIT_MULTIPLE = f"SELECT {S}madlib_keras_fit_multiple_model('iris_packed', %s, %s, %s, FALSE, NULL, 1"
# 1e-5 rather than MADlib's 1e-6 / 1e-10: madlib_dl's per-iteration training values are running means
# over the hops (docs/fit-multiple.md, madlib_dl.training_metrics), equal to an evaluation of the frozen
# model up to float32 summation order
TOL = 1e-5


@pytest.fixture(scope="module")
def data(db, admin):
    dl_schema(admin, db.info.user)
    with db.cursor() as c:
        create_iris(c)
        pack_iris(c)
        load_arch(c, "iris_model_arch", mlp_json())  # 1: trainable
        load_arch(c, "iris_model_arch", mlp_json(trainable=False))  # 2: the same, every layer frozen
    return db


def test_fit_warm_start_and_transfer_learning(data, cur):
    cur.execute(FIT + ")", ["dl_schema.iris_model", 1, COMPILE, FIT_PARAMS, 5])
    first = row(cur, "SELECT * FROM dl_schema.iris_model_summary")
    assert len(first["training_loss"]) == len(first["training_metrics"]) == 5
    # it learns: the loss does not grow and the accuracy does not drop (MADlib's margins)
    assert first["training_loss"][4] - first["training_loss"][0] < 0.1
    assert first["training_metrics"][4] - first["training_metrics"][0] > -0.1

    # transfer learning's starting point: the learnt weights, into the frozen architecture
    cur.execute("UPDATE iris_model_arch SET model_weights = (SELECT model_weights FROM dl_schema.iris_model) "
                "WHERE model_id = 2")

    # warm start continues from dl_schema.iris_model with the frozen architecture (model id 2)
    cur.execute(FIT + ", TRUE)", ["dl_schema.iris_model", 2, COMPILE, FIT_PARAMS, 2])
    second = row(cur, "SELECT * FROM dl_schema.iris_model_summary")
    assert len(second["training_loss"]) == len(second["training_metrics"]) == 2
    for i in range(2):
        assert abs(first["training_loss_final"] - second["training_loss"][i]) < TOL
        assert abs(first["training_metrics_final"] - second["training_metrics"][i]) < TOL

    # transfer learning: a new model from the architecture table's model_weights
    cur.execute(FIT + ")", ["iris_model_transfer", 2, COMPILE, FIT_PARAMS, 2])
    third = row(cur, "SELECT * FROM iris_model_transfer_summary")
    assert len(third["training_loss"]) == 2
    for i in range(2):
        assert abs(first["training_loss_final"] - third["training_loss"][i]) < TOL
        assert abs(first["training_metrics_final"] - third["training_metrics"][i]) < TOL


def _mst(cur, table, model_ids, compile_list, fit_list, arch="iris_model_arch"):
    cur.execute(f"DROP TABLE IF EXISTS {table}, {table}_summary")
    cur.execute(f"SELECT {S}load_model_selection_table(%s, %s, %s, %s, %s)",
                [arch, table, model_ids, compile_list, fit_list])


def _info(cur, table):
    return {r["mst_key"]: r for r in rows(cur, f"SELECT * FROM {table}_info ORDER BY mst_key")}


def test_fit_multiple_warm_start(data, cur):
    _mst(cur, "mst_table", [1, 2], ["loss='categorical_crossentropy', optimizer='Adam(lr=0.001)',metrics=['accuracy']"],
         ["batch_size=5,epochs=1"])
    cur.execute(FIT_MULTIPLE + ")", ["iris_multiple_model", "mst_table", 3])
    first = _info(cur, "iris_multiple_model")
    cur.execute(FIT_MULTIPLE + ", TRUE)", ["iris_multiple_model", "mst_table", 3])
    for table in ("iris_multiple_model", "iris_multiple_model_summary", "iris_multiple_model_info"):
        assert persistent(cur, table), table
    assert scalar(cur, "SELECT warm_start FROM iris_multiple_model_summary") is True
    second = _info(cur, "iris_multiple_model")
    assert set(second) == set(first)
    frozen = [k for k, r in first.items() if r["model_id"] == 2]
    assert len(frozen) == 1
    for key, r in second.items():
        assert len(r["training_loss"]) == len(r["training_metrics"]) == 3  # the arrays restart
    for key in frozen:
        for i in range(2):
            assert abs(first[key]["training_loss_final"] - second[key]["training_loss"][i]) < TOL
            assert abs(first[key]["training_metrics_final"] - second[key]["training_metrics"][i]) < TOL


def test_fit_multiple_warm_start_with_changed_mst_table(data, cur):
    _mst(cur, "mst_table4", [1], ["loss='categorical_crossentropy', optimizer='Adam(lr=0.001)',metrics=['accuracy']"],
         ["batch_size=5,epochs=1", "batch_size=10,epochs=1", "batch_size=15,epochs=1", "batch_size=20,epochs=1"])
    cur.execute(FIT_MULTIPLE + ")", ["iris_mm4", "mst_table4", 2])
    assert scalar(cur, "SELECT array_agg(mst_key ORDER BY mst_key) FROM iris_mm4") == [1, 2, 3, 4]
    cur.execute("DELETE FROM mst_table4 WHERE mst_key = 4")
    cur.execute(FIT_MULTIPLE + ", TRUE)", ["iris_mm4", "mst_table4", 2])
    assert scalar(cur, "SELECT array_agg(mst_key ORDER BY mst_key) FROM iris_mm4") == [1, 2, 3]
    assert scalar(cur, "SELECT array_agg(mst_key ORDER BY mst_key) FROM iris_mm4_info") == [1, 2, 3]
    cur.execute("INSERT INTO mst_table4 SELECT 5, model_id, compile_params, 'batch_size=18, epochs=1' "
                "FROM mst_table4 WHERE mst_key = 1")
    cur.execute(FIT_MULTIPLE + ", TRUE)", ["iris_mm4", "mst_table4", 2])
    assert scalar(cur, "SELECT array_agg(mst_key ORDER BY mst_key) FROM iris_mm4") == [1, 2, 3, 5]
    assert scalar(cur, "SELECT array_agg(mst_key ORDER BY mst_key) FROM iris_mm4_info") == [1, 2, 3, 5]
    assert scalar(cur, "SELECT fit_params FROM iris_mm4_info WHERE mst_key = 5") == "batch_size=18, epochs=1"


def test_fit_multiple_transfer_learning(data, cur):
    cur.execute("CREATE TABLE tl_arch AS SELECT * FROM iris_model_arch WHERE model_id = 1")
    cur.execute("UPDATE tl_arch SET model_weights = NULL")
    _mst(cur, "mst_tl", [1], ["loss='categorical_crossentropy',optimizer='Adam(lr=0.01)',metrics=['accuracy']",
                              "loss='categorical_crossentropy', optimizer='Adam(lr=0.02)',metrics=['accuracy']"],
         ["batch_size=5,epochs=1"], arch="tl_arch")
    cur.execute(FIT_MULTIPLE + ")", ["iris_tl_first", "mst_tl", 3])
    first = _info(cur, "iris_tl_first")
    # the architecture's model_weights now hold mst_key 1's learnt weights: every mst of model 1 starts there
    cur.execute("UPDATE tl_arch SET model_weights = (SELECT model_weights FROM iris_tl_first WHERE mst_key = 1) "
                "WHERE model_id = 1")
    cur.execute(FIT_MULTIPLE + ")", ["iris_tl_second", "mst_tl", 3])
    second = _info(cur, "iris_tl_second")
    assert first[1]["training_loss_final"] - second[1]["training_loss_final"] > 1e-6
    # the first metrics iteration of the second run starts from trained weights, not random ones
    assert second[1]["training_loss"][0] < first[1]["training_loss"][0]
