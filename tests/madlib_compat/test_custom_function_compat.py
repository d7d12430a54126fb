"""MADlib's madlib_keras_custom_function.sql_in (and the custom-function parts of
madlib_keras_model_selection.sql_in and madlib_keras_model_selection_e2e.sql_in), on madlib_dl: the object
table load_custom_function creates, ids, duplicate names, deletion by id and by name, the table dropped
with its last function, the refusals (missing, empty or invalid tables, NULL or invalid objects and names),
load_top_k_accuracy_function's names, and training, evaluating and predicting with a custom loss and a
top-k metric through an mst table that names the object table. Also TensorBoard callbacks, which MADlib
allows superusers only.

Who may load code: MADlib requires a superuser. madlib_dl also lets members of madlib_dl_code_loader load
(docs/custom-functions.md, docs/security.md), so a loader role does it here, and alice, granted SELECT
on the table, trains with the functions; alice herself may not load (42501)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import dill
import psycopg2
import pytest

from compat import S, columns, create_iris, exists, fails, load_arch, mlp_json, pack_iris, row, scalar

LOADER = "dora"
TABLE = "test_custom_function_table"


def sum_fn(a, b):
    return a + b


def zero_loss(y_true, y_pred):
    import keras  # inside: pickled by value, runs in the server

    return 0.0 * keras.losses.categorical_crossentropy(y_true, y_pred)


def _blob(function) -> psycopg2.Binary:
    function.__module__ = "__main__"  # pickled by value, as a notebook's function is
    return psycopg2.Binary(dill.dumps(function, recurse=True))


@pytest.fixture(scope="module")
def loader(server, db):
    role = server.create_role(LOADER)
    with server.connect("postgres") as admin, admin.cursor() as c:
        c.execute(f"GRANT madlib_dl_code_loader TO {LOADER}")
    server.grant_plain_role(db.info.dbname, role)
    with server.connect(db.info.dbname, user=role) as conn, conn.cursor() as c:
        yield c


def _load(cur, name, obj=None, description="returns sum", table=TABLE):
    cur.execute(f"SELECT {S}load_custom_function(%s, %s, %s, %s)",
                [table, _blob(sum_fn) if obj is None else obj, name, description])


def test_object_table_layout(loader):
    loader.execute(f"DROP TABLE IF EXISTS {TABLE}")
    _load(loader, "sum_fn")
    types = columns(loader, TABLE)
    assert (types["id"], types["object"], types["name"], types["description"]) == ("integer", "bytea", "text", "text")
    r = row(loader, f"SELECT * FROM {TABLE}")
    assert r["id"] == 1 and r["name"] == "sum_fn" and r["description"] == "returns sum"
    assert dill.loads(bytes(r["object"]))(2, 3) == 5  # the function itself was stored


def test_insert_duplicate_and_delete(loader):
    loader.execute(f"DROP TABLE IF EXISTS {TABLE}")
    _load(loader, "sum_fn")
    _load(loader, "sum_fn1", description=None)
    assert scalar(loader, f"SELECT name FROM {TABLE} WHERE id = 2") == "sum_fn1"
    fails(loader, f"SELECT {S}load_custom_function(%s, %s, 'sum_fn1')", [TABLE, _blob(sum_fn)])
    loader.execute(f"SELECT {S}delete_custom_function(%s, 2)", [TABLE])
    assert scalar(loader, f"SELECT count(*) FROM {TABLE} WHERE id = 2") == 0
    _load(loader, "sum_fn1")
    loader.execute(f"SELECT {S}delete_custom_function(%s, 'sum_fn1')", [TABLE])
    assert scalar(loader, f"SELECT count(*) FROM {TABLE} WHERE name = 'sum_fn1'") == 0
    fails(loader, f"SELECT {S}delete_custom_function(%s, 2)", [TABLE])  # already deleted
    loader.execute(f"SELECT {S}delete_custom_function(%s, 1)", [TABLE])
    assert not exists(loader, TABLE)  # dropped with its last function


def test_empty_missing_and_invalid_tables(loader):
    _load(loader, "sum_fn")
    loader.execute(f"DELETE FROM {TABLE}")
    fails(loader, f"SELECT {S}delete_custom_function(%s, 1)", [TABLE])  # empty
    loader.execute(f"DROP TABLE {TABLE}")
    fails(loader, f"SELECT {S}delete_custom_function(%s, 1)", [TABLE])  # missing
    _load(loader, "sum_fn")
    loader.execute(f"ALTER TABLE {TABLE} DROP COLUMN id")
    fails(loader, f"SELECT {S}delete_custom_function(%s, 2)", [TABLE])
    fails(loader, f"SELECT {S}load_custom_function(%s, %s, 'sum_fn2', 'returns sum')", [TABLE, _blob(sum_fn)])
    loader.execute(f"DROP TABLE {TABLE}")


@pytest.mark.parametrize("name, obj", [
    (None, "sum"),  # name NULL
    ("sum_fn", None),  # object NULL
    ("sum_fn", psycopg2.Binary(b"invalid_obj")),  # not a pickle
], ids=["null_name", "null_object", "invalid_object"])
def test_input_validation(loader, name, obj):
    loader.execute(f"DROP TABLE IF EXISTS {TABLE}")
    fails(loader, f"SELECT {S}load_custom_function(%s, %s, %s, NULL)",
          [TABLE, _blob(sum_fn) if obj == "sum" else obj, name])
    assert not exists(loader, TABLE)


def test_null_description_and_null_id(loader):
    loader.execute(f"DROP TABLE IF EXISTS {TABLE}")
    loader.execute(f"SELECT {S}load_custom_function(%s, %s, 'sum_fn', NULL)", [TABLE, _blob(sum_fn)])
    assert row(loader, f"SELECT name, description FROM {TABLE}") == {"name": "sum_fn", "description": None}
    fails(loader, f"SELECT {S}delete_custom_function(%s, NULL::integer)", [TABLE])
    assert scalar(loader, f"SELECT count(*) FROM {TABLE}") == 1


def test_top_k_accuracy_names(loader):
    loader.execute(f"DROP TABLE IF EXISTS {TABLE}")
    for k in (3, 7, 4, 8):
        loader.execute(f"SELECT {S}load_top_k_accuracy_function(%s, %s)", [TABLE, k])
    assert scalar(loader, f"SELECT array_agg(name ORDER BY id) FROM {TABLE}") == [
        "top_3_accuracy", "top_7_accuracy", "top_4_accuracy", "top_8_accuracy"]
    for k in (0, -1):
        fails(loader, f"SELECT {S}load_top_k_accuracy_function(%s, %s)", [TABLE, k])
    assert scalar(loader, f"SELECT count(*) FROM {TABLE}") == 4


def test_names_that_are_not_table_names_are_refused(loader):
    fails(loader, f"SELECT {S}load_custom_function(%s, %s, 'sum_fn', 'returns sum')",
          [f"{TABLE} UNION pg_temp.temp1", _blob(sum_fn)])


def test_a_plain_role_may_not_load(loader, cur):
    error = fails(cur, f"SELECT {S}load_custom_function('alice_functions', %s, 'sum_fn')", [_blob(sum_fn)])
    assert error.pgcode == "42501"
    assert not exists(cur, "alice_functions")


# --- training with custom functions ------------------------------------------------------------------

CE = "loss='categorical_crossentropy'"


@pytest.fixture(scope="module")
def trained(loader, db):
    loader.execute("DROP TABLE IF EXISTS objects")
    loader.execute(f"SELECT {S}load_custom_function('objects', %s, 'test_custom_fn', 'returns 0')",
                   [_blob(zero_loss)])
    loader.execute(f"SELECT {S}load_top_k_accuracy_function('objects', 4)")
    loader.execute(f"GRANT SELECT ON objects TO {db.info.user}")
    with db.cursor() as c:
        create_iris(c)
        pack_iris(c)
        c.execute(f"SELECT {S}validation_preprocessor_dl('iris_data', 'iris_val', 'class_text', 'attributes', "
                  "'iris_packed')")
        load_arch(c, "iris_model_arch", mlp_json())
    return db


def test_mst_table_with_a_missing_object_table_is_refused(trained, cur):
    fails(cur, f"SELECT {S}load_model_selection_table('iris_model_arch', 'mst_object_table', ARRAY[1], %s, %s, "
               "'no_such_objects')", [[f"{CE}, optimizer='Adam(lr=0.01)', metrics=['accuracy']"],
                                      ["batch_size=16, epochs=1"]])
    assert not exists(cur, "mst_object_table")


def test_custom_loss_and_top_k_metric_end_to_end(trained, cur):
    cur.execute(f"SELECT {S}load_model_selection_table('iris_model_arch', 'mst_object_table', ARRAY[1], %s, %s, "
                "'objects')", [[f"{CE}, optimizer='Adam(lr=0.01)', metrics=['categorical_accuracy']",
                                "loss='test_custom_fn', optimizer='Adam(lr=0.001)', metrics=['top_4_accuracy']"],
                               ["batch_size=16, epochs=1"]])
    assert scalar(cur, "SELECT object_table FROM mst_object_table_summary") is not None
    cur.execute(f"SELECT {S}madlib_keras_fit_multiple_model('iris_packed', 'mm_custom', 'mst_object_table', 2, "
                "FALSE, 'iris_val', 1)")
    assert scalar(cur, "SELECT object_table FROM mm_custom_summary") is not None
    info = row(cur, "SELECT * FROM mm_custom_info WHERE compile_params LIKE '%test_custom_fn%'")
    assert info["metrics_type"] == ["top_4_accuracy"] and info["loss_type"] == "test_custom_fn"
    assert len(info["training_metrics"]) == len(info["validation_loss"]) == len(info["metrics_elapsed_time"]) == 2
    # the loss really is the custom one (0 x crossentropy), and top-4 of 3 classes is always right
    assert info["training_loss_final"] == 0 and info["validation_loss_final"] == 0
    assert info["validation_metrics_final"] == pytest.approx(1.0)
    key = info["mst_key"]
    cur.execute(f"SELECT {S}madlib_keras_evaluate('mm_custom', 'iris_val', 'evaluate_custom', NULL, %s)", [key])
    e = row(cur, "SELECT * FROM evaluate_custom")
    assert e["metrics_type"] == ["top_4_accuracy"] and e["loss_type"] == "test_custom_fn"
    assert e["metric"] == pytest.approx(1.0) and e["loss"] == 0
    cur.execute(f"SELECT {S}madlib_keras_predict('mm_custom', 'iris_data', 'id', 'attributes', 'predict_custom', "
                "'prob', NULL, %s)", [key])
    assert scalar(cur, "SELECT count(*) FROM predict_custom") == 3 * scalar(cur, "SELECT count(*) FROM iris_data")


def test_fit_with_a_custom_loss_needs_the_object_table(trained, cur):
    fit = (f"SELECT {S}madlib_keras_fit('iris_packed', %s, 'iris_model_arch', 1, "
           "$$loss='test_custom_fn', optimizer='Adam(lr=0.01)', metrics=['top_4_accuracy']$$, "
           "'batch_size=8, epochs=1', 1")
    fails(cur, fit + ")", ["fit_custom_bad"])
    assert not exists(cur, "fit_custom_bad")
    cur.execute(fit + ", object_table => 'objects')", ["fit_custom"])
    s = row(cur, "SELECT * FROM fit_custom_summary")
    assert s["loss_type"] == "test_custom_fn" and s["metrics_type"] == ["top_4_accuracy"]
    assert s["training_loss_final"] == 0 and s["training_metrics_final"] == pytest.approx(1.0)


# --- callbacks -------------------------------------------------------------------------------------

def test_tensorboard_callback_as_superuser(trained, admin, cur):
    """MADlib accepts callbacks=[TensorBoard(...)] from superusers only; so does madlib_dl (and from
    members of madlib_dl_code_loader). madlib_dl logs each hop in <log_dir>/mst_key_1/segment_<s>
    (docs/parameters.md)."""
    log_dir = Path(tempfile.mkdtemp(prefix="madlib_compat_tb_"))
    try:
        if os.geteuid() == 0:
            shutil.chown(log_dir, "postgres", "postgres")
        fit_params = f"batch_size=8, epochs=1, callbacks=[TensorBoard(log_dir='{log_dir}', histogram_freq=1)]"
        fit = (f"SELECT {S}madlib_keras_fit('iris_packed', %s, 'iris_model_arch', 1, "
               f"$${CE}, optimizer='Adam(lr=0.01)', metrics=['accuracy']$$, %s, 2)")
        error = fails(cur, fit, ["tb_alice", fit_params])
        assert error.pgcode == "42501"
        assert not exists(cur, "tb_alice")
        admin.execute(fit, ["tb_super", fit_params])
        assert scalar(admin, "SELECT fit_params FROM tb_super_summary") == fit_params
        segments = sorted(p.name for p in (log_dir / "mst_key_1").iterdir())
        assert segments == ["segment_0", "segment_1"]
        assert all(any(f.is_file() for f in (log_dir / "mst_key_1" / s).rglob("*")) for s in segments)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
