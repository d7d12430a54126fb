"""The statements a driver sends to a segment's backend: set-up, one training hop, one evaluation,
release. Every value is a bound parameter; table and column names are quoted identifiers.

A hop on a segment whose examples are cached passes NULL data in a single row, so the table is not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from madlib_dl.packed_tables import PackedTable


@dataclass(frozen=True)
class SegmentCall:
    segment: int          # which worker runs it
    sql: str              # with $1.. parameters
    args: tuple
    types: tuple
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
    kind: str  # 'train' or 'validation'


_FIT_TYPES = ("text", "integer", "integer", "text", "text", "text", "bytea", "bytea", "bigint", "bigint",
              "boolean", "boolean")
_EVALUATE_TYPES = ("text", "integer", "text", "integer", "text", "text", "bytea", "bigint", "boolean", "boolean")


def _aggregate_sql(db, schema: str, aggregate: str, table: PackedTable, segment_arg: str, params: list[str],
                   read_table: bool) -> str:
    q = db.quote_ident
    fn = f"{q(schema)}.{q(aggregate)}"
    args = ", ".join(params)
    if read_table:
        data = (f"{q(table.dependent)}, {q(table.independent)}, {q(table.dependent + '_shape')}, "
                f"{q(table.independent + '_shape')}")
        inner = (f"SELECT {fn}({data}, {args} ORDER BY buffer_id) AS r FROM {table.table.sql(db)} "
                 f"WHERE __dist_key__ = {segment_arg}")
    else:
        inner = f"SELECT {fn}(NULL::bytea, NULL::bytea, NULL::integer[], NULL::integer[], {args}) AS r"
    return f"SELECT (s.r).* FROM ({inner} OFFSET 0) s"


def fit_call(db, schema: str, table: PackedTable, hop: TrainHop, run_id: str, model, state, seed: int,
             use_caching: bool, read_table: bool, is_final_call: bool) -> SegmentCall:
    """``model``: a ModelConfig; ``state``: (weights, optimizer_state); no optimizer state: a fresh optimizer."""
    params = [f"${i}" for i in range(1, len(_FIT_TYPES) + 1)]
    sql = _aggregate_sql(db, schema, "fit_step_multiple_model", table, "$2", params, read_table)
    args = (run_id, hop.segment, hop.mst_key, model.model_arch, model.compile_params, model.fit_params, state[0],
            state[1], seed, table.segments[hop.segment].images, use_caching, is_final_call)
    return SegmentCall(hop.segment, sql, args, _FIT_TYPES, hop)


def evaluate_call(db, schema: str, table: PackedTable, hop: EvaluateHop, worker_segment: int, run_id: str,
                  model, weights: bytes, use_caching: bool, read_table: bool, is_final_call: bool) -> SegmentCall:
    params = [f"${i}" for i in range(1, len(_EVALUATE_TYPES) + 1)]
    sql = _aggregate_sql(db, schema, "internal_keras_evaluate", table, "$2", params, read_table)
    args = (run_id, hop.segment, hop.kind, hop.mst_key, model.model_arch, model.compile_params, weights,
            table.segments[hop.segment].images, use_caching, is_final_call)
    return SegmentCall(worker_segment, sql, args, _EVALUATE_TYPES, hop)


def init_call(db, schema: str, segment: int, run_id: str, threads: int | None, device,
              worker_session: bool = False) -> SegmentCall:
    """``device``: a placement.WorkerDevice; ``worker_session``: a session the driver opened (JIT off)."""
    q = db.quote_ident
    return SegmentCall(segment, f"SELECT {q(schema)}.internal_fit_worker_init($1, $2, $3, $4, $5) AS pid",
                       (run_id, threads, device.cuda_visible_devices, device.memory_limit_mib, worker_session),
                       ("text", "integer", "text", "integer", "boolean"))


def release_call(db, schema: str, segment: int, run_id: str) -> SegmentCall:
    return SegmentCall(segment, f"SELECT {db.quote_ident(schema)}.internal_fit_release($1) AS released",
                       (run_id,), ("text",))


def initial_weights_call(db, schema: str, segment: int, model_arch: str, seed: int, model_id: int) -> SegmentCall:
    return SegmentCall(segment, f"SELECT {db.quote_ident(schema)}.internal_model_initial_weights($1, $2) AS weights",
                       (model_arch, seed), ("text", "bigint"), tag=model_id)
