"""The Citus test cluster itself and madlib_dl on it: the same version on every node, and a plain
role's connection from the coordinator to the worker nodes (what every distributed feature needs)."""

from __future__ import annotations

from tests.citus.conftest import DATABASE


def test_two_worker_nodes_with_madlib_dl_of_the_coordinators_version(citus_cluster):
    with citus_cluster.coordinator.connect(DATABASE) as conn, conn.cursor() as cur:
        cur.execute("SELECT node_name, node_port FROM citus_get_active_worker_nodes() ORDER BY node_port")
        assert [port for _, port in cur.fetchall()] == sorted(w.port for w in citus_cluster.workers)
        cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'madlib_dl'")
        (version,) = cur.fetchone()
        cur.execute("SELECT nodeport, success, result FROM run_command_on_workers("
                    "$$SELECT extversion FROM pg_extension WHERE extname = 'madlib_dl'$$) ORDER BY nodeport")
        assert cur.fetchall() == [(w.port, True, version) for w in sorted(citus_cluster.workers, key=lambda w: w.port)]


def test_a_plain_role_queries_a_distributed_table_through_the_coordinator(citus_cluster, citus_role):
    with citus_cluster.coordinator.connect(DATABASE, user=citus_role) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE some_points (id INTEGER, x REAL[])")
        cur.execute("SELECT create_distributed_table('some_points', 'id', shard_count => 4)")
        cur.execute("INSERT INTO some_points SELECT i, ARRAY[i, i * 2]::REAL[] FROM generate_series(1, 100) i")
        cur.execute("SELECT count(*), sum(x[2]) FROM some_points")
        assert cur.fetchone() == (100, 10100.0)
        cur.execute("SELECT count(DISTINCT nodeport) FROM citus_shards WHERE table_name = 'some_points'::regclass")
        assert cur.fetchone() == (2,)
