"""From measurements to verdicts: the ratios and targets of `make bench`, and the printed table.
Pure functions of the measurements (dicts as stored in the JSON file), so they are unit-tested."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

MIB = 1 << 20
FLAT_SLACK_BYTES = 8 * MIB  # growth under this (or under FLAT_SLACK_FRACTION of the peak) counts as flat
FLAT_SLACK_FRACTION = 0.02


@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None
    limit: float | None
    kind: str  # 'max': measured must be <= limit; 'min': measured must be >= limit; 'info': no limit, never met
    detail: str = ""

    @property
    def met(self) -> bool | None:
        if self.measured is None or self.kind == "info":
            return None
        return self.measured <= self.limit if self.kind == "max" else self.measured >= self.limit

    def as_dict(self) -> dict:
        return {**asdict(self), "met": self.met}


def variant(workers: int, caching: bool) -> str:
    return f"S={workers} caching {'on' if caching else 'off'}"


def limit_seconds(keras_seconds: float, workers: int) -> float:
    """Plain Keras' time divided by S: the best S workers can do."""
    return keras_seconds / workers


def flat(growth_bytes: float | None, peak_bytes: float | None) -> bool | None:
    if growth_bytes is None or peak_bytes is None:
        return None
    return growth_bytes <= max(FLAT_SLACK_BYTES, FLAT_SLACK_FRACTION * peak_bytes)


def _run(result: dict, workers: int, caching: bool) -> dict | None:
    return result["runs"].get(variant(workers, caching))


def _wall(result: dict, workers: int, caching: bool) -> float | None:
    run = _run(result, workers, caching)
    return run["wall_seconds"] if run else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def _two_processes(result: dict) -> float | None:
    """Plain Keras as two concurrent processes, each training half of the configurations (absent from
    results of older runs)."""
    two = result.get("keras_2proc")
    return two["seconds"] if two else None


def _ceiling(name: str, result: dict) -> list[Target]:
    """Information: how far from keras / 2 the machine itself is with two processes at once."""
    two = _two_processes(result)
    if two is None:
        return []
    keras = result["keras"]["seconds"]
    detail = f"2 processes {two:.2f} s, keras 1 process {keras:.2f} s"
    cpu = [p.get("cpu_seconds") for p in result["keras_2proc"]["processes"]]
    if None not in cpu and result["keras"].get("cpu_seconds") is not None:
        # CPU well under the wall: the processes waited for a core (other load on the machine)
        detail += (f"; CPU s {' + '.join(format(c, '.2f') for c in cpu)} against "
                   f"{result['keras']['cpu_seconds']:.2f}")
    return [Target(f"{name}: keras 2 processes / (keras / 2) (the machine's own ceiling for S=2)",
                   _ratio(two, limit_seconds(keras, 2)), None, "info", detail)]


def _versus_two_processes(name: str, result: dict) -> list[Target]:
    """Information: our S=2 wall (caching on) against plain Keras as two concurrent processes."""
    two, wall = _two_processes(result), _wall(result, 2, True)
    if two is None:
        return []
    return [Target(f"{name}, caching on, S=2: wall / keras 2 processes", _ratio(wall, two), None, "info",
                   f"S=2 {_fmt(wall, '.2f')} s, 2 processes {two:.2f} s")]


# Live progress (fit_progress) may add at most 5 % to the small workload's fresh 5 s call: with progress
# off no recorder starts at all (until a checkpoint is due), so this is the recorder's whole cost, its
# backend starting while the run's workers import TensorFlow on 2 cores (bench/FINDINGS.md, issue 29).
PROGRESS_COST = 1.05


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _progress_cost(runs: dict | None) -> list[Target]:
    """``runs``: {'on': [wall seconds...], 'off': [...]}, alternating runs of one variant."""
    if not runs or not runs.get("on") or not runs.get("off"):
        return []
    on, off = _median(runs["on"]), _median(runs["off"])
    return [Target("small, S=2 caching on: progress on / off (median of alternating runs)", on / off, PROGRESS_COST,
                   "max", f"on {', '.join(f'{x:.2f}' for x in runs['on'])} s; off "
                          f"{', '.join(f'{x:.2f}' for x in runs['off'])} s")]


def targets(results: dict) -> list[Target]:
    """The issue's targets over the measured workloads (those missing from ``results`` are skipped), with
    informational lines (kind 'info', never met nor missed) where two-process Keras was measured."""
    found = []
    for name, workload in results.items():
        found.extend(_ceiling(name, workload))
    compute, small = results.get("compute"), results.get("small")
    if compute:
        limit = limit_seconds(compute["keras"]["seconds"], 2)
        found.append(Target("compute, caching on, S=2: wall / (keras / 2)", _ratio(_wall(compute, 2, True), limit),
                            1.15, "max"))
        found.extend(_versus_two_processes("compute", compute))
        found.append(Target("compute, caching on: speed-up S=2 over S=1",
                            _ratio(_wall(compute, 1, True), _wall(compute, 2, True)), 1.8, "min"))
    if small:
        limit = limit_seconds(small["keras"]["seconds"], 2)
        found.append(Target("small, caching on, S=2: wall / (keras / 2)", _ratio(_wall(small, 2, True), limit),
                            1.5, "max"))
        found.extend(_versus_two_processes("small", small))
        for workers in (1, 2):  # information only: see CACHING_SAVES
            found.append(Target(f"small, S={workers}: caching off / caching on",
                                _ratio(_wall(small, workers, False), _wall(small, workers, True)), None, "info",
                                "a segment of digits is 230 KB: nothing for caching to save"))
        overheads = [run["hop_overhead_ms"] for run in small["runs"].values() if run.get("hop_overhead_ms") is not None]
        found.append(Target("small: per-hop overhead, ms (worst run)", max(overheads) if overheads else None,
                            20.0, "max"))
        found.extend(_progress_cost(small.get("progress")))
    for name, workload in results.items():
        found.extend(_never_slower(name, workload))
        found.extend(_cached_hops(name, workload))
        found.extend(_memory(name, workload))
    return found


# Caching's targets hold only where reading a segment costs something. A segment of `small` (digits) is
# 230 KB, read and decoded in about 1 ms of a ~40 ms hop (FINDINGS.md): caching has nothing to save
# there, so its caching-on-vs-off ratios measured the machine's noise and were NOT MET as often as met
# (issue 26). They stay as information; on `compute` (60-120 MB a segment, 230-570 ms to read without
# caching) the wall ratio is a target, and so is what caching removes from each hop: the read, which
# shows in a later hop's overhead (the hop's wall outside Keras) without caching and not with it.
CACHING_SAVES = ("compute",)
CACHED_HOP_OVERHEAD = 0.5  # a later hop's overhead with caching on <= this x with caching off


def _never_slower(name: str, workload: dict) -> list[Target]:
    out = []
    for workers in (1, 2):
        ratio = _ratio(_wall(workload, workers, True), _wall(workload, workers, False))
        if ratio is None:
            continue
        if name in CACHING_SAVES:
            out.append(Target(f"{name}, S={workers}: caching on / caching off", ratio, 1.0, "max"))
        else:
            out.append(Target(f"{name}, S={workers}: caching on / caching off", ratio, None, "info",
                              "nothing for caching to save: the machine's noise"))
    return out


def _cached_hops(name: str, workload: dict) -> list[Target]:
    """Per-hop overhead after the first iteration (the first hop of each segment reads it either way),
    caching on against off, where reading a segment costs something."""
    if name not in CACHING_SAVES:
        return []
    out = []
    for workers in (1, 2):
        on, off = _run(workload, workers, True), _run(workload, workers, False)
        if not on or not off:
            continue
        cached, read = on.get("hop_overhead_later_ms"), off.get("hop_overhead_later_ms")
        out.append(Target(f"{name}, S={workers}: per-hop overhead after the first iteration, caching on / off",
                          _ratio(cached, read), CACHED_HOP_OVERHEAD, "max",
                          f"{_fmt(cached, '.1f')} ms vs {_fmt(read, '.1f')} ms"))
    return out


def _memory(name: str, workload: dict) -> list[Target]:
    keras_peak = workload["keras"].get("peak_bytes")
    out = []
    for label, run in workload["runs"].items():
        if not run["caching"]:
            continue
        for worker in run["workers"]:
            if keras_peak is None or worker["peak_bytes"] is None:
                continue
            allowed = keras_peak + 1.2 * worker["cache_bytes"]
            out.append(Target(f"{name}, {label}, worker {worker['segment']}: peak / (keras peak + 1.2 x cache)",
                              worker["peak_bytes"] / allowed, 1.0, "max",
                              f"peak {worker['peak_bytes'] / MIB:.0f} MiB, keras {keras_peak / MIB:.0f} MiB, "
                              f"cache {worker['cache_bytes'] / MIB:.1f} MiB"))
            growth = worker.get("growth_bytes")
            if growth is not None:
                slack = max(FLAT_SLACK_BYTES, FLAT_SLACK_FRACTION * worker["peak_bytes"])
                out.append(Target(f"{name}, {label}, worker {worker['segment']}: memory growth over the second "
                                  "half of the iterations, MiB", growth / MIB, slack / MIB, "max",
                                  f"from the end of iteration {worker.get('growth_from_iteration', 1)}, "
                                  f"over {worker['hops_measured']} hops"))
    return out


# ---------------------------------------------------------------------------------------------------
# Printing

def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(name: str, workload: dict) -> str:
    keras = workload["keras"]
    header = (f"  {'run':<18}{'wall s':>9}{'limit s':>9}{'ratio':>7}{'hop ovh ms':>11}{'iter>1':>8}"
              f"{'in fit s':>9}{'setup s':>8}{'end s':>7}{'worker peak MiB':>16}{'growth MiB':>11}")
    peak = keras.get("peak_bytes")
    lines = [f"{name}: {workload['description']}", header,
             f"  {'keras, 1 process':<18}{keras['seconds']:>9.2f}{'':>59}{_fmt(peak and peak / MIB, '.0f'):>16}"]
    two = workload.get("keras_2proc")
    if two:
        limit = limit_seconds(keras["seconds"], 2)
        peaks = [p["peak_bytes"] for p in two["processes"] if p.get("peak_bytes") is not None]
        lines.append(f"  {'keras, 2 procs':<18}{two['seconds']:>9.2f}{limit:>9.2f}{two['seconds'] / limit:>7.2f}"
                     f"{'':>43}{_fmt(max(peaks) / MIB if peaks else None, '.0f'):>16}")
    loop = workload.get("loop")
    if loop:
        lines.append(f"  {'our loop, 1 proc.':<18}{loop['seconds']:>9.2f}{'':>59}"
                     f"{_fmt(loop.get('peak_bytes') and loop['peak_bytes'] / MIB, '.0f'):>16}")
    for label, run in sorted(workload["runs"].items()):
        limit = limit_seconds(keras["seconds"], run["workers_count"])
        peaks = [w["peak_bytes"] for w in run["workers"] if w["peak_bytes"] is not None]
        growths = [w["growth_bytes"] for w in run["workers"] if w.get("growth_bytes") is not None]
        lines.append(
            f"  {label:<18}{run['wall_seconds']:>9.2f}{limit:>9.2f}{run['wall_seconds'] / limit:>7.2f}"
            f"{_fmt(run.get('hop_overhead_ms'), '.1f'):>11}{_fmt(run.get('hop_overhead_later_ms'), '.1f'):>8}"
            f"{run['fit_seconds']:>9.2f}{run['setup_seconds']:>8.2f}{run['teardown_seconds']:>7.2f}"
            f"{_fmt(max(peaks) / MIB if peaks else None, '.0f'):>16}"
            f"{_fmt(max(growths) / MIB if growths else None, '.1f'):>11}")
    if loop:
        lines.append("  vs our loop in one process (the database's own cost): " + ", ".join(
            f"{label} {run['wall_seconds'] / limit_seconds(loop['seconds'], run['workers_count']):.2f}x"
            for label, run in sorted(workload["runs"].items())))
    return "\n".join(lines)


def verdicts(found: list[Target]) -> str:
    lines = ["targets:"]
    for target in found:
        measured = _fmt(target.measured, ".3g")
        detail = f"  ({target.detail})" if target.detail else ""
        if target.kind == "info":
            lines.append(f"  [{'info':>12}] {target.name}: {measured}{detail}")
            continue
        mark = {True: "met", False: "NOT MET", None: "not measured"}[target.met]
        sign = "<=" if target.kind == "max" else ">="
        lines.append(f"  [{mark:>12}] {target.name}: {measured} {sign} {target.limit:g}{detail}")
    return "\n".join(lines)


def run_script(script: str, config: dict, what: str) -> dict:
    """Run a bench module as a script in a fresh process (its TensorFlow threads fixed before TF starts)
    with ``config`` in a JSON file; the JSON it prints. ``what`` names it in the error of a failed run."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(config, file)
        file.flush()
        env = {**os.environ, "PYTHONPATH": str(Path(script).resolve().parents[1])}
        done = subprocess.run([sys.executable, script, file.name], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"bench: {what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)

