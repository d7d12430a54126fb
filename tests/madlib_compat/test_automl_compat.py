"""MADlib's madlib_keras_automl.sql_in, on madlib_dl (MADlib runs it on Greenplum only; madlib_dl on
PostgreSQL, docs/automl.md): Hyperband with its default automl_params trains 5 configurations and leaves
a one-row mst table (the best configuration) and summaries; the refusals (missing source, validation or
object table, existing output or mst table, unknown model id, unknown method, invalid R/eta/skip_last)
leave nothing behind; name and description are recorded; the same random_state draws the same
configurations; hyperband_schedule writes Hyperband's brackets and refuses an existing table."""

from __future__ import annotations

import psycopg2
import pytest

from compat import S, create_iris, exists, fails, load_arch, mlp_json, pack_iris, row, rows, scalar

COMPILE_GRID = ("{'loss': ['categorical_crossentropy'], 'optimizer_params_list': [ {'optimizer': ['Adagrad', 'Adam'], "
                "'lr': [0.01, 0.05, 'log'], 'epsilon': [0.3, 0.5, 'log_near_one']}, {'optimizer': ['Adam', 'SGD'], "
                "'lr': [0.01, 0.05, 'log']} ], 'metrics':['accuracy'] }")
FIT_GRID = "{'batch_size': [4, 8], 'epochs': [1]}"
AUTOML = f"SELECT {S}madlib_keras_automl(%s, %s, 'iris_model_arch', %s, %s, %s, %s"
# method, params, random_state, object_table, use_gpus, validation_table, metrics_compute_frequency, name, desc
TAIL = ", %s, %s, %s, %s, FALSE, %s, NULL, %s, %s)"


@pytest.fixture(scope="module")
def data(db):
    with db.cursor() as c:
        create_iris(c)
        pack_iris(c, "iris_data_packed")
        load_arch(c, "iris_model_arch", mlp_json())
        load_arch(c, "iris_model_arch", mlp_json(hidden=6, seed=2))
    return db


def _outputs(cur, out, mst):
    return [t for t in (out, f"{out}_info", f"{out}_summary", mst, f"{mst}_summary") if exists(cur, t)]


def _call(cur, out="automl_output", mst="automl_mst_table", source="iris_data_packed", model_ids=(1, 2),
          method="hyperband", params="R=6, eta=3, skip_last=0", random_state=None, object_table=None,
          validation=None, name=None, description=None):
    cur.execute(AUTOML + TAIL, [source, out, mst, list(model_ids), COMPILE_GRID, FIT_GRID, method, params,
                                random_state, object_table, validation, name, description])


def test_hyperband_defaults_end_to_end(data, cur):
    cur.execute(AUTOML + ")", ["iris_data_packed", "automl_output", "automl_mst_table", [1, 2], COMPILE_GRID,
                               FIT_GRID])
    assert scalar(cur, "SELECT count(*) FROM automl_mst_table") == 1  # the best configuration
    assert scalar(cur, "SELECT count(*) FROM automl_mst_table_summary") == 1
    assert scalar(cur, "SELECT count(*) FROM automl_output_summary") == 1
    # R=6, eta=3 (the default): brackets of 3 and 2 configurations
    assert scalar(cur, "SELECT count(*) FROM automl_output") == 5
    assert scalar(cur, "SELECT count(*) FROM automl_output_info") == 5
    s = row(cur, "SELECT automl_method, automl_params FROM automl_output_summary")
    assert s == {"automl_method": "hyperband", "automl_params": "R=6, eta=3, skip_last=0"}
    best = row(cur, "SELECT * FROM automl_mst_table")
    assert scalar(cur, "SELECT count(*) FROM automl_output_info WHERE compile_params = %s AND fit_params = %s",
                  [best["compile_params"], best["fit_params"]]) >= 1


@pytest.mark.parametrize("kwargs", [
    dict(source="invalid_source_table"),
    dict(model_ids=(2, -1)),
    dict(method="hyperbrand"),
    dict(method="hb"),
    dict(params="R=2, eta=3, skip_last=0"),  # R < eta
    dict(params="R=0, eta=3, skip_last=0"),
    dict(params="R=9, eta=1, skip_last=0"),  # eta must be > 1
    dict(params="R=9, eta=3, skip_last=3"),  # skip_last > s_max = 2
    dict(object_table="invalid_object_table"),
    dict(validation="invalid_validation_table"),
], ids=["source", "model_id", "method_hyperbrand", "method_hb", "R_below_eta", "R_0", "eta_1", "skip_last",
        "object_table", "validation_table"])
def test_refusals_leave_nothing(data, cur, kwargs):
    with pytest.raises(psycopg2.Error):
        _call(cur, out="automl_bad", mst="automl_bad_mst", **kwargs)
    assert _outputs(cur, "automl_bad", "automl_bad_mst") == []


@pytest.mark.parametrize("existing", ["output", "mst"])
def test_existing_output_or_mst_table_is_refused(data, cur, existing):
    out, mst = f"automl_exists_{existing}", f"automl_exists_{existing}_mst"
    cur.execute(f"CREATE TABLE {out if existing == 'output' else mst} (x INTEGER)")
    fails(cur, AUTOML + TAIL, ["iris_data_packed", out, mst, [1, 2], COMPILE_GRID, FIT_GRID, "hyperband",
                               "R=3, eta=3, skip_last=0", None, None, None, None, None])
    assert len(_outputs(cur, out, mst)) == 1  # only the table made here


@pytest.mark.parametrize("method", ["hyper", "hyp"])
def test_method_prefix_is_refused_naming_the_choices(data, cur, method):
    # Deliberate difference (docs/automl.md): MADlib's test passes prefixes of 'hyperband', but 'hyp' and
    # 'hyper' start 'hyperopt' too; madlib_dl takes full names and says which.
    error = fails(cur, AUTOML + TAIL, ["iris_data_packed", "automl_prefix", "automl_prefix_mst", [1, 2],
                                       COMPILE_GRID, FIT_GRID, method, "R=2, eta=3, skip_last=0", None, None, None,
                                       None, None])
    assert "automl_method: expected 'hyperband', 'hyperopt' or 'asha'" in str(error)


def test_name_description_and_reproducible_configurations(data, cur):
    for i in (1, 2):
        _call(cur, out=f"automl_seed{i}", mst=f"automl_seed{i}_mst", params="R=3, eta=3, skip_last=0",
              random_state=42, name="test1", description="test1 descr")
    assert row(cur, "SELECT name, description FROM automl_seed1_summary") == {
        "name": "test1", "description": "test1 descr"}
    configs = [rows(cur, f"SELECT mst_key, model_id, compile_params, fit_params FROM automl_seed{i}_info "
                         "ORDER BY mst_key") for i in (1, 2)]
    assert len(configs[0]) == 5  # R=3, eta=3: brackets of 3 and 2
    assert configs[0] == configs[1]
    assert len({c["compile_params"] for c in configs[0]}) > 1  # drawn, not one configuration repeated


def test_hyperopt_small(data, cur):
    _call(cur, out="automl_hyperopt", mst="automl_hyperopt_mst", method="hyperopt",
          params="num_configs=2, num_iterations=1, algorithm=rand", random_state=1)
    assert scalar(cur, "SELECT count(*) FROM automl_hyperopt") == 2
    assert scalar(cur, "SELECT count(*) FROM automl_hyperopt_info") == 2
    assert scalar(cur, "SELECT count(*) FROM automl_hyperopt_mst") == 1


def test_hyperband_schedule(data, cur):
    cur.execute(f"SELECT {S}hyperband_schedule('schedule_table', 81)")
    assert scalar(cur, "SELECT count(*) FROM schedule_table") == 15  # s = 4..0: 5 + 4 + 3 + 2 + 1 rounds
    assert scalar(cur, "SELECT count(DISTINCT s) FROM schedule_table") == 5
    assert scalar(cur, "SELECT max(r_i) FROM schedule_table") == 81
    fails(cur, f"SELECT {S}hyperband_schedule('schedule_table', 81)")
    assert scalar(cur, "SELECT count(*) FROM schedule_table") == 15
