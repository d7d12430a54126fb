"""The non-training API as an ordinary data scientist's role (alice: LOGIN, no superuser, CONNECT on the
database, USAGE and CREATE on schema public, USAGE on the extension's schema): she packs her own table and
loads a model architecture into her own table; a table she may not read stays unread, and nothing is made."""

from __future__ import annotations

import psycopg2
import pytest

from madlib_dl.keras_runtime import tf_setup
from madlib_dl.tools.cluster import EXTENSION_QUERY

DB = "it_plain_role"


@pytest.fixture(scope="module")
def database(server, plain_role):
    """A database of its own with madlib_dl, where alice has a data scientist's grants, and a table of
    the superuser's that alice was given no privilege on."""
    with server.fresh_database(DB, plain_role=plain_role) as name:
        with server.connect(name) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE secret (id INTEGER, x DOUBLE PRECISION[], y TEXT)")
            cur.execute("INSERT INTO secret SELECT i, ARRAY[i, i * 2]::DOUBLE PRECISION[], "
                        "CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END FROM generate_series(1, 20) i")
        yield name


@pytest.fixture(scope="module")
def schema(server, database):
    """The extension's schema: madlib_dl, or madlib when installed with MADLIB_DL_SCHEMA=madlib."""
    with server.connect(database) as conn, conn.cursor() as cur:
        cur.execute(EXTENSION_QUERY)
        return cur.fetchone()[1]


@pytest.fixture(scope="module")
def alice(server, database, plain_role):
    """One backend of alice's for the module: TensorFlow is imported once."""
    with server.connect(database, user=plain_role) as conn:
        yield conn


@pytest.fixture
def cur(alice):
    with alice.cursor() as c:
        yield c


def _owner(cur, table):
    cur.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = to_regclass(%s)", [table])
    row = cur.fetchone()
    return row and row[0]


def test_alice_is_a_plain_role(cur):
    cur.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
    assert cur.fetchone() == ("alice", False)


def test_alice_packs_her_own_table(cur, schema):
    cur.execute("DROP TABLE IF EXISTS mine, mine_packed, mine_packed_summary")
    cur.execute("CREATE TABLE mine (id INTEGER, x DOUBLE PRECISION[], y TEXT)")
    cur.execute("INSERT INTO mine SELECT i, ARRAY[i, -i]::DOUBLE PRECISION[], "
                "CASE WHEN i % 3 = 0 THEN 'c' ELSE 'd' END FROM generate_series(1, 30) i")
    cur.execute(f"SELECT {schema}.training_preprocessor_dl('mine', 'mine_packed', 'y', 'x', 8, 1.0, NULL, '2')")
    assert _owner(cur, "mine_packed") == "alice" and _owner(cur, "mine_packed_summary") == "alice"
    cur.execute('SELECT sum(x_shape[1]), count(DISTINCT __dist_key__) FROM mine_packed')
    assert cur.fetchone() == (30, 2)
    cur.execute("SELECT y_class_values, num_classes, num_segments FROM mine_packed_summary")
    assert cur.fetchone() == (["c", "d"], [2], 2)


def test_alice_loads_a_model_architecture(cur, schema):
    keras = tf_setup.keras()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    cur.execute("DROP TABLE IF EXISTS my_arch")
    cur.execute(f"SELECT {schema}.load_keras_model('my_arch', %s::json, NULL, 'mlp', 'alice''s first model')",
                [model.to_json()])
    assert _owner(cur, "my_arch") == "alice"
    cur.execute("SELECT model_id, name, description, model_weights IS NULL FROM my_arch")
    assert cur.fetchall() == [(1, "mlp", "alice's first model", True)]
    cur.execute(f"SELECT {schema}.delete_keras_model('my_arch', 1)")
    cur.execute("SELECT to_regclass('my_arch')")
    assert cur.fetchone()[0] is None  # as in MADlib, deleting the last model drops the table


def test_a_table_alice_may_not_read_is_a_permission_error_and_nothing_is_made(cur, schema):
    cur.execute("SELECT has_table_privilege('secret', 'SELECT')")
    assert cur.fetchone()[0] is False
    with pytest.raises(psycopg2.Error) as caught:
        cur.execute(f"SELECT {schema}.training_preprocessor_dl('secret', 'stolen', 'y', 'x')")
    error = caught.value
    assert error.pgcode == "42501", (error.pgcode, str(error))  # insufficient_privilege
    assert "permission denied" in error.diag.message_primary and "secret" in error.diag.message_primary
    for table in ("stolen", "stolen_summary"):
        cur.execute("SELECT to_regclass(%s)", [table])
        assert cur.fetchone()[0] is None, table
