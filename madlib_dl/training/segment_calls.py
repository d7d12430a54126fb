"""The calls a driver sends to the backend serving a segment: which segment's backend runs it, the
request (segment.requests: the one definition of its arguments) and what the driver needs back.

A hop on a segment whose examples are cached there says so (``read_table`` False), and the backend
runs the aggregate over one row of NULL data instead of reading the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from madlib_dl.packed_tables import PackedTable
from madlib_dl.segment import requests


@dataclass(frozen=True)
class SegmentCall:
    segment: int          # whose backend runs it
    request: Any          # a segment.requests request
    tag: Any = None       # what the driver needs back with the result


@dataclass(frozen=True)
class TrainHop:
    iteration: int
    mst_key: int
    segment: int
    kind: str = "train"


@dataclass(frozen=True)
class EvaluateHop:
    iteration: int
    mst_key: int
    segment: int
    kind: str  # 'train' or 'validation' (or 'test' for madlib_keras_evaluate): the run's table evaluated


def table_ref(table: PackedTable) -> requests.TableRef:
    return requests.TableRef(table.table.schema, table.table.name, table.dependent, table.independent,
                             table.table.oid, table.distributed, table.keyed, table.dependents, table.independents)


def begin_calls(segments, run_id: str, schema: str, tables: dict[str, PackedTable], models: dict) -> list[SegmentCall]:
    """``models``: mst_key -> anything with model_arch, compile_params and fit_params."""
    run = requests.BeginRun(run_id, schema, {k: table_ref(t) for k, t in tables.items()},
                            {k: model_constants(m) for k, m in models.items()})
    return [SegmentCall(s, run) for s in segments]


def model_constants(model) -> requests.ModelConstants:
    """``model``: anything with model_arch, compile_params and fit_params (and object_table)."""
    return requests.ModelConstants(model.model_arch, model.compile_params, getattr(model, "fit_params", None),
                                   getattr(model, "object_table", None))


def fit_call(table: PackedTable, hop: TrainHop, run_id: str, state, seed: int, use_caching: bool,
             read_table: bool, is_final_call: bool, overwrite_state: bool = False, constants=None,
             tag=None) -> SegmentCall:
    """``state``: (weights, optimizer_state); no optimizer state: a fresh optimizer. ``overwrite_state``:
    the state is this model's alone (it came back from its last hop), so the hop may write over it.
    ``constants``: the model's, when the backend has not had them (a model begun after BeginRun)."""
    request = requests.Fit(run_id, "train", hop.segment, hop.mst_key, seed, table.segments[hop.segment].images,
                           use_caching, read_table, is_final_call, state[0], state[1],
                           overwrite_state=overwrite_state, constants=constants)
    return SegmentCall(hop.segment, request, hop if tag is None else tag)


def evaluate_call(table: PackedTable, hop: EvaluateHop, worker_segment: int, run_id: str, weights: bytes,
                  use_caching: bool, read_table: bool, is_final_call: bool, constants=None,
                  tag=None) -> SegmentCall:
    request = requests.Evaluate(run_id, hop.kind, hop.segment, hop.kind, hop.mst_key,
                                table.segments[hop.segment].images, use_caching, read_table, is_final_call, weights,
                                constants=constants)
    return SegmentCall(worker_segment, request, hop if tag is None else tag)


def release_call(segment: int, run_id: str | None) -> SegmentCall:
    return SegmentCall(segment, requests.Release(run_id))


def initial_weights_call(segment: int, model_arch: str, seed: int, model_id: int) -> SegmentCall:
    return SegmentCall(segment, requests.InitialWeights(model_arch, seed), tag=model_id)


def count_rows_call(segment: int, table: PackedTable) -> SegmentCall:
    return SegmentCall(segment, requests.CountRows(table_ref(table)))
