"""madlib_dl's settings: custom GUCs under ``madlib_dl.`` that users change with SET, ALTER DATABASE or
postgresql.conf, no restart needed. Values are read and checked when a function needs them, so a bad
value gives an error naming the setting."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from madlib_dl.errors import InvalidArgument

GIB = 1 << 30


def machine_segments() -> int:
    """Default number of virtual segments: one per CPU this server may use, but at most one per
    2 GiB of memory (each training worker holds TensorFlow and its segment's data)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(cpus, memory // (2 * GIB)))


@dataclass(frozen=True)
class Setting:
    name: str
    default: Callable[[], int]
    minimum: int
    maximum: int
    meaning: str


NUM_SEGMENTS = Setting("madlib_dl.num_segments", machine_segments, 1, 1024,
                       "virtual segments a packed table is spread over with distribution_rules 'all_segments'")
SHUFFLE_SEED = Setting("madlib_dl.shuffle_seed", lambda: 0, -(2**63), 2**63 - 1,
                       "seed of the training preprocessor's shuffle (same seed and data: same packed table)")

ALL = (NUM_SEGMENTS, SHUFFLE_SEED)


def parse_int(setting: Setting, text: str | None) -> int:
    """The setting's value from its text; unset or empty means the default."""
    if text is None or not text.strip():
        return setting.default()
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or not setting.minimum <= value <= setting.maximum:
        raise InvalidArgument(f"setting {setting.name}: expected an integer from {setting.minimum} to "
                              f"{setting.maximum}, got {text!r} (RESET {setting.name} for the default)")
    return value


def read(db, setting: Setting) -> int:
    rows = db.execute("SELECT current_setting($1, true) AS value", [setting.name], ["text"])
    return parse_int(setting, rows[0]["value"])
