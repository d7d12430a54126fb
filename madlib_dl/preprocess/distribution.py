"""``distribution_rules``: how many virtual segments a packed table is spread over on PostgreSQL."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from madlib_dl.errors import InvalidArgument, NotSupported

ALL_SEGMENTS = "all_segments"
GPU_SEGMENTS = "gpu_segments"
MAX_SEGMENTS = 1024


@dataclass(frozen=True)
class Distribution:
    rule: str          # recorded in the summary table: 'all_segments', 'gpu_segments' or the count
    segments: int


def resolve(text: str | None, all_segments: Callable[[], int], gpu_count: Callable[[], int]) -> Distribution:
    """NULL or 'all_segments' → the madlib_dl.num_segments setting; 'gpu_segments' → one segment per GPU;
    a count such as '3' → exactly that many segments."""
    rule = (text or ALL_SEGMENTS).strip()
    if rule.lower() == ALL_SEGMENTS:
        return Distribution(ALL_SEGMENTS, all_segments())
    if rule.lower() == GPU_SEGMENTS:
        gpus = gpu_count()
        if gpus < 1:
            raise InvalidArgument("distribution_rules: 'gpu_segments' needs GPUs, and this host has none",
                                  hint="Use 'all_segments' or a number of segments.")
        return Distribution(GPU_SEGMENTS, gpus)
    if rule.isdigit():
        count = int(rule)
        if not 1 <= count <= MAX_SEGMENTS:
            raise InvalidArgument(f"distribution_rules: expected a number of segments from 1 to {MAX_SEGMENTS}, "
                                  f"got {rule}")
        return Distribution(str(count), count)
    if rule.lstrip("+-").isdigit():
        raise InvalidArgument(f"distribution_rules: expected a number of segments from 1 to {MAX_SEGMENTS}, got {rule}")
    if _TABLE_NAME.match(rule):  # MADlib's third form: a table whose dbid column lists Greenplum segments
        raise NotSupported(
            f"distribution_rules: {rule[:80]!r} as a table of Greenplum segment ids (dbid) only has a meaning on "
            "Greenplum; on PostgreSQL segments are virtual: give their number instead, such as '3' (one per dbid "
            "the table lists), or 'all_segments'")
    raise NotSupported(
        f"distribution_rules: expected 'all_segments', 'gpu_segments' or a number of segments such as '3', got "
        f"{rule[:80]!r} (a table of Greenplum segment ids only has a meaning on Greenplum)")


_TABLE_NAME = re.compile(r'^(?:[A-Za-z_][\w$]*|"[^"]+")(?:\.(?:[A-Za-z_][\w$]*|"[^"]+"))?$')
