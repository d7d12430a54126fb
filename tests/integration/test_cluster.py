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
