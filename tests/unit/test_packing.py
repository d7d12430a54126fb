"""Buffer planning, encoding and distribution rules: pure functions, no database."""

import numpy as np
import pytest

from madlib_dl import settings
from madlib_dl.errors import InvalidArgument, NotSupported
from madlib_dl.preprocess import distribution, packing


@pytest.mark.parametrize("rows,segments,feature_size,buffer_size,sizes", [
    (150, 1, 4, None, [150]),                 # default: one buffer per segment
    (150, 3, 4, None, [50, 50, 50]),
    (10, 3, 4, None, [4, 3, 3]),              # start at ceil(10/3)=4 rows → 3 buffers, sizes within one row
    (150, 3, 4, 20, [17] * 6 + [16] * 3),     # 20 → 3*ceil(150/20/3)=9 buffers
    (150, 4, 4, 1000, [38, 38, 37, 37]),      # a big buffer_size still gives every segment a buffer
    (2, 3, 4, None, [1, 1]),                  # fewer rows than segments: no empty buffers
    (1000, 2, 2_500_000, None, [3] * 332 + [2] * 2),  # 32 MiB cap: 3 rows of 10 MB → 334 buffers
    (10, 1, 25_000_000, None, [1] * 10),               # a row over the cap: one row per buffer
])
def test_plan_follows_madlibs_rule(rows, segments, feature_size, buffer_size, sizes):
    plan = packing.plan_buffers(rows, segments, feature_size, buffer_size)
    assert list(plan.sizes) == sizes
    assert plan.buffer_size == max(sizes)


@pytest.mark.parametrize("rows", [1, 2, 7, 150, 1797])
@pytest.mark.parametrize("segments", [1, 2, 3, 8])
@pytest.mark.parametrize("buffer_size", [None, 1, 5, 64, 10_000])
def test_every_row_once_and_segments_balanced(rows, segments, buffer_size):
    plan = packing.plan_buffers(rows, segments, 64, buffer_size)
    bounds = list(plan.bounds())
    assert [b[0] for b in bounds] == list(range(len(plan.sizes)))
    assert bounds[0][1] == 0 and bounds[-1][2] == rows
    assert all(prev[2] == nxt[1] for prev, nxt in zip(bounds, bounds[1:]))
    assert min(plan.sizes) >= 1 and max(plan.sizes) - min(plan.sizes) <= 1
    per_segment = np.bincount([plan.dist_key(b) for b, _, _ in bounds], minlength=segments)
    assert per_segment.max() - per_segment.min() <= 1
    assert len(plan.sizes) % segments == 0 or len(plan.sizes) == rows  # capped: never an empty buffer


def test_default_buffer_is_capped_at_32_mib_of_features():
    plan = packing.plan_buffers(20_000, 1, 1000, None)  # start at 8,388 rows of 4,000 bytes → 3 buffers
    assert plan.sizes == (6667, 6667, 6666)
    assert plan.buffer_size * 1000 * 4 <= packing.DEFAULT_BUFFER_BYTES


def test_a_buffer_too_big_for_a_bytea_is_refused():
    with pytest.raises(InvalidArgument, match="buffer_size: 1 rows of 200000000 features is more than 512 MiB"):
        packing.plan_buffers(10, 1, 200_000_000, None)


def test_normalize_divides_in_double_then_stores_float32():
    x = np.array([[1, 2, 255]], dtype=np.float64)
    out = packing.normalize(x, 255.0)
    assert out.dtype == np.dtype("<f4")
    assert out.tolist() == np.float32(x / 255.0).tolist()
    assert packing.normalize(x, 1.0).tolist() == [[1.0, 2.0, 255.0]]


def test_one_hot_and_padding():
    assert packing.one_hot(np.array([2, 0, 1]), 4).tolist() == [[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0]]
    assert packing.one_hot(np.array([0]), 1).dtype == np.dtype("<i2")
    padded = packing.pad_classes(np.array([[0, 1], [1, 0]]), 3)
    assert padded.tolist() == [[0, 1, 0], [1, 0, 0]] and padded.dtype == np.dtype("<i2")


def test_encode_decode_round_trip_keeps_shape_and_is_little_endian():
    images = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8, 1) / 7
    blob, shape = packing.encode(images, packing.FEATURE_DTYPE)
    assert shape == [2, 8, 8, 1] and len(blob) == 2 * 64 * 4
    assert blob[:8] == np.array([0, 1 / 7], dtype="<f4").tobytes()
    assert np.array_equal(packing.decode(blob, shape, packing.FEATURE_DTYPE), images)
    labels, lshape = packing.encode(np.array([[0, 1], [1, 0]]), packing.LABEL_DTYPE)
    assert labels == b"\x00\x00\x01\x00\x01\x00\x00\x00" and lshape == [2, 2]
    with pytest.raises(InvalidArgument, match="packed buffer: 8 bytes, but shape \\[3, 2\\] needs 12"):
        packing.decode(labels, [3, 2], packing.LABEL_DTYPE)


SEGMENTS = lambda: 6  # noqa: E731
NO_GPUS = lambda: 0  # noqa: E731


@pytest.mark.parametrize("text,rule,segments", [
    (None, "all_segments", 6), ("all_segments", "all_segments", 6), (" ALL_SEGMENTS ", "all_segments", 6),
    ("3", "3", 3), ("1", "1", 1), (" 12 ", "12", 12), ("1024", "1024", 1024),
])
def test_distribution_rules(text, rule, segments):
    assert distribution.resolve(text, SEGMENTS, NO_GPUS) == distribution.Distribution(rule, segments)


def test_gpu_segments_is_one_segment_per_gpu():
    assert distribution.resolve("gpu_segments", SEGMENTS, lambda: 2) == distribution.Distribution("gpu_segments", 2)
    with pytest.raises(InvalidArgument, match="'gpu_segments' needs GPUs, and this host has none"):
        distribution.resolve("gpu_segments", SEGMENTS, NO_GPUS)


@pytest.mark.parametrize("text,error,message", [
    ("0", InvalidArgument, "from 1 to 1024, got 0"), ("1025", InvalidArgument, "got 1025"),
    ("-1", InvalidArgument, "got -1"), ("dbid_table", NotSupported, "only has a meaning on Greenplum"),
    ("public.dbids", NotSupported, "give their number instead, such as '3' \\(one per dbid the table lists\\)"),
    ("3.5", NotSupported, "got '3.5'"),
])
def test_bad_distribution_rules(text, error, message):
    with pytest.raises(error, match=f"distribution_rules: .*{message}"):
        distribution.resolve(text, SEGMENTS, NO_GPUS)


def test_settings_parse_and_default():
    assert settings.parse_int(settings.NUM_SEGMENTS, "4") == 4
    assert settings.parse_int(settings.NUM_SEGMENTS, None) == settings.machine_segments() >= 1
    assert settings.parse_int(settings.NUM_SEGMENTS, "") == settings.machine_segments()
    assert settings.parse_int(settings.SHUFFLE_SEED, "-3") == -3
    for bad in ("0", "x", "1.5", "2000"):
        with pytest.raises(InvalidArgument, match=f"setting madlib_dl.num_segments: expected an integer from 1 to 1024, got '{bad}'"):
            settings.parse_int(settings.NUM_SEGMENTS, bad)


def test_the_closing_notice_says_what_was_made_and_why_the_buffers_have_that_size():
    plan = packing.plan_buffers(1437, 2, 64, 100)  # 100 rows asked: 15 buffers would not split evenly
    assert packing.describe(plan, 100) == ("1437 rows in 16 buffers of 89 to 90 rows over 2 segments "
                                           "(buffer_size 100 became 90 so that every segment holds the same "
                                           "number of buffers (8))")
    assert packing.describe(packing.plan_buffers(1000, 2, 64, 250), 250) == (
        "1000 rows in 4 buffers of 250 rows over 2 segments (buffer_size 250, 2 buffers per segment)")
    assert packing.describe(packing.plan_buffers(1437, 2, 64), None) == (
        "1437 rows in 2 buffers of 718 to 719 rows over 2 segments (buffer_size NULL: one buffer per segment)")
    assert packing.describe(packing.plan_buffers(3000, 2, 8 << 20 >> 2), None) == (  # 8 MiB of features a row
        "3000 rows in 750 buffers of 4 rows over 2 segments (buffer_size NULL: 375 buffers per segment, each under "
        "32 MiB of features)")
    assert packing.describe(packing.plan_buffers(2, 3, 4), None) == (
        "2 rows in 2 buffers of 1 row over 3 segments (fewer rows than segments: 1 segment holds none)")


@pytest.mark.parametrize("text", ["1_000", "010", "0x10", "١٢", "4.0", "4 5"])
def test_a_setting_is_plain_decimal_as_postgres_and_the_c_check_read_it(text):
    with pytest.raises(InvalidArgument, match=f"setting madlib_dl.num_segments: expected an integer from 1 to 1024"):
        settings.parse_int(settings.NUM_SEGMENTS, text)
    assert settings.parse_int(settings.NUM_SEGMENTS, " 12 ") == 12 and settings.parse_int(settings.FIT_SEED, "-7") == -7
