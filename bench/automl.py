"""The automl workload of `make bench`: one search space of 48 configurations on digits, searched three
ways on the same packed data, each from a fresh session with caching on:

* grid: madlib_keras_fit_multiple_model trains all 48 to the full budget (MAX_ITERATIONS);
* hyperband: madlib_keras_automl 'hyperband' with R = MAX_ITERATIONS, eta = 3;
* asha: madlib_keras_automl 'asha' with max_iterations = MAX_ITERATIONS, grace 1, factor 3, 48 configurations;
* asha_checkpoints: the same with madlib_dl.checkpoint_every = CHECKPOINT_EVERY model iterations (info:
  its time / asha's, what checkpoints cost, the winding down before each one included).

Each prints its wall time, the best final validation accuracy of the configurations it trained to the
full budget, and (info) the accuracy of the configuration it picks by validation loss (automl: the one
written to its model selection table). Target: hyperband's and asha's best within 0.01 of the grid's,
in at most 0.4 x its time.
"""

from __future__ import annotations

import time

import report

SCHEMA = "madlib_dl_bench"
SEGMENTS, MAX_ITERATIONS, SEED = 2, 27, 5
ACCURACY_SLACK, TIME_RATIO = 0.01, 0.4
CHECKPOINT_EVERY = 8
COMPILE_GRID = ("{'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'], 'optimizer_params_list': ["
                "{'optimizer': ['Adam'], 'lr': [0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]}, "
                "{'optimizer': ['SGD'], 'lr': [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]}]}")
# Three epochs per hop and a wide layer, so that training, not the fixed costs (workers starting, a
# hop's round trip), is most of the grid's time, as in real model selection.
FIT_GRID = "{'batch_size': [16, 32, 64, 128], 'epochs': [3]}"
HIDDEN = 512
CONFIGS = 48  # the grid above: (6 + 6) learning rates x 4 batch sizes


def _t(name: str) -> str:
    return f"{SCHEMA}.automl_{name}"


def prepare(cur, lib: str) -> None:
    from sklearn.datasets import load_digits

    from madlib_dl.keras_runtime import tf_setup

    keras = tf_setup.keras()
    digits = load_digits()
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    for name in ("source", "val_source", "packed", "packed_summary", "val", "val_summary", "arch"):
        cur.execute(f"DROP TABLE IF EXISTS {_t(name)}")
    for name, keep in (("source", "<>"), ("val_source", "=")):
        cur.execute(f"CREATE TABLE {_t(name)} (id INTEGER, x REAL[], label INTEGER)")
        cur.executemany(f"INSERT INTO {_t(name)} VALUES (%s, %s, %s)",
                        [(i, list(map(float, digits.data[i])), int(digits.target[i])) for i in range(len(digits.data))
                         if (i % 4 == 0) == (keep == "=")])
    cur.execute(f"SELECT {lib}.training_preprocessor_dl(%s, %s, 'label', 'x', NULL, 16.0, NULL, %s)",
                [_t("source"), _t("packed"), str(SEGMENTS)])
    cur.execute(f"SELECT {lib}.validation_preprocessor_dl(%s, %s, 'label', 'x', %s)",
                [_t("val_source"), _t("val"), _t("packed")])
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(HIDDEN, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    cur.execute(f"SELECT {lib}.load_keras_model(%s, %s::json)", [_t("arch"), model.to_json()])


def _drop_outputs(cur, out: str, mst: str) -> None:
    for table in (out, out + "_summary", out + "_info", mst, mst + "_summary"):
        cur.execute(f"DROP TABLE IF EXISTS {table}")


def _grid(cur, lib: str) -> tuple[float, float]:
    cur.execute(f"SELECT {lib}.generate_model_configs(%s, %s, ARRAY[1], %s, %s)",
                [_t("arch"), _t("grid_mst"), COMPILE_GRID, FIT_GRID])
    cur.execute(f"SELECT count(*) FROM {_t('grid_mst')}")
    assert cur.fetchone()[0] == CONFIGS
    cur.execute(f"SELECT {lib}.madlib_keras_fit_multiple_model(%s, %s, %s, %s, FALSE, %s, %s, FALSE, NULL, NULL, "
                "TRUE)", [_t("packed"), _t("grid"), _t("grid_mst"), MAX_ITERATIONS, _t("val"), MAX_ITERATIONS])
    cur.execute(f"SELECT max(validation_metrics_final), (SELECT validation_metrics_final FROM {_t('grid_info')} "
                f"ORDER BY validation_loss_final LIMIT 1) FROM {_t('grid_info')}")
    return cur.fetchone()


def _automl(cur, lib: str, name: str, method: str, params: str) -> tuple[float, float, int]:
    out, mst = _t(name), _t(name + "_mst")
    cur.execute(f"SELECT {lib}.madlib_keras_automl(%s, %s, %s, %s, ARRAY[1], %s, %s, %s, %s, %s, "
                "validation_table => %s, use_caching => TRUE)",
                [_t("packed"), out, _t("arch"), mst, COMPILE_GRID, FIT_GRID, method, params, SEED, _t("val")])
    cur.execute(f"SELECT max(validation_metrics_final) FILTER (WHERE iterations_trained = %s), "
                f"sum(iterations_trained) FROM {out}_info", [MAX_ITERATIONS])
    accuracy, iterations = cur.fetchone()
    cur.execute(f"SELECT i.validation_metrics_final FROM {out}_info i JOIN {mst} m USING (compile_params, fit_params)")
    picked = cur.fetchone()[0]
    return accuracy, picked, iterations


ASHA = f"max_iterations={MAX_ITERATIONS}, grace_iterations=1, reduction_factor=3, num_configs={CONFIGS}"
RUNS = {  # name -> None (the grid) or (method, automl_params, madlib_dl.checkpoint_every)
    "grid": None,
    "hyperband": ("hyperband", f"R={MAX_ITERATIONS}, eta=3, skip_last=0", 0),
    "asha": ("asha", ASHA, 0),
    "asha_checkpoints": ("asha", ASHA, CHECKPOINT_EVERY),
}


def bench(cluster, lib: str, say) -> dict:
    with cluster.connect() as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            prepare(cur, lib)
            for name in RUNS:
                _drop_outputs(cur, _t(name), _t(name + "_mst"))
    conn.close()
    runs = {}
    for name, run in RUNS.items():
        with cluster.connect() as conn:  # a fresh session for each: its workers start within the timing
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SET client_min_messages = warning")
                cur.execute("SELECT set_config('madlib_dl.checkpoint_every', %s, false)", [str(run[2] if run else 0)])
                started = time.perf_counter()
                if run is None:
                    accuracy, picked = _grid(cur, lib)
                    iterations = CONFIGS * MAX_ITERATIONS
                else:
                    accuracy, picked, iterations = _automl(cur, lib, name, run[0], run[1])
                runs[name] = {"wall_seconds": time.perf_counter() - started, "validation_accuracy": accuracy,
                              "picked_accuracy": picked, "model_iterations": iterations}
        conn.close()
        say(f"automl: {name}: {runs[name]['wall_seconds']:.1f} s, validation accuracy "
            f"{runs[name]['validation_accuracy']:.4f}, {runs[name]['model_iterations']} model-iterations")
    return {"configurations": CONFIGS, "max_iterations": MAX_ITERATIONS, "segments": SEGMENTS, "runs": runs}


def targets(result: dict) -> list:
    grid = result["runs"]["grid"]
    found = []
    for name in ("hyperband", "asha"):
        run = result["runs"][name]
        detail = (f"{run['wall_seconds']:.1f} s vs grid {grid['wall_seconds']:.1f} s; accuracy "
                  f"{run['validation_accuracy']:.4f} vs {grid['validation_accuracy']:.4f}")
        found.append(report.Target(f"automl: {name} time / grid time", run["wall_seconds"] / grid["wall_seconds"],
                                   TIME_RATIO, "max", detail))
        found.append(report.Target(f"automl: {name} validation accuracy - (grid's - {ACCURACY_SLACK})",
                                   run["validation_accuracy"] - (grid["validation_accuracy"] - ACCURACY_SLACK),
                                   0.0, "min", detail))
    saved = result["runs"].get("asha_checkpoints")
    if saved:
        asha = result["runs"]["asha"]
        found.append(report.Target(
            f"automl: asha with a checkpoint every {CHECKPOINT_EVERY} model iterations / asha",
            saved["wall_seconds"] / asha["wall_seconds"], None, "info",
            f"{saved['wall_seconds']:.1f} s vs {asha['wall_seconds']:.1f} s, about "
            f"{saved['model_iterations'] // CHECKPOINT_EVERY} checkpoints"))
    return found


def table(result: dict) -> str:
    lines = [f"automl ({result['configurations']} configurations, up to {result['max_iterations']} iterations, "
             f"S={result['segments']}, caching on)",
             f"  {'search':<16} {'wall s':>8} {'best acc':>9} {'picked acc':>11} {'model-iterations':>17}"]
    for name, run in result["runs"].items():
        lines.append(f"  {name:<16} {run['wall_seconds']:>8.1f} {run['validation_accuracy']:>9.4f} "
                     f"{run['picked_accuracy']:>11.4f} {run['model_iterations']:>17}")
    return "\n".join(lines)
