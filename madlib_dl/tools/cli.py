"""`madlib-dl`: install the extension, run the embedded cluster, run the demo."""

from __future__ import annotations

import argparse
import os
import sys

from madlib_dl.tools import demo, install
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


if __name__ == "__main__":
    main(sys.argv[1:])
