"""load_model_selection_table() and generate_model_configs(): the model-selection ("mst") table that
fit_multiple trains from, one row per (model id, compile params, fit params), and its summary.

    <mst>          (mst_key SERIAL PRIMARY KEY, model_id INTEGER, compile_params VARCHAR, fit_params VARCHAR,
                    UNIQUE (model_id, compile_params, fit_params))
    <mst>_summary  (model_arch_table VARCHAR, object_table VARCHAR), one row

Both functions append to an existing mst table made from the same model arch table; rows that mean the
same as one already there are skipped. Every argument is checked before anything is created.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from madlib_dl import catalog, custom_functions, db, identifiers
from madlib_dl.api import help as help_topics
from madlib_dl.errors import InvalidArgument, ObjectExists, ObjectMissing
from madlib_dl.identifiers import TableName
from madlib_dl.model_selection import configs, grid
from madlib_dl.model_selection.configs import Config, OptimizerUse
from madlib_dl.segment.requests import ObjectTable

MST_COLUMNS = ("mst_key", "model_id", "compile_params", "fit_params")
SUMMARY_COLUMNS = ("model_arch_table", "object_table")
INTEGER_TYPES = ("smallint", "integer", "bigint")


@dataclass(frozen=True)
class ArchTable:
    name: TableName  # as the caller wrote it
    oid: int


@dataclass(frozen=True)
class Target:
    """The mst table and its summary, schema-qualified, and whether they already exist."""
    given: TableName  # as the caller wrote it, for messages
    table: TableName
    summary: TableName
    exists: bool


# ---------------------------------------------------------------------------------------------------
# The SQL functions

@db.sql_function
def load_model_selection_table(model_arch_table, model_selection_table, model_id_list, compile_params_list,
                               fit_params_list, object_table) -> None:
    conn = db.current()
    arch = arch_table_argument(conn, model_arch_table)
    objects = custom_functions.named(conn, object_table)
    target = selection_target(conn, model_selection_table, arch, objects)
    ids = configs.model_ids(model_id_list)
    with custom_functions.in_scope(conn, objects):  # its compile strings may name the object table's functions
        compiles = configs.param_list(compile_params_list, "compile_params_list", configs.compile_param)
        fits = configs.param_list(fit_params_list, "fit_params_list", configs.fit_param)
        check_model_ids(conn, arch, ids)
        check_optimizer_arguments(configs.optimizer_uses(compiles))
        made = configs.product(ids, compiles, fits)
        combinations = len(model_id_list) * len(compile_params_list) * len(fit_params_list)
        notes = _merged_note(combinations, len(made), "the arguments")
        _save(conn, "load_model_selection_table", target, arch, made, notes, objects)


@db.sql_function
def generate_model_configs(model_arch_table, model_selection_table, model_id_list, compile_params_grid,
                           fit_params_grid, search_type, num_configs, random_state, object_table) -> None:
    conn = db.current()
    arch = arch_table_argument(conn, model_arch_table)
    objects = custom_functions.named(conn, object_table)
    target = selection_target(conn, model_selection_table, arch, objects)
    ids = configs.model_ids(model_id_list)
    space = grid.SearchSpace(ids, grid.parse_compile_grid(compile_params_grid), grid.parse_fit_grid(fit_params_grid))
    kind = grid.search_type(search_type)
    grid.check_search(space, kind, num_configs, random_state)
    check_model_ids(conn, arch, ids)
    with custom_functions.in_scope(conn, objects):  # the grid's losses and metrics may name its functions
        probed = grid.check_space(space)
        if kind == "grid":
            made = grid.grid_configs(space)
            notes = _merged_note(space.grid_size(), len(made), "the grid")
        else:
            made = grid.random_configs(space, num_configs, grid.generator(random_state))
            notes = [] if len(made) == num_configs else [
                f"the search space gave only {len(made)} distinct configurations of the {num_configs} asked for"]
        # every value probed first (errors name the grid entry), then each optimizer made
        check_optimizer_arguments(probed + configs.optimizer_uses(dict.fromkeys(c.compile_params for c in made)))
        _save(conn, "generate_model_configs", target, arch, made, notes, objects)


# ---------------------------------------------------------------------------------------------------
# Arguments

def arch_table_argument(conn, text) -> ArchTable:
    table = catalog.input_table(conn, text, "model_arch_table")
    column = catalog.columns(conn, table).get("model_id")
    if column is None:
        raise InvalidArgument(f"model_arch_table: table {table} has no column model_id "
                              "(expected a model architecture table, as load_keras_model makes)")
    if column.type not in INTEGER_TYPES:
        raise InvalidArgument(f"model_arch_table: column model_id of {table} must be an integer, it is {column.type}")
    return ArchTable(table, _oid(conn, table))


def _oid(conn, table: TableName) -> int | None:
    return identifiers.resolve(conn, table).oid


def selection_target(conn, text, arch: ArchTable, objects: ObjectTable | None = None) -> Target:
    """Where the rows go. A new mst table needs a free summary name; an existing one must be an mst
    table whose summary names the same model arch table."""
    argument = "model_selection_table"
    given = identifiers.parse_table_name(text, argument)
    # Messages name the mst table and its summary with the schema they are (or will be) in.
    resolved = replace(identifiers.named_table(conn, text, argument), typed_schema=True)
    summary = identifiers.summary_table(resolved, argument)
    if resolved.oid is None:
        target = Target(given, resolved, summary, exists=False)
        if identifiers.table_exists(conn, target.summary):
            raise ObjectExists(f"{argument}: table {target.summary} already exists but {given} does not",
                               hint="Drop it or choose another name.")
        return target
    target = Target(given, resolved, summary, True)
    kind = conn.execute("SELECT c.relkind::pg_catalog.text AS kind FROM pg_catalog.pg_class c "
                        "WHERE c.oid OPERATOR(pg_catalog.=) $1", [resolved.oid], ["oid"])[0]["kind"]
    if kind not in ("r", "p"):
        raise InvalidArgument(f"{argument}: {given} exists and is not a table")
    _require_columns(conn, target.table, MST_COLUMNS, f"{argument}: table {given} exists but is not a model selection table")
    _check_summary(conn, target, arch, objects)
    return target


def _require_columns(conn, table: TableName, names, problem: str) -> None:
    found = catalog.columns(conn, table)
    missing = [c for c in names if c not in found]
    if missing:
        raise InvalidArgument(f"{problem} (it has no column {', '.join(missing)})")


def _check_summary(conn, target: Target, arch: ArchTable, objects: ObjectTable | None) -> None:
    argument = "model_selection_table"
    if not identifiers.table_exists(conn, target.summary):
        raise ObjectMissing(f"{argument}: table {target.given} exists but its summary table {target.summary} does not; "
                            "rows can only be appended to a model selection table with its summary")
    _require_columns(conn, target.summary, SUMMARY_COLUMNS,
                     f"{argument}: {target.summary} is not the summary of a model selection table")
    rows = conn.execute(f"SELECT model_arch_table, object_table FROM {target.summary.sql(conn)}")
    if len(rows) != 1:
        raise InvalidArgument(f"{argument}: {target.summary} must hold exactly one row, it holds {len(rows)}")
    stored = rows[0]["model_arch_table"]
    if not _same_table(conn, stored, arch):
        raise InvalidArgument(f"model_arch_table: {target.given} was made from model arch table {stored!r} "
                              f"(see {target.summary}), not {str(arch.name)!r}; append with that table, "
                              "or choose another model_selection_table")
    stored_objects = rows[0]["object_table"]
    if stored_objects != custom_functions.table_text(conn, objects):
        raise InvalidArgument(f"object_table: {target.given} was made with object table "
                              f"{'NULL' if stored_objects is None else repr(stored_objects)} (see {target.summary}), "
                              f"not {'NULL' if objects is None else repr(str(objects))}; append with that one, or "
                              "choose another model_selection_table")


def _same_table(conn, stored: str | None, arch: ArchTable) -> bool:
    """Same table now (same oid), or the same name (the arch table was dropped and re-created)."""
    if stored is None:
        return False
    try:
        table = identifiers.parse_table_name(stored, "model_arch_table")
    except InvalidArgument:
        return False
    return table == arch.name or _oid(conn, table) == arch.oid


def check_model_ids(conn, arch: ArchTable, ids) -> None:
    rows = conn.execute(f"SELECT DISTINCT model_id FROM {arch.name.sql(conn)} WHERE model_id = ANY($1)",
                        [list(ids)], ["integer[]"])
    missing = sorted(set(ids) - {r["model_id"] for r in rows})
    if len(missing) == 1:
        raise InvalidArgument(f"model_id_list: model id {missing[0]} is not in table {arch.name}")
    if missing:
        raise InvalidArgument(f"model_id_list: model ids {', '.join(map(str, missing))} are not in table {arch.name}")


_ACCEPTED_OPTIMIZERS: set[str] = set()  # OptimizerUse keys Keras took in this session (Keras does not change)


def check_optimizer_arguments(uses: list[OptimizerUse]) -> None:
    """Each distinct optimizer as Keras' constructor takes it, now rather than when training starts
    (builder.check_optimizers: built in a TensorFlow graph, so TensorFlow is imported but its runtime does
    not start). The first use of an optimizer names it in an error. One without arguments is Keras'
    default, and one given only a learning rate (a number, checked >= 0 by params) is taken by every
    Keras optimizer: Keras (TensorFlow, seconds of a session's start) is imported only for others."""
    distinct: dict[str, OptimizerUse] = {}
    for use in uses:
        if not _needs_keras(use.spec) or use.key in _ACCEPTED_OPTIMIZERS:
            continue
        distinct.setdefault(use.key, use)
    if not distinct:
        return
    from madlib_dl.keras_runtime import builder

    builder.check_optimizers((use.spec, use.where) for use in distinct.values())
    if len(_ACCEPTED_OPTIMIZERS) > 100_000:
        _ACCEPTED_OPTIMIZERS.clear()
    _ACCEPTED_OPTIMIZERS.update(distinct)


def _needs_keras(spec) -> bool:
    """Whether only Keras can tell if it takes these arguments."""
    if set(spec.kwargs) - {"learning_rate"}:
        return True
    rate = spec.kwargs.get("learning_rate")
    return rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)))  # a schedule


# ---------------------------------------------------------------------------------------------------
# Writing

def _save(conn, function: str, target: Target, arch: ArchTable, made: list[Config], notes: list[str],
          objects: ObjectTable | None) -> None:
    if target.exists:
        rows = conn.execute(f"SELECT model_id, compile_params, fit_params FROM {target.table.sql(conn)}")
        existing = {configs.stored_key(r["model_id"], r["compile_params"], r["fit_params"]) for r in rows}
    else:
        create_selection_table(conn, target, arch, custom_functions.table_text(conn, objects))
        existing = set()
    new = [c for c in made if c.key not in existing]
    notes = notes + translations(c.compile_params.text for c in new)
    added = insert_configs(conn, target.table, new)
    skipped = len(made) - added
    message = f"{function}: added {added} configuration{'s' if added != 1 else ''} to {target.given}"
    if skipped:
        message += f"; skipped {skipped} already in the table"
    conn.notice("; ".join([message, *notes]))


def translations(compile_texts) -> list[str]:
    """What the compile strings have of Keras 2 and what it becomes (params.compile_translations), once each."""
    from madlib_dl.keras_runtime import params

    found = dict.fromkeys(note for text in compile_texts for note in params.compile_translations(text))
    return [f"compile_params: {note}" for note in found]


def _merged_note(combinations: int, distinct: int, source: str) -> list[str]:
    repeated = combinations - distinct
    return [f"{repeated} of the {combinations} combinations of {source} repeated another and were merged"] if repeated else []


def create_selection_table(conn, target: Target, arch: ArchTable, object_table: str | None = None) -> None:
    """``object_table``: as custom_functions.table_text writes it (None: none)."""
    conn.execute(f"CREATE TABLE {target.table.sql(conn)} (mst_key SERIAL PRIMARY KEY, model_id INTEGER, "
                 "compile_params VARCHAR, fit_params VARCHAR, UNIQUE (model_id, compile_params, fit_params))")
    conn.execute(f"CREATE TABLE {target.summary.sql(conn)} (model_arch_table VARCHAR, object_table VARCHAR)")
    # The arch table's name as the caller gave it, quoted where SQL needs it, so it reads back as a name;
    # the object table's schema-qualified (MADlib's too).
    conn.execute(f"INSERT INTO {target.summary.sql(conn)} (model_arch_table, object_table) "
                 "VALUES (concat_ws('.', quote_ident($1), quote_ident($2)), $3)",
                 [arch.name.schema if arch.name.typed_schema else None, arch.name.name,
                  object_table], ["text", "text", "text"])


def insert_configs(conn, table: TableName, new: list[Config]) -> int:
    """Insert in order (mst_key follows it); a row another session added meanwhile is skipped."""
    if not new:
        return 0
    rows = conn.execute(
        f"WITH added AS (INSERT INTO {table.sql(conn)} (model_id, compile_params, fit_params) "
        "SELECT m, c, f FROM unnest($1::integer[], $2::varchar[], $3::varchar[]) WITH ORDINALITY AS u(m, c, f, n) "
        "ORDER BY n ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*)::integer AS added FROM added",
        [[c.model_id for c in new], [c.compile_params.text for c in new], [c.fit_params.text for c in new]],
        ["integer[]", "varchar[]", "varchar[]"])
    return rows[0]["added"]


# ---------------------------------------------------------------------------------------------------
# Help

LOAD_SUMMARY = """load_model_selection_table: make (or append to) a model selection table, one row per
combination of model id, compile parameters and fit parameters, for madlib_keras_fit_multiple_model.

    SELECT madlib_dl.load_model_selection_table(model_arch_table, model_selection_table,
               model_id_list, compile_params_list, fit_params_list [, object_table]);

For arguments and an example: SELECT madlib_dl.load_model_selection_table('usage');
To generate the combinations from a grid or at random: SELECT madlib_dl.generate_model_configs();
"""

LOAD_USAGE = """load_model_selection_table: make (or append to) a model selection table.

Usage:
    SELECT madlib_dl.load_model_selection_table(
        model_arch_table       VARCHAR,    -- table of model architectures (load_keras_model), with model_id
        model_selection_table  VARCHAR,    -- table to create, or to append to; <name>_summary goes with it
        model_id_list          INTEGER[],  -- model ids of model_arch_table
        compile_params_list    VARCHAR[],  -- compile parameter strings
        fit_params_list        VARCHAR[],  -- fit parameter strings ('' means Keras' defaults)
        object_table           VARCHAR     -- optional: the custom functions' table (load_custom_function)
    );

One row per combination model id x compile params x fit params. Model ids are sorted and repeated ones
dropped; parameter strings that mean the same (whitespace, key order, lr or learning_rate) count once,
and are stored as written. Each string is checked as the training functions will read it, and optimizer
arguments are checked against Keras.

Output:
    model_selection_table (mst_key SERIAL PRIMARY KEY, model_id INTEGER, compile_params VARCHAR,
                           fit_params VARCHAR, UNIQUE (model_id, compile_params, fit_params))
    model_selection_table_summary (model_arch_table VARCHAR, object_table VARCHAR), one row

If model_selection_table exists, the new rows are appended: it must have been made from the same
model_arch_table, and rows equal to ones already there are skipped. A NOTICE says how many were added.

Example:
    SELECT madlib_dl.load_model_selection_table('model_arch_library', 'mst_table', ARRAY[1, 2],
        ARRAY[$$loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']$$,
              $$loss='categorical_crossentropy', optimizer='SGD(lr=0.1, momentum=0.9)', metrics=['accuracy']$$],
        ARRAY['batch_size=32, epochs=1', 'batch_size=64, epochs=1']);
    SELECT * FROM mst_table ORDER BY mst_key;   -- 8 rows
"""

GENERATE_SUMMARY = """generate_model_configs: make (or append to) a model selection table from a search space:
every combination (grid search) or num_configs random draws (random search).

    SELECT madlib_dl.generate_model_configs(model_arch_table, model_selection_table, model_id_list,
               compile_params_grid, fit_params_grid [, search_type, num_configs, random_state, object_table]);

For arguments and an example: SELECT madlib_dl.generate_model_configs('usage');
"""

GENERATE_USAGE = """generate_model_configs: make (or append to) a model selection table from a search space.

Usage:
    SELECT madlib_dl.generate_model_configs(
        model_arch_table       VARCHAR,    -- table of model architectures (load_keras_model), with model_id
        model_selection_table  VARCHAR,    -- table to create, or to append to; <name>_summary goes with it
        model_id_list          INTEGER[],  -- model ids of model_arch_table
        compile_params_grid    VARCHAR,    -- a Python dict of lists, see below
        fit_params_grid        VARCHAR,    -- a Python dict of lists, such as {'batch_size': [32, 64], 'epochs': [1]}
        search_type            VARCHAR,    -- 'grid' (default) or 'random', or their start ('g', 'rand')
        num_configs            INTEGER,    -- random search: how many configurations (grid: NULL)
        random_state           INTEGER,    -- random search: a seed for the same configurations every time (grid: NULL)
        object_table           VARCHAR     -- optional: the custom functions' table (load_custom_function)
    );

compile_params_grid: {'loss': [...], 'metrics': [...], 'optimizer_params_list': [dict, ...]}
    Keys loss (required), metrics, loss_weights, weighted_metrics: each a list of choices.
    optimizer_params_list: a list of dicts, each searched on its own: 'optimizer' (names such as 'Adam',
    'SGD'; RMSprop when absent) and the optimizer's arguments, each a list of choices. For random
    search an argument may instead be a distribution [low, high, 'linear' | 'log' | 'log_near_one'].
    lr is written as learning_rate in the generated strings.

Grid search makes every combination of model id, optimizer dict, choices and fit parameters. Random
search draws num_configs distinct configurations (a repeated draw is drawn again; a smaller space gives
all it has, with a NOTICE). Model ids are sorted and repeated ones dropped; configurations that mean the
same count once. Generated strings look like
    optimizer='Adam(learning_rate=0.001)',loss='categorical_crossentropy',metrics=['accuracy']
    batch_size=32,epochs=1

Output and appending: as load_model_selection_table (see madlib_dl.load_model_selection_table('usage')).

Example (2 model ids x 2 optimizers x 2 learning rates x 2 batch sizes x 2 epochs = 32 rows):
    SELECT madlib_dl.generate_model_configs('model_arch_library', 'mst_table', ARRAY[1, 2],
        $${'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'],
           'optimizer_params_list': [{'optimizer': ['SGD', 'Adam'], 'lr': [0.01, 0.001]}]}$$,
        $${'batch_size': [32, 64], 'epochs': [1, 2]}$$);
    -- random search: 10 configurations, the same ones every time
    SELECT madlib_dl.generate_model_configs('model_arch_library', 'mst_random', ARRAY[1, 2],
        $${'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'],
           'optimizer_params_list': [{'optimizer': ['SGD'], 'lr': [0.0001, 0.1, 'log'],
                                      'momentum': [0.9, 0.99, 'log_near_one']}]}$$,
        $${'batch_size': [32, 64, 128], 'epochs': [1]}$$, 'random', 10, 42);
"""


@db.sql_function
def load_model_selection_table_help(message=None) -> str:
    return help_topics.answer("load_model_selection_table", message, LOAD_SUMMARY, LOAD_USAGE)


@db.sql_function
def generate_model_configs_help(message=None) -> str:
    return help_topics.answer("generate_model_configs", message, GENERATE_SUMMARY, GENERATE_USAGE)
