"""madlib_keras_fit_multiple_model(): train every configuration of a model selection table with Model
Hopper Parallelism, and madlib_dl.last_fit_hops() to see how the last run went.

Every argument is checked before the first hop: the packed tables, the mst table and its summary, the
architectures against the data (input shape, class count), the parameter strings, the output names and
the memory the run needs. The output tables are written at the end, in the calling transaction.

The checks that madlib_keras_fit shares (iteration arguments, validation table, an architecture against
the data, output names, the extension's schema) are the public functions here.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import replace

from madlib_dl import catalog, custom_functions, db, identifiers, packed_tables, settings
from madlib_dl.api import help as help_topics
from madlib_dl.api import model_selection
from madlib_dl.errors import InvalidArgument, ObjectExists, ObjectMissing
from madlib_dl.identifiers import TableName
from madlib_dl.segment.requests import ObjectTable
from madlib_dl.keras_runtime import arch_info, builder, params
from madlib_dl.model_selection.configs import OptimizerUse
from madlib_dl.packed_tables import PackedTable
from madlib_dl.training import driver, outputs, stored_state
from madlib_dl.training.model_table import ModelTable
from madlib_dl.training.spec import ModelConfig, OutputTables, RunSpec

MST_COLUMNS = ("mst_key", "model_id", "compile_params", "fit_params")
CONFIG_HINT = "make it with load_model_selection_table() or generate_model_configs()"


@db.sql_function
def fit_multiple_model(source_table, model_output_table, model_selection_table, num_iterations, use_gpus,
                       validation_table, metrics_compute_frequency, warm_start, name, description,
                       use_caching) -> None:
    conn = db.current()
    iterations = num_iterations_argument(num_iterations)
    frequency = frequency_argument(metrics_compute_frequency, iterations)
    warm_start = bool(warm_start)
    source = packed_tables.describe(conn, source_table, "source_table")
    validation = validation_argument(conn, validation_table, source)
    mst, arch_table, objects = _mst_tables(conn, model_selection_table)
    out = output_tables(conn, model_output_table, warm_start)
    with custom_functions.in_scope(conn, objects):  # the mst table's compile_params may name its functions
        models = [replace(m, object_table=objects) for m in _models(conn, mst, arch_table, source)]
        batch_size_notes(conn, "madlib_keras_fit_multiple_model", source, _batch_sizes(models))
        if warm_start:
            models = _warm_start(conn, out, models)
        schema = catalog.extension_schema(conn)
        table = ModelTable(out.model, schema, keyed=True)
        reserved = [] if warm_start else table.create_reserved(conn, outputs.reserve(
            conn, (out.model, out.summary, out.info, stored_state.side_table(out.model))))
        spec = RunSpec(uuid.uuid4().hex, schema, source, validation, tuple(models), iterations, frequency,
                       bool(use_caching), bool(use_gpus), settings.read(conn, settings.FIT_SEED), output_table=out.model)
        result = driver.train(conn, spec, None if warm_start else table.writer(conn))
        if warm_start:
            outputs.drop(conn, out)
            table.create(conn)
        request = {"source_table": source_table, "validation_table": validation_table if validation else None,
                   "model_output_table": model_output_table, "model_arch_table": arch_table.typed_sql(conn),
                   "model_selection_table": model_selection_table, "warm_start": warm_start, "name": name,
                   "description": description, "object_table": custom_functions.table_text(conn, objects)}
        outputs.release(conn, reserved)
        outputs.write(conn, out, spec, result, request, models=table)


# ---------------------------------------------------------------------------------------------------
# Scalar arguments

def num_iterations_argument(value) -> int:
    if value is None or value < 1:
        raise InvalidArgument(f"num_iterations: expected an integer of at least 1, got {'NULL' if value is None else value}")
    return int(value)


def frequency_argument(value, iterations: int) -> int:
    if value is None:
        return iterations
    if not 1 <= value <= iterations:
        raise InvalidArgument(f"metrics_compute_frequency: expected 1 to num_iterations ({iterations}), or NULL for "
                              f"metrics after the last iteration only, got {value}")
    return int(value)


# ---------------------------------------------------------------------------------------------------
# Tables

def validation_argument(conn, text, source: PackedTable) -> PackedTable | None:
    """The validation table, packed for ``source`` (same classes, shape, normalizing_const, segments)."""
    if text is None or not text.strip():
        return None
    validation = packed_tables.describe(conn, text, "validation_table")
    checks = (("class values", validation.class_values, source.class_values),
              ("number of classes", validation.num_classes, source.num_classes),
              ("normalizing_const", validation.normalizing_const, source.normalizing_const),
              ("example shape", validation.feature_shape, source.feature_shape),
              ("number of segments", validation.num_segments, source.num_segments),
              # each variable's, for several (multi-io)
              ("example shapes", validation.feature_shapes, source.feature_shapes),
              ("numbers of classes", validation.output_classes, source.output_classes),
              ("class values", validation.all_class_values, source.all_class_values))
    for what, found, expected in checks:
        if found != expected:
            raise InvalidArgument(
                f"validation_table: its {what} {show_value(found)} does not match source_table's {show_value(expected)}; it was not "
                f"packed for {source.text!r} (use validation_preprocessor_dl(..., training_preprocessor_table => "
                f"'{source.text}'))")
    return validation


def show_value(value) -> str:
    return "NULL" if value is None else str(list(value) if isinstance(value, tuple) else value)


def _mst_tables(conn, text) -> tuple[TableName, TableName, ObjectTable | None]:
    argument = "model_selection_table"
    mst = catalog.input_table(conn, text, argument)
    present = catalog.columns(conn, mst)
    missing = [c for c in MST_COLUMNS if c not in present]
    if missing:
        raise InvalidArgument(f"{argument}: {text!r} is not a model selection table (no column {', '.join(missing)}); "
                              f"{CONFIG_HINT}")
    summary = identifiers.summary_table(mst, argument)
    if not identifiers.table_exists(conn, summary):
        raise ObjectMissing(f"{argument}: {text!r} has no summary table {str(summary)!r}; {CONFIG_HINT}")
    catalog.require_select(conn, summary, argument, text, companion=True)
    rows = conn.execute(f"SELECT * FROM {summary.sql(conn)}")
    if len(rows) != 1 or "model_arch_table" not in rows[0]:
        raise InvalidArgument(f"{argument}: summary {summary} must have one row with model_arch_table; {CONFIG_HINT}")
    objects = custom_functions.named(conn, rows[0].get("object_table"), f"{argument} (object_table in {summary})")
    arch_text = rows[0]["model_arch_table"]
    arch = identifiers.named_table(conn, arch_text, f"{argument} (model_arch_table in {summary})")
    if arch.oid is None:
        raise ObjectMissing(f"{argument}: its summary names model architecture table {arch_text!r}, which does not exist")
    missing = missing_arch_columns(conn, arch)
    if missing:
        raise InvalidArgument(f"{argument}: its summary names {arch_text!r} as model architecture table, but that "
                              f"table has no column {', '.join(missing)} (make one with load_keras_model())")
    return mst, arch, objects


def missing_arch_columns(conn, arch: TableName) -> list[str]:
    """The model architecture table's columns that training reads and ``arch`` lacks."""
    present = catalog.columns(conn, arch)
    return [c for c in ("model_id", "model_arch", "model_weights") if c not in present]


def output_tables(conn, text, warm_start: bool = False) -> OutputTables:
    argument = "model_output_table"
    table = identifiers.named_table(conn, text, argument)
    summary = identifiers.summary_table(table, argument)
    info_name = table.name + "_info"
    if len(info_name.encode()) > 63:
        raise InvalidArgument(f"{argument}: name {table.name!r} is too long: its info table would exceed 63 bytes")
    out = OutputTables(table, summary, table.sibling(info_name), text)
    check_outputs(conn, (out.model, out.summary, out.info), warm_start, argument)
    return out


def check_outputs(conn, tables, warm_start: bool, argument: str) -> None:
    """Output tables must not exist yet, or, for a warm start, must all exist (``argument``: the output
    name's argument, named in the error)."""
    for each in tables:
        exists = identifiers.table_exists(conn, each)
        if warm_start and not exists:
            raise ObjectMissing(f"warm_start: TRUE but {str(each)!r} does not exist; warm start continues from the "
                                f"output tables of an earlier run (use warm_start => FALSE for a new run)")
        if not warm_start and exists:
            raise ObjectExists(f"{argument}: table {str(each)!r} already exists",
                               hint="Drop it, choose another name, or continue training it with warm_start => TRUE.")


# ---------------------------------------------------------------------------------------------------
# Models

def _models(conn, mst: TableName, arch_table: TableName, source: PackedTable) -> list[ModelConfig]:
    rows = conn.execute(f"SELECT mst_key, model_id, compile_params, fit_params FROM {mst.sql(conn)} ORDER BY mst_key")
    if not rows:
        raise InvalidArgument(f"model_selection_table: {mst} has no rows; {CONFIG_HINT}")
    _check_keys(mst, rows)
    archs = {}
    models, optimizers = [], []
    for row in rows:
        where = f"model_selection_table: mst_key {row['mst_key']}"
        if row["model_id"] not in archs:
            archs[row["model_id"]] = architecture(conn, arch_table, row["model_id"], where, source)
        compiled = params.parse_compile_params(row["compile_params"], f"{where}: compile_params")
        optimizers.append(OptimizerUse(f"{where}: compile_params", compiled.optimizer))
        check_class_weight(params.parse_fit_params(row["fit_params"], f"{where}: fit_params"), source,
                           f"{where}: fit_params")
        model_arch, weights = archs[row["model_id"]]
        models.append(ModelConfig(row["mst_key"], row["model_id"], model_arch, row["compile_params"],
                                  row["fit_params"] or "", weights))
    model_selection.check_optimizer_arguments(optimizers)  # a row written into the table by hand, say
    return models


def check_class_weight(fit: params.FitParams, source: PackedTable, where: str) -> None:
    """class_weight's keys are class indices of the source's one dependent variable (Keras refuses it
    for several outputs, and would fail on an index out of range only in the workers, hops into the run)."""
    if fit.class_weight is None:
        return
    if len(source.dependents) > 1:
        raise InvalidArgument(f"{where}: class_weight weighs the classes of one dependent variable, and "
                              f"{source.text!r} has {len(source.dependents)} ({', '.join(source.dependents)}); "
                              "Keras takes no class_weight for a model with several outputs")
    classes = source.output_classes[0] if source.output_classes else source.num_classes
    wrong = sorted(k for k in fit.class_weight if k >= classes)
    if classes and wrong:
        raise InvalidArgument(f"{where}: class_weight: class index {wrong[0]} is out of range: {source.text!r} has "
                              f"{classes} classes, indices 0 to {classes - 1} (the positions of its class values)")


def batch_size_notes(conn, function: str, source: PackedTable, sizes: dict[int, str]) -> None:
    """A NOTICE for each batch_size above the largest segment's example count (``sizes``: batch_size ->
    the configurations that give it, '' for the one of madlib_keras_fit): a hop then trains its whole
    segment as one batch, as Keras clips the batch; not an error, as that is full-batch training."""
    largest = max(s.images for s in source.segments.values())
    segments = len(source.segments)
    for size, who in sorted(sizes.items()):
        if size > largest:
            conn.notice(f"{function}: fit_params: batch_size={size}{f' ({who})' if who else ''} is more than the "
                        f"{largest} examples of the largest of the {segments} segment{'s' if segments > 1 else ''} "
                        f"of {source.text!r}: each hop trains on its whole segment as one batch (Keras takes a "
                        "batch larger than the data as all of it)")


def _batch_sizes(models: list[ModelConfig]) -> dict[int, str]:
    """batch_size -> 'mst_key 1, 3' (those given one explicitly; the first 10 of more)."""
    keys: dict[int, list[int]] = {}
    for model in models:
        size = params.parse_fit_params(model.fit_params).batch_size
        if size is not None:
            keys.setdefault(size, []).append(model.mst_key)
    return {size: f"mst_key {', '.join(map(str, found[:10]))}" + (f" and {len(found) - 10} more" if len(found) > 10 else "")
            for size, found in keys.items()}


def _check_keys(mst: TableName, rows: list[dict]) -> None:
    keys = [r["mst_key"] for r in rows]
    if None in keys:
        raise InvalidArgument(f"model_selection_table: {mst} has a row with mst_key NULL; every row needs its own key")
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise InvalidArgument(f"model_selection_table: mst_key {', '.join(map(str, repeated))} appears more than once "
                              f"in {mst}; every row needs its own key")
    missing_id = [r["mst_key"] for r in rows if r["model_id"] is None]
    if missing_id:
        raise InvalidArgument(f"model_selection_table: mst_key {missing_id[0]}: model_id is NULL")


def architecture(conn, arch_table: TableName, model_id, where: str, source: PackedTable) -> tuple[str, bytes | None]:
    """(model_arch, model_weights or None) of ``model_id``, whose input shape and class count must fit
    ``source`` (errors start with ``where``)."""
    rows = conn.execute(f"SELECT model_arch::text AS model_arch, model_weights FROM {arch_table.sql(conn)} "
                        "WHERE model_id = $1", [model_id], ["integer"])
    if not rows:
        raise InvalidArgument(f"{where}: model_id {model_id} is not in model architecture table {arch_table}")
    info = arch_info.read(rows[0]["model_arch"])
    reason = arch_info.refusal(info)
    if reason is not None:  # a row written into the table directly, not through load_keras_model
        raise InvalidArgument(f"{where}: model_id {model_id} of {arch_table}: {reason}")
    # the DBA's cap before the workers build it; the run's memory budget is driver.plan_memory's check
    builder.check_size(conn, rows[0]["model_arch"], f"{where}: model_id {model_id} of {arch_table}", budget=False)
    if several_io(info, source):
        reason = arch_info.io_mismatch(info, source.feature_shapes, source.output_classes)
        if reason is not None:
            raise InvalidArgument(f"{where}: model_id {model_id} {reason} in source_table {source.text!r}")
        weights = rows[0]["model_weights"]
        return rows[0]["model_arch"], bytes(weights) if weights is not None else None
    expected = tuple(source.feature_shape)
    if not arch_info.accepts(info.input_shape, expected):
        raise InvalidArgument(f"{where}: model_id {model_id} expects input shape {arch_info.shape_text(info.input_shape)} but "
                              f"source_table {source.text!r} holds examples of shape {arch_info.shape_text(expected)}")
    if info.num_classes != source.num_classes:
        raise InvalidArgument(f"{where}: model_id {model_id} has {info.num_classes} outputs but source_table "
                              f"{source.text!r} has {source.num_classes} classes")
    weights = rows[0]["model_weights"]
    return rows[0]["model_arch"], bytes(weights) if weights is not None else None


def several_io(info: arch_info.ArchInfo, table: PackedTable) -> bool:
    """Whether the model or the table has several inputs or outputs (multi-io)."""
    return table.multi_io or len(info.input_shapes) > 1 or len(info.class_counts) > 1


def _warm_start(conn, out: OutputTables, models: list[ModelConfig]) -> list[ModelConfig]:
    """Continue from the earlier run's states: weights always, optimizer state while the model and its
    compile parameters are unchanged. MSTs added since start fresh; removed ones are not trained."""
    for table, needed in ((out.model, ("mst_key", "model_weights")), (out.info, ("mst_key", "model_id", "compile_params"))):
        missing = [c for c in needed if c not in catalog.columns(conn, table)]
        if missing:
            raise InvalidArgument(f"warm_start: {table} is not an output table of madlib_keras_fit_multiple_model "
                                  f"(no column {', '.join(missing)}); warm start continues from such tables")
    has_state = "optimizer_state" in catalog.columns(conn, out.model)
    state = "m.optimizer_state" if has_state else "NULL::bytea"
    rows = conn.execute(f"SELECT m.mst_key, m.model_weights, {state} AS optimizer_state, i.model_id, i.compile_params "
                        f"FROM {out.model.sql(conn)} m LEFT JOIN {out.info.sql(conn)} i USING (mst_key)")
    earlier = {r["mst_key"]: r for r in rows}
    continued = []
    for model in models:
        row = earlier.get(model.mst_key)
        if row is None or row["model_weights"] is None or (row["model_id"] is not None and row["model_id"] != model.model_id):
            continued.append(model)
            continue
        same_compile = row["compile_params"] == model.compile_params
        optimizer = stored_state.read(conn, out.model, model.mst_key, row["optimizer_state"]) if same_compile else None
        continued.append(ModelConfig(model.mst_key, model.model_id, model.model_arch, model.compile_params,
                                     model.fit_params, bytes(row["model_weights"]), optimizer))
    return continued


# ---------------------------------------------------------------------------------------------------
# last_fit_hops()

@db.sql_function
def last_fit_hops() -> list[dict]:
    def stamp(seconds):
        return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)

    return [{"kind": h.kind, "iteration": h.iteration, "mst_key": h.mst_key, "segment": h.segment,
             "worker_pid": h.worker_pid, "started": stamp(h.started), "ended": stamp(h.ended), "seconds": h.seconds,
             "overhead_seconds": h.overhead_seconds, "buffers_read": h.buffers_read, "images": h.images,
             "loss": h.loss, "worker_rss_bytes": h.rss_bytes, "worker_peak_rss_bytes": h.peak_rss_bytes,
             "worker_shared_rss_bytes": h.shared_rss_bytes, "metric": h.metric,
             "worker_threads": h.worker_threads, "node": h.node} for h in driver.LAST_HOPS]


# ---------------------------------------------------------------------------------------------------
# Help

SUMMARY = """madlib_keras_fit_multiple_model: train every model configuration of a model selection table
at once, with Model Hopper Parallelism: the packed data stays on its segments, each model visits every
segment once per iteration, one worker session per segment trains in parallel, and with
use_caching => TRUE each segment keeps its data in memory after the first hop.

For arguments and examples: SELECT madlib_dl.madlib_keras_fit_multiple_model('usage');
"""

USAGE = """madlib_keras_fit_multiple_model(
    source_table              VARCHAR,  -- packed training table (training_preprocessor_dl)
    model_output_table        VARCHAR,  -- created: <name>, <name>_summary, <name>_info
    model_selection_table     VARCHAR,  -- mst table and its _summary (generate_model_configs)
    num_iterations            INTEGER,  -- >= 1; each model visits every segment once per iteration
    use_gpus                  BOOLEAN,  -- one GPU per worker (shared GPUs are split); error without GPUs
    validation_table          VARCHAR,  -- DEFAULT NULL; packed by validation_preprocessor_dl
    metrics_compute_frequency INTEGER,  -- DEFAULT NULL (= num_iterations): metrics every n iterations and at the end
    warm_start                BOOLEAN,  -- DEFAULT FALSE; TRUE continues from the existing output tables
    name                      VARCHAR,  -- DEFAULT NULL; free text for the summary
    description               VARCHAR,  -- DEFAULT NULL
    use_caching               BOOLEAN DEFAULT FALSE  -- keep each segment's data in memory after the first hop
) RETURNS VOID

The shorter forms are overloads without use_caching: use_caching => TRUE needs every argument before it
(NULL where unused), as in the example. Argument names are these exactly (a misspelt one gives
PostgreSQL's "function ... does not exist").

Output tables:
    <model_output_table>  (mst_key, model_weights BYTEA (MADlib format), model_arch JSON, __dist_key__,
                           optimizer_state BYTEA)
    <..>_info             one row per mst_key: compile/fit params, metric and loss arrays (training and
                          validation), *_final values, metrics_elapsed_time (training),
                          validation_metrics_elapsed_time, metrics_iters
    <..>_summary          the run: tables, iterations, times, num_classes, class values, normalizing_const

Settings (SET ...): madlib_dl.executor ('auto' | 'workers' | 'in_process'), madlib_dl.worker_idle_timeout,
madlib_dl.worker_threads, madlib_dl.memory_budget_mb, madlib_dl.fit_seed.
Progress: one NOTICE per iteration; pg_stat_activity.application_name shows the iteration;
SELECT * FROM madlib_dl.last_fit_hops() lists every hop of the last run in this session.

Example:
    SELECT madlib_dl.madlib_keras_fit_multiple_model('digits_packed', 'models', 'mst', 10, FALSE,
        'digits_val_packed', 1, FALSE, NULL, NULL, use_caching => TRUE);
    SELECT mst_key, validation_metrics_final FROM models_info ORDER BY 2 DESC;
"""


@db.sql_function
def fit_multiple_model_help(message=None) -> str:
    return help_topics.answer("madlib_keras_fit_multiple_model", message, SUMMARY, USAGE)
