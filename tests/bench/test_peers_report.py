"""bench/peers.py's verdicts and tables, and what peer_tools.py reads (pure, no server): the search's
ratios against plain Keras, KerasTuner and Ray Tune, its accuracy spread, the big workload's time
outside hops, and the decoding of array_send bytes and CPU from /proc."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import peer_tools  # noqa: E402
import peers  # noqa: E402

NAMES = [peers.config_name(*c) for c in peers.configurations("search")]


def _run(seconds, cpu, accuracy=0.8, **extra):
    return {"seconds": seconds, "cpu_seconds": cpu, "accuracy": {n: accuracy for n in NAMES},
            "phases": {"import": 1.0, "read": 1.0, "train": seconds - 2.0}, **extra}


def _ours(seconds, cpu, accuracy=0.8):
    return {"seconds": seconds, "cpu_seconds": cpu, "accuracy": {n: accuracy for n in NAMES},
            "preprocess_seconds": 3.0, "call_seconds": seconds - 3.0, "outside_hops_seconds": 4.0}


def _search(ours=100.0, keras1=200.0, tuner=150.0, ray=160.0, cpu=190.0, spread=0.0):
    runs = {"madlib_dl": _ours(ours, cpu), "madlib_dl, default metrics": _ours(ours * 1.1, cpu * 1.1),
            "keras 1 thread": _run(keras1, 195.0), "keras 2 threads": _run(keras1 * 0.7, 270.0),
            "kerastuner": _run(tuner, 280.0, 0.8 + spread), "ray tune": _run(ray, 300.0)}
    return {"runs": runs, "configurations": NAMES}


def test_the_four_configurations_are_two_cnns_by_two_learning_rates():
    assert peers.configurations("search") == [("cnn64", 1e-3), ("cnn64", 3e-4), ("cnn14", 1e-3), ("cnn14", 3e-4)]
    assert peers.configurations("big") == [("dense29m", lr) for lr in peers.BIG_RATES]
    assert peers.learning_rate(peers.compile_params(3e-4)) == 3e-4
    assert peers.learning_rate("loss='x', optimizer='Adam(learning_rate=0.001)'") == 0.001


def test_search_targets_compare_the_running_only_run_with_each_peer():
    found = {t.name: t for t in peers.search_targets(_search())}
    keras = found["search: madlib_dl wall / (Keras 1 process, 1 thread / 2)"]
    assert keras.measured == pytest.approx(1.0) and keras.met
    assert found["search: madlib_dl wall / kerastuner"].measured == pytest.approx(100 / 150)
    assert found["search: madlib_dl wall / kerastuner"].met
    assert found["search: madlib_dl wall / ray tune"].met
    assert found["search: madlib_dl CPU / Keras 1 thread CPU"].measured == pytest.approx(190 / 195)
    info = found["search: madlib_dl with the default training_metrics / with 'running_only' (wall)"]
    assert info.kind == "info" and info.measured == pytest.approx(1.1)
    slow = {t.name: t.met for t in peers.search_targets(_search(ours=120.0, tuner=150.0, cpu=210.0))}
    assert slow["search: madlib_dl wall / (Keras 1 process, 1 thread / 2)"] is False
    assert slow["search: madlib_dl wall / kerastuner"] is False
    assert slow["search: madlib_dl CPU / Keras 1 thread CPU"] is False


def test_the_accuracy_spread_is_the_largest_gap_of_one_configuration_across_tools():
    result = _search(spread=0.03)
    result["runs"]["ray tune"]["accuracy"][NAMES[0]] = 0.7
    spread = peers.accuracy_spread(result["runs"])
    assert spread[NAMES[0]]["spread"] == pytest.approx(0.13) and spread[NAMES[1]]["spread"] == pytest.approx(0.03)
    (target,) = [t for t in peers.search_targets(result) if "spread" in t.name]
    assert target.measured == pytest.approx(0.13) and target.met is False
    text = peers.search_table(result)
    assert all(name in text for name in NAMES) and "0.1300" in text and "ray tune" in text


def test_big_targets_judge_the_wall_and_the_time_outside_hops_by_the_state_written():
    ours = {**_ours(110.0, 200.0), "state_bytes": 700_000_000, "outside_hops_seconds": 3.0,
            "before_hops_seconds": 2.0, "after_hops_seconds": 1.0, "hops": 8, "train_hops": 8,
            "hop_span_seconds": 104.0, "hops_keras_seconds": 200.0}
    result = {"runs": {"madlib_dl": ours, "keras 2 threads": _run(100.0, 190.0)}}
    found = {t.name: t for t in peers.big_targets(result)}
    assert found["big: madlib_dl wall / Keras 1 process, 2 threads"].measured == pytest.approx(1.1)
    outside = found["big: the call's time outside its hops, s"]
    assert outside.limit == pytest.approx(2.0 + 1.4) and outside.met
    assert "madlib_dl" in peers.big_table(result) and "state written 668 MiB" in peers.big_table(result)


def test_hop_span_splits_the_call_into_before_during_and_after_the_hops():
    hops = [{"kind": "train", "started": 12.0, "ended": 20.0, "seconds": 7.0, "overhead": 1.0},
            {"kind": "evaluate validation", "started": 20.0, "ended": 25.0, "seconds": 4.0, "overhead": 1.0}]
    span = peers.hop_span(hops, 10.0, 26.0)
    assert span["hop_span_seconds"] == 13.0 and span["outside_hops_seconds"] == 3.0
    assert (span["before_hops_seconds"], span["after_hops_seconds"], span["train_hops"]) == (2.0, 1.0, 1)
    assert peers.hop_span([], 0.0, 1.0)["outside_hops_seconds"] is None


def test_array_send_bytes_decode_to_the_values_copy_wrote():
    x, y = peers.search_data(3)
    copied = peers.copy_binary(x, y).getvalue()
    start = 19 + 2 + 8 + 4  # the COPY header, a row's field count, its id (length, value), the array's length
    first = copied[start: start + 12 + 8 * 3 + 8 * 3072]  # the array as array_send writes it
    decoded = peer_tools.decode_float4_arrays([first, first])
    assert decoded.shape == (2, 32, 32, 3) and np.array_equal(decoded[0], x[0])


def test_the_process_tree_is_a_process_and_its_descendants():
    table = {1: (0, 10, 1.0), 2: (1, 11, 2.0), 3: (2, 12, 3.0), 4: (0, 13, 4.0), 5: (4, 14, 5.0)}
    assert sorted(peer_tools.tree(1, table)) == [1, 2, 3] and peer_tools.tree(5, table) == [5]


def test_tree_cpu_counts_this_process_but_not_its_sampler():
    cpu = peer_tools.TreeCpu()
    started = time.process_time()
    while time.process_time() - started < 0.3:
        pass
    seconds = cpu.seconds()
    assert 0.2 < seconds < 0.3 + 0.2 and cpu.sampler_seconds >= 0
    assert peers.proc_stat(os.getpid())[1] > 0 and peers.proc_stat(10 ** 9) is None
