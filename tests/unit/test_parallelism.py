"""training.parallelism: how many workers and threads a run gets, for the models and machine at hand."""

from __future__ import annotations

import json

import pytest

from madlib_dl.training import parallelism
from madlib_dl.training.parallelism import LARGE_MODEL_PARAMS, RunShape, choose


def _shape(**given) -> RunShape:
    values = dict(cpus=2, segments=2, models_at_once=4, largest_params=370_000)
    values.update(given)
    return RunShape(**values)


def test_small_models_get_one_single_thread_worker_per_cpu():
    chosen = choose(_shape())
    assert (chosen.workers, chosen.threads) == (2, 1)
    assert "one thread per worker" in chosen.reason


def test_more_segments_than_cpus_share_the_workers():
    """A table packed over 8 segments no longer starts 8 workers on 2 CPUs."""
    assert (choose(_shape(segments=8)).workers, choose(_shape(segments=8)).threads) == (2, 1)
    assert (choose(_shape(cpus=16, segments=8)).workers, choose(_shape(cpus=16, segments=8)).threads) == (4, 4)


def test_one_model_at_a_time_gets_one_worker_with_every_cpu():
    chosen = choose(_shape(models_at_once=1, segments=4, cpus=8))
    assert (chosen.workers, chosen.threads) == (1, 8)
    assert "one model" in chosen.reason


def test_a_large_model_trains_with_several_threads_per_worker():
    two = choose(_shape(largest_params=LARGE_MODEL_PARAMS))
    assert (two.workers, two.threads) == (1, 2)
    assert "memory bandwidth" in two.reason
    sixteen = choose(_shape(cpus=16, segments=16, models_at_once=8, largest_params=29_400_000))
    assert (sixteen.workers, sixteen.threads) == (4, 4)
    assert (choose(_shape(largest_params=LARGE_MODEL_PARAMS - 1)).workers) == 2


def test_unknown_sizes_are_treated_as_small():
    assert (choose(_shape(largest_params=None)).workers, choose(_shape(largest_params=None)).threads) == (2, 1)


def test_settings_force_the_choice():
    forced = choose(_shape(forced_workers=1))
    assert (forced.workers, forced.threads) == (1, 2) and forced.reason == "madlib_dl.training_workers"
    both = choose(_shape(forced_workers=2, forced_threads=3, largest_params=10**8))
    assert (both.workers, both.threads) == (2, 3)
    threads = choose(_shape(forced_threads=2))
    assert (threads.workers, threads.threads) == (1, 2) and threads.reason == "madlib_dl.worker_threads"
    assert choose(_shape(forced_workers=9)).workers == 2  # never more workers than segments


def test_gpus_keep_one_worker_per_segment():
    chosen = choose(_shape(gpus=True, segments=4, cpus=16, largest_params=10**8))
    assert (chosen.workers, chosen.threads) == (4, 4)


def test_never_more_workers_than_hops_can_run_at_once():
    assert choose(_shape(models_at_once=3, cpus=16, segments=8)).workers == 3
    assert choose(_shape(models_at_once=5, cpus=16, segments=2)).workers == 2


def _dense(units: int) -> str:
    return json.dumps({"class_name": "Sequential", "config": {"name": "d", "layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, 3072], "dtype": "float32", "name": "in"}},
        {"class_name": "Dense", "config": {"name": "h", "units": units, "use_bias": True}},
        {"class_name": "Dense", "config": {"name": "o", "units": 10, "use_bias": True}}]}})


def test_largest_params_counts_from_the_json():
    small, large = _dense(10), _dense(4096)
    assert parallelism.largest_params([small, large, small]) == 3072 * 4096 + 4096 + 4096 * 10 + 10
    assert parallelism.largest_params([small, "{not json"]) is None


@pytest.mark.parametrize("workers", [1, 3])
def test_the_text_says_the_choice_and_why(workers):
    text = parallelism.Parallelism(workers, 1, "why").text()
    assert text.startswith(f"{workers} worker") and text.endswith("(why)")
