"""`madlib-dl`: install the extension, run the embedded cluster, run the demo, plot a run's learning curves."""

from __future__ import annotations

import argparse
import os
import sys

from madlib_dl.tools import citus, demo, install
from madlib_dl.tools.citus_cluster import CitusEmbedded
from madlib_dl.tools.cluster import Cluster


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="madlib-dl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="install the extension into the server's own directories "
                        "(--dev: boot from the venv; --uninstall)")
    commands.add_parser("start", help="create/start the embedded cluster and create the extension in it")
    commands.add_parser("stop", help="stop the embedded cluster")
    commands.add_parser("status", help="state and connection parameters of the embedded cluster")
    commands.add_parser("psql", help="psql on the embedded cluster")
    commands.add_parser("demo", help="train a small model inside the embedded cluster")
    commands.add_parser("citus", help="build and install Citus from ../shared/vendor/citus unless the server has it "
                        "(for the distributed test suite)")
    commands.add_parser("citus-start", help="create/start the embedded Citus cluster (a coordinator and 2 worker "
                        "nodes) with the extension")
    commands.add_parser("citus-stop", help="stop the embedded Citus cluster")
    commands.add_parser("citus-status", help="state and ports of the embedded Citus cluster")
    _add_plot(commands)
    args, rest = parser.parse_known_args(argv)
    cluster = Cluster.from_environment()
    if args.command == "install":
        install.main(rest)
    elif args.command == "start":
        cluster.start()
        print(cluster.status())
    elif args.command == "stop":
        print("embedded cluster: stopped" if cluster.stop() else "embedded cluster: was not running")
    elif args.command == "status":
        print(cluster.status())
    elif args.command == "psql":
        if not cluster.running():
            cluster.start()
        command = cluster.psql_command(*rest)
        os.execvp(command[0], command)
    elif args.command == "demo":
        cluster.start()
        demo.run(cluster)
        print(f"the embedded cluster keeps running: `make psql`, or connect with\n  {cluster.connection_help()}")
    elif args.command == "plot":
        print(plot(args, cluster))
    elif args.command == "citus":
        print(citus.ensure())
    elif args.command.startswith("citus-"):
        embedded = CitusEmbedded.default()
        if args.command == "citus-start":
            embedded.start()
            print(embedded.status())
        elif args.command == "citus-stop":
            print("embedded Citus cluster: stopped" if embedded.stop() else "embedded Citus cluster: was not running")
        else:
            print(embedded.status())


def _add_plot(commands) -> None:
    plot_parser = commands.add_parser("plot", help="learning curves of a training run's output table (an automl "
                                      "run's figure for automl), as a PNG "
                                      "(needs the notebook client, madlib_dl_client: pip install ./client)")
    plot_parser.add_argument("table", help="the run's model output table (its _info table is read)")
    plot_parser.add_argument("-o", "--output", default="curves.png", help="the PNG to write (default curves.png)")
    plot_parser.add_argument("--x", choices=("iteration", "elapsed"), default="iteration",
                             help="x axis: the metrics iteration or the seconds since the run started")
    plot_parser.add_argument("--metrics", nargs="+", default=None,
                             help="columns of Client.info to plot, one axes each (default: the losses); for an "
                                  "automl run, the one metric its figure shows")
    plot_parser.add_argument("--dsn", help="libpq connection string (default: the embedded cluster)")


def plot(args, cluster: Cluster) -> str:
    """Writes the PNG and returns its path, through the notebook client (its own distribution,
    madlib-dl-client), imported only here: the other commands run without it."""
    try:
        from madlib_dl_client.cli import plot as plot_png
    except ImportError as error:
        raise SystemExit(f"madlib-dl plot: the notebook client is not installed ({error}): pip install ./client "
                         "(make setup installs it into the venv)") from error

    if args.dsn is None and not cluster.running():
        cluster.start()
    return plot_png(args.table, args.output, x=args.x, metrics=args.metrics,
                    dsn=args.dsn if args.dsn is not None else cluster.dsn())


if __name__ == "__main__":
    main(sys.argv[1:])
