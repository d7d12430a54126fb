"""The data workload of `make bench`: packing, evaluating and scoring a CIFAR-shaped table, against
reading the same table into numpy.

A synthetic table shaped like CIFAR-10 (REAL[32][32][3] pixels 0..255, labels 0..9; 10,000 rows at
scale 1, 50,000 at ``--scale 5``), a validation table of a fifth of its rows, and a table 4 times the
size (the packing's memory must not grow with the table), generated once and kept. One run times:

(a) reading the table into numpy through psycopg2 (``array_send``, decoded with numpy): the reference;
(b) training_preprocessor_dl of the 1x and the 4x tables, with the backend's peak memory of each;
(c) validation_preprocessor_dl;
(d) madlib_keras_evaluate of a small CNN on the packed validation table (the session's second call: its
    workers are started by the first), against reading the validation table plus Keras' evaluate;
(e) madlib_keras_predict 'response' on the 1x table (after a first predict of a few rows: TensorFlow
    in the session), against (a) plus Keras' predict.

Plain Keras runs in a subprocess with the same thread count; its model has the trained weights.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import time

import numpy as np

import report
import state

SCHEMA = "madlib_dl_bench"
SHAPE, CLASSES, ROWS, SEGMENTS = (32, 32, 3), 10, 10_000, 2
PACK_RATIO, PEAK_RATIO, SCORE_RATIO = 1.5, 1.5, 1.5
COMPILE = "loss='categorical_crossentropy', optimizer='Adam(learning_rate=0.001)', metrics=['accuracy']"
FIT = "batch_size=64, epochs=1"


def _tables(scale: float) -> dict[str, int]:
    rows = max(100, int(round(ROWS * scale)))
    return {"data_1x": rows, "data_4x": 4 * rows, "data_val": max(20, rows // 5)}


def _copy_binary(rows: int, seed: int) -> io.BytesIO:
    """COPY BINARY of (id INTEGER, x REAL[32][32][3], label INTEGER), made with numpy."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(SHAPE))
    head = struct.pack(">iii", len(SHAPE), 0, 700) + b"".join(struct.pack(">ii", d, 1) for d in SHAPE)
    array_bytes = len(head) + 8 * size
    row = np.dtype([("fields", ">i2"), ("id_len", ">i4"), ("id", ">i4"), ("x_len", ">i4"),
                    ("x_head", f"V{len(head)}"), ("x", [("len", ">i4"), ("value", ">f4")], (size,)),
                    ("label_len", ">i4"), ("label", ">i4")])
    out = io.BytesIO()
    out.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0))
    for start in range(0, rows, 2000):
        n = min(2000, rows - start)
        chunk = np.zeros(n, dtype=row)
        chunk["fields"], chunk["id_len"], chunk["id"] = 3, 4, np.arange(start, start + n)
        chunk["x_len"], chunk["x_head"] = array_bytes, np.frombuffer(head, dtype=f"V{len(head)}")[0]
        chunk["x"]["len"], chunk["x"]["value"] = 4, rng.integers(0, 256, (n, size))
        chunk["label_len"], chunk["label"] = 4, rng.integers(0, CLASSES, n)
        out.write(chunk.tobytes())
    out.write(struct.pack(">h", -1))
    out.seek(0)
    return out


def prepare(cur, lib: str, scale: float, say) -> dict[str, int]:
    """The source tables (kept while their row counts match), a model architecture, a trained model."""
    tables = _tables(scale)
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    for seed, (name, rows) in enumerate(tables.items()):
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{SCHEMA}.{name}"])
        if cur.fetchone()[0]:
            cur.execute(f"SELECT count(*) FROM {SCHEMA}.{name}")
            if cur.fetchone()[0] == rows:
                continue
        started = time.monotonic()
        cur.execute(f"DROP TABLE IF EXISTS {SCHEMA}.{name}")
        cur.execute(f"CREATE TABLE {SCHEMA}.{name} (id INTEGER, x REAL[], label INTEGER)")
        cur.copy_expert(f"COPY {SCHEMA}.{name} FROM STDIN WITH (FORMAT binary)", _copy_binary(rows, seed))
        cur.execute(f"VACUUM ANALYZE {SCHEMA}.{name}")
        say(f"data: generated {SCHEMA}.{name}, {rows} rows ({time.monotonic() - started:.0f} s)")
    return tables


def _model_json() -> str:
    from madlib_dl.keras_runtime import tf_setup

    keras = tf_setup.keras()
    return keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(CLASSES, activation="softmax")],
                            name="data_cnn").to_json()


def _drop(cur, *tables: str) -> None:
    for table in tables:
        cur.execute(f"DROP TABLE IF EXISTS {SCHEMA}.{table}, {SCHEMA}.{table}_summary")


def _backend_peak(cur) -> int | None:
    """This backend's own peak (VmHWM less the shared memory it touched)."""
    cur.execute("SELECT pg_backend_pid()")
    return state.driver_peak(cur.fetchone()[0])


def _timed_in_fresh_session(cluster, sql: str, args) -> tuple[float, int | None]:
    """(seconds, the backend's peak memory) of one statement in a session of its own."""
    with cluster.connect() as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET client_min_messages = warning")
            started = time.perf_counter()
            cur.execute(sql, args)
            seconds = time.perf_counter() - started
            peak = _backend_peak(cur)
    conn.close()
    return seconds, peak


def run_ours(cluster, lib: str, tables: dict[str, int], say) -> dict:
    out: dict = {}
    train = f"SELECT {lib}.training_preprocessor_dl(%s, %s, 'label', 'x', NULL, 255.0, NULL, %s)"
    for name in ("data_1x", "data_4x"):
        with cluster.connect() as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                _drop(cur, f"{name}_packed")
        conn.close()
        seconds, peak = _timed_in_fresh_session(cluster, train, [f"{SCHEMA}.{name}", f"{SCHEMA}.{name}_packed",
                                                                 str(SEGMENTS)])
        with cluster.connect() as conn, conn.cursor() as cur:
            cur.execute(f"SELECT sum(octet_length(x) + octet_length(label))::bigint FROM {SCHEMA}.{name}_packed")
            packed = cur.fetchone()[0]
        conn.close()
        out[name] = {"rows": tables[name], "seconds": seconds, "peak_bytes": peak, "packed_bytes": packed}
        say(f"  training_preprocessor_dl {name}: {seconds:.2f} s, peak {(peak or 0) / report.MIB:.0f} MiB "
            f"(packed {packed / report.MIB:.0f} MiB)")
    with cluster.connect() as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            _drop(cur, "data_val_packed", "data_model", "data_arch", "data_eval", "data_eval_warm", "data_pred",
                  "data_pred_warm")
            cur.execute("SET client_min_messages = warning")
            started = time.perf_counter()
            cur.execute(f"SELECT {lib}.validation_preprocessor_dl(%s, %s, 'label', 'x', %s)",
                        [f"{SCHEMA}.data_val", f"{SCHEMA}.data_val_packed", f"{SCHEMA}.data_1x_packed"])
            out["validation"] = {"rows": tables["data_val"], "seconds": time.perf_counter() - started}
            say(f"  validation_preprocessor_dl: {out['validation']['seconds']:.2f} s")
            cur.execute(f"SELECT {lib}.load_keras_model(%s, %s::json)", [f"{SCHEMA}.data_arch", _model_json()])
            cur.execute(f"SELECT {lib}.madlib_keras_fit(%s, %s, %s, 1, %s, %s, 1)",
                        [f"{SCHEMA}.data_val_packed", f"{SCHEMA}.data_model", f"{SCHEMA}.data_arch", COMPILE, FIT])
            for name in ("data_eval_warm", "data_eval"):  # the first starts the session's workers
                started = time.perf_counter()
                cur.execute(f"SELECT {lib}.madlib_keras_evaluate(%s, %s, %s)",
                            [f"{SCHEMA}.data_model", f"{SCHEMA}.data_val_packed", f"{SCHEMA}.{name}"])
                out[name] = {"seconds": time.perf_counter() - started}
            say(f"  madlib_keras_evaluate: {out['data_eval']['seconds']:.2f} s "
                f"(first call, starting workers: {out['data_eval_warm']['seconds']:.2f} s)")
            cur.execute(f"CREATE TEMP VIEW data_few AS SELECT * FROM {SCHEMA}.data_val LIMIT 10")
            cur.execute(f"SELECT {lib}.madlib_keras_predict(%s, 'data_few', 'id', 'x', %s)",
                        [f"{SCHEMA}.data_model", f"{SCHEMA}.data_pred_warm"])
            started = time.perf_counter()
            cur.execute(f"SELECT {lib}.madlib_keras_predict(%s, %s, 'id', 'x', %s, 'response')",
                        [f"{SCHEMA}.data_model", f"{SCHEMA}.data_1x", f"{SCHEMA}.data_pred"])
            out["predict"] = {"rows": tables["data_1x"], "seconds": time.perf_counter() - started}
            say(f"  madlib_keras_predict 'response': {out['predict']['seconds']:.2f} s")
            cur.execute(f"SELECT model_weights FROM {SCHEMA}.data_model")
            out["weights"] = bytes(cur.fetchone()[0]).hex()
    conn.close()
    return out


def run_reference(cluster, threads: int, weights_hex: str) -> dict:
    """(a) and plain Keras, in a subprocess (its threads fixed before TensorFlow starts)."""
    config = {"dsn": cluster.dsn(), "threads": threads, "weights": weights_hex, "model": _model_json()}
    return report.run_script(__file__, config, "the data workload's reference run")


def read_out(cur, table: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference read: every row's features (array_send, decoded with numpy) and label."""
    from madlib_dl import binary_arrays

    layout = binary_arrays.Layout(int(np.prod(SHAPE)), binary_arrays.FLOAT4_OID)
    cur.execute(f"SELECT label, array_send(x) FROM {table}")
    xs, ys = [], []
    while True:
        rows = cur.fetchmany(2000)
        if not rows:
            break
        xs.append(binary_arrays.decode([bytes(r[1]) for r in rows], layout))
        ys.append(np.array([r[0] for r in rows]))
    return np.concatenate(xs).reshape(-1, *SHAPE), np.concatenate(ys)


def _reference_main(config_path: str) -> None:
    import psycopg2

    from madlib_dl.keras_runtime import serialization, tf_setup

    config = json.load(open(config_path))
    keras = tf_setup.keras(threads=config["threads"])
    model = keras.models.model_from_json(config["model"])
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    shapes = [tuple(w.shape) for w in model.weights]
    model.set_weights(serialization.deserialize_weights(bytes.fromhex(config["weights"]), shapes))
    out = {}
    with psycopg2.connect(**config["dsn"]) as conn, conn.cursor() as cur:
        for name in ("data_1x", "data_val"):
            started = time.perf_counter()
            x, y = read_out(cur, f"{SCHEMA}.{name}")
            out[f"read {name}"] = time.perf_counter() - started
            x = x / np.float32(255.0)
            if name == "data_val":
                started = time.perf_counter()
                model.evaluate(x, keras.utils.to_categorical(y, CLASSES), batch_size=256, verbose=0)
                out["keras evaluate"] = time.perf_counter() - started
            else:
                started = time.perf_counter()
                model.predict(x, batch_size=256, verbose=0)
                out["keras predict"] = time.perf_counter() - started
    conn.close()
    json.dump(out, sys.stdout)


def bench(cluster, lib: str, scale: float, threads: int, say) -> dict:
    with cluster.connect() as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            tables = prepare(cur, lib, scale, say)
    conn.close()
    say(f"data: {tables['data_1x']} rows of REAL{list(SHAPE)} ({tables['data_4x']} in the 4x table, "
        f"{tables['data_val']} validation), {SEGMENTS} segments")
    ours = run_ours(cluster, lib, tables, say)
    reference = run_reference(cluster, threads, ours.pop("weights"))
    say("  reference: " + ", ".join(f"{k} {v:.2f} s" for k, v in reference.items()))
    return {"tables": tables, "ours": ours, "reference": reference}


def targets(result: dict) -> list:
    ours, ref = result["ours"], result["reference"]
    read = ref["read data_1x"]
    one, four = ours["data_1x"], ours["data_4x"]
    found = [
        report.Target("data (b): training_preprocessor_dl / reading the table into numpy", one["seconds"] / read,
                      PACK_RATIO, "max", f"{one['seconds']:.1f} s against {read:.1f} s"),
        # the target: peak <= 1.5 x the packed bytes, or bounded whatever the table's size; the
        # second is the one a streaming packer meets at every size (its peak is one buffer, not the data)
        report.Target("data (b): peak memory, 4x table / 1x table (bounded: the table grew 4x)",
                      (four["peak_bytes"] or 0) / (one["peak_bytes"] or 1), PEAK_RATIO, "max",
                      f"{_mib(one['peak_bytes'])} and {_mib(four['peak_bytes'])} MiB; packed {_mib(one['packed_bytes'])} "
                      f"and {_mib(four['packed_bytes'])} MiB"),
        report.Target("data (b): peak memory / packed bytes, 1x table", (one["peak_bytes"] or 0) / one["packed_bytes"],
                      None, "info"),
        report.Target("data (c): validation_preprocessor_dl / reading the table", ours["validation"]["seconds"] /
                      ref["read data_val"], None, "info"),
        report.Target("data (d): madlib_keras_evaluate / (reading the table + Keras evaluate)",
                      ours["data_eval"]["seconds"] / (ref["read data_val"] + ref["keras evaluate"]), SCORE_RATIO,
                      "max"),
        report.Target("data (e): madlib_keras_predict / (reading the table + Keras predict)",
                      ours["predict"]["seconds"] / (read + ref["keras predict"]), SCORE_RATIO, "max"),
    ]
    return found


def _mib(n) -> str:
    return f"{(n or 0) / report.MIB:.0f}"


def table(result: dict) -> str:
    ours, ref = result["ours"], result["reference"]
    lines = ["data: step | rows | ours s | reference s | ratio"]
    rows = [("(b) training_preprocessor_dl 1x", ours["data_1x"], ref["read data_1x"]),
            ("(b) training_preprocessor_dl 4x", ours["data_4x"], None),
            ("(c) validation_preprocessor_dl", ours["validation"], ref["read data_val"]),
            ("(d) madlib_keras_evaluate", {"rows": ours["validation"]["rows"], **ours["data_eval"]},
             ref["read data_val"] + ref["keras evaluate"]),
            ("(e) madlib_keras_predict", ours["predict"], ref["read data_1x"] + ref["keras predict"])]
    for name, step, reference in rows:
        ratio = f"{step['seconds'] / reference:5.2f}" if reference else "    -"
        lines.append(f"  {name:<34} | {step.get('rows', ''):>7} | {step['seconds']:7.2f} | "
                     f"{reference if reference is not None else float('nan'):7.2f} | {ratio}")
    for name in ("data_1x", "data_4x"):
        step = ours[name]
        lines.append(f"  (b) peak memory {name}: {(step['peak_bytes'] or 0) / report.MIB:.0f} MiB, packed "
                     f"{step['packed_bytes'] / report.MIB:.0f} MiB")
    return "\n".join(lines)


if __name__ == "__main__":
    _reference_main(sys.argv[1])
