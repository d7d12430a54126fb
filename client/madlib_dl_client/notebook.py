"""Training from a notebook: a call runs on its own connection while a second one polls
``fit_progress`` for a tqdm bar (psycopg2 hands a blocking call's NOTICEs over only when it returns, so
they cannot show progress), and the output tables come back as DataFrames to plot."""

from __future__ import annotations

import collections
import contextlib
import threading
import warnings

import pandas as pd
import psycopg2
from psycopg2 import sql
from psycopg2.extras import NamedTupleCursor
from tqdm import tqdm as text_bar
from tqdm.auto import tqdm as auto_bar

from madlib_dl_client.names import parse_table_name
from madlib_dl_client.plots import X_AXES, plot_automl, plot_learning_curves  # noqa: F401 (the notebook API)

POLL_SECONDS = 0.5
PROGRESS = ("SELECT function, output_table, iteration, iterations, phase, mst_key, "
            "training_loss, batches_done, batches_total, examples_per_second "
            "FROM {schema}.fit_progress WHERE pid = %s ORDER BY mst_key")
# <table>_info's per-metrics-iteration arrays (MADlib's names) -> the long table's column.
SERIES = {"training_loss": "training_loss", "training_metrics": "training_metric",
          "validation_loss": "validation_loss", "validation_metrics": "validation_metric",
          "metrics_elapsed_time": "elapsed"}
# Then, the same on every row of a model: its first metric's and its loss's names (metrics_type[1],
# loss_type), automl's status and iterations (s and i: Hyperband's bracket and round), and the name of
# its architecture in the architecture table (None where it has none or the role cannot read it).
PER_MODEL = {"metrics_type": "metric_name", "loss_type": "loss_name", "automl_status": "automl_status",
             "iterations_trained": "iterations_trained", "s": "s", "i": "i"}
INFO_COLUMNS = ["mst_key", "model_id", "compile_params", "fit_params", "iteration", *SERIES.values(),
                *PER_MODEL.values(), "arch_name"]


class Client:
    """A madlib_dl database seen from Python. Made from a libpq DSN string (``"host=... dbname=..."``,
    ``""`` for the PG* environment variables), a dict of ``psycopg2.connect`` keywords, or those keywords
    themselves; ``schema`` is the extension's (``madlib`` for MADlib-style installs). Each call opens its
    own connections, so a client can be shared by notebook cells."""

    def __init__(self, dsn: str | dict | None = None, *, schema: str = "madlib_dl", **connect_kwargs):
        if isinstance(dsn, dict):
            dsn, connect_kwargs = None, {**dsn, **connect_kwargs}
        self.dsn, self.connect_kwargs, self.schema = dsn or "", connect_kwargs, schema

    def connect(self):
        """A new autocommit connection: training calls commit their output tables themselves."""
        conn = psycopg2.connect(self.dsn, **self.connect_kwargs)
        conn.autocommit = True
        return conn

    # -- training calls ---------------------------------------------------------------------------

    def run(self, statement, args=None, progress=True) -> list[str]:
        """Runs one training call (SQL text or a psycopg2.sql object, with ``args`` as its parameters)
        and returns its NOTICEs; its error is raised here. ``progress``: True for a tqdm bar fed from
        fit_progress, False for none, or a tqdm-like class to draw it with. Interrupting (Ctrl-C, a
        notebook's stop button) cancels the call on the server."""
        conn = self.connect()
        conn.notices = collections.deque()  # psycopg2 cuts a list of notices to the last 50
        call = _Call(conn, statement, args)
        try:
            if progress:
                self._watch(call, progress if callable(progress) else _default_bar)
            call.join()
        except KeyboardInterrupt:
            call.cancel()
            raise
        finally:
            call.join()
            conn.close()
        call.raise_error()
        return [notice.strip() for notice in conn.notices]

    def call(self, function: str, named_args: dict, progress=True) -> list[str]:
        """``SELECT <schema>.<function>(name => %s, ...)``: names quoted as identifiers, values sent as
        parameters, so nothing the caller passes becomes SQL text."""
        arguments = sql.SQL(", ").join(sql.SQL("{} => {}").format(sql.Identifier(name), sql.Placeholder())
                                       for name in named_args)
        statement = sql.SQL("SELECT {}.{}({})").format(sql.Identifier(self.schema), sql.Identifier(function),
                                                       arguments)
        return self.run(statement, list(named_args.values()), progress)

    def fit_multiple(self, progress=True, **named_args) -> list[str]:
        """madlib_keras_fit_multiple_model with named arguments (source_table=..., num_iterations=...)."""
        return self.call("madlib_keras_fit_multiple_model", named_args, progress)

    def fit(self, progress=True, **named_args) -> list[str]:
        """madlib_keras_fit with named arguments."""
        return self.call("madlib_keras_fit", named_args, progress)

    def automl(self, progress=True, **named_args) -> list[str]:
        """madlib_keras_automl with named arguments."""
        return self.call("madlib_keras_automl", named_args, progress)

    def _watch(self, call: "_Call", make_bar) -> None:
        """Draws fit_progress's rows of the call's backend until it ends. A failure to watch (an older
        server without the view) only ends the bar: the training call goes on."""
        query = sql.SQL(PROGRESS).format(schema=sql.Identifier(self.schema))
        bar = _Bar(make_bar)
        try:
            with contextlib.closing(self.connect()) as watcher, watcher.cursor(cursor_factory=NamedTupleCursor) as cur:
                while call.running(POLL_SECONDS):
                    cur.execute(query, [call.pid])
                    bar.show(cur.fetchall())
        except psycopg2.Error as error:
            warnings.warn(f"madlib_dl client: progress not shown: {str(error).strip()}", stacklevel=3)
        finally:
            bar.close(done=not call.running(0) and call.error is None)

    # -- output tables ----------------------------------------------------------------------------

    def info(self, model_output_table: str) -> pd.DataFrame:
        """``<table>_info`` long: one row per (mst_key, metrics iteration), NaN where a run has no
        validation table or no metric, so that models line up by iteration for plotting and filtering.
        ``attrs`` of the frame: ``model_output_table`` (the name as given) and ``automl_method`` (None
        but for automl), which the plots' titles use."""
        rows = self._select(model_output_table, "_info", "mst_key")
        try:
            summary = (self._select(model_output_table, "_summary") or [{}])[0]
        except psycopg2.Error:  # only the _info table is needed
            summary = {}
        names = self._arch_names(summary.get("model_arch_table"))
        frame = pd.DataFrame([r for row in rows for r in _long_rows(row, names)], columns=INFO_COLUMNS).astype(
            {name: float for name in SERIES.values()})
        frame.attrs.update(model_output_table=model_output_table, automl_method=summary.get("automl_method"))
        return frame

    def summary(self, model_output_table: str) -> pd.DataFrame:
        """``<table>_summary``, its one row as a DataFrame."""
        return pd.DataFrame(self._select(model_output_table, "_summary"))

    def _arch_names(self, arch_table: str | None) -> dict:
        """``{model_id: name}`` of the architecture table the summary names, for the architectures that
        have a name; empty where the table has no ``name`` column, or the role cannot read it."""
        if not arch_table:
            return {}
        try:
            rows = self._select(arch_table, "", columns=("model_id", "name"), table_argument="model_arch_table")
        except (psycopg2.Error, ValueError):
            return {}
        return {row["model_id"]: row["name"] for row in rows if row["name"]}

    def _select(self, table: str, suffix: str, order_by: str | None = None, columns=None,
                table_argument: str = "model_output_table") -> list[dict]:
        """Every row of a table named after ``table`` (parsed as the server parses table names: unquoted
        parts fold to lower case) as dicts."""
        name = parse_table_name(table, table_argument)
        parts = [name.schema, name.name + suffix] if name.schema else [name.name + suffix]
        selected = sql.SQL(", ").join(map(sql.Identifier, columns)) if columns else sql.SQL("*")
        query = sql.SQL("SELECT {} FROM {}").format(selected, sql.Identifier(*parts))
        if order_by:
            query += sql.SQL(" ORDER BY {}").format(sql.Identifier(order_by))
        with contextlib.closing(self.connect()) as conn, conn.cursor() as cur:
            cur.execute(query)
            names = [column.name for column in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]


class _Call:
    """A statement running on its own connection in a thread, so that the caller's thread can watch it."""

    def __init__(self, conn, statement, args):
        self.conn, self.pid, self.error = conn, conn.get_backend_pid(), None
        self.thread = threading.Thread(target=self._run, args=(statement, args), daemon=True)
        self.thread.start()

    def _run(self, statement, args) -> None:
        try:
            with self.conn.cursor() as cur:
                cur.execute(statement, args)
        except Exception as error:  # raised again in the caller's thread by raise_error()
            self.error = error

    def running(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return self.thread.is_alive()

    def join(self) -> None:
        while self.running(POLL_SECONDS):
            pass

    def cancel(self) -> None:
        self.conn.cancel()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


class _Bar:
    """A progress bar over a run's training batches (the hops' batches, reported while they run), made
    when fit_progress first shows the run (its workers starting). Until the run says its batches, it
    counts iterations; when they come, it starts over in batches, so its rate and ETA are training's.
    automl's runs have no total (the method decides as it goes): the bar counts batches without an ETA."""

    def __init__(self, make_bar):
        self.make_bar, self.bar, self.unit = make_bar, None, None
        self.best: tuple[float, int] | None = None  # the lowest training loss seen so far, and whose

    def show(self, rows) -> None:
        if not rows:
            return
        total, done, unit = _position(rows[0])
        if self.bar is None:
            self.bar = self.make_bar(total=total, desc=f"{rows[0].function} {rows[0].output_table}", unit=unit)
        elif self.unit != unit or self.bar.total != total:
            self.bar.unit = unit
            self.bar.reset(total=total)
        self.unit = unit
        self.bar.n = done
        self.bar.set_postfix_str(self._postfix(rows), refresh=False)
        self.bar.refresh()

    def _postfix(self, rows) -> str:
        for row in rows:
            if row.training_loss is not None and row.training_loss == row.training_loss and (
                    self.best is None or row.training_loss < self.best[0]):
                self.best = (row.training_loss, row.mst_key)
        return _postfix(rows[0], self.best)

    def close(self, done: bool) -> None:
        if self.bar is None:
            return
        if done and self.bar.total:
            self.bar.n = self.bar.total
            self.bar.refresh()
        self.bar.close()


def _default_bar(**kwargs):
    """tqdm.auto's bar (a widget in Jupyter), or the text bar in a Jupyter without ipywidgets, where
    tqdm's widget raises ImportError."""
    try:
        return auto_bar(**kwargs)
    except ImportError:
        return text_bar(**kwargs)


def _position(row) -> tuple[int | None, int, str]:
    """(total, done, unit) of a fit_progress row: training batches over every iteration when the run
    counts them (without a total for automl), else iterations."""
    iterations, iteration = row.iterations or 0, row.iteration or 0
    if row.batches_total:
        total = iterations * row.batches_total
        return total, min(total, max(iteration - 1, 0) * row.batches_total + (row.batches_done or 0)), "batch"
    if row.batches_done is not None:
        return None, row.batches_done, "batch"
    return iterations or None, iteration, "it"


def _postfix(row, best: tuple[float, int] | None) -> str:
    text = row.phase or ""
    if row.iterations:
        text += f", iteration {row.iteration or 0}/{row.iterations}"
    if row.examples_per_second:
        text += f", {row.examples_per_second:,.0f} examples/s"
    if best is not None:
        text += f", best training loss so far {best[0]:.4g} (mst_key {best[1]})"
    return text


def _long_rows(row: dict, arch_names: dict | None = None) -> list[list]:
    """An _info row's one row per metrics iteration (INFO_COLUMNS); ``arch_names``: {model_id: name}."""
    per_model = [row.get(column) for column in PER_MODEL]
    per_model[0] = per_model[0][0] if per_model[0] else None  # the first metric: the one the arrays hold
    arch = (arch_names or {}).get(row.get("model_id"))
    return [[row["mst_key"], row.get("model_id"), row.get("compile_params"), row.get("fit_params"), iteration,
             *(_at(row.get(array), i) for array in SERIES), *per_model, arch]
            for i, iteration in enumerate(row.get("metrics_iters") or [])]


def _at(values, i):
    return values[i] if values is not None and i < len(values) and values[i] is not None else float("nan")
