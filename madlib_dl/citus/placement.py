"""A packed table on a Citus cluster: a distributed table by ``__dist_key__`` with one shard per segment,
Citus spreading the shards over its worker nodes, and a validation table colocated with its training
table, so that segment i of both lies on the same node.

Several ``__dist_key__`` values hash into one shard, so a segment's key is chosen per shard: segment i
(shards ordered by their hash range) gets the smallest non-negative integer that Citus routes to shard i.
Colocated tables share their shards' hash ranges, so a validation table's keys are its training table's."""

from __future__ import annotations

from madlib_dl.errors import InvalidArgument
from madlib_dl.identifiers import TableName

KEYS_SEARCHED_PER_SHARD = 64  # hashing spreads keys evenly: 64 per shard leaves one out with odds of e^-64


def worker_nodes(conn) -> int:
    """Active Citus worker nodes of this database's cluster when it is the coordinator (0: no Citus here,
    or a worker node, whose tables the coordinator distributes)."""
    if not conn.execute("SELECT pg_catalog.to_regproc('pg_catalog.citus_is_coordinator') IS NOT NULL "
                        "AS citus")[0]["citus"]:
        return 0
    if not conn.execute("SELECT pg_catalog.citus_is_coordinator() AS coordinator")[0]["coordinator"]:
        return 0
    return int(conn.execute("SELECT count(*) AS n FROM pg_catalog.citus_get_active_worker_nodes()")[0]["n"])


def check_available(conn, setting: str) -> int:
    """The worker nodes of the cluster, or the error a placement on them gets without any."""
    nodes = worker_nodes(conn)
    if nodes == 0:
        raise InvalidArgument(f"setting {setting} is 'citus_nodes' but this database has no Citus worker nodes "
                              "(it is not a Citus coordinator with worker nodes: CREATE EXTENSION citus, then "
                              "citus_add_node() for each node)",
                              hint=f"SET {setting} = 'local' for a table of this server.")
    return nodes


def distribute(conn, table: TableName, segments: int, colocate_with: TableName | None = None) -> tuple[int, ...]:
    """Make ``table`` (new and empty) a distributed table of ``segments`` shards, colocated with
    ``colocate_with`` when given; the ``__dist_key__`` of each segment, in segment order."""
    # Citus takes a shard count only for a new colocation group; a colocated table has its group's.
    colocation = "none" if colocate_with is None else colocate_with.sql(conn)
    conn.execute("SELECT pg_catalog.create_distributed_table($1::regclass, '__dist_key__', 'hash', $2, $3)",
                 [table.sql(conn), colocation, segments if colocate_with is None else None],
                 ["text", "text", "integer"])
    return segment_keys(conn, table, segments)


def is_distributed(conn, table: TableName) -> bool:
    """Whether ``table`` is a Citus distributed table."""
    if not conn.execute("SELECT pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL AS citus")[0]["citus"]:
        return False
    return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = "
                             "$1::regclass) AS found", [table.sql(conn)], ["text"])[0]["found"])


def segment_keys(conn, table: TableName, segments: int) -> tuple[int, ...]:
    """The ``__dist_key__`` of each segment: for each shard in the order of its hash range, the smallest
    non-negative integer Citus routes to it."""
    rows = conn.execute(
        "SELECT s.shardid, min(keyed.k) AS key FROM pg_catalog.pg_dist_shard s JOIN ("
        "  SELECT k, pg_catalog.get_shard_id_for_distribution_column($1::regclass, k) AS shardid"
        "  FROM pg_catalog.generate_series(0, $2) k) keyed ON keyed.shardid = s.shardid "
        "WHERE s.logicalrelid = $1::regclass GROUP BY s.shardid, s.shardminvalue "
        "ORDER BY s.shardminvalue::bigint",
        [table.sql(conn), segments * KEYS_SEARCHED_PER_SHARD], ["text", "integer"])
    if len(rows) != segments:
        raise InvalidArgument(f"internal: {len(rows)} of {segments} shards of {table} got a segment key")
    return tuple(int(r["key"]) for r in rows)
