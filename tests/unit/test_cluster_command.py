"""`make psql` connects as PGUSER to PGDATABASE where they are set, as psql itself would, and else as
the cluster's superuser to its database."""

from pathlib import Path

from madlib_dl.tools.cluster import Cluster


def _user_and_database(command: list[str]) -> tuple[str, str]:
    return command[command.index("-U") + 1], command[command.index("-d") + 1]


def test_psql_defaults_to_the_clusters_user_and_database(monkeypatch):
    monkeypatch.delenv("PGUSER", raising=False)
    monkeypatch.delenv("PGDATABASE", raising=False)
    cluster = Cluster(home=Path("/nonexistent"))
    assert _user_and_database(cluster.psql_command()) == (cluster.user, cluster.dbname)


def test_psql_honours_pguser_and_pgdatabase(monkeypatch):
    monkeypatch.setenv("PGUSER", "alice")
    monkeypatch.setenv("PGDATABASE", "science")
    command = Cluster(home=Path("/nonexistent")).psql_command("-c", "SELECT 1")
    assert _user_and_database(command) == ("alice", "science") and command[-2:] == ["-c", "SELECT 1"]
