"""The embedded cluster as a Citus cluster: a coordinator and 2 worker nodes on localhost, each an
embedded cluster of its own (tools.cluster: its own data directory and port, trust for the postgres OS
user) with Citus preloaded, madlib_dl created on the coordinator after the nodes are added (Citus creates
it on the nodes). For trying madlib_dl's distributed runs and for the bench's citus workload; `make demo`
stays on the one-node cluster. Citus comes from `make citus` (tools.citus). Every command is safe to re-run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from madlib_dl.tools import citus
from madlib_dl.tools.cluster import DEFAULT_PORT, Cluster, default_home

NODES = ("coordinator", "worker1", "worker2")
FIRST_PORT = DEFAULT_PORT + 1  # the coordinator's; the worker nodes' follow


@dataclass(frozen=True)
class CitusEmbedded:
    home: Path  # one directory per node under it

    @classmethod
    def default(cls) -> "CitusEmbedded":
        return cls(default_home().resolve() / "citus")

    @property
    def nodes(self) -> list[Cluster]:
        return [Cluster(self.home / name, FIRST_PORT + i, preload="citus") for i, name in enumerate(NODES)]

    @property
    def coordinator(self) -> Cluster:
        return self.nodes[0]

    @property
    def workers(self) -> list[Cluster]:
        return self.nodes[1:]

    def start(self) -> None:
        missing = citus.missing()
        if missing is not None:
            raise SystemExit(f"citus cluster: {missing}")
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o755)
        for node in self.nodes:
            node.start(extension=False)
        with self.coordinator.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_catalog.citus_set_coordinator_host('127.0.0.1', %s)", [self.coordinator.port])
            cur.execute("SELECT node_port FROM pg_catalog.citus_get_active_worker_nodes()")
            added = {port for (port,) in cur.fetchall()}
            for worker in self.workers:
                if worker.port not in added:
                    cur.execute("SELECT pg_catalog.citus_add_node('127.0.0.1', %s)", [worker.port])
        self.coordinator.create_extension()

    def stop(self) -> bool:
        return any([node.stop() for node in reversed(self.nodes)])

    def status(self) -> str:
        lines = [f"{name}: {node.status().splitlines()[0].split(': ', 1)[1]}, port {node.port}"
                 for name, node in zip(NODES, self.nodes)]
        return "embedded Citus cluster:\n  " + "\n  ".join(lines) + \
            f"\n  coordinator: psql -h 127.0.0.1 -p {self.coordinator.port} -U postgres madlib_dl"
