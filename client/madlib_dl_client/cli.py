"""`madlib-dl` of the notebook client: `madlib-dl plot TABLE` writes a training run's learning curves as
a PNG (an automl run's: which configurations were stopped at which rung), read from the run's ``_info``
table over libpq.

The server package (madlib_dl) has a `madlib-dl` of its own: the server commands (install, start, stop,
status, psql, demo, citus...) and the same `plot`, whose default database is the embedded cluster. Where
both are installed, as in a checkout's venv, one command file stands for both, so this one hands every
command to ``python -m madlib_dl.tools.cli`` there (a program of its own: the client imports nothing of
madlib_dl), whose `plot` calls :func:`plot` here. Without the server package, a server command is refused
with a word on where it lives."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

COMMANDS = ("plot",)
# The server package's commands, named in the message of a client without it.
SERVER_COMMANDS = ("install", "start", "stop", "status", "psql", "demo", "citus", "citus-start", "citus-stop",
                   "citus-status")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if _server_cli_installed():
        os.execv(sys.executable, [sys.executable, "-m", "madlib_dl.tools.cli", *argv])
    parser = _parser()
    if command in SERVER_COMMANDS:
        parser.error(f"{command!r} is a command of the server package (madlib_dl: `make setup` in a checkout, on "
                     f"the database server), which is not installed here; the client has: {', '.join(COMMANDS)}")
    args = parser.parse_args(argv)
    if args.command == "plot":
        print(plot(args.table, args.output, x=args.x, metrics=args.metrics, dsn=args.dsn))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="madlib-dl", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_plot_arguments(commands.add_parser("plot", help="learning curves of a training run's output table, as "
                                           "a PNG"),
                       dsn_help='libpq connection string ("host=db.example.com dbname=ml user=alice"; default '
                                '"": the PGHOST, PGPORT, PGDATABASE, PGUSER and PGPASSWORD variables)')
    return parser


def add_plot_arguments(parser: argparse.ArgumentParser, dsn_help: str) -> None:
    """`plot`'s arguments (the server package's `madlib-dl plot` takes the same, with another default DSN)."""
    parser.add_argument("table", help="the run's model output table (its _info table is read)")
    parser.add_argument("-o", "--output", default="curves.png", help="the PNG to write (default curves.png)")
    parser.add_argument("--x", choices=("iteration", "elapsed"), default="iteration",
                        help="x axis: the metrics iteration or the seconds since the run started")
    parser.add_argument("--metrics", nargs="+", default=None,
                        help="columns of Client.info to plot, one axes each (default: the losses); for an automl "
                             "run, the one metric its figure shows (default: the validation loss, else the "
                             "training loss)")
    parser.add_argument("--dsn", default=None, help=dsn_help)


def plot(table: str, output: str = "curves.png", *, x: str = "iteration", metrics=None,
         dsn: str | dict | None = None) -> str:
    """Writes the PNG of ``table``'s learning curves (plot_learning_curves; for a madlib_keras_automl
    run, plot_automl: its metric against the iteration per bracket, stopped configurations marked) and
    returns its absolute path. ``dsn``: a libpq connection string or psycopg2.connect's keywords (None
    or "": the PG* variables)."""
    from madlib_dl_client.notebook import Client

    figure_for(Client(dsn).info(table), x, metrics).savefig(output, dpi=120)
    return os.path.abspath(output)


def figure_for(info, x: str = "iteration", metrics=None):
    """The figure `plot` writes of a run's Client.info."""
    from madlib_dl_client.plots import plot_automl, plot_learning_curves

    if not info.attrs.get("automl_method"):
        return plot_learning_curves(info, x=x, metrics=tuple(metrics or ("training_loss", "validation_loss")))
    if metrics is not None and len(metrics) != 1:
        raise SystemExit(f"madlib-dl plot: {info.attrs.get('model_output_table')} is an automl run, whose figure "
                         f"shows one metric: --metrics takes one name here, got {len(metrics)}")
    return plot_automl(info, metric=metrics[0] if metrics else None)


def _server_cli_installed() -> bool:
    """Whether the server package is importable here. find_spec of a top-level name locates it without
    importing it."""
    try:
        return importlib.util.find_spec("madlib_dl") is not None
    except (ImportError, ValueError):
        return False


if __name__ == "__main__":
    main()
