"""What writing a trained model's state into its output table costs, step by step (issue 26).

Through the real code path, on the embedded cluster: a PL/Python function of the bench's schema boots
madlib_dl in a fresh session, makes each model's state as the driver holds it after training (weights
and optimizer state in memory files, filled through the file 1 MiB at a time, so that none of their
pages is mapped in the backend, as in a driver that only passes states on, and no large temporary
leaves glibc's allocator otherwise than a driver's), and writes fit_multiple's model table with
``model_table.ModelTable`` (madlib_keras_fit writes its one model through the same
``stored_state.write_state``). Each statement is timed, and the COMMIT (the WAL flush) apart, with the
backend's CPU time (steadier than the wall on a shared machine). The backend's own peak (VmHWM less its
shared pages) is read from /proc afterwards. ``--baseline REF`` also times stored_state.py as of a git
commit (with the checkout's other modules), alternating with the checkout's, so both see the same load
(in the calls of ``--call`` too).

Sizes: a 9.8M- and a 29.4M-parameter model with Adam (118 MB and 353 MB of state: weights a third,
the two moments the rest), two models a call (two configurations, as in the issue).

The floor, for the same number of bytes:

* memcpy: numpy copying the bytes into memory already touched, and into fresh memory (page faults);
* server INSERT: ``INSERT ... SELECT pg_read_binary_file(...)`` of a file of that size in the page
  cache, into a ``STORAGE EXTERNAL`` bytea column (read into memory + TOAST + WAL, no Python), as one
  value and in statements of a side-table part each (64 MiB);
* server copy: ``INSERT ... SELECT v FROM`` a table holding such a value (detoast + TOAST + WAL);
* client COPY: ``COPY ... FROM STDIN (FORMAT binary)`` of one such value from this process;
* the same server INSERT into an UNLOGGED table (what the WAL costs; output tables must be logged).

With ``--call``, also madlib_keras_fit_multiple_model itself with two configurations of the 29.4M model
(Flatten-4096-4096-10 on 32x32x3, Adam, 64 examples, one iteration): the call's wall, its hop span, and
the time before the first hop and after the last.

    .venv/bin/python bench/state_write.py [--sizes 118,353] [--repeats 3] [--baseline REF ...] [--no-floor]
                                          [--call N] [--json PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from state import driver_peak as own_peak  # noqa: E402  (a backend's own peak: process_memory's rule)

SCHEMA = "madlib_dl_bench"
MB = 1e6
MODELS = 2
FILL_CHUNK = 1 << 20  # small: a large temporary would raise glibc's mmap threshold, which the driver's is not

# name -> (weights bytes, optimizer state bytes): float32, Adam's two moments
SIZES = {
    "118": (39_209_000, 78_418_000),          # 9.8M parameters
    "353": (117_637_160, 235_274_320),        # 29.4M: Flatten-4096-4096-10 on 32x32x3
}

PROBE = r"""
import json, os, time
plpy.execute("SELECT " + plpy.quote_ident(lib) + ".internal_take_value('')")  # boots madlib_dl here
from madlib_dl import channel, db as database
from madlib_dl.identifiers import TableName
from madlib_dl.training import model_table


class Timed:
    "The session's database, each statement timed under a label."

    def __init__(self, db):
        self.db, self.steps = db, {}

    def execute(self, sql, args=(), types=()):
        started = time.perf_counter()
        try:
            return self.db.execute(sql, args, types)
        finally:
            words = sql.split()
            if words[0] == "UPDATE":
                label = "UPDATE " + words[3].strip('"')
            elif words[0] == "INSERT" and "_optimizer_state" in words[2]:
                label = "INSERT side-table part"
            elif words[0] == "INSERT":
                label = "INSERT row"
            else:
                label = "DDL"
            self.steps[label] = self.steps.get(label, 0.0) + time.perf_counter() - started

    def __getattr__(self, name):
        return getattr(self.db, name)


def blob(size, seed):
    "A state as the driver holds it: a memory file whose pages this backend never mapped."
    import numpy
    made = channel.SharedBlob.create(size)
    rng = numpy.random.default_rng(seed)
    chunk = rng.bytes(min(size, FILL_CHUNK))
    for start in range(0, size, len(chunk)):
        os.pwrite(made.fd, memoryview(chunk)[:size - start], start)
    return made


class Config:
    model_arch = '{"class_name": "Sequential"}'


class Model:
    def __init__(self, key):
        self.config, self.last_segment = Config(), 0
        self.weights, self.optimizer_state = blob(weights, 2 * key), blob(optimizer, 2 * key + 1)


class Result:
    pass


def own():
    "This backend's own memory now and at its peak (VmRSS, VmHWM less RssShmem), bytes."
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    kib = {k: int(v.split()[0]) for k, v in status.items() if k in ("VmRSS", "VmHWM", "RssShmem")}
    return 1024 * (kib["VmRSS"] - kib["RssShmem"]), 1024 * (kib["VmHWM"] - kib["RssShmem"])


def lsn():
    return int(plpy.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn AS at")[0]["at"])


if alt_source:  # another version of stored_state (--baseline REF), for before/after under the same load
    import types
    alt = types.ModuleType("madlib_dl.training.stored_state_baseline")
    exec(compile(alt_source, "stored_state (baseline)", "exec"), alt.__dict__)
    model_table.stored_state = alt
try:
    result = Result()
    result.models = {key: Model(key) for key in range(1, models + 1)}
    schema, name = out_table.split(".")
    db = Timed(database.current())
    wal = lsn()
    before = own()
    cpu = sum(os.times()[:2])
    started = time.perf_counter()
    table = model_table.ModelTable(TableName(schema, name), lib, keyed=True)
    table.create(db)
    table.write_rest(db, result.models)
    seconds = time.perf_counter() - started
    cpu = sum(os.times()[:2]) - cpu
finally:
    from madlib_dl.training import stored_state
    model_table.stored_state = stored_state
return json.dumps({"seconds": seconds, "cpu_seconds": cpu, "steps": db.steps, "wal_bytes": lsn() - wal,
                   "own_before": before[0], "peak_before": before[1]})
"""

# the probe's arguments, as its body names them (alt_source: NULL for the checkout's stored_state)
PROBE_ARGS = "lib TEXT, weights BIGINT, optimizer BIGINT, models INTEGER, out_table TEXT, alt_source TEXT"


def say(text: str) -> None:
    print(text, flush=True)


def prepare(cur, lib: str) -> None:
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    body = f"FILL_CHUNK = {FILL_CHUNK}\n" + PROBE
    cur.execute(f"CREATE OR REPLACE FUNCTION {SCHEMA}.state_write_probe({PROBE_ARGS}) RETURNS TEXT "
                f"LANGUAGE plpython3u AS $probe${body}$probe$")


def _drop(cur, table: str) -> None:
    cur.execute(f"DROP TABLE IF EXISTS {table}, {table}_optimizer_state")


def write_once(cluster, lib: str, size: str, alt_source: str | None = None) -> dict:
    """fit_multiple's model table with MODELS models of this size, in a fresh session, then COMMIT."""
    from madlib_dl.training import stored_state

    weights, optimizer = SIZES[size]
    table = f"{SCHEMA}.sw_out"
    with cluster.connect() as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            _drop(cur, table)
            cur.execute("CHECKPOINT")  # each run starts from the same WAL position relative to a checkpoint
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
            cur.execute("BEGIN")
            started = time.perf_counter()
            cur.execute(f"SELECT {SCHEMA}.state_write_probe(%s, %s, %s, %s, %s, %s)",
                        [lib, weights, optimizer, MODELS, table, alt_source])
            probe = json.loads(cur.fetchone()[0])
            statement = time.perf_counter() - started
            before_commit = time.perf_counter()
            cur.execute("COMMIT")
            commit = time.perf_counter() - before_commit
            peak = own_peak(pid)
            cur.execute(f"SELECT sum(length(model_weights)), sum(length(optimizer_state)) FROM {table}")
            stored = cur.fetchone()
            cur.execute(f"SELECT coalesce(sum(length(data)), 0) FROM {table}_optimizer_state")
            parts = cur.fetchone()[0]
            _drop(cur, table)
    conn.close()
    state = MODELS * (weights + optimizer)
    if (stored[0] or 0) + (stored[1] or 0) + parts != state:
        raise SystemExit(f"state_write: {state} bytes written, {stored} + {parts} stored")
    in_column = optimizer <= stored_state.ONE_VALUE_BYTES
    return {"size": size, "state_bytes": state, "write_seconds": probe["seconds"], "cpu_seconds": probe["cpu_seconds"],
            "steps": probe["steps"], "statement_seconds": statement, "commit_seconds": commit,
            "wal_bytes": probe["wal_bytes"], "own_peak_bytes": peak, "own_before_bytes": probe["own_before"],
            "peak_before_bytes": probe["peak_before"],
            "largest_value_bytes": max(weights, optimizer if in_column else min(optimizer, stored_state.PART_BYTES))}


def _copy_binary(value: bytes) -> io.BytesIO:
    """COPY BINARY of one row (v BYTEA)."""
    out = io.BytesIO()
    out.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0))
    out.write(struct.pack("!hi", 1, len(value)))
    out.write(value)
    out.write(struct.pack("!h", -1))
    out.seek(0)
    return out


def floor_once(cluster, nbytes: int, path: str) -> dict:
    """The references for nbytes (see the module's docstring), each in seconds."""
    import numpy as np

    from madlib_dl.training import stored_state

    found = {}
    source = np.frombuffer(os.urandom(nbytes), dtype=np.uint8)
    target = np.empty_like(source)
    target[:] = 1
    started = time.perf_counter()
    np.copyto(target, source)
    found["memcpy, touched memory"] = time.perf_counter() - started
    started = time.perf_counter()
    fresh = source.tobytes()
    found["memcpy, fresh memory"] = time.perf_counter() - started
    with open(path, "wb") as file:
        file.write(fresh)
    os.chmod(path, 0o644)
    del target, source
    with cluster.connect() as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            def timed(label: str, *statements: str) -> None:
                started = time.perf_counter()
                for statement in statements:
                    cur.execute(statement)
                found[label] = time.perf_counter() - started

            for kind in ("", "UNLOGGED "):
                cur.execute(f"DROP TABLE IF EXISTS {SCHEMA}.sw_floor")
                cur.execute(f"CREATE {kind}TABLE {SCHEMA}.sw_floor (k INTEGER, v BYTEA)")
                cur.execute(f"ALTER TABLE {SCHEMA}.sw_floor ALTER COLUMN v SET STORAGE EXTERNAL")
                cur.execute("SELECT pg_read_binary_file(%s, 0, 1)", [path])  # the file in the page cache
                cur.execute("CHECKPOINT")
                timed(f"server INSERT{' UNLOGGED' if kind else ''}", "BEGIN",
                      f"INSERT INTO {SCHEMA}.sw_floor SELECT 1, pg_read_binary_file('{path}')", "COMMIT")
            part = stored_state.PART_BYTES
            cur.execute(f"TRUNCATE {SCHEMA}.sw_floor")
            cur.execute("CHECKPOINT")
            parts = [f"INSERT INTO {SCHEMA}.sw_floor SELECT {i}, pg_read_binary_file('{path}', {start}, {part})"
                     for i, start in enumerate(range(0, nbytes, part))]
            timed(f"server INSERT, {part >> 20} MiB a statement", "BEGIN", *parts, "COMMIT")
            cur.execute(f"DROP TABLE IF EXISTS {SCHEMA}.sw_floor, {SCHEMA}.sw_floor_copy")
            cur.execute(f"CREATE TABLE {SCHEMA}.sw_floor (k INTEGER, v BYTEA)")
            cur.execute(f"ALTER TABLE {SCHEMA}.sw_floor ALTER COLUMN v SET STORAGE EXTERNAL")
            cur.execute(f"INSERT INTO {SCHEMA}.sw_floor SELECT 1, pg_read_binary_file('{path}')")
            cur.execute(f"CREATE TABLE {SCHEMA}.sw_floor_copy (v BYTEA)")
            cur.execute(f"ALTER TABLE {SCHEMA}.sw_floor_copy ALTER COLUMN v SET STORAGE EXTERNAL")
            cur.execute("CHECKPOINT")
            timed("server copy", "BEGIN", f"INSERT INTO {SCHEMA}.sw_floor_copy SELECT v FROM {SCHEMA}.sw_floor",
                  "COMMIT")
            cur.execute(f"TRUNCATE {SCHEMA}.sw_floor_copy")
            cur.execute("CHECKPOINT")
            data = _copy_binary(fresh)
            del fresh
            started = time.perf_counter()
            cur.execute("BEGIN")
            cur.copy_expert(f"COPY {SCHEMA}.sw_floor_copy FROM STDIN (FORMAT binary)", data, size=8 << 20)
            cur.execute("COMMIT")
            found["client COPY"] = time.perf_counter() - started
            cur.execute(f"DROP TABLE IF EXISTS {SCHEMA}.sw_floor, {SCHEMA}.sw_floor_copy")
    conn.close()
    os.unlink(path)
    return found


# ---------------------------------------------------------------------------------------------------
# The whole call: fit_multiple with two configurations of the 29.4M model

CALL_SHAPE, CALL_CLASSES, CALL_EXAMPLES = (32, 32, 3), 10, 64


def _call_model_json() -> str:
    from madlib_dl.keras_runtime import tf_setup

    keras = tf_setup.keras()
    return keras.Sequential([keras.Input(CALL_SHAPE), keras.layers.Flatten(),
                             keras.layers.Dense(4096, activation="relu"), keras.layers.Dense(4096, activation="relu"),
                             keras.layers.Dense(CALL_CLASSES, activation="softmax")], name="dense29m").to_json()


def prepare_call(cur, lib: str) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    cur.execute(f"DROP TABLE IF EXISTS {SCHEMA}.sw_source, {SCHEMA}.sw_packed, {SCHEMA}.sw_packed_summary, "
                f"{SCHEMA}.sw_arch, {SCHEMA}.sw_mst, {SCHEMA}.sw_mst_summary")
    cur.execute(f"CREATE TABLE {SCHEMA}.sw_source (id INTEGER, x REAL[], label INTEGER)")
    for i in range(CALL_EXAMPLES):
        x = rng.integers(0, 256, CALL_SHAPE).tolist()
        cur.execute(f"INSERT INTO {SCHEMA}.sw_source VALUES (%s, %s::real[], %s)", [i, x, int(i % CALL_CLASSES)])
    cur.execute(f"SELECT {lib}.training_preprocessor_dl(%s, %s, 'label', 'x', NULL, 255.0, NULL, '2')",
                [f"{SCHEMA}.sw_source", f"{SCHEMA}.sw_packed"])
    cur.execute(f"SELECT {lib}.load_keras_model(%s, %s::json, NULL, 'dense29m', NULL)",
                [f"{SCHEMA}.sw_arch", _call_model_json()])
    compile_params = ["loss='categorical_crossentropy', optimizer='Adam(learning_rate=%s)', metrics=['accuracy']" % lr
                      for lr in ("0.001", "0.0001")]
    cur.execute(f"SELECT {lib}.load_model_selection_table(%s, %s, ARRAY[(SELECT model_id FROM {SCHEMA}.sw_arch)], "
                "%s, ARRAY['batch_size=32, epochs=1'])", [f"{SCHEMA}.sw_arch", f"{SCHEMA}.sw_mst", compile_params])


# Puts another stored_state (--baseline) under the output writing of this session's later calls.
SWAP = """
plpy.execute("SELECT " + plpy.quote_ident(%(lib)s) + ".internal_take_value('')")  # boots madlib_dl here
import types
from madlib_dl.training import model_table
alt = types.ModuleType("madlib_dl.training.stored_state_baseline")
exec(compile(%(source)s, "stored_state (baseline)", "exec"), alt.__dict__)
model_table.stored_state = alt
"""


def call_once(cluster, lib: str, alt_source: str | None = None) -> dict:
    output = f"{SCHEMA}.sw_models"
    with cluster.connect() as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {output}, {output}_summary, {output}_info, {output}_optimizer_state")
            cur.execute("CHECKPOINT")
            if alt_source:
                cur.execute("DO $swap$" + SWAP % {"lib": repr(lib), "source": repr(alt_source)} + "$swap$ "
                            "LANGUAGE plpython3u")
            cur.execute("SET madlib_dl.executor = 'workers'; SET madlib_dl.memory_budget_mb = 20000; "
                        "SET client_min_messages = warning; SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
            started = time.time()
            cur.execute(f"SELECT {lib}.madlib_keras_fit_multiple_model(%s, %s, %s, 1, FALSE)",
                        [f"{SCHEMA}.sw_packed", output, f"{SCHEMA}.sw_mst"])
            ended = time.time()
            cur.execute(f"SELECT kind, extract(epoch FROM started) AS started, extract(epoch FROM ended) AS ended "
                        f"FROM {lib}.last_fit_hops() ORDER BY started")
            hops = cur.fetchall()
            peak = own_peak(pid)
            cur.execute(f"SELECT sum(length(model_weights)) FROM {output}")
            weights = cur.fetchone()[0]
            cur.execute(f"SELECT coalesce(sum(length(data)), 0) FROM {output}_optimizer_state")
            optimizer = cur.fetchone()[0]
            cur.execute(f"DROP TABLE IF EXISTS {output}, {output}_summary, {output}_info, {output}_optimizer_state")
    conn.close()
    train = [h for h in hops if h[0] == "train"]
    first, last = float(min(h[1] for h in train)), float(max(h[2] for h in hops))
    return {"wall_seconds": ended - started, "before_first_hop": first - started, "after_last_hop": ended - last,
            "hop_span": last - first, "state_bytes": int(weights) + int(optimizer), "own_peak_bytes": peak}


# ---------------------------------------------------------------------------------------------------

def _median(runs: list[dict], key: str) -> dict:
    ordered = sorted(runs, key=lambda r: r[key])
    return ordered[len(ordered) // 2]


def _growth(run: dict) -> float:
    """How far the write raised the backend's own peak above its memory before the write."""
    return max(0, (run["own_peak_bytes"] or 0) - run["own_before_bytes"])


def _write_lines(label: str, writes: list[dict]) -> list[str]:
    run = _median(writes, "write_seconds")
    state = run["state_bytes"]
    total = run["write_seconds"] + run["commit_seconds"]
    best = min(writes, key=lambda r: r["write_seconds"])
    steps = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(run["steps"].items()))
    outside = run["write_seconds"] - sum(run["steps"].values())
    return [f"  {label}: {total:.2f} s = {state / MB / total:.0f} MB/s, median of {len(writes)} (write "
            f"{run['write_seconds']:.2f} s, CPU {run['cpu_seconds']:.2f} s, commit {run['commit_seconds']:.2f} s; "
            f"best {best['write_seconds']:.2f} s = {state / MB / best['write_seconds']:.0f} MB/s); WAL "
            f"{run['wal_bytes'] / MB:.0f} MB; own memory {run['own_before_bytes'] / MB:.0f} MB before the write, "
            f"peak +{max(_growth(r) for r in writes) / MB:.0f} MB (largest value "
            f"{run['largest_value_bytes'] / MB:.0f} MB)",
            f"    steps: {steps}; outside statements {outside:.2f} s"]


def table(result: dict) -> str:
    lines = []
    for size, found in result["sizes"].items():
        state = found["writes"][0]["state_bytes"]
        lines.append(f"state_write: {size} MB per model, {MODELS} models ({state / MB:.0f} MB), "
                     "fit_multiple's model table")
        for label, writes in found["variants"].items():
            lines += _write_lines(label, writes)
        if found["floors"]:
            per = found["floor_bytes"]
            lines.append(f"  floor for {per / MB:.0f} MB, median of {len(found['floors'])}: " + ", ".join(
                f"{k} {v:.3f} s = {per / MB / v:.0f} MB/s" for k, v in found["floor"].items()))
    for label, runs in result.get("calls", {}).items():
        lines.append(f"fit_multiple, 2 x 29.4M parameters, {label}, median of {len(runs)}: "
                     f"{_call_line(_median(runs, 'after_last_hop'))}")
    return "\n".join(lines)


def _call_line(run: dict) -> str:
    outside = run["wall_seconds"] - run["hop_span"]
    return (f"wall {run['wall_seconds']:.2f} s: before the first hop {run['before_first_hop']:.2f} s, hops "
            f"{run['hop_span']:.2f} s, after the last hop {run['after_last_hop']:.2f} s (outside hops {outside:.2f} s, "
            f"target 2 s + {run['state_bytes'] / MB:.0f} MB / 500 MB/s = {2 + run['state_bytes'] / 500e6:.2f} s); "
            f"driver own peak {(run['own_peak_bytes'] or 0) / MB:.0f} MB")


def _baseline_source(ref: str) -> str:
    import subprocess

    return subprocess.run(["git", "show", f"{ref}:madlib_dl/training/stored_state.py"], cwd=HERE.parent,
                          check=True, capture_output=True, text=True).stdout


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="state_write", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {sorted(SIZES)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", metavar="REF", action="append", default=[],
                        help="also time stored_state.py as of this git commit (repeatable), alternating with the "
                        "checkout's (before/after under the same load)")
    parser.add_argument("--no-floor", action="store_true", help="skip the reference measurements")
    parser.add_argument("--call", type=int, default=0, metavar="N", help="also N fit_multiple calls (29.4M model)")
    parser.add_argument("--json", default=None, help="write the measurements here")
    args = parser.parse_args(argv)
    from madlib_dl.tools.cluster import EXTENSION_QUERY, Cluster

    cluster = Cluster.from_environment()
    cluster.start()
    with cluster.connect() as conn, conn.cursor() as cur:
        cur.execute(EXTENSION_QUERY)
        lib = cur.fetchone()[1]
        prepare(cur, lib)
    conn.close()
    sources = {**{f"stored_state as of {ref}": _baseline_source(ref) for ref in args.baseline}, "checkout": None}
    result = {"sizes": {}}
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        variants = {label: [] for label in sources}
        for _ in range(args.repeats):
            for label, source in sources.items():
                run = write_once(cluster, lib, size, source)
                variants[label].append(run)
                steps = json.dumps({k: round(v, 3) for k, v in run["steps"].items()})
                say(f"  {size}, {label}: {run['write_seconds']:.2f} s (CPU {run['cpu_seconds']:.2f} s) + commit "
                    f"{run['commit_seconds']:.2f} s, steps {steps}")
        found = {"variants": variants, "writes": variants["checkout"]}
        found["floors"], found["floor"], found["floor_bytes"] = [], {}, sum(SIZES[size])
        if not args.no_floor:
            floors = [floor_once(cluster, found["floor_bytes"],
                                 os.path.join(tempfile.gettempdir(), "madlib_dl_state_write.bin"))
                      for _ in range(args.repeats)]
            found["floors"] = floors
            found["floor"] = {k: statistics.median(f[k] for f in floors) for k in floors[0]}
        result["sizes"][size] = found
    if args.call:
        with cluster.connect() as conn, conn.cursor() as cur:
            prepare_call(cur, lib)
        conn.close()
        result["calls"] = {label: [] for label in sources}
        for _ in range(args.call):
            for label, source in sources.items():
                result["calls"][label].append(call_once(cluster, lib, source))
                say(f"  call, {label}: {_call_line(result['calls'][label][-1])}")
    say(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
