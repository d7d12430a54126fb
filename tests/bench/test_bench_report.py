"""bench/report.py and bench/run.py's summaries: verdicts follow the measurements (pure, no server)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import report  # noqa: E402
import run  # noqa: E402

MIB = report.MIB


def _run(workers, caching, wall, overhead=5.0, peak=700 * MIB, cache=1 * MIB, growth=0):
    return {"workers_count": workers, "caching": caching, "wall_seconds": wall, "hop_overhead_ms": overhead,
            "hop_overhead_later_ms": overhead, "fit_seconds": wall / 2, "setup_seconds": 1.0, "teardown_seconds": 0.1,
            "workers": [{"segment": s, "peak_bytes": peak, "cache_bytes": cache, "growth_bytes": growth,
                         "hops_after_first": 10} for s in range(workers)]}


def _workload(keras, walls, **kw):
    runs = {report.variant(s, c): _run(s, c, walls[(s, c)], **kw) for (s, c) in walls}
    return {"description": "test", "keras": {"seconds": keras, "peak_bytes": 650 * MIB},
            "loop": {"seconds": keras / 2, "peak_bytes": 640 * MIB}, "runs": runs}


def _by_name(found):
    return {t.name: t for t in found}


def test_compute_targets_use_keras_divided_by_workers():
    walls = {(1, True): 100.0, (1, False): 104.0, (2, True): 55.0, (2, False): 58.0}
    found = _by_name(report.targets({"compute": _workload(100.0, walls)}))
    ratio = found["compute, caching on, S=2: wall / (keras / 2)"]
    assert ratio.measured == pytest.approx(1.1) and ratio.met
    speedup = found["compute, caching on: speed-up S=2 over S=1"]
    assert speedup.measured == pytest.approx(100 / 55) and speedup.met
    assert found["compute, S=2: caching on / caching off"].met


def test_small_targets_fail_when_the_ratios_are_missed():
    walls = {(1, True): 10.0, (1, False): 11.0, (2, True): 9.0, (2, False): 8.0}
    found = _by_name(report.targets({"small": _workload(10.0, walls, overhead=25.0)}))
    assert found["small, caching on, S=2: wall / (keras / 2)"].measured == pytest.approx(1.8)
    assert found["small, caching on, S=2: wall / (keras / 2)"].met is False
    assert found["small, S=1: caching off / caching on"].measured == pytest.approx(1.1)
    assert found["small, S=1: caching off / caching on"].met is False
    assert found["small, S=2: caching on / caching off"].met is False  # caching on was slower
    assert found["small: per-hop overhead, ms (worst run)"].met is False


def test_memory_targets_compare_with_keras_peak_plus_cache_and_check_growth():
    walls = {(1, True): 1.0, (1, False): 1.0, (2, True): 1.0, (2, False): 1.0}
    fine = report.targets({"small": _workload(1.0, walls, peak=660 * MIB, cache=10 * MIB, growth=1 * MIB)})
    memory = [t for t in fine if "peak /" in t.name or "growth" in t.name]
    assert len(memory) == 2 * (1 + 2)  # peak and growth for each worker of the two caching-on runs
    assert all(t.met for t in memory)
    worse = report.targets({"small": _workload(1.0, walls, peak=700 * MIB, cache=10 * MIB, growth=100 * MIB)})
    assert not any(t.met for t in worse if "peak /" in t.name or "growth" in t.name)


def test_flat_allows_small_growth_only():
    assert report.flat(2 * MIB, 700 * MIB)
    assert not report.flat(30 * MIB, 700 * MIB)
    assert report.flat(None, 1) is None


def test_unmeasured_targets_are_reported_as_such():
    target = report.Target("x", None, 1.0, "max")
    assert target.met is None and "not measured" in report.verdicts([target])


def test_table_prints_every_run_and_the_ratio_to_the_limit():
    walls = {(1, True): 10.0, (1, False): 12.0, (2, True): 6.0, (2, False): 7.0}
    text = report.table("compute", _workload(10.0, walls))
    for label in ("keras, 1 process", "our loop", "S=1 caching on", "S=2 caching off"):
        assert label in text
    assert "1.20" in text  # S=2 caching on: 6 s against a 5 s limit


def test_summarize_splits_hops_and_measures_memory_per_worker():
    hops = []
    for iteration in (1, 2, 3):
        for segment in (0, 1):
            base = 1000.0 + iteration * 10 + segment
            hops.append({"kind": "train", "iteration": iteration, "segment": segment, "pid": 10 + segment,
                         "started": base, "ended": base + 1, "seconds": 1.0, "overhead": 0.004 * iteration,
                         "peak": (800 + iteration) * MIB, "shared": 100 * MIB, "rss": (600 + iteration) * MIB})
    hops.append({"kind": "evaluate train", "iteration": 3, "segment": 0, "pid": 10, "started": 1040.0,
                 "ended": 1040.5, "seconds": 0.5, "overhead": 0.002, "peak": 803 * MIB, "shared": 100 * MIB,
                 "rss": 603 * MIB})
    summary = run.summarize(hops, 999.0, 1041.0, 2, True, {0: 5 * MIB, 1: 5 * MIB}, 0.5)
    assert summary["train_hops"] == 6 and summary["evaluate_calls"] == 1
    assert summary["hop_overhead_ms"] == pytest.approx(8.0)          # mean of 4, 8, 12 ms
    assert summary["hop_overhead_later_ms"] == pytest.approx(10.0)   # iterations 2 and 3
    assert summary["setup_seconds"] == pytest.approx(1000.0 + 10 - 999.0)
    assert summary["teardown_seconds"] == pytest.approx(0.5)
    worker = summary["workers"][0]
    assert worker["peak_bytes"] == 703 * MIB            # VmHWM minus shared buffers
    assert worker["growth_bytes"] == 2 * MIB            # own RSS after iteration 3 minus after iteration 1
    assert worker["hops_after_first"] == 2
