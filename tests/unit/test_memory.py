"""The memory check: cached data plus every model on every worker must fit the budget."""

import pytest

from madlib_dl.errors import InvalidArgument
from madlib_dl.training.memory import (
    GIB, KIB, MIB, MemoryEstimate, check, estimate, format_bytes, model_bytes, suggested_budget_mib)


def test_model_bytes_counts_weights_gradients_and_slots():
    assert model_bytes(1000) == 4000  # Adam: weights, gradients, 2 slots
    assert model_bytes(1000, optimizer_slots=1) == 3000
    assert model_bytes(1000, optimizer_slots=0) == 2000
    with pytest.raises(ValueError):
        model_bytes(-1)
    with pytest.raises(ValueError):
        model_bytes(10, optimizer_slots=-1)


def test_estimate_arithmetic():
    e = estimate({0: 100, 1: 300, 2: 200}, {0: 50, 1: 10, 2: 250}, [10, 20], use_caching=True)
    # per worker: compiled models 40 + 80, plus the largest state (60) arriving and leaving during a hop;
    # the driver: both states (30 + 60) and the largest again, arriving
    assert e == MemoryEstimate(data_bytes=910, largest_segment_bytes=450, model_bytes_per_worker=120 + 2 * 60,
                               workers=3, use_caching=True, driver_bytes=30 + 60 + 60, segments=3)
    assert e.total_bytes == 910 + 3 * 240 + 150
    # the run chose one worker for the three segments: it holds the models once
    one = estimate({0: 100, 1: 300, 2: 200}, {0: 50, 1: 10, 2: 250}, [10, 20], use_caching=True, workers=1)
    assert (one.workers, one.segments, one.total_bytes) == (1, 3, 910 + 240 + 150)


def test_estimate_without_validation_or_models():
    e = estimate({5: 7, 9: 3}, {}, [], use_caching=False)
    assert (e.data_bytes, e.largest_segment_bytes, e.model_bytes_per_worker, e.workers) == (10, 7, 0, 2)
    assert e.use_caching is False
    assert e.total_bytes == 10


def test_estimate_without_caching_counts_the_same_data():
    args = ({0: 100, 1: 300}, {0: 40, 1: 60}, [8])
    cached, uncached = estimate(*args, use_caching=True), estimate(*args, use_caching=False)
    assert cached.total_bytes == uncached.total_bytes == 500 + 2 * (32 + 2 * 24) + 2 * 24


def test_estimate_refuses_nonsense():
    with pytest.raises(ValueError, match="training_bytes"):
        estimate({}, {}, [10], True)
    with pytest.raises(ValueError, match="validation_bytes"):
        estimate({0: 1}, {0: -1}, [10], True)


def test_check_passes_at_exactly_the_budget_and_fails_one_byte_over():
    e = MemoryEstimate(data_bytes=1000, largest_segment_bytes=600, model_bytes_per_worker=50, workers=2)
    check(e, 1100)
    check(e, 5000)
    with pytest.raises(InvalidArgument):
        check(e, 1099)


def test_check_message_names_the_numbers_and_the_setting():
    e = MemoryEstimate(data_bytes=int(2.9 * GIB), largest_segment_bytes=int(0.8 * GIB),
                       model_bytes_per_worker=80 * MIB, workers=4, use_caching=True, driver_bytes=20 * MIB)
    with pytest.raises(InvalidArgument) as raised:
        check(e, 2048 * MIB)
    assert str(raised.value) == (
        "use_caching: the run needs about 3.2 GiB (cached data 2.9 GiB over 4 segments, largest 819 MiB; "
        "models 80 MiB per worker x 4 workers; model states in the driver 20 MiB) but the memory budget madlib_dl.memory_budget_mb is "
        "2048 MiB")
    assert raised.value.hint == ("Raise it (SET madlib_dl.memory_budget_mb = 4096), use fewer segments, or run with "
                                 "use_caching => FALSE.")


def test_check_message_without_caching_drops_the_caching_hint():
    e = MemoryEstimate(data_bytes=3 * MIB, largest_segment_bytes=3 * MIB, model_bytes_per_worker=512,
                       workers=1, use_caching=False)
    with pytest.raises(InvalidArgument) as raised:
        check(e, 2 * MIB, setting="my.budget")
    message = str(raised.value)
    assert message == (
        "memory: the run needs about 3.0 MiB (data 3.0 MiB over 1 segment, largest 3.0 MiB; "
        "models 512 B per worker x 1 worker) but the memory budget my.budget is 2 MiB")
    assert raised.value.hint == "Raise it (SET my.budget = 1024) or use fewer segments."
    assert "use_caching" not in message + raised.value.hint


@pytest.mark.parametrize("total, suggested", [
    (1, 1024), (1024 * MIB, 1024), (1024 * MIB + 1, 2048), (int(3.2 * GIB), 4096), (20 * GIB, 20480)])
def test_suggested_budget_is_whole_gib_that_fits(total, suggested):
    assert suggested_budget_mib(total) == suggested
    assert suggested * MIB >= total


def test_check_refuses_a_negative_budget():
    with pytest.raises(ValueError):
        check(MemoryEstimate(0, 0, 0, 1), -1)


@pytest.mark.parametrize("n, text", [
    (0, "0 B"),
    (512, "512 B"),
    (1023, "1023 B"),
    (1024, "1.0 KiB"),
    (3 * KIB, "3.0 KiB"),
    (3 * KIB + 51, "3.0 KiB"),   # 3.0498 KiB
    (3 * KIB + 52, "3.1 KiB"),   # 3.0508 KiB
    (10188, "9.9 KiB"),          # 9.9492 KiB
    (10189, "10 KiB"),           # 9.9502 KiB rounds to 10.0: one decimal only below 10
    (10 * KIB + 511, "10 KiB"),
    (10 * KIB + 512, "11 KiB"),  # halves round up
    (1023 * KIB + 511, "1023 KiB"),
    (1023 * KIB + 512, "1.0 MiB"),  # rounds to 1024 KiB: next unit
    (80 * MIB, "80 MiB"),
    (int(3.2 * GIB), "3.2 GiB"),
    (int(0.8 * GIB), "819 MiB"),
    (1 << 40, "1.0 TiB"),
    (5000 << 40, "5000 TiB"),
])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_format_bytes_refuses_negative():
    with pytest.raises(ValueError):
        format_bytes(-1)
