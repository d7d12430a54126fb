"""How many node sessions a run on Citus worker nodes opens (training.citus_nodes.sessions)."""

from madlib_dl.training.citus_nodes import Shard, sessions


def _placed(*nodes):
    """segments spread over nodes given as (host, port, count)."""
    placed, segment = {}, 0
    for host, port, count in nodes:
        for _ in range(count):
            placed[segment] = Shard(host, port, f"t_{segment}")
            segment += 1
    return placed


def _shape(chosen):
    return sorted((shard.port, tuple(segments)) for shard, segments in chosen)


def test_one_session_per_segment_where_the_hosts_cpus_are_unknown_or_enough():
    placed = _placed(("10.0.0.1", 5432, 2), ("10.0.0.2", 5432, 2))
    assert _shape(sessions(placed, lambda host: None)) == [(5432, (0,)), (5432, (1,)), (5432, (2,)), (5432, (3,))]
    assert len(sessions(placed, lambda host: 16)) == 4


def test_nodes_sharing_a_machine_share_its_cpus_at_least_one_session_each():
    placed = _placed(("127.0.0.1", 1, 2), ("127.0.0.1", 2, 2))
    assert _shape(sessions(placed, lambda host: 2)) == [(1, (0, 1)), (2, (2, 3))]
    assert _shape(sessions(placed, lambda host: 1)) == [(1, (0, 1)), (2, (2, 3))]
    assert _shape(sessions(placed, lambda host: 3)) in ([(1, (0,)), (1, (1,)), (2, (2, 3))],
                                                       [(1, (0, 1)), (2, (2,)), (2, (3,))])
    every = sessions(_placed(("127.0.0.1", 1, 3)), lambda host: 2)
    assert sorted(s for _, segments in every for s in segments) == [0, 1, 2]  # each segment served once
