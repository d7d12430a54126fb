"""Helpers of the MADlib compatibility suite (data, architectures, queries)."""

from __future__ import annotations

import numpy as np
import psycopg2
import pytest
from psycopg2.extras import execute_values

S = "madlib_dl."
CLASSES = ("Iris-setosa", "Iris-versicolor", "Iris-virginica")
# Three well separated clusters, so that a few iterations learn something
_CENTERS = np.array([[5.0, 3.4, 1.5, 0.25], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])


def iris_rows(per_class: int = 12, seed: int = 7) -> list[tuple]:
    """(id, attributes, class_text) rows like MADlib's iris table: 4 features, 3 text classes."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, name in enumerate(CLASSES):
        for _ in range(per_class):
            rows.append((len(rows) + 1, np.round(_CENTERS[k] + rng.normal(0, 0.15, 4), 2).tolist(), name))
    return rows


def create_iris(cur, table: str = "iris_data", per_class: int = 12, seed: int = 7) -> list[tuple]:
    """MADlib's iris layout: id, attributes NUMERIC[], class_text VARCHAR; plus a one-hot INTEGER[] copy
    (<table>_one_hot_encoded, column class_one_hot_encoded), as MADlib's iris setup makes."""
    rows = iris_rows(per_class, seed)
    cur.execute(f"CREATE TABLE {table} (id SERIAL, attributes NUMERIC[], class_text VARCHAR)")
    execute_values(cur, f"INSERT INTO {table} VALUES %s", rows)
    cur.execute(f"CREATE TABLE {table}_one_hot_encoded AS SELECT id, attributes, "
                f"ARRAY[class_text IS NOT DISTINCT FROM '{CLASSES[0]}', class_text IS NOT DISTINCT FROM "
                f"'{CLASSES[1]}', class_text IS NOT DISTINCT FROM '{CLASSES[2]}']::INTEGER[] "
                f"AS class_one_hot_encoded FROM {table}")
    return rows


def pack_iris(cur, output: str = "iris_packed", normalizing_const: float = 1.0) -> None:
    """iris_data (create_iris) packed on 2 segments, as every file's data fixture starts."""
    cur.execute(f"SELECT {S}training_preprocessor_dl('iris_data', %s, 'class_text', 'attributes', NULL, %s::REAL, "
                "NULL, '2')", [output, normalizing_const])


def dl_schema(admin, user: str) -> None:
    """The schema dl_schema, where ``user`` may create tables (MADlib's tests of schema-qualified names)."""
    admin.execute("CREATE SCHEMA dl_schema")
    admin.execute(f"GRANT USAGE, CREATE ON SCHEMA dl_schema TO {user}")


def keras():
    from madlib_dl.keras_runtime import tf_setup

    return tf_setup.keras()


def mlp(inputs: int = 4, hidden: int = 8, classes: int = 3, trainable: bool = True, seed: int = 1):
    """A small Keras 3 MLP (the model object)."""
    k = keras()
    k.utils.set_random_seed(seed)
    model = k.Sequential([k.Input((inputs,)), k.layers.Dense(hidden, activation="relu"),
                          k.layers.Dense(classes, activation="softmax")])
    for layer in model.layers:
        layer.trainable = trainable
    return model


def mlp_json(**kw) -> str:
    return mlp(**kw).to_json()


def weights_bytes(model) -> bytes:
    """MADlib's weight format: the flattened get_weights() arrays, little-endian float32."""
    return np.concatenate([w.ravel() for w in model.get_weights()]).astype("<f4").tobytes()


def load_arch(cur, table: str, arch_json: str, weights: bytes | None = None, name=None, description=None) -> int:
    cur.execute(f"SELECT {S}load_keras_model(%s, %s::json, %s, %s, %s)",
                [table, arch_json, None if weights is None else psycopg2.Binary(weights), name, description])
    cur.execute(f"SELECT max(model_id) FROM {table}")
    return cur.fetchone()[0]


def row(cur, query: str, params=None) -> dict:
    """The one row `query` returns, as a dict."""
    cur.execute(query, params)
    rows = cur.fetchall()
    assert len(rows) == 1, f"expected one row, got {len(rows)}: {query}"
    return dict(zip([d.name for d in cur.description], rows[0]))


def rows(cur, query: str, params=None) -> list[dict]:
    cur.execute(query, params)
    names = [d.name for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def scalar(cur, query: str, params=None):
    cur.execute(query, params)
    return cur.fetchone()[0]


def fails(cur, query: str, params=None, match: str | None = None) -> psycopg2.Error:
    """Runs `query`, which must fail with a database error (whose message contains `match`)."""
    with pytest.raises(psycopg2.Error) as raised:
        cur.execute(query, params)
    if match is not None:
        assert match.lower() in str(raised.value).lower(), str(raised.value)
    return raised.value


def exists(cur, table: str) -> bool:
    return scalar(cur, "SELECT to_regclass(%s) IS NOT NULL", [table])


def persistent(cur, table: str) -> bool:
    """Not UNLOGGED and not TEMP (MADlib's tests assert their outputs are not unlogged)."""
    return scalar(cur, "SELECT relpersistence = 'p' FROM pg_class WHERE oid = %s::regclass", [table])


def columns(cur, table: str) -> dict:
    """column name -> its type as format_type writes it."""
    cur.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum", [table])
    return dict(cur.fetchall())
