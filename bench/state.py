"""The state workload of `make bench`: what moving a model's state costs, by its size.

One dense Adam model per size (about 1M, 10M, 30M, 100M and 140M parameters: VGG16's size) on little
data (64 examples over 2 segments), 2 iterations with caching, on background workers. Each hop sends the
model's weights and Adam state to a worker and back, so what a hop costs beyond its training (the hop's
wall as the driver saw it, less the time inside Keras) is the price of the state's size. The 140M model
also warm-starts (its Adam state is larger than one PostgreSQL value: it is stored in parts). Sizes under
1 GB of state run 3 times and the median run counts (2 hops after the first ones per run are few).

Plain Keras on the same hops (one process, the same thread count: one fit per hop over the segment's
examples) is the reference. The driver's own peak memory (VmHWM less the shared buffers it touched) is
read from /proc of its backend after each run.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import report

HERE = Path(__file__).resolve().parent
SCHEMA = "madlib_dl_bench"
INPUTS, CLASSES, EXAMPLES, SEGMENTS, ITERATIONS, BATCH = 1000, 10, 64, 2, 2, 32
FIXED_MS, BYTES_PER_MS = 5.0, 1e6  # the target: 5 ms + state bytes / (1 GB/s) per hop
REPEATS, REPEAT_BELOW_BYTES = 3, 1 << 30
DRIVER_BASE_BYTES, DRIVER_FACTOR = 300e6, 1.2
COMPILE = "loss='categorical_crossentropy', optimizer='Adam(learning_rate=0.0001)', metrics=['accuracy']"
FIT = f"batch_size={BATCH}, epochs=1"


@dataclass(frozen=True)
class Size:
    name: str
    hidden: int  # units of the one hidden layer: parameters = hidden * (INPUTS + 1 + CLASSES) + CLASSES

    @property
    def parameters(self) -> int:
        return self.hidden * (INPUTS + 1 + CLASSES) + CLASSES

    @property
    def state_bytes(self) -> int:
        return 3 * 4 * self.parameters  # float32 weights and Adam's two slots


SIZES = (Size("1M", 990), Size("10M", 9890), Size("30M", 29670), Size("100M", 98910), Size("140M", 138480))
WARM_START = "140M"


def _model_json(size: Size) -> str:
    from madlib_dl.keras_runtime import tf_setup

    keras = tf_setup.keras()
    return keras.Sequential([keras.Input((INPUTS,)), keras.layers.Dense(size.hidden, activation="relu"),
                             keras.layers.Dense(CLASSES, activation="softmax")], name=f"dense{size.name}").to_json()


def prepare(cur, lib: str) -> None:
    """The packed data (2 segments) and one architecture and model selection table per size."""
    rng = np.random.default_rng(0)
    x, y = rng.random((EXAMPLES, INPUTS)), rng.integers(0, CLASSES, EXAMPLES)
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    cur.execute(f"DROP TABLE IF EXISTS {SCHEMA}.state_source, {SCHEMA}.state_packed, {SCHEMA}.state_packed_summary, "
                f"{SCHEMA}.state_arch")
    cur.execute(f"CREATE TABLE {SCHEMA}.state_source (id INTEGER, x REAL[], label INTEGER)")
    cur.executemany(f"INSERT INTO {SCHEMA}.state_source VALUES (%s, %s, %s)",
                    [(i, list(map(float, row)), int(label)) for i, (row, label) in enumerate(zip(x, y))])
    cur.execute(f"SELECT {lib}.training_preprocessor_dl(%s, %s, 'label', 'x', NULL, 1.0, NULL, %s)",
                [f"{SCHEMA}.state_source", f"{SCHEMA}.state_packed", str(SEGMENTS)])
    for size in SIZES:
        cur.execute(f"SELECT {lib}.load_keras_model(%s, %s::json, NULL, %s, NULL)",
                    [f"{SCHEMA}.state_arch", _model_json(size), size.name])
        mst = f"{SCHEMA}.state_mst_{size.name}"
        cur.execute(f"DROP TABLE IF EXISTS {mst}, {mst}_summary")
        cur.execute(f"SELECT {lib}.load_model_selection_table(%s, %s, ARRAY[(SELECT model_id FROM {SCHEMA}.state_arch "
                    "WHERE name = %s)], ARRAY[%s], ARRAY[%s])", [f"{SCHEMA}.state_arch", mst, size.name, COMPILE, FIT])


def driver_peak(pid: int) -> int | None:
    """The backend's own peak: VmHWM less the shared memory it has touched (process_memory's rule)."""
    try:
        status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status") if ":" in line)
    except OSError:
        return None
    kib = {k: int(v.split()[0]) for k, v in status.items() if k in ("VmHWM", "RssShmem")}
    return 1024 * (kib.get("VmHWM", 0) - kib.get("RssShmem", 0))


def run_ours(cluster, lib: str, size: Size, threads: int) -> dict:
    output = f"{SCHEMA}.state_model_{size.name}"
    with cluster.connect() as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {output}, {output}_summary, {output}_info, {output}_optimizer_state")
            # every size gets fresh workers (no idle ones of the previous size hold memory); the budget is
            # raised for the largest models (the run's own estimate refuses them at the default)
            cur.execute("SET madlib_dl.executor = 'workers'; SET madlib_dl.worker_idle_timeout = 0; "
                        "SET madlib_dl.worker_threads = %s; SET madlib_dl.memory_budget_mb = 20000; "
                        "SET client_min_messages = warning; SELECT pg_backend_pid()", [threads])
            driver = cur.fetchone()[0]
            fit = (f"SELECT {lib}.madlib_keras_fit_multiple_model(%s, %s, %s, %s, FALSE, NULL, NULL, %s, NULL, NULL, "
                   "TRUE)")
            args = [f"{SCHEMA}.state_packed", output, f"{SCHEMA}.state_mst_{size.name}", ITERATIONS, False]
            started = time.time()
            cur.execute(fit, args)
            wall = time.time() - started
            hops = _hops(cur, lib)
            peak = driver_peak(driver)
            result = {"size": size.name, "parameters": size.parameters, "state_bytes": size.state_bytes,
                      "wall_seconds": wall, "hops": hops, "driver_peak_bytes": peak}
            if size.name == WARM_START:
                started = time.time()
                cur.execute(fit, args[:3] + [1, True])
                result["warm_start_seconds"] = time.time() - started
                cur.execute(f"SELECT count(*), sum(length(data)) FROM {output}_optimizer_state")
                result["stored_parts"], result["stored_optimizer_bytes"] = cur.fetchone()
                cur.execute(f"SELECT count(*) FROM {lib}.last_fit_hops() WHERE kind = 'train'")
                result["warm_start_hops"] = cur.fetchone()[0]
            cur.execute(f"DROP TABLE IF EXISTS {output}, {output}_summary, {output}_info, {output}_optimizer_state")
    conn.close()
    return result


def _hops(cur, lib: str) -> list[dict]:
    cur.execute(f"SELECT iteration, segment, seconds, overhead_seconds FROM {lib}.last_fit_hops() WHERE kind = 'train' "
                "ORDER BY started")
    return [dict(zip(("iteration", "segment", "seconds", "overhead"), row)) for row in cur.fetchall()]


def run_keras(cluster, threads: int) -> dict:
    """Plain Keras on the same hops, every size, in one subprocess (its threads fixed before TF starts)."""
    config = {"dsn": cluster.dsn(), "threads": threads, "table": f"{SCHEMA}.state_packed",
              "sizes": [[s.name, s.hidden] for s in SIZES]}
    return report.run_script(__file__, config, "the plain Keras state run")


def _keras_main(config_path: str) -> None:
    import psycopg2

    from madlib_dl.keras_runtime import tf_setup

    config = json.load(open(config_path))
    keras = tf_setup.keras(threads=config["threads"])
    sys.path.insert(0, str(HERE))
    import baseline

    segments = {}
    with psycopg2.connect(**config["dsn"]) as conn, conn.cursor() as cur:
        for segment in range(SEGMENTS):
            cur.execute(f"CREATE TEMP VIEW seg AS SELECT * FROM {config['table']} WHERE __dist_key__ = {segment}")
            segments[segment] = baseline.read_examples(cur, "seg")
            cur.execute("DROP VIEW seg")
    conn.close()
    out = {}
    for name, hidden in config["sizes"]:
        model = keras.Sequential([keras.Input((INPUTS,)), keras.layers.Dense(hidden, activation="relu"),
                                  keras.layers.Dense(CLASSES, activation="softmax")])
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.0001), loss="categorical_crossentropy",
                      metrics=["accuracy"])
        hops = []
        for _ in range(ITERATIONS):
            for segment in range(SEGMENTS):
                x, y = segments[segment]
                started = time.perf_counter()
                model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
                hops.append(time.perf_counter() - started)
        out[name] = {"hop_seconds": hops}
        del model
        keras.backend.clear_session()
    json.dump(out, sys.stdout)


def bench(cluster, lib: str, threads: int, say) -> dict:
    with cluster.connect() as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            prepare(cur, lib)
    conn.close()
    say(f"state: one dense Adam model per size, {EXAMPLES} examples of {INPUTS} features over {SEGMENTS} segments, "
        f"{ITERATIONS} iterations, {threads} TF thread(s) per process")
    keras = run_keras(cluster, threads)
    runs = []
    for size in SIZES:
        run = median_run([run_ours(cluster, lib, size, threads) for _ in range(repeats(size))])
        run["keras_hop_seconds"] = keras[size.name]["hop_seconds"]
        runs.append(run)
        say(f"  {size.name}: {run['wall_seconds']:.2f} s, hop overhead {_mean_overhead_ms(run, first_hops(run)):.0f} ms "
            f"(first hops), {_mean_overhead_ms(run, later_hops(run)):.0f} ms (later; runs: "
            f"{', '.join(f'{m:.0f}' for m in run['later_means_ms'])} ms)")
    return {"runs": runs}


def repeats(size: Size) -> int:
    """Runs per size: with 2 hops after the first ones per run, one slow hop on a busy machine moves a
    run's mean by 2x; the smaller sizes are cheap to repeat, the median run counts."""
    return REPEATS if size.state_bytes < REPEAT_BELOW_BYTES else 1


def median_run(runs: list[dict]) -> dict:
    """The run whose mean overhead after the first hops is the median, with every run's mean beside it."""
    means = [_mean_overhead_ms(r, later_hops(r)) for r in runs]
    order = sorted(range(len(runs)), key=lambda i: means[i])
    chosen = dict(runs[order[len(runs) // 2]])
    chosen["later_means_ms"] = means
    return chosen


def _mean_overhead_ms(run: dict, hops: list | None = None) -> float:
    hops = run["hops"] if hops is None else hops
    return 1000 * sum(h["overhead"] for h in hops) / len(hops) if hops else float("nan")


def first_hops(run: dict) -> list[dict]:
    """Each segment's first hop: its worker builds and compiles the model there (weights initialised,
    loops traced) and allocates the state's memory, a cost per model and worker, not per hop."""
    return [h for h in run["hops"] if h["iteration"] == 1]


def later_hops(run: dict) -> list[dict]:
    return [h for h in run["hops"] if h["iteration"] > 1]


def limit_ms(state_bytes: int) -> float:
    return FIXED_MS + state_bytes / BYTES_PER_MS


def driver_limit_bytes(state_bytes: int) -> float:
    return DRIVER_BASE_BYTES + DRIVER_FACTOR * state_bytes


def table(result: dict) -> str:
    lines = ["state: size | parameters | state MiB | overhead ms per hop: first hops, later hops (worst) | limit ms "
             "| ours s in hops | keras s same hops | ratio | driver peak MiB | limit MiB"]
    for run in result["runs"]:
        walls = sum(h["seconds"] + h["overhead"] for h in run["hops"])
        keras = sum(run["keras_hop_seconds"])
        later = later_hops(run)
        worst = 1000 * max((h["overhead"] for h in later), default=float("nan"))
        peak = run["driver_peak_bytes"]
        lines.append(f"  {run['size']:>5} | {run['parameters']:>11,} | {run['state_bytes'] / report.MIB:8.0f} | "
                     f"{_mean_overhead_ms(run, first_hops(run)):8.1f}, {_mean_overhead_ms(run, later):8.1f} "
                     f"({worst:.1f}) | {limit_ms(run['state_bytes']):8.1f} | {walls:7.2f} | {keras:7.2f} | "
                     f"{walls / keras:5.2f} | "
                     f"{(peak or 0) / report.MIB:7.0f} | {driver_limit_bytes(run['state_bytes']) / report.MIB:6.0f}")
    return "\n".join(lines)


def targets(result: dict) -> list:
    found = []
    for run in result["runs"]:
        found.append(report.Target(f"state {run['size']}: per-hop overhead after the first hops, ms (mean)",
                                   _mean_overhead_ms(run, later_hops(run)), limit_ms(run["state_bytes"]), "max",
                                   f"{run['state_bytes'] / report.MIB:.0f} MiB of state each way"))
        found.append(report.Target(f"state {run['size']}: overhead of the first hops (model set-up), ms (mean)",
                                   _mean_overhead_ms(run, first_hops(run)), None, "info"))
        keras = sum(run["keras_hop_seconds"])
        found.append(report.Target(f"state {run['size']}: hops' wall / plain Keras on the same hops",
                                   sum(h["seconds"] + h["overhead"] for h in run["hops"]) / keras, None, "info"))
        found.append(report.Target(f"state {run['size']}: driver peak, MiB", (run["driver_peak_bytes"] or 0) / report.MIB,
                                   driver_limit_bytes(run["state_bytes"]) / report.MIB, "max"))
        if "warm_start_seconds" in run:
            found.append(report.Target(f"state {run['size']}: warm start trains (hops)", run["warm_start_hops"],
                                       SEGMENTS, "min", f"optimizer state stored in {run['stored_parts']} parts, "
                                       f"{(run['stored_optimizer_bytes'] or 0) / report.MIB:.0f} MiB"))
    return found


if __name__ == "__main__":
    _keras_main(sys.argv[1])
