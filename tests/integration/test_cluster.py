"""The embedded cluster's commands, run twice each: they are safe to repeat."""

import dataclasses
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from madlib_dl import __version__
from madlib_dl.tools.cluster import Cluster


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(server):  # `server` only guarantees `make install` has run
    parent = Path(tempfile.mkdtemp(prefix="madlib_dl-cluster-"))
    os.chmod(parent, 0o755)  # the postgres OS user must reach the cluster inside
    c = Cluster(home=parent / "cluster", port=_free_port())
    try:
        yield c
    finally:
        c.stop()
        shutil.rmtree(parent, ignore_errors=True)


def test_start_status_stop_are_idempotent(cluster):
    assert "not created" in cluster.status()
    cluster.start()
    cluster.start()
    status = cluster.status()
    assert "running" in status and f"madlib_dl extension {__version__} in schema madlib_dl" in status
    assert f"port {cluster.port}" in status
    assert (cluster.data / "PG_VERSION").exists() and cluster.data.stat().st_mode & 0o777 == 0o700
    if os.geteuid() == 0:
        assert cluster.data.owner() == "postgres"
    with cluster.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT madlib_dl.version(), current_setting('port')::int")
        version, port = cur.fetchone()
        assert version.startswith(f"madlib_dl {__version__}") and port == cluster.port
        # the server has the venv on PYTHONPATH, so users' own plpython3u code can import Keras
        cur.execute("DO $$ import keras $$ LANGUAGE plpython3u")
    assert cluster.stop() is True
    assert cluster.stop() is False
    assert "stopped" in cluster.status()
    cluster.start()  # restarts the existing cluster, keeping its database
    assert "running" in cluster.status()
    cluster.stop()
    moved = dataclasses.replace(cluster, port=_free_port())  # MADLIB_DL_PORT changed between runs
    moved.start()
    try:
        with moved.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT current_setting('port')::int")
            assert cur.fetchone()[0] == moved.port
    finally:
        moved.stop()


def test_a_taken_port_is_a_clear_error(cluster):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = dataclasses.replace(cluster, port=taken.getsockname()[1])
        with pytest.raises(SystemExit, match=r"did not start on port \d+ \(another server there\? set MADLIB_DL_PORT\)"):
            busy.start()


def test_start_updates_a_database_at_an_older_version_keeping_what_the_user_made(cluster):
    """After `make install` of a new version, `make start` runs ALTER EXTENSION madlib_dl UPDATE: a
    user's table in the extension's schema survives (dropping and re-creating would refuse)."""
    cluster.start()
    with cluster.connect() as conn, conn.cursor() as cur:
        cur.execute("DROP EXTENSION madlib_dl; CREATE EXTENSION madlib_dl VERSION '0.1.0'")
        cur.execute("CREATE TABLE madlib_dl.kept AS SELECT 1 AS x")
    cluster.start()
    with cluster.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'madlib_dl'")
        assert cur.fetchone()[0] == __version__
        cur.execute("SELECT x FROM madlib_dl.kept")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT madlib_dl.version()")
        assert cur.fetchone()[0].startswith(f"madlib_dl {__version__}")


def test_a_checkout_the_server_user_cannot_enter_keeps_its_cluster_elsewhere(server, tmp_path, monkeypatch):
    """A clone under /root (mode 700): the cluster goes under RELOCATED_HOMES, .cluster links to it."""
    from madlib_dl.tools import cluster as cluster_module

    checkout = tmp_path / "checkout"  # pytest's tmp_path is mode 700, like /root
    checkout.mkdir()
    homes = Path(tempfile.mkdtemp(prefix="madlib_dl-homes-"))
    os.chmod(homes, 0o755)
    monkeypatch.setattr(cluster_module.paths, "REPO", checkout)
    monkeypatch.setattr(cluster_module, "RELOCATED_HOMES", homes)
    monkeypatch.delenv("MADLIB_DL_HOME", raising=False)
    try:
        relocated = Cluster.from_environment().home
        if os.geteuid() != 0:  # the server runs as this user, who can enter the checkout
            assert relocated == checkout / ".cluster"
            return
        assert relocated.parent == homes and relocated.name.startswith("checkout-")
        cluster_module._link_local_home(relocated)
        assert (checkout / ".cluster").resolve() == relocated
        assert Cluster.from_environment().home == relocated  # found again through the link
        relocated_cluster = Cluster(home=relocated, port=_free_port())
        try:
            relocated_cluster.start()  # the server user reaches its data directory
            assert "running" in relocated_cluster.status()
        finally:
            relocated_cluster.stop()
    finally:
        shutil.rmtree(homes)


def test_a_cluster_started_on_another_port_is_found_there_later(cluster, monkeypatch):
    """`MADLIB_DL_PORT=54339 make start`, then a plain `make status` or `make psql`: the port comes from
    the cluster's own listen file."""
    cluster.start()
    monkeypatch.setenv("MADLIB_DL_HOME", str(cluster.home))
    monkeypatch.delenv("MADLIB_DL_PORT", raising=False)
    found = Cluster.from_environment()
    assert found == cluster and cluster.port != 54329
    assert "running" in found.status()
    monkeypatch.setenv("MADLIB_DL_PORT", "54330")  # an explicit port still wins
    assert Cluster.from_environment().port == 54330
