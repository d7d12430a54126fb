"""Packed tables on disk: creating the packed table and its summary, reading the source examples in a
fixed order, and writing the buffers. Used by the preprocessors; the layout is described in docs/preprocessing.md."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from madlib_dl import binary_arrays, catalog, handoff, identifiers
from madlib_dl.catalog import Column
from madlib_dl.citus import placement
from madlib_dl.errors import InvalidArgument, ObjectMissing
from madlib_dl.identifiers import TableName
from madlib_dl.preprocess import distribution, packing

# Type categories (pg_type.typcategory) of label columns that are one-hot encoded.
LABEL_CATEGORIES = {"S": "text", "N": "number", "B": "boolean", "E": "enum"}


@dataclass(frozen=True)
class Source:
    """The source table and its label and feature columns, in the order the caller listed them (several
    of either: a model with several outputs or inputs)."""
    table: TableName
    text: str
    dependents: tuple[Column, ...]
    independents: tuple[Column, ...]

    @property
    def dependent(self) -> Column:
        return self.dependents[0]

    @property
    def independent(self) -> Column:
        return self.independents[0]


@dataclass(frozen=True)
class Output:
    table: TableName
    summary: TableName
    text: str
    dependents: tuple[str, ...]
    independents: tuple[str, ...]

    @property
    def class_values(self) -> tuple[str, ...]:
        """The summary's class values column of each dependent variable."""
        return tuple(f"{d}_class_values" for d in self.dependents)


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
    labels: tuple[Labels, ...]      # one per dependent variable
    features: tuple[Features, ...]  # one per independent variable
    normalizing_const: float
    distribution: distribution.Distribution
    plan: packing.BufferPlan
    shuffle_seed: int | None  # None: keep the source order (validation)
    # per dependent variable: (summary, column) giving the label order; None: one-hot
    class_values: tuple[tuple[TableName, str] | None, ...]
    class_values_types: tuple[str, ...]  # per dependent variable: SQL type of the summary's class values column
    # On Citus worker nodes (citus.placement): True, or the training table a validation table goes beside
    citus_nodes: bool | TableName = False
    # False: the summary's num_classes is {}, as MADlib writes it for one-hot array labels packed without a
    # num_classes argument (readers take the count from the labels' _shape, see describe)
    record_num_classes: bool = True


def _create_tables(conn, p: Packing) -> None:
    out = p.output
    q = conn.quote_ident
    names = out.independents + out.dependents
    buffers = ", ".join(f"{q(n)} BYTEA" for n in names)
    shapes = ", ".join(f"{q(n + '_shape')} INTEGER[]" for n in names)
    conn.execute(f"CREATE TABLE {out.table.sql(conn)} (__dist_key__ INTEGER, {buffers}, {shapes}, buffer_id INTEGER)")
    catalog.store_uncompressed(conn, out.table, names)
    # format_type() spells catalog types as valid SQL, so the type names can go into the statement.
    class_columns = ", ".join(f"{q(c)} {t}" for c, t in zip(out.class_values, p.class_values_types))
    conn.execute(f"CREATE TABLE {out.summary.sql(conn)} (source_table TEXT, output_table TEXT, "
                 f"dependent_varname TEXT[], independent_varname TEXT[], dependent_vartype TEXT[], "
                 f"{class_columns}, buffer_size INTEGER, normalizing_const REAL, "
                 f"num_classes INTEGER[], distribution_rules TEXT, num_segments INTEGER)")


def _summary_values(p: Packing, normalizing_const: float) -> tuple[list, list[str]]:
    num_classes = [labels.num_classes for labels in p.labels] if p.record_num_classes else []
    values = [p.source.text, p.output.text, list(p.output.dependents), list(p.output.independents),
              [c.type for c in p.source.dependents], p.plan.buffer_size, normalizing_const, num_classes,
              p.distribution.rule, p.distribution.segments]
    types = ["text", "text", "text[]", "text[]", "text[]", "integer", "real", "integer[]", "text", "integer"]
    return values, types


def _write_summary(conn, p: Packing, normalizing_const: float, class_values_sql: list[str]) -> None:
    """``class_values_sql``: per dependent variable, a query (no parameters) giving its ``<dep>_class_values``."""
    values, types = _summary_values(p, normalizing_const)
    placeholders = [f"${i}" for i in range(1, len(values) + 1)]
    class_values = ", ".join(f"({sql})" for sql in class_values_sql)
    sql = (f"INSERT INTO {p.output.summary.sql(conn)} SELECT {', '.join(placeholders[:5])}, {class_values}, "
           f"{', '.join(placeholders[5:])}")
    conn.execute(sql, values, types)


def training_class_values_sql(conn, p: Packing) -> list[str]:
    """Per dependent variable: its distinct labels in sort order (NULL, a class like any other, first), then
    NULLs up to num_classes. NULL first means trailing NULLs are always padding."""
    return [_class_values_sql(conn, p.source, column, labels) for column, labels in zip(p.source.dependents, p.labels)]


def _class_values_sql(conn, source: Source, column: Column, labels: Labels) -> str:
    if labels.one_hot:
        return "NULL"
    dep = conn.quote_ident(column.name)
    padding = int(labels.num_classes - labels.levels)  # our own count, not user text
    return (f"SELECT array_agg(v ORDER BY k, v NULLS FIRST) FROM ("
            f"SELECT DISTINCT {dep} AS v, 0 AS k FROM {source.table.sql(conn)} "
            f"UNION ALL SELECT NULL, g FROM generate_series(1, {padding}) g) levels")


# Rows are read in batches of about this many bytes of array_send output.
READ_BATCH_BYTES = 16 << 20


def _rows_sql(conn, p: Packing) -> tuple[str, list, list]:
    """The source rows in the order they are packed: labels ``y0, y1, ...`` (class indices, or one-hot
    arrays), features ``x0, x1, ...`` as ``array_send`` bytes.

    The order depends on the rows' content only, so the same data packs the same way however it is
    stored: sorted by an MD5 of the feature bytes of every independent variable (prefixed with the
    shuffle seed for training, so that the order is a reproducible shuffle, and another seed another
    shuffle), then by the labels. The sort key is 16 bytes: the feature arrays are never compared, and
    only carried. Every variable's buffers take the rows in this one order."""
    labels, joins = zip(*(_label_sql(conn, p, i) for i in range(len(p.labels))))
    features = [f"array_send({_feature_sql(conn, column)}) AS x{i}" for i, column in enumerate(p.source.independents)]
    key = " || ".join(f"x{i}" for i in range(len(features)))
    by_label = ", ".join(f"y{i}" for i in range(len(labels)))
    seed = b"" if p.shuffle_seed is None else p.shuffle_seed.to_bytes(8, "big", signed=True)
    sql = (f"SELECT * FROM (SELECT {', '.join(labels + tuple(features))} FROM {p.source.table.sql(conn)} "
           f"s{''.join(joins)} OFFSET 0) r ORDER BY md5($1::bytea || {key})::uuid, {by_label}")
    return sql, [seed], ["bytea"]


def _label_sql(conn, p: Packing, i: int) -> tuple[str, str]:
    """Dependent variable ``i`` as ``y<i>``, and the join that brings its class values."""
    q = conn.quote_ident
    dep = q(p.source.dependents[i].name)
    if p.labels[i].one_hot:
        return f"s.{dep}::double precision[] AS y{i}", ""
    summary, column = p.class_values[i]
    return (f"array_position(l{i}.cv[1:{p.labels[i].levels}], s.{dep}) - 1 AS y{i}",
            f" CROSS JOIN (SELECT {q(column)} AS cv FROM {summary.sql(conn)}) l{i}")


def _feature_sql(conn, column: Column) -> str:
    indep = f"s.{conn.quote_ident(column.name)}"
    return indep if column.type in binary_arrays.ELEMENT_OIDS else f"{indep}::double precision[]"


def _element_oid(column: Column) -> int:
    """float4 for real[] features, float8 for the others (other numeric types are cast to it)."""
    return binary_arrays.ELEMENT_OIDS.get(column.type, binary_arrays.FLOAT8_OID)


def _rows(conn, p: Packing):
    """Per batch of source rows in packing order: each independent variable's features normalised to
    float32, and each dependent variable's labels one-hot as int16."""
    layouts = [binary_arrays.Layout(f.size, _element_oid(c)) for f, c in zip(p.features, p.source.independents)]
    row_bytes = sum(12 + 8 * len(f.shape) + f.size * (4 + layout.width) for f, layout in zip(p.features, layouts))
    sql, args, types = _rows_sql(conn, p)
    for batch in conn.batches(sql, args, types, size=max(1, READ_BATCH_BYTES // row_bytes)):
        xs = [_features(p, i, layout, [r[f"x{i}"] for r in batch]) for i, layout in enumerate(layouts)]
        yield xs, [_labels(p, i, [r[f"y{i}"] for r in batch]) for i in range(len(p.labels))]


def _features(p: Packing, i: int, layout: binary_arrays.Layout, blobs: list) -> np.ndarray:
    shape = p.features[i].shape
    try:
        raw = binary_arrays.decode(blobs, layout, len(shape))
    except binary_arrays.RowProblem as problem:
        raise _bad_features(p, i, f" (a row {problem.reason})") from None
    if not np.isfinite(raw).all():
        raise _bad_features(p, i)
    return packing.normalize(raw, p.normalizing_const).reshape(len(raw), *shape)


def _bad_features(p: Packing, i: int, detail: str = "") -> InvalidArgument:
    return InvalidArgument(f"independent_varname: column {p.source.independents[i].name!r} of {p.source.table} has "
                           f"NULL, NaN or infinite values inside feature arrays{detail}; clean or filter those rows")


def _labels(p: Packing, i: int, values: list) -> np.ndarray:
    labels = p.labels[i]
    if not labels.one_hot:
        return packing.one_hot(np.asarray(values, dtype=np.int64), labels.num_classes)
    array = np.asarray(values, dtype=np.float64)
    if not np.isin(array, (0.0, 1.0)).all():
        raise InvalidArgument(f"dependent_varname: one-hot label arrays in column {p.source.dependents[i].name!r} "
                              "must hold only 0 and 1 (they are stored as 16-bit integers)")
    return packing.pad_classes(array, labels.num_classes)


class _BufferWriter:
    """Fills the plan's buffers in order from batches of rows, writing each as soon as it is full: at
    most one buffer (of every variable) and one batch are in memory, whatever the table's size."""

    def __init__(self, conn, p: Packing, schema: str):
        self.conn, self.p = conn, p
        self.bounds = list(p.plan.bounds())
        # the first features go in handed over (madlib_dl.handoff), not bound: one copy of the buffer fewer;
        # then the other buffers, every _shape and buffer_id: the packed table's column order
        variables = len(p.features) + len(p.labels)
        bound = ", ".join(f"${i}" for i in range(3, 3 + 2 * variables))
        self.sql = (f"INSERT INTO {p.output.table.sql(conn)} VALUES ($2, {handoff.taking(schema, conn.quote_ident)}, "
                    f"{bound})")
        self.types = ["text", "integer"] + ["bytea"] * (variables - 1) + ["integer[]"] * variables + ["integer"]
        self.index, self.filled = 0, 0
        self.xs = self.ys = None

    def add(self, xs: list[np.ndarray], ys: list[np.ndarray]) -> None:
        rows, start = len(xs[0]), 0
        while start < rows:
            if self.index >= len(self.bounds):
                self._changed()
            if self.xs is None:
                self._start()
            take = min(rows - start, len(self.xs[0]) - self.filled)
            for buffer, values in zip(self.xs + self.ys, xs + ys):
                buffer[self.filled:self.filled + take] = values[start:start + take]
            self.filled, start = self.filled + take, start + take
            if self.filled == len(self.xs[0]):
                self._write()

    def _start(self) -> None:
        _, first, end = self.bounds[self.index]
        self.xs = [np.empty((end - first, *f.shape), dtype=packing.FEATURE_DTYPE) for f in self.p.features]
        self.ys = [np.empty((end - first, labels.num_classes), dtype=packing.LABEL_DTYPE) for labels in self.p.labels]

    def _write(self) -> None:
        buffer_id = self.bounds[self.index][0]
        blobs, shapes = [], []
        for arrays, dtype in ((self.xs, packing.FEATURE_DTYPE), (self.ys, packing.LABEL_DTYPE)):
            while arrays:  # each array goes as its bytes are made: the two are not both kept
                blob, shape = packing.encode(arrays.pop(0), dtype)
                blobs.append(blob)
                shapes.append(shape)
        first, rest = blobs[0], blobs[1:]
        del blobs
        with handoff.handed_over(first) as token:
            del first
            self.conn.execute(self.sql, [token, self.p.plan.dist_key(buffer_id), *rest, *shapes, buffer_id],
                              self.types)
        self.index, self.filled, self.xs, self.ys = self.index + 1, 0, None, None

    def finish(self) -> None:
        if self.index != len(self.bounds) or self.xs is not None:
            self._changed()

    def _changed(self):
        raise InvalidArgument(f"source_table: {self.p.source.table} changed while it was being packed",
                              hint="Try again.")


def pack(conn, p: Packing, normalizing_const: float, class_values_sql: list[str]) -> None:
    """Create the packed table and its summary (recording ``normalizing_const`` as given) and fill them;
    ``class_values_sql``: per dependent variable, a query giving its summary's class values."""
    _create_tables(conn, p)
    if p.citus_nodes:
        beside = p.citus_nodes if isinstance(p.citus_nodes, TableName) else None
        p = replace(p, plan=replace(p.plan, keys=placement.distribute(conn, p.output.table, p.plan.segments, beside)))
    _write_summary(conn, p, normalizing_const, class_values_sql)
    writer = _BufferWriter(conn, p, catalog.extension_schema(conn))
    for xs, ys in _rows(conn, p):
        writer.add(xs, ys)
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
    # Every variable, in the summary's order (the fields above are the first one's): several for a model
    # with several inputs or outputs; describe() fills them, one element each for one input and output
    dependents: tuple[str, ...] = ()
    independents: tuple[str, ...] = ()
    output_classes: tuple[int, ...] = ()                   # num_classes per dependent variable
    feature_shapes: tuple[tuple[int, ...], ...] = ()       # example shape per independent variable
    class_values_columns: tuple[str, ...] = ()             # per dependent variable
    all_class_values: tuple[tuple | None, ...] = ()        # per dependent variable; None: one-hot as given

    @property
    def images(self) -> int:
        return sum(s.images for s in self.segments.values())

    @property
    def multi_io(self) -> bool:
        """Packed with several dependent or independent variables (a model with several outputs or inputs)."""
        return len(self.dependents) > 1 or len(self.independents) > 1


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
    dependents, independents = tuple(row["dependent_varname"]), tuple(row["independent_varname"])
    keyed = _check_packed_columns(conn, table, text, argument, dependents, independents)
    segments = _segment_stats(conn, table, dependents, independents, keyed)
    if not segments:
        raise InvalidArgument(f"{argument}: packed table {text!r} is empty")
    class_columns = tuple(f"{d}_class_values" for d in dependents)
    class_values = tuple(None if row.get(c) is None else tuple(row[c]) for c in class_columns)
    output_classes = tuple(num_classes(conn, table, row, d, text, argument, i) for i, d in enumerate(dependents))
    shapes = tuple(_feature_shape(conn, table, i, text, argument) for i in independents)
    num_segments = row.get("num_segments")
    return PackedTable(
        table=table, summary=summary, text=text, dependent=dependents[0], independent=independents[0],
        class_values_column=class_columns[0], class_values=class_values[0], num_classes=output_classes[0],
        normalizing_const=float(row["normalizing_const"]), feature_shape=shapes[0],
        num_segments=int(num_segments) if num_segments is not None else len(segments), segments=segments,
        distributed=placement.is_distributed(conn, table), keyed=keyed, dependents=dependents,
        independents=independents, output_classes=output_classes, feature_shapes=shapes,
        class_values_columns=class_columns, all_class_values=class_values)


def num_classes(conn, table: TableName, row: dict, dependent: str, text: str, argument: str, index: int = 0) -> int:
    """The summary's num_classes of dependent variable ``index``, or, where it records none (MADlib writes
    {} for one-hot array labels packed without a num_classes argument), the width of the packed one-hot labels."""
    recorded = row.get("num_classes")
    if recorded and len(recorded) > index and recorded[index] is not None:
        return int(recorded[index])
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
    for name in ("dependent_varname", "independent_varname"):
        names = row[name]
        if not isinstance(names, list) or not names or any(not n for n in names) or len(set(names)) != len(names):
            raise InvalidArgument(f"{argument}: {text!r} was packed with {names!r} as {name}, expected a list of "
                                  f"distinct column names; {PREPROCESS_HINT}")
    recorded = row.get("num_classes")
    if recorded and len(recorded) != len(row["dependent_varname"]):  # absent or {}: derived (num_classes())
        raise InvalidArgument(f"{argument}: the summary of {text!r} gives {len(recorded)} num_classes for "
                              f"{len(row['dependent_varname'])} dependent variables; {PREPROCESS_HINT}")
    return row


def _check_packed_columns(conn, table: TableName, text: str, argument: str, dependents: tuple[str, ...],
                          independents: tuple[str, ...]) -> bool:
    """Whether the table has a __dist_key__ column (its segments); every variable's columns must be there."""
    present = catalog.columns(conn, table)
    wanted = {DIST_KEY: ("integer",), "buffer_id": INTEGER_TYPES}
    for name in dependents + independents:
        wanted.update({name: ("bytea",), f"{name}_shape": ("integer[]",)})
    for name, sql_types in wanted.items():
        column = present.get(name)
        if column is None and name == DIST_KEY:
            continue
        if column is None or column.type not in sql_types:
            found = "is missing" if column is None else f"is {column.type}"
            raise InvalidArgument(f"{argument}: column {name!r} of {text!r} {found}, expected {sql_types[0]}; "
                                  f"{PREPROCESS_HINT}")
    return DIST_KEY in present


def _segment_stats(conn, table: TableName, dependents: tuple[str, ...], independents: tuple[str, ...],
                   keyed: bool = True) -> dict:
    q = conn.quote_ident

    def octets(names) -> str:
        return " + ".join(f"sum(octet_length({q(n)}))::bigint" for n in names)

    rows = conn.execute(
        f"SELECT {segment_key_sql(keyed)} AS segment, count(*) AS buffers, sum({q(independents[0] + '_shape')}[1]) "
        f"AS images, {octets(independents)} AS x_bytes, {octets(dependents)} AS y_bytes "
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
