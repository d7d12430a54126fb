"""training_preprocessor_dl and validation_preprocessor_dl: pack a table of examples into buffers.

Each output row is a buffer of many examples (float32 features and int16 one-hot labels as BYTEA, with
``_shape`` columns), placed on a virtual segment by ``__dist_key__``. Everything is checked before any
table is created; a later failure aborts the calling statement, which removes what was created.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from madlib_dl import catalog, db, identifiers, packed_tables, settings
from madlib_dl.api import help as help_topics
from madlib_dl.catalog import Column
from madlib_dl.errors import InvalidArgument, ObjectMissing
from madlib_dl.identifiers import TableName
from madlib_dl.keras_runtime import gpus
from madlib_dl.packed_tables import Features, Labels, Output, Packing, Source
from madlib_dl.citus import placement
from madlib_dl.preprocess import columns, distribution, packing
from madlib_dl.training import memory

_BAD_VALUES = 5  # how many offending values an error message lists


# ---------------------------------------------------------------- argument checks

def _source(conn, source_table, dependent_varname, independent_varname) -> Source:
    table = catalog.input_table(conn, source_table, "source_table")
    dependents = _columns(conn, table, dependent_varname, "dependent_varname")
    independents = _columns(conn, table, independent_varname, "independent_varname")
    both = [c.name for c in dependents if c in independents]
    if both:
        raise InvalidArgument(f"dependent_varname and independent_varname: both name column {both[0]!r}; "
                              "labels and features must be different columns")
    _check_feature_types(conn, table, independents, independent_varname)
    for dependent in dependents:
        if not (dependent.is_numeric_array or dependent.category in packed_tables.LABEL_CATEGORIES):
            raise InvalidArgument(f"dependent_varname: column {dependent.name!r} of {table} has type {dependent.type}; "
                                  "expected class labels (text, integer, boolean...) or one-hot numeric arrays")
    if catalog.is_empty(conn, table):
        raise InvalidArgument(f"source_table: table {source_table!r} is empty")
    return Source(table, source_table.strip(), dependents, independents)


def _columns(conn, table: TableName, text, argument: str) -> tuple[Column, ...]:
    """The columns of a comma-separated list (usually one): each exists, none twice."""
    found = tuple(catalog.column(conn, table, name, argument) for name in columns.split_list(text, argument))
    for i, column in enumerate(found):
        if column in found[:i]:
            raise InvalidArgument(f"{argument}: column {column.name!r} is listed twice in {text.strip()!r}")
    return found


def _check_feature_types(conn, table: TableName, independents: tuple[Column, ...], text: str) -> None:
    if len(independents) > 1 and not any(c.is_array for c in independents):
        # the usual table has a scalar column per feature: that is one array column, not several inputs
        joined = ", ".join(conn.quote_ident(c.name) for c in independents)
        arrays = table.sibling(f"{table.name}_arrays").typed_sql(conn)
        raise InvalidArgument(
            f"independent_varname: expected one array column, got {len(independents)} columns ({text.strip()})",
            hint=f"Make them one array column, e.g. CREATE TABLE {arrays} AS SELECT *, ARRAY[{joined}]::REAL[] AS "
                 f"features FROM {table.typed_sql(conn)}; then pass 'features' and that table.")
    for independent in independents:
        if not independent.is_numeric_array:
            raise InvalidArgument(f"independent_varname: column {independent.name!r} of {table} has type "
                                  f"{independent.type}; expected a numeric array such as REAL[] or DOUBLE PRECISION[]")


def _output(conn, output_table, source: Source) -> Output:
    table = identifiers.output_table(conn, output_table, "output_table")
    summary = identifiers.summary_table(table, "output_table")
    if identifiers.table_exists(conn, summary):
        raise InvalidArgument(f"output_table: its summary table {summary} already exists",
                              hint="Drop it or choose another name.")
    deps = tuple(c.name for c in source.dependents)
    indeps = tuple(c.name for c in source.independents)
    reserved = {"__dist_key__", "buffer_id"} | {f"{name}_shape" for name in deps + indeps}
    for argument, names in (("dependent_varname", deps), ("independent_varname", indeps)):
        for name in names:
            if name in reserved:
                raise InvalidArgument(f"{argument}: column name {name!r} is used by the packed table itself",
                                      hint="Rename it, e.g. in a view over the source table.")
            for suffix in ("_shape", "_class_values"):
                _check_length(name + suffix, argument)
    return Output(table, summary, output_table.strip(), deps, indeps)


def _check_length(name: str, argument: str) -> None:
    if len(name.encode()) > 63:
        raise InvalidArgument(f"{argument}: the name {name!r} derived from it is longer than 63 bytes",
                              hint="Use a shorter name.")


def _buffer_size(value) -> int | None:
    if value is not None and value < 1:
        raise InvalidArgument(f"buffer_size: expected a positive number of rows per buffer or NULL, got {value}")
    return value


def _normalizing_const(value) -> float:
    if value is None:
        return 1.0
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"normalizing_const: expected a positive number (features are divided by it), got {value}")
    # Dividing by (almost) one would only add rounding: MADlib skips it the same way.
    return 1.0 if abs(value - 1.0) <= 1e-6 else float(value)


def _num_classes(value, dependents: tuple[Column, ...]) -> tuple[int | None, ...]:
    """One class count per dependent variable, None for each where the argument is NULL."""
    count = len(dependents)
    if value is None:
        return (None,) * count
    if len(value) != count or None in value:
        if count == 1:
            raise InvalidArgument(f"num_classes: expected one class count in an array such as ARRAY[10] or NULL, "
                                  f"got {value}")
        names = ", ".join(c.name for c in dependents)
        raise InvalidArgument(f"num_classes: expected {count} class counts, one per dependent variable ({names}), in "
                              f"an array such as ARRAY[{', '.join(['10'] * count)}] or NULL, got {value}")
    for wanted in value:
        if wanted < 1:
            raise InvalidArgument(f"num_classes: expected a positive class count, got {wanted}")
    return tuple(value)


def _citus_nodes(conn) -> int:
    """The Citus worker nodes the packed table goes on (madlib_dl.packed_table_placement), 0: this
    server; a validation table always goes where its training table is."""
    chosen = settings.read_choice(conn, settings.PACKED_TABLE_PLACEMENT)
    if chosen == "local":
        return 0
    if chosen == "auto":
        return placement.worker_nodes(conn)
    return placement.check_available(conn, settings.PACKED_TABLE_PLACEMENT.name)


def _distribution(conn, distribution_rules, nodes: int = 0) -> distribution.Distribution:
    """``nodes``: the Citus worker nodes the table goes on; 'all_segments' then means a multiple of them
    (as many segments on each node), madlib_dl.num_segments rounded up."""
    def all_segments() -> int:
        count = settings.read(conn, settings.NUM_SEGMENTS)
        if not nodes:
            return count
        rounded = -(-count // nodes) * nodes
        return rounded if rounded <= distribution.MAX_SEGMENTS else count  # past the limit: as set

    return distribution.resolve(distribution_rules, all_segments, lambda: len(gpus.nvidia_gpus()))




# ---------------------------------------------------------------- what the data holds

def _features(conn, source: Source) -> tuple[Features, ...]:
    """Per independent variable: every row must have a feature array of one and the same shape."""
    return tuple(_features_of(conn, source.table, column) for column in source.independents)


def _features_of(conn, table: TableName, column: Column) -> Features:
    rows = _array_shapes(conn, table, column.name)
    missing = sum(r["n"] for r in rows if r["dims"] is None)
    if missing:
        raise InvalidArgument(f"independent_varname: {missing} rows of {table} have NULL or empty "
                              f"feature arrays in column {column.name!r}")
    if len(rows) > 1:
        shapes = ", ".join(f"{list(_shape(r['dims']))} in {r['n']} rows" for r in rows[:_BAD_VALUES])
        raise InvalidArgument(f"independent_varname: feature arrays in column {column.name!r} "
                              f"must all have one shape; found {shapes}")
    return Features(int(rows[0]["n"]), _shape(rows[0]["dims"]))


def _array_shapes(conn, table: TableName, column: str) -> list[dict]:
    """How many rows have each array shape (``dims`` as array_dims() writes it; NULL for NULL or empty),
    the commonest first."""
    return conn.execute(f"SELECT array_dims({conn.quote_ident(column)}) AS dims, count(*) AS n "
                        f"FROM {table.sql(conn)} GROUP BY 1 ORDER BY 2 DESC, 1")


def _shape(dims: str) -> tuple[int, ...]:
    """'[1:8][1:8][1:1]' → (8, 8, 1)."""
    return tuple(int(hi) - int(lo) + 1 for lo, hi in re.findall(r"\[(-?\d+):(-?\d+)\]", dims))


def _one_hot_width(conn, table: TableName, column: Column) -> int:
    """Already one-hot labels: one-dimensional arrays of one length, no NULLs."""
    rows = _array_shapes(conn, table, column.name)
    if any(r["dims"] is None for r in rows):
        raise InvalidArgument(f"dependent_varname: one-hot label arrays in column {column.name!r} must not be NULL or empty")
    shapes = [_shape(r["dims"]) for r in rows]
    if len(shapes) > 1 or len(shapes[0]) != 1:
        found = ", ".join(f"{list(s)} in {r['n']} rows" for s, r in zip(shapes, rows))
        raise InvalidArgument(f"dependent_varname: one-hot label arrays in column {column.name!r} must be "
                              f"one-dimensional and of one length; found {found}")
    return shapes[0][0]


def _count_levels(conn, table: TableName, column: Column) -> int:
    dep = conn.quote_ident(column.name)
    rows = conn.execute(f"SELECT count(*) AS n FROM (SELECT DISTINCT {dep} FROM {table.sql(conn)}) levels")
    return int(rows[0]["n"])


def _training_labels(conn, source: Source, wanted: tuple[int | None, ...]) -> tuple[Labels, ...]:
    return tuple(_training_labels_of(conn, source.table, column, n) for column, n in zip(source.dependents, wanted))


def _training_labels_of(conn, table: TableName, column: Column, wanted: int | None) -> Labels:
    one_hot = column.is_numeric_array  # numeric-array labels are taken as already one-hot
    found = _one_hot_width(conn, table, column) if one_hot else _count_levels(conn, table, column)
    if wanted is not None and wanted < found:
        what = "the one-hot arrays have" if one_hot else f"column {column.name!r} has"
        raise InvalidArgument(f"num_classes: {wanted} is fewer than the {found} classes {what}",
                              hint=f"Give at least {found}, or NULL to count them.")
    return Labels(wanted or found, found, one_hot)


def _plan(conn, features: tuple[Features, ...], labels: tuple[Labels, ...], segments: int,
          buffer_size: int | None) -> packing.BufferPlan:
    """Buffers are planned, and their memory checked, by one example's values over all the variables."""
    feature_size = sum(f.size for f in features)
    plan = packing.plan_buffers(features[0].rows, segments, feature_size, buffer_size)
    _check_memory(conn, plan, feature_size, sum(y.num_classes for y in labels))
    return plan


def _check_memory(conn, plan: packing.BufferPlan, feature_size: int, num_classes: int) -> None:
    """Packing holds one buffer at a time (a few copies of it), whatever the table's size: only a buffer
    too large for the memory budget is refused."""
    needed = packing.packing_bytes(plan, feature_size, num_classes)
    budget = settings.read(conn, settings.MEMORY_BUDGET_MB) << 20
    if needed > budget:
        with settings.naming_the_cap(conn, settings.MEMORY_BUDGET_MB):
            raise InvalidArgument(
                f"buffer_size: buffers of {plan.buffer_size} rows need about {memory.format_bytes(needed)} while they "
                f"are packed ({packing.PACKING_COPIES} copies of one buffer) but {settings.MEMORY_BUDGET_MB.name} is "
                f"{budget >> 20} MiB", hint="Give a smaller buffer_size or raise the setting.")


# ---------------------------------------------------------------- training

@db.sql_function
def training_preprocessor_dl(source_table, output_table, dependent_varname, independent_varname,
                             buffer_size=None, normalizing_const=1.0, num_classes=None,
                             distribution_rules=None) -> None:
    conn = db.current()
    source = _source(conn, source_table, dependent_varname, independent_varname)
    output = _output(conn, output_table, source)
    buffer_size = _buffer_size(buffer_size)
    const = _normalizing_const(normalizing_const)
    wanted = _num_classes(num_classes, source.dependents)
    nodes = _citus_nodes(conn)
    dist = _distribution(conn, distribution_rules, nodes)
    citus_nodes = nodes > 0
    features = _features(conn, source)
    labels = _training_labels(conn, source, wanted)
    plan = _plan(conn, features, labels, dist.segments, buffer_size)
    p = Packing(source, output, labels, features, const, dist, plan, settings.read(conn, settings.SHUFFLE_SEED),
                tuple(None if y.one_hot else (output.summary, c) for y, c in zip(labels, output.class_values)),
                tuple(c.type if y.one_hot else f"{c.type}[]" for c, y in zip(source.dependents, labels)), citus_nodes,
                # MADlib records num_classes {} for one-hot array labels unless num_classes was given
                record_num_classes=not (all(y.one_hot for y in labels) and num_classes is None))
    packed_tables.pack(conn, p, normalizing_const if normalizing_const is not None else 1.0,
                       packed_tables.training_class_values_sql(conn, p))
    conn.notice(f"training_preprocessor_dl: packed {packing.describe(plan, buffer_size)} into {output.table} and "
                f"{output.summary}")


# ---------------------------------------------------------------- validation

@dataclass(frozen=True)
class TrainingLabels:
    """One dependent variable of the training table."""
    name: str
    class_values: str | None   # column name; None for one-hot labels
    class_type: Column | None
    levels: int
    num_classes: int


@dataclass(frozen=True)
class Training:
    """What a validation table must share with its training table (read from its summary)."""
    table: TableName
    summary: TableName
    labels: tuple[TrainingLabels, ...]           # per dependent variable
    independents: tuple[str, ...]
    normalizing_const: float
    distribution: distribution.Distribution
    feature_shapes: tuple[tuple[int, ...], ...]  # per independent variable
    num_classes_recorded: bool = True  # False: its summary's num_classes is {} (the validation summary copies it)


# num_classes, distribution_rules and num_segments may be missing (MADlib's own preprocessor writes no
# num_segments): they are derived from the training table (packed_tables.describe).
_TRAINING_COLUMNS = ("normalizing_const", "dependent_varname", "independent_varname")


def _training(conn, text) -> Training:
    table = catalog.input_table(conn, text, "training_preprocessor_table")
    summary = identifiers.summary_table(table, "training_preprocessor_table")
    hint = f"training_preprocessor_table: {text!r} must be made by training_preprocessor_dl()"
    if not identifiers.table_exists(conn, summary):
        raise ObjectMissing(f"{hint}; its summary table {summary} is missing")
    catalog.require_select(conn, summary, "training_preprocessor_table", text, companion=True)
    columns = catalog.columns(conn, summary)
    missing = [c for c in _TRAINING_COLUMNS if c not in columns]
    if missing:
        raise InvalidArgument(f"{hint}; its summary table {summary} lacks {', '.join(missing)}")
    row = conn.execute(f"SELECT * FROM {summary.sql(conn)}")
    if len(row) != 1:
        raise InvalidArgument(f"{hint}; its summary table {summary} must have one row, it has {len(row)}")
    row = row[0]
    for dependent in row["dependent_varname"] or ():
        if f"{dependent}_class_values" not in columns:
            raise InvalidArgument(f"{hint}; its summary table {summary} lacks {dependent}_class_values")
    packed = packed_tables.describe(conn, text, "training_preprocessor_table")
    labels = tuple(_training_labels_from(columns, packed, i) for i in range(len(packed.dependents)))
    rule = row.get("distribution_rules") or distribution.ALL_SEGMENTS
    return Training(table, summary, labels, packed.independents, row["normalizing_const"],
                    distribution.Distribution(str(rule), packed.num_segments), packed.feature_shapes,
                    row.get("num_classes") != [])


def _training_labels_from(summary_columns: dict[str, Column], packed: packed_tables.PackedTable,
                          i: int) -> TrainingLabels:
    """Dependent variable ``i`` of the training table."""
    column, values, count = packed.class_values_columns[i], packed.all_class_values[i], packed.output_classes[i]
    if values is None:
        return TrainingLabels(packed.dependents[i], None, None, count, count)
    return TrainingLabels(packed.dependents[i], column, summary_columns[column], _strip_padding(list(values)), count)


def _strip_padding(values: list) -> int:
    """Count the real classes: trailing NULLs are padding, except a NULL class, which sorts first."""
    n = len(values)
    while n > 1 and values[n - 1] is None:
        n -= 1
    return n


def _check_variables(source: Source, training: Training) -> None:
    """As many dependent and independent variables as the training table, matched in order."""
    for argument, given, trained in (("dependent_varname", source.dependents, [t.name for t in training.labels]),
                                     ("independent_varname", source.independents, training.independents)):
        if len(given) != len(trained):
            raise InvalidArgument(
                f"{argument}: {len(given)} column{'s' if len(given) != 1 else ''} "
                f"({', '.join(c.name for c in given)}); the training table {training.table} has {len(trained)} "
                f"({', '.join(trained)})", hint="Give one column per variable of the training table, in its order.")


def _check_shapes(source: Source, features: tuple[Features, ...], training: Training) -> None:
    count = len(features)
    for i, (column, found, trained) in enumerate(zip(source.independents, features, training.feature_shapes)):
        if found.shape != trained:
            where = "" if count == 1 else f" in column {column.name!r}{columns.ordinal(i, count)}"
            raise InvalidArgument(f"independent_varname: features of shape {list(found.shape)}{where}; the training "
                                  f"table {training.table} has {list(trained)}")


def _validation_labels(conn, source: Source, training: Training) -> tuple[Labels, ...]:
    return tuple(_validation_labels_of(conn, source, training, i) for i in range(len(source.dependents)))


def _validation_labels_of(conn, source: Source, training: Training, i: int) -> Labels:
    column, trained = source.dependents[i], training.labels[i]
    which = columns.ordinal(i, len(source.dependents))  # how messages name the variable among several
    if trained.class_values is None:
        if not column.is_numeric_array:
            raise InvalidArgument(f"dependent_varname: the training labels were one-hot arrays, but column "
                                  f"{column.name!r}{which} has type {column.type}")
        width = _one_hot_width(conn, source.table, column)
        if width > trained.num_classes:
            where = f" in column {column.name!r}{which}" if which else ""
            raise InvalidArgument(f"dependent_varname: one-hot arrays of {width} classes{where}; the training table "
                                  f"has {trained.num_classes}")
        return Labels(trained.num_classes, width, True)
    if column.is_numeric_array or column.category != trained.class_type.element_category:
        raise InvalidArgument(f"dependent_varname: column {column.name!r}{which} has type {column.type}, "
                              f"which cannot be compared with the training labels ({trained.class_type.type})")
    _check_subset(conn, source, training, i)
    return Labels(trained.num_classes, trained.levels, False)


def _check_subset(conn, source: Source, training: Training, i: int) -> None:
    column, trained = source.dependents[i], training.labels[i]
    dep = conn.quote_ident(column.name)
    rows = conn.execute(
        f"SELECT DISTINCT s.{dep}::text AS v FROM {source.table.sql(conn)} s CROSS JOIN "
        f"(SELECT {conn.quote_ident(trained.class_values)} AS cv FROM {training.summary.sql(conn)}) l "
        f"WHERE array_position(l.cv[1:{trained.levels}], s.{dep}) IS NULL ORDER BY 1 LIMIT {_BAD_VALUES}")
    if rows:
        shown = ", ".join("NULL" if r["v"] is None else repr(r["v"]) for r in rows)
        where = "" if len(source.dependents) == 1 else \
            f" in column {column.name!r}{columns.ordinal(i, len(source.dependents))}"
        raise InvalidArgument(f"dependent_varname: class values of {source.table}{where} must be a subset of those "
                              f"of {training.table}; not found there: {shown}")


def _validation_distribution(conn, distribution_rules, training: Training) -> distribution.Distribution:
    if distribution_rules is None:
        return training.distribution
    nodes = placement.worker_nodes(conn) if placement.is_distributed(conn, training.table) else 0
    dist = _distribution(conn, distribution_rules, nodes)
    if dist.segments != training.distribution.segments:
        raise InvalidArgument(f"distribution_rules: {distribution_rules!r} means {dist.segments} segments, but "
                              f"{training.table} uses {training.distribution.segments}",
                              hint="Give NULL to use the training table's distribution.")
    return dist


@db.sql_function
def validation_preprocessor_dl(source_table, output_table, dependent_varname, independent_varname,
                               training_preprocessor_table, buffer_size=None, distribution_rules=None) -> None:
    conn = db.current()
    source = _source(conn, source_table, dependent_varname, independent_varname)
    output = _output(conn, output_table, source)
    training = _training(conn, training_preprocessor_table)
    _check_variables(source, training)
    buffer_size = _buffer_size(buffer_size)
    dist = _validation_distribution(conn, distribution_rules, training)
    features = _features(conn, source)
    _check_shapes(source, features, training)
    labels = _validation_labels(conn, source, training)
    plan = _plan(conn, features, labels, dist.segments, buffer_size)
    trained = training.labels
    p = Packing(source, output, labels, features, _normalizing_const(training.normalizing_const), dist, plan, None,
                tuple(None if y.one_hot else (training.summary, t.class_values) for y, t in zip(labels, trained)),
                tuple(c.type if y.one_hot else t.class_type.type for c, y, t in zip(source.dependents, labels, trained)),
                training.table if placement.is_distributed(conn, training.table) else False,
                record_num_classes=training.num_classes_recorded)
    summary = training.summary.sql(conn)
    class_values = ["NULL" if y.one_hot else f"SELECT {conn.quote_ident(t.class_values)} FROM {summary}"
                    for y, t in zip(labels, trained)]
    packed_tables.pack(conn, p, training.normalizing_const, class_values)
    conn.notice(f"validation_preprocessor_dl: packed {packing.describe(plan, buffer_size)} into {output.table} and "
                f"{output.summary}")


# ---------------------------------------------------------------- help

_TRAINING_SUMMARY = """training_preprocessor_dl: pack a table of labelled examples for training.

Each output row is a buffer of many examples: features as float32 BYTEA, labels one-hot encoded as int16
BYTEA, with _shape columns, buffer_id and __dist_key__ (the virtual segment). A table <output>_summary
records the classes, normalizing constant and segments. Rows are shuffled reproducibly
(setting madlib_dl.shuffle_seed).

    SELECT madlib_dl.training_preprocessor_dl('iris', 'iris_packed', 'class_text', 'attributes');

For arguments and examples: SELECT madlib_dl.training_preprocessor_dl('usage');
"""

_TRAINING_USAGE = """training_preprocessor_dl(
    source_table        VARCHAR,   -- table of examples, one per row
    output_table        VARCHAR,   -- packed table to create (and output_table_summary)
    dependent_varname   VARCHAR,   -- label column: text, integer, boolean... (NULL is a class too),
                                   --   or a numeric array already one-hot encoded; several outputs:
                                   --   a comma-separated list, e.g. 'label, label2'
    independent_varname VARCHAR,   -- feature column: numeric array of any shape, e.g. REAL[] or 8x8x1 images;
                                   --   several inputs: a comma-separated list, e.g. 'pixels, extra'
    buffer_size         INTEGER,   -- rows per buffer (default: a segment's rows, at most 32 MiB of features); adjusted
                                   --   so every segment gets the same number of buffers
    normalizing_const   REAL,      -- features are divided by it (default 1.0), e.g. 255.0 for pixels
    num_classes         INTEGER[], -- e.g. ARRAY[10]: pad the one-hot vectors to this many classes (default: as found);
                                   --   one count per label column
    distribution_rules  TEXT       -- 'all_segments' (default: madlib_dl.num_segments segments),
                                   --   'gpu_segments' (one per GPU), or a count such as '3'
)

Example:
    SELECT madlib_dl.training_preprocessor_dl('digits', 'digits_packed', 'label', 'pixels',
                                              NULL, 16.0, NULL, '4');
    SELECT buffer_id, __dist_key__, pixels_shape, label_shape FROM digits_packed ORDER BY buffer_id;
    SELECT * FROM digits_packed_summary;
"""

_VALIDATION_SUMMARY = """validation_preprocessor_dl: pack a validation table like its training table.

It uses the training table's classes, normalizing constant and segments (from its _summary table);
rows are not shuffled (they are ordered by their content, the same however the table is stored).

    SELECT madlib_dl.validation_preprocessor_dl('iris_test', 'iris_test_packed', 'class_text',
                                                'attributes', 'iris_packed');

For arguments and examples: SELECT madlib_dl.validation_preprocessor_dl('usage');
"""

_VALIDATION_USAGE = """validation_preprocessor_dl(
    source_table                VARCHAR,  -- table of validation examples
    output_table                VARCHAR,  -- packed table to create (and output_table_summary)
    dependent_varname           VARCHAR,  -- label column(s); their classes must all occur in the training table
    independent_varname         VARCHAR,  -- feature column(s), same shapes as the training features
    training_preprocessor_table VARCHAR,  -- output of training_preprocessor_dl
    buffer_size                 INTEGER,  -- rows per buffer (default: as for training)
    distribution_rules          TEXT      -- NULL (default): the training table's segments
)

Example:
    SELECT madlib_dl.validation_preprocessor_dl('digits_test', 'digits_test_packed', 'label', 'pixels',
                                                'digits_packed');
"""


@db.sql_function
def training_preprocessor_help(message) -> str:
    return help_topics.answer("training_preprocessor_dl", message, _TRAINING_SUMMARY, _TRAINING_USAGE)


@db.sql_function
def validation_preprocessor_help(message) -> str:
    return help_topics.answer("validation_preprocessor_dl", message, _VALIDATION_SUMMARY, _VALIDATION_USAGE)
