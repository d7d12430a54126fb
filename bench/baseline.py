"""The limit `make bench` compares against: plain Keras in one Python process, training each
configuration of an mst table sequentially for the same number of epochs over the same examples (read
from the packed table, so they are exactly the examples the workers train on), with a fixed TF thread
count (that of one worker), then evaluating it on those examples as the run's final metrics do. Mode 'keras' uses Keras' fit and
evaluate; mode 'loop' the training loop a hop runs, to tell the loop's gain from the database's cost.

Run as a separate process (`python bench/baseline.py CONFIG.json`) so that its thread settings are
fixed before TensorFlow starts and its peak memory is its own. Prints one JSON object on stdout.
Timing starts with the data in memory: loading them is not part of the limit.

Two optional config keys let `make bench` run it as several concurrent processes (the machine's own
ceiling for S processes): "part": [i, n] trains only configurations i, i+n, i+2n, ... in mst_key order;
"barrier": true prints a line "ready" on stdout once the data are in memory and TensorFlow is set up,
then waits for a line on stdin before starting its clock (the JSON object follows on the next line)."""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def read_examples(cur, table: str) -> tuple[np.ndarray, np.ndarray]:
    """Every example of a packed table (columns label and x), segment by segment in buffer order, as the runtime decodes them."""
    from madlib_dl.preprocess import packing

    cur.execute(f"SELECT label, x, label_shape, x_shape FROM {table} ORDER BY __dist_key__, buffer_id")
    xs, ys = [], []
    for dependent, independent, dependent_shape, independent_shape in cur:
        xs.append(packing.decode(bytes(independent), independent_shape, packing.FEATURE_DTYPE))
        ys.append(packing.decode(bytes(dependent), dependent_shape, packing.LABEL_DTYPE))
    return np.concatenate(xs), np.concatenate(ys).astype(np.float32)


def configurations(cur, mst_table: str, arch_table: str) -> list[tuple]:
    cur.execute(f"SELECT m.mst_key, a.model_arch::text, m.compile_params, m.fit_params FROM {mst_table} m "
                f"JOIN {arch_table} a USING (model_id) ORDER BY m.mst_key")
    return cur.fetchall()


def _keras_fit(model, x, y, fit, iterations: int) -> float:
    """Plain Keras: one fit for all epochs, then evaluate."""
    kwargs = fit.keras_kwargs()
    kwargs["epochs"] = fit.epochs * iterations
    model.fit(x, y, **kwargs)
    loss = model.evaluate(x, y, batch_size=256, verbose=0)
    return float(loss[0] if isinstance(loss, list) else loss)


def _same_loop(model, x, y, fit, iterations: int) -> float:
    """The loop a hop runs (madlib_dl.keras_runtime.training_loop), in this one process: what is left
    between it and the database run is the database's own cost (sessions, hops, transfers)."""
    from madlib_dl.keras_runtime import training_loop

    loop = training_loop.loop_for(model)
    x, y = training_loop.as_tensors(x, y)
    training_loop.train(loop, x, y, fit.batch_size or 32, fit.epochs * iterations, fit.shuffle, 0)
    return training_loop.evaluate(loop, x, y, 256)[0]


MODES = {"keras": _keras_fit, "loop": _same_loop}


def train_all(configs, x, y, iterations: int, seed: int, mode: str) -> list[dict]:
    from madlib_dl.keras_runtime import builder, params, tf_setup

    keras = tf_setup.keras()
    results = []
    for mst_key, model_arch, compile_params, fit_params in configs:
        started = time.perf_counter()
        keras.utils.set_random_seed(seed + mst_key)
        model = builder.model_from_json(model_arch)
        builder.compile_model(model, params.parse_compile_params(compile_params))
        loss = MODES[mode](model, x, y, params.parse_fit_params(fit_params), iterations)
        results.append({"mst_key": mst_key, "seconds": time.perf_counter() - started, "loss": loss})
    return results


def main(config_path: str) -> None:
    import psycopg2

    from madlib_dl.keras_runtime import tf_setup
    from madlib_dl.segment import process_memory

    config = json.load(open(config_path))
    tf_setup.keras(threads=config["threads"])  # before TensorFlow's first op, as in a worker
    with psycopg2.connect(**config["dsn"]) as conn, conn.cursor() as cur:
        x, y = read_examples(cur, config["source_table"])
        configs = configurations(cur, config["mst_table"], config["arch_table"])
    conn.close()
    part = config.get("part")
    if part:
        configs = select_part(configs, *part)
    if config.get("barrier"):
        wait_for_go()
    started_at = time.time()
    started, cpu_started = time.perf_counter(), time.process_time()
    results = train_all(configs, x, y, config["iterations"], config.get("seed", 0), config["mode"])
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    memory = process_memory.current()
    json.dump({"seconds": seconds, "cpu_seconds": cpu_seconds, "configs": results, "examples": int(x.shape[0]),
               "data_bytes": int(x.nbytes + y.nbytes), "peak_bytes": memory.own_peak if memory else None,
               "threads": config["threads"], "mode": config["mode"], "part": part, "started_at": started_at},
              sys.stdout)


def select_part(configs: list[tuple], index: int, count: int) -> list[tuple]:
    """Configurations index, index + count, ... of those ordered by mst_key: process index of count."""
    if not 0 <= index < count:
        raise SystemExit(f"baseline: part {index} of {count} does not exist")
    return sorted(configs, key=lambda c: c[0])[index::count]


def wait_for_go() -> None:
    """The start barrier: say ready (data in memory, TensorFlow set up), then wait for the parent's line."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if not sys.stdin.readline():
        raise SystemExit("baseline: stdin closed before the go signal")


if __name__ == "__main__":
    main(sys.argv[1])
