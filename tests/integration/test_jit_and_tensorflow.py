"""PostgreSQL's JIT (llvmjit: the system LLVM) and TensorFlow (its own LLVM) in one backend: without
care either order ends in SIGSEGV, which restarts every session of the server. madlib_dl loads llvmjit
before TensorFlow and TensorFlow with RTLD_DEEPBIND; these sessions must all survive. A background worker
never runs a JIT query, so it starts TensorFlow lean: without llvmjit and without scikit-learn."""

import pytest

from madlib_dl.keras_runtime import tf_setup

keras = tf_setup.keras()
L = keras.layers
CONV_JSON = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(4, 3, activation="relu"), L.Flatten(),
                              L.Dense(10, activation="softmax")]).to_json()
JIT_QUERY = "SELECT count(*) FROM generate_series(1, 1000) g WHERE g % 3 = 0"


@pytest.fixture(scope="module")
def database(server):
    with server.fresh_database("jit_tf") as name:
        yield name


def _jit_available(cur):
    cur.execute("SELECT pg_jit_available()")
    return cur.fetchone()[0]


def _jit_query(cur):
    """Run a query that is JIT-compiled; return whether this backend now has llvmjit loaded."""
    cur.execute("SET jit = on")
    cur.execute("SET jit_above_cost = 0")
    cur.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {JIT_QUERY}")
    plan = cur.fetchone()[0][0]
    cur.execute(JIT_QUERY)
    assert cur.fetchone()[0] == 333
    return "JIT" in plan


def _load(cur):
    cur.execute("SELECT madlib_dl.load_keras_model('arch', %s::json)", [CONV_JSON])


@pytest.mark.parametrize("order", ["jit_then_tensorflow", "tensorflow_then_jit", "jit_off_then_on"])
def test_a_backend_survives_jit_and_tensorflow(server, database, order):
    with server.connect(database) as conn, conn.cursor() as cur:
        if not _jit_available(cur):
            pytest.skip("this server has no JIT provider (llvmjit)")
        if order == "jit_then_tensorflow":
            assert _jit_query(cur)
            _load(cur)
            assert _jit_query(cur)
        elif order == "tensorflow_then_jit":
            _load(cur)
            cur.execute("SHOW jit_above_cost")
            assert cur.fetchone()[0] == "100000", "the JIT pre-load leaves the session's settings as they were"
            assert _jit_query(cur)
            _load(cur)
        else:
            cur.execute("SET jit = off")
            _load(cur)
            cur.execute("SHOW jit")
            assert cur.fetchone()[0] == "off"
            assert _jit_query(cur)
        cur.execute("SELECT 1")
        assert cur.fetchone()[0] == 1


PROBE = ("CREATE FUNCTION pg_temp.loaded() RETURNS TEXT[] LANGUAGE plpython3u AS $$\n"
         "import sys\n"
         "maps = open('/proc/self/maps').read()\n"
         "return [name for name, found in (('llvmjit', 'llvmjit' in maps), ('tensorflow', 'tensorflow' in sys.modules),\n"
         "        ('sklearn', 'sklearn' in sys.modules)) if found]\n$$")


def _init_and_probe(server, database, options: str, worker_session: bool) -> list[str]:
    from madlib_dl.tools.cluster import autocommit_connection

    with autocommit_connection(**server.dsn(database), options=options) as conn, conn.cursor() as cur:
        cur.execute("SELECT madlib_dl.internal_fit_worker_init(1, NULL, NULL, %s)", [worker_session])
        cur.execute(PROBE)
        cur.execute("SELECT pg_temp.loaded()")
        return sorted(cur.fetchone()[0])


def _server_finds(cur, module: str) -> bool:
    """Whether the server's madlib_dl install can import ``module`` (make install copies only what the
    server needs, so scikit-learn, which Keras imports when it can, is there only after dev-install)."""
    cur.execute("SELECT madlib_dl.internal_fit_release(NULL)")  # boots madlib_dl's paths in this backend
    cur.execute("CREATE FUNCTION pg_temp.finds(name TEXT) RETURNS BOOLEAN LANGUAGE plpython3u AS "
                "$$import importlib.util; return importlib.util.find_spec(name) is not None$$")
    cur.execute("SELECT pg_temp.finds(%s)", [module])
    return cur.fetchone()[0]


def test_a_worker_session_with_jit_off_starts_tensorflow_without_llvmjit_or_sklearn(server, database):
    with server.connect(database) as conn, conn.cursor() as cur:
        if not _jit_available(cur):
            pytest.skip("this server has no JIT provider (llvmjit)")
        sklearn = _server_finds(cur, "sklearn")
    assert _init_and_probe(server, database, "-c jit=off", True) == ["tensorflow"]
    # A user's session, or any backend whose JIT is on, keeps the JIT-first order.
    expected = sorted(["llvmjit", "tensorflow"] + (["sklearn"] if sklearn else []))
    assert _init_and_probe(server, database, "-c jit=off", False) == expected
    assert _init_and_probe(server, database, "-c jit=on", True) == expected


def _mapped(pid: int) -> list[str]:
    """Which of llvmjit, TensorFlow and scikit-learn (their shared objects) process ``pid`` has loaded."""
    with open(f"/proc/{pid}/maps") as maps:
        text = maps.read()
    return [name for name, path in (("llvmjit", "llvmjit"), ("sklearn", "/sklearn/"), ("tensorflow", "/tensorflow/"))
            if path in text]


def test_background_workers_start_tensorflow_without_llvmjit_or_sklearn(training_database):
    """The caller has the server's default, jit = on; its background workers, which never run a JIT
    query, train without llvmjit and scikit-learn loaded (tf_setup.WORKER_SKIPPED_MODULES)."""
    with training_database("jit_workers") as conn, conn.cursor() as cur:
        if not _jit_available(cur):
            pytest.skip("this server has no JIT provider (llvmjit)")
        cur.execute("SHOW jit")
        assert cur.fetchone()[0] == "on"
        cur.execute("CREATE TABLE t AS SELECT i AS id, ARRAY[i % 7, i % 5, i % 3, 1]::float8[] AS x, i % 3 AS y "
                    "FROM generate_series(1, 120) i")
        cur.execute("SELECT madlib_dl.training_preprocessor_dl('t', 't_packed', 'y', 'x', NULL, 1.0, NULL, '2')")
        model = keras.Sequential([keras.Input((4,)), L.Dense(3, activation="softmax")])
        cur.execute("SELECT madlib_dl.load_keras_model('arch', %s::json)", [model.to_json()])
        cur.execute("SELECT madlib_dl.madlib_keras_fit('t_packed', 'm', 'arch', 1, "
                    "$$loss='categorical_crossentropy', optimizer='Adam()'$$, 'batch_size=8', 1)")
        cur.execute("SELECT DISTINCT worker_pid FROM madlib_dl.last_fit_hops()")
        pids = [pid for (pid,) in cur.fetchall()]
        assert len(pids) == 1 and conn.get_backend_pid() not in pids  # fit: one worker (training.parallelism)
        assert {pid: _mapped(pid) for pid in pids} == {pid: ["tensorflow"] for pid in pids}
