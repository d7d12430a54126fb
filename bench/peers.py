"""The search and big workloads of `make bench` (issue 26): madlib_dl's model selection side by side with
what a user would otherwise run, each tool going from the raw table in PostgreSQL to trained models.

search: a CIFAR-shaped table (REAL[32][32][3], 10 classes: 10,000 training and 2,000 validation rows, made
here from a seed as workloads.py's compute data are, with fainter class patterns so that 3 epochs do not
saturate the accuracy), 4 configurations: two CNNs (0.37M and 0.07M parameters) x Adam learning rates
1e-3 and 3e-4, batch 64, 3 epochs, the validation accuracy after every epoch. Side by side:

(a) madlib_dl: training_preprocessor_dl + validation_preprocessor_dl (2 segments), then
    madlib_keras_fit_multiple_model (caching, the validation table, metrics_compute_frequency 1, 3
    iterations of 1 epoch), in a fresh session (its workers start within the timing). Twice: with
    madlib_dl.training_metrics = 'running_only' (no pass over the training table beyond training, as the
    peers: the row compared with them), and with the default ('running': one more evaluation of each
    final model on the training table);
(b) plain Keras in one process training the 4 configurations one after another, with 1, then 2 TF threads;
(c) KerasTuner: GridSearch over the same 4 configurations (executions_per_trial 1);
(d) Ray Tune: the 4 configurations as a grid, 2 concurrent trials of 1 CPU each (ray.init is timed).

big: a 29.4M-parameter dense model (Flatten-Dense(4096)-Dense(4096)-Dense(10), Adam) on 4,000 of those
rows, 2 learning rates, 2 iterations of 1 epoch, batch 64: madlib_dl (2 segments, caching, the run's
own choice of workers and threads) against one Keras process with 2 threads. It also prints the call's
time outside its hops (workers starting, the initial weights, writing 2 x 350 MB of state) against a
target of 2 s + state bytes / (500 MB/s).

Every peer runs in a subprocess of its own (peer_tools.py): its timed region starts before it imports
TensorFlow and includes reading the table out of PostgreSQL (psycopg2, array_send, /255 as the
preprocessor does). madlib_dl's includes both preprocessors. CPU seconds: a peer's process tree (Ray's
raylet, GCS and workers included); madlib_dl's driver backend and its background workers (found by their
process title, 'madlib_dl worker for PID <driver>', and read from /proc while and after they run).
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import report

HERE = Path(__file__).resolve().parent
SCHEMA = "madlib_dl_bench"
DATA_VERSION = 1  # bump when the way the tables are made changes: they are re-made
SHAPE, CLASSES, SEGMENTS, BATCH, SEED = (32, 32, 3), 10, 2, 64, 0
# The class patterns' spread (workloads.py's compute data: 48). At 8 the CNNs reach 0.7-0.9 validation
# accuracy in 3 epochs (measured): a tool that trains differently shows, saturated accuracies would hide it.
TEMPLATE_STD = 8.0
TRAIN_ROWS, VALIDATION_ROWS, BIG_ROWS = 10_000, 2_000, 4_000
SEARCH_FILTERS = {"cnn64": 64, "cnn14": 14}  # Conv(f)-Pool-Conv(2f)-Pool-Dense(64): 371,338 and 69,174 parameters
SEARCH_RATES, SEARCH_EPOCHS = (1e-3, 3e-4), 3
BIG_UNITS, BIG_RATES, BIG_EPOCHS = 4096, (1e-4, 3e-5), 2

# Targets of issue 26
SEARCH_VS_KERAS = 1.1      # madlib_dl wall <= 1.1 x (one Keras process, 1 thread) / 2
SEARCH_VS_TUNERS = 0.7     # madlib_dl wall <= 0.7 x KerasTuner, and <= 0.7 x Ray Tune
SEARCH_CPU = 1.05          # madlib_dl CPU <= 1.05 x plain Keras's (1 thread) for the same configurations
BIG_VS_KERAS = 1.1         # madlib_dl wall <= 1.1 x one Keras process with 2 threads
OUTSIDE_FIXED_S, OUTSIDE_BYTES_PER_S = 2.0, 500e6  # outside the hops: 2 s + state bytes / (500 MB/s)
# Accuracies of one configuration across the tools may differ by seeds (each tool shuffles its own way) and
# thread order; more than this says a tool trains something else (a wrong learning rate, a lost epoch).
ACCURACY_SPREAD = 0.08

SEARCH_TOOLS = ("keras 1 thread", "keras 2 threads", "kerastuner", "ray tune")
MADLIB_RUNS = {"madlib_dl": "running_only", "madlib_dl, default metrics": None}  # label -> training_metrics


# ---------------------------------------------------------------------------------------------------
# What is trained: the same architectures for every tool (built from here in madlib_dl's JSON and in
# the peers' processes)

def cnn(keras, filters: int, name: str):
    layers = keras.layers
    return keras.Sequential([
        keras.Input(SHAPE),
        layers.Conv2D(filters, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(2 * filters, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(CLASSES, activation="softmax")], name=name)


def dense(keras, name: str = "dense29m"):
    layers = keras.layers
    return keras.Sequential([keras.Input(SHAPE), layers.Flatten(), layers.Dense(BIG_UNITS, activation="relu"),
                             layers.Dense(BIG_UNITS, activation="relu"), layers.Dense(CLASSES, activation="softmax")],
                            name=name)


def build(keras, arch: str):
    """An uncompiled model by its name: the search's CNNs or the big dense model."""
    return dense(keras, arch) if arch == "dense29m" else cnn(keras, SEARCH_FILTERS[arch], arch)


def configurations(workload: str) -> list[tuple[str, float]]:
    """(architecture, Adam learning rate) in the order every tool trains them."""
    if workload == "big":
        return [("dense29m", lr) for lr in BIG_RATES]
    return [(arch, lr) for arch in SEARCH_FILTERS for lr in SEARCH_RATES]


def config_name(arch: str, lr: float) -> str:
    return f"{arch} lr={lr:g}"


def compile_params(lr: float) -> str:
    return f"loss='categorical_crossentropy', optimizer='Adam(learning_rate={lr!r})', metrics=['accuracy']"


# ---------------------------------------------------------------------------------------------------
# The tables (made once, kept while their fingerprint matches)

def search_data(rows: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Pixels 0..255 and labels 0..9: each class a smooth 8x8 pattern upsampled to 32x32, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, rows)
    templates = rng.normal(128, TEMPLATE_STD, (CLASSES, 8, 8, 3))
    x = np.repeat(np.repeat(templates[labels], 4, axis=1), 4, axis=2) + rng.normal(0, 64, (rows, *SHAPE))
    return np.clip(np.rint(x), 0, 255).astype(np.float32), labels.astype(np.int32)


def copy_binary(x: np.ndarray, y: np.ndarray, first_id: int = 0) -> io.BytesIO:
    """COPY BINARY of (id INTEGER, x REAL[32][32][3], label INTEGER) rows, made with numpy."""
    size = int(np.prod(SHAPE))
    head = struct.pack(">iii", len(SHAPE), 0, 700) + b"".join(struct.pack(">ii", d, 1) for d in SHAPE)
    row = np.dtype([("fields", ">i2"), ("id_len", ">i4"), ("id", ">i4"), ("x_len", ">i4"),
                    ("x_head", f"V{len(head)}"), ("x", [("len", ">i4"), ("value", ">f4")], (size,)),
                    ("label_len", ">i4"), ("label", ">i4")])
    rows = np.zeros(len(y), dtype=row)
    rows["fields"], rows["id_len"], rows["id"] = 3, 4, np.arange(first_id, first_id + len(y))
    rows["x_len"], rows["x_head"] = len(head) + 8 * size, np.frombuffer(head, dtype=f"V{len(head)}")[0]
    rows["x"]["len"], rows["x"]["value"] = 4, x.reshape(len(y), size)
    rows["label_len"], rows["label"] = 4, y
    return io.BytesIO(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0) + rows.tobytes() + struct.pack(">h", -1))


def table(name: str) -> str:
    return f"{SCHEMA}.peers_{name}"


def prepare_tables(cur, say) -> None:
    """search_train, search_val (the first TRAIN_ROWS and the next VALIDATION_ROWS rows of one draw: the
    same class patterns) and big_source (the first BIG_ROWS training rows)."""
    fingerprint = f"peers:{TRAIN_ROWS}:{VALIDATION_ROWS}:{BIG_ROWS}:{TEMPLATE_STD}:{SEED}:{DATA_VERSION}"
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}; CREATE TABLE IF NOT EXISTS {SCHEMA}.prepared "
                "(workload TEXT PRIMARY KEY, fingerprint TEXT)")
    cur.execute(f"SELECT fingerprint FROM {SCHEMA}.prepared WHERE workload = 'peers'")
    row = cur.fetchone()
    if row and row[0] == fingerprint:
        return
    started = time.monotonic()
    x, y = search_data(TRAIN_ROWS + VALIDATION_ROWS)
    parts = {"search_train": (0, TRAIN_ROWS), "search_val": (TRAIN_ROWS, TRAIN_ROWS + VALIDATION_ROWS)}
    for name, (first, end) in parts.items():
        cur.execute(f"DROP TABLE IF EXISTS {table(name)}; "
                    f"CREATE TABLE {table(name)} (id INTEGER, x REAL[], label INTEGER)")
        cur.copy_expert(f"COPY {table(name)} FROM STDIN WITH (FORMAT binary)",
                        copy_binary(x[first:end], y[first:end], first))
    cur.execute(f"DROP TABLE IF EXISTS {table('big_source')}; CREATE TABLE {table('big_source')} AS "
                f"SELECT * FROM {table('search_train')} WHERE id < %s", [BIG_ROWS])
    for name in ("search_train", "search_val", "big_source"):
        cur.execute(f"VACUUM ANALYZE {table(name)}")
    cur.execute(f"INSERT INTO {SCHEMA}.prepared VALUES ('peers', %s) ON CONFLICT (workload) DO UPDATE SET "
                "fingerprint = EXCLUDED.fingerprint", [fingerprint])
    say(f"peers: made {TRAIN_ROWS} + {VALIDATION_ROWS} rows of REAL{list(SHAPE)} ({time.monotonic() - started:.0f} s)")


def prepare_configs(cur, lib: str, workload: str) -> None:
    """The architecture and model selection tables of a workload: its configurations, batch 64, 1 epoch
    per iteration."""
    from madlib_dl.keras_runtime import tf_setup

    keras = tf_setup.keras()
    arch, mst = table(f"{workload}_arch"), table(f"{workload}_mst")
    cur.execute(f"DROP TABLE IF EXISTS {arch}, {mst}, {mst}_summary")
    names = sorted({a for a, _ in configurations(workload)}, key=[a for a, _ in configurations(workload)].index)
    for name in names:
        cur.execute(f"SELECT {lib}.load_keras_model(%s, %s::json, NULL, %s, NULL)",
                    [arch, build(keras, name).to_json(), name])
    rates = sorted({lr for _, lr in configurations(workload)}, reverse=True)
    cur.execute(f"SELECT {lib}.load_model_selection_table(%s, %s, (SELECT array_agg(model_id ORDER BY model_id) "
                f"FROM {arch}), %s, %s)",
                [arch, mst, [compile_params(lr) for lr in rates], [f"batch_size={BATCH}, epochs=1"]])


# ---------------------------------------------------------------------------------------------------
# CPU seconds from /proc

TICKS = os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int) -> tuple[int, float, float] | None:
    """(start time in ticks, own CPU seconds, CPU seconds of its reaped children) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after the name: state ppid ... utime(11) stime(12) cutime(13) cstime(14) ... starttime(19)
    return int(fields[19]), (int(fields[11]) + int(fields[12])) / TICKS, (int(fields[13]) + int(fields[14])) / TICKS


def pids_titled(text: str) -> list[int]:
    """Processes whose command line (PostgreSQL's process title) contains ``text`` not followed by a
    digit (the workers of PID 123 are not those of PID 1234)."""
    found, pattern = [], re.compile(re.escape(text.encode()) + rb"(?!\d)")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as file:
                    if pattern.search(file.read()):
                        found.append(int(entry))
            except OSError:
                continue
    return found


class ServerCpu:
    """CPU seconds of one training call in the server: the driver backend's own (its delta over the call)
    and that of every background worker it launched (their whole life: a fresh session's workers start
    within the call). Workers are found by title and sampled every POLL seconds, so a worker that ends
    during the call (none should: worker_idle_timeout keeps them) still counts up to its last sample."""
    POLL = 0.25

    def __init__(self, driver: int):
        self.driver, self.title = driver, f"madlib_dl worker for PID {driver}"
        self.workers: dict[tuple[int, int], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        start = proc_stat(driver)
        self._driver_start = start[1] if start else None

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        for pid in pids_titled(self.title):
            stat = proc_stat(pid)
            if stat:
                self.workers[(pid, stat[0])] = max(self.workers.get((pid, stat[0]), 0.0), stat[1])

    def _poll(self) -> None:
        while not self._stop.wait(self.POLL):
            self._sample()

    def result(self) -> dict:
        end = proc_stat(self.driver)
        driver = end[1] - self._driver_start if end and self._driver_start is not None else None
        return {"driver_cpu_seconds": driver, "workers_cpu_seconds": sum(self.workers.values()),
                "worker_pids": sorted(pid for pid, _ in self.workers),
                "cpu_seconds": None if driver is None else driver + sum(self.workers.values())}


# ---------------------------------------------------------------------------------------------------
# madlib_dl

def _drop(cur, *names: str) -> None:
    for name in names:
        cur.execute(f"DROP TABLE IF EXISTS {table(name)}, {table(name)}_summary, {table(name)}_info, "
                    f"{table(name)}_optimizer_state")


def run_madlib(cluster, lib: str, workload: str, training_metrics: str | None) -> dict:
    """One timed madlib_dl search from the source tables, in a fresh session; ``training_metrics`` None
    leaves the setting at its default."""
    search = workload == "search"
    packed, val, out = f"{workload}_packed", f"{workload}_val_packed", f"{workload}_model"
    source = "search_train" if search else "big_source"
    iterations = SEARCH_EPOCHS if search else BIG_EPOCHS
    with cluster.connect() as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            _drop(cur, packed, val, out)
            cur.execute("SET client_min_messages = warning; SELECT pg_backend_pid()")
            driver = cur.fetchone()[0]
            if training_metrics:
                cur.execute("SELECT set_config('madlib_dl.training_metrics', %s, false)", [training_metrics])
            load = os.getloadavg()[0]  # other work on the machine moves every wall time; recorded beside them
            with ServerCpu(driver) as cpu:
                started = time.time()
                cur.execute(f"SELECT {lib}.training_preprocessor_dl(%s, %s, 'label', 'x', NULL, 255.0, NULL, %s)",
                            [table(source), table(packed), str(SEGMENTS)])
                if search:
                    cur.execute(f"SELECT {lib}.validation_preprocessor_dl(%s, %s, 'label', 'x', %s)",
                                [table("search_val"), table(val), table(packed)])
                called = time.time()
                cur.execute(f"SELECT {lib}.madlib_keras_fit_multiple_model(%s, %s, %s, %s, FALSE, %s, %s, FALSE, "
                            "NULL, NULL, TRUE)", [table(packed), table(out), table(f"{workload}_mst"), iterations,
                                                  table(val) if search else None, 1 if search else None])
                ended = time.time()
            cur.execute(f"SELECT kind, extract(epoch FROM started)::float8, extract(epoch FROM ended)::float8, "
                        f"seconds, overhead_seconds, worker_pid FROM {lib}.last_fit_hops()")
            hops = [dict(zip(("kind", "started", "ended", "seconds", "overhead", "pid"), r)) for r in cur.fetchall()]
            cur.execute("SELECT current_setting('madlib_dl.training_metrics', true)")
            setting = cur.fetchone()[0]
            result = {"seconds": ended - started, "preprocess_seconds": called - started,
                      "call_seconds": ended - called, "training_metrics": setting, "load_average": load,
                      **cpu.result(),
                      **hop_span(hops, called, ended), "accuracy": _accuracies(cur, workload, out),
                      "state_bytes": _state_bytes(cur, out)}
            unseen = {h["pid"] for h in hops} - set(result["worker_pids"])
            if unseen:  # a worker that trained but was never found by its title: its CPU is missing
                result["cpu_seconds"], result["missing_worker_pids"] = None, sorted(unseen)
    conn.close()
    return result


def hop_span(hops: list[dict], called: float, ended: float) -> dict:
    """The call's time outside its hops: the call's wall minus the span from the first hop's start to the
    last one's end (workers starting, initial weights, writing the outputs), and what the hops did."""
    if not hops:
        return {"hops": 0, "outside_hops_seconds": None}
    first, last = min(h["started"] for h in hops), max(h["ended"] for h in hops)
    return {"hops": len(hops), "train_hops": sum(h["kind"] == "train" for h in hops),
            "hop_span_seconds": last - first, "before_hops_seconds": first - called, "after_hops_seconds": ended - last,
            "outside_hops_seconds": (ended - called) - (last - first),
            "hops_keras_seconds": sum(h["seconds"] for h in hops),
            "hops_overhead_seconds": sum(h["overhead"] for h in hops)}


def _accuracies(cur, workload: str, out: str) -> dict[str, float | None]:
    """Final validation accuracy per configuration (search), None for each without a validation table."""
    cur.execute(f"SELECT a.name, i.compile_params, i.validation_metrics_final FROM {table(out)}_info i "
                f"JOIN {table(workload + '_arch')} a USING (model_id)")
    return {config_name(name, learning_rate(compile)): accuracy for name, compile, accuracy in cur.fetchall()}


def learning_rate(compile_text: str) -> float:
    """The Adam learning rate in a configuration's compile parameters (as compile_params wrote it)."""
    found = re.search(r"learning_rate\s*=\s*([0-9.eE+-]+)", compile_text)
    if not found:
        raise ValueError(f"no learning_rate in {compile_text!r}")
    return float(found.group(1))


def _state_bytes(cur, out: str) -> int:
    """Bytes of model state the call wrote: every model's weights and optimizer state (in its own table
    when too large for one value)."""
    cur.execute(f"SELECT sum(coalesce(octet_length(model_weights), 0) + coalesce(octet_length(optimizer_state), 0)) "
                f"FROM {table(out)}")
    written = int(cur.fetchone()[0] or 0)
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{table(out)}_optimizer_state"])
    if cur.fetchone()[0]:
        cur.execute(f"SELECT sum(length(data)) FROM {table(out)}_optimizer_state")
        written += int(cur.fetchone()[0] or 0)
    return written


# ---------------------------------------------------------------------------------------------------
# The peers, each a subprocess (peer_tools.py)

def peers_path() -> Path:
    """Where `make bench` installs KerasTuner and Ray Tune (bench/requirements-peers.txt): beside the venv."""
    return Path(os.environ.get("BENCH_PEERS", Path(sys.prefix) / "bench-peers"))


def check_installed() -> None:
    path = peers_path()
    missing = [name for name in ("keras_tuner", "ray") if not (path / name).is_dir()]
    if missing:
        raise SystemExit(f"bench: the search and big workloads need KerasTuner and Ray Tune in {path} "
                         f"({', '.join(missing)} missing): `make bench` installs them "
                         "(bench/install_peers.sh, bench/requirements-peers.txt)")


def run_peer(cluster, tool: str, workload: str, threads: int) -> dict:
    """One tool's run in a fresh process; its JSON, with the process's whole wall beside it."""
    search = workload == "search"
    config = {"dsn": cluster.dsn(), "tool": tool, "threads": threads, "seed": SEED, "batch": BATCH,
              "epochs": SEARCH_EPOCHS if search else BIG_EPOCHS, "configs": configurations(workload),
              "train": table("search_train" if search else "big_source"),
              "validation": table("search_val") if search else None, "concurrent": 2}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(peers_path()), str(HERE), str(HERE.parent)])}
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(config, file)
        file.flush()
        load = os.getloadavg()[0]
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(HERE / "peer_tools.py"), file.name], capture_output=True,
                              text=True, env=env)
        process_seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench: the {tool} run of the {workload} workload failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout), "process_seconds": process_seconds, "load_average": load}


# ---------------------------------------------------------------------------------------------------
# The workloads

PEER_RUNS = {  # label -> (tool, TF threads per process)
    "keras 1 thread": ("keras", 1), "keras 2 threads": ("keras", 2),
    "kerastuner": ("kerastuner", 2), "ray tune": ("ray", 1),
}


def _prepare(cluster, lib: str, workload: str, say) -> None:
    """The peers are installed, the tables made (once) and the workload's configurations loaded."""
    check_installed()
    with cluster.connect() as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            prepare_tables(cur, say)
            prepare_configs(cur, lib, workload)
    conn.close()


def bench_search(cluster, lib: str, say) -> dict:
    _prepare(cluster, lib, "search", say)
    say(f"search: {len(configurations('search'))} configurations (CNNs of 0.37M and 0.07M parameters x Adam "
        f"{', '.join(f'{lr:g}' for lr in SEARCH_RATES)}), {TRAIN_ROWS} training and {VALIDATION_ROWS} validation rows "
        f"of REAL{list(SHAPE)}, batch {BATCH}, {SEARCH_EPOCHS} epochs, validation after each")
    runs = {}
    for label, metrics in MADLIB_RUNS.items():
        runs[label] = run_madlib(cluster, lib, "search", metrics)
        say(f"  {label}: {_summary(runs[label])}")
    for label, (tool, threads) in PEER_RUNS.items():
        runs[label] = run_peer(cluster, tool, "search", threads)
        say(f"  {label}: {_summary(runs[label])}")
    return {"runs": runs, "configurations": [config_name(*c) for c in configurations("search")]}


def bench_big(cluster, lib: str, say) -> dict:
    _prepare(cluster, lib, "big", say)
    say(f"big: a 29.4M-parameter dense model x Adam {', '.join(f'{lr:g}' for lr in BIG_RATES)}, {BIG_ROWS} rows, "
        f"{BIG_EPOCHS} iterations of 1 epoch, batch {BATCH}")
    runs = {"madlib_dl": run_madlib(cluster, lib, "big", None)}
    say(f"  madlib_dl: {_summary(runs['madlib_dl'])}, outside hops {runs['madlib_dl']['outside_hops_seconds']:.1f} s, "
        f"state written {runs['madlib_dl']['state_bytes'] / report.MIB:.0f} MiB")
    runs["keras 2 threads"] = run_peer(cluster, "keras", "big", 2)
    say(f"  keras 2 threads: {_summary(runs['keras 2 threads'])}")
    return {"runs": runs}


def _summary(run: dict) -> str:
    cpu = run.get("cpu_seconds")
    return f"{run['seconds']:.1f} s, CPU {'-' if cpu is None else format(cpu, '.1f')} s"


# ---------------------------------------------------------------------------------------------------
# Verdicts and the printed tables

def accuracy_spread(runs: dict) -> dict[str, dict]:
    """Per configuration: each tool's final validation accuracy, and the spread (max - min) over them."""
    out = {}
    names = sorted({name for run in runs.values() for name in run.get("accuracy", {})})
    for name in names:
        values = {label: run["accuracy"].get(name) for label, run in runs.items() if run.get("accuracy")}
        known = [v for v in values.values() if v is not None]
        out[name] = {"by_tool": values, "spread": max(known) - min(known) if known else None}
    return out


def _ratio(a, b):
    return a / b if a is not None and b else None


def search_targets(result: dict) -> list[report.Target]:
    runs = result["runs"]
    ours = runs["madlib_dl"]
    keras1, keras2 = runs["keras 1 thread"], runs["keras 2 threads"]
    found = [report.Target("search: madlib_dl wall / (Keras 1 process, 1 thread / 2)",
                           _ratio(ours["seconds"], keras1["seconds"] / 2), SEARCH_VS_KERAS, "max",
                           f"{ours['seconds']:.1f} s vs {keras1['seconds']:.1f} s / 2")]
    for label in ("kerastuner", "ray tune"):
        found.append(report.Target(f"search: madlib_dl wall / {label}",
                                   _ratio(ours["seconds"], runs[label]["seconds"]), SEARCH_VS_TUNERS, "max",
                                   f"{ours['seconds']:.1f} s vs {runs[label]['seconds']:.1f} s"))
    found.append(report.Target("search: madlib_dl CPU / Keras 1 thread CPU", _ratio(ours["cpu_seconds"],
                               keras1["cpu_seconds"]), SEARCH_CPU, "max", f"{_fmt(ours['cpu_seconds'])} s vs "
                               f"{_fmt(keras1['cpu_seconds'])} s"))
    found.append(report.Target("search: madlib_dl wall / Keras 1 process, 2 threads",
                               _ratio(ours["seconds"], keras2["seconds"]), None, "info",
                               f"{ours['seconds']:.1f} s vs {keras2['seconds']:.1f} s"))
    default = runs.get("madlib_dl, default metrics")
    if default:
        found.append(report.Target("search: madlib_dl with the default training_metrics / with 'running_only' (wall)",
                                   _ratio(default["seconds"], ours["seconds"]), None, "info",
                                   f"{default['seconds']:.1f} s vs {ours['seconds']:.1f} s"))
    spreads = [s["spread"] for s in accuracy_spread(runs).values() if s["spread"] is not None]
    found.append(report.Target("search: final validation accuracy, largest spread across the tools of one "
                               "configuration", max(spreads) if spreads else None, ACCURACY_SPREAD, "max"))
    return found


def big_targets(result: dict) -> list[report.Target]:
    ours, keras = result["runs"]["madlib_dl"], result["runs"]["keras 2 threads"]
    allowed = OUTSIDE_FIXED_S + ours["state_bytes"] / OUTSIDE_BYTES_PER_S
    return [
        report.Target("big: madlib_dl wall / Keras 1 process, 2 threads", _ratio(ours["seconds"], keras["seconds"]),
                      BIG_VS_KERAS, "max", f"{ours['seconds']:.1f} s vs {keras['seconds']:.1f} s"),
        report.Target("big: the call's time outside its hops, s", ours["outside_hops_seconds"], allowed, "max",
                      f"{OUTSIDE_FIXED_S:g} s + {ours['state_bytes'] / 1e6:.0f} MB of state / 500 MB/s; before "
                      f"the first hop {_fmt(ours.get('before_hops_seconds'))} s, after the last "
                      f"{_fmt(ours.get('after_hops_seconds'))} s"),
        report.Target("big: madlib_dl CPU / Keras 2 threads CPU", _ratio(ours["cpu_seconds"], keras["cpu_seconds"]),
                      None, "info", f"{_fmt(ours['cpu_seconds'])} s vs {_fmt(keras['cpu_seconds'])} s"),
    ]


def _fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _phases(run: dict) -> str:
    if "phases" in run:
        return ", ".join(f"{name} {seconds:.1f}" for name, seconds in run["phases"].items())
    return f"preprocess {run['preprocess_seconds']:.1f}, call {run['call_seconds']:.1f} (outside hops " \
           f"{_fmt(run.get('outside_hops_seconds'))})"


def search_table(result: dict) -> str:
    runs = result["runs"]
    keras1 = runs["keras 1 thread"]
    spread = accuracy_spread(runs)
    names = result["configurations"]
    lines = ["search: tool | wall s | CPU s | wall / (keras 1 thread / 2) | validation accuracy: "
             + " | ".join(names) + " | where the time went (s)"]
    for label, run in runs.items():
        accuracies = " | ".join(f"{_fmt(run['accuracy'].get(n), '.4f'):>{len(n)}}" for n in names)
        lines.append(f"  {label:<26} | {run['seconds']:7.1f} | {_fmt(run.get('cpu_seconds')):>6} | "
                     f"{run['seconds'] / (keras1['seconds'] / 2):5.2f} | {accuracies} | {_phases(run)}")
    lines.append(f"  {'spread (max - min)':<26} | {'':>7} | {'':>6} | {'':>5} | " +
                 " | ".join(f"{_fmt(spread[n]['spread'], '.4f'):>{len(n)}}" for n in names))
    return "\n".join(lines)


def big_table(result: dict) -> str:
    ours, keras = result["runs"]["madlib_dl"], result["runs"]["keras 2 threads"]
    return "\n".join([
        "big: tool | wall s | CPU s | where the time went (s)",
        f"  {'madlib_dl':<16} | {ours['seconds']:7.1f} | {_fmt(ours.get('cpu_seconds')):>6} | {_phases(ours)}; hops "
        f"{ours['train_hops']} train / {ours['hops']} in all, span {ours['hop_span_seconds']:.1f}, in Keras "
        f"{ours['hops_keras_seconds']:.1f}; state written {ours['state_bytes'] / report.MIB:.0f} MiB",
        f"  {'keras 2 threads':<16} | {keras['seconds']:7.1f} | {_fmt(keras.get('cpu_seconds')):>6} | "
        f"{_phases(keras)}"])
