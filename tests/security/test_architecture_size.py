"""Issue 25, item 7: an architecture's size is checked before Keras allocates it.

The attack: a plain role hands madlib_dl a few hundred bytes of JSON describing a model of ~100 MB of
weights (large enough to show, small enough for this machine; the real attack uses gigabytes, and the
kernel's OOM killer then ends a backend, which restarts every session of the server). Before the fix,
Keras built it in the role's backend (load_keras_model, predict) or in the workers (a run's initial
weights): the backend's peak memory grew by several times the weights. Now the size is computed from
the JSON and refused against the DBA's cap madlib_dl.max_model_memory_mb (set here to 16 MiB by the
superuser, for the database), which the role cannot raise, and against its own memory budget: at once,
with no growth of the backend's memory, and the server and its other sessions carry on.
"""

from __future__ import annotations

import json
import struct
import time

import psycopg2
import pytest

DB = "sec_arch_size"
CAP_MIB = 16
UNITS = 3_000_000  # Dense(4 -> 3,000,000 -> 3): 24 M weights, 96 MB; building it takes ~290 MB
GROWTH_LIMIT = 48 << 20  # half the weights: a build of the model would take six times this


def _layer(class_name: str, **config) -> dict:
    return {"module": "keras.layers", "class_name": class_name, "config": config}


def _sequential(*layers: dict, inputs: int = 4) -> str:
    return json.dumps({"module": "keras", "class_name": "Sequential", "config": {"name": "m", "layers": [
        _layer("InputLayer", batch_shape=[None, inputs]), *layers]}})


SMALL = _sequential(_layer("Dense", units=3, activation="softmax"))
ATTACKS = {
    # a plain huge Dense: weights Keras allocates
    "dense": _sequential(_layer("Dense", units=UNITS), _layer("Dense", units=3)),
    # a layer outside the closed forms (counted by Keras without allocating)
    "unknown_layer": _sequential(_layer("EinsumDense", equation="ab,bc->ac", output_shape=UNITS, bias_axes="c"),
                                 _layer("Dense", units=3)),
    # a build_config that lies: Keras builds the layer on the shape written there, not on the 4 inputs
    "build_config": _sequential(dict(_layer("Dense", units=4), build_config={"input_shape": [None, UNITS]}),
                                _layer("Dense", units=3)),
    # no weights at all, but constants made while it is built: a given mean broadcast over 12 M features
    "constants": _sequential(_layer("Normalization", mean=0.5, variance=2.0), _layer("Reshape", target_shape=[UNITS * 4, 1]),
                             _layer("GlobalAveragePooling1D"), _layer("Dense", units=3), inputs=UNITS * 4),
}


def _peak(pid: int) -> int:
    """VmHWM (the process's peak resident memory) of a backend of this machine's server, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) << 10
    raise AssertionError(f"no VmHWM for pid {pid}")


@pytest.fixture(scope="module")
def attack_db(server, plain_role):
    """A database whose DBA capped one model at CAP_MIB MiB; the plain role's connection has built a
    small model once (TensorFlow imported), so what the attack adds is measured alone."""
    with server.fresh_database(DB, plain_role=plain_role) as name:
        with server.connect(name) as admin, admin.cursor() as cur:
            cur.execute(f"ALTER DATABASE {name} SET madlib_dl.max_model_memory_mb = {CAP_MIB}")
        with server.connect(name, user=plain_role) as conn, conn.cursor() as cur:
            cur.execute("SELECT madlib_dl.load_keras_model('arch', %s::json)", [SMALL])
            cur.execute("SELECT pg_backend_pid()")
            yield conn, cur.fetchone()[0]


@pytest.fixture
def bystander(server):
    """Another session of the server, as the superuser, open while the attack runs."""
    with server.connect(DB) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid(), pg_postmaster_start_time()")
        yield cur, cur.fetchone()


def _refused(conn, pid: int, statement: str, args: list, bystander) -> psycopg2.Error:
    before = _peak(pid)
    started = time.monotonic()
    with conn.cursor() as cur, pytest.raises(psycopg2.Error) as raised:
        cur.execute(statement, args)
    seconds = time.monotonic() - started
    grown = _peak(pid) - before
    assert grown < GROWTH_LIMIT, f"the backend's peak memory grew by {grown >> 20} MiB: Keras allocated the model"
    assert seconds < 10, f"refused after {seconds:.1f} s"
    cur, (bystander_pid, started_at) = bystander
    cur.execute("SELECT pg_backend_pid(), pg_postmaster_start_time()")
    assert cur.fetchone() == (bystander_pid, started_at)  # same session, no server restart
    return raised.value


def _says_cap(error: psycopg2.Error) -> None:
    message = error.pgerror or ""
    assert error.pgcode == "22023", message
    assert "madlib_dl.max_model_memory_mb" in message and f"{CAP_MIB} MiB" in message, message
    assert "parameters" in message and "of weights" in message, message
    assert "Traceback" not in message, message
    assert "ALTER SYSTEM SET madlib_dl.max_model_memory_mb" in (error.diag.message_hint or ""), message


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_load_keras_model_refuses_a_model_over_the_cap_before_keras_allocates(attack_db, bystander, attack):
    conn, pid = attack_db
    error = _refused(conn, pid, "SELECT madlib_dl.load_keras_model('arch', %s::json)", [ATTACKS[attack]],
                     bystander)
    _says_cap(error)
    assert "model_arch: " in error.pgerror
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM arch")
        assert cur.fetchone()[0] == 1  # the small model only


def test_the_role_cannot_raise_the_cap_or_escape_it_with_its_budget(attack_db, bystander):
    conn, pid = attack_db
    try:
        with conn.cursor() as cur:
            cur.execute("SET madlib_dl.memory_budget_mb = 2147483647")
            try:
                cur.execute("SET madlib_dl.max_model_memory_mb = 100000")
            except psycopg2.Error as error:  # the DBA's cap: superuser only
                assert error.pgcode == "42501", error.pgerror  # insufficient_privilege
                assert "madlib_dl.max_model_memory_mb" in error.pgerror, error.pgerror
        # had the SET worked, the role would now load its model
        _says_cap(_refused(conn, pid, "SELECT madlib_dl.load_keras_model('arch', %s::json)", [ATTACKS["dense"]],
                           bystander))
    finally:
        with conn.cursor() as cur:
            cur.execute("RESET ALL")  # back to the database's settings, whatever the SETs did


def test_the_role_own_budget_is_checked_too(attack_db, bystander):
    conn, pid = attack_db
    medium = _sequential(_layer("Dense", units=100_000), _layer("Dense", units=3))  # 0.8 M weights, ~9 MiB to build
    with conn.cursor() as cur:
        cur.execute("SET madlib_dl.memory_budget_mb = 8")
    try:
        error = _refused(conn, pid, "SELECT madlib_dl.load_keras_model('arch', %s::json)", [medium], bystander)
    finally:
        with conn.cursor() as cur:
            cur.execute("RESET madlib_dl.memory_budget_mb")
    assert "madlib_dl.memory_budget_mb = 8 MiB" in error.pgerror, error.pgerror
    assert "SET madlib_dl.memory_budget_mb = " in (error.diag.message_hint or "")


def _forged_row(conn, table: str, arch: str) -> None:
    """A row written straight into the role's own architecture table: load_keras_model's checks never
    saw it (the table is the role's; any JSON can be put there)."""
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(f"SELECT madlib_dl.load_keras_model('{table}', %s::json, %s)",
                    [SMALL, struct.pack("<15f", *range(15))])  # the small model's 4 x 3 + 3 weights
        cur.execute(f"UPDATE {table} SET model_arch = %s::json", [arch])


def test_predict_byom_refuses_a_forged_architecture_before_keras_allocates(attack_db, bystander):
    conn, pid = attack_db
    _forged_row(conn, "forged", ATTACKS["dense"])
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS points; CREATE TABLE points (id INTEGER, x REAL[])")
        cur.execute("INSERT INTO points VALUES (1, ARRAY[1, 2, 3, 4])")
    error = _refused(conn, pid, "SELECT madlib_dl.madlib_keras_predict_byom('forged', 1, 'points', 'id', 'x', "
                                "'points_out')", [], bystander)
    _says_cap(error)
    assert "model_id 1" in error.pgerror, error.pgerror


def test_a_training_run_refuses_a_forged_architecture_before_its_initial_weights(attack_db, bystander):
    conn, pid = attack_db
    _forged_row(conn, "forged", ATTACKS["dense"])
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS few, few_packed, few_packed_summary; "
                    "CREATE TABLE few (x REAL[], y INTEGER)")
        cur.execute("INSERT INTO few SELECT ARRAY[i, i, i, i]::REAL[], i % 3 FROM generate_series(1, 6) i")
        cur.execute("SELECT madlib_dl.training_preprocessor_dl('few', 'few_packed', 'y', 'x', NULL, 1.0, NULL, '1')")
        cur.execute("DROP TABLE IF EXISTS fit_out, fit_out_summary")
    error = _refused(conn, pid, "SELECT madlib_dl.madlib_keras_fit('few_packed', 'fit_out', 'forged', 1, "
                                "$$loss='categorical_crossentropy', optimizer='SGD'$$, 'batch_size=2, epochs=1', 1)",
                     [], bystander)
    _says_cap(error)
    assert "model_id 1" in error.pgerror, error.pgerror
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('fit_out')")
        assert cur.fetchone()[0] is None
