"""One peer of bench/peers.py in a process of its own: plain Keras, KerasTuner or Ray Tune trains the
configurations it is given, from the raw table in PostgreSQL, as a user of that tool would.

Run as `python bench/peer_tools.py CONFIG.json` with KerasTuner and Ray Tune on PYTHONPATH
(bench/requirements-peers.txt). The clock starts when this module starts, before TensorFlow or Ray is
imported: a user pays the imports, ray.init and reading the table (psycopg2, the features as
array_send bytes decoded with numpy, /255 as training_preprocessor_dl normalises them), as madlib_dl's
timing includes its workers starting and its preprocessors. TensorFlow's intra- and inter-op threads are
set before its first op. CPU seconds are those of this process's tree (itself and the processes started
under it: Ray's raylet, GCS and trial workers), sampled from /proc while they run, up to the end of
training. Prints one JSON object on stdout; whatever the tools print goes to stderr.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before anything heavy is imported

import json  # noqa: E402
import os  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402

import numpy as np  # noqa: E402

import peers  # noqa: E402


def processes() -> dict[int, tuple[int, int, float]]:
    """pid -> (parent pid, start time in ticks, own CPU seconds: utime + stime) of every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[int(entry)] = (int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / peers.TICKS)
    return found


def tree(root: int, table: dict[int, tuple[int, int, float]]) -> list[int]:
    """``root`` and its descendants in a processes() table."""
    found, wanted = [], {root}
    while wanted:  # breadth first down the tree
        found.extend(wanted)
        wanted = {pid for pid, (parent, _, _) in table.items() if parent in wanted}
    return found


class TreeCpu:
    """CPU seconds of this process and every process started under it (Ray's raylet, GCS and trial
    workers), sampled every POLL seconds from /proc while they run: a process that ended counts up to
    its last sample. Reaped children's CPU (cutime) cannot stand in for that: Ray's raylet lets its
    exited workers go without it (measured: 18 s of CPU for 112 s of two trials at once). The sampler
    thread's own CPU is taken off."""
    POLL = 0.2

    def __init__(self):
        self.root, self.seen = os.getpid(), {}
        self.baseline = processes()[self.root][2]
        self.sampler_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        table = processes()
        for pid in tree(self.root, table):
            if pid in table:
                _, start, cpu = table[pid]
                self.seen[(pid, start)] = max(self.seen.get((pid, start), 0.0), cpu)

    def _poll(self) -> None:
        while not self._stop.wait(self.POLL):
            self._sample()
            self.sampler_seconds = time.thread_time()

    def seconds(self) -> float:
        """Stops sampling; the tree's CPU since this object was made, the sampler's taken off."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return sum(self.seen.values()) - self.baseline - self.sampler_seconds


class Clock:
    """Wall seconds per phase since the module started, and the process tree's CPU seconds since then."""

    def __init__(self):
        self.started, self.last, self.phases = STARTED, STARTED, {}
        self.cpu, self.cpu_seconds = TreeCpu(), None

    def phase(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = now - self.last
        self.last = now

    def take_cpu(self) -> None:
        self.cpu_seconds = self.cpu.seconds()

    def result(self) -> dict:
        return {"seconds": self.last - self.started, "cpu_seconds": self.cpu_seconds, "phases": self.phases,
                "processes_seen": len(self.cpu.seen), "sampler_cpu_seconds": self.cpu.sampler_seconds}


def import_keras(threads: int):
    """TensorFlow with ``threads`` intra- and inter-op threads (fixed before its first op), and Keras."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # a reused Ray worker whose TensorFlow already runs (with the same count)
        pass
    import keras

    return keras


# ---------------------------------------------------------------------------------------------------
# Reading the table

def decode_float4_arrays(rows: list[bytes]) -> np.ndarray:
    """array_send bytes of REAL arrays of one shape without NULLs -> float32 array (rows, *shape)."""
    ndim, has_null, element = struct.unpack(">iii", rows[0][:12])
    if has_null or element != 700:
        raise SystemExit(f"peer: expected REAL arrays without NULLs, got element type {element}, NULLs {has_null}")
    shape = [struct.unpack(">i", rows[0][12 + 8 * d: 16 + 8 * d])[0] for d in range(ndim)]
    head, size = 12 + 8 * ndim, int(np.prod(shape))
    raw = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), head + 8 * size)
    pairs = np.ascontiguousarray(raw[:, head:]).view(">f4").reshape(len(rows), size, 2)  # (length, value) each
    return pairs[:, :, 1].astype(np.float32).reshape(len(rows), *shape)


def read_table(conn, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(features / 255 as float32, labels) of a source table, streamed through a server-side cursor."""
    xs, ys = [], []
    with conn.cursor(name="peer_read") as cur:
        cur.itersize = 1000
        cur.execute(f"SELECT label, array_send(x) FROM {name} ORDER BY id")
        while True:
            rows = cur.fetchmany(1000)
            if not rows:
                break
            xs.append(decode_float4_arrays([bytes(r[1]) for r in rows]))
            ys.append(np.array([r[0] for r in rows], dtype=np.int64))
    return np.concatenate(xs) / np.float32(255.0), np.concatenate(ys)


def read(config: dict) -> tuple:
    """(x, one-hot y, validation x, validation one-hot y or None, None)."""
    import psycopg2

    def one_hot(labels):
        return np.eye(peers.CLASSES, dtype=np.float32)[labels]

    with psycopg2.connect(**config["dsn"]) as conn:
        x, y = read_table(conn, config["train"])
        xv, yv = read_table(conn, config["validation"]) if config["validation"] else (None, None)
    conn.close()
    return x, one_hot(y), xv, None if yv is None else one_hot(yv)


def compiled(keras, arch: str, lr: float):
    model = peers.build(keras, arch)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _finals(history: dict) -> tuple[float | None, float]:
    accuracy = history.get("val_accuracy")
    return (float(accuracy[-1]) if accuracy else None), float(history["loss"][-1])


# ---------------------------------------------------------------------------------------------------
# The tools

def keras_tool(config: dict, clock: Clock) -> dict:
    """Plain Keras: each configuration's fit (with validation_data) one after another."""
    keras = import_keras(config["threads"])
    clock.phase("import")
    x, y, xv, yv = read(config)
    clock.phase("read")
    accuracy, loss = {}, {}
    for index, (arch, lr) in enumerate(config["configs"]):
        keras.utils.set_random_seed(config["seed"] + index)
        history = compiled(keras, arch, lr).fit(x, y, batch_size=config["batch"], epochs=config["epochs"], verbose=0,
                                                validation_data=(xv, yv) if xv is not None else None)
        name = peers.config_name(arch, lr)
        accuracy[name], loss[name] = _finals(history.history)
    clock.phase("train")
    clock.take_cpu()
    return {"accuracy": accuracy, "training_loss": loss}


def _grid(config: dict) -> tuple[list, list]:
    archs = list(dict.fromkeys(arch for arch, _ in config["configs"]))
    rates = list(dict.fromkeys(lr for _, lr in config["configs"]))
    return archs, rates


def kerastuner_tool(config: dict, clock: Clock) -> dict:
    """KerasTuner's GridSearch over architecture x learning rate, objective val_accuracy, each trial seeded."""
    keras = import_keras(config["threads"])
    import keras_tuner

    clock.phase("import")
    x, y, xv, yv = read(config)
    clock.phase("read")
    archs, rates = _grid(config)

    def hypermodel(hp):
        # seeded as the Keras and Ray peers seed each configuration (initial weights, then shuffling):
        # left to KerasTuner, a configuration still learning fast at the last epoch moved by 0.11 (measured)
        arch, lr = hp.Choice("arch", archs), hp.Choice("lr", rates)
        keras.utils.set_random_seed(config["seed"] + config["configs"].index([arch, lr]))
        return compiled(keras, arch, lr)

    with tempfile.TemporaryDirectory(prefix="bench_kerastuner_") as folder:
        tuner = keras_tuner.GridSearch(hypermodel, objective="val_accuracy", max_trials=len(config["configs"]),
                                       executions_per_trial=1, overwrite=True, directory=folder, project_name="search",
                                       seed=config["seed"])
        tuner.search(x, y, batch_size=config["batch"], epochs=config["epochs"], validation_data=(xv, yv), verbose=0)
        clock.phase("train")
        clock.take_cpu()
        trials = list(tuner.oracle.trials.values())
        accuracy = {peers.config_name(t.hyperparameters.get("arch"), t.hyperparameters.get("lr")):
                    float(t.metrics.get_last_value("val_accuracy")) for t in trials}
        loss = {peers.config_name(t.hyperparameters.get("arch"), t.hyperparameters.get("lr")):
                float(t.metrics.get_last_value("loss")) for t in trials}
    return {"accuracy": accuracy, "training_loss": loss, "trials": len(trials)}


def ray_trial(config: dict, data=None, settings=None) -> None:
    """One Ray Tune trial (in a Ray worker): Keras's fit, reporting each epoch's metrics to Tune."""
    keras = import_keras(settings["threads"])
    from ray import tune

    x, y, xv, yv = data
    keras.utils.set_random_seed(settings["seed"] + settings["configs"].index([config["arch"], config["lr"]]))

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            tune.report({"val_accuracy": float(logs["val_accuracy"]), "loss": float(logs["loss"]), "epoch": epoch + 1})

    compiled(keras, config["arch"], config["lr"]).fit(x, y, batch_size=settings["batch"], epochs=settings["epochs"],
                                                      validation_data=(xv, yv), callbacks=[Report()], verbose=0)


def ray_tool(config: dict, clock: Clock) -> dict:
    """Ray Tune: the configurations as a grid, ``concurrent`` trials at once of 1 CPU each (ray.init timed)."""
    import ray
    from ray import tune

    clock.phase("import")
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as folder:
        ray.init(num_cpus=config["concurrent"], include_dashboard=False, log_to_driver=False,
                 _temp_dir=os.path.join(folder, "ray"))
        clock.phase("ray.init")
        data = read(config)
        clock.phase("read")
        archs, rates = _grid(config)
        settings = {key: config[key] for key in ("threads", "seed", "batch", "epochs", "configs")}
        trainable = tune.with_resources(tune.with_parameters(ray_trial, data=data, settings=settings), {"cpu": 1})
        tuner = tune.Tuner(trainable, param_space={"arch": tune.grid_search(archs), "lr": tune.grid_search(rates)},
                           tune_config=tune.TuneConfig(max_concurrent_trials=config["concurrent"]),
                           run_config=tune.RunConfig(storage_path=os.path.join(folder, "results"), name="search",
                                                     verbose=0))
        results = tuner.fit()
        clock.phase("train")
        clock.take_cpu()
        failed = [str(r.error) for r in results if r.error]
        if failed:
            raise SystemExit(f"peer: Ray Tune trials failed: {failed}")
        names = [peers.config_name(r.config["arch"], r.config["lr"]) for r in results]
        accuracy = {name: float(r.metrics["val_accuracy"]) for name, r in zip(names, results)}
        loss = {name: float(r.metrics["loss"]) for name, r in zip(names, results)}
        ray.shutdown()
        clock.phase("shutdown")
    return {"accuracy": accuracy, "training_loss": loss, "trials": len(results)}


TOOLS = {"keras": keras_tool, "kerastuner": kerastuner_tool, "ray": ray_tool}


def main(config_path: str) -> None:
    out = os.fdopen(os.dup(1), "w")  # the JSON's own stdout; everything else printed goes to stderr
    os.dup2(2, 1)
    clock = Clock()
    config = json.load(open(config_path))
    result = TOOLS[config["tool"]](config, clock)
    json.dump({"tool": config["tool"], "threads": config["threads"], **clock.result(), **result}, out)
    out.close()


if __name__ == "__main__":
    main(sys.argv[1])
