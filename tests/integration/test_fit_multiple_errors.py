"""madlib_keras_fit_multiple_model() refuses bad input with one clean error and leaves nothing behind.

Every error test checks the SQLSTATE (madlib_dl/errors.py), that the message starts with
"madlib_dl: <argument>:" and says what is wrong, and that the call changed no table: neither
<out>, <out>_summary nor <out>_info exists afterwards (or, where one existed before, it is the same
table), and the set of tables in pg_tables, with their oids, is what it was before the call.

One database for the module: iris packed once over 3 segments, with its validation table, an
architecture table (4-10-3, and some that do not fit iris) and a 2-row model selection table. Nearly
every check fails before training starts. Everything runs as a plain role on a server with Debian's
pg_hba (conftest.training_database, where the role's runs must use background workers); the tests set
madlib_dl.executor = 'in_process', so no run starts background workers, except the one that checks
that a run refused after its workers started leaves none behind.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg2
import pytest

import refusals
import worker_activity

from madlib_dl.keras_runtime import gpus
from madlib_dl.training import placement

S = "madlib_dl."
IRIS_CSV = Path(__file__).resolve().parents[1] / "sql" / "data" / "iris.csv"
COMPILE = "loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']"
FITS = ["batch_size=16, epochs=1", "batch_size=32, epochs=1"]
CLASSES = ["setosa", "versicolor", "virginica"]

ARGS = ("source_table", "model_output_table", "model_selection_table", "num_iterations", "use_gpus",
        "validation_table", "metrics_compute_frequency", "warm_start", "name", "description", "use_caching")
# named notation: also proves the documented argument names are the function's
FIT = f"SELECT {S}madlib_keras_fit_multiple_model(" + ", ".join(f"{a} => %({a})s" for a in ARGS) + ")"
DEFAULTS = {"source_table": "iris_packed", "model_output_table": "out", "model_selection_table": "mst",
            "num_iterations": 1, "use_gpus": False, "validation_table": "iris_val_packed",
            "metrics_compute_frequency": None, "warm_start": False, "name": None, "description": None,
            "use_caching": False}

# model ids in the architecture table, in load order
SMALL, FIVE_INPUTS, FOUR_CLASSES, WIDE = 1, 2, 3, 4


def sequential(name: str, inputs: int, *units: int) -> str:
    """A Keras 3 model.to_json() of a Sequential of Dense layers (relu, then softmax)."""
    layers = [{"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [None, inputs]}}]
    for i, n in enumerate(units):
        activation = "softmax" if i == len(units) - 1 else "relu"
        layers.append({"module": "keras.layers", "class_name": "Dense",
                       "config": {"units": n, "activation": activation}})
    return json.dumps({"module": "keras", "class_name": "Sequential", "config": {"name": name, "layers": layers}})


ARCHITECTURES = [
    (SMALL, sequential("small", 4, 10, 3)),
    (FIVE_INPUTS, sequential("five_inputs", 5, 10, 3)),
    (FOUR_CLASSES, sequential("four_classes", 4, 10, 4)),
    # 800,003 float32 weights (3 MiB): 31 MiB per worker with gradients, Adam's slots and the states in
    # transfer, 18 MiB of states in the driver (training.memory), so it exceeds a 1 MiB budget (iris
    # with the 4-10-3 model needs a few KiB, which fits even the smallest budget the setting allows)
    (WIDE, sequential("wide", 4, 100000, 3)),
]


@pytest.fixture(scope="module")
def db(training_database):
    with training_database("fit_multiple_errors") as connection:
        with connection.cursor() as c:
            c.execute("CREATE TABLE iris (id INTEGER, attributes DOUBLE PRECISION[], class_text VARCHAR)")
            with open(IRIS_CSV) as data:
                c.copy_expert("COPY iris FROM STDIN WITH (FORMAT csv)", data)
            c.execute("CREATE TABLE iris_train AS SELECT * FROM iris WHERE id % 5 <> 0")
            c.execute("CREATE TABLE iris_test AS SELECT * FROM iris WHERE id % 5 = 0")
            c.execute(f"SELECT {S}training_preprocessor_dl('iris_train', 'iris_packed', 'class_text', 'attributes', "
                      "NULL, 1.0, NULL, '3')")
            c.execute(f"SELECT {S}validation_preprocessor_dl('iris_test', 'iris_val_packed', 'class_text', "
                      "'attributes', 'iris_packed')")
            for _, arch in ARCHITECTURES:
                c.execute(f"SELECT {S}load_keras_model('arch', %s)", [arch])
            c.execute("SELECT array_agg(model_id ORDER BY model_id), array_agg(model_arch->'config'->>'name' "
                      "ORDER BY model_id) FROM arch")
            assert c.fetchone() == ([m for m, _ in ARCHITECTURES], ["small", "five_inputs", "four_classes", "wide"])
            c.execute(f"SELECT {S}load_model_selection_table('arch', 'mst', %s, %s, %s)", [[SMALL], [COMPILE], FITS])
            c.execute("SELECT mst_key, model_id, fit_params FROM mst ORDER BY 1")
            assert c.fetchall() == [(1, SMALL, FITS[0]), (2, SMALL, FITS[1])]
            c.execute("SELECT count(*), sum(attributes_shape[1]), count(DISTINCT __dist_key__) FROM iris_packed")
            assert c.fetchone() == (3, 120, 3)
        yield connection


@pytest.fixture
def cur(db):
    del db.notices[:]
    with db.cursor() as c:
        c.execute("RESET ALL")
        c.execute(f"SET {S}executor = 'in_process'")
        yield c


# ---------------------------------------------------------------------------------------------------
# Helpers

def exists(cur, name: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
    return cur.fetchone()[0]


def output_tables(text) -> tuple:
    if not isinstance(text, str) or not re.fullmatch(r"[a-z_][a-z0-9_]*", text):
        return ()  # not a plain name (NULL, 'a;b', a missing schema): pg_tables is compared all the same
    return text, f"{text}_summary", f"{text}_info"


def run(cur, **arguments):
    cur.execute(FIT, {**DEFAULTS, **arguments})


def fails(cur, sqlstate: str, argument: str, *fragments: str, existing=(), **arguments) -> str:
    """Call fit_multiple with DEFAULTS changed by ``arguments``; it must fail with ``sqlstate`` and a
    message "madlib_dl: <argument>: ..." holding every fragment, and leave the tables as they were.
    ``existing``: output tables that exist before the call (and must still, unchanged)."""
    out = output_tables({**DEFAULTS, **arguments}["model_output_table"])
    assert {t for t in out if exists(cur, t)} == set(existing), "test set-up: output tables"
    # a remedy may be the error's HINT
    message = refusals.refused(cur, lambda: run(cur, **arguments), sqlstate, argument, *fragments,
                               hint_separator=" HINT: ")
    assert {t for t in out if exists(cur, t)} == set(existing), message
    return message


def execute_all(cur, *statements: str) -> None:
    for statement in statements:
        cur.execute(statement)


def make_mst(cur, name: str, rows, arch_table="arch", object_table=None, summary=True) -> None:
    """A model selection table made by hand (no keys: it holds whatever ``rows`` says) and its summary."""
    cur.execute(f"DROP TABLE IF EXISTS {name}, {name}_summary")
    cur.execute(f"CREATE TABLE {name} (mst_key INTEGER, model_id INTEGER, compile_params VARCHAR, fit_params VARCHAR)")
    for row in rows:
        cur.execute(f"INSERT INTO {name} VALUES (%s, %s, %s, %s)", row)
    if summary:
        cur.execute(f"CREATE TABLE {name}_summary (model_arch_table VARCHAR, object_table VARCHAR)")
        cur.execute(f"INSERT INTO {name}_summary VALUES (%s, %s)", [arch_table, object_table])


def drop_outputs(cur, out: str) -> None:
    cur.execute(f"DROP TABLE IF EXISTS {out}, {out}_summary, {out}_info")


GOOD_ROW = (1, SMALL, COMPILE, FITS[0])


def gpus_visible() -> bool:
    return bool(placement.parse_nvidia_smi_memory(gpus.nvidia_gpu_memory()))


# ---------------------------------------------------------------------------------------------------
# source_table

@pytest.mark.parametrize("source,statements,sqlstate,fragments", [
    (None, [], "22023", ["expected a table name, got NULL"]),
    ("", [], "22023", ["expected a table name, got an empty string"]),
    ("   ", [], "22023", ["expected a table name, got an empty string"]),
    ("iris_packed; DROP TABLE iris", [], "22023", ["expected a table name such as", "'iris_packed; DROP TABLE iris'"]),
    ("no_such_table", [], "42P01", ["table 'no_such_table' does not exist"]),
    ("iris", [], "42P01", ["'iris' has no summary table 'iris_summary'", "training_preprocessor_dl()"]),
    ("fake_packed", ["CREATE TABLE fake_packed (x INTEGER)",
                     "CREATE TABLE fake_packed_summary (source_table TEXT, num_classes INTEGER[])"],
     "22023", ["summary fake_packed_summary of 'fake_packed' lacks column(s) "
               "dependent_varname, independent_varname, normalizing_const"]),
    ("empty_packed", [f"SELECT {S}training_preprocessor_dl('iris_train', 'empty_packed', 'class_text', 'attributes', "
                      "NULL, 1.0, NULL, '3')", "DELETE FROM empty_packed"],
     "22023", ["packed table 'empty_packed' is empty"]),
], ids=["null", "empty", "blank", "injection", "missing", "unpacked", "summary_lacks_columns", "no_rows"])
def test_source_table(cur, source, statements, sqlstate, fragments):
    execute_all(cur, *statements)
    fails(cur, sqlstate, "source_table", *fragments, source_table=source, model_output_table="out_source")
    assert exists(cur, "iris")


# ---------------------------------------------------------------------------------------------------
# validation_table

def _pack(source, output, normalizing_const="1.0", num_classes="NULL", segments="3"):
    return (f"SELECT {S}training_preprocessor_dl('{source}', '{output}', 'class_text', 'attributes', NULL, "
            f"{normalizing_const}, {num_classes}, '{segments}')")


@pytest.mark.parametrize("validation,statements,sqlstate,fragments", [
    ("no_such_table", [], "42P01", ["table 'no_such_table' does not exist"]),
    ("iris_test", [], "42P01", ["'iris_test' has no summary table 'iris_test_summary'"]),
    ("val_empty", [f"SELECT {S}validation_preprocessor_dl('iris_test', 'val_empty', 'class_text', 'attributes', "
                   "'iris_packed')", "DELETE FROM val_empty"],
     "22023", ["packed table 'val_empty' is empty"]),
    # packed by validation_preprocessor_dl, but for another training table (normalised by 2)
    ("val_for_other", [_pack("iris_train", "train_by_two", normalizing_const="2.0"),
                       f"SELECT {S}validation_preprocessor_dl('iris_test', 'val_for_other', 'class_text', "
                       "'attributes', 'train_by_two')"],
     "22023", ["normalizing_const 2.0", "source_table's 1.0", "'iris_packed'", "validation_preprocessor_dl("]),
    ("val_norm", [_pack("iris_test", "val_norm", normalizing_const="2.0")],
     "22023", ["normalizing_const 2.0", "source_table's 1.0"]),
    ("val_segments", [_pack("iris_test", "val_segments", segments="2")],
     "22023", ["number of segments 2", "source_table's 3"]),
    ("val_classes", ["CREATE TABLE iris_two_classes AS SELECT * FROM iris_test WHERE class_text <> 'virginica'",
                     _pack("iris_two_classes", "val_classes")],
     "22023", ["class values ['setosa', 'versicolor']", f"source_table's {CLASSES}"]),
    ("val_padded", [_pack("iris_test", "val_padded", num_classes="ARRAY[4]")],
     "22023", ["class values ['setosa', 'versicolor', 'virginica', None]", f"source_table's {CLASSES}"]),
    ("val_shape", ["CREATE TABLE iris_three AS SELECT id, attributes[1:3] AS attributes, class_text FROM iris_test",
                   _pack("iris_three", "val_shape")],
     "22023", ["example shape [3]", "source_table's [4]"]),
], ids=["missing", "unpacked", "no_rows", "packed_for_other_table", "normalizing_const", "segments", "classes",
        "class_count", "feature_shape"])
def test_validation_table(cur, validation, statements, sqlstate, fragments):
    execute_all(cur, *statements)
    fails(cur, sqlstate, "validation_table", *fragments, validation_table=validation, model_output_table="out_val")


# ---------------------------------------------------------------------------------------------------
# model_selection_table

def test_model_selection_table_null_or_missing(cur):
    fails(cur, "22023", "model_selection_table", "expected a table name, got NULL", model_selection_table=None)
    fails(cur, "42P01", "model_selection_table", "table 'no_such_mst' does not exist",
          model_selection_table="no_such_mst")


def test_model_selection_table_without_summary(cur):
    make_mst(cur, "mst_no_summary", [GOOD_ROW], summary=False)
    fails(cur, "42P01", "model_selection_table", "'mst_no_summary' has no summary table 'mst_no_summary_summary'",
          "generate_model_configs()", model_selection_table="mst_no_summary")
    # a real mst table copied without its summary
    execute_all(cur, "DROP TABLE IF EXISTS mst_copy", "CREATE TABLE mst_copy AS SELECT * FROM mst")
    fails(cur, "42P01", "model_selection_table", "has no summary table 'mst_copy_summary'",
          model_selection_table="mst_copy")


@pytest.mark.parametrize("table,statements,fragment", [
    ("iris", [], "'iris' is not a model selection table (no column mst_key, model_id, compile_params, fit_params)"),
    ("mst_no_fit", ["DROP TABLE IF EXISTS mst_no_fit, mst_no_fit_summary",
                    "CREATE TABLE mst_no_fit AS SELECT mst_key, model_id, compile_params FROM mst",
                    "CREATE TABLE mst_no_fit_summary AS SELECT * FROM mst_summary"],
     "'mst_no_fit' is not a model selection table (no column fit_params)"),
], ids=["plain_table", "lacks_fit_params"])
def test_model_selection_table_lacking_columns(cur, table, statements, fragment):
    execute_all(cur, *statements)
    fails(cur, "22023", "model_selection_table", fragment, model_selection_table=table)


def test_model_selection_table_empty(cur):
    make_mst(cur, "mst_empty", [])
    fails(cur, "22023", "model_selection_table", "mst_empty has no rows", model_selection_table="mst_empty")


def test_model_selection_summary_without_its_row(cur):
    make_mst(cur, "mst_summary_empty", [GOOD_ROW])
    cur.execute("DELETE FROM mst_summary_empty_summary")
    fails(cur, "22023", "model_selection_table", "summary mst_summary_empty_summary must have one row with "
          "model_arch_table", model_selection_table="mst_summary_empty")


def test_model_selection_summary_names_dropped_arch_table(cur):
    execute_all(cur, "DROP TABLE IF EXISTS arch_gone", "CREATE TABLE arch_gone AS SELECT * FROM arch")
    make_mst(cur, "mst_gone", [GOOD_ROW], arch_table="arch_gone")
    cur.execute("DROP TABLE arch_gone")
    fails(cur, "42P01", "model_selection_table", "names model architecture table 'arch_gone', which does not exist",
          model_selection_table="mst_gone")


def test_model_selection_summary_with_object_table(cur):
    make_mst(cur, "mst_objects", [GOOD_ROW], object_table="custom_fns")
    fails(cur, "42P01", "model_selection_table (object_table in mst_objects_summary)",
          "table 'custom_fns' does not exist", model_selection_table="mst_objects")


# ---------------------------------------------------------------------------------------------------
# The mst rows: architecture against the data, parameters. A good row (mst_key 1) comes first, so the
# message must name the bad row's key.

@pytest.mark.parametrize("model_id,fragments", [
    (FIVE_INPUTS, [f"mst_key 2: model_id {FIVE_INPUTS} expects input shape (5,) but source_table 'iris_packed' "
                   "holds examples of shape (4,)"]),
    (FOUR_CLASSES, [f"mst_key 2: model_id {FOUR_CLASSES} has 4 outputs but source_table 'iris_packed' has 3 classes"]),
    (99, ["mst_key 2: model_id 99 is not in model architecture table arch"]),
], ids=["input_shape", "class_count", "unknown_model_id"])
def test_architecture_must_fit_the_data(cur, model_id, fragments):
    name = f"mst_arch_{model_id}"
    make_mst(cur, name, [GOOD_ROW, (2, model_id, COMPILE, FITS[0])])
    fails(cur, "22023", "model_selection_table", *fragments, model_selection_table=name)


@pytest.mark.parametrize("compile_params,fit_params,sqlstate,fragments", [
    ("loss='categorical_crossentropy', optimizer='Nope()', metrics=['accuracy']", FITS[0], "22023",
     ["mst_key 2: compile_params: optimizer: unknown optimizer 'Nope'"]),
    ("loss='no_such_loss', optimizer='Adam(lr=0.01)'", FITS[0], "22023",
     ["mst_key 2: compile_params: unknown loss 'no_such_loss'"]),
    ("loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy', 'mse']", FITS[0], "0A000",
     ["mst_key 2: compile_params: metrics holds 2 metrics"]),
    (None, FITS[0], "22023", ["mst_key 2: compile_params: expected a string like", "got NULL"]),
    (COMPILE, "batch_size=0", "22023", ["mst_key 2: fit_params: batch_size must be an integer >= 1, got 0"]),
    (COMPILE, "epochs=1, nonsense=3", "22023", ["mst_key 2: fit_params: unknown parameter 'nonsense'"]),
    (COMPILE, "batch_size=", "22023", ["mst_key 2: fit_params"]),
    (COMPILE, "batch_size=16, epochs=0", "22023", ["mst_key 2: fit_params: epochs must be an integer >= 1, got 0"]),
    (COMPILE, "epochs=2, initial_epoch=2", "22023",
     ["mst_key 2: fit_params: initial_epoch must be below epochs (2), got 2: the hop would train no epoch"]),
    (COMPILE, "batch_size=16, class_weight={0: 1.0, 3: 2.0}", "22023",
     ["mst_key 2: fit_params: class_weight: class index 3 is out of range: 'iris_packed' has 3 classes, "
      "indices 0 to 2"]),
    # rows written by hand: what Keras would refuse is refused before any worker starts
    ("loss='categorical_crossentropy', optimizer='Adam(lr=\"fast\")'", FITS[0], "22023",
     ["mst_key 2: compile_params: optimizer: Adam(lr='fast'): lr must be a number >= 0"]),
    ("loss='categorical_crossentropy', optimizer='Adam(lr=0.01, momentum=0.9)'", FITS[0], "22023",
     ["mst_key 2: compile_params: Adam has no argument momentum; expected some of learning_rate"]),
    ("loss='categorical_crossentropy', optimizer='SGD(clipnorm=1.0, global_clipnorm=1.0)'", FITS[0], "22023",
     ["mst_key 2: compile_params: SGD(clipnorm=1.0, global_clipnorm=1.0): Only one of `clipnorm`"]),
], ids=["optimizer", "loss", "two_metrics", "null_compile", "batch_size_0", "unknown_fit_key", "fit_syntax", "epochs_0",
        "initial_epoch", "class_weight_index", "learning_rate_text", "unknown_optimizer_argument", "keras_refuses"])
def test_unparsable_params_name_the_mst_key(cur, compile_params, fit_params, sqlstate, fragments):
    make_mst(cur, "mst_params", [GOOD_ROW, (2, SMALL, compile_params, fit_params)])
    fails(cur, sqlstate, "model_selection_table", *fragments, model_selection_table="mst_params")


def test_a_batch_size_above_every_segment_is_noticed_before_training(db, cur):
    """Not an error: Keras takes a batch larger than the data as all of it (full-batch training)."""
    make_mst(cur, "mst_batch", [(1, SMALL, COMPILE, "batch_size=100000000"), (2, SMALL, COMPILE, "batch_size=16"),
                                (3, SMALL, COMPILE, "batch_size=41, epochs=1"), (4, SMALL, COMPILE, "epochs=1")])
    drop_outputs(cur, "out_batch")
    run(cur, model_selection_table="mst_batch", model_output_table="out_batch", validation_table=None)
    said = [n.strip() for n in db.notices]
    segment = ("is more than the 40 examples of the largest of the 3 segments of 'iris_packed': each hop trains on "
               "its whole segment as one batch (Keras takes a batch larger than the data as all of it)")
    batch = [i for i, n in enumerate(said) if "batch_size=" in n]
    assert [said[i] for i in batch] == [
        f"NOTICE:  madlib_keras_fit_multiple_model: fit_params: batch_size=41 (mst_key 3) {segment}",
        f"NOTICE:  madlib_keras_fit_multiple_model: fit_params: batch_size=100000000 (mst_key 1) {segment}"], said
    assert batch[-1] < min(i for i, n in enumerate(said) if "iteration" in n), said
    cur.execute("SELECT count(*) FROM out_batch_info WHERE training_loss_final IS NOT NULL")
    assert cur.fetchone()[0] == 4
    drop_outputs(cur, "out_batch")


# ---------------------------------------------------------------------------------------------------
# model_output_table and warm_start

@pytest.mark.parametrize("out,sqlstate,fragments", [
    (None, "22023", ["expected a table name, got NULL"]),
    ("", "22023", ["expected a table name, got an empty string"]),
    ("a;b", "22023", ["expected a table name such as my_table or my_schema.my_table, got 'a;b'"]),
    ("x.y.z", "22023", ["expected table or schema.table, got 3 parts in 'x.y.z'"]),
    ("no_schema.out", "42P01", ["schema 'no_schema' of 'no_schema.out' does not exist"]),
    ("o" * 57, "22023", ["is too long", "would be longer than 63 bytes"]),
], ids=["null", "empty", "semicolon", "three_parts", "missing_schema", "too_long"])
def test_model_output_table_name(cur, out, sqlstate, fragments):
    fails(cur, sqlstate, "model_output_table", *fragments, model_output_table=out)


@pytest.mark.parametrize("present,named", [
    (("taken", "taken_summary", "taken_info"), "taken"),
    (("taken_info",), "taken_info"),
    (("taken_summary",), "taken_summary"),
    (("taken",), "taken"),
], ids=["all_three", "only_info", "only_summary", "only_model"])
def test_model_output_table_exists_without_warm_start(cur, present, named):
    drop_outputs(cur, "taken")
    for table in present:
        cur.execute(f"CREATE TABLE {table} AS SELECT 42 AS kept")
    try:
        fails(cur, "42P07", "model_output_table", f"table '{named}' already exists", "warm_start => TRUE",
              model_output_table="taken", existing=present)
        for table in present:
            cur.execute(f"SELECT kept FROM {table}")
            assert cur.fetchall() == [(42,)]
    finally:
        drop_outputs(cur, "taken")


def test_model_output_table_is_an_input(cur):
    fails(cur, "42P07", "model_output_table", "table 'iris_packed' already exists", model_output_table="iris_packed",
          existing=("iris_packed", "iris_packed_summary"))
    cur.execute("SELECT count(*) FROM iris_packed")
    assert cur.fetchone()[0] == 3


def test_warm_start_needs_all_outputs(cur):
    drop_outputs(cur, "ws")
    fails(cur, "42P01", "warm_start", "TRUE but 'ws' does not exist", "warm_start => FALSE",
          model_output_table="ws", warm_start=True)
    cur.execute("CREATE TABLE ws AS SELECT 1 AS mst_key")
    cur.execute("CREATE TABLE ws_summary AS SELECT 1 AS x")
    try:
        fails(cur, "42P01", "warm_start", "TRUE but 'ws_info' does not exist", model_output_table="ws",
              warm_start=True, existing=("ws", "ws_summary"))
    finally:
        drop_outputs(cur, "ws")


# ---------------------------------------------------------------------------------------------------
# num_iterations, metrics_compute_frequency

@pytest.mark.parametrize("iterations,shown", [(0, "0"), (-1, "-1"), (None, "NULL")])
def test_num_iterations(cur, iterations, shown):
    fails(cur, "22023", "num_iterations", f"expected an integer of at least 1, got {shown}", num_iterations=iterations)


@pytest.mark.parametrize("frequency", [0, -1, 4])
def test_metrics_compute_frequency(cur, frequency):
    fails(cur, "22023", "metrics_compute_frequency", "expected 1 to num_iterations (3)", f"got {frequency}",
          num_iterations=3, metrics_compute_frequency=frequency)


# ---------------------------------------------------------------------------------------------------
# Memory, settings, GPUs: these get as far as the executor

def test_memory_budget_refuses_the_run_then_a_bad_setting_is_named(cur):
    make_mst(cur, "mst_wide", [(1, WIDE, COMPILE, FITS[0])])
    cur.execute(f"SET {S}memory_budget_mb = 1")
    # one model: one worker (training.parallelism), which holds it once
    message = fails(cur, "22023", "use_caching", "the run needs about 49 MiB", "over 3 segments",
                    "models 31 MiB per worker x 1 worker",
                    "model states in the driver 18 MiB", "the memory budget madlib_dl.memory_budget_mb is 1 MiB",
                    "SET madlib_dl.memory_budget_mb = 1024", "use_caching => FALSE",
                    model_selection_table="mst_wide", model_output_table="out_memory", use_caching=True)
    assert "cached data" in message
    # without caching the same bound applies, and the advice does not mention caching
    message = fails(cur, "22023", "memory", "the run needs about 49 MiB",
                    "the memory budget madlib_dl.memory_budget_mb is 1 MiB",
                    model_selection_table="mst_wide", model_output_table="out_memory", use_caching=False)
    assert "use_caching" not in message
    cur.execute(f"RESET {S}memory_budget_mb")
    # the settings are registered in this session (it has called madlib_dl): SET itself refuses
    with pytest.raises(psycopg2.errors.InvalidParameterValue,
                       match='invalid value for parameter "madlib_dl.memory_budget_mb": "lots"'):
        cur.execute(f"SET {S}memory_budget_mb = 'lots'")
    with pytest.raises(psycopg2.errors.InvalidParameterValue,
                       match=r'0 is outside the valid range for parameter "madlib_dl.memory_budget_mb" \(1 \.\. '):
        cur.execute(f"SET {S}memory_budget_mb = 0")
    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert cur.fetchone()[0] == 0, "in_process starts no background workers"


def test_a_run_refused_after_its_workers_started_leaves_no_worker(cur):
    """The memory check needs the models' initial weights, which the run's background workers make:
    refused then, the run ends them (they exit asynchronously: a few seconds at most)."""
    make_mst(cur, "mst_wide", [(1, WIDE, COMPILE, FITS[0])])
    cur.execute(f"RESET {S}executor")  # 'workers', the role's default in this database
    cur.execute(f"SET {S}memory_budget_mb = 1")
    fails(cur, "22023", "use_caching", "the run needs about 49 MiB", model_selection_table="mst_wide",
          model_output_table="out_memory", use_caching=True)
    assert worker_activity.none_left_within(cur) == {}


def test_executor_setting(cur):
    with pytest.raises(psycopg2.errors.InvalidParameterValue, match=r'invalid value for parameter "madlib_dl.executor": '
                       r'"fast"\nHINT:  Available values: auto, workers, in_process'):
        cur.execute(f"SET {S}executor = 'fast'")


def test_a_bad_value_set_before_the_sessions_first_call_is_refused_by_that_call(db, server, plain_role):
    """Before a session's first madlib_dl call its settings are not registered, so SET keeps any text;
    that call refuses a bad one, naming it, instead of running with the default."""
    with server.connect(db.info.dbname, user=plain_role) as fresh, fresh.cursor() as c:
        c.execute(f"SET {S}executor = 'fast'; SET {S}memory_budget_mb = 'lots'")
        with pytest.raises(psycopg2.errors.InvalidParameterValue) as error:
            c.execute("SELECT madlib_dl.version()")
        assert error.value.pgerror.splitlines()[0] == (
            "ERROR:  madlib_dl: setting madlib_dl.memory_budget_mb: expected an integer from 1 to 2147483647, got "
            f"'lots' (RESET {S}memory_budget_mb for the default)")
        assert error.value.diag.context is None  # the library was loaded first: no traceback
        c.execute(f"RESET {S}memory_budget_mb")
        with pytest.raises(psycopg2.errors.InvalidParameterValue, match="expected one of auto, workers, in_process, "
                           "got 'fast'"):
            c.execute("SELECT madlib_dl.version()")
        c.execute(f"SET {S}executor = 'in_process'")
        c.execute(f"SELECT madlib_dl.version(), current_setting('{S}executor')")
        assert c.fetchone()[1] == "in_process"
        c.execute(f"SELECT setting, source FROM madlib_dl.settings() WHERE name = '{S}executor'")
        assert c.fetchone() == ("in_process", "session")


@pytest.mark.skipif(gpus_visible(), reason="this host has GPUs: use_gpus TRUE is valid here")
def test_use_gpus_without_gpus(cur):
    fails(cur, "22023", "use_gpus", "no GPU is visible", "use_gpus => FALSE", use_gpus=True,
          model_output_table="out_gpus")


# ---------------------------------------------------------------------------------------------------
# Help

def test_help(cur):
    cur.execute(f"SELECT {S}madlib_keras_fit_multiple_model(), {S}madlib_keras_fit_multiple_model('')")
    summary, blank = cur.fetchone()
    assert summary == blank
    assert summary.startswith("madlib_keras_fit_multiple_model: train every model configuration")
    assert "madlib_keras_fit_multiple_model('usage')" in summary

    cur.execute(f"SELECT {S}madlib_keras_fit_multiple_model('usage')")
    usage = cur.fetchone()[0]
    documented = re.findall(r"^ {4}(\w+) +(?:VARCHAR|INTEGER|BOOLEAN)\b", usage, re.MULTILINE)
    assert tuple(documented) == ARGS, usage
    cur.execute("SELECT pg_get_function_identity_arguments(p.oid) FROM pg_proc p "
                "JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'madlib_dl' AND p.proname = 'madlib_keras_fit_multiple_model' AND p.pronargs = 11")
    signature = cur.fetchone()[0]
    assert tuple(re.findall(r"(\w+) (?:character varying|integer|boolean)", signature)) == ARGS, signature
    assert "use_caching" in usage and "madlib_dl.memory_budget_mb" in usage and "madlib_dl.executor" in usage

    cur.execute(f"SELECT {S}madlib_keras_fit_multiple_model('nonsense')")
    text = cur.fetchone()[0]
    assert "no help topic 'nonsense'" in text and "madlib_keras_fit_multiple_model('usage')" in text


# ---------------------------------------------------------------------------------------------------
# Bad rows and tables that fit_multiple's checks must catch before anything runs.

def test_duplicate_mst_key_is_refused(cur):
    make_mst(cur, "mst_dup", [GOOD_ROW, (1, SMALL, COMPILE, "batch_size=8, epochs=1")])
    try:
        fails(cur, "22023", "model_selection_table", "mst_key 1", model_selection_table="mst_dup",
              model_output_table="out_dup")
    finally:
        drop_outputs(cur, "out_dup")


def test_null_mst_key_is_refused(cur):
    make_mst(cur, "mst_null_key", [GOOD_ROW, (None, SMALL, COMPILE, FITS[1])])
    try:
        fails(cur, "22023", "model_selection_table", "mst_key", model_selection_table="mst_null_key",
              model_output_table="out_null_key")
    finally:
        drop_outputs(cur, "out_null_key")


def test_mst_summary_naming_a_non_architecture_table(cur):
    make_mst(cur, "mst_not_arch", [GOOD_ROW], arch_table="iris")
    fails(cur, "22023", "model_selection_table", "iris", model_selection_table="mst_not_arch")


def test_warm_start_over_tables_not_written_by_fit(cur):
    drop_outputs(cur, "not_ours")
    for table in ("not_ours", "not_ours_summary", "not_ours_info"):
        cur.execute(f"CREATE TABLE {table} (x INTEGER)")
    try:
        fails(cur, "22023", "warm_start", "not_ours", model_output_table="not_ours", warm_start=True,
              existing=("not_ours", "not_ours_summary", "not_ours_info"))
    finally:
        drop_outputs(cur, "not_ours")


def test_an_architecture_written_into_the_table_directly_is_checked_before_workers_start(cur):
    """load_keras_model refuses a Lambda layer; a row INSERTed by hand is refused by the run itself,
    before it starts any background worker (not by a worker, seconds later)."""
    lambda_layer = json.loads(sequential("with_lambda", 4, 10, 3))
    lambda_layer["config"]["layers"].insert(1, {"module": "keras.layers", "class_name": "Lambda",
                                                "config": {"function": {"class_name": "__lambda__"}}})
    cur.execute("CREATE TABLE arch_by_hand AS SELECT * FROM arch WHERE model_id = %s", [SMALL])
    cur.execute("INSERT INTO arch_by_hand (model_id, model_arch) VALUES (9, %s)", [json.dumps(lambda_layer)])
    make_mst(cur, "mst_by_hand", [(1, 9, COMPILE, FITS[0])], arch_table="arch_by_hand")
    cur.execute(f"RESET {S}executor")  # 'workers', the role's default in this database
    before = set(worker_activity.workers(cur))
    try:
        fails(cur, "22023", "model_selection_table", "model_id 9 of arch_by_hand: a Lambda layer is refused",
              model_selection_table="mst_by_hand", model_output_table="out_by_hand")
        assert set(worker_activity.workers(cur)) == before  # none was started
    finally:
        cur.execute("DROP TABLE arch_by_hand")
