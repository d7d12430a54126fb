"""What a training run is given, as plain values: the packed tables, the models, the options.

The API module builds a :class:`RunSpec` after checking every argument; the driver, the executors and
the output writer read it and never look at user text again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from madlib_dl.identifiers import TableName
from madlib_dl.packed_tables import PackedTable, SegmentStats  # noqa: F401 (part of a run spec)
from madlib_dl.segment.requests import ObjectTable


@dataclass(frozen=True)
class ModelConfig:
    """One model selection tuple with where its training starts."""
    mst_key: int
    model_id: int
    model_arch: str
    compile_params: str
    fit_params: str
    weights: bytes | None = None          # warm start or transfer learning; None: seeded initial weights
    optimizer_state: bytes | None = None  # warm start from our own output; None: a fresh optimizer
    object_table: ObjectTable | None = None  # the custom functions compile_params names (checked, by OID)


@dataclass(frozen=True)
class OutputTables:
    model: TableName
    summary: TableName
    info: TableName
    text: str


@dataclass(frozen=True)
class Caller:
    """The SQL function a run serves, as its NOTICEs and pg_stat_activity name it."""
    function: str            # 'madlib_keras_fit_multiple_model'
    label: str               # application_name 'madlib_dl <label>: iteration i/n'
    one_model: bool = False  # NOTICEs give the model's values without naming an mst_key
    output_argument: str = "model_output_table"  # the argument naming the model table


FIT_MULTIPLE = Caller("madlib_keras_fit_multiple_model", "fit_multiple")
FIT = Caller("madlib_keras_fit", "fit", one_model=True, output_argument="model")


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    schema: str                  # where the extension's functions live
    source: PackedTable
    validation: PackedTable | None
    models: tuple[ModelConfig, ...]
    num_iterations: int
    metrics_compute_frequency: int
    use_caching: bool | None     # None (one model: fit): cache when the run fits the memory budget, else
                                 # read one segment at a time (driver.plan_memory)
    use_gpus: bool
    seed: int
    caller: Caller = FIT_MULTIPLE
    iteration_offset: int = 0    # iterations trained before (warm start): seeds continue after them
    output_table: TableName | None = None  # the model table the run will write (its state's size is checked)

    def metrics_iteration(self, iteration: int) -> bool:
        return iteration % self.metrics_compute_frequency == 0 or iteration == self.num_iterations


def derive_seed(*parts: int) -> int:
    """A seed for TensorFlow/numpy (0 .. 2**31-1) from integers, stable across processes and versions."""
    words = [p & (2**64 - 1) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)
