"""bench/report.py and bench/run.py's summaries: verdicts follow the measurements (pure, no server)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import report  # noqa: E402
import run  # noqa: E402

MIB = report.MIB
SMALL_CACHING = ["small, S=1: caching off / caching on", "small, S=2: caching off / caching on",
                 "small, S=1: caching on / caching off", "small, S=2: caching on / caching off"]


def _run(workers, caching, wall, overhead=5.0, peak=700 * MIB, cache=1 * MIB, growth=0):
    return {"workers_count": workers, "caching": caching, "wall_seconds": wall, "hop_overhead_ms": overhead,
            "hop_overhead_later_ms": overhead, "fit_seconds": wall / 2, "setup_seconds": 1.0, "teardown_seconds": 0.1,
            "workers": [{"segment": s, "peak_bytes": peak, "cache_bytes": cache, "growth_bytes": growth,
                         "hops_measured": 10} for s in range(workers)]}


def _workload(keras, walls, two=None, **kw):
    """``two``: the per-process training seconds of plain Keras as two concurrent processes (none: an
    older result without them)."""
    runs = {report.variant(s, c): _run(s, c, walls[(s, c)], **kw) for (s, c) in walls}
    result = {"description": "test", "keras": {"seconds": keras, "cpu_seconds": keras, "peak_bytes": 650 * MIB},
              "loop": {"seconds": keras / 2, "peak_bytes": 640 * MIB}, "runs": runs}
    if two is not None:
        result["keras_2proc"] = {"seconds": max(two), "processes": [
            {"seconds": seconds, "cpu_seconds": seconds / 2, "peak_bytes": (600 + i) * MIB, "part": [i, len(two)]}
            for i, seconds in enumerate(two)]}
    return result


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
    assert found["small: per-hop overhead, ms (worst run)"].met is False


def test_caching_ratios_are_information_on_small_and_targets_on_compute():
    """A digits segment is 230 KB: caching saves nothing there, so its ratios are information (issue 26);
    on compute the wall ratio and what caching removes from a later hop's overhead are targets."""
    walls = {(1, True): 10.0, (1, False): 11.0, (2, True): 9.0, (2, False): 8.0}
    small = _by_name(report.targets({"small": _workload(10.0, walls)}))
    for name in SMALL_CACHING:
        assert small[name].kind == "info" and small[name].met is None, name
    assert small["small, S=1: caching off / caching on"].measured == pytest.approx(1.1)
    assert not [name for name in small if "per-hop overhead after the first iteration" in name]
    workload = _workload(100.0, {(1, True): 100.0, (1, False): 104.0, (2, True): 55.0, (2, False): 50.0})
    for label, overhead in ((report.variant(1, True), 12.0), (report.variant(1, False), 300.0),
                            (report.variant(2, True), 200.0), (report.variant(2, False), 300.0)):
        workload["runs"][label]["hop_overhead_later_ms"] = overhead
    compute = _by_name(report.targets({"compute": workload}))
    assert compute["compute, S=2: caching on / caching off"].met is False  # caching on was slower
    assert compute["compute, S=1: caching on / caching off"].met is True
    cached = "compute, S={}: per-hop overhead after the first iteration, caching on / off"
    assert compute[cached.format(1)].measured == pytest.approx(0.04) and compute[cached.format(1)].met
    assert compute[cached.format(2)].measured == pytest.approx(2 / 3) and compute[cached.format(2)].met is False


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
    assert worker["hops_measured"] == 2 and worker["growth_from_iteration"] == 1


def test_memory_growth_is_measured_over_the_second_half_of_the_iterations():
    # warm-up in iterations 1-2 (+50 MiB), then +1 MiB per iteration: the second half sees only the latter
    own = {1: 600, 2: 650, 3: 651, 4: 652, 5: 653, 6: 654}
    hops = [{"kind": "train", "iteration": i, "segment": 0, "pid": 10, "started": 100.0 * i, "ended": 100.0 * i + 1,
             "seconds": 1.0, "overhead": 0.0, "peak": 900 * MIB, "shared": 100 * MIB, "rss": (own[i] + 100) * MIB}
            for i in own]
    worker = run.worker_memory(0, hops, 5 * MIB)
    assert worker["growth_from_iteration"] == 3 and worker["hops_measured"] == 3
    assert worker["growth_bytes"] == 3 * MIB  # after iteration 6 minus after iteration 3
    assert worker["peak_bytes"] == 800 * MIB


CEILING = "{}: keras 2 processes / (keras / 2) (the machine's own ceiling for S=2)"
VERSUS_TWO = "{}, caching on, S=2: wall / keras 2 processes"


def test_two_process_keras_gives_informational_lines_never_counted_as_met():
    walls = {(1, True): 100.0, (1, False): 104.0, (2, True): 80.0, (2, False): 82.0}
    found = report.targets({"compute": _workload(100.0, walls, two=(64.0, 60.0)),
                            "small": _workload(10.0, walls={(1, True): 10.0, (1, False): 20.0, (2, True): 9.0,
                                                            (2, False): 18.0}, two=(6.0, 7.5))})
    by_name = _by_name(found)
    assert by_name[CEILING.format("compute")].measured == pytest.approx(64.0 / 50.0)   # the slower process
    assert by_name[CEILING.format("compute")].detail == ("2 processes 64.00 s, keras 1 process 100.00 s; "
                                                         "CPU s 32.00 + 30.00 against 100.00")
    assert by_name[VERSUS_TWO.format("compute")].measured == pytest.approx(80.0 / 64.0)
    assert by_name[CEILING.format("small")].measured == pytest.approx(7.5 / 5.0)
    assert by_name[VERSUS_TWO.format("small")].measured == pytest.approx(9.0 / 7.5)
    info = [t for t in found if t.kind == "info" and t.name not in SMALL_CACHING]
    expected = [line.format(name) for line in (CEILING, VERSUS_TWO) for name in ("compute", "small")]
    assert sorted(t.name for t in info) == sorted(expected)
    assert all(t.met is None and t.as_dict()["met"] is None for t in found if t.kind == "info")
    # the targets themselves are unchanged by the extra lines
    assert by_name["compute, caching on, S=2: wall / (keras / 2)"].measured == pytest.approx(1.6)
    assert by_name["compute, caching on, S=2: wall / (keras / 2)"].met is False
    text = report.verdicts(found)
    for target in info:
        line = next(line for line in text.splitlines() if target.name in line)
        assert line.startswith("  [        info] ") and f": {target.measured:.3g}" in line
        assert "met" not in line.lower() and "<=" not in line and ">=" not in line
    assert text.count("[        info]") == 4 + 4  # and small's 4 caching ratios
    assert text.count("NOT MET") == sum(t.met is False for t in found)


def test_info_lines_are_skipped_for_results_without_two_process_keras():
    walls = {(1, True): 100.0, (1, False): 104.0, (2, True): 55.0, (2, False): 58.0}
    found = report.targets({"compute": _workload(100.0, walls), "small": _workload(10.0, walls)})
    assert not [t for t in found if "2 processes" in t.name]
    assert [t.name for t in found if t.kind == "info"] == SMALL_CACHING
    assert "keras, 2 procs" not in report.table("compute", _workload(100.0, walls))


def test_info_line_without_an_s2_run_is_unmeasured_but_still_info():
    result = _workload(10.0, {(1, True): 10.0, (1, False): 11.0}, two=(6.0, 6.0))
    found = _by_name(report.targets({"small": result}))
    assert found[CEILING.format("small")].measured == pytest.approx(1.2)
    versus = found[VERSUS_TWO.format("small")]
    assert versus.measured is None and versus.met is None
    assert "[        info] " + VERSUS_TWO.format("small") + ": -" in report.verdicts([versus])


def test_table_prints_two_process_keras_against_keras_divided_by_two():
    walls = {(1, True): 10.0, (1, False): 12.0, (2, True): 6.0, (2, False): 7.0}
    text = report.table("compute", _workload(10.0, walls, two=(6.5, 6.0)))
    row = next(line for line in text.splitlines() if "keras, 2 procs" in line)
    assert row.split()[3:] == ["6.50", "5.00", "1.30", "601"]  # wall, keras / 2, ratio, the larger process peak
    lines = text.splitlines()
    peak_column_end = lines[1].index("worker peak MiB") + len("worker peak MiB")
    for line, peak in ((row, "601"), (lines[2], "650"), (next(l for l in lines if "our loop" in l), "640")):
        assert line.endswith(peak) and len(line) == peak_column_end, line  # peaks in their column


def test_progress_cost_is_the_median_ratio_of_alternating_runs():
    (target,) = report._progress_cost({"on": [10.7, 10.0, 30.0], "off": [10.0, 9.9, 10.1]})
    assert target.measured == pytest.approx(10.7 / 10.0) and target.limit == report.PROGRESS_COST
    assert target.met is False  # 7 % more
    (target,) = report._progress_cost({"on": [10.4, 9.9], "off": [10.0, 9.95]})
    assert target.met is True  # 2 % more: within the recorder's cost
    assert report._progress_cost(None) == [] and report._progress_cost({"on": [], "off": [1.0]}) == []


def test_automl_targets_compare_time_and_accuracy_with_the_grid():
    import automl

    runs = {"grid": {"wall_seconds": 100.0, "validation_accuracy": 0.98},
            "hyperband": {"wall_seconds": 39.0, "validation_accuracy": 0.975},
            "asha": {"wall_seconds": 41.0, "validation_accuracy": 0.965}}
    verdicts = {t.name: t.met for t in automl.targets({"runs": runs})}
    assert verdicts == {"automl: hyperband time / grid time": True,
                        "automl: hyperband validation accuracy - (grid's - 0.01)": True,
                        "automl: asha time / grid time": False,
                        "automl: asha validation accuracy - (grid's - 0.01)": False}


def test_automl_checkpoint_cost_is_reported_as_a_ratio_to_asha():
    import automl

    runs = {"grid": {"wall_seconds": 100.0, "validation_accuracy": 0.98},
            "hyperband": {"wall_seconds": 39.0, "validation_accuracy": 0.975},
            "asha": {"wall_seconds": 40.0, "validation_accuracy": 0.975},
            "asha_checkpoints": {"wall_seconds": 44.0, "validation_accuracy": 0.975, "model_iterations": 96}}
    (cost,) = [t for t in automl.targets({"runs": runs}) if "checkpoint" in t.name]
    assert cost.kind == "info" and cost.met is None
    assert abs(cost.measured - 1.1) < 1e-9 and "about 12 checkpoints" in cost.detail
