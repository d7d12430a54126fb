"""madlib_keras_evaluate on a real server: the numbers (against fit_multiple's own metrics and against
Keras' model.evaluate), single-model and multi-model tables, background workers and this session,
failures that leave nothing behind, and every bad argument.

One database for the module: 500 of sklearn's digits (8x8x1, 10 classes), 400 packed for training over
2 segments and 100 for validation, and one fit_multiple run of 2 configurations for 2 iterations.
Everything runs as a plain role on a server with Debian's pg_hba, with background workers required (a
fallback to one session would fail the call; conftest.training_database).
"""

from __future__ import annotations

import re
import threading

import numpy as np
import psycopg2
import pytest
from psycopg2.extras import execute_values
from sklearn.datasets import load_digits

import refusals
import worker_activity

from madlib_dl.keras_runtime import gpus, serialization, tf_setup
from madlib_dl.preprocess import packing
from madlib_dl.training import placement

keras = tf_setup.keras()

S = "madlib_dl."
ARGS = ("model_table", "test_table", "output_table", "use_gpus", "mst_key")
# named notation: also proves the documented argument names are the function's
EVALUATE = f"SELECT {S}madlib_keras_evaluate(" + ", ".join(f"{a} => %({a})s" for a in ARGS) + ")"
COMPILE = "loss='categorical_crossentropy', optimizer='Adam(learning_rate={})', metrics=['accuracy']"
IDLE = "madlib_dl worker (idle)"


def _mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def _pack(cur, source, output, normalizing_const="16.0", num_classes="NULL"):
    cur.execute(f"SELECT {S}training_preprocessor_dl('{source}', '{output}', 'label', 'pixels', NULL, "
                f"{normalizing_const}, {num_classes}, '2')")


@pytest.fixture(scope="module")
def db(training_database):
    """Everything runs as a plain role, and its calls must use background workers (conftest)."""
    with training_database("evaluate") as conn:
        with conn.cursor() as c:
            digits = load_digits()
            c.execute("CREATE TABLE digits (id INTEGER, pixels REAL[], label INTEGER)")
            execute_values(c, "INSERT INTO digits VALUES %s",
                           [(i, img.reshape(8, 8, 1).tolist(), int(y))
                            for i, (img, y) in enumerate(zip(digits.images[:500], digits.target[:500]))])
            c.execute("CREATE TABLE digits_train AS SELECT * FROM digits WHERE id % 5 <> 0")
            c.execute("CREATE TABLE digits_val AS SELECT * FROM digits WHERE id % 5 = 0")
            _pack(c, "digits_train", "train_packed")
            c.execute(f"SELECT {S}validation_preprocessor_dl('digits_val', 'val_packed', 'label', 'pixels', "
                      "'train_packed')")
            c.execute(f"SELECT {S}load_keras_model('arch', %s::json)", [_mlp().to_json()])
            c.execute(f"SELECT {S}load_model_selection_table('arch', 'mst', ARRAY[1], %s, "
                      "ARRAY['batch_size=32, epochs=1'])", [[COMPILE.format(lr) for lr in (0.01, 0.003)]])
            c.execute(f"SELECT {S}madlib_keras_fit_multiple_model('train_packed', 'out', 'mst', 2, FALSE, "
                      "'val_packed')")
            c.execute("SELECT count(*), sum(pixels_shape[1]), count(DISTINCT __dist_key__) FROM train_packed")
            assert c.fetchone() == (2, 400, 2)
            _single_model(c, "single", _best(c))
        yield conn


@pytest.fixture
def cur(db):
    del db.notices[:]
    with db.cursor() as c:
        c.execute("RESET ALL")  # madlib_dl.executor: 'workers', the role's default in this database
        yield c


def _best(cur) -> int:
    cur.execute("SELECT mst_key FROM out_info ORDER BY validation_metrics_final DESC, mst_key LIMIT 1")
    return cur.fetchone()[0]


def _single_model(cur, name, mst_key):
    """A madlib_keras_fit output made by hand from fit_multiple's row ``mst_key`` (layout: trained_models.py)."""
    cur.execute(f"CREATE TABLE {name} AS SELECT model_weights, model_arch, optimizer_state FROM out WHERE mst_key = %s",
                [mst_key])
    cur.execute(f"CREATE TABLE {name}_summary AS SELECT s.source_table, s.validation_table, s.dependent_varname, "
                "s.independent_varname, s.dependent_vartype, s.label_class_values, s.num_classes, s.normalizing_const, "
                "i.compile_params, i.fit_params, i.metrics_type, i.loss_type "
                "FROM out_summary s CROSS JOIN out_info i WHERE i.mst_key = %s", [mst_key])


def _evaluate(cur, output, model_table="out", test_table="val_packed", use_gpus=False, mst_key=None) -> dict:
    cur.execute(f"DROP TABLE IF EXISTS {output}")
    cur.execute(EVALUATE, {"model_table": model_table, "test_table": test_table, "output_table": output,
                           "use_gpus": use_gpus, "mst_key": mst_key})
    return _row(cur, output)


def _row(cur, output) -> dict:
    cur.execute(f"SELECT * FROM {output}")
    rows = cur.fetchall()
    assert len(rows) == 1
    return dict(zip([d.name for d in cur.description], rows[0]))


def _examples(cur, table):
    cur.execute(f"SELECT pixels, pixels_shape, label, label_shape FROM {table} ORDER BY buffer_id")
    buffers = [(packing.decode(bytes(x), xs, packing.FEATURE_DTYPE), packing.decode(bytes(y), ys, packing.LABEL_DTYPE))
               for x, xs, y, ys in cur.fetchall()]
    return np.concatenate([x for x, _ in buffers]), np.concatenate([y for _, y in buffers]).astype(np.float32)


def _keras_evaluate(cur, mst_key, table) -> dict:
    """Plain Keras on the same weights and the same examples, decoded from the packed buffers."""
    cur.execute("SELECT model_arch::text, model_weights FROM out WHERE mst_key = %s", [mst_key])
    arch, weights = cur.fetchone()
    model = keras.models.model_from_json(arch)
    model.set_weights(serialization.deserialize_weights(bytes(weights), [w.shape for w in model.get_weights()]))
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    x, y = _examples(cur, table)
    return model.evaluate(x, y, verbose=0, return_dict=True)


def _workers(cur) -> dict:
    """This role's background workers in this database: pid -> application_name."""
    return worker_activity.workers(cur, "application_name")


def _only_idle_workers(cur) -> bool:
    """Whatever workers the session kept wait for its next call; none is busy."""
    return set(_workers(cur).values()) <= {IDLE}


def _no_cache_left(cur) -> bool:
    cur.execute(f"SELECT {S}internal_fit_release(NULL)")
    return cur.fetchone()[0] is False


# ---------------------------------------------------------------------------------------------------
# The numbers

def test_on_the_training_table_it_gives_fit_multiples_final_training_metrics(cur):
    best = _best(cur)
    got = _evaluate(cur, "ev_train", test_table="train_packed", mst_key=best)
    cur.execute("SELECT training_loss_final, training_metrics_final FROM out_info WHERE mst_key = %s", [best])
    loss, metric = cur.fetchone()
    assert got["loss"] == pytest.approx(loss, abs=1e-5)
    assert got["metric"] == pytest.approx(metric, abs=1e-5)
    assert got["metrics_type"] == ["accuracy"] and got["loss_type"] == "categorical_crossentropy"
    cur.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'ev_train'::regclass AND attnum > 0 ORDER BY attnum")
    assert cur.fetchall() == [("loss", "double precision"), ("metric", "double precision"),
                              ("metrics_type", "text[]"), ("loss_type", "text")]


@pytest.mark.parametrize("mst_key", [1, 2])
def test_on_the_validation_table_it_equals_keras_evaluate(cur, mst_key):
    got = _evaluate(cur, "ev_val", mst_key=mst_key)
    expected = _keras_evaluate(cur, mst_key, "val_packed")
    assert got["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    assert got["metric"] == pytest.approx(expected["accuracy"], abs=1e-5)
    cur.execute("SELECT validation_loss_final, validation_metrics_final FROM out_info WHERE mst_key = %s", [mst_key])
    assert cur.fetchone() == (pytest.approx(got["loss"], abs=1e-5), pytest.approx(got["metric"], abs=1e-5))


def test_segments_are_weighted_by_their_example_counts(cur):
    """The preprocessor balances segments; here 8 of 10 buffers are moved to segment 0 (80 vs 20
    examples), so an unweighted mean of the segments' results would differ from Keras."""
    cur.execute("DROP TABLE IF EXISTS uneven, uneven_summary")
    cur.execute(f"SELECT {S}validation_preprocessor_dl('digits_val', 'uneven', 'label', 'pixels', 'train_packed', 10)")
    cur.execute("UPDATE uneven SET __dist_key__ = (buffer_id >= (SELECT min(buffer_id) + 8 FROM uneven))::integer")
    cur.execute("SELECT __dist_key__, sum(pixels_shape[1]) FROM uneven GROUP BY 1 ORDER BY 1")
    assert cur.fetchall() == [(0, 80), (1, 20)]
    got = _evaluate(cur, "ev_uneven", test_table="uneven", mst_key=1)
    expected = _keras_evaluate(cur, 1, "uneven")
    assert got["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    assert got["metric"] == pytest.approx(expected["accuracy"], abs=1e-5)


def test_the_two_models_give_different_numbers(cur):
    first, second = _evaluate(cur, "ev_1", mst_key=1), _evaluate(cur, "ev_2", mst_key=2)
    assert first["loss"] != second["loss"]


def test_a_single_model_table_gives_the_numbers_of_its_multi_model_row(cur):
    multi = _evaluate(cur, "ev_multi", mst_key=_best(cur))
    for overload in ("'single', 'val_packed', 'ev_single'", "'single', 'val_packed', 'ev_single', FALSE",
                     "'single', 'val_packed', 'ev_single', NULL, NULL"):
        cur.execute("DROP TABLE IF EXISTS ev_single")
        cur.execute(f"SELECT {S}madlib_keras_evaluate({overload})")
        single = _row(cur, "ev_single")
        assert single["loss"] == pytest.approx(multi["loss"], abs=1e-6), overload
        assert single["metric"] == pytest.approx(multi["metric"], abs=1e-6), overload
        assert (single["metrics_type"], single["loss_type"]) == (["accuracy"], "categorical_crossentropy")


def test_a_model_without_metric_has_a_null_metric(cur):
    cur.execute("DROP TABLE IF EXISTS no_metric, no_metric_summary")
    _single_model(cur, "no_metric", 1)
    cur.execute("UPDATE no_metric_summary SET compile_params = %s, metrics_type = NULL",
                ["loss='categorical_crossentropy', optimizer='Adam(learning_rate=0.01)'"])
    got = _evaluate(cur, "ev_no_metric", model_table="no_metric")
    assert got["metric"] is None and got["metrics_type"] is None
    assert got["loss"] == pytest.approx(_keras_evaluate(cur, 1, "val_packed")["loss"], abs=1e-5)


def test_schema_qualified_and_quoted_names(cur, server, plain_role):
    with server.connect("evaluate") as admin, admin.cursor() as c:  # a schema the DBA gave the role
        c.execute("DROP SCHEMA IF EXISTS s1 CASCADE")
        c.execute(f"CREATE SCHEMA s1 AUTHORIZATION {plain_role.name}")
    cur.execute('CREATE TABLE s1."Model" AS SELECT * FROM single')
    cur.execute('CREATE TABLE s1."Model_summary" AS SELECT * FROM single_summary')
    cur.execute(f"SELECT {S}validation_preprocessor_dl('digits_val', 's1.val', 'label', 'pixels', 'train_packed')")
    cur.execute(f"SELECT {S}madlib_keras_evaluate('s1.\"Model\"', 's1.val', 's1.\"Eval Out\"')")
    got = _row(cur, 's1."Eval Out"')
    assert got["loss"] == pytest.approx(_evaluate(cur, "ev_plain", model_table="single")["loss"], abs=1e-6)
    cur.execute("SELECT to_regclass('public.\"Eval Out\"') IS NULL")
    assert cur.fetchone()[0]


# ---------------------------------------------------------------------------------------------------
# Where it runs

def _watch(server, role, seen: list, done: threading.Event):
    # as the role itself: it sees its own workers
    worker_activity.watch(lambda: server.connect("evaluate", user=role), seen, done, "application_name")


def _evaluate_watched(cur, server, role, output, executor) -> tuple[dict, list]:
    cur.execute("SET madlib_dl.executor = %s", [executor])
    seen, done = [], threading.Event()
    watcher = threading.Thread(target=_watch, args=(server, role, seen, done))
    watcher.start()
    try:
        got = _evaluate(cur, output, mst_key=1)
    finally:
        done.set()
        watcher.join()
    return got, seen


def test_workers_evaluate_the_segments_and_in_process_gives_the_same_numbers(cur, server, plain_role):
    """One background worker per segment (the session's idle ones if it has them), kept idle afterwards;
    while they evaluate, their application_name says so, as a training run's workers' does."""
    by_workers, seen = _evaluate_watched(cur, server, plain_role, "ev_workers", "workers")
    pids = {pid for pid, _ in seen}
    assert len(pids) == 2 and cur.connection.get_backend_pid() not in pids
    assert pids <= set(_workers(cur)) and _only_idle_workers(cur)  # kept for the session's next call
    names = {name for _, name in seen}
    in_process, seen = _evaluate_watched(cur, server, plain_role, "ev_in_process", "in_process")
    assert {name for _, name in seen} <= {IDLE}  # they waited while this session evaluated
    assert in_process["loss"] == pytest.approx(by_workers["loss"], abs=1e-6)
    assert in_process["metric"] == pytest.approx(by_workers["metric"], abs=1e-6)
    assert _no_cache_left(cur)
    assert any(name.startswith("madlib_dl evaluate") for name in names), names


def test_an_uncommitted_test_table_is_evaluated_in_this_session(cur):
    """'auto': the workers cannot see the table, so this session evaluates it (with a NOTICE); the
    workers that could not serve wait, idle, for the next call."""
    expected = _evaluate(cur, "ev_committed", mst_key=1)
    cur.execute("SET madlib_dl.executor = 'auto'")
    cur.execute("BEGIN")
    try:
        cur.execute(f"SELECT {S}validation_preprocessor_dl('digits_val', 'fresh', 'label', 'pixels', 'train_packed')")
        got = _evaluate(cur, "ev_fresh", test_table="fresh", mst_key=1)
        assert any("this session" in n and "not yet committed" in n for n in cur.connection.notices)
        assert got["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    finally:
        cur.execute("ROLLBACK")
    assert _only_idle_workers(cur)


@pytest.mark.parametrize("executor", ["workers", "in_process"])
def test_a_failure_on_the_segments_leaves_nothing_and_the_session_runs_again(cur, executor):
    """Weights one value short fail only when a segment loads them into the model. A failure on the
    workers ends them (the session's idle ones too); in process the idle ones wait on."""
    cur.execute("DROP TABLE IF EXISTS broken, broken_summary, ev_broken")
    _single_model(cur, "broken", 1)
    cur.execute("UPDATE broken SET model_weights = substring(model_weights FROM 5)")
    _evaluate(cur, "ev_before", mst_key=1)  # the session has idle workers
    assert _workers(cur)
    cur.execute("SET madlib_dl.executor = %s", [executor])
    with pytest.raises(psycopg2.Error):
        _evaluate(cur, "ev_broken", model_table="broken")
    cur.execute("SELECT to_regclass('ev_broken') IS NULL")
    assert cur.fetchone()[0]
    if executor == "workers":
        assert worker_activity.none_left_within(cur) == {}
    else:
        assert _only_idle_workers(cur)
    cur.execute("RESET madlib_dl.executor")
    assert _no_cache_left(cur)
    assert _evaluate(cur, "ev_again", mst_key=1)["loss"] > 0


# ---------------------------------------------------------------------------------------------------
# Bad arguments: one error naming the argument, nothing created

DEFAULTS = {"model_table": "out", "test_table": "val_packed", "output_table": "ev_err", "use_gpus": False,
            "mst_key": 1}


def _fails(cur, sqlstate, argument, fragments, **arguments) -> str:
    return refusals.refused(cur, lambda: cur.execute(EVALUATE, {**DEFAULTS, **arguments}), sqlstate, argument,
                            *fragments, hint_separator="\nHINT: ")


def _setup(cur, statements):
    for statement in statements:
        cur.execute(statement)


PACK_SMALL = (f"SELECT {S}training_preprocessor_dl('small_pixels', 'small_packed', 'label', 'pixels', NULL, 16.0, "
              "NULL, '2')")

ERRORS = [
    # (id, set-up statements, arguments, SQLSTATE, argument named, message fragments)
    ("unknown_mst_key", [], {"mst_key": 99}, "22023", "mst_key", ["99 is not a model of 'out'"]),
    ("multi_without_mst_key", [], {"mst_key": None}, "22023", "mst_key", ["holds several models", "HINT: Choose one with mst_key (one of 1, 2"]),
    ("single_with_mst_key", [], {"model_table": "single"}, "22023", "mst_key",
     ["holds a single model (madlib_keras_fit), got mst_key 1", "HINT: Pass mst_key NULL."]),
    ("model_null", [], {"model_table": None}, "22023", "model_table", ["expected a table name, got NULL"]),
    ("model_injection", [], {"model_table": "out; DROP TABLE out"}, "22023", "model_table", ["expected a table name"]),
    ("model_missing", [], {"model_table": "nope"}, "42P01", "model_table", ["table 'nope' does not exist"]),
    ("not_a_model_table", [], {"model_table": "val_packed"}, "22023", "model_table",
     ["'val_packed' is not a model table", "model_weights, model_arch"]),
    ("summary_missing", ["CREATE TABLE IF NOT EXISTS nosum AS SELECT * FROM out"], {"model_table": "nosum"}, "42P01",
     "model_table", ["has no table 'nosum_summary'"]),
    ("info_missing", ["CREATE TABLE IF NOT EXISTS noinfo AS SELECT * FROM out",
                      "CREATE TABLE IF NOT EXISTS noinfo_summary AS SELECT * FROM out_summary"],
     {"model_table": "noinfo"}, "42P01", "model_table", ["has no table 'noinfo_info'"]),
    ("architecture_unreadable", ["CREATE TABLE IF NOT EXISTS badarch AS SELECT * FROM single",
                                 "CREATE TABLE IF NOT EXISTS badarch_summary AS SELECT * FROM single_summary",
                                 "UPDATE badarch SET model_arch = '{\"class_name\": \"Sequential\"}'"],
     {"model_table": "badarch", "mst_key": None}, "22023", "model_table",
     ["the architecture of badarch cannot be read"]),
    ("compile_params_malformed", ["CREATE TABLE IF NOT EXISTS badcompile AS SELECT * FROM single",
                                  "CREATE TABLE IF NOT EXISTS badcompile_summary AS SELECT * FROM single_summary",
                                  "UPDATE badcompile_summary SET compile_params = 'optimizer=SGD'"],
     {"model_table": "badcompile", "mst_key": None}, "22023", "model_table", ["compile_params of badcompile"]),
    ("test_null", [], {"test_table": None}, "22023", "test_table", ["expected a table name, got NULL"]),
    ("test_missing", [], {"test_table": "nope"}, "42P01", "test_table", ["table 'nope' does not exist"]),
    ("test_not_packed", [], {"test_table": "digits"}, "42P01", "test_table",
     ["'digits' has no summary table 'digits_summary'"]),
    ("test_wrong_shape", ["CREATE TABLE IF NOT EXISTS small_pixels AS "
                          "SELECT id, pixels[1:4][1:1][1:1] AS pixels, label FROM digits_val",
                          "DROP TABLE IF EXISTS small_packed, small_packed_summary", PACK_SMALL],
     {"test_table": "small_packed"}, "22023", "test_table",
     ["'small_packed' holds examples of shape (4, 1, 1)", "expects input shape (8, 8, 1)"]),
    ("test_wrong_class_count", ["DROP TABLE IF EXISTS c12_packed, c12_packed_summary",
                                f"SELECT {S}training_preprocessor_dl('digits_val', 'c12_packed', 'label', 'pixels', "
                                "NULL, 16.0, ARRAY[12], '2')"],
     {"test_table": "c12_packed"}, "22023", "test_table", ["'c12_packed' has 12 classes", "has 10 outputs"]),
    ("test_other_class_values", ["CREATE TABLE IF NOT EXISTS shifted AS SELECT id, pixels, label + 10 AS label "
                                 "FROM digits_val", "DROP TABLE IF EXISTS shifted_packed, shifted_packed_summary",
                                 f"SELECT {S}training_preprocessor_dl('shifted', 'shifted_packed', 'label', 'pixels', "
                                 "NULL, 16.0, NULL, '2')"],
     {"test_table": "shifted_packed"}, "22023", "test_table",
     ["class values [10, 11,", "differ from the model's [0, 1,", "validation_preprocessor_dl"]),
    ("test_other_normalizing_const", ["DROP TABLE IF EXISTS raw_packed, raw_packed_summary",
                                      f"SELECT {S}training_preprocessor_dl('digits_val', 'raw_packed', 'label', "
                                      "'pixels', NULL, 1.0, NULL, '2')"],
     {"test_table": "raw_packed"}, "22023", "test_table",
     ["'raw_packed' was packed with normalizing_const 1", "trained with 16"]),
    ("output_null", [], {"output_table": None}, "22023", "output_table", ["expected a table name, got NULL"]),
    ("output_exists", ["CREATE TABLE IF NOT EXISTS ev_exists (x INTEGER)"], {"output_table": "ev_exists"}, "42P07",
     "output_table", ["table 'ev_exists' already exists"]),
    ("output_schema_missing", [], {"output_table": "nosuch.ev"}, "42P01", "output_table",
     ["schema 'nosuch' of 'nosuch.ev' does not exist"]),
]


@pytest.mark.parametrize("statements,arguments,sqlstate,argument,fragments", [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_bad_arguments(cur, statements, arguments, sqlstate, argument, fragments):
    _setup(cur, statements)
    _fails(cur, sqlstate, argument, fragments, **arguments)


def gpus_visible() -> bool:
    return bool(placement.parse_nvidia_smi_memory(gpus.nvidia_gpu_memory()))


@pytest.mark.skipif(gpus_visible(), reason="this host has GPUs: use_gpus TRUE is valid here")
def test_use_gpus_without_gpus(cur):
    _fails(cur, "22023", "use_gpus", ["no GPU is visible", "use_gpus => FALSE"], use_gpus=True)


# ---------------------------------------------------------------------------------------------------
# Help

def test_help(cur):
    cur.execute(f"SELECT {S}madlib_keras_evaluate(), {S}madlib_keras_evaluate(''), {S}madlib_keras_evaluate('usage'), "
                f"{S}madlib_keras_evaluate('?'), {S}madlib_keras_evaluate('nonsense')")
    summary, empty, usage, question, other = cur.fetchone()
    assert summary == empty and summary.startswith("madlib_keras_evaluate: loss and metric of a trained model")
    assert usage == question and usage.startswith("madlib_keras_evaluate(")
    for argument in ARGS:
        assert re.search(rf"^\s+{argument}\s+(VARCHAR|BOOLEAN|INTEGER)", usage, re.M), argument
    assert "no help topic 'nonsense'" in other
    cur.execute("SELECT DISTINCT provolatile FROM pg_proc WHERE proname = 'madlib_keras_evaluate' AND prorettype = "
                "'varchar'::regtype")
    assert cur.fetchall() == [("i",)]
