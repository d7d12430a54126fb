"""`make bench` end to end at a tiny size against the test cluster: every run happens (plain Keras, plain
Keras as two concurrent processes, our loop, S=1/S=2 with and without caching, on background workers), the
hop counts are those of the configurations, the instrumentation gives overheads and worker memory, and
the report is complete."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import report  # noqa: E402
import run  # noqa: E402
import workloads  # noqa: E402

TINY = dataclasses.replace(workloads.SMALL, iterations=2, learning_rates=(0.01,))


@dataclasses.dataclass
class BenchDatabase:
    """What bench/run.py needs of the embedded cluster, pointed at the test server."""
    server: object

    def dsn(self) -> dict:
        return self.server.dsn("bench")

    def connect(self):
        return self.server.connect("bench")


def test_a_tiny_bench_runs_every_variant_and_reports_them(server, monkeypatch):
    monkeypatch.setattr(run, "PROGRESS_PAIRS", 1)  # make bench alternates more runs, for the median
    with server.fresh_database("bench"):
        database = BenchDatabase(server)
        result = run.bench_workload(database, "madlib_dl", TINY, scale=0.1, threads=1)
        for reference in ("keras", "loop"):
            assert result[reference]["seconds"] > 0 and result[reference]["examples"] == TINY.size(0.1)
            assert result[reference]["peak_bytes"] > 100 * report.MIB  # TensorFlow is in there
        configs = 2  # two architectures x one learning rate
        two = result["keras_2proc"]
        assert two["seconds"] > 0 and len(two["processes"]) == 2
        assert [p["part"] for p in two["processes"]] == [[0, 2], [1, 2]]
        assert two["seconds"] == max(p["seconds"] for p in two["processes"])
        assert sorted(c["mst_key"] for p in two["processes"] for c in p["configs"]) == \
            sorted(c["mst_key"] for c in result["keras"]["configs"])  # each configuration once, split in two
        assert all(len(p["configs"]) == configs // 2 and p["examples"] == TINY.size(0.1) for p in two["processes"])
        assert 0 <= two["start_skew_seconds"] < 1.0  # they left the barrier together
        assert sorted(result["runs"]) == sorted(report.variant(s, c) for s in (1, 2) for c in (True, False))
        for label, measured in result["runs"].items():
            segments = measured["workers_count"]
            assert measured["train_hops"] == configs * TINY.iterations * segments, label
            assert measured["evaluate_calls"] == configs * segments, label
            assert 0 < measured["hop_overhead_ms"] < 5000 and measured["setup_seconds"] > 0, label
            assert measured["wall_seconds"] > measured["fit_seconds"] / segments, label
            assert [w["segment"] for w in measured["workers"]] == list(range(segments)), label
            for worker in measured["workers"]:
                assert worker["peak_bytes"] > 100 * report.MIB and worker["cache_bytes"] > 0, label
                assert worker["growth_bytes"] is not None and worker["hops_measured"] == configs, label
        cache = sum(w["cache_bytes"] for w in result["runs"][report.variant(2, True)]["workers"])
        assert cache == TINY.size(0.1) * (8 * 8 * 1 + 10) * 4  # features and one-hot labels as float32
        found = report.targets({"small": result})
        # small-workload targets (its wall, its per-hop overhead, caching off / on per S as information), the
        # cost of live progress, caching on / off per S (information on small: nothing to save), memory per
        # worker, and two informational lines against two-process Keras (the ceiling, our S=2 wall over it)
        assert len(result["progress"]["on"]) == len(result["progress"]["off"]) == 1
        assert len(found) == 4 + 1 + 2 + 2 * (1 + 2) + 2
        assert len([t for t in found if t.kind == "info"]) == 2 + 2 + 2
        assert all(t.measured is not None for t in found)
        text = report.table("small", result) + report.verdicts(found)
        assert "S=2 caching on" in text and "keras, 2 procs" in text and "targets:" in text
