"""Custom losses and metrics (object tables) on a real server, as MADlib users have them: a trusted role
(carol, a member of madlib_dl_code_loader) loads dill-pickled functions; the plain role alice, granted
SELECT on the table, trains with them in fit (background workers and in process), fit_multiple,
evaluate and predict. Proof that the functions run: a loss that is twice categorical crossentropy
reports twice its loss (learning rate 0: the weights stay put), and top_1_accuracy equals accuracy.

The attacks: alice may not load code; a table alice can write to, or owns, is refused at every use
(after it was used fine), and a pickle that would run code on loading never runs.
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import uuid
from pathlib import Path

import dill
import psycopg2
import pytest

import digits_data

S = "madlib_dl."
LOADER = "carol"
SGD_LR0 = "optimizer='SGD(learning_rate=0.0)'"
CE = f"loss='categorical_crossentropy', {SGD_LR0}, metrics=['accuracy']"
DOUBLE = f"loss='double_ce', {SGD_LR0}, metrics=['top_1_accuracy']"
FIT = ("SELECT madlib_dl.madlib_keras_fit('train_packed', %s, 'arch', 1, %s, 'batch_size=50, epochs=1', 1, "
       "object_table => %s)")


def double_ce(y_true, y_pred):
    import keras  # inside: the function is pickled by value and runs in the server

    return 2.0 * keras.losses.categorical_crossentropy(y_true, y_pred)


def _blob(function) -> psycopg2.Binary:
    function.__module__ = "__main__"  # as a notebook's function is: pickled by value, not by import
    return psycopg2.Binary(dill.dumps(function, recurse=True))


class RunsOnLoad:
    """A pickle that runs code when unpickled: what an attacker would put in an object table."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def loader(server):
    role = server.create_role(LOADER)
    with server.connect("postgres") as admin, admin.cursor() as cur:
        cur.execute(f"GRANT madlib_dl_code_loader TO {LOADER}")
    return role


@pytest.fixture(scope="module")
def db(server, plain_role, loader):
    with server.fresh_database("custom_functions", plain_role=plain_role) as name:
        server.grant_plain_role(name, loader)
        with server.connect(name, user=plain_role) as conn, conn.cursor() as cur:
            digits_data.create_table(cur)
            cur.execute("DELETE FROM digits WHERE id >= 300")
            cur.execute("SELECT madlib_dl.training_preprocessor_dl('digits', 'train_packed', 'label', 'pixels', 50, "
                        "16.0, NULL, '2')")
            cur.execute("SELECT madlib_dl.load_keras_model('arch', %s::json)", [digits_data.mlp_json(16)])
            cur.execute(f"GRANT SELECT ON train_packed, train_packed_summary, arch TO {LOADER}")
        with server.connect(name, user=loader) as conn, conn.cursor() as cur:
            cur.execute("SELECT madlib_dl.load_custom_function('public.objects', %s, 'double_ce', 'twice CE')",
                        [_blob(double_ce)])
            cur.execute("SELECT madlib_dl.load_top_k_accuracy_function('public.objects', 1)")
            cur.execute(f"GRANT SELECT ON public.objects TO {plain_role.name}")
        yield name


@pytest.fixture
def alice(server, db, plain_role):
    with server.connect(db, user=plain_role) as conn, conn.cursor() as cur:
        yield cur


@pytest.fixture
def carol(server, db, loader):
    with server.connect(db, user=loader) as conn, conn.cursor() as cur:
        yield cur


def _summary(cur, model):
    cur.execute(f"SELECT s.object_table, s.metrics_type, s.loss_type, s.training_loss_final AS loss, "
                f"s.training_metrics_final AS metric FROM {model}_summary s")
    return dict(zip([d[0] for d in cur.description], cur.fetchone()))


def _fit(cur, model, compile_params, object_table, executor="workers"):
    cur.execute("SET madlib_dl.executor = %s", [executor])
    cur.execute(f"DROP TABLE IF EXISTS {model}, {model}_summary")
    cur.execute(FIT, [model, compile_params, object_table])
    return _summary(cur, model)


def _tables(cur) -> set:
    cur.execute("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'")
    return {r[0] for r in cur.fetchall()}


@pytest.mark.parametrize("executor", ["workers", "in_process"])
def test_a_custom_loss_and_metric_run_in_fit(alice, executor):
    builtin = _fit(alice, "m_ce", CE, None, executor)
    custom = _fit(alice, "m_double", DOUBLE, "public.objects", executor)
    assert custom["object_table"] == "public.objects"
    assert custom["metrics_type"] == ["top_1_accuracy"] and custom["loss_type"] == "double_ce"
    assert math.isclose(custom["loss"], 2 * builtin["loss"], rel_tol=1e-5)
    assert math.isclose(custom["metric"], builtin["metric"], rel_tol=1e-6)


def test_fit_multiple_evaluate_and_predict_with_custom_functions(alice):
    alice.execute("SET madlib_dl.executor = 'workers'")
    alice.execute("DROP TABLE IF EXISTS mst, mst_summary, out, out_summary, out_info, ev, pred")
    alice.execute("SELECT madlib_dl.load_model_selection_table('arch', 'mst', ARRAY[1], %s, "
                  "ARRAY['batch_size=50, epochs=1'], 'objects')", [[CE, DOUBLE]])
    alice.execute("SELECT object_table FROM mst_summary")
    assert alice.fetchone()[0] == "public.objects"
    alice.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('train_packed', 'out', 'mst', 1, FALSE)")
    alice.execute("SELECT mst_key, loss_type, training_loss_final, training_metrics_final FROM out_info ORDER BY 1")
    (_, ce_type, ce_loss, ce_metric), (double_key, double_type, double_loss, double_metric) = alice.fetchall()
    assert (ce_type, double_type) == ("categorical_crossentropy", "double_ce")
    assert math.isclose(double_loss, 2 * ce_loss, rel_tol=1e-5) and math.isclose(double_metric, ce_metric)
    alice.execute("SELECT object_table FROM out_summary")
    assert alice.fetchone()[0] == "public.objects"
    alice.execute("SELECT madlib_dl.madlib_keras_evaluate('out', 'train_packed', 'ev', FALSE, %s)", [double_key])
    alice.execute("SELECT loss, metric, metrics_type, loss_type FROM ev")
    loss, metric, metrics_type, loss_type = alice.fetchone()
    assert math.isclose(loss, double_loss, rel_tol=1e-5) and math.isclose(metric, double_metric)
    assert (metrics_type, loss_type) == (["top_1_accuracy"], "double_ce")
    alice.execute("SELECT madlib_dl.madlib_keras_predict('out', 'digits', 'id', 'pixels', 'pred', 'response', "
                  "FALSE, %s)", [double_key])
    alice.execute("SELECT count(*) FROM pred")
    assert alice.fetchone()[0] == 300


def test_generate_model_configs_takes_custom_names_in_its_grid(alice):
    alice.execute("DROP TABLE IF EXISTS mst_grid, mst_grid_summary")
    alice.execute("SELECT madlib_dl.generate_model_configs('arch', 'mst_grid', ARRAY[1], "
                  "$${'loss': ['double_ce', 'categorical_crossentropy'], 'metrics': ['top_1_accuracy'], "
                  "'optimizer_params_list': [{'optimizer': ['SGD'], 'lr': [0.1]}]}$$, $${'batch_size': [50]}$$, "
                  "object_table => 'objects')")
    alice.execute("SELECT compile_params FROM mst_grid ORDER BY mst_key")
    assert [r[0] for r in alice.fetchall()][0].count("double_ce") == 1
    with pytest.raises(psycopg2.errors.InvalidParameterValue, match="unknown loss 'triple_ce'"):
        alice.execute("SELECT madlib_dl.generate_model_configs('arch', 'mst_grid2', ARRAY[1], "
                      "$${'loss': ['triple_ce']}$$, $${'batch_size': [50]}$$, object_table => 'objects')")


def test_automl_trains_with_custom_functions(alice):
    alice.execute("SET madlib_dl.executor = 'workers'")
    alice.execute("DROP TABLE IF EXISTS am, am_summary, am_info, am_mst, am_mst_summary")
    alice.execute("SELECT madlib_dl.madlib_keras_automl('train_packed', 'am', 'arch', 'am_mst', ARRAY[1], "
                  "$${'loss': ['double_ce'], 'metrics': ['top_1_accuracy'], "
                  "'optimizer_params_list': [{'optimizer': ['SGD'], 'lr': [0.1, 0.01]}]}$$, "
                  "$${'batch_size': [50]}$$, 'hyperband', 'R=2, eta=2, skip_last=1', 7, 'objects')")
    alice.execute("SELECT DISTINCT loss_type FROM am_info")
    assert alice.fetchall() == [("double_ce",)]
    alice.execute("SELECT object_table FROM am_mst_summary")
    assert alice.fetchone()[0] == "public.objects"


def test_a_name_without_object_table_or_unknown_is_refused(alice):
    with pytest.raises(psycopg2.errors.InvalidParameterValue, match="unknown loss 'double_ce'") as raised:
        _fit(alice, "m_none", DOUBLE, None)
    assert "load_custom_function" in raised.value.diag.message_hint
    with pytest.raises(psycopg2.errors.InvalidParameterValue, match=r"unknown loss 'nope'.*function of the object"):
        _fit(alice, "m_none", DOUBLE.replace("double_ce", "nope"), "objects")
    with pytest.raises(psycopg2.errors.UndefinedTable, match="object_table: table 'missing' does not exist"):
        _fit(alice, "m_none", DOUBLE, "missing")
    assert "m_none" not in _tables(alice)


def test_only_trusted_roles_load_code(alice, carol):
    before = _tables(alice)
    for call, args in (("load_custom_function('mine', %s, 'f')", [_blob(double_ce)]),
                       ("load_top_k_accuracy_function('mine', 3)", []),
                       ("delete_custom_function('objects', 'double_ce')", [])):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="alice.* may not load or delete") as raised:
            alice.execute(f"SELECT madlib_dl.{call}", args)
        assert "GRANT madlib_dl_code_loader" in raised.value.diag.message_hint
    assert _tables(alice) == before


def test_load_and_delete_check_their_arguments(carol):
    carol.execute("DROP TABLE IF EXISTS scratch")
    with pytest.raises(psycopg2.errors.InvalidParameterValue, match="object: not a dill-pickled function"):
        carol.execute("SELECT madlib_dl.load_custom_function('scratch', 'not a pickle'::bytea, 'f')")
    with pytest.raises(psycopg2.errors.InvalidParameterValue, match="object: not a function but a list"):
        carol.execute("SELECT madlib_dl.load_custom_function('scratch', %s, 'f')", [psycopg2.Binary(dill.dumps([1]))])
    with pytest.raises(psycopg2.errors.InvalidParameterValue, match="name: 'mse' is the name of a Keras built-in"):
        carol.execute("SELECT madlib_dl.load_custom_function('scratch', %s, 'mse')", [_blob(double_ce)])
    with pytest.raises(psycopg2.errors.InvalidParameterValue, match="k: expected a positive integer, got 0"):
        carol.execute("SELECT madlib_dl.load_top_k_accuracy_function('scratch', 0)")
    assert "scratch" not in _tables(carol)
    carol.execute("SELECT madlib_dl.load_custom_function('scratch', %s, 'f', 'first')", [_blob(double_ce)])
    carol.execute("SELECT madlib_dl.load_top_k_accuracy_function('scratch', 3)")
    with pytest.raises(psycopg2.errors.DuplicateTable, match="name: function 'f' already exists in 'scratch'"):
        carol.execute("SELECT madlib_dl.load_custom_function('scratch', %s, 'f')", [_blob(double_ce)])
    carol.execute("SELECT id, name, description FROM scratch ORDER BY id")
    rows = carol.fetchall()
    assert [(r[1], r[2]) for r in rows] == [("f", "first"), ("top_3_accuracy", "top-3 categorical accuracy")]
    with pytest.raises(psycopg2.errors.InvalidParameterValue, match="name: no function with name 'g'"):
        carol.execute("SELECT madlib_dl.delete_custom_function('scratch', 'g')")
    carol.execute("SELECT madlib_dl.delete_custom_function('scratch', %s)", [rows[0][0]])
    carol.execute("SELECT madlib_dl.delete_custom_function('scratch', 'top_3_accuracy')")
    assert "scratch" not in _tables(carol)  # left empty: dropped


def test_a_table_another_role_can_write_to_is_refused_at_use(alice, carol):
    _fit(alice, "m_ok", DOUBLE, "objects")  # fine until ...
    carol.execute("GRANT INSERT ON objects TO alice")
    try:
        for executor in ("workers", "in_process"):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege,
                               match=r"object_table: 'objects' cannot hold custom functions: role\(s\) 'alice' can "
                                     "write to it"):
                _fit(alice, "m_writable", DOUBLE, "objects", executor)
    finally:
        carol.execute("REVOKE INSERT ON objects FROM alice")
    carol.execute("GRANT UPDATE (object) ON objects TO PUBLIC")  # a column grant, to every role
    try:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="cannot hold custom functions: role"):
            _fit(alice, "m_writable", DOUBLE, "objects")
    finally:
        carol.execute("REVOKE UPDATE (object) ON objects FROM PUBLIC")
    assert "m_writable" not in _tables(alice)


def test_a_table_of_an_untrusted_owner_never_unpickles(alice, carol):
    """alice makes an object table of her own holding a pickle that runs a command when loaded."""
    control = Path(f"/tmp/madlib_dl_control-{uuid.uuid4().hex}")
    with pytest.raises(psycopg2.errors.InvalidParameterValue, match="object: not a function"):
        carol.execute("SELECT madlib_dl.load_custom_function('scratch2', %s, 'f')",
                      [psycopg2.Binary(pickle.dumps(RunsOnLoad(str(control))))])
    assert control.exists()  # the control: a trusted loader's call does unpickle, and the marker appears
    control.unlink()
    marker = Path(f"/tmp/madlib_dl_pwned-{uuid.uuid4().hex}")
    alice.execute("DROP TABLE IF EXISTS own_objects")
    alice.execute("CREATE TABLE own_objects (id SERIAL, name TEXT PRIMARY KEY, description TEXT, object BYTEA)")
    alice.execute("INSERT INTO own_objects (name, object) VALUES ('double_ce', %s)",
                  [psycopg2.Binary(pickle.dumps(RunsOnLoad(str(marker))))])
    for executor in ("workers", "in_process"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege,
                           match="object_table: 'own_objects' cannot hold custom functions: its owner 'alice' is "
                                 "neither a superuser nor a member of madlib_dl_code_loader"):
            _fit(alice, "m_attack", DOUBLE, "own_objects", executor)
    with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="its owner 'alice'"):
        alice.execute("SELECT madlib_dl.load_model_selection_table('arch', 'mst_attack', ARRAY[1], %s, "
                      "ARRAY['batch_size=50'], 'own_objects')", [[DOUBLE]])
    assert not marker.exists()
    assert not {"m_attack", "mst_attack"} & _tables(alice)


def test_a_model_selection_table_naming_an_untrusted_table_is_refused(alice, carol):
    """alice edits her mst table's summary to point at her own table: fit_multiple checks it too."""
    alice.execute("DROP TABLE IF EXISTS mst_edit, mst_edit_summary, own2, out_edit, out_edit_summary, out_edit_info")
    alice.execute("SELECT madlib_dl.load_model_selection_table('arch', 'mst_edit', ARRAY[1], %s, "
                  "ARRAY['batch_size=50'], 'objects')", [[DOUBLE]])
    alice.execute("CREATE TABLE own2 (id SERIAL, name TEXT PRIMARY KEY, description TEXT, object BYTEA)")
    alice.execute("INSERT INTO own2 SELECT * FROM objects")
    alice.execute("UPDATE mst_edit_summary SET object_table = 'public.own2'")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="'public.own2' cannot hold custom functions"):
        alice.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('train_packed', 'out_edit', 'mst_edit', 1, FALSE)")
    assert "out_edit" not in _tables(alice)


def test_a_role_without_select_cannot_use_the_table(server, db):
    bob = server.create_role("bob_custom")
    server.grant_plain_role(db, bob)
    with server.connect(db, user=bob) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="object_table: permission denied to read"):
            cur.execute(FIT, ["m_bob", DOUBLE, "public.objects"])


# ---------------------------------------------------------------------------------------------------
# callbacks: TensorBoard writes files as the server's OS user, so it takes the same trust

TENSORBOARD_FIT = "SELECT madlib_dl.madlib_keras_fit('train_packed', %s, 'arch', 1, %s, %s, 2)"


def _tensorboard(log_dir: Path, more: str = "") -> str:
    return f"batch_size=50, epochs=1, callbacks=[TensorBoard(log_dir='{log_dir}'{more})]"


def _scalars(directory: Path) -> dict:
    """tag -> [(step, value)] of every event file under ``directory``."""
    import tensorflow as tf

    found: dict = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)  # a scalar, or a histogram's (left, right, count) rows
                found.setdefault(value.tag, []).append((event.step, float(array) if array.ndim == 0 else array))
    return found


@pytest.fixture
def log_dir():
    """A directory of the server's for TensorBoard (the server's OS user writes it), removed afterwards."""
    path = Path(f"/tmp/madlib_dl_tb-{uuid.uuid4().hex}")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("executor, histograms", [("workers", False), ("in_process", True)])
def test_tensorboard_logs_each_hop_of_each_segment(carol, executor, histograms, log_dir):
    carol.execute("SET madlib_dl.executor = %s", [executor])
    carol.execute("DROP TABLE IF EXISTS m_tb, m_tb_summary")
    carol.execute(TENSORBOARD_FIT, ["m_tb", CE, _tensorboard(log_dir, ", histogram_freq=2" if histograms else "")])
    carol.execute("SELECT segment, loss FROM madlib_dl.last_fit_hops() WHERE kind = 'train' ORDER BY started")
    hops = carol.fetchall()
    for segment in (0, 1):
        logged = _scalars(log_dir / "mst_key_1" / f"segment_{segment}")
        weights = {tag for tag in logged if not tag.startswith("epoch_")}
        assert set(logged) - weights == {"epoch_loss", "epoch_accuracy"}
        assert len(weights) == (4 if histograms else 0)  # 2 Dense layers' kernels and biases, at step 2 only
        assert all([step for step, _ in logged[tag]] == [2] for tag in weights)
        assert all(logged[tag][0][1][:, 2].sum() in (16, 64 * 16, 10, 16 * 10) for tag in weights)  # every weight counted
        assert [step for step, _ in logged["epoch_loss"]] == [1, 2]  # the model's two hops on the segment
        expected = [loss for s, loss in hops if s == segment]
        assert [v for _, v in logged["epoch_loss"]] == pytest.approx(expected, rel=1e-6)


def test_a_plain_role_may_not_use_callbacks(alice, log_dir):
    alice.execute("DROP TABLE IF EXISTS m_tb2, m_tb2_summary")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege,
                       match="fit_params: callbacks: role 'alice' may not use callbacks, which write files as the "
                             "server's operating-system user") as raised:
        alice.execute(TENSORBOARD_FIT, ["m_tb2", CE, _tensorboard(log_dir)])
    assert "GRANT madlib_dl_code_loader" in raised.value.diag.message_hint
    with pytest.raises(psycopg2.errors.FeatureNotSupported, match="EarlyStopping cannot act per hop"):
        alice.execute("SELECT madlib_dl.madlib_keras_fit('train_packed', 'm_tb2', 'arch', 1, %s, "
                      "'callbacks=[EarlyStopping(patience=3)]', 2)", [CE])
    assert not log_dir.exists() and "m_tb2" not in _tables(alice)
