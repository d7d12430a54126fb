"""madlib_keras_fit_multiple_model on a real server: MADlib's scenarios on iris, equivalence with plain
Keras, caching, real parallelism, progress, cancel and failure clean-up. Each scenario runs both with
and without caching. Everything runs as a plain role on a server with Debian's pg_hba, with background
workers required (a fallback to one session would fail the run); in_process where a fixed order is needed."""

from __future__ import annotations

import re
import os
import threading
import time

import numpy as np
import psycopg2
import pytest
from psycopg2.extras import execute_values
from sklearn.datasets import load_iris

from madlib_dl.keras_runtime import serialization, tf_setup
from madlib_dl.preprocess import packing
from madlib_dl.segment import runtime
from madlib_dl.training.spec import derive_seed

keras = tf_setup.keras()

CLASSES = ("setosa", "versicolor", "virginica")
FIT = "SELECT madlib_dl.madlib_keras_fit_multiple_model(%s, %s, %s, %s, FALSE, %s, %s, %s, %s, %s, %s)"


def _mlp(seed=0, inputs=4, classes=3):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(10, activation="relu"),
                             keras.layers.Dense(classes, activation="softmax")])


@pytest.fixture(scope="module")
def db(training_database):
    """Everything runs as a plain role, and its runs must use background workers (conftest)."""
    with training_database("fit_multiple") as conn:
        with conn.cursor() as cur:
            iris = load_iris()
            cur.execute("CREATE TABLE iris (id INTEGER, attributes DOUBLE PRECISION[], class_text TEXT, "
                        "class_int INTEGER, onehot INTEGER[])")
            execute_values(cur, "INSERT INTO iris VALUES %s",
                           [(i, list(map(float, x)), CLASSES[y], int(y), [int(y == k) for k in range(3)])
                            for i, (x, y) in enumerate(zip(iris.data, iris.target))])
            cur.execute("CREATE TABLE iris_train AS SELECT * FROM iris WHERE id % 5 <> 0")
            cur.execute("CREATE TABLE iris_val AS SELECT * FROM iris WHERE id % 5 = 0")
            cur.execute("SELECT madlib_dl.training_preprocessor_dl('iris_train', 'iris_packed', 'class_text', "
                        "'attributes', NULL, 1.0, NULL, '3')")
            cur.execute("SELECT madlib_dl.validation_preprocessor_dl('iris_val', 'iris_val_packed', 'class_text', "
                        "'attributes', 'iris_packed')")
            model = _mlp()
            cur.execute("SELECT madlib_dl.load_keras_model('arch', %s::json, %s, 'mlp', '4-10-3')",
                        [model.to_json(), serialization.serialize_weights(model.get_weights())])
            cur.execute("SELECT madlib_dl.load_keras_model('arch', %s::json)", [_mlp(1).to_json()])
        yield conn


@pytest.fixture
def cur(db):
    with db.cursor() as c:
        c.execute("RESET ALL")
        yield c


def _mst(cur, name, rows):
    """rows: (model_id, compile_params, fit_params)."""
    cur.execute(f"DROP TABLE IF EXISTS {name}, {name}_summary")
    for model_id, compile_params, fit_params in rows:  # appends, in order: mst_key 1, 2, ...
        cur.execute("SELECT madlib_dl.load_model_selection_table('arch', %s, %s, %s, %s)",
                    [name, [model_id], [compile_params], [fit_params]])


def _adam(lr):
    return f"loss='categorical_crossentropy', optimizer='Adam(learning_rate={lr})', metrics=['accuracy']"


def _drop(cur, out):
    cur.execute(f"DROP TABLE IF EXISTS {out}, {out}_summary, {out}_info")


def _fit(cur, out, mst="mst", iterations=2, validation=None, frequency=None, warm=False, caching=False,
         source="iris_packed", name=None, description=None):
    if not warm:
        _drop(cur, out)
    cur.execute(FIT, [source, out, mst, iterations, validation, frequency, warm, name, description, caching])


def _hops(cur, kind="train"):
    cur.execute("SELECT iteration, mst_key, segment, worker_pid, extract(epoch FROM started) AS started, "
                "extract(epoch FROM ended) AS ended, buffers_read, images FROM madlib_dl.last_fit_hops() "
                "WHERE kind = %s ORDER BY started", [kind])
    names = [d.name for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _weights(cur, out):
    cur.execute(f"SELECT mst_key, model_weights FROM {out} ORDER BY mst_key")
    return {k: bytes(w) for k, w in cur.fetchall()}


def _segments(cur, table="iris_packed"):
    cur.execute(f"SELECT __dist_key__, attributes, attributes_shape, class_text, class_text_shape FROM {table} "
                "ORDER BY __dist_key__, buffer_id")
    data = {}
    for key, x, xs, y, ys in cur.fetchall():
        data.setdefault(key, []).append((packing.decode(bytes(x), xs, packing.FEATURE_DTYPE),
                                         packing.decode(bytes(y), ys, packing.LABEL_DTYPE).astype(np.float32)))
    return {k: (np.concatenate([x for x, _ in v]), np.concatenate([y for _, y in v])) for k, v in data.items()}


# ---------------------------------------------------------------------------------------------------
# MADlib's scenarios

@pytest.mark.parametrize("caching", [False, True])
def test_more_models_than_segments(cur, caching):
    _mst(cur, "mst", [(1, _adam(0.01), "batch_size=8,epochs=1"), (1, _adam(0.1), "batch_size=8,epochs=1"),
                      (2, _adam(0.01), "batch_size=16,epochs=1"), (2, _adam(0.1), "batch_size=16,epochs=1")])
    _fit(cur, "out4", iterations=2, caching=caching)
    cur.execute("SELECT count(*), count(model_weights), count(optimizer_state) FROM out4")
    assert cur.fetchone() == (4, 4, 4)
    cur.execute("SELECT mst_key, array_length(training_loss, 1), validation_loss IS NULL, metrics_iters "
                "FROM out4_info ORDER BY 1")
    assert cur.fetchall() == [(k, 1, True, [2]) for k in (1, 2, 3, 4)]
    hops = _hops(cur)
    assert len(hops) == 4 * 3 * 2
    for iteration in (1, 2):  # every model visits every segment exactly once per iteration
        assert sorted((h["mst_key"], h["segment"]) for h in hops if h["iteration"] == iteration) == \
            [(k, s) for k in (1, 2, 3, 4) for s in (0, 1, 2)]
    cur.execute("SELECT c.relname, c.relpersistence FROM pg_class c WHERE relname LIKE 'out4%' AND relkind = 'r' ORDER BY 1")
    assert cur.fetchall() == [("out4", "p"), ("out4_info", "p"), ("out4_summary", "p")]
    cur.execute("SELECT num_classes, class_text_class_values, metrics_iters, num_iterations FROM out4_summary")
    assert cur.fetchone() == ([3], list(CLASSES), [2], 2)


@pytest.mark.parametrize("caching", [False, True])
def test_as_many_models_as_segments_with_validation(cur, caching):
    _mst(cur, "mst3", [(1, _adam(lr), "batch_size=8,epochs=1") for lr in (0.01, 0.03, 0.1)])
    _fit(cur, "out3", mst="mst3", iterations=3, validation="iris_val_packed", frequency=2, caching=caching)
    cur.execute("SELECT metrics_iters, array_length(training_loss, 1), array_length(validation_loss, 1), "
                "array_length(validation_metrics, 1), metrics_elapsed_time[1] < metrics_elapsed_time[2], "
                "validation_metrics_elapsed_time[1] < validation_metrics_elapsed_time[2], "
                "validation_metrics_final = validation_metrics[2], validation_loss_final BETWEEN 0 AND 5, "
                "validation_metrics_final BETWEEN 0 AND 1 FROM out3_info ORDER BY mst_key")
    assert cur.fetchall() == [([2, 3], 2, 2, 2, True, True, True, True, True)] * 3
    cur.execute("SELECT validation_table, metrics_compute_frequency FROM out3_summary")
    assert cur.fetchone() == ("iris_val_packed", 2)


@pytest.mark.parametrize("caching", [False, True])
def test_fewer_models_than_segments_with_name_and_every_iteration_metrics(cur, caching):
    _mst(cur, "mst1", [(1, _adam(0.05), "batch_size=8,epochs=1")])
    _fit(cur, "out1", mst="mst1", iterations=3, validation="iris_val_packed", frequency=1, caching=caching,
         name="one model", description="fewer models than segments")
    cur.execute("SELECT array_length(training_loss, 1), array_length(validation_metrics, 1), metrics_iters, "
                "metrics_elapsed_time[1] < metrics_elapsed_time[2] AND metrics_elapsed_time[2] < metrics_elapsed_time[3], "
                "training_loss[3] < training_loss[1] FROM out1_info")
    assert cur.fetchone() == (3, 3, [1, 2, 3], True, True)
    cur.execute("SELECT name, description, warm_start FROM out1_summary")
    assert cur.fetchone() == ("one model", "fewer models than segments", False)
    assert len(_hops(cur)) == 3 * 3


@pytest.mark.parametrize("caching", [False, True])
@pytest.mark.parametrize("label", ["onehot", "class_null"])
def test_one_hot_labels_and_null_class(cur, caching, label):
    cur.execute("DROP TABLE IF EXISTS lab_packed, lab_packed_summary, lab_src")
    if label == "onehot":
        cur.execute("CREATE TABLE lab_src AS SELECT id, attributes, onehot AS y FROM iris_train")
    else:  # one class spelled NULL: still 3 classes, NULL first in the class values
        cur.execute("CREATE TABLE lab_src AS SELECT id, attributes, NULLIF(class_text, 'setosa') AS y FROM iris_train")
    cur.execute("SELECT madlib_dl.training_preprocessor_dl('lab_src', 'lab_packed', 'y', 'attributes', NULL, 1.0, "
                "NULL, '3')")
    cur.execute("SELECT num_classes FROM lab_packed_summary")  # MADlib records none for one-hot arrays
    assert cur.fetchone()[0] == ([] if label == "onehot" else [3])
    _mst(cur, "mst_lab", [(1, _adam(0.05), "batch_size=8,epochs=2")])
    _fit(cur, "out_lab", mst="mst_lab", iterations=3, source="lab_packed", caching=caching)
    cur.execute("SELECT training_metrics_final > 0.6, num_classes FROM out_lab_info, out_lab_summary")
    assert cur.fetchone() == (True, [3])
    cur.execute("SELECT y_class_values FROM out_lab_summary")
    assert cur.fetchone()[0] == (None if label == "onehot" else [None, "versicolor", "virginica"])


def test_schema_qualified_tables(cur, server, plain_role):
    with server.connect("fit_multiple") as admin, admin.cursor() as c:  # a schema the DBA gave the role
        c.execute("DROP SCHEMA IF EXISTS s1 CASCADE")
        c.execute(f"CREATE SCHEMA s1 AUTHORIZATION {plain_role.name}")
    cur.execute("SELECT madlib_dl.training_preprocessor_dl('iris_train', 's1.packed', 'class_text', 'attributes', "
                "NULL, 1.0, NULL, '3')")
    _mst(cur, "mst1", [(1, _adam(0.05), "batch_size=8,epochs=1")])
    cur.execute(FIT, ["s1.packed", "s1.models", "mst1", 1, None, None, False, None, None, True])
    cur.execute("SELECT count(*) FROM s1.models JOIN s1.models_info USING (mst_key)")
    assert cur.fetchone()[0] == 1
    cur.execute("SELECT source_table, model, model_info FROM s1.models_summary")
    assert cur.fetchone() == ("s1.packed", "s1.models", "s1.models_info")
    cur.execute("SELECT to_regclass('public.models') IS NULL")
    assert cur.fetchone()[0]


def test_tables_in_pg_temp(db, server, plain_role):
    """pg_temp means the session's temporary schema, as in PostgreSQL, for inputs and outputs (a fresh
    session, which has no temporary schema yet); the summary names the info table as MADlib does: the
    output table's name as typed, plus _info."""
    with server.connect(db.info.dbname, user=plain_role) as conn, conn.cursor() as cur:
        cur.execute("SET madlib_dl.executor = 'auto'")  # workers cannot read temporary tables: in this session
        cur.execute("SELECT madlib_dl.training_preprocessor_dl('iris_train', 'pg_temp.t_packed', 'class_text', "
                    "'attributes', NULL, 1.0, NULL, '2')")
        cur.execute("CREATE TEMP TABLE t_val AS SELECT * FROM iris_val")
        cur.execute("SELECT madlib_dl.validation_preprocessor_dl('t_val', 'pg_temp.t_val_packed', 'class_text', "
                    "'attributes', 't_packed')")
        _mst(cur, "pg_temp.t_mst", [(1, _adam(0.05), "batch_size=8,epochs=1")])
        cur.execute(FIT, ["pg_temp.t_packed", "pg_temp.T_Out", "pg_temp.t_mst", 1, "t_val_packed", None, False,
                          None, None, False])
        cur.execute("SELECT count(*) FROM pg_temp.t_out JOIN pg_temp.t_out_info USING (mst_key) "
                    "WHERE validation_loss_final IS NOT NULL")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT source_table, model, model_info, model_selection_table FROM t_out_summary")
        assert cur.fetchone() == ("pg_temp.t_packed", "pg_temp.T_Out", "pg_temp.T_Out_info", "pg_temp.t_mst")
        cur.execute("SELECT madlib_dl.madlib_keras_evaluate('pg_temp.t_out', 'pg_temp.t_val_packed', "
                    "'pg_temp.t_eval', FALSE, 1)")
        cur.execute("SELECT count(*) FROM pg_temp.t_eval")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT relpersistence FROM pg_class WHERE oid = 'pg_temp.t_out'::regclass")
        assert cur.fetchone()[0] == "t"
        cur.execute("SELECT to_regclass('public.t_out') IS NULL")
        assert cur.fetchone()[0]


def _madlib_layout(cur, packed, name):
    """``packed`` as MADlib's own preprocessor writes it on PostgreSQL: no __dist_key__ column (one
    segment), and a summary without num_classes (older versions) or num_segments (every version)."""
    cur.execute(f"DROP TABLE IF EXISTS {name}, {name}_summary")
    cur.execute(f"CREATE TABLE {name} AS SELECT attributes, class_text, attributes_shape, class_text_shape, "
                f"buffer_id FROM {packed}")
    cur.execute(f"CREATE TABLE {name}_summary AS SELECT source_table, output_table, dependent_varname, "
                f"independent_varname, dependent_vartype, class_text_class_values, buffer_size, normalizing_const, "
                f"'all_segments'::TEXT AS distribution_rules, 'all_segments'::TEXT AS __internal_gpu_config__ "
                f"FROM {packed}_summary")


@pytest.mark.parametrize("caching", [False, True])
def test_tables_packed_by_madlib_on_postgresql(cur, caching):
    _madlib_layout(cur, "iris_packed", "m_packed")
    _madlib_layout(cur, "iris_val_packed", "m_val_packed")
    _mst(cur, "mst_m", [(1, _adam(0.05), "batch_size=8,epochs=1"), (1, _adam(0.01), "batch_size=8,epochs=1")])
    _fit(cur, "out_m", mst="mst_m", iterations=2, validation="m_val_packed", caching=caching, source="m_packed")
    cur.execute("SELECT mst_key, array_length(training_loss, 1), validation_loss_final IS NOT NULL FROM out_m_info "
                "ORDER BY 1")
    assert cur.fetchall() == [(1, 1, True), (2, 1, True)]
    assert sorted({(h["mst_key"], h["segment"]) for h in _hops(cur)}) == [(1, 0), (2, 0)]  # the one segment
    cur.execute("SELECT num_classes, class_text_class_values FROM out_m_summary")
    assert cur.fetchone() == ([3], list(CLASSES))
    # a validation table packed by madlib_dl for it goes on its one segment
    cur.execute("DROP TABLE IF EXISTS m_val2, m_val2_summary")
    cur.execute("SELECT madlib_dl.validation_preprocessor_dl('iris_val', 'm_val2', 'class_text', 'attributes', "
                "'m_packed')")
    cur.execute("SELECT DISTINCT __dist_key__ FROM m_val2")
    assert cur.fetchall() == [(0,)]
    cur.execute("SELECT num_classes, num_segments FROM m_val2_summary")
    assert cur.fetchone() == ([3], 1)


# ---------------------------------------------------------------------------------------------------
# Equivalence with plain Keras, caching

def _replay(cur, hops, lrs):
    """Plain Keras in this process: the same initial weights, visiting the same segments in the same order."""
    segments = _segments(cur)
    cur.execute("SELECT model_arch::text, model_weights FROM arch WHERE model_id = 1")
    arch, weights = cur.fetchone()
    models = {}
    for key, lr in lrs.items():
        model = keras.models.model_from_json(arch)
        model.set_weights(serialization.deserialize_weights(bytes(weights), [w.shape for w in model.get_weights()]))
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="categorical_crossentropy")
        models[key] = model
    for hop in hops:
        x, y = segments[hop["segment"]]
        models[hop["mst_key"]].fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return {k: m.get_weights() for k, m in models.items()}


@pytest.mark.parametrize("executor", ["workers", "in_process"])
@pytest.mark.parametrize("caching", [False, True])
def test_same_weights_as_plain_keras_visiting_the_same_segments(cur, caching, executor):
    lrs = {}
    _mst(cur, "mst_eq", [(1, _adam(lr), "batch_size=8,epochs=1,shuffle=False") for lr in (0.01, 0.05)])
    cur.execute("SELECT mst_key, compile_params FROM mst_eq ORDER BY 1")
    for key, compile_params in cur.fetchall():
        lrs[key] = float(compile_params.split("learning_rate=")[1].split(")")[0])
    cur.execute("SET madlib_dl.executor = %s", [executor])
    _fit(cur, "out_eq", mst="mst_eq", iterations=2, caching=caching)
    hops = _hops(cur)
    assert [h["iteration"] for h in hops] == sorted(h["iteration"] for h in hops)
    expected = _replay(cur, hops, lrs)
    for key, blob in _weights(cur, "out_eq").items():
        shapes = [w.shape for w in expected[key]]
        got = serialization.deserialize_weights(blob, shapes)
        for g, e in zip(got, expected[key]):
            np.testing.assert_allclose(g, e, rtol=0, atol=1e-6)
    assert _weights(cur, "out_eq")[1] != _weights(cur, "out_eq")[2]


def _replay_metrics(cur, hops, lrs, iterations, evaluated):
    """Plain Keras replaying the run's hops: per model and iteration, the training loss and accuracy
    (fit's running means of the iteration's hops, weighted by their examples, or an evaluation on the
    whole training table where ``evaluated(iteration)``) and the validation loss."""
    train, validation = _segments(cur), _segments(cur, "iris_val_packed")
    everything = {name: tuple(np.concatenate([part[i] for part in data.values()]) for i in (0, 1))
                  for name, data in (("train", train), ("validation", validation))}
    cur.execute("SELECT model_arch::text, model_weights FROM arch WHERE model_id = 1")
    arch, weights = cur.fetchone()
    models, series = {}, {k: {"loss": [], "accuracy": [], "validation": []} for k in lrs}
    for key, lr in lrs.items():
        models[key] = keras.models.model_from_json(arch)
        models[key].set_weights(serialization.deserialize_weights(bytes(weights),
                                                                  [w.shape for w in models[key].get_weights()]))
        models[key].compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="categorical_crossentropy",
                            metrics=["accuracy"])
    for iteration in range(1, iterations + 1):
        running = {k: [] for k in lrs}  # (loss, accuracy, examples) of each hop
        for hop in (h for h in hops if h["iteration"] == iteration):
            x, y = train[hop["segment"]]
            history = models[hop["mst_key"]].fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history
            running[hop["mst_key"]].append((history["loss"][-1], history["accuracy"][-1], len(x)))
        for key, model in models.items():
            if evaluated(iteration):
                loss, accuracy = model.evaluate(*everything["train"], batch_size=256, verbose=0)
            else:
                n = sum(h[2] for h in running[key])
                loss, accuracy = (sum(h[i] * h[2] for h in running[key]) / n for i in (0, 1))
            series[key]["loss"].append(loss)
            series[key]["accuracy"].append(accuracy)
            series[key]["validation"].append(model.evaluate(*everything["validation"], batch_size=256, verbose=0)[0])
    return series


@pytest.mark.parametrize("mode", ["running", "evaluate", "running_only"])
def test_training_metrics_modes_match_a_plain_keras_replay(cur, mode):
    """madlib_dl.training_metrics: where each iteration's training metrics come from, checked value by
    value against plain Keras replaying the same hops; the validation series is an evaluation in every mode."""
    lrs, iterations = {}, 3
    _mst(cur, "mst_tm", [(1, _adam(lr), "batch_size=8,epochs=1,shuffle=False") for lr in (0.01, 0.05)])
    cur.execute("SELECT mst_key, compile_params FROM mst_tm ORDER BY 1")
    for key, compile_params in cur.fetchall():
        lrs[key] = float(compile_params.split("learning_rate=")[1].split(")")[0])
    cur.execute("SET madlib_dl.training_metrics = %s", [mode])
    _fit(cur, "out_tm", mst="mst_tm", iterations=iterations, validation="iris_val_packed", frequency=1, caching=True)
    evaluations = {(h["iteration"], h["mst_key"]) for h in _hops(cur, "evaluate train")}
    evaluated = {"running": lambda i: i == iterations, "evaluate": lambda i: True,
                 "running_only": lambda i: False}[mode]
    assert evaluations == {(i, k) for i in range(1, iterations + 1) if evaluated(i) for k in lrs}
    expected = _replay_metrics(cur, _hops(cur), lrs, iterations, evaluated)
    cur.execute("SELECT mst_key, training_loss, training_metrics, validation_loss, training_loss_final, "
                "training_metrics_final, metrics_iters FROM out_tm_info ORDER BY 1")
    for key, loss, accuracy, validation, loss_final, accuracy_final, iters in cur.fetchall():
        assert iters == [1, 2, 3]
        np.testing.assert_allclose(loss, expected[key]["loss"], rtol=0, atol=2e-5)
        np.testing.assert_allclose(accuracy, expected[key]["accuracy"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(validation, expected[key]["validation"], rtol=0, atol=2e-5)
        assert (loss_final, accuracy_final) == (loss[-1], accuracy[-1])


def test_a_bad_training_metrics_mode_is_refused_naming_the_setting(cur):
    with pytest.raises(psycopg2.Error, match="training_metrics"):
        cur.execute("SET madlib_dl.training_metrics = 'sometimes'")
    cur.connection.rollback()


def test_seeded_initial_weights_are_the_same_on_whichever_worker_made_them(cur):
    """Each architecture's seeded initial weights are made once, on one of the workers (spread over
    them); with a learning rate of 0 the trained weights are those initial weights."""
    cur.execute("DROP TABLE IF EXISTS arch_seeded")
    archs = {}
    for units in (5, 7):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, activation="relu"),
                                  keras.layers.Dense(3, activation="softmax")])
        cur.execute("SELECT madlib_dl.load_keras_model('arch_seeded', %s::json)", [model.to_json()])
        cur.execute("SELECT max(model_id), (array_agg(model_arch::text ORDER BY model_id DESC))[1] FROM arch_seeded")
        model_id, arch = cur.fetchone()
        archs[model_id] = arch
    sgd = "loss='categorical_crossentropy', optimizer='SGD(learning_rate=0.0)'"
    cur.execute("DROP TABLE IF EXISTS mst_seeded, mst_seeded_summary")
    cur.execute("SELECT madlib_dl.load_model_selection_table('arch_seeded', 'mst_seeded', %s, %s, %s)",
                [sorted(archs), [sgd], ["batch_size=8,epochs=1"]])
    cur.execute("SET madlib_dl.executor = 'workers'")
    _fit(cur, "out_seeded", mst="mst_seeded", iterations=1)
    assert len({h["worker_pid"] for h in _hops(cur)}) > 1
    cur.execute("SELECT o.model_weights, i.model_id FROM out_seeded o JOIN out_seeded_info i USING (mst_key)")
    found = {model_id: bytes(weights) for weights, model_id in cur.fetchall()}
    assert sorted(found) == sorted(archs)
    for model_id, arch in archs.items():
        assert found[model_id] == serialization.serialize_weights(runtime.initial_weights(arch, derive_seed(0, model_id)))


def test_caching_reads_each_segment_once_and_changes_nothing(cur):
    _mst(cur, "mst_c", [(1, _adam(lr), "batch_size=8,epochs=1") for lr in (0.01, 0.05)])
    cur.execute("SELECT __dist_key__, count(*) FROM iris_packed GROUP BY 1")
    buffers = dict(cur.fetchall())
    cur.execute("SET madlib_dl.executor = 'in_process'")  # one fixed visit order, so results compare exactly
    results = {}
    for caching in (False, True):
        _fit(cur, f"out_c{int(caching)}", mst="mst_c", iterations=3, validation="iris_val_packed", caching=caching)
        results[caching] = _weights(cur, f"out_c{int(caching)}")
        train = _hops(cur)
        if caching:  # only the first hop on a segment read its buffers
            first = {}
            for hop in train:
                first.setdefault(hop["segment"], hop)
            assert all(h["buffers_read"] == (buffers[h["segment"]] if h is first[h["segment"]] else 0) for h in train)
            assert all(h["buffers_read"] == 0 for h in _hops(cur, "evaluate train"))
        else:
            assert all(h["buffers_read"] == buffers[h["segment"]] for h in train)
            reads = {}  # an evaluation reads each segment once for both models, then drops it
            for hop in _hops(cur, "evaluate train"):
                reads.setdefault((hop["iteration"], hop["segment"]), []).append(hop["buffers_read"])
            assert reads and all(sorted(r) == [0, buffers[segment]] for (_, segment), r in reads.items()), reads
        cur.execute("SELECT madlib_dl.internal_fit_release(NULL)")  # the run left no cache in this session
        assert cur.fetchone()[0] is False
    assert results[False] == results[True]
    cur.execute("SELECT a.training_loss = b.training_loss AND a.validation_loss = b.validation_loss "
                "FROM out_c0_info a JOIN out_c1_info b USING (mst_key)")
    assert [r[0] for r in cur.fetchall()] == [True, True]


# ---------------------------------------------------------------------------------------------------
# Warm start and transfer learning

def test_warm_start_continues_and_follows_the_mst_table(cur):
    _mst(cur, "mst_w", [(1, _adam(lr), "batch_size=8,epochs=1") for lr in (0.01, 0.03, 0.05)])
    _fit(cur, "out_w", mst="mst_w", iterations=2, caching=True)
    cur.execute("SELECT mst_key, training_loss_final FROM out_w_info ORDER BY 1")
    before = dict(cur.fetchall())
    cur.execute("DELETE FROM mst_w WHERE mst_key = 3")
    cur.execute("INSERT INTO mst_w (model_id, compile_params, fit_params) VALUES (2, %s, 'batch_size=8,epochs=1') "
                "RETURNING mst_key", [_adam(0.05)])
    added = cur.fetchone()[0]
    _fit(cur, "out_w", mst="mst_w", iterations=2, warm=True, caching=True)
    cur.execute("SELECT mst_key, training_loss[1] FROM out_w_info ORDER BY 1")
    after = dict(cur.fetchall())
    assert sorted(after) == [1, 2, added]
    assert after[1] < before[1] and after[2] < before[2]  # continued, not restarted
    cur.execute("SELECT warm_start FROM out_w_summary")
    assert cur.fetchone()[0] is True


def test_transfer_learning_starts_from_the_architecture_weights(cur):
    """model_id 1 carries weights: a run with 0 effective learning rate keeps them exactly."""
    _mst(cur, "mst_t", [(1, "loss='categorical_crossentropy', optimizer='SGD(learning_rate=0.0)'",
                         "batch_size=8,epochs=1")])
    _fit(cur, "out_t", mst="mst_t", iterations=1)
    trained = _weights(cur, "out_t")[1]
    cur.execute("SELECT model_weights FROM arch WHERE model_id = 1")
    assert trained == bytes(cur.fetchone()[0])


# ---------------------------------------------------------------------------------------------------
# Parallelism, progress, cancel, failure

def test_two_workers_train_two_models_at_the_same_time(cur, server):
    cur.execute("DROP TABLE IF EXISTS p2, p2_summary")
    cur.execute("SELECT madlib_dl.training_preprocessor_dl('iris_train', 'p2', 'class_text', 'attributes', "
                "NULL, 1.0, NULL, '2')")
    _mst(cur, "mst_p", [(1, _adam(lr), "batch_size=1,epochs=4") for lr in (0.01, 0.02)])
    seen = []
    done = threading.Event()

    def watch():
        with server.connect("fit_multiple") as other, other.cursor() as c:
            while not done.is_set():
                c.execute("SELECT application_name FROM pg_stat_activity WHERE application_name LIKE 'madlib_dl%'")
                seen.extend(r[0] for r in c.fetchall())
                time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        _fit(cur, "out_p", mst="mst_p", iterations=2, source="p2", caching=True)
    finally:
        done.set()
        watcher.join()
    hops = _hops(cur)
    assert len({h["worker_pid"] for h in hops}) == 2
    overlaps = [(a, b) for a in hops for b in hops if a["mst_key"] < b["mst_key"]
                and a["started"] < b["ended"] and b["started"] < a["ended"]]
    assert overlaps, "no two hops of different models ran at the same time"
    assert any(name.startswith("madlib_dl fit_multiple: iteration 2/2") for name in seen)
    assert any("(segment 1)" in name and "iteration" in name for name in seen)
    cur.connection.notices.clear()


def _wait_gone(pid, seconds=30):
    deadline = time.monotonic() + seconds
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"process {pid} is still there"
        time.sleep(0.05)


def _workers_alive(cur):
    cur.execute("SELECT pg_stat_clear_snapshot()")
    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'madlib_dl fit_multiple%' "
                "AND pid <> pg_backend_pid()")
    return cur.fetchone()[0]


def _tables(cur):
    cur.execute("SELECT tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")
    return {r[0] for r in cur.fetchall()}


@pytest.mark.parametrize("executor", ["auto", "in_process"])
def test_cancel_mid_fit_stops_within_seconds_and_leaves_nothing(cur, executor):
    _mst(cur, "mst_slow", [(1, _adam(0.01), "batch_size=1,epochs=500")])
    _drop(cur, "out_slow")
    before = _tables(cur)
    cur.execute("SET madlib_dl.executor = %s", [executor])
    cur.execute("SET statement_timeout = '4s'")
    started = time.monotonic()
    with pytest.raises(psycopg2.errors.QueryCanceled) as cancelled:
        _fit(cur, "out_slow", mst="mst_slow", iterations=1, caching=True)
    elapsed = time.monotonic() - started
    # one line saying how far the run got, no traceback
    assert re.fullmatch(r"madlib_dl: madlib_keras_fit_multiple_model: cancelled (at iteration 1 of 1 \(\d+ of 3 hops "
                        r"done\)|while starting, before iteration 1 of 1): canceling statement due to statement "
                        r"timeout; nothing was written", cancelled.value.diag.message_primary), cancelled.value.pgerror
    assert cancelled.value.diag.context is None
    cur.execute("RESET statement_timeout")
    assert elapsed < 4 + 5, f"cancel took {elapsed - 4:.1f} s after the timeout"
    assert _workers_alive(cur) == 0
    assert _tables(cur) == before
    cur.execute("SELECT madlib_dl.internal_fit_release(NULL)")
    assert cur.fetchone()[0] is False
    _rerun_succeeds(cur)


@pytest.mark.parametrize("executor", ["workers", "in_process"])
def test_failed_run_leaves_nothing_and_the_session_runs_again(cur, executor):
    """Keras refuses these compile parameters only when a worker compiles the model, mid-run."""
    _mst(cur, "mst_bad", [(1, "loss='categorical_crossentropy', optimizer='Adam()', loss_weights=[1.0, 2.0]",
                           "batch_size=8,epochs=1")])
    _drop(cur, "out_fail")
    before = _tables(cur)
    cur.execute("SET madlib_dl.executor = %s", [executor])
    with pytest.raises(psycopg2.Error, match="loss_weights"):
        _fit(cur, "out_fail", mst="mst_bad", iterations=1, caching=True)
    assert _workers_alive(cur) == 0
    assert _tables(cur) == before
    cur.execute("SELECT madlib_dl.internal_fit_release(NULL)")
    assert cur.fetchone()[0] is False
    _rerun_succeeds(cur)


def test_workers_cannot_see_uncommitted_tables(cur):
    """A packed table made in the caller's open transaction: 'auto' trains in process with a NOTICE
    saying why; 'workers' is an error; either way nothing is left and no worker remains."""
    _mst(cur, "mst1", [(1, _adam(0.05), "batch_size=8,epochs=1")])
    cur.execute("SET madlib_dl.executor = 'auto'")
    cur.execute("BEGIN")
    try:
        cur.execute("SELECT madlib_dl.training_preprocessor_dl('iris_train', 'fresh', 'class_text', 'attributes', "
                    "NULL, 1.0, NULL, '3')")
        cur.connection.notices.clear()
        _fit(cur, "out_fresh", mst="mst1", iterations=1, source="fresh")
        assert any("this session" in n and "not yet committed" in n for n in cur.connection.notices)
        cur.execute("SET LOCAL madlib_dl.executor = 'workers'")
        with pytest.raises(psycopg2.Error, match="madlib_dl.executor"):
            _fit(cur, "out_fresh2", mst="mst1", iterations=1, source="fresh")
    finally:
        cur.execute("ROLLBACK")
    assert _workers_alive(cur) == 0
    cur.execute("SELECT to_regclass('fresh') IS NULL AND to_regclass('out_fresh') IS NULL")
    assert cur.fetchone()[0]


def _rerun_succeeds(cur):
    _mst(cur, "mst1", [(1, _adam(0.05), "batch_size=8,epochs=1")])
    _fit(cur, "out_again", mst="mst1", iterations=1, caching=True)
    assert sum(h["images"] for h in _hops(cur)) == 120  # every training example, once
    cur.execute("SELECT count(*) FROM out_again_info")
    assert cur.fetchone()[0] == 1
    assert _workers_alive(cur) == 0


def test_one_notice_per_iteration_with_best_loss(cur):
    _mst(cur, "mst1", [(1, _adam(0.05), "batch_size=8,epochs=1")])
    cur.connection.notices.clear()
    _fit(cur, "out_n", mst="mst1", iterations=3, frequency=2)
    notices = [n for n in cur.connection.notices if "madlib_keras_fit_multiple_model: iteration" in n]
    assert len(notices) == 3
    assert all("best training loss so far" in n for n in notices)
    assert "mst_key=1: training loss=" in notices[1] and "mst_key=1" not in notices[0]


def test_too_few_worker_slots(db, server, plain_role, worker_slots):
    """With 2 background worker slots free (max_worker_processes), 'auto' trains a 3-segment table on
    2 workers and says so; 'workers' refuses and creates nothing; with none free, 'auto' trains in this
    session and names the setting."""
    with server.connect("fit_multiple", user=plain_role) as conn, conn.cursor() as cur:  # no idle workers
        _mst(cur, "mst1", [(1, _adam(0.05), "batch_size=8,epochs=1")])
        _drop(cur, "out_slots")
        _drop(cur, "out_slots2")
        assert worker_slots.fill(cur) > 0
        worker_slots.free(2)
        cur.execute("SET madlib_dl.executor = 'auto'")
        cur.execute("SET madlib_dl.training_workers = 3")  # one model alone would get one worker
        _fit(cur, "out_slots", mst="mst1", iterations=2)
        assert any("2 background workers serve 3 segments" in n and "max_worker_processes" in n
                   for n in conn.notices), conn.notices
        hops = _hops(cur)
        assert len({h["worker_pid"] for h in hops}) == 2 and conn.get_backend_pid() not in {h["worker_pid"] for h in hops}
        assert sorted((h["iteration"], h["segment"]) for h in hops) == [(i, s) for i in (1, 2) for s in (0, 1, 2)]
        assert sum(h["images"] for h in hops) == 2 * 120
        cur.execute("SET madlib_dl.executor = 'workers'")  # the two idle workers are reused, a third cannot start
        with pytest.raises(psycopg2.Error, match="madlib_dl.executor is 'workers' but only 2 of the 3 background "
                                                 "workers it needs could start \\(max_worker_processes is"):
            _fit(cur, "out_slots2", mst="mst1", iterations=1)
        cur.execute("SELECT to_regclass('out_slots2') IS NULL AND to_regclass('out_slots2_info') IS NULL")
        assert cur.fetchone()[0]
        for pid in {h["worker_pid"] for h in hops}:  # the refused run ended the two; their slots come free
            _wait_gone(pid)
        worker_slots.fill(cur)
        cur.execute("SET madlib_dl.executor = 'auto'")
        conn.notices.clear()
        _fit(cur, "out_slots2", mst="mst1", iterations=1)
        assert any("runs in this session" in n and "only 0 of the 3" in n and "max_worker_processes" in n
                   for n in conn.notices), conn.notices
        assert {h["worker_pid"] for h in _hops(cur)} == {conn.get_backend_pid()}


def test_the_run_chooses_its_workers_and_a_setting_forces_them(cur):
    """Two small models on a 3-segment table: a worker per CPU (at most one per model that trains at
    once), one thread each, said in a NOTICE and in the hop log; madlib_dl.training_workers = 1 puts
    every hop (and the three segments' caches) on one worker with every CPU."""
    cpus = len(os.sched_getaffinity(0))
    _mst(cur, "mst_par", [(1, _adam(lr), "batch_size=8,epochs=1") for lr in (0.01, 0.05)])
    cur.connection.notices.clear()
    _fit(cur, "out_par", mst="mst_par", iterations=1, caching=True)
    chosen = min(2, cpus)
    said = [n for n in cur.connection.notices if "for 3 segments" in n]
    assert len(said) == 1 and f"{chosen} worker" in said[0] and "one thread per worker" in said[0], cur.connection.notices
    cur.execute("SELECT count(DISTINCT worker_pid), min(worker_threads), max(worker_threads) "
                "FROM madlib_dl.last_fit_hops()")
    assert cur.fetchone() == (chosen, cpus // chosen, cpus // chosen)
    cur.execute("SET madlib_dl.training_workers = 1")
    cur.connection.notices.clear()
    _fit(cur, "out_par", mst="mst_par", iterations=2, caching=True)
    assert any(f"1 worker x {cpus} thread" in n and "madlib_dl.training_workers" in n
               for n in cur.connection.notices), cur.connection.notices
    hops = _hops(cur)
    assert len({h["worker_pid"] for h in hops}) == 1 and len(hops) == 2 * 2 * 3
    assert sum(h["buffers_read"] > 0 for h in hops) == 3  # each segment read once, then cached in that worker
    cur.execute("SELECT DISTINCT worker_threads FROM madlib_dl.last_fit_hops()")
    assert cur.fetchall() == [(cpus,)]


def _written(notices):
    """The positions of the driver's 'final state written' messages and of the final iteration's NOTICE."""
    ours = [n for n in notices if "madlib_keras_fit_multiple_model:" in n]
    return [i for i, n in enumerate(ours) if "final state written" in n], \
        next(i for i, n in enumerate(ours) if "iteration 2/2 took" in n)


def test_each_models_row_is_written_while_the_run_goes_on(cur):
    """A model's row goes into the output table as soon as its last training hop is back, while the
    other model trains and the run evaluates (before the final iteration's NOTICE, which follows its
    evaluation), and holds the final state; a warm start, whose table stays readable until training
    ends, writes its rows at the end."""
    _mst(cur, "mst_w", [(1, _adam(lr), "batch_size=8,epochs=1") for lr in (0.01, 0.05)])
    cur.execute("SET madlib_dl.training_workers = 1")
    cur.execute("SET client_min_messages = debug2")
    cur.connection.notices.clear()
    _fit(cur, "out_w", mst="mst_w", iterations=2, validation="iris_val_packed", caching=True)
    written, last = _written(cur.connection.notices)
    assert len(written) == 2 and max(written) < last, cur.connection.notices
    cur.execute("SELECT count(*), count(model_weights), count(optimizer_state), count(__dist_key__) FROM out_w")
    assert cur.fetchone() == (2, 2, 2, 2)
    before = _weights(cur, "out_w")
    cur.connection.notices.clear()
    _fit(cur, "out_w", mst="mst_w", iterations=1, warm=True, caching=True)
    assert not any("final state written" in n for n in cur.connection.notices), cur.connection.notices
    after = _weights(cur, "out_w")
    assert set(after) == {1, 2} and all(after[k] != before[k] for k in after)


def test_a_lock_the_caller_holds_does_not_hang_the_workers(cur):
    """Workers would wait forever for a lock the caller's transaction holds; the check before the first
    hop gives up after lock_timeout and the run trains in this session instead."""
    _mst(cur, "mst1", [(1, _adam(0.05), "batch_size=8,epochs=1")])
    _drop(cur, "out_lock")
    cur.execute("SET madlib_dl.executor = 'auto'")
    cur.execute("BEGIN")
    try:
        cur.execute("LOCK TABLE iris_packed IN ACCESS EXCLUSIVE MODE")
        cur.connection.notices.clear()
        _fit(cur, "out_lock", mst="mst1", iterations=1)
        assert any("cannot read iris_packed" in n and "lock timeout" in n for n in cur.connection.notices)
        cur.execute("SELECT count(*) FROM out_lock_info")
        assert cur.fetchone()[0] == 1
    finally:
        cur.execute("ROLLBACK")
    assert _workers_alive(cur) == 0
