"""madlib_keras_fit(): train one model on a packed table.

MADlib trains a copy of the model on every segment at once and averages the copies' weights after each
iteration (model averaging), which is not SGD over the table: each copy sees one segment, and the
average of their updates is not the update of a model that saw them all. Here the one model visits
the segments in turn instead, one hop per segment per iteration, carrying its weights and optimizer
state from hop to hop: sequential SGD, the same as plain Keras training on the segments' examples in
that order. It runs on fit_multiple's machinery (a run spec with one model, driver.train), so the
checks, the executors, the metrics, cancel and clean-up are the ones fit_multiple has.

MADlib's fit has no use_caching argument; the driver caches each segment's examples when the run's
memory estimate fits madlib_dl.memory_budget_mb, and otherwise reads the segment's buffers on every
hop, one segment at a time, with a NOTICE (driver.plan_memory).
"""

from __future__ import annotations

import uuid
from dataclasses import replace

from madlib_dl import catalog, custom_functions, db, identifiers, packed_tables, settings
from madlib_dl.api import fit_multiple, model_selection
from madlib_dl.api import help as help_topics
from madlib_dl.errors import InvalidArgument
from madlib_dl.identifiers import TableName
from madlib_dl.keras_runtime import params
from madlib_dl.model_selection.configs import OptimizerUse
from madlib_dl.packed_tables import PackedTable
from madlib_dl.training import driver, fit_outputs, outputs, stored_state
from madlib_dl.training.fit_outputs import FitOutputTables, FitRequest
from madlib_dl.training.model_table import ModelTable
from madlib_dl.training.spec import FIT, ModelConfig, RunSpec

MST_KEY = 1  # the one model's key in the run: seeds and schedule match fit_multiple's for a one-row mst table


@db.sql_function
def fit(source_table, model, model_arch_table, model_id, compile_params, fit_params, num_iterations, use_gpus,
        validation_table, metrics_compute_frequency, warm_start, name, description, object_table) -> None:
    conn = db.current()
    objects = custom_functions.named(conn, object_table)
    with custom_functions.in_scope(conn, objects):  # compile_params may name its functions
        optimizer = params.parse_compile_params(compile_params, "compile_params").optimizer
        parsed_fit = params.parse_fit_params(fit_params, "fit_params")
        batch_size = parsed_fit.batch_size
        iterations = fit_multiple.num_iterations_argument(num_iterations)
        frequency = fit_multiple.frequency_argument(metrics_compute_frequency, iterations)
        warm_start = bool(warm_start)
        source = packed_tables.describe(conn, source_table, "source_table")
        validation = fit_multiple.validation_argument(conn, validation_table, source)
        fit_multiple.check_class_weight(parsed_fit, source, "fit_params")
        config = replace(_model(conn, model_arch_table, model_id, compile_params, fit_params, source), object_table=objects)
        out = _outputs(conn, model, warm_start)
        model_selection.check_optimizer_arguments([OptimizerUse("compile_params", optimizer)])  # imports Keras
        fit_multiple.batch_size_notes(conn, "madlib_keras_fit", source, {} if batch_size is None else {batch_size: ""})
        offset = 0
        if warm_start:
            config, offset = _warm_start(conn, out, config)
        schema = catalog.extension_schema(conn)
        table = ModelTable(out.model, schema, keyed=False)
        reserved = [] if warm_start else table.create_reserved(conn, outputs.reserve(
            conn, (out.model, out.summary, stored_state.side_table(out.model))))
        spec = RunSpec(uuid.uuid4().hex, schema, source, validation, (config,), iterations,
                       frequency, None, bool(use_gpus), settings.read(conn, settings.FIT_SEED), caller=FIT,
                       iteration_offset=offset, output_table=out.model)
        result = driver.train(conn, spec, None if warm_start else table.writer(conn))
        if warm_start:
            fit_outputs.drop(conn, out)
            table.create(conn)
        request = FitRequest(source_table, model, model_arch_table, model_id, validation_table if validation else None,
                             name, description, custom_functions.table_text(conn, objects))
        outputs.release(conn, reserved)
        fit_outputs.write(conn, out, spec, result, request, models=table)


# ---------------------------------------------------------------------------------------------------
# The model and the output tables

def _model(conn, arch_text, model_id, compile_params: str, fit_params, source: PackedTable) -> ModelConfig:
    arch = catalog.input_table(conn, arch_text, "model_arch_table")
    missing = fit_multiple.missing_arch_columns(conn, arch)
    if missing:
        raise InvalidArgument(f"model_arch_table: {arch_text!r} is not a model architecture table (no column "
                              f"{', '.join(missing)})", hint="Make one with load_keras_model().")
    if model_id is None:
        raise InvalidArgument(f"model_id: expected the model_id of a model in {arch_text!r}, got NULL")
    model_arch, weights = fit_multiple.architecture(conn, arch, model_id, "model_id", source)
    return ModelConfig(MST_KEY, model_id, model_arch, compile_params, fit_params or "", weights)


def _outputs(conn, text, warm_start: bool) -> FitOutputTables:
    table = identifiers.named_table(conn, text, "model")
    out = FitOutputTables(table, identifiers.summary_table(table, "model"), text)
    fit_multiple.check_outputs(conn, (out.model, out.summary), warm_start, "model")
    return out


def _warm_start(conn, out: FitOutputTables, config: ModelConfig) -> tuple[ModelConfig, int]:
    """Continue from the earlier run's model: its weights, and its optimizer state while the
    architecture and compile parameters are unchanged. Also returns how many iterations it had
    trained: this run's iterations are seeded after those, so 2 iterations equal 1 + a warm start of 1."""
    columns = catalog.columns(conn, out.model)
    if "model_weights" not in columns or "mst_key" in columns:
        raise InvalidArgument(f"warm_start: {out.model} is not an output table of madlib_keras_fit (one row with "
                              "model_weights); warm start continues from such a table")
    state = "optimizer_state" if "optimizer_state" in columns else "NULL::bytea"
    arch = "model_arch::text" if "model_arch" in columns else "NULL::text"
    rows = conn.execute(f"SELECT model_weights, {state} AS optimizer_state, {arch} AS model_arch "
                        f"FROM {out.model.sql(conn)}")
    if len(rows) != 1:
        raise InvalidArgument(f"warm_start: {out.model} must hold one model (one row), has {len(rows)} rows")
    if rows[0]["model_weights"] is None:
        raise InvalidArgument(f"warm_start: the model in {out.model} has NULL weights")
    earlier = _earlier_summary(conn, out.summary)
    row = rows[0]
    same = row["model_arch"] == config.model_arch and earlier.get("compile_params") == config.compile_params
    optimizer = stored_state.read(conn, out.model, stored_state.SINGLE_KEY, row["optimizer_state"]) if same else None
    continued = replace(config, weights=bytes(row["model_weights"]), optimizer_state=optimizer)
    return continued, int(earlier.get("total_iterations") or 0)


def _earlier_summary(conn, summary: TableName) -> dict:
    rows = conn.execute(f"SELECT * FROM {summary.sql(conn)}")
    return rows[0] if len(rows) == 1 else {}


# ---------------------------------------------------------------------------------------------------
# Help

SUMMARY = """madlib_keras_fit: train one Keras model on a packed table. The model visits the table's
segments in turn, one hop per segment per iteration, carrying its weights and optimizer state: the
same training as plain Keras on the segments' examples in that order (MADlib instead averages copies
trained on each segment, which is not SGD over the table).

For arguments and examples: SELECT madlib_dl.madlib_keras_fit('usage');
"""

USAGE = """madlib_keras_fit(
    source_table              VARCHAR,  -- packed training table (training_preprocessor_dl)
    model                     VARCHAR,  -- created: <model> (the model) and <model>_summary
    model_arch_table          VARCHAR,  -- model architecture table (load_keras_model)
    model_id                  INTEGER,  -- the architecture's model_id; its model_weights, if any, are the start
    compile_params            VARCHAR,  -- required, e.g. loss='categorical_crossentropy', optimizer='Adam(lr=0.01)'
    fit_params                VARCHAR,  -- e.g. batch_size=32, epochs=1 (passes over a segment per hop); '': defaults
    num_iterations            INTEGER,  -- >= 1; each iteration visits every segment once
    use_gpus                  BOOLEAN DEFAULT FALSE,  -- one GPU per worker; an error when the server has none
    validation_table          VARCHAR DEFAULT NULL,   -- packed by validation_preprocessor_dl for source_table
    metrics_compute_frequency INTEGER DEFAULT NULL,   -- metrics every n iterations and after the last
    warm_start                BOOLEAN DEFAULT NULL,   -- TRUE continues from the existing <model> and its state
    name                      VARCHAR DEFAULT NULL,   -- free text for the summary
    description               VARCHAR DEFAULT NULL,
    object_table              VARCHAR DEFAULT NULL    -- table of custom losses/metrics (load_custom_function)
) RETURNS VOID

How it trains: one hop per segment per iteration, in an order drawn for each iteration from
madlib_dl.fit_seed (the same in every executor), each hop starting from the state the previous one
ended with. Not MADlib's model averaging: this is sequential SGD. Initial weights come from the
architecture table's model_weights, or are seeded from madlib_dl.fit_seed and model_id. With
SET madlib_dl.executor = 'in_process' a run is exactly reproducible, and a warm start of k iterations
after n continues exactly as one run of n + k.

Caching: each segment's examples stay in memory after its first hop when the run fits
madlib_dl.memory_budget_mb; otherwise every hop reads its segment's buffers from the table and
evaluation too visits one segment at a time (a NOTICE says so and how to raise the budget).

Output tables:
    <model>          one row: model_weights BYTEA (MADlib format), model_arch JSON, optimizer_state BYTEA
    <model>_summary  one row: the arguments, model_type, model_size (KiB), training times, num_classes,
                     <dependent>_class_values, dependent_vartype, normalizing_const, metrics_type,
                     loss_type, training_/validation_ metrics and loss (final values and arrays),
                     metrics_elapsed_time (training), metrics_iters, validation_metrics_elapsed_time,
                     total_iterations (all runs, warm starts included)

Settings (SET ...): madlib_dl.executor ('auto' | 'workers' | 'in_process'), madlib_dl.worker_idle_timeout,
madlib_dl.worker_threads, madlib_dl.memory_budget_mb, madlib_dl.fit_seed.
Progress: one NOTICE per iteration; pg_stat_activity.application_name shows the iteration;
SELECT * FROM madlib_dl.last_fit_hops() lists every hop of the last run in this session.

Example:
    SELECT madlib_dl.madlib_keras_fit('digits_packed', 'digits_model', 'model_arch_library', 1,
        $$loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']$$,
        'batch_size=32, epochs=1', 10, validation_table => 'digits_val_packed', metrics_compute_frequency => 2);
    SELECT training_loss_final, validation_metrics_final FROM digits_model_summary;
"""


@db.sql_function
def fit_help(message=None) -> str:
    return help_topics.answer("madlib_keras_fit", message, SUMMARY, USAGE)
