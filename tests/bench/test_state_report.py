"""bench/state.py's verdicts: the per-hop target counts the hops after each worker's first (model
set-up is reported apart), the limit grows with the state, the driver's peak has its own limit, and the
warm start of the largest model must train (pure, no server)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import report  # noqa: E402
import state  # noqa: E402


def _run(size, overheads, peak, warm=None):
    hops = [{"iteration": 1 + i // 2, "segment": i % 2, "seconds": 0.5, "overhead": o} for i, o in enumerate(overheads)]
    run = {"size": size.name, "parameters": size.parameters, "state_bytes": size.state_bytes, "wall_seconds": 3.0,
           "hops": hops, "driver_peak_bytes": peak, "keras_hop_seconds": [0.4] * len(hops)}
    if warm is not None:
        run.update(warm_start_seconds=1.0, warm_start_hops=warm, stored_parts=3, stored_optimizer_bytes=3 << 20)
    return run


def _targets(runs):
    return {t.name: t for t in state.targets({"runs": runs})}


def test_sizes_are_the_ones_named():
    assert [round(s.parameters, -6) for s in state.SIZES] == [1e6, 10e6, 30e6, 100e6, 140e6]
    assert state.SIZES[-1].name == state.WARM_START


def test_later_hops_are_judged_against_a_limit_that_grows_with_the_state():
    size = state.SIZES[1]  # 10M: 120 MB of state, limit 5 + 120 ms
    found = _targets([_run(size, [2.0, 2.0, 0.100, 0.110], peak=400e6)])
    later = found["state 10M: per-hop overhead after the first hops, ms (mean)"]
    assert abs(later.measured - 105.0) < 1e-9 and abs(later.limit - (5 + size.state_bytes / 1e6)) < 1e-9 and later.met
    assert abs(found["state 10M: overhead of the first hops (model set-up), ms (mean)"].measured - 2000.0) < 1e-9
    assert found["state 10M: driver peak, MiB"].met  # 400 MB <= 300 MB + 1.2 x 120 MB
    slow = _targets([_run(size, [0.1, 0.1, 0.2, 0.2], peak=500e6)])
    assert not slow["state 10M: per-hop overhead after the first hops, ms (mean)"].met
    assert not slow["state 10M: driver peak, MiB"].met


def test_the_warm_start_must_train():
    size = state.SIZES[-1]
    assert _targets([_run(size, [1, 1, 1, 1], 1e9, warm=2)])["state 140M: warm start trains (hops)"].met
    assert not _targets([_run(size, [1, 1, 1, 1], 1e9, warm=0)])["state 140M: warm start trains (hops)"].met


def test_the_table_has_a_line_per_size():
    runs = [_run(s, [0.5, 0.5, 0.01, 0.02], 200e6) for s in state.SIZES[:2]]
    lines = state.table({"runs": runs}).splitlines()
    assert len(lines) == 3 and lines[1].split("|")[0].strip() == "1M" and "10M" in lines[2]
    assert report.verdicts(state.targets({"runs": runs})).startswith("targets:")


def test_the_median_run_counts_when_a_size_is_repeated():
    size = state.SIZES[0]
    runs = [_run(size, [1, 1, o, o], 100e6) for o in (0.050, 0.010, 0.020)]
    chosen = state.median_run(runs)
    assert chosen["hops"] == runs[2]["hops"] and [round(m) for m in chosen["later_means_ms"]] == [50, 10, 20]
    assert state.repeats(state.SIZES[0]) == state.REPEATS and state.repeats(state.SIZES[-1]) == 1
