"""`make demo`: a model selection on sklearn's digits inside the embedded cluster, all through the public
SQL API from a psycopg2 client: load the images into a table, pack them, load Keras architectures built
here, generate configurations, then madlib_keras_fit_multiple_model trains every configuration with
Model Hopper Parallelism and the demo ranks them by validation accuracy. Then it uses the winner:
madlib_keras_evaluate on the validation table and madlib_keras_predict on the validation rows, whose
accuracy must equal evaluate's metric.

Everything lives in the schema madlib_dl_demo, dropped and re-created at every run."""

from __future__ import annotations

import re
import select
import time

from madlib_dl.tools.cluster import EXTENSION_QUERY

SCHEMA = "madlib_dl_demo"
LEARNING_RATES = (0.01, 0.003, 0.001)
ITERATIONS = 5
MIN_BEST_ACCURACY = 0.8

COMPILE_GRID = ("{'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'], "
                "'optimizer_params_list': [{'optimizer': ['Adam'], 'lr': [%s]}]}")
FIT_GRID = "{'batch_size': [32], 'epochs': [1]}"

RANKING = f"""
SELECT i.mst_key, a.name, i.compile_params, i.validation_metrics_final, i.validation_loss_final,
       i.training_loss_final
FROM {SCHEMA}.models_info i JOIN {SCHEMA}.models_arch a USING (model_id)
ORDER BY i.validation_metrics_final DESC NULLS LAST, i.validation_loss_final NULLS LAST, i.mst_key"""


def run(cluster, iterations: int = ITERATIONS) -> list[tuple]:
    """Run the model selection; returns the ranking rows (best first)."""
    started = time.monotonic()
    with cluster.connect() as conn, conn.cursor() as cur:
        lib = _extension_schema(cur)
        _prepare_data(cur, lib)
        _prepare_models(cur, lib)
        elapsed = _fit(conn, lib, iterations)
        cur.execute(RANKING)
        ranking = cur.fetchall()
        _say(f"\n{len(ranking)} configurations trained with Model Hopper Parallelism in {elapsed:.1f} s, best first:")
        _print_ranking(ranking)
        _say("(with background workers the order in which models visit the segments follows the workers' timing, so\n"
             " close configurations can swap places between runs; SET madlib_dl.executor = 'in_process' trains\n"
             " one segment at a time and gives the same numbers every run)")
        best = ranking[0][3] if ranking and ranking[0][3] is not None else 0.0
        if best < MIN_BEST_ACCURACY:
            raise SystemExit(f"demo: the best validation accuracy is {best:.3f}, below {MIN_BEST_ACCURACY}")
        _use_best(cur, lib, ranking[0][0])
    _say(f"\nthe whole demo took {time.monotonic() - started:.1f} s")
    return ranking


def _say(text: str) -> None:
    print(text, flush=True)  # in order with the server's NOTICEs and TensorFlow's messages on stderr


def _extension_schema(cur) -> str:
    cur.execute(EXTENSION_QUERY)
    row = cur.fetchone()
    if row is None:
        raise SystemExit("demo: the madlib_dl extension is not created in this database")
    lib = row[1]
    cur.execute(f"SELECT {lib}.version()")
    _say(f"server runs: {cur.fetchone()[0]} (schema {lib}); demo tables in schema {SCHEMA}")
    cur.execute("SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = %s AND p.proname = 'madlib_keras_fit_multiple_model'", [lib])
    if cur.fetchone() is None:
        raise SystemExit(f"demo: this database's madlib_dl ({row[0]}) predates madlib_keras_fit_multiple_model; "
                         "re-create it: DROP EXTENSION madlib_dl; CREATE EXTENSION madlib_dl;")
    return lib


# ---------------------------------------------------------------------------------------------------
# Data and models, through the public SQL API

def _prepare_data(cur, lib: str) -> None:
    from psycopg2.extras import execute_values
    from sklearn.datasets import load_digits

    cur.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}")
    digits = load_digits()
    cur.execute(f"CREATE TABLE {SCHEMA}.digits (id INTEGER, pixels REAL[], label INTEGER)")
    execute_values(cur, f"INSERT INTO {SCHEMA}.digits VALUES %s",
                   [(i, image.reshape(8, 8, 1).tolist(), int(label))
                    for i, (image, label) in enumerate(zip(digits.images, digits.target))])
    cur.execute(f"CREATE TABLE {SCHEMA}.digits_train AS SELECT * FROM {SCHEMA}.digits WHERE id % 5 <> 0; "
                f"CREATE TABLE {SCHEMA}.digits_val AS SELECT * FROM {SCHEMA}.digits WHERE id % 5 = 0")
    cur.execute(f"SELECT {lib}.training_preprocessor_dl('{SCHEMA}.digits_train', '{SCHEMA}.train_packed', "
                "'label', 'pixels', NULL, 16.0)")
    cur.execute(f"SELECT {lib}.validation_preprocessor_dl('{SCHEMA}.digits_val', '{SCHEMA}.val_packed', "
                f"'label', 'pixels', '{SCHEMA}.train_packed')")
    cur.execute(f"SELECT (SELECT count(*) FROM {SCHEMA}.digits_train), (SELECT count(*) FROM {SCHEMA}.digits_val), "
                f"(SELECT count(DISTINCT __dist_key__) FROM {SCHEMA}.train_packed)")
    train, val, segments = cur.fetchone()
    _say(f"loaded {len(digits.images)} digits (8x8x1, 10 classes): {train} for training, {val} for validation, "
         f"packed over {segments} segments")


def _architectures():
    """Small Keras models built in this process; the server gets their JSON."""
    from madlib_dl.keras_runtime import tf_setup

    keras = tf_setup.keras()
    layers = keras.layers
    cnn = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(8, 3, activation="relu"), layers.Flatten(),
                            layers.Dense(10, activation="softmax")], name="cnn")
    mlp = keras.Sequential([keras.Input((8, 8, 1)), layers.Flatten(), layers.Dense(32, activation="relu"),
                            layers.Dense(10, activation="softmax")], name="mlp")
    return [("cnn", "Conv2D(8,3) -> Flatten -> Dense(10)", cnn), ("mlp", "Flatten -> Dense(32) -> Dense(10)", mlp)]


def _prepare_models(cur, lib: str) -> None:
    for name, description, model in _architectures():
        cur.execute(f"SELECT {lib}.load_keras_model('{SCHEMA}.models_arch', %s::json, NULL, %s, %s)",
                    [model.to_json(), name, description])
    cur.execute(f"SELECT array_agg(model_id ORDER BY model_id) FROM {SCHEMA}.models_arch")
    model_ids = cur.fetchone()[0]
    rates = ", ".join(str(r) for r in LEARNING_RATES)
    cur.execute(f"SELECT {lib}.generate_model_configs('{SCHEMA}.models_arch', '{SCHEMA}.mst', %s, %s, %s)",
                [model_ids, COMPILE_GRID % rates, FIT_GRID])
    cur.execute(f"SELECT count(*) FROM {SCHEMA}.mst")
    _say(f"{len(model_ids)} architectures x {len(LEARNING_RATES)} Adam learning rates ({rates}), batch size 32: "
         f"{cur.fetchone()[0]} configurations")


# ---------------------------------------------------------------------------------------------------
# Training: the call runs on an asynchronous connection so the server's NOTICEs show as they arrive

def _fit(conn, lib: str, iterations: int) -> float:
    import psycopg2

    sql = (f"SELECT {lib}.madlib_keras_fit_multiple_model('{SCHEMA}.train_packed', '{SCHEMA}.models', "
           f"'{SCHEMA}.mst', {int(iterations)}, FALSE, '{SCHEMA}.val_packed', 1, FALSE, 'demo', "
           "'digits model selection', use_caching => TRUE)")
    _say(f"training, {iterations} iterations:\n  {sql}")
    dsn = conn.get_dsn_parameters()  # without the password, which a scram-sha-256 server asks for
    if conn.info.password:
        dsn["password"] = conn.info.password
    live = psycopg2.connect(**dsn, async_=True)
    try:
        _wait(live)
        started = time.monotonic()
        cursor = live.cursor()  # kept: psycopg2 fails the poll once an asynchronous cursor is gone
        cursor.execute(sql)
        _wait(live, show_notices=True)
        return time.monotonic() - started
    finally:
        live.close()


def _wait(conn, show_notices: bool = False) -> None:
    import psycopg2.extensions as ext

    while True:
        state = conn.poll()  # raises the statement's error, if any
        if show_notices:
            for notice in conn.notices:
                _say("  " + notice.strip().replace("\n", "\n      "))
            del conn.notices[:]
        if state == ext.POLL_OK:
            return
        fd = conn.fileno()
        select.select([fd] if state == ext.POLL_READ else [], [fd] if state == ext.POLL_WRITE else [], [], 1.0)


# ---------------------------------------------------------------------------------------------------
# Using the winner: evaluate it, then score rows with it

def _use_best(cur, lib: str, mst_key: int) -> None:
    cur.execute(f"SELECT {lib}.madlib_keras_evaluate('{SCHEMA}.models', '{SCHEMA}.val_packed', "
                f"'{SCHEMA}.best_evaluation', FALSE, %s)", [mst_key])
    cur.execute(f"SELECT loss, metric FROM {SCHEMA}.best_evaluation")
    loss, metric = cur.fetchone()
    _say(f"\nmadlib_keras_evaluate(mst_key {mst_key}) on the validation table: loss {loss:.4f}, accuracy {metric:.4f}")
    cur.execute(f"SELECT {lib}.madlib_keras_predict('{SCHEMA}.models', '{SCHEMA}.digits_val', 'id', 'pixels', "
                f"'{SCHEMA}.best_predictions', 'response', FALSE, %s)", [mst_key])
    cur.execute(f"SELECT count(*), avg((p.class_value = d.label::text)::int) FROM {SCHEMA}.best_predictions p "
                f"JOIN {SCHEMA}.digits_val d USING (id)")
    rows, accuracy = cur.fetchone()
    _say(f"madlib_keras_predict(mst_key {mst_key}, 'response') on the {rows} validation rows: accuracy "
         f"{float(accuracy):.4f}")
    if abs(float(accuracy) - metric) > 1e-6:
        raise SystemExit(f"demo: predict's accuracy {float(accuracy):.6f} differs from evaluate's {metric:.6f}")


# ---------------------------------------------------------------------------------------------------
# The ranking

def _learning_rate(compile_params: str) -> str:
    found = re.search(r"\b(?:lr|learning_rate)\s*=\s*([0-9.eE+-]+)", compile_params)
    return found.group(1) if found else "?"


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _print_ranking(rows) -> None:
    header = ("rank", "mst_key", "model", "lr", "val accuracy", "val loss", "train loss")
    table = [header] + [(str(rank), str(mst_key), name, _learning_rate(compile_params), _number(accuracy),
                         _number(val_loss), _number(train_loss))
                        for rank, (mst_key, name, compile_params, accuracy, val_loss, train_loss)
                        in enumerate(rows, start=1)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        _say("  " + "  ".join(cell.ljust(w) if i == 2 else cell.rjust(w)
                              for i, (cell, w) in enumerate(zip(row, widths))))
