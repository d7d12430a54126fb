"""`make bench`: madlib_keras_fit_multiple_model side by side with plain Keras, on the embedded cluster.

For each workload (bench/workloads.py) it runs, on the same packed data and the same configurations:
plain Keras in one process (bench/baseline.py; the limit), plain Keras as two concurrent processes each
training half of the configurations (the machine's own ceiling for S=2: two processes share its memory
bandwidth and caches), then the SQL call with S=1 and S=2 worker sessions, caching on and off, each from
a fresh psycopg2 session, every process with the same TF thread count. It prints a table per workload
and the targets of issue 5 (bench/report.py), and writes every measurement to a JSON file. Tables live
in the schema madlib_dl_bench and are kept between runs (data are re-made only when the workload or
scale changes). The state, calls, data and automl workloads (bench/state.py, calls.py, data.py, automl.py) measure
moving model state, a session's second call, packing and scoring a CIFAR-shaped table, and AutoML
against grid search; the search and big workloads (bench/peers.py) run a model selection side by side
with plain Keras, KerasTuner and Ray Tune, which `make bench` installs (bench/requirements-peers.txt).

    .venv/bin/python bench/run.py [--scale 1] [--workloads small,compute] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import automl  # noqa: E402
import calls  # noqa: E402
import citus_bench  # noqa: E402
import data  # noqa: E402
import peers  # noqa: E402
import report  # noqa: E402
import state  # noqa: E402
import workloads  # noqa: E402

SCHEMA = "madlib_dl_bench"
DATA_VERSION = 2  # bump when the way data are made changes: prepared tables are re-made
SEGMENT_COUNTS = (1, 2)
OTHER_WORKLOADS = ("state", "calls", "data", "automl", "search", "big", "citus")  # each a module of its own


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------------------------------
# Data and configurations, through the public SQL API

def _source_rows(x, y) -> io.StringIO:
    """COPY text: id, the example as a multidimensional array literal (its shape is the model's input), label."""
    text = io.StringIO()
    for i, (example, label) in enumerate(zip(x, y)):
        array = json.dumps(example.tolist(), separators=(",", ":")).replace("[", "{").replace("]", "}")
        text.write(f"{i}\t{array}\t{int(label)}\n")
    text.seek(0)
    return text


def prepare_data(cur, lib: str, workload: workloads.Workload, scale: float) -> None:
    """The source table and one packed table per segment count; kept when already made alike."""
    fingerprint = f"{workload.name}:{workload.size(scale)}:{workload.shape}:{DATA_VERSION}"
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}; CREATE TABLE IF NOT EXISTS {SCHEMA}.prepared "
                "(workload TEXT PRIMARY KEY, fingerprint TEXT)")
    cur.execute(f"SELECT fingerprint FROM {SCHEMA}.prepared WHERE workload = %s", [workload.name])
    row = cur.fetchone()
    if row and row[0] == fingerprint:
        say(f"{workload.name}: data already prepared ({fingerprint})")
        return
    started = time.monotonic()
    x, y = workloads.data(workload, scale)
    name = workload.name
    cur.execute(f"DROP TABLE IF EXISTS {SCHEMA}.{name}_source; "
                f"CREATE TABLE {SCHEMA}.{name}_source (id INTEGER, x REAL[], label INTEGER)")
    cur.copy_expert(f"COPY {SCHEMA}.{name}_source FROM STDIN", _source_rows(x, y))
    for segments in SEGMENT_COUNTS:
        packed = f"{SCHEMA}.{name}_packed_{segments}"
        cur.execute(f"DROP TABLE IF EXISTS {packed}, {packed}_summary")
        cur.execute(f"SELECT {lib}.training_preprocessor_dl(%s, %s, 'label', 'x', NULL, %s, NULL, %s)",
                    [f"{SCHEMA}.{name}_source", packed, workload.normalizing_const, str(segments)])
    cur.execute(f"INSERT INTO {SCHEMA}.prepared VALUES (%s, %s) ON CONFLICT (workload) DO UPDATE SET "
                "fingerprint = EXCLUDED.fingerprint", [workload.name, fingerprint])
    say(f"{workload.name}: prepared {len(y)} examples of shape {workload.shape} in {time.monotonic() - started:.1f} s")


def prepare_configs(cur, lib: str, workload: workloads.Workload) -> int:
    from madlib_dl.keras_runtime import tf_setup

    arch, mst = f"{SCHEMA}.{workload.name}_arch", f"{SCHEMA}.{workload.name}_mst"
    cur.execute(f"DROP TABLE IF EXISTS {arch}, {mst}, {mst}_summary")
    for name, model in workloads.architectures(workload, tf_setup.keras()):
        cur.execute(f"SELECT {lib}.load_keras_model(%s, %s::json, NULL, %s, NULL)", [arch, model.to_json(), name])
    cur.execute(f"SELECT array_agg(model_id ORDER BY model_id) FROM {arch}")
    cur.execute(f"SELECT {lib}.generate_model_configs(%s, %s, %s, %s, %s)",
                [arch, mst, cur.fetchone()[0], workload.compile_grid(), workload.fit_grid()])
    cur.execute(f"SELECT count(*) FROM {mst}")
    return cur.fetchone()[0]


def segment_cache_bytes(cur, packed: str, workload: workloads.Workload) -> dict[int, int]:
    """What a worker caches: its segment's examples as float32 features and float32 one-hot labels."""
    cur.execute(f"SELECT __dist_key__, sum(x_shape[1]), max(label_shape[2]) FROM {packed} "
                "GROUP BY 1")
    features = 1
    for n in workload.shape:
        features *= n
    return {segment: int(images) * (features + int(classes)) * 4 for segment, images, classes in cur.fetchall()}


# ---------------------------------------------------------------------------------------------------
# The runs

def _keras_config(cluster, workload: workloads.Workload, threads: int, mode: str, **extra) -> dict:
    return {"dsn": cluster.dsn(), "threads": threads, "mode": mode, "iterations": workload.iterations,
            "source_table": f"{SCHEMA}.{workload.name}_packed_1", "mst_table": f"{SCHEMA}.{workload.name}_mst",
            "arch_table": f"{SCHEMA}.{workload.name}_arch", **extra}


def _baseline_command(config_path) -> tuple[list[str], dict]:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    return [sys.executable, str(HERE / "baseline.py"), str(config_path)], env


def run_keras(cluster, workload: workloads.Workload, threads: int, mode: str = "keras") -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(_keras_config(cluster, workload, threads, mode), file)
        file.flush()
        command, env = _baseline_command(file.name)
        done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"bench: the plain Keras run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def run_keras_processes(cluster, workload: workloads.Workload, threads: int, processes: int = 2) -> dict:
    """Plain Keras (mode 'keras') as `processes` concurrent processes, process i training configurations
    i, i + processes, ... in mst_key order, each with `threads` TF threads. Each loads its data and sets
    up TensorFlow, says ready, and waits at a barrier; the parent then lets all go at once. As for the
    single run, only training counts: the wall is the longest of the processes' own training times."""
    children: list[tuple[subprocess.Popen, object]] = []

    def failed(index: int, child: subprocess.Popen, errors, what: str) -> SystemExit:
        if child.poll() is None:
            child.kill()
        child.wait()
        errors.seek(0)
        return SystemExit(f"bench: plain Keras process {index} of {processes} {what}:\n{errors.read()[-3000:]}")

    with tempfile.TemporaryDirectory(prefix="bench_keras_") as folder:
        try:
            for index in range(processes):
                path = Path(folder) / f"config_{index}.json"
                path.write_text(json.dumps(_keras_config(cluster, workload, threads, "keras",
                                                         part=[index, processes], barrier=True)))
                errors = open(Path(folder) / f"stderr_{index}", "w+")  # a file: a full pipe would block the child
                command, env = _baseline_command(path)
                children.append((subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                  stderr=errors, text=True, env=env), errors))
            for index, (child, errors) in enumerate(children):
                line = child.stdout.readline()
                if line.strip() != "ready":
                    raise failed(index, child, errors, f"did not get ready (said {line.strip()!r})")
            go = time.perf_counter()
            for child, _ in children:
                child.stdin.write("go\n")
                child.stdin.flush()
            outputs = []
            for index, (child, errors) in enumerate(children):
                out, _ = child.communicate()
                if child.returncode != 0:
                    raise failed(index, child, errors, f"failed (exit status {child.returncode})")
                outputs.append(json.loads(out))
            parent_seconds = time.perf_counter() - go
        finally:
            for child, errors in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
                errors.close()
    starts = [o["started_at"] for o in outputs]
    return {"seconds": max(o["seconds"] for o in outputs), "parent_seconds": parent_seconds,
            "start_skew_seconds": max(starts) - min(starts), "processes": outputs}


def run_ours(cluster, lib: str, workload: workloads.Workload, segments: int, caching: bool, threads: int,
             cache_bytes: dict[int, int], progress: str = "on") -> dict:
    name = workload.name
    output = f"{SCHEMA}.{name}_model"
    with cluster.connect() as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {output}, {output}_summary, {output}_info")
            cur.execute("SET madlib_dl.executor = 'workers'; SET madlib_dl.worker_threads = %s; "
                        "SET madlib_dl.progress = %s; SET client_min_messages = warning", [threads, progress])
            started = time.time()
            cur.execute(f"SELECT {lib}.madlib_keras_fit_multiple_model(%s, %s, %s, %s, FALSE, NULL, NULL, FALSE, "
                        "NULL, NULL, %s)", [f"{SCHEMA}.{name}_packed_{segments}", output, f"{SCHEMA}.{name}_mst",
                                            workload.iterations, caching])
            ended = time.time()
            cur.execute(f"SELECT kind, iteration, segment, worker_pid, extract(epoch FROM started)::float8, "
                        f"extract(epoch FROM ended)::float8, seconds, overhead_seconds, worker_peak_rss_bytes, "
                        f"worker_shared_rss_bytes, worker_rss_bytes FROM {lib}.last_fit_hops()")
            hops = [dict(zip(("kind", "iteration", "segment", "pid", "started", "ended", "seconds", "overhead",
                              "peak", "shared", "rss"), row)) for row in cur.fetchall()]
            cur.execute(f"SELECT min(training_loss_final) FROM {output}_info")
            best_loss = cur.fetchone()[0]
    conn.close()
    return summarize(hops, started, ended, segments, caching, cache_bytes, best_loss)


def summarize(hops: list[dict], started: float, ended: float, segments: int, caching: bool,
              cache_bytes: dict[int, int], best_loss) -> dict:
    train = [h for h in hops if h["kind"] == "train"]
    later = [h for h in train if h["iteration"] > 1]
    mean_ms = (lambda rows: 1000 * sum(h["overhead"] for h in rows) / len(rows) if rows else None)
    return {
        "workers_count": segments, "caching": caching, "wall_seconds": ended - started, "best_training_loss": best_loss,
        "train_hops": len(train), "evaluate_calls": len(hops) - len(train),
        "hop_overhead_ms": mean_ms(train), "hop_overhead_later_ms": mean_ms(later),
        "evaluate_overhead_ms": mean_ms([h for h in hops if h["kind"] != "train"]),
        "fit_seconds": sum(h["seconds"] for h in train),
        "setup_seconds": min(h["started"] for h in hops) - started if hops else 0.0,
        "teardown_seconds": ended - max(h["ended"] for h in hops) if hops else 0.0,
        "workers": [worker_memory(segment, [h for h in hops if h["segment"] == segment and h["kind"] == "train"],
                                  cache_bytes.get(segment, 0)) for segment in sorted(cache_bytes)],
    }


def worker_memory(segment: int, hops: list[dict], cache_bytes: int) -> dict:
    """A worker's own peak (without shared buffers) and how much its own memory grew over the second half
    of the run: from the end of iteration N // 2 (at least 1) to the end of iteration N. The first
    iterations warm up (allocator arenas, TensorFlow's caches: +15-20 MiB over iterations 1-4 of the
    compute workload, then flat up to iteration 14, measured); growth per hop shows in the later ones."""
    hops = sorted(hops, key=lambda h: h["ended"])
    measured = [h for h in hops if h["peak"] is not None]
    peak = max((h["peak"] - h["shared"] for h in measured), default=None)
    last_iteration = max((h["iteration"] for h in measured), default=0)
    start = max(1, last_iteration // 2)
    before = [h for h in measured if h["iteration"] == start]
    later = [h for h in measured if h["iteration"] > start]
    growth = (later[-1]["rss"] - later[-1]["shared"]) - (before[-1]["rss"] - before[-1]["shared"]) \
        if before and later else None
    return {"segment": segment, "peak_bytes": peak, "cache_bytes": cache_bytes, "growth_bytes": growth,
            "growth_from_iteration": start, "hops_measured": len(later)}


def bench_workload(cluster, lib: str, workload: workloads.Workload, scale: float, threads: int) -> dict:
    with cluster.connect() as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            prepare_data(cur, lib, workload, scale)
            configs = prepare_configs(cur, lib, workload)
            caches = {s: segment_cache_bytes(cur, f"{SCHEMA}.{workload.name}_packed_{s}", workload)
                      for s in SEGMENT_COUNTS}
    conn.close()
    description = (f"{configs} configurations x {workload.iterations} iterations, {workload.size(scale)} examples "
                   f"{workload.shape}, batch {workload.batch_size}, {threads} TF thread(s) per process")
    say(f"{workload.name}: {description}")
    result = {"description": description, "runs": {}}
    for mode in ("keras", "loop"):
        result[mode] = run_keras(cluster, workload, threads, mode)
        say(f"  {mode}: {result[mode]['seconds']:.2f} s (CPU {result[mode]['cpu_seconds']:.2f} s)")
    two = result["keras_2proc"] = run_keras_processes(cluster, workload, threads, 2)
    each = " and ".join(f"{p['seconds']:.2f} s (CPU {p['cpu_seconds']:.2f} s)" for p in two["processes"])
    say(f"  keras, 2 processes: {two['seconds']:.2f} s: {each}, "
        f"started {1000 * two['start_skew_seconds']:.0f} ms apart")
    for segments in SEGMENT_COUNTS:
        for caching in (True, False):
            label = report.variant(segments, caching)
            run = run_ours(cluster, lib, workload, segments, caching, threads, caches[segments])
            result["runs"][label] = run
            say(f"  {label}: {run['wall_seconds']:.2f} s")
    if workload.name == "small":
        result["progress"] = progress_cost(cluster, lib, workload, threads, caches[2])
    return result


PROGRESS_PAIRS = 5


def progress_cost(cluster, lib: str, workload: workloads.Workload, threads: int, cache_bytes: dict) -> dict:
    """Wall times of S=2 caching on with madlib_dl.progress on and off, alternating (the machine's drift
    falls on both)."""
    walls = {"on": [], "off": []}
    for _ in range(PROGRESS_PAIRS):
        for setting in ("off", "on"):
            walls[setting].append(run_ours(cluster, lib, workload, 2, True, threads, cache_bytes, setting)["wall_seconds"])
    say(f"  S=2 caching on, progress on: {', '.join(f'{x:.2f}' for x in walls['on'])} s; off: "
        f"{', '.join(f'{x:.2f}' for x in walls['off'])} s")
    return walls


def _bench_citus(lib: str, say) -> dict | None:
    """The citus workload on the embedded Citus cluster, started here (None, said, where Citus is missing)."""
    from madlib_dl.tools import citus
    from madlib_dl.tools.citus_cluster import CitusEmbedded

    missing = citus.missing()
    if missing is not None:
        say(f"citus: skipped: {missing}")
        return None
    embedded = CitusEmbedded.default()
    embedded.start()
    return citus_bench.bench(embedded, lib, say)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the examples of every workload")
    parser.add_argument("--workloads", default=",".join([*workloads.WORKLOADS, *OTHER_WORKLOADS]),
                        help=f"comma-separated: {', '.join([*workloads.WORKLOADS, *OTHER_WORKLOADS])}")
    parser.add_argument("--threads", type=int, default=0,
                        help="TF threads of every process (default: CPUs / 2, at least 1: one per worker at S=2)")
    parser.add_argument("--json", default=str(HERE / "results" / "latest.json"), help="where the results go")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in workloads.WORKLOADS and n not in OTHER_WORKLOADS]
    if unknown or not names or args.scale <= 0:
        parser.error(f"--workloads: expected names from {[*workloads.WORKLOADS, *OTHER_WORKLOADS]}, got {args.workloads!r}"
                     if unknown or not names else f"--scale: expected a positive number, got {args.scale}")
    from madlib_dl import settings
    from madlib_dl.tools.cluster import EXTENSION_QUERY, Cluster

    threads = args.threads or max(1, settings.cpu_count() // 2)
    cluster = Cluster.from_environment()
    cluster.start()
    with cluster.connect() as conn, conn.cursor() as cur:
        cur.execute(EXTENSION_QUERY)
        lib = cur.fetchone()[1]
    conn.close()
    started = time.monotonic()
    results = {name: bench_workload(cluster, lib, workloads.WORKLOADS[name], args.scale, threads)
               for name in names if name in workloads.WORKLOADS}
    state_result = state.bench(cluster, lib, threads, say) if "state" in names else None
    calls_result = calls.bench(cluster, lib, say) if "calls" in names else None
    data_result = data.bench(cluster, lib, args.scale, threads, say) if "data" in names else None
    automl_result = automl.bench(cluster, lib, say) if "automl" in names else None
    search_result = peers.bench_search(cluster, lib, say) if "search" in names else None
    big_result = peers.bench_big(cluster, lib, say) if "big" in names else None
    citus_result = _bench_citus(lib, say) if "citus" in names else None
    found = report.targets(results) + (state.targets(state_result) if state_result else []) + \
        (calls.targets(calls_result) if calls_result else []) + (data.targets(data_result) if data_result else []) + \
        (automl.targets(automl_result) if automl_result else []) + \
        (peers.search_targets(search_result) if search_result else []) + (peers.big_targets(big_result) if big_result else []) + \
        (citus_bench.targets(citus_result) if citus_result else [])
    say("")
    for name, workload in results.items():
        say(report.table(name, workload) + "\n")
    if state_result:
        say(state.table(state_result) + "\n")
        results["state"] = state_result
    if calls_result:
        results["calls"] = calls_result
    if data_result:
        say(data.table(data_result) + "\n")
        results["data"] = data_result
    if automl_result:
        say(automl.table(automl_result) + "\n")
        results["automl"] = automl_result
    if search_result:
        say(peers.search_table(search_result) + "\n")
        results["search"] = search_result
    if big_result:
        say(peers.big_table(big_result) + "\n")
        results["big"] = big_result
    if citus_result:
        say(citus_bench.table(citus_result) + "\n")
        results["citus"] = citus_result
    say(report.verdicts(found))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"scale": args.scale, "threads": threads, "cpus": settings.cpu_count(),
                                "seconds": time.monotonic() - started, "workloads": results,
                                "targets": [t.as_dict() for t in found]}, indent=1))
    say(f"\nresults: {path} ({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
