"""Packed tables on disk: creating the packed table and its summary, reading the source examples in a
fixed order, and writing the buffers. Used by the preprocessors; the layout is described in docs/preprocessing.md."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from madlib_dl import binary_arrays, catalog, handoff, identifiers
from madlib_dl.catalog import Column
from madlib_dl.citus import placement
from madlib_dl.errors import InvalidArgument, NotSupported, ObjectMissing
from madlib_dl.identifiers import TableName
from madlib_dl.preprocess import distribution, packing

# Type categories (pg_type.typcategory) of label columns that are one-hot encoded.
LABEL_CATEGORIES = {"S": "text", "N": "number", "B": "boolean", "E": "enum"}


@dataclass(frozen=True)
class Source:
    table: TableName
    text: str
    dependent: Column
    independent: Column

    @property
    def one_hot(self) -> bool:
        """Numeric-array labels are taken as already one-hot."""
        return self.dependent.is_numeric_array


@dataclass(frozen=True)
class Output:
    table: TableName
    summary: TableName
    text: str
    dependent: str
    independent: str

    @property
    def class_values(self) -> str:
        return f"{self.dependent}_class_values"


@dataclass(frozen=True)
class Labels:
    """How labels become one-hot vectors: ``levels`` distinct classes, padded to ``num_classes``."""
    num_classes: int
    levels: int
    one_hot: bool


@dataclass(frozen=True)
class Features:
    rows: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Packing:
    source: Source
    output: Output
    labels: Labels
    features: Features
    normalizing_const: float
    distribution: distribution.Distribution
    plan: packing.BufferPlan
    shuffle_seed: int | None  # None: keep the source order (validation)
    class_values: tuple[TableName, str] | None  # (summary, column) giving the label order; None: one-hot
    class_values_type: str  # SQL type of the summary's class values column
    # On Citus worker nodes (citus.placement): True, or the training table a validation table goes beside
    citus_nodes: bool | TableName = False
    # False: the summary's num_classes is {}, as MADlib writes it for one-hot array labels packed without a
    # num_classes argument (readers take the count from the labels' _shape, see describe)
    record_num_classes: bool = True


def _create_tables(conn, p: Packing) -> None:
    out = p.output
    q = conn.quote_ident
    conn.execute(f"CREATE TABLE {out.table.sql(conn)} (__dist_key__ INTEGER, {q(out.independent)} BYTEA, "
                 f"{q(out.dependent)} BYTEA, {q(out.independent + '_shape')} INTEGER[], "
                 f"{q(out.dependent + '_shape')} INTEGER[], buffer_id INTEGER)")
    catalog.store_uncompressed(conn, out.table, (out.independent, out.dependent))
    # format_type() spells catalog types as valid SQL, so the type name can go into the statement.
    class_type = p.class_values_type
    conn.execute(f"CREATE TABLE {out.summary.sql(conn)} (source_table TEXT, output_table TEXT, "
                 f"dependent_varname TEXT[], independent_varname TEXT[], dependent_vartype TEXT[], "
                 f"{q(out.class_values)} {class_type}, buffer_size INTEGER, normalizing_const REAL, "
                 f"num_classes INTEGER[], distribution_rules TEXT, num_segments INTEGER)")


def _summary_values(p: Packing, normalizing_const: float) -> tuple[list, list[str]]:
    values = [p.source.text, p.output.text, [p.output.dependent], [p.output.independent], [p.source.dependent.type],
              p.plan.buffer_size, normalizing_const, [p.labels.num_classes] if p.record_num_classes else [],
              p.distribution.rule,
              p.distribution.segments]
    types = ["text", "text", "text[]", "text[]", "text[]", "integer", "real", "integer[]", "text", "integer"]
    return values, types


def _write_summary(conn, p: Packing, normalizing_const: float, class_values_sql: str) -> None:
    """``class_values_sql``: a query (no parameters) giving the ``<dep>_class_values`` array."""
    values, types = _summary_values(p, normalizing_const)
    placeholders = [f"${i}" for i in range(1, len(values) + 1)]
    sql = (f"INSERT INTO {p.output.summary.sql(conn)} SELECT {', '.join(placeholders[:5])}, ({class_values_sql}), "
           f"{', '.join(placeholders[5:])}")
    conn.execute(sql, values, types)


def training_class_values_sql(conn, p: Packing) -> str:
    """Distinct labels in sort order (NULL, a class like any other, first), then NULLs up to num_classes.
    NULL first means trailing NULLs are always padding."""
    if p.labels.one_hot:
        return "NULL"
    dep = conn.quote_ident(p.source.dependent.name)
    padding = int(p.labels.num_classes - p.labels.levels)  # our own count, not user text
    return (f"SELECT array_agg(v ORDER BY k, v NULLS FIRST) FROM ("
            f"SELECT DISTINCT {dep} AS v, 0 AS k FROM {p.source.table.sql(conn)} "
            f"UNION ALL SELECT NULL, g FROM generate_series(1, {padding}) g) levels")


# Rows are read in batches of about this many bytes of array_send output.
READ_BATCH_BYTES = 16 << 20


def _rows_sql(conn, p: Packing) -> tuple[str, list, list]:
    """The source rows in the order they are packed, features as ``array_send`` bytes.

    The order depends on the rows' content only, so the same data packs the same way however it is
    stored: sorted by an MD5 of the feature bytes (prefixed with the shuffle seed for training, so that
    the order is a reproducible shuffle, and another seed another shuffle), then by label. The sort key is
    16 bytes: the feature arrays are never compared, and only carried."""
    q = conn.quote_ident
    dep, indep, src = q(p.source.dependent.name), q(p.source.independent.name), p.source.table.sql(conn)
    if p.labels.one_hot:
        label, join = f"s.{dep}::double precision[]", ""
    else:
        summary, column = p.class_values
        label = f"array_position(l.cv[1:{p.labels.levels}], s.{dep}) - 1"
        join = f" CROSS JOIN (SELECT {q(column)} AS cv FROM {summary.sql(conn)}) l"
    features = f"s.{indep}" if p.source.independent.type in binary_arrays.ELEMENT_OIDS else \
        f"s.{indep}::double precision[]"
    seed = b"" if p.shuffle_seed is None else p.shuffle_seed.to_bytes(8, "big", signed=True)
    sql = (f"SELECT y, xb FROM (SELECT {label} AS y, array_send({features}) AS xb FROM {src} s{join} OFFSET 0) r "
           "ORDER BY md5($1::bytea || xb)::uuid, y")
    return sql, [seed], ["bytea"]


def _element_oid(p: Packing) -> int:
    """float4 for real[] features, float8 for the others (other numeric types are cast to it)."""
    return binary_arrays.ELEMENT_OIDS.get(p.source.independent.type, binary_arrays.FLOAT8_OID)


def _rows(conn, p: Packing):
    """(features normalised to float32, labels one-hot int16) of the source rows in packing order,
    a batch at a time."""
    layout = binary_arrays.Layout(p.features.size, _element_oid(p))
    row_bytes = 12 + 8 * len(p.features.shape) + p.features.size * (4 + layout.width)
    sql, args, types = _rows_sql(conn, p)
    for batch in conn.batches(sql, args, types, size=max(1, READ_BATCH_BYTES // row_bytes)):
        try:
            raw = binary_arrays.decode([r["xb"] for r in batch], layout, len(p.features.shape))
        except binary_arrays.RowProblem as problem:
            raise _bad_features(p, f" (a row {problem.reason})") from None
        yield _checked_features(p, raw), _labels(p, [r["y"] for r in batch])


def _checked_features(p: Packing, raw: np.ndarray) -> np.ndarray:
    if not np.isfinite(raw).all():
        raise _bad_features(p)
    return packing.normalize(raw, p.normalizing_const).reshape(len(raw), *p.features.shape)


def _bad_features(p: Packing, detail: str = "") -> InvalidArgument:
    return InvalidArgument(f"independent_varname: column {p.source.independent.name!r} of {p.source.table} has "
                           f"NULL, NaN or infinite values inside feature arrays{detail}; clean or filter those rows")


def _labels(p: Packing, values: list) -> np.ndarray:
    if not p.labels.one_hot:
        return packing.one_hot(np.asarray(values, dtype=np.int64), p.labels.num_classes)
    labels = np.asarray(values, dtype=np.float64)
    if not np.isin(labels, (0.0, 1.0)).all():
        raise InvalidArgument(f"dependent_varname: one-hot label arrays in column {p.source.dependent.name!r} "
                              "must hold only 0 and 1 (they are stored as 16-bit integers)")
    return packing.pad_classes(labels, p.labels.num_classes)


class _BufferWriter:
    """Fills the plan's buffers in order from batches of rows, writing each as soon as it is full: at
    most one buffer and one batch are in memory, whatever the table's size."""

    def __init__(self, conn, p: Packing, schema: str):
        self.conn, self.p = conn, p
        self.bounds = list(p.plan.bounds())
        # the features go in handed over (madlib_dl.handoff), not bound: one copy of the buffer fewer
        self.sql = (f"INSERT INTO {p.output.table.sql(conn)} VALUES ($2, {handoff.taking(schema, conn.quote_ident)}, "
                    "$3, $4, $5, $6)")
        self.index, self.filled = 0, 0
        self.x = self.y = None

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        start = 0
        while start < len(x):
            if self.index >= len(self.bounds):
                self._changed()
            if self.x is None:
                _, first, end = self.bounds[self.index]
                self.x = np.empty((end - first, *self.p.features.shape), dtype=packing.FEATURE_DTYPE)
                self.y = np.empty((end - first, self.p.labels.num_classes), dtype=packing.LABEL_DTYPE)
            take = min(len(x) - start, len(self.x) - self.filled)
            self.x[self.filled:self.filled + take] = x[start:start + take]
            self.y[self.filled:self.filled + take] = y[start:start + take]
            self.filled, start = self.filled + take, start + take
            if self.filled == len(self.x):
                self._write()

    def _write(self) -> None:
        buffer_id = self.bounds[self.index][0]
        x, x_shape = packing.encode(self.x, packing.FEATURE_DTYPE)
        self.x = None  # the array and its bytes are not both kept past this point
        y, y_shape = packing.encode(self.y, packing.LABEL_DTYPE)
        with handoff.handed_over(x) as token:
            del x
            self.conn.execute(self.sql, [token, self.p.plan.dist_key(buffer_id), y, x_shape, y_shape, buffer_id],
                              ["text", "integer", "bytea", "integer[]", "integer[]", "integer"])
        self.index, self.filled, self.y = self.index + 1, 0, None

    def finish(self) -> None:
        if self.index != len(self.bounds) or self.x is not None:
            self._changed()

    def _changed(self):
        raise InvalidArgument(f"source_table: {self.p.source.table} changed while it was being packed",
                              hint="Try again.")


def pack(conn, p: Packing, normalizing_const: float, class_values_sql: str) -> None:
    """Create the packed table and its summary (recording ``normalizing_const`` as given) and fill them."""
    _create_tables(conn, p)
    if p.citus_nodes:
        beside = p.citus_nodes if isinstance(p.citus_nodes, TableName) else None
        p = replace(p, plan=replace(p.plan, keys=placement.distribute(conn, p.output.table, p.plan.segments, beside)))
    _write_summary(conn, p, normalizing_const, class_values_sql)
    writer = _BufferWriter(conn, p, catalog.extension_schema(conn))
    for x, y in _rows(conn, p):
        writer.add(x, y)
    writer.finish()


# ---------------------------------------------------------------------------------------------------
# Reading what a packed table holds (training functions)

# num_classes and num_segments are not required: MADlib's own preprocessor writes no num_segments (and older
# versions no num_classes); both can be derived from the packed table itself.
SUMMARY_COLUMNS = ("dependent_varname", "independent_varname", "normalizing_const")
PREPROCESS_HINT = "pack it with training_preprocessor_dl() (or validation_preprocessor_dl() for validation data)"
DIST_KEY = "__dist_key__"
INTEGER_TYPES = ("smallint", "integer", "bigint")  # buffer_id: MADlib's older preprocessor wrote smallint


@dataclass(frozen=True)
class SegmentStats:
    buffers: int
    images: int
    cache_bytes: int  # the segment's examples as a worker holds them: float32 features and labels


@dataclass(frozen=True)
class PackedTable:
    """A table made by training_preprocessor_dl or validation_preprocessor_dl, and its summary."""
    table: TableName
    summary: TableName
    text: str                    # the name as the caller wrote it
    dependent: str               # column names in the packed table
    independent: str
    class_values_column: str
    class_values: tuple | None   # None: one-hot labels were packed as given
    num_classes: int
    normalizing_const: float
    feature_shape: tuple[int, ...]
    num_segments: int
    segments: dict[int, SegmentStats] = field(default_factory=dict)  # __dist_key__ -> stats
    distributed: bool = False    # a Citus distributed table (citus.placement)
    # False: no __dist_key__ column (MADlib's preprocessor on PostgreSQL writes none): the whole table is
    # segment 0, as MADlib treats it on PostgreSQL
    keyed: bool = True

    @property
    def images(self) -> int:
        return sum(s.images for s in self.segments.values())


def segment_key_sql(keyed: bool) -> str:
    """The SQL expression giving a row's segment in a packed table."""
    return DIST_KEY if keyed else "0"


def describe(conn, text: str | None, argument: str) -> PackedTable:
    """A packed table and its summary, checked: both exist, have the preprocessor's columns, and hold data."""
    table = catalog.input_table(conn, text, argument)
    summary = identifiers.summary_table(table, argument)
    if not identifiers.table_exists(conn, summary):
        raise ObjectMissing(f"{argument}: {text!r} has no summary table {str(summary)!r}; it is not a packed table "
                            f"({PREPROCESS_HINT})")
    catalog.require_select(conn, summary, argument, text, companion=True)
    row = _summary_row(conn, summary, argument, text)
    dependent, independent = row["dependent_varname"][0], row["independent_varname"][0]
    keyed = _check_packed_columns(conn, table, text, argument, dependent, independent)
    segments = _segment_stats(conn, table, dependent, independent, keyed)
    if not segments:
        raise InvalidArgument(f"{argument}: packed table {text!r} is empty")
    class_column = f"{dependent}_class_values"
    class_values = row.get(class_column)
    num_segments = row.get("num_segments")
    return PackedTable(
        table=table, summary=summary, text=text, dependent=dependent, independent=independent,
        class_values_column=class_column, class_values=tuple(class_values) if class_values is not None else None,
        num_classes=num_classes(conn, table, row, dependent, text, argument),
        normalizing_const=float(row["normalizing_const"]),
        feature_shape=_feature_shape(conn, table, independent, text, argument),
        num_segments=int(num_segments) if num_segments is not None else len(segments), segments=segments,
        distributed=placement.is_distributed(conn, table), keyed=keyed)


def num_classes(conn, table: TableName, row: dict, dependent: str, text: str, argument: str) -> int:
    """The summary's num_classes, or, where it records none (MADlib writes {} for one-hot array labels
    packed without a num_classes argument), the width of the packed one-hot labels."""
    recorded = row.get("num_classes")
    if recorded and recorded[0] is not None:
        return int(recorded[0])
    column = conn.quote_ident(dependent + "_shape")
    rows = conn.execute(f"SELECT DISTINCT {column}[2] AS width FROM {table.sql(conn)}")
    widths = sorted(r["width"] for r in rows if r["width"] is not None)
    if len(widths) != 1:
        raise InvalidArgument(f"{argument}: the summary of {text!r} gives no num_classes and its label buffers "
                              f"have {'no' if not widths else 'different'} class counts {widths}; {PREPROCESS_HINT}")
    return int(widths[0])


def _summary_row(conn, summary: TableName, argument: str, text: str) -> dict:
    present = catalog.columns(conn, summary)
    missing = [c for c in SUMMARY_COLUMNS if c not in present]
    if missing:
        raise InvalidArgument(f"{argument}: summary {summary} of {text!r} lacks column(s) {', '.join(missing)}; "
                              f"{PREPROCESS_HINT}")
    rows = conn.execute(f"SELECT * FROM {summary.sql(conn)}")
    if len(rows) != 1:
        raise InvalidArgument(f"{argument}: summary {summary} of {text!r} must have exactly one row, has {len(rows)}")
    row = rows[0]
    for name in ("dependent_varname", "independent_varname", "num_classes"):
        if name == "num_classes" and not row.get(name):  # absent or {}: derived (num_classes())
            continue
        if not row[name] or len(row[name]) != 1:
            raise NotSupported(f"{argument}: {text!r} was packed with {row[name]!r} as {name}; one column is "
                               "supported (models with several inputs or outputs are not supported yet)")
    return row


def _check_packed_columns(conn, table: TableName, text: str, argument: str, dependent: str, independent: str) -> bool:
    """Whether the table has a __dist_key__ column (its segments); the other columns must be there."""
    present = catalog.columns(conn, table)
    wanted = {DIST_KEY: ("integer",), "buffer_id": INTEGER_TYPES, dependent: ("bytea",), independent: ("bytea",),
              f"{dependent}_shape": ("integer[]",), f"{independent}_shape": ("integer[]",)}
    for name, sql_types in wanted.items():
        column = present.get(name)
        if column is None and name == DIST_KEY:
            continue
        if column is None or column.type not in sql_types:
            found = "is missing" if column is None else f"is {column.type}"
            raise InvalidArgument(f"{argument}: column {name!r} of {text!r} {found}, expected {sql_types[0]}; "
                                  f"{PREPROCESS_HINT}")
    return DIST_KEY in present


def _segment_stats(conn, table: TableName, dependent: str, independent: str, keyed: bool = True) -> dict:
    q = conn.quote_ident
    rows = conn.execute(
        f"SELECT {segment_key_sql(keyed)} AS segment, count(*) AS buffers, sum({q(independent + '_shape')}[1]) AS images, "
        f"sum(octet_length({q(independent)}))::bigint AS x_bytes, sum(octet_length({q(dependent)}))::bigint AS y_bytes "
        f"FROM {table.sql(conn)} GROUP BY 1 ORDER BY 1")
    # labels are int16 in the table and float32 once decoded for Keras
    return {int(r["segment"]): SegmentStats(int(r["buffers"]), int(r["images"]), int(r["x_bytes"]) + 2 * int(r["y_bytes"]))
            for r in rows}


def _feature_shape(conn, table: TableName, independent: str, text: str, argument: str) -> tuple[int, ...]:
    column = conn.quote_ident(independent + "_shape")
    rows = conn.execute(f"SELECT DISTINCT {column}[2:] AS shape FROM {table.sql(conn)}")
    if len(rows) != 1:
        raise InvalidArgument(f"{argument}: buffers of {text!r} have different example shapes "
                              f"{sorted(tuple(r['shape']) for r in rows)}; {PREPROCESS_HINT}")
    return tuple(int(d) for d in rows[0]["shape"])
