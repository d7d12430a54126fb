"""madlib_keras_fit on a real server: one model visiting the segments in turn equals plain Keras
training on the segments' examples in that order; the output tables (MADlib's columns) load back with
trained_models; validation and metrics_compute_frequency; warm start continuing exactly; the caching
rule; background workers; and every bad argument refused with one clean error that creates nothing.

One database for the module: 300 digits (64 features scaled by 16, 10 classes) packed over 2 segments in
buffers of 50, 100 more packed for validation, and an architecture table: an MLP without weights
(seeded initial weights), the same MLP with weights, and two that do not fit the data. Everything runs
as a plain role on a server with Debian's pg_hba, with background workers required (a fallback to one
session would fail the run; conftest.training_database); in_process only where a test compares it.
"""

from __future__ import annotations

import os
import re
import threading

import numpy as np
import psycopg2
import pytest
from psycopg2.extras import execute_values
from sklearn.datasets import load_digits

import refusals
import worker_activity

from madlib_dl import db as madlib_db
from madlib_dl import settings, trained_models
from madlib_dl.keras_runtime import gpus, serialization, tf_setup
from madlib_dl.preprocess import packing
from madlib_dl.segment import runtime
from madlib_dl.training import placement
from madlib_dl.training.schedule import IterationScheduler
from madlib_dl.training.spec import derive_seed

keras = tf_setup.keras()

S = "madlib_dl."
ARGS = ("source_table", "model", "model_arch_table", "model_id", "compile_params", "fit_params", "num_iterations",
        "use_gpus", "validation_table", "metrics_compute_frequency", "warm_start", "name", "description",
        "object_table")
FIT = f"SELECT {S}madlib_keras_fit(" + ", ".join(f"{a} => %({a})s" for a in ARGS) + ")"
COMPILE = "loss='categorical_crossentropy', optimizer='Adam(learning_rate=0.01)', metrics=['accuracy']"
FIT_PARAMS = "batch_size=16, epochs=2"  # shuffled (Keras' default): two permutations per hop
DEFAULTS = {"source_table": "digits_packed", "model": "m", "model_arch_table": "arch", "model_id": 1,
            "compile_params": COMPILE, "fit_params": FIT_PARAMS, "num_iterations": 2, "use_gpus": False,
            "validation_table": None, "metrics_compute_frequency": None, "warm_start": None, "name": None,
            "description": None, "object_table": None}
SEGMENTS = (0, 1)
MLP, MLP_WITH_WEIGHTS, FIVE_INPUTS, FOUR_CLASSES = 1, 2, 3, 4

SUMMARY_COLUMNS = [  # MADlib fit's summary, in its order, then ours
    ("source_table", "text"), ("model", "text"), ("dependent_varname", "text[]"), ("independent_varname", "text[]"),
    ("model_arch_table", "text"), ("model_id", "integer"), ("compile_params", "text"), ("fit_params", "text"),
    ("num_iterations", "integer"), ("validation_table", "text"), ("object_table", "text"),
    ("metrics_compute_frequency", "integer"), ("name", "text"), ("description", "text"), ("model_type", "text"),
    ("model_size", "double precision"), ("start_training_time", "timestamp without time zone"),
    ("end_training_time", "timestamp without time zone"), ("metrics_elapsed_time", "double precision[]"),
    ("madlib_version", "text"), ("num_classes", "integer[]"), ("dependent_vartype", "text[]"),
    ("normalizing_const", "real"), ("metrics_type", "text[]"), ("loss_type", "text"),
    ("training_metrics_final", "double precision"), ("training_loss_final", "double precision"),
    ("training_metrics", "double precision[]"), ("training_loss", "double precision[]"),
    ("validation_metrics_final", "double precision"), ("validation_loss_final", "double precision"),
    ("validation_metrics", "double precision[]"), ("validation_loss", "double precision[]"),
    ("metrics_iters", "integer[]"), ("label_class_values", "integer[]"),
    ("validation_metrics_elapsed_time", "double precision[]"), ("total_iterations", "integer"),
]


def _mlp(inputs=64, classes=10):
    keras.utils.set_random_seed(7)
    return keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(classes, activation="softmax")])


@pytest.fixture(scope="module")
def db(training_database):
    """Everything runs as a plain role, and its runs must use background workers (conftest)."""
    with training_database("fit") as conn:
        with conn.cursor() as c:
            digits = load_digits()
            c.execute("CREATE TABLE digits (id INTEGER, pixels DOUBLE PRECISION[], label INTEGER)")
            execute_values(c, "INSERT INTO digits VALUES %s",
                           [(i, x.tolist(), int(y)) for i, (x, y) in enumerate(zip(digits.data[:400],
                                                                                   digits.target[:400]))])
            c.execute("CREATE TABLE digits_train AS SELECT * FROM digits WHERE id < 300")
            c.execute("CREATE TABLE digits_val AS SELECT * FROM digits WHERE id >= 300")
            c.execute(f"SELECT {S}training_preprocessor_dl('digits_train', 'digits_packed', 'label', 'pixels', 50, "
                      "16.0, NULL, '2')")
            c.execute(f"SELECT {S}validation_preprocessor_dl('digits_val', 'digits_val_packed', 'label', 'pixels', "
                      "'digits_packed')")
            c.execute(f"SELECT {S}load_keras_model('arch', %s::json)", [_mlp().to_json()])
            model = _mlp()
            c.execute(f"SELECT {S}load_keras_model('arch', %s::json, %s)",
                      [model.to_json(), serialization.serialize_weights(model.get_weights())])
            c.execute(f"SELECT {S}load_keras_model('arch', %s::json)", [_mlp(inputs=5).to_json()])
            c.execute(f"SELECT {S}load_keras_model('arch', %s::json)", [_mlp(classes=4).to_json()])
            c.execute("SELECT array_agg(model_id ORDER BY model_id) FROM arch")
            assert c.fetchone()[0] == [MLP, MLP_WITH_WEIGHTS, FIVE_INPUTS, FOUR_CLASSES]
            c.execute("SELECT __dist_key__, count(*) FROM digits_packed GROUP BY 1 ORDER BY 1")
            assert c.fetchall() == [(0, 3), (1, 3)]
        yield conn


@pytest.fixture
def cur(db):
    del db.notices[:]
    with db.cursor() as c:
        c.execute("RESET ALL")  # madlib_dl.executor: 'workers', the role's default in this database
        yield c


# ---------------------------------------------------------------------------------------------------
# Helpers

def _drop(cur, model):
    cur.execute(f"DROP TABLE IF EXISTS {model}, {model}_summary")


def _fit(cur, **arguments):
    arguments = {**DEFAULTS, **arguments}
    if not arguments["warm_start"]:
        _drop(cur, arguments["model"])
    cur.execute(FIT, arguments)


def _hops(cur, kind="train"):
    cur.execute("SELECT iteration, mst_key, segment, worker_pid, extract(epoch FROM started) AS started, "
                "extract(epoch FROM ended) AS ended, buffers_read, images, loss FROM madlib_dl.last_fit_hops() "
                "WHERE kind = %s ORDER BY started", [kind])
    names = [d.name for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _state(cur, model):
    cur.execute(f"SELECT model_weights, optimizer_state FROM {model}")
    weights, optimizer = cur.fetchone()
    return bytes(weights), bytes(optimizer) if optimizer is not None else None


def _summary(cur, model):
    cur.execute(f"SELECT * FROM {model}_summary")
    names = [d.name for d in cur.description]
    rows = cur.fetchall()
    assert len(rows) == 1
    return dict(zip(names, rows[0]))


def _arch(cur, model_id=MLP):
    cur.execute("SELECT model_arch::text FROM arch WHERE model_id = %s", [model_id])
    return cur.fetchone()[0]


def _segments(cur, table="digits_packed"):
    """Each segment's examples, its buffers in buffer_id order (as a hop reads them)."""
    cur.execute(f"SELECT __dist_key__, pixels, pixels_shape, label, label_shape FROM {table} "
                "ORDER BY __dist_key__, buffer_id")
    data = {}
    for key, x, xs, y, ys in cur.fetchall():
        data.setdefault(key, []).append((packing.decode(bytes(x), xs, packing.FEATURE_DTYPE),
                                         packing.decode(bytes(y), ys, packing.LABEL_DTYPE).astype(np.float32)))
    return {k: (np.concatenate([x for x, _ in v]), np.concatenate([y for _, y in v])) for k, v in data.items()}


def _weights(blob, like):
    return serialization.deserialize_weights(blob, [w.shape for w in like.get_weights()])


def _replay(cur, hops, batch_size=16, epochs=2, fit_seed=0, offset=0):
    """Plain Keras in this process, one model: madlib_dl's seeded initial weights, then one fit per hop
    on that segment's examples, each epoch in the permutation the hop's seed draws (training_loop)."""
    segments = _segments(cur)
    arch = _arch(cur)
    model = keras.models.model_from_json(arch)
    model.set_weights(runtime.initial_weights(arch, derive_seed(fit_seed, MLP)))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="categorical_crossentropy")
    for hop in hops:
        x, y = segments[hop["segment"]]
        permutations = np.random.default_rng(derive_seed(fit_seed, 1, hop["iteration"] + offset, hop["segment"]))
        for _ in range(epochs):
            p = permutations.permutation(len(x))
            model.fit(x[p], y[p], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    return model


def _scheduled_order(iteration, fit_seed=0):
    """The segments one model visits in ``iteration``, as the driver's scheduler hands them out (every
    segment is free whenever the one model is: the order does not depend on the executor)."""
    scheduler, order = IterationScheduler([1], SEGMENTS, iteration, fit_seed), []
    while not scheduler.done:
        (hop,) = scheduler.assign(list(SEGMENTS))
        scheduler.finish(hop)
        order.append(hop.segment)
    return order




def _workers(cur) -> dict:
    """This role's background workers in this database: pid -> (application_name, query)."""
    return worker_activity.workers(cur, "application_name", "query")


def _tf_compute_threads(pid) -> int:
    """The threads of TensorFlow's inter-op pool in process ``pid``: TensorFlow 2.21 names each one
    tf_Compute (measured in workers started with madlib_dl.worker_threads 1, 2, 3: 1, 2, 3 of them; the
    intra-op pool's threads carry the process's name and cannot be told apart)."""
    names = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as comm:
                names.append(comm.read().strip())
        except OSError:  # a thread that just ended
            pass
    return names.count("tf_Compute")


# ---------------------------------------------------------------------------------------------------
# Training: equivalence with plain Keras, fit_multiple, warm start

def test_same_weights_as_plain_keras_visiting_the_segments_in_turn(cur):
    _fit(cur, model="m_eq")
    hops = _hops(cur)
    assert [(h["iteration"], h["segment"]) for h in hops] == \
        [(i, s) for i in (1, 2) for s in _scheduled_order(i)]
    assert {h["mst_key"] for h in hops} == {1} and sum(h["images"] for h in hops) == 2 * 300
    expected = _replay(cur, hops)
    weights, _ = _state(cur, "m_eq")
    for got, want in zip(_weights(weights, expected), expected.get_weights()):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # the model trained: the final weights are far from the seeded start
    start = runtime.initial_weights(_arch(cur), derive_seed(0, MLP))
    assert max(np.abs(g - s).max() for g, s in zip(_weights(weights, expected), start)) > 0.05


def test_same_as_fit_multiple_with_one_configuration(cur):
    """fit runs fit_multiple's machinery: with a one-row mst table (mst_key 1) the seeds, the schedule
    and so the trained model are the same, bit for bit."""
    cur.execute("DROP TABLE IF EXISTS mst1, mst1_summary, fm1, fm1_summary, fm1_info")
    cur.execute(f"SELECT {S}load_model_selection_table('arch', 'mst1', ARRAY[1], ARRAY[%s], ARRAY[%s])",
                [COMPILE, FIT_PARAMS])
    cur.execute(f"SELECT {S}madlib_keras_fit_multiple_model('digits_packed', 'fm1', 'mst1', 2, FALSE, NULL, NULL, "
                "FALSE, NULL, NULL, TRUE)")
    _fit(cur, model="m_fm")
    cur.execute("SELECT model_weights, optimizer_state FROM fm1")
    assert tuple(bytes(v) for v in cur.fetchone()) == _state(cur, "m_fm")
    cur.execute("SELECT training_loss FROM fm1_info")
    assert cur.fetchone()[0] == _summary(cur, "m_fm")["training_loss"]


def test_warm_start_continues_exactly(cur):
    """1 iteration, then a warm start of 1, equals 2 iterations: the warm run starts from the stored
    weights and Adam state, and its iteration is seeded and scheduled as iteration 2."""
    _fit(cur, model="m_two", num_iterations=2)
    two = _state(cur, "m_two")
    order_two = [h["segment"] for h in _hops(cur) if h["iteration"] == 2]
    _fit(cur, model="m_warm", num_iterations=1, name="first")
    _fit(cur, model="m_warm", num_iterations=1, warm_start=True, name="second")
    assert [h["segment"] for h in _hops(cur)] == order_two
    assert _state(cur, "m_warm") == two
    summary = _summary(cur, "m_warm")  # replaced: this run's arguments and arrays, the total so far
    assert (summary["name"], summary["num_iterations"], summary["total_iterations"], summary["metrics_iters"],
            len(summary["training_loss"])) == ("second", 1, 2, [1], 1)
    cur.execute("SELECT count(*) FROM m_warm")
    assert cur.fetchone()[0] == 1


def test_warm_start_starts_from_the_stored_weights(cur):
    """Other compile parameters keep the weights but not the optimizer state: with SGD at learning
    rate 0 the weights come back unchanged."""
    _fit(cur, model="m_ws", num_iterations=1)
    weights, adam_state = _state(cur, "m_ws")
    sgd = "loss='categorical_crossentropy', optimizer='SGD(learning_rate=0.0)'"
    _fit(cur, model="m_ws", num_iterations=1, warm_start=True, compile_params=sgd)
    after, sgd_state = _state(cur, "m_ws")
    assert after == weights and sgd_state != adam_state
    summary = _summary(cur, "m_ws")
    assert (summary["compile_params"], summary["metrics_type"], summary["training_metrics"],
            summary["total_iterations"]) == (sgd, None, None, 2)


def test_transfer_learning_from_the_architecture_weights(cur):
    sgd = "loss='categorical_crossentropy', optimizer='SGD(learning_rate=0.0)'"
    _fit(cur, model="m_tl", model_id=MLP_WITH_WEIGHTS, num_iterations=1, compile_params=sgd)
    cur.execute("SELECT model_weights FROM arch WHERE model_id = %s", [MLP_WITH_WEIGHTS])
    loaded = bytes(cur.fetchone()[0])
    assert _state(cur, "m_tl")[0] == loaded


# ---------------------------------------------------------------------------------------------------
# Output tables

def test_output_tables_have_madlibs_columns_and_load_back(cur, db):
    _fit(cur, model="m_out", name="digits mlp", description="two iterations")
    cur.execute("SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "JOIN pg_class c ON c.oid = a.attrelid WHERE c.relname IN ('m_out', 'm_out_summary') "
                "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY c.relname, a.attnum")
    columns = cur.fetchall()
    assert [(n, t) for r, n, t in columns if r == "m_out"] == \
        [("model_weights", "bytea"), ("model_arch", "json"), ("optimizer_state", "bytea")]
    assert [(n, t) for r, n, t in columns if r == "m_out_summary"] == SUMMARY_COLUMNS
    cur.execute("SELECT count(*), bool_and(model_arch::text = %s) FROM m_out", [_arch(cur)])
    assert cur.fetchone() == (1, True)
    weights, optimizer = _state(cur, "m_out")
    s = _summary(cur, "m_out")
    assert {k: s[k] for k in ("source_table", "model", "dependent_varname", "independent_varname", "model_arch_table",
                              "model_id", "compile_params", "fit_params", "num_iterations", "validation_table",
                              "object_table", "metrics_compute_frequency", "name", "description", "model_type",
                              "num_classes", "dependent_vartype", "normalizing_const", "metrics_type", "loss_type",
                              "metrics_iters", "label_class_values", "total_iterations")} == {
        "source_table": "digits_packed", "model": "m_out", "dependent_varname": ["label"],
        "independent_varname": ["pixels"], "model_arch_table": "arch", "model_id": MLP, "compile_params": COMPILE,
        "fit_params": FIT_PARAMS, "num_iterations": 2, "validation_table": None, "object_table": None,
        "metrics_compute_frequency": 2, "name": "digits mlp", "description": "two iterations",
        "model_type": "madlib_keras", "num_classes": [10], "dependent_vartype": ["integer"],
        "normalizing_const": 16.0, "metrics_type": ["accuracy"], "loss_type": "categorical_crossentropy",
        "metrics_iters": [2], "label_class_values": list(range(10)), "total_iterations": 2}
    assert s["model_size"] == len(weights) / 1024.0
    assert s["start_training_time"] < s["end_training_time"] and s["madlib_version"].startswith("madlib_dl ")
    assert len(s["metrics_elapsed_time"]) == len(s["training_loss"]) == len(s["training_metrics"]) == 1
    assert (s["training_loss_final"], s["training_metrics_final"]) == (s["training_loss"][0], s["training_metrics"][0])
    assert all(s[k] is None for k in ("validation_metrics_final", "validation_loss_final", "validation_metrics",
                                      "validation_loss", "validation_metrics_elapsed_time"))
    # the training metrics are the final model's over the whole table, as plain Keras measures them
    model = keras.models.model_from_json(_arch(cur))
    model.set_weights(_weights(weights, model))
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    x, y = (np.concatenate(parts) for parts in zip(*_segments(cur).values()))
    loss, accuracy = model.evaluate(x, y, verbose=0)
    assert s["training_loss_final"] == pytest.approx(loss, abs=1e-5)
    assert s["training_metrics_final"] == pytest.approx(accuracy, abs=1e-6)
    assert optimizer is not None
    with madlib_db.using(madlib_db.PsycopgDatabase(db)) as conn:
        loaded = trained_models.load(conn, "m_out", None)
    assert (loaded.mst_key, loaded.weights, loaded.compile_params, loaded.metrics_type, loaded.loss_type,
            loaded.dependent_varname, loaded.independent_varname, loaded.class_values, loaded.normalizing_const) == \
        (None, weights, COMPILE, ("accuracy",), "categorical_crossentropy", "label", "pixels", tuple(range(10)), 16.0)


def test_validation_and_metrics_compute_frequency(cur):
    _fit(cur, model="m_val", num_iterations=3, validation_table="digits_val_packed", metrics_compute_frequency=2)
    s = _summary(cur, "m_val")
    assert s["metrics_iters"] == [2, 3] and s["validation_table"] == "digits_val_packed"
    for name in ("training_loss", "training_metrics", "validation_loss", "validation_metrics", "metrics_elapsed_time",
                 "validation_metrics_elapsed_time"):
        assert len(s[name]) == 2, name
    assert s["metrics_elapsed_time"][0] < s["metrics_elapsed_time"][1]
    assert s["validation_metrics_elapsed_time"][0] < s["validation_metrics_elapsed_time"][1]
    assert (s["validation_loss_final"], s["validation_metrics_final"]) == (s["validation_loss"][1],
                                                                           s["validation_metrics"][1])
    assert 0 < s["validation_loss_final"] < 3 and 0.3 < s["validation_metrics_final"] <= 1
    # training_metrics 'running': iteration 2's training metrics are its hops' running means; the last
    # iteration's an evaluation of the final model on the training table (2 segments)
    assert [h["iteration"] for h in _hops(cur, "evaluate train")] == [3, 3]
    assert sum(h["images"] for h in _hops(cur, "evaluate validation")) == 2 * 100
    notices = [n for n in cur.connection.notices if "madlib_keras_fit: iteration" in n]
    assert len(notices) == 3
    assert "(mean over this iteration's hops)" in notices[0] and "validation loss=" in notices[1]
    assert not any("mst_key" in n or "fit_multiple" in n for n in cur.connection.notices)


def test_the_models_row_is_written_before_its_final_evaluation(cur):
    """fit's one model: its row goes into the output table as soon as its last training hop is back, so
    the write overlaps the final evaluations (before the final iteration's NOTICE)."""
    cur.execute("SET client_min_messages = debug2")
    cur.connection.notices.clear()
    _fit(cur, model="m_early", num_iterations=2, validation_table="digits_val_packed")
    ours = [n for n in cur.connection.notices if "madlib_keras_fit:" in n]
    written = [i for i, n in enumerate(ours) if "the model's final state written" in n]
    last = next(i for i, n in enumerate(ours) if "iteration 2/2 took" in n)
    assert len(written) == 1 and written[0] < last, ours
    weights, optimizer = _state(cur, "m_early")
    assert len(weights) > 0 and optimizer is not None


def test_one_hot_labels_keep_null_class_values(cur):
    cur.execute("DROP TABLE IF EXISTS onehot_src, onehot_packed, onehot_packed_summary")
    cur.execute("CREATE TABLE onehot_src AS SELECT id, pixels, "
                "ARRAY(SELECT (g = label)::int FROM generate_series(0, 9) g) AS y FROM digits_train")
    cur.execute(f"SELECT {S}training_preprocessor_dl('onehot_src', 'onehot_packed', 'y', 'pixels', NULL, 16.0, "
                "NULL, '2')")
    _fit(cur, model="m_onehot", source_table="onehot_packed", num_iterations=1)
    s = _summary(cur, "m_onehot")
    assert (s["y_class_values"], s["num_classes"], s["dependent_varname"]) == (None, [10], ["y"])


# ---------------------------------------------------------------------------------------------------
# Caching, background workers

def test_caches_when_the_run_fits_the_memory_budget(cur):
    cur.execute("SELECT __dist_key__, count(*) FROM digits_packed GROUP BY 1")
    buffers = dict(cur.fetchall())
    _fit(cur, model="m_cache")
    train = _hops(cur)
    assert [h["buffers_read"] for h in train] == [buffers[h["segment"]] for h in train[:2]] + [0, 0]
    assert all(h["buffers_read"] == 0 for h in _hops(cur, "evaluate train"))
    assert not any("caching" in n for n in cur.connection.notices)


@pytest.fixture(scope="module")
def wide(db):
    """600 examples of 512 features, 4 classes: about 1.2 MiB as cached, over 4 segments and over 1; the
    model (Dense(4)) is 8 KiB of weights, about 80 KiB per worker with its gradients, Adam's slots and
    the states in transfer (training.memory)."""
    with db.cursor() as c:
        c.execute("CREATE TABLE wide AS SELECT i AS id, "
                  "ARRAY(SELECT ((i * 31 + j * 17) % 101)::float8 / 101 FROM generate_series(1, 512) j) AS x, "
                  "i % 4 AS y FROM generate_series(1, 600) i")
        for name, segments in (("wide4", 4), ("wide1", 1)):
            c.execute(f"SELECT {S}training_preprocessor_dl('wide', %s, 'y', 'x', NULL, 1.0, NULL, %s)",
                      [name, str(segments)])
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((512,)), keras.layers.Dense(4, activation="softmax")])
        c.execute(f"SELECT {S}load_keras_model('wide_arch', %s::json)", [model.to_json()])
    return "wide_arch"


def test_reads_every_hop_one_segment_at_a_time_when_caching_does_not_fit(server, plain_role, wide):
    """With madlib_dl.memory_budget_mb = 1 the 4-segment table does not fit cached (1.5 MiB with the
    models) but one segment at a time does (623 KiB): a NOTICE, every hop reads its buffers, evaluation
    in turn (on background workers, which would otherwise evaluate at the same time). In a new session,
    so that its 4 workers are new ones (test_a_call_needing_more_workers_than_the_session_has_idle mixes
    idle and new workers)."""
    with server.connect("fit", user=plain_role) as conn, conn.cursor() as cur:
        cur.execute(f"SET {S}memory_budget_mb = 1")
        cur.execute(f"SET {S}training_workers = 4")  # fit would use one worker: its model counts once
        cur.execute("SET statement_timeout = '60s'")  # it takes seconds; a hang fails here, not the suite
        cur.execute("SELECT __dist_key__, count(*) FROM wide4 GROUP BY 1")
        buffers = dict(cur.fetchall())
        _fit(cur, model="m_wide", source_table="wide4", model_arch_table=wide, fit_params="batch_size=50")
        assert any("madlib_keras_fit: caching the examples would need about 1.5 MiB" in n and
                   "memory_budget_mb is 1 MiB" in n and "SET madlib_dl.memory_budget_mb = 1024" in n
                   for n in conn.notices), conn.notices
        train = _hops(cur)
        assert len(train) == 8 and all(h["buffers_read"] == buffers[h["segment"]] for h in train)
        evaluations = _hops(cur, "evaluate train")
        assert len(evaluations) == 4 and len({h["worker_pid"] for h in evaluations}) == 4
        assert conn.get_backend_pid() not in {h["worker_pid"] for h in evaluations}
        assert all(h["buffers_read"] == buffers[h["segment"]] for h in evaluations)
        ordered = sorted(evaluations, key=lambda h: h["started"])
        assert all(a["ended"] <= b["started"] for a, b in zip(ordered, ordered[1:])), "evaluations overlapped"
        assert np.isfinite(_summary(cur, "m_wide")["training_loss_final"])


def test_refused_when_one_segment_does_not_fit_either(cur, wide):
    cur.execute(f"SET {S}memory_budget_mb = 1")
    before = refusals.tables(cur)
    _drop(cur, "m_big")
    with pytest.raises(psycopg2.Error) as info:
        _fit(cur, model="m_big", source_table="wide1", model_arch_table=wide)
    message = info.value.diag.message_primary
    assert info.value.pgcode == "22023", message
    assert message.startswith("madlib_dl: memory: madlib_keras_fit needs about 1.3 MiB even reading one segment at "
                              "a time"), message
    assert message.endswith("memory_budget_mb is 1 MiB"), message
    assert info.value.diag.message_hint == "Raise it, e.g. SET madlib_dl.memory_budget_mb = 1024."
    assert refusals.tables(cur) == before


def test_background_workers_train_the_same_model_and_stay_idle_for_the_next_call(cur, server, plain_role):
    cur.execute(f"SET {S}executor = 'in_process'")
    _fit(cur, model="m_in_process", validation_table="digits_val_packed")
    in_process_order = [(h["iteration"], h["segment"]) for h in _hops(cur)]
    assert {h["worker_pid"] for h in _hops(cur)} == {cur.connection.get_backend_pid()}
    cur.execute(f"RESET {S}executor")  # 'workers'
    cur.execute(f"SET {S}training_workers = 2")  # one per segment (fit would choose one worker)
    seen, done = [], threading.Event()

    def watch():  # as the role itself: a data scientist sees her own workers
        worker_activity.watch(lambda: server.connect("fit", user=plain_role), seen, done, "application_name", "query")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        _fit(cur, model="m_workers", validation_table="digits_val_packed")
    finally:
        done.set()
        watcher.join()
    hops = _hops(cur)
    assert [(h["iteration"], h["segment"]) for h in hops] == in_process_order
    pids = {h["segment"]: h["worker_pid"] for h in hops}
    assert len(set(pids.values())) == 2 and cur.connection.get_backend_pid() not in pids.values()
    s = _summary(cur, "m_workers")
    assert np.isfinite(s["training_loss_final"]) and np.isfinite(s["validation_loss_final"])
    expected = _replay(cur, hops)
    got = _weights(_state(cur, "m_workers")[0], expected)
    reference = _weights(_state(cur, "m_in_process")[0], expected)
    for g, r, e in zip(got, reference, expected.get_weights()):
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-5)
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)
    names = {name for pid, name, _ in seen if pid in pids.values()}
    assert any(name.startswith("madlib_dl fit: iteration 2/2") for name in names), names
    assert "madlib_dl fit: iteration 2/2 (segment 1)" in names, names
    assert not any("fit_multiple" in name for name in names)
    # the training workers run nothing else ('' before a new worker's first statement; the run's progress
    # recorder is a worker too, and not one of these)
    assert {query for pid, _, query in seen if pid in pids.values() and query} == {
        "SELECT madlib_dl.internal_worker_serve($1)"}
    # after a successful run the session's workers stay, idle, for its next call
    idle = _workers(cur)
    assert set(pids.values()) <= set(idle)
    assert {idle[pid][0] for pid in pids.values()} == {"madlib_dl worker (idle)"}
    # one model trains on one worker at a time: each worker's TensorFlow gets all the CPUs' threads
    assert [_tf_compute_threads(pid) for pid in sorted(set(pids.values()))] == [settings.cpu_count()] * 2
    # the next call of the session starts at once on them
    del cur.connection.notices[:]
    _fit(cur, model="m_again", num_iterations=1)
    assert {h["worker_pid"] for h in _hops(cur)} == set(pids.values())
    assert not any("starting" in n and "background worker" in n for n in cur.connection.notices), \
        cur.connection.notices


def test_a_call_needing_more_workers_than_the_session_has_idle(cur):
    """The session's 2 idle workers serve 2 segments of a 4-segment run and 2 more start; all 4 train.
    (statement_timeout bounds the call: a driver waiting on the wrong worker would hang.) The workers
    are forced: fit would choose one worker with every CPU."""
    cur.execute(f"SET {S}training_workers = 2")
    _fit(cur, model="m_two_workers", num_iterations=1)
    idle = {h["worker_pid"] for h in _hops(cur)}
    assert len(idle) == 2 and idle <= set(_workers(cur))
    cur.execute("DROP TABLE IF EXISTS digits4, digits4_summary")
    cur.execute(f"SELECT {S}training_preprocessor_dl('digits_train', 'digits4', 'label', 'pixels', 50, 16.0, NULL, "
                "'4')")
    cur.execute("SET statement_timeout = '60s'")
    cur.execute(f"SET {S}training_workers = 4")
    del cur.connection.notices[:]
    _fit(cur, model="m_four", source_table="digits4", num_iterations=2)
    hops = _hops(cur)
    pids = {h["worker_pid"] for h in hops}
    assert len(pids) == 4 and idle < pids and cur.connection.get_backend_pid() not in pids
    assert sorted((h["iteration"], h["segment"]) for h in hops) == [(i, s) for i in (1, 2) for s in range(4)]
    assert sum(h["images"] for h in hops) == 2 * 300
    assert any("starting 2 background workers (2 idle workers of this session reused)" in n
               for n in cur.connection.notices), cur.connection.notices


@pytest.mark.parametrize("executor", ["workers", "in_process"])
def test_a_run_failing_in_keras_leaves_nothing(cur, executor):
    """Keras refuses these compile parameters only when the model is compiled, at the first hop. The
    failed run ends the session's workers (idle ones from earlier calls too); the session runs again."""
    _fit(cur, model="m_before_fail", num_iterations=1)  # the session has idle workers
    assert _workers(cur)
    _drop(cur, "m_fail")
    before = refusals.tables(cur)
    cur.execute(f"SET {S}executor = %s", [executor])
    with pytest.raises(psycopg2.Error, match="loss_weights"):
        _fit(cur, model="m_fail", compile_params="loss='categorical_crossentropy', optimizer='Adam()', "
                                                 "loss_weights=[1.0, 2.0]")
    assert refusals.tables(cur) == before
    cur.execute("SELECT madlib_dl.internal_fit_release(NULL)")
    assert cur.fetchone()[0] is False
    if executor == "workers":
        assert worker_activity.none_left_within(cur) == {}
    cur.execute(f"RESET {S}executor")
    _fit(cur, model="m_after_fail", num_iterations=1)
    assert len({h["worker_pid"] for h in _hops(cur)} - {cur.connection.get_backend_pid()}) == 1  # fit: one worker


# ---------------------------------------------------------------------------------------------------
# Bad arguments: one error naming the argument, nothing created

def _gpus_visible() -> bool:
    return bool(placement.parse_nvidia_smi_memory(gpus.nvidia_gpu_memory()))


ERRORS = [
    ({"compile_params": None}, "22023", "compile_params", ["expected a string like", "got NULL"]),
    ({"compile_params": "  "}, "22023", "compile_params", ["got an empty string"]),
    ({"compile_params": "loss='categorical_crossentropy'"}, "22023", "compile_params", ["optimizer is required"]),
    ({"fit_params": "batch_size=0"}, "22023", "fit_params", ["batch_size must be an integer >= 1, got 0"]),
    ({"fit_params": "batch_size=16, epochs=0"}, "22023", "fit_params", ["epochs must be an integer >= 1, got 0"]),
    ({"fit_params": "epochs=1, initial_epoch=1"}, "22023", "fit_params",
     ["initial_epoch must be below epochs (1), got 1: the hop would train no epoch"]),
    ({"compile_params": "loss='categorical_crossentropy', optimizer='Adam(lr=-0.01)'"}, "22023", "compile_params",
     ["optimizer: Adam(lr=-0.01): lr must be a number >= 0"]),
    ({"compile_params": "loss='categorical_crossentropy', optimizer='Adam(momentum=0.9)'"}, "22023", "compile_params",
     ["Adam has no argument momentum"]),
    ({"model_id": 99}, "22023", "model_id", ["model_id 99 is not in model architecture table arch"]),
    ({"model_id": None}, "22023", "model_id", ["got NULL"]),
    ({"model_id": FIVE_INPUTS}, "22023", "model_id",
     [f"model_id {FIVE_INPUTS} expects input shape (5,) but source_table 'digits_packed' holds examples of "
      "shape (64,)"]),
    ({"model_id": FOUR_CLASSES}, "22023", "model_id",
     [f"model_id {FOUR_CLASSES} has 4 outputs but source_table 'digits_packed' has 10 classes"]),
    ({"num_iterations": 0}, "22023", "num_iterations", ["expected an integer of at least 1, got 0"]),
    ({"num_iterations": None}, "22023", "num_iterations", ["got NULL"]),
    ({"metrics_compute_frequency": 3}, "22023", "metrics_compute_frequency", ["expected 1 to num_iterations (2)"]),
    ({"object_table": "custom_fns"}, "42P01", "object_table", ["table 'custom_fns' does not exist"]),
    ({"source_table": "no_such_table"}, "42P01", "source_table", ["table 'no_such_table' does not exist"]),
    ({"source_table": "digits"}, "42P01", "source_table", ["has no summary table 'digits_summary'"]),
    ({"validation_table": "no_such_table"}, "42P01", "validation_table", ["does not exist"]),
    ({"model_arch_table": "no_such_arch"}, "42P01", "model_arch_table", ["table 'no_such_arch' does not exist"]),
    ({"model_arch_table": "digits"}, "22023", "model_arch_table",
     ["'digits' is not a model architecture table (no column model_id, model_arch, model_weights)",
      "load_keras_model()"]),
    ({"model": None}, "22023", "model", ["expected a table name, got NULL"]),
    ({"model": "a;b"}, "22023", "model", ["expected a table name such as"]),
    ({"model": "no_schema.m"}, "42P01", "model", ["schema 'no_schema' of 'no_schema.m' does not exist"]),
    ({"model": "digits_packed"}, "42P07", "model", ["table 'digits_packed' already exists", "warm_start => TRUE"]),
    ({"model": "nothing_yet", "warm_start": True}, "42P01", "warm_start",
     ["TRUE but 'nothing_yet' does not exist", "warm_start => FALSE"]),
]


@pytest.mark.parametrize("arguments,sqlstate,argument,fragments", ERRORS,
                         ids=[f"{a}-{'-'.join(map(str, arguments.values()))}"[:60] for arguments, _, a, _ in ERRORS])
def test_bad_arguments(cur, arguments, sqlstate, argument, fragments):
    _fails(cur, sqlstate, argument, fragments, **arguments)


def _fails(cur, sqlstate, argument, fragments, **arguments):
    out = {**DEFAULTS, **arguments}["model"]
    if out and re.fullmatch(r"[a-z_]+", out) and out != "digits_packed" and not arguments.get("warm_start"):
        _drop(cur, out)
    # a remedy may be the error's HINT
    refusals.refused(cur, lambda: cur.execute(FIT, {**DEFAULTS, **arguments}), sqlstate, argument, *fragments,
                     hint_separator=" HINT: ")


def test_a_batch_size_above_every_segment_is_noticed_before_the_workers_start(cur):
    """Not an error: Keras takes a batch larger than the data as all of it (full-batch training)."""
    _fit(cur, model="m_batch", fit_params="batch_size=100000000", num_iterations=1)
    said = [n.strip() for n in cur.connection.notices]
    notice = ("NOTICE:  madlib_keras_fit: fit_params: batch_size=100000000 is more than the 150 examples of the largest "
              "of the 2 segments of 'digits_packed': each hop trains on its whole segment as one batch (Keras takes a "
              "batch larger than the data as all of it)")
    assert notice in said, said
    assert said.index(notice) < min(i for i, n in enumerate(said) if "iteration" in n), said
    cur.execute("SELECT training_loss_final IS NOT NULL FROM m_batch_summary")
    assert cur.fetchone()[0]
    _drop(cur, "m_batch")


@pytest.mark.parametrize("present", [("taken",), ("taken_summary",)])
def test_output_exists_without_warm_start(cur, present):
    _drop(cur, "taken")
    for table in present:
        cur.execute(f"CREATE TABLE {table} AS SELECT 42 AS kept")
    try:
        before = refusals.tables(cur)
        with pytest.raises(psycopg2.Error) as info:
            cur.execute(FIT, {**DEFAULTS, "model": "taken"})
        assert info.value.pgcode == "42P07"
        assert info.value.diag.message_primary.startswith(f"madlib_dl: model: table '{present[0]}' already exists")
        assert refusals.tables(cur) == before
    finally:
        _drop(cur, "taken")


def test_warm_start_over_a_table_fit_did_not_write(cur):
    cur.execute("DROP TABLE IF EXISTS fm_out, fm_out_summary, fm_out_info, mst_w, mst_w_summary")
    cur.execute(f"SELECT {S}load_model_selection_table('arch', 'mst_w', ARRAY[1], ARRAY[%s], ARRAY[%s])",
                [COMPILE, FIT_PARAMS])
    cur.execute(f"SELECT {S}madlib_keras_fit_multiple_model('digits_packed', 'fm_out', 'mst_w', 1, FALSE)")
    _fails(cur, "22023", "warm_start", ["fm_out is not an output table of madlib_keras_fit"], model="fm_out",
           warm_start=True)
    cur.execute("SELECT count(*) FROM fm_out")
    assert cur.fetchone()[0] == 1


@pytest.mark.skipif(_gpus_visible(), reason="this host has GPUs: use_gpus TRUE is valid here")
def test_use_gpus_without_gpus(cur):
    _fails(cur, "22023", "use_gpus", ["no GPU is visible"], model="m_gpus", use_gpus=True)


# ---------------------------------------------------------------------------------------------------
# Help

def test_help(cur):
    cur.execute(f"SELECT {S}madlib_keras_fit(), {S}madlib_keras_fit(''), {S}madlib_keras_fit(NULL)")
    summary, blank, null = cur.fetchone()
    assert summary == blank == null
    assert summary.startswith("madlib_keras_fit: train one Keras model") and "averages" in summary
    assert "madlib_keras_fit('usage')" in summary
    cur.execute(f"SELECT {S}madlib_keras_fit('usage')")
    usage = cur.fetchone()[0]
    documented = re.findall(r"^ {4}(\w+) +(?:VARCHAR|INTEGER|BOOLEAN)\b", usage, re.MULTILINE)
    assert tuple(documented) == ARGS, usage
    cur.execute("SELECT pg_get_function_identity_arguments(p.oid) FROM pg_proc p "
                "JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'madlib_dl' AND p.proname = 'madlib_keras_fit' AND p.pronargs = 14")
    signature = cur.fetchone()[0]
    assert tuple(re.findall(r"(\w+) (?:character varying|integer|boolean)", signature)) == ARGS, signature
    assert "sequential SGD" in usage and "memory_budget_mb" in usage
    cur.execute(f"SELECT {S}madlib_keras_fit('nonsense')")
    assert "no help topic 'nonsense'" in cur.fetchone()[0]
    cur.execute("SELECT provolatile FROM pg_proc WHERE proname = 'madlib_keras_fit' AND pronargs <= 1")
    assert [r[0] for r in cur.fetchall()] == ["i", "i"]
