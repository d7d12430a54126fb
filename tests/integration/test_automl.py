"""madlib_keras_automl end to end on sklearn's digits, as a plain role on a server with Debian's pg_hba:
each method through SQL, MADlib's output columns, the best configuration in the mst table, and the
same random_state giving the same configurations and (in process) the same weights."""

from __future__ import annotations

import psycopg2
import pytest

import digits_data

COMPILE_GRID = ("$${'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'], "
                "'optimizer_params_list': [{'optimizer': ['Adam'], 'lr': [0.0003, 0.1, 'log']}]}$$")
FIT_GRID = "$${'batch_size': [32, 128], 'epochs': [1]}$$"
INFO_COLUMNS = {"mst_key", "model_id", "compile_params", "fit_params", "model_type", "model_size",
                "metrics_elapsed_time", "metrics_type", "loss_type", "training_metrics_final", "training_loss_final",
                "training_metrics", "training_loss", "validation_metrics_final", "validation_loss_final",
                "validation_metrics", "validation_loss", "metrics_iters"}
SUMMARY_AUTOML = {"automl_method", "automl_params", "random_state", "use_gpus"}


@pytest.fixture(scope="module")
def cur(training_database):
    with training_database("automl_digits") as conn, conn.cursor() as c:
        digits_data.create_table(c)
        c.execute("CREATE TABLE digits_train AS SELECT * FROM digits WHERE id % 4 <> 0")
        c.execute("CREATE TABLE digits_val AS SELECT * FROM digits WHERE id % 4 = 0")
        c.execute("SELECT madlib_dl.training_preprocessor_dl('digits_train', 'train_packed', 'label', 'pixels', "
                  "200, 16.0, NULL, '2')")
        c.execute("SELECT madlib_dl.validation_preprocessor_dl('digits_val', 'val_packed', 'label', 'pixels', "
                  "'train_packed')")
        c.execute("SELECT madlib_dl.load_keras_model('arch', %s::json)", [digits_data.mlp_json(16)])
        conn.commit()  # background workers see committed tables only
        yield c


def _automl(cur, out, mst, method, params, random_state=7, validation=True, **extra):
    options = "".join(f", {k} => {v}" for k, v in extra.items())
    cur.execute(f"SELECT madlib_dl.madlib_keras_automl('train_packed', %s, 'arch', %s, ARRAY[1], {COMPILE_GRID}, "
                f"{FIT_GRID}, %s, %s, %s, validation_table => %s{options})",
                [out, mst, method, params, random_state, "val_packed" if validation else None])
    cur.connection.commit()


def _columns(cur, table):
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s", [table])
    return {r[0] for r in cur.fetchall()}


def _info(cur, table):
    cur.execute(f"SELECT mst_key, compile_params, fit_params, automl_status, iterations_trained, metrics_iters, "
                f"validation_loss_final FROM {table}_info ORDER BY mst_key")
    return cur.fetchall()


def test_hyperband_runs_its_brackets_and_writes_madlibs_tables(cur):
    _automl(cur, "hb", "hb_mst", "hyperband", "R=3, eta=3, skip_last=0", use_caching="TRUE")
    # R=3, eta=3: bracket s=1 trains 3 configurations 1 iteration, the best 1 on to 3; s=0 trains 2 to 3
    rows = _info(cur, "hb")
    assert len(rows) == 5
    assert INFO_COLUMNS | {"automl_status", "iterations_trained", "s", "i"} <= _columns(cur, "hb_info")
    cur.execute("SELECT s, i, iterations_trained, automl_status FROM hb_info ORDER BY mst_key")
    got = cur.fetchall()
    assert sorted((s, i, n, status) for s, i, n, status in got) == sorted(
        [(1, 0, 1, "stopped"), (1, 0, 1, "stopped"), (1, 1, 3, "done"), (0, 0, 3, "done"), (0, 0, 3, "done")])
    for key, _, _, status, trained, iters, val_loss in rows:
        assert iters[-1] == trained and val_loss is not None
    assert SUMMARY_AUTOML <= _columns(cur, "hb_summary")
    cur.execute("SELECT automl_method, automl_params, random_state, num_iterations FROM hb_summary")
    assert cur.fetchone() == ("hyperband", "R=3, eta=3, skip_last=0", "7", 3)
    cur.execute("SELECT count(*), count(model_weights) FROM hb")
    assert cur.fetchone() == (5, 5)  # stopped models keep their state
    # the best configuration (lowest final validation loss) replaces the selection table
    # under its own mst_key, as MADlib keeps it: joined by mst_key, the tables name the same model
    cur.execute("SELECT mst_key, model_id, compile_params, fit_params FROM hb_mst")
    best = cur.fetchall()
    cur.execute("SELECT mst_key, model_id, compile_params, fit_params FROM hb_info "
                "ORDER BY validation_loss_final LIMIT 1")
    assert best == cur.fetchall()
    cur.execute("SELECT count(*) FROM hb_mst JOIN hb_info USING (mst_key, model_id, compile_params, fit_params) "
                "JOIN hb USING (mst_key)")
    assert cur.fetchone()[0] == 1
    cur.execute("SELECT model_arch_table FROM hb_mst_summary")
    assert cur.fetchone()[0] == "arch"


def test_asha_promotes_the_best_and_stops_the_rest(cur):
    _automl(cur, "asha_out", "asha_mst", "asha", "max_iterations=3, grace_iterations=1, reduction_factor=3, "
            "num_configs=6")
    rows = _info(cur, "asha_out")
    assert len(rows) == 6
    trained = sorted(r[4] for r in rows)
    assert trained[0] == 1 and trained[-1] == 3  # some stopped at the first rung, one went to the last
    assert sum(trained) < 6 * 3  # less than training every configuration fully
    for _, _, _, status, n, iters, _ in rows:
        assert status == ("done" if n == 3 else "stopped") and iters[-1] == n


def test_hyperopt_tpe_trains_each_proposal_to_num_iterations(cur):
    _automl(cur, "tpe_out", "tpe_mst", "hyperopt", "num_configs=4, num_iterations=2, algorithm=tpe")
    rows = _info(cur, "tpe_out")
    assert len(rows) == 4 and all(r[3] == "done" and r[4] == 2 for r in rows)
    for _, compile_params, fit_params, *_ in rows:
        lr = float(compile_params.split("learning_rate=")[1].split(")")[0])
        assert 0.0003 <= lr <= 0.1 and ("batch_size=32" in fit_params or "batch_size=128" in fit_params)


def test_the_same_random_state_gives_the_same_configurations_and_in_process_the_same_weights(cur):
    cur.execute("SET madlib_dl.executor = 'in_process'")
    try:
        for out in ("same_a", "same_b"):
            _automl(cur, out, out + "_mst", "asha", "max_iterations=3, num_configs=4", random_state=11,
                    validation=False)
    finally:
        cur.execute("RESET madlib_dl.executor")
    assert [r[:5] for r in _info(cur, "same_a")] == [r[:5] for r in _info(cur, "same_b")]
    cur.execute("SELECT a.mst_key FROM same_a a JOIN same_b b USING (mst_key) WHERE a.model_weights = b.model_weights")
    assert len(cur.fetchall()) == 4


@pytest.mark.parametrize("method, params, message", [
    ("bohb", None, "automl_method: expected 'hyperband', 'hyperopt' or 'asha', got 'bohb'"),
    ("hyperband", "R=6, eta=1", "automl_params: eta must be greater than 1"),
    ("hyperband", "R=2, eta=3", "automl_params: R should not be less than eta"),
    ("hyperopt", "num_configs=0", "automl_params: num_configs must be an integer >= 1"),
])
def test_bad_arguments_are_named_and_nothing_is_created(cur, method, params, message):
    with pytest.raises(psycopg2.Error) as raised:
        _automl(cur, "bad_out", "bad_mst", method, params)
    cur.connection.rollback()
    assert raised.value.diag.message_primary.startswith(f"madlib_dl: {message}"), raised.value.diag.message_primary
    cur.execute("SELECT to_regclass('bad_out'), to_regclass('bad_mst')")
    assert cur.fetchone() == (None, None)


def test_an_existing_model_selection_table_is_refused_before_anything_runs(cur):
    cur.execute("CREATE TABLE taken_mst (x INTEGER)")
    cur.connection.commit()
    with pytest.raises(psycopg2.Error) as raised:
        _automl(cur, "taken_out", "taken_mst", "asha", "max_iterations=3, num_configs=2")
    cur.connection.rollback()
    assert raised.value.pgcode == "42P07"
    assert raised.value.diag.message_primary == "madlib_dl: model_selection_table: table 'taken_mst' already exists"
    assert raised.value.diag.message_hint.startswith("Drop it or choose another name")
    cur.execute("SELECT to_regclass('taken_out'), to_regclass('taken_mst') IS NOT NULL")
    assert cur.fetchone() == (None, True)
    cur.execute("DROP TABLE taken_mst")
    cur.connection.commit()


def test_a_batch_size_above_every_segment_is_noticed_before_anything_runs(cur):
    cur.execute("SELECT max(n) FROM (SELECT sum(pixels_shape[1]) AS n FROM train_packed GROUP BY __dist_key__) s")
    largest = cur.fetchone()[0]
    cur.execute("CREATE TABLE taken_mst (x INTEGER)")
    del cur.connection.notices[:]
    with pytest.raises(psycopg2.Error, match="model_selection_table: table 'taken_mst' already exists"):
        cur.execute(f"SELECT madlib_dl.madlib_keras_automl('train_packed', 'taken_out', 'arch', 'taken_mst', ARRAY[1], "
                    f"{COMPILE_GRID}, $${{'batch_size': [32, 100000000]}}$$, 'asha', 'max_iterations=3, num_configs=2')")
    cur.connection.rollback()
    assert [n.strip() for n in cur.connection.notices] == [
        f"NOTICE:  madlib_keras_automl: fit_params: batch_size=100000000 (fit_params_grid) is more than the {largest} "
        "examples of the largest of the 2 segments of 'train_packed': each hop trains on its whole segment as one "
        "batch (Keras takes a batch larger than the data as all of it)"]


def test_a_statement_timeout_stops_the_run_says_how_far_it_got_and_writes_nothing(cur):
    cur.execute("SET statement_timeout = '4s'")
    try:
        with pytest.raises(psycopg2.errors.QueryCanceled) as raised:
            _automl(cur, "slow_out", "slow_mst", "hyperband", "R=81, eta=3")
    finally:
        cur.connection.rollback()
    message = raised.value.diag.message_primary
    assert message.startswith("madlib_dl: madlib_keras_automl: cancelled "), message
    assert message.endswith("nothing was written"), message
    cur.execute("SELECT to_regclass('slow_out'), to_regclass('slow_out_info'), to_regclass('slow_mst')")
    assert cur.fetchone() == (None, None, None)


def test_hyperband_schedule_writes_the_papers_table(cur):
    cur.execute("SELECT madlib_dl.hyperband_schedule('hb_schedule', 81, 3, 0)")
    cur.execute("SELECT s, n_i, r_i FROM hb_schedule WHERE i = 0 ORDER BY s DESC")
    assert cur.fetchall() == [(4, 81, 1), (3, 34, 3), (2, 15, 9), (1, 8, 27), (0, 5, 81)]
    cur.connection.rollback()
