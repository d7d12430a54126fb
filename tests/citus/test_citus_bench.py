"""`make bench`'s citus workload end to end at a small size on the test Citus cluster: both placements run,
the runs on the nodes use both nodes, the local runs none, and the report has its two targets."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import citus_bench  # noqa: E402

from tests.citus.conftest import DATABASE  # noqa: E402


class _Embedded:
    """What the workload needs of the embedded Citus cluster (its nodes' connections), pointed at the
    test cluster."""

    def __init__(self, cluster):
        self.coordinator = _Node(cluster.coordinator)
        self.workers = [_Node(worker) for worker in cluster.workers]


class _Node:
    def __init__(self, server):
        self._server = server

    def connect(self):
        return self._server.connect(DATABASE)


def test_the_citus_workload_runs_on_both_placements_and_reports_its_targets(citus_cluster, monkeypatch):
    monkeypatch.setattr(citus_bench, "ITERATIONS", 2)
    monkeypatch.setattr(citus_bench, "TRANSFER_HIDDEN", 64)
    monkeypatch.setattr(citus_bench, "TRANSFER_ITERATIONS", 2)
    said = []
    result = citus_bench.bench(_Embedded(citus_cluster), "madlib_dl", said.append)
    ports = [f"127.0.0.1:{w.port}" for w in sorted(citus_cluster.workers, key=lambda w: w.port)]
    for kind in ("selection", "transfer"):
        assert result[kind]["local"]["nodes"] == []
        assert result[kind]["nodes"]["nodes"] == ports
        assert result[kind]["local"]["hops"] == result[kind]["nodes"]["hops"] > 0
    assert result["selection"]["nodes"]["hops"] == citus_bench.CONFIGS * citus_bench.SEGMENTS * 2
    assert result["transfer_mb_per_s"] > 0 and result["state_bytes"] > 0
    names = [t.name for t in citus_bench.targets(result)]
    assert len(names) == 3 and all(name.startswith("citus: ") for name in names)
    assert result["cancel"]["sqlstate"] == "57014" and 0 < result["cancel"]["sessions_gone_seconds"] < 60
    assert "state transfer" in citus_bench.table(result)
    assert result["projection"]["hours"] >= result["projection"]["training_alone_hours"] == 20.0
