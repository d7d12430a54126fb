"""The calls workload of `make bench`: what a session's second call costs once its workers are idle.

On 360 digits rows (a small table, 2 segments) with a trained MLP, one session runs
madlib_keras_evaluate twice, then imports TensorFlow itself (load_keras_model into a scratch table) and
runs madlib_keras_predict: the first evaluate starts background workers (each imports TensorFlow), the
second finds them idle and starts at once. Target: the second evaluate takes at most 1.5 x the predict
of the same rows. Both start from the model table: evaluate builds the model in its workers (their
compiled models are dropped between calls) as predict builds it in the session, which has TensorFlow
loaded as the idle workers have; a second predict would reuse the session's cached model.
"""

from __future__ import annotations

import time

import report

SCHEMA = "madlib_dl_bench"
ROWS, SEGMENTS, RATIO = 360, 2, 1.5


def prepare(cur, lib: str) -> None:
    from sklearn.datasets import load_digits

    from madlib_dl.keras_runtime import tf_setup

    keras = tf_setup.keras()
    digits = load_digits()
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    cur.execute(f"DROP TABLE IF EXISTS {SCHEMA}.calls_source, {SCHEMA}.calls_packed, {SCHEMA}.calls_packed_summary, "
                f"{SCHEMA}.calls_arch, {SCHEMA}.calls_model, {SCHEMA}.calls_model_summary")
    cur.execute(f"CREATE TABLE {SCHEMA}.calls_source (id INTEGER, x REAL[], label INTEGER)")
    cur.executemany(f"INSERT INTO {SCHEMA}.calls_source VALUES (%s, %s, %s)",
                    [(i, list(map(float, digits.data[i])), int(digits.target[i])) for i in range(ROWS)])
    cur.execute(f"SELECT {lib}.training_preprocessor_dl(%s, %s, 'label', 'x', NULL, 16.0, NULL, %s)",
                [f"{SCHEMA}.calls_source", f"{SCHEMA}.calls_packed", str(SEGMENTS)])
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    cur.execute(f"SELECT {lib}.load_keras_model(%s, %s::json)", [f"{SCHEMA}.calls_arch", model.to_json()])
    cur.execute(f"SELECT {lib}.madlib_keras_fit(%s, %s, %s, 1, %s, %s, 2)",
                [f"{SCHEMA}.calls_packed", f"{SCHEMA}.calls_model", f"{SCHEMA}.calls_arch",
                 "loss='categorical_crossentropy', optimizer='Adam(learning_rate=0.01)', metrics=['accuracy']",
                 "batch_size=32, epochs=1"])


def bench(cluster, lib: str, say) -> dict:
    with cluster.connect() as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            prepare(cur, lib)
    conn.close()
    timings = {}
    with cluster.connect() as conn:  # a fresh session: no idle workers yet
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET client_min_messages = warning")
            for name in ("evaluate 1", "evaluate 2", "predict"):
                target = f"{SCHEMA}.calls_{name.replace(' ', '_')}"
                cur.execute(f"DROP TABLE IF EXISTS {target}")
                if name == "predict":  # TensorFlow into this session first, as the idle workers have it
                    cur.execute(f"DROP TABLE IF EXISTS {SCHEMA}.calls_scratch")
                    cur.execute(f"SELECT {lib}.load_keras_model(%s, (SELECT model_arch FROM {SCHEMA}.calls_arch "
                                "LIMIT 1))", [f"{SCHEMA}.calls_scratch"])
                    cur.execute(f"DROP TABLE IF EXISTS {SCHEMA}.calls_scratch")
                started = time.perf_counter()
                if name.startswith("predict"):
                    cur.execute(f"SELECT {lib}.madlib_keras_predict(%s, %s, 'id', 'x', %s)",
                                [f"{SCHEMA}.calls_model", f"{SCHEMA}.calls_source", target])
                else:
                    cur.execute(f"SELECT {lib}.madlib_keras_evaluate(%s, %s, %s)",
                                [f"{SCHEMA}.calls_model", f"{SCHEMA}.calls_packed", target])
                timings[name] = time.perf_counter() - started
                cur.execute(f"DROP TABLE IF EXISTS {target}")
    conn.close()
    say("calls: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    return {"rows": ROWS, "seconds": timings}


def targets(result: dict) -> list:
    seconds = result["seconds"]
    return [report.Target("calls: second evaluate / predict, same session and rows",
                          seconds["evaluate 2"] / seconds["predict"], RATIO, "max",
                          f"evaluate {seconds['evaluate 1']:.2f} s then {seconds['evaluate 2']:.2f} s, "
                          f"predict {seconds['predict']:.2f} s")]
