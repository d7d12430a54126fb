"""bench/state_write.py's report: the sizes are the issue's models, MB/s counts the write and its
commit, the median run is reported with the best beside it, memory as growth over the backend's own
memory before the write, and a call's time outside hops against the issue's target (pure, no server)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import state_write  # noqa: E402


def _write(seconds, cpu=1.0, commit=0.0, peak=300e6, before=50e6):
    return {"size": "353", "state_bytes": 706e6, "write_seconds": seconds, "cpu_seconds": cpu,
            "steps": {"UPDATE model_weights": seconds / 3, "INSERT side-table part": seconds / 2},
            "statement_seconds": seconds + 1, "commit_seconds": commit, "wal_bytes": 756e6,
            "own_peak_bytes": peak, "own_before_bytes": before, "peak_before_bytes": before,
            "largest_value_bytes": 117_637_160}


def test_sizes_are_a_third_weights_and_two_thirds_adam():
    for weights, optimizer in state_write.SIZES.values():
        assert optimizer == 2 * weights
    weights, optimizer = state_write.SIZES["353"]
    assert weights == 4 * (32 * 32 * 3 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10)  # Flatten-4096-4096-10
    assert round((weights + optimizer) / 1e6) == 353


def test_the_median_run_is_reported_in_mb_per_second_with_the_best_and_the_largest_growth():
    writes = [_write(4.0, commit=0.02), _write(2.0, peak=200e6), _write(3.5, commit=0.03)]
    lines = state_write._write_lines("checkout", writes)
    assert lines[0].startswith("  checkout: 3.53 s = 200 MB/s, median of 3 (write 3.50 s")
    assert "best 2.00 s = 353 MB/s" in lines[0]
    assert "peak +250 MB (largest value 118 MB)" in lines[0]  # the largest growth of the runs, over 50 MB before
    assert lines[1] == "    steps: INSERT side-table part 1.75 s, UPDATE model_weights 1.17 s; outside statements 0.58 s"


def test_a_call_is_held_against_two_seconds_plus_the_state_at_500_mb_per_second():
    run = {"wall_seconds": 12.0, "before_first_hop": 4.0, "hop_span": 3.0, "after_last_hop": 5.0,
           "state_bytes": 706e6, "own_peak_bytes": 287e6}
    line = state_write._call_line(run)
    assert "outside hops 9.00 s, target 2 s + 706 MB / 500 MB/s = 3.41 s" in line
    result = {"sizes": {}, "calls": {"checkout": [run, dict(run, after_last_hop=4.0), dict(run, after_last_hop=6.0)]}}
    assert "checkout, median of 3: wall 12.00 s" in state_write.table(result)
