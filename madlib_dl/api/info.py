"""version(), settings() and gpu_configuration(): what this server runs, how it is set, which GPUs it has."""

from __future__ import annotations

import platform
import socket

from madlib_dl import __version__, db, identifiers, session
from madlib_dl.api import help as help_topics
from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import gpus, tf_setup

GPU_SOURCES = ("tensorflow", "nvidia")


@db.sql_function
def version() -> str:
    keras = tf_setup.keras()
    tf = tf_setup.tensorflow()
    return (f"madlib_dl {__version__}, Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, Keras {keras.__version__}")


SETTINGS = """
    SELECT name, setting, source,
           CASE WHEN vartype = 'enum' THEN array_to_string(enumvals, ', ')
                WHEN min_val IS NOT NULL THEN min_val || ' .. ' || max_val
                WHEN vartype = 'string' THEN 'a 64-bit integer' END AS allowed,  -- settings.register's bigint
           short_desc AS description
    FROM pg_settings WHERE name LIKE 'madlib\\_dl.%' ORDER BY name"""


@db.sql_function
def settings() -> list[dict]:
    """Every madlib_dl.* setting as pg_settings shows it (registered at this backend's first call)."""
    return db.current().execute(SETTINGS)


@db.sql_function
def gpu_configuration(output_table: str | None, source: str | None) -> None:
    """Write one row (hostname, gpu_descr) per GPU of the database host into a new table."""
    conn = db.current()
    source = "tensorflow" if source is None else source.strip().lower()
    if source not in GPU_SOURCES:
        raise InvalidArgument(f"source: expected 'tensorflow' or 'nvidia', got {source!r}")
    table = identifiers.output_table(conn, output_table, "output_table")
    found = gpus.tensorflow_gpus() if source == "tensorflow" else gpus.nvidia_gpus()
    host = socket.gethostname()
    conn.execute(f"CREATE TABLE {table.sql(conn)} (hostname TEXT, gpu_descr TEXT)")
    for description in found:
        conn.execute(f"INSERT INTO {table.sql(conn)} VALUES ($1, $2)", [host, description], ["text", "text"])
    if not found:
        conn.notice(f"gpu_configuration: {source} found no GPU on {host}; {table} is empty")


@db.sql_function
def gpu_configuration_help() -> str:
    return help_topics.in_schema(GPU_HELP, session.schema() or "madlib_dl")


GPU_HELP = """gpu_configuration: list the GPUs of the database host.

Usage:
    SELECT madlib_dl.gpu_configuration(
        output_table TEXT,   -- table to create: (hostname TEXT, gpu_descr TEXT), one row per GPU
        source TEXT          -- 'tensorflow' (default, GPUs TensorFlow can use) or 'nvidia' (nvidia-smi -L)
    );
    SELECT * FROM output_table;

A host without GPUs gives an empty table and a NOTICE.
"""
