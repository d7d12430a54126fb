"""madlib_keras_automl(): choose among the configurations of a search space with an AutoML method
(Hyperband, Hyperopt's TPE through Optuna, or ASHA) on Model Hopper Parallelism, and
hyperband_schedule(): Hyperband's brackets as a table.

Every argument is checked before the first hop, as fit_multiple's are. The outputs are fit_multiple's
three tables, with MADlib's AutoML columns (and each configuration's status and iterations in _info),
and model_selection_table: a new model selection table holding the best configuration (lowest
validation loss when a validation table is given, else lowest training loss, at its last
evaluation), as MADlib leaves it. Everything is written at the end, in the calling transaction.
"""

from __future__ import annotations

import math
import uuid

from madlib_dl import catalog, custom_functions, db, identifiers, packed_tables, settings
from madlib_dl.api import fit_multiple, model_selection
from madlib_dl.api import help as help_topics
from madlib_dl.automl import hyperband, methods
from madlib_dl.errors import InvalidArgument, ObjectExists
from madlib_dl.model_selection import configs, grid
from madlib_dl.model_selection.configs import Config
from madlib_dl.training import automl_driver, outputs, stored_state
from madlib_dl.training.spec import Caller, ModelConfig, RunSpec

AUTOML = Caller("madlib_keras_automl", "automl")


@db.sql_function
def automl(source_table, model_output_table, model_arch_table, model_selection_table, model_id_list,
           compile_params_grid, fit_params_grid, automl_method, automl_params, random_state, object_table,
           use_gpus, validation_table, metrics_compute_frequency, name, description, use_caching) -> None:
    conn = db.current()
    method = methods.method_name(automl_method)
    values = methods.parse_params(method, automl_params)
    objects = custom_functions.named(conn, object_table)
    source = packed_tables.describe(conn, source_table, "source_table")
    validation = fit_multiple.validation_argument(conn, validation_table, source)
    arch = model_selection.arch_table_argument(conn, model_arch_table)
    ids = configs.model_ids(model_id_list)
    space = grid.SearchSpace(ids, grid.parse_compile_grid(compile_params_grid), grid.parse_fit_grid(fit_params_grid))
    with custom_functions.in_scope(conn, objects):  # the search space may name the object table's functions
        model_selection.check_model_ids(conn, arch, ids)
        model_selection.check_optimizer_arguments(grid.check_space(space))
        archs = {i: fit_multiple.architecture(conn, arch.name, i, "model_id_list", source) for i in ids}
        fit_multiple.batch_size_notes(conn, "madlib_keras_automl", source, _batch_sizes(space))
        out = fit_multiple.output_tables(conn, model_output_table)
        mst = _new_selection_table(conn, model_selection_table, arch)
        reserved = outputs.reserve(conn, (out.model, out.summary, out.info, stored_state.side_table(out.model),
                                          mst.table, mst.summary))
        max_iterations, max_models = budget(method, values)
        frequency = _frequency(metrics_compute_frequency, max_iterations)
        segments = len(source.segments)

        def make_policy(seed: int):  # its arguments are checked above (methods.parse_params)
            return methods.make_policy(method, values, space, segments, seed)

        identity = {"method": method, "automl_params": methods.describe(values), "model_id_list": list(ids),
                    "compile_params_grid": compile_params_grid, "fit_params_grid": fit_params_grid,
                    "random_state": random_state}
        stand_ins = tuple(ModelConfig(0, i, model_arch, "", "", weights, object_table=objects)
                          for i, (model_arch, weights) in archs.items())
        spec = RunSpec(uuid.uuid4().hex, catalog.extension_schema(conn), source, validation, stand_ins, max_iterations,
                       frequency, bool(use_caching), bool(use_gpus), settings.read(conn, settings.FIT_SEED),
                       caller=AUTOML, output_table=out.model)
        result = automl_driver.train(conn, automl_driver.AutomlRun(spec, archs, method, make_policy, random_state,
                                                                   max_models, identity))
        outputs.release(conn, reserved)
        _write(conn, out, mst, arch, spec, result, method, values, random_state, use_gpus, {
            "source_table": source_table, "validation_table": validation_table if validation else None,
            "model_output_table": model_output_table, "model_arch_table": arch.name.typed_sql(conn),
            "model_selection_table": model_selection_table, "warm_start": False, "name": name,
            "description": description, "object_table": custom_functions.table_text(conn, objects)})


def _batch_sizes(space: grid.SearchSpace) -> dict[int, str]:
    """batch_size -> 'fit_params_grid', for the batch sizes the search space holds."""
    return {size: "fit_params_grid" for p in space.fit.params if p.name == "batch_size" for size in p.choices}


def budget(method: str, values) -> tuple[int, int]:
    """(the most iterations one configuration trains, the most configurations the method starts)."""
    if method == "hyperband":
        return values.R, hyperband.total_configs(hyperband.schedule(values.R, values.eta, values.skip_last))
    if method == "hyperopt":
        return values.num_iterations, values.num_configs
    return values.max_iterations, values.num_configs


def _frequency(value, max_iterations: int) -> int:
    """0: metrics only where the method needs a result (each rung's end)."""
    if value is None:
        return 0
    if not 1 <= value <= max_iterations:
        raise InvalidArgument(f"metrics_compute_frequency: expected 1 to the most iterations a configuration trains "
                              f"({max_iterations}), or NULL for metrics where the method compares configurations, "
                              f"got {value}")
    return int(value)


def _new_selection_table(conn, text, arch) -> model_selection.Target:
    given = identifiers.named_table(conn, text, "model_selection_table")
    if given.oid is not None:
        raise ObjectExists(f"model_selection_table: table {str(given)!r} already exists",
                           hint="Drop it or choose another name: madlib_keras_automl creates it with the best "
                                "configuration.")
    return model_selection.selection_target(conn, text, arch)  # its summary's name must be free too


# ---------------------------------------------------------------------------------------------------
# Outputs

INFO_COLUMNS = (("automl_status", "TEXT"), ("iterations_trained", "INTEGER"), ("s", "INTEGER"), ("i", "INTEGER"))


def _write(conn, out, mst, arch, spec: RunSpec, result: automl_driver.AutomlResult, method: str, values,
           random_state, use_gpus, request: dict) -> None:
    run = result.run
    trials = result.trials
    hyperband = method == "hyperband"  # only its configurations have a bracket (s) and a round (i)
    columns = INFO_COLUMNS if hyperband else INFO_COLUMNS[:2]
    info_values = {key: (t.status, t.done) + ((t.bracket, t.rung) if hyperband else ()) for key, t in trials.items()}
    summary = (("automl_method", "TEXT", method), ("automl_params", "TEXT", methods.describe(values)),
               ("random_state", "TEXT", None if random_state is None else str(random_state)),
               ("use_gpus", "BOOLEAN", bool(use_gpus)))
    trained = max((t.done for t in trials.values()), default=0)
    final = RunSpec(spec.run_id, spec.schema, spec.source, spec.validation,
                    tuple(m.config for _, m in sorted(run.models.items())), trained, spec.metrics_compute_frequency,
                    spec.use_caching, spec.use_gpus, spec.seed, spec.caller, output_table=spec.output_table)
    best = best_model(run.models, spec.validation is not None)
    outputs.write(conn, out, final, run, request,
                  outputs.Extra(columns, info_values, summary, result.metrics_iters))
    model_selection.create_selection_table(conn, mst, arch, request["object_table"])
    config = run.models[best].config
    chosen = Config(config.model_id, configs.compile_param(config.compile_params, "compile_params"),
                    configs.fit_param(config.fit_params, "fit_params"))
    _insert_best(conn, mst.table, best, chosen)
    notes = model_selection.translations(m.config.compile_params for _, m in sorted(run.models.items()))
    conn.notice("; ".join([f"madlib_keras_automl: {method} trained {len(trials)} configurations; the best is mst_key "
                           f"{best} ({config.compile_params}; {config.fit_params}), written to {mst.given}", *notes]))


def _insert_best(conn, table, mst_key: int, chosen: Config) -> None:
    """The best configuration under its own mst_key, as MADlib keeps it: the key names the same model in
    the output table, _info and the selection table (a renumbered row would join another model's row)."""
    conn.execute(f"INSERT INTO {table.sql(conn)} (mst_key, model_id, compile_params, fit_params) "
                 "VALUES ($1, $2, $3, $4)", [mst_key, chosen.model_id, chosen.compile_params.text,
                                             chosen.fit_params.text], ["integer", "integer", "varchar", "varchar"])
    # rows appended later (generate_model_configs) take keys after it
    conn.execute("SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence($1, 'mst_key'), $2)",
                 [table.sql(conn), mst_key], ["text", "bigint"])


def best_model(models: dict, by_validation: bool) -> int:
    """The mst_key with the lowest loss at its last evaluation (NaN and missing last; ties: lowest key)."""
    series = "validation_loss" if by_validation else "training_loss"

    def order(key):
        losses = models[key].metrics[series]
        loss = losses[-1] if losses else None
        return (loss is None or math.isnan(loss), loss if loss is not None and not math.isnan(loss) else 0.0, key)

    return min(models, key=order)


# ---------------------------------------------------------------------------------------------------
# hyperband_schedule()

@db.sql_function
def hyperband_schedule(schedule_table, r, eta, skip_last) -> None:
    conn = db.current()
    rounds = hyperband.schedule(r, 3 if eta is None else eta, 0 if skip_last is None else skip_last)
    table = identifiers.output_table(conn, schedule_table, "schedule_table")
    conn.execute(f"CREATE TABLE {table.sql(conn)} (s INTEGER, i INTEGER, n_i INTEGER, r_i INTEGER, UNIQUE (s, i))")
    conn.execute(f"INSERT INTO {table.sql(conn)} SELECT * FROM unnest($1::integer[], $2::integer[], $3::integer[], "
                 "$4::integer[])", [[x.s for x in rounds], [x.i for x in rounds], [x.n_i for x in rounds],
                                    [x.r_i for x in rounds]], ["integer[]"] * 4)


# ---------------------------------------------------------------------------------------------------
# Help

SUMMARY = """madlib_keras_automl: choose the best configuration of a search space (generate_model_configs'
grids, with distributions for optimizer arguments) by training many at once with Model Hopper
Parallelism and stopping the poor ones early:
    'hyperband'  MADlib's default: Hyperband's brackets of successive halving, run at the same time
    'hyperopt'   Hyperopt's TPE (or 'rand'), through Optuna: each configuration proposed from the results so far
    'asha'       asynchronous successive halving: a free worker promotes a good configuration or starts a new one

For arguments and examples: SELECT madlib_dl.madlib_keras_automl('usage');
"""

USAGE = """madlib_keras_automl(
    source_table              VARCHAR,  -- packed training table (training_preprocessor_dl)
    model_output_table        VARCHAR,  -- created: <name>, <name>_summary, <name>_info
    model_arch_table          VARCHAR,  -- load_keras_model's table
    model_selection_table     VARCHAR,  -- created at the end: the best configuration (and its _summary)
    model_id_list             INTEGER[],
    compile_params_grid       VARCHAR,  -- as generate_model_configs; optimizer arguments may be distributions
    fit_params_grid           VARCHAR,
    automl_method             VARCHAR DEFAULT 'hyperband',  -- 'hyperband' | 'hyperopt' | 'asha'
    automl_params             VARCHAR DEFAULT NULL,  -- hyperband: 'R=6, eta=3, skip_last=0'
                                                     -- hyperopt:  'num_configs=20, num_iterations=5, algorithm=tpe'
                                                     -- asha:      'max_iterations=9, grace_iterations=1,
                                                     --             reduction_factor=3, num_configs=27'
    random_state              INTEGER DEFAULT NULL,  -- the same value draws the same configurations
    object_table              VARCHAR DEFAULT NULL,  -- the custom functions' table (load_custom_function)
    use_gpus                  BOOLEAN DEFAULT FALSE,
    validation_table          VARCHAR DEFAULT NULL,  -- configurations are compared by its loss when given
    metrics_compute_frequency INTEGER DEFAULT NULL,  -- NULL: metrics where the method compares configurations
    name                      VARCHAR DEFAULT NULL,
    description               VARCHAR DEFAULT NULL,
    use_caching               BOOLEAN DEFAULT FALSE
) RETURNS VOID

<model_output_table>_info has one row per configuration tried, with automl_status ('done': it trained
its whole budget; 'stopped': it was not promoted), iterations_trained and, for hyperband, s and i (its
bracket and last round). <..>_summary adds automl_method, automl_params, random_state and use_gpus.

Example:
    SELECT madlib_dl.madlib_keras_automl('digits_packed', 'automl_models', 'arch', 'automl_best', ARRAY[1],
        $${'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'],
           'optimizer_params_list': [{'optimizer': ['Adam'], 'lr': [0.0001, 0.1, 'log']}]}$$,
        $${'batch_size': [32, 64], 'epochs': [1]}$$, 'asha',
        'max_iterations=9, grace_iterations=1, reduction_factor=3, num_configs=12', 42,
        validation_table => 'digits_val_packed', use_caching => TRUE);
    SELECT * FROM automl_best;
"""

SCHEDULE_SUMMARY = """hyperband_schedule: write Hyperband's schedule (one row per bracket s and round i: n_i
configurations trained to r_i iterations) into a new table, for the automl_params 'R=..., eta=..., skip_last=...'.

For arguments: SELECT madlib_dl.hyperband_schedule('usage');
"""

SCHEDULE_USAGE = """hyperband_schedule(
    schedule_table VARCHAR,            -- created: (s, i, n_i, r_i)
    r              INTEGER,            -- the most iterations one configuration trains (R)
    eta            INTEGER DEFAULT 3,  -- keep the best 1/eta of each round
    skip_last      INTEGER DEFAULT 0   -- leave out the last rounds
) RETURNS VOID

Example:
    SELECT madlib_dl.hyperband_schedule('hb_schedule', 81, 3, 0);
    SELECT * FROM hb_schedule ORDER BY s DESC, i;
"""


@db.sql_function
def automl_help(message=None) -> str:
    return help_topics.answer("madlib_keras_automl", message, SUMMARY, USAGE)


@db.sql_function
def hyperband_schedule_help(message=None) -> str:
    return help_topics.answer("hyperband_schedule", message, SCHEDULE_SUMMARY, SCHEDULE_USAGE)
