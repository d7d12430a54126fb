"""Packed tables on the Citus worker nodes (madlib_dl.packed_table_placement = 'citus_nodes'), as a plain
role: one shard per segment spread over both nodes, the validation table's segments on its training
table's nodes, and training and evaluation on the nodes (a session per segment, both nodes at once)
giving what plain Keras gives on the same hops, and what the same run in the driver's session gives."""

from __future__ import annotations

import numpy as np
import psycopg2
import pytest
from psycopg2.extras import execute_values

from madlib_dl import settings
from madlib_dl.keras_runtime import serialization, tf_setup
from tests.citus import replay
from tests.citus.conftest import DATABASE

SEGMENTS = 4
# The test nodes share this machine: as many node sessions as its CPUs, at least one per node
SESSIONS = max(2, min(SEGMENTS, settings.cpu_count()))
ROWS, VALIDATION_ROWS, FEATURES, CLASSES = 120, 40, 4, 3


@pytest.fixture(scope="module")
def conn(citus_cluster, citus_role):
    """alice's session on the coordinator, with a source table (itself distributed, as a user's big
    table would be), its packed table over 4 segments and a validation table."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(ROWS + VALIDATION_ROWS, FEATURES))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    with citus_cluster.coordinator.connect(DATABASE, user=citus_role) as c:
        with c.cursor() as cur:
            cur.execute("CREATE TABLE points (id INTEGER, x DOUBLE PRECISION[], label INTEGER)")
            cur.execute("SELECT create_distributed_table('points', 'id')")
            execute_values(cur, "INSERT INTO points VALUES %s",
                           [(i, list(map(float, x[i])), int(y[i])) for i in range(len(x))])
            cur.execute("CREATE TABLE points_train AS SELECT * FROM points WHERE id < %s", [ROWS])
            cur.execute("CREATE TABLE points_val AS SELECT * FROM points WHERE id >= %s", [ROWS])
            cur.execute("SET madlib_dl.packed_table_placement = 'citus_nodes'")
            cur.execute("SELECT madlib_dl.training_preprocessor_dl('points_train', 'packed', 'label', 'x', NULL, "
                        "1.0, NULL, %s)", [str(SEGMENTS)])
            cur.execute("SELECT madlib_dl.validation_preprocessor_dl('points_val', 'packed_val', 'label', 'x', "
                        "'packed')")
        yield c


def test_by_default_on_the_nodes_with_a_multiple_of_their_number_of_segments(conn):
    with conn.cursor() as cur:
        cur.execute("RESET madlib_dl.packed_table_placement")
        cur.execute("SET madlib_dl.num_segments = 3")
        cur.execute("SELECT madlib_dl.training_preprocessor_dl('points_train', 'by_default', 'label', 'x')")
        cur.execute("SELECT count(*), count(DISTINCT nodeport) FROM citus_shards "
                    "WHERE table_name = 'by_default'::regclass")
        assert cur.fetchone() == (4, 2)  # 3 rounded up to 2 segments on each node
        cur.execute("SET madlib_dl.packed_table_placement = 'local'")
        cur.execute("SELECT madlib_dl.training_preprocessor_dl('points_train', 'kept_here', 'label', 'x')")
        cur.execute("SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'kept_here'::regclass")
        assert cur.fetchone() == (0,)
        cur.execute("SELECT num_segments FROM kept_here_summary")
        assert cur.fetchone() == (3,)
        cur.execute("RESET madlib_dl.num_segments")
        cur.execute("SET madlib_dl.packed_table_placement = 'citus_nodes'")


def _placement(cur, table):
    """__dist_key__ -> the node port holding its shard."""
    cur.execute(f"SELECT DISTINCT __dist_key__ FROM {table}")
    keys = [k for (k,) in cur.fetchall()]
    placed = {}
    for key in keys:
        cur.execute("SELECT nodeport FROM citus_shards WHERE shardid = "
                    "get_shard_id_for_distribution_column(%s, %s)", [table, key])
        (placed[key],) = cur.fetchone()
    return placed


def test_one_shard_per_segment_over_both_nodes_and_validation_beside_training(conn, citus_cluster):
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT nodeport) FROM citus_shards WHERE table_name = 'packed'::regclass")
        assert cur.fetchone() == (SEGMENTS, 2)
        training, validation = _placement(cur, "packed"), _placement(cur, "packed_val")
        assert len(training) == SEGMENTS and sorted(training.values()).count(citus_cluster.workers[0].port) == 2
        assert validation == training  # the same keys, each on its training segment's node
        cur.execute("SELECT count(DISTINCT get_shard_id_for_distribution_column('packed', __dist_key__)) FROM packed")
        assert cur.fetchone() == (SEGMENTS,)  # no two segments share a shard
        cur.execute("SELECT num_segments, sum(1) FROM packed_summary GROUP BY 1")
        assert cur.fetchone()[0] == SEGMENTS


def _adam(lr):
    return f"loss='categorical_crossentropy', optimizer='Adam(learning_rate={lr})', metrics=['accuracy']"


def test_fit_multiple_and_evaluate_on_the_nodes_equal_plain_keras_on_the_same_hops(conn, citus_cluster):
    keras = tf_setup.keras()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(CLASSES, activation="softmax")])
    rates = {1: 0.01, 2: 0.05}
    with conn.cursor() as cur:
        cur.execute("SELECT madlib_dl.load_keras_model('arch', %s::json, %s)",
                    [model.to_json(), serialization.serialize_weights(model.get_weights())])
        for lr in rates.values():
            cur.execute("SELECT madlib_dl.load_model_selection_table('arch', 'mst', ARRAY[1], %s, "
                        "ARRAY['batch_size=8,epochs=1,shuffle=False'])", [[_adam(lr)]])
        conn.notices.clear()
        cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('packed', 'out', 'mst', 2, FALSE, "
                    "'packed_val', NULL, FALSE, NULL, NULL, TRUE)")
        nodes = ", ".join(f"127.0.0.1:{w.port}" for w in sorted(citus_cluster.workers, key=lambda w: w.port))
        assert any(f"{SEGMENTS} segments on the Citus worker nodes {nodes}" in n for n in conn.notices), conn.notices
        cur.execute("SELECT mst_key, segment, buffers_read, worker_pid, extract(epoch FROM started), "
                    "extract(epoch FROM ended) FROM madlib_dl.last_fit_hops() WHERE kind = 'train' ORDER BY started")
        hops = cur.fetchall()
        assert len(hops) == 2 * 2 * SEGMENTS
        assert sum(read > 0 for _, _, read, *_ in hops) == SEGMENTS  # caching: each segment read once, on its node
        sessions = {segment: pid for _, segment, _, pid, _, _ in hops}
        assert len(set(sessions.values())) == SESSIONS  # node sessions kept for the whole run
        for pid in set(sessions.values()):  # a session serves segments of its own node only
            assert len({placed_port for segment, placed_port in _placement(cur, "packed").items()
                        if sessions[segment] == pid}) == 1
        assert all(pid != conn.get_backend_pid() for pid in sessions.values())
        spans = [(start, end) for *_, start, end in hops]
        assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])  # at once
        placed = _placement(cur, "packed")
        cur.execute("SELECT segment, node FROM madlib_dl.last_fit_hops()")
        assert {(segment, node) for segment, node in cur.fetchall()} == \
            {(key, f"127.0.0.1:{port}") for key, port in placed.items()}  # each hop names its segment's node
        _check_against_replay(cur, model, rates, [(k, seg) for k, seg, *_ in hops])
        on_nodes = _weights(cur, "out")
        cur.execute("SELECT validation_loss_final FROM out_info ORDER BY mst_key")
        losses = [r[0] for r in cur.fetchall()]
        assert all(0 < loss < 5 for loss in losses)
        cur.execute("SELECT madlib_dl.madlib_keras_evaluate('out', 'packed_val', 'evaluated', NULL, 1)")
        cur.execute("SELECT loss FROM evaluated")
        assert cur.fetchone()[0] == pytest.approx(losses[0], rel=1e-5)
        # in the driver's own session, each segment read through the coordinator: plain Keras on its hops too
        cur.execute("SET madlib_dl.executor = 'in_process'")
        cur.execute("DROP TABLE out, out_summary, out_info")
        cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('packed', 'out', 'mst', 2, FALSE, "
                    "'packed_val', NULL, FALSE, NULL, NULL, TRUE)")
        cur.execute("SELECT mst_key, segment, worker_pid FROM madlib_dl.last_fit_hops() WHERE kind = 'train' "
                    "ORDER BY started")
        in_process = cur.fetchall()
        assert {pid for *_, pid in in_process} == {conn.get_backend_pid()}
        _check_against_replay(cur, model, rates, [(k, seg) for k, seg, _ in in_process])
        if [(k, seg) for k, seg, _ in in_process] == [(k, seg) for k, seg, *_ in hops]:
            assert _weights(cur, "out") == on_nodes  # the same visit order: bitwise the same models
        cur.execute("RESET madlib_dl.executor")
        # the session's next call on the nodes finds its node sessions kept (TensorFlow loaded there)
        cur.execute("DROP TABLE out, out_summary, out_info")
        cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('packed', 'out', 'mst', 1, FALSE)")
        cur.execute("SELECT DISTINCT segment, worker_pid FROM madlib_dl.last_fit_hops()")
        assert dict(cur.fetchall()) == sessions


def _check_against_replay(cur, model, rates, hops, table="out"):
    replay.check(cur, model, rates, hops, "packed", table, batch_size=8)


def _weights(cur, table):
    cur.execute(f"SELECT mst_key, model_weights FROM {table} ORDER BY mst_key")
    return {k: bytes(w) for k, w in cur.fetchall()}


def test_a_state_larger_than_one_call_travels_in_pieces(conn):
    """madlib_dl.node_call_mb = 1 and a 3 MB state (weights and Adam's moments): every hop sends the state
    in pieces and reads the new one back in pieces; the models are plain Keras's on the same hops."""
    keras = tf_setup.keras()
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(512, activation="relu"),
                              keras.layers.Dense(512, activation="relu"), keras.layers.Dense(CLASSES, activation="softmax")])
    assert 3 * 4 * model.count_params() > 3 << 20
    with conn.cursor() as cur:
        cur.execute("SELECT madlib_dl.load_keras_model('wide_arch', %s::json, %s)",
                    [model.to_json(), serialization.serialize_weights(model.get_weights())])
        cur.execute("SELECT madlib_dl.load_model_selection_table('wide_arch', 'wide_mst', ARRAY[1], %s, "
                    "ARRAY['batch_size=8,epochs=1,shuffle=False'])", [[_adam(0.01)]])
        cur.execute("SET madlib_dl.node_call_mb = 1")
        cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('packed', 'wide_out', 'wide_mst', 2, FALSE, "
                    "NULL, NULL, FALSE, NULL, NULL, TRUE)")
        cur.execute("RESET madlib_dl.node_call_mb")
        cur.execute("SELECT mst_key, segment, node FROM madlib_dl.last_fit_hops() WHERE kind = 'train' ORDER BY started")
        hops = cur.fetchall()
        assert len(hops) == 2 * SEGMENTS and all(node for *_, node in hops)
        _check_against_replay(cur, model, {1: 0.01}, [(k, seg) for k, seg, _ in hops], table="wide_out")
        cur.execute("SELECT octet_length(optimizer_state) > 2 << 20 FROM wide_out")
        assert cur.fetchone() == (True,)


def test_a_role_whose_password_only_citus_knows_gets_what_is_missing(conn, citus_cluster):
    """carol's password is in pg_dist_authinfo (Citus's own connections use it), not in the server's
    password file: Citus distributes her table, but madlib_dl's connections, which authenticate as
    libpq does, cannot log in; the call says so (not a lost node, no resume offered) and writes nothing."""
    from tests.integration.conftest import Role

    carol = Role("carol", "carol-" + "x" * 12)
    with citus_cluster.coordinator.connect(DATABASE) as admin, admin.cursor() as cur:
        cur.execute("SET password_encryption = 'scram-sha-256'")
        cur.execute("CREATE ROLE carol LOGIN PASSWORD %s", [carol.password])
        cur.execute("INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo) VALUES (0, 'carol', %s)",
                    [f"password={carol.password}"])
        cur.execute("GRANT SELECT ON points_train, arch, mst, mst_summary TO carol")
    citus_cluster.coordinator.grant_plain_role(DATABASE, carol)
    with citus_cluster.coordinator.connect(DATABASE, user=carol) as c, c.cursor() as cur:
        cur.execute("SELECT madlib_dl.training_preprocessor_dl('points_train', 'carols', 'label', 'x', NULL, 1.0, "
                    "NULL, '2')")
        with pytest.raises(psycopg2.Error) as error:
            cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('carols', 'carols_out', 'mst', 1, FALSE)")
        assert error.value.pgcode == "28000", error.value.pgerror
        assert "cannot connect to its Citus worker node" in error.value.pgerror
        assert "pg_dist_authinfo is not used" in error.value.pgerror
        cur.execute("SELECT to_regclass('carols_out')")
        assert cur.fetchone() == (None,)


def test_citus_nodes_refused_naming_the_setting_where_there_are_no_worker_nodes(citus_cluster):
    """A worker node's own database has Citus but no worker nodes of its own."""
    with citus_cluster.workers[0].connect(DATABASE) as c, c.cursor() as cur:
        cur.execute("CREATE TABLE lonely (id INTEGER, x DOUBLE PRECISION[], label INTEGER)")
        cur.execute("INSERT INTO lonely VALUES (1, ARRAY[1, 2], 0)")
        cur.execute("SET madlib_dl.packed_table_placement = 'citus_nodes'")
        with pytest.raises(psycopg2.Error) as error:
            cur.execute("SELECT madlib_dl.training_preprocessor_dl('lonely', 'lonely_packed', 'label', 'x')")
        assert "madlib_dl.packed_table_placement is 'citus_nodes'" in str(error.value)
        assert "no Citus worker nodes" in str(error.value)
        cur.execute("SELECT to_regclass('lonely_packed'), to_regclass('lonely_packed_summary')")
        assert cur.fetchone() == (None, None)


def test_the_node_entry_reads_only_as_its_caller(conn, citus_cluster):
    """Attack: bob, another plain role, calls the node entry himself in a session of his own on the node
    holding one of alice's segments, asking it to count her shard's rows: the request runs as bob, whose
    SELECT on her table (and shards) is refused, so nothing of hers comes back; alice gets her counts."""
    import json

    from madlib_dl.segment import requests

    bob = citus_cluster.create_role("bob")
    with conn.cursor() as cur:
        cur.execute("SELECT nodeport, shard_name FROM citus_shards WHERE table_name = 'packed'::regclass "
                    "ORDER BY shardid LIMIT 1")
        port, shard = cur.fetchone()
    node = next(w for w in citus_cluster.workers if w.port == port)
    with node.connect(DATABASE) as admin, admin.cursor() as cur:
        cur.execute("SELECT %s::regclass::oid", [f"public.{shard}"])
        (oid,) = cur.fetchone()
    header, _ = requests.encode(requests.CountRows(requests.TableRef("public", shard, "label", "x", oid)))
    call = "SELECT (madlib_dl.internal_node_call(%s, NULL, NULL)).reply_header"
    with node.connect(DATABASE, user=bob) as c, c.cursor() as cur:
        with pytest.raises(psycopg2.Error) as error:
            cur.execute(call, [json.dumps(header)])
        assert "permission denied" in str(error.value)
    with node.connect(DATABASE, user=citus_cluster.roles["alice"]) as c, c.cursor() as cur:
        cur.execute(call, [json.dumps(header)])
        reply = json.loads(cur.fetchone()[0])
        assert reply["fields"]["row"]["counts"]  # her own session sees her segment


def _node_sessions(citus_cluster) -> set[tuple[int, int]]:
    """madlib_dl's sessions on the worker nodes now: (port, pid)."""
    found = set()
    for worker in citus_cluster.workers:
        with worker.connect(DATABASE) as c, c.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'madlib_dl_node'")
            found |= {(worker.port, pid) for (pid,) in cur.fetchall()}
    return found


def test_a_cancel_on_the_coordinator_ends_the_work_on_every_node(conn, citus_cluster):
    """A run on the nodes (long hops) shows in fit_progress how far its hop is, as the node reports it;
    cancelled on the coordinator it stops with the cancel's error, and its node sessions are gone soon
    after (the bench measures how soon; the bound here holds on a busy machine)."""
    import threading
    import time

    keras = tf_setup.keras()
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES, activation="softmax")])
    with conn.cursor() as cur:
        cur.execute("SELECT madlib_dl.load_keras_model('arch_slow', %s::json)", [model.to_json()])
        cur.execute("SELECT madlib_dl.load_model_selection_table('arch_slow', 'mst_slow', ARRAY[1], %s, "
                    "ARRAY['batch_size=1,epochs=4000'])", [[_adam(0.01)]])
    alice = citus_cluster.roles["alice"]
    outcome = {}
    before = _node_sessions(citus_cluster)  # other sessions' (kept for their next call)

    def _run_sessions() -> int:
        return len(_node_sessions(citus_cluster) - before)

    with citus_cluster.coordinator.connect(DATABASE, user=alice) as driver:
        pid = driver.get_backend_pid()

        def run():
            try:
                with driver.cursor() as cur:
                    cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('packed', 'out_slow', 'mst_slow', 2, "
                                "FALSE, NULL, NULL, FALSE, NULL, NULL, TRUE)")
            except psycopg2.Error as error:
                outcome["error"] = error
            outcome["ended"] = time.monotonic()

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 120
        while _run_sessions() < SESSIONS and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _run_sessions() == SESSIONS
        with citus_cluster.coordinator.connect(DATABASE, user=alice) as watcher, watcher.cursor() as cur:
            progress, deadline = [], time.monotonic() + 60  # the recorder writes soon, later on a busy machine
            while len({row[3] for row in progress}) < 2 and time.monotonic() < deadline:
                cur.execute("SELECT phase, iterations, hops_total, hop_batches_done FROM madlib_dl.fit_progress "
                            "WHERE pid = %s AND hop_batches_done IS NOT NULL", [pid])
                progress += cur.fetchall()
                time.sleep(0.5)
            assert {row[:3] for row in progress} == {("training", 2, SEGMENTS)}  # the run's progress, as on one server
            # and within the hop: the node session's reports (NOTICEs on the driver's connection)
            assert len({row[3] for row in progress}) >= 2, progress
        with citus_cluster.coordinator.connect(DATABASE) as admin, admin.cursor() as cur:
            cancelled = time.monotonic()
            cur.execute("SELECT pg_cancel_backend(%s)", [pid])
        thread.join(60)
        assert not thread.is_alive()
        assert outcome["error"].pgcode == "57014" and outcome["ended"] - cancelled < 15
        deadline = time.monotonic() + 15
        while _run_sessions() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _run_sessions() == 0
        with driver.cursor() as cur:
            cur.execute("SELECT to_regclass('out_slow')")
            assert cur.fetchone() == (None,)


def test_fit_of_one_model_on_the_nodes(conn):
    """madlib_keras_fit on a distributed table trains on the nodes, its hops those of plain Keras."""
    keras = tf_setup.keras()
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(CLASSES, activation="softmax")])
    with conn.cursor() as cur:
        cur.execute("SELECT madlib_dl.load_keras_model('one_arch', %s::json, %s)",
                    [model.to_json(), serialization.serialize_weights(model.get_weights())])
        cur.execute("SELECT model_id FROM one_arch")
        (model_id,) = cur.fetchone()
        cur.execute("SELECT madlib_dl.madlib_keras_fit('packed', 'one_out', 'one_arch', %s, %s, "
                    "'batch_size=8,epochs=1,shuffle=False', 2, FALSE, 'packed_val')", [model_id, _adam(0.02)])
        cur.execute("SELECT mst_key, segment, node FROM madlib_dl.last_fit_hops() WHERE kind = 'train' "
                    "ORDER BY started")
        hops = cur.fetchall()
        assert len(hops) == 2 * SEGMENTS and len({node for *_, node in hops}) == 2
        cur.execute("CREATE TEMP VIEW one_weights AS SELECT 1 AS mst_key, model_weights FROM one_out")
        _check_against_replay(cur, model, {1: 0.02}, [(1, seg) for _, seg, _ in hops], table="one_weights")
        cur.execute("SELECT validation_loss[array_upper(validation_loss, 1)] > 0 FROM one_out_summary")
        assert cur.fetchone() == (True,)


def test_predict_and_automl_on_distributed_tables(conn, citus_cluster):
    """Prediction reads a distributed source table (through Citus, in the caller's session) and gives what
    plain Keras gives with the stored weights; AutoML trains on the nodes' segments."""
    keras = tf_setup.keras()
    with conn.cursor() as cur:
        cur.execute("SELECT madlib_dl.madlib_keras_predict('out', 'points', 'id', 'x', 'predicted', 'prob', "
                    "FALSE, 1)")
        cur.execute("SELECT a.model_arch::text FROM arch a WHERE a.model_id = 1")
        model = keras.models.model_from_json(cur.fetchone()[0])
        blob = _weights(cur, "out")[1]
        model.set_weights(serialization.deserialize_weights(blob, [w.shape for w in model.get_weights()]))
        cur.execute("SELECT id, x FROM points ORDER BY id")
        ids, x = zip(*cur.fetchall())
        expected = model.predict(np.array(x, dtype=np.float32), verbose=0)
        cur.execute("SELECT id, class_value::int, prob FROM predicted")
        got = np.full(expected.shape, np.nan)
        for row_id, label, prob in cur.fetchall():
            got[ids.index(row_id), label] = prob
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)  # every id and class, as Keras predicts
        conn.notices.clear()
        cur.execute("SELECT madlib_dl.madlib_keras_automl('packed', 'automl_out', 'arch', 'automl_mst', ARRAY[1], "
                    "$${'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'], "
                    "'optimizer_params_list': [{'optimizer': ['Adam'], 'lr': [0.001, 0.1, 'log']}]}$$, "
                    "$${'batch_size': [8], 'epochs': [1]}$$, 'hyperband', 'R=2, eta=2, skip_last=0', 7, "
                    "validation_table => 'packed_val', use_caching => TRUE)")
        assert any(f"{SEGMENTS} segments on the Citus worker nodes" in n for n in conn.notices), conn.notices
        cur.execute("SELECT count(DISTINCT node), count(*) FILTER (WHERE buffers_read > 0) "
                    "FROM madlib_dl.last_fit_hops() WHERE kind = 'train'")
        assert cur.fetchone() == (2, SEGMENTS)  # both nodes; each segment read once
        cur.execute("SELECT count(*), count(*) FILTER (WHERE validation_loss_final > 0) FROM automl_out_info")
        trained, with_loss = cur.fetchone()
        assert trained >= 2 and with_loss == trained


def test_custom_functions_train_on_the_coordinator(conn, citus_cluster, citus_role):
    """The nodes have no copy of the object table and must not take code on the coordinator's word: a
    run with custom functions trains here, reading the distributed segments through Citus."""
    import dill

    def double_ce(y_true, y_pred):
        import keras

        return 2.0 * keras.losses.categorical_crossentropy(y_true, y_pred)

    double_ce.__module__ = "__main__"  # pickled by value, as a notebook's function is
    with citus_cluster.coordinator.connect(DATABASE) as admin, admin.cursor() as cur:  # a superuser loads it
        cur.execute("DROP TABLE IF EXISTS objects")
        cur.execute("SELECT madlib_dl.load_custom_function('public.objects', %s, 'double_ce')",
                    [psycopg2.Binary(dill.dumps(double_ce, recurse=True))])
        cur.execute(f"GRANT SELECT ON public.objects TO {citus_role.name}")
    with conn.cursor() as cur:
        cur.execute("SELECT madlib_dl.load_keras_model('custom_arch', %s::json)", [_mlp_json()])
        del conn.notices[:]
        cur.execute("SELECT madlib_dl.madlib_keras_fit('packed', 'custom_out', 'custom_arch', 1, "
                    "$$loss='double_ce', optimizer='SGD(lr=0.1)'$$, 'batch_size=8', 1, object_table => 'objects')")
        assert any("custom functions run on this server, not on the Citus worker nodes" in n for n in conn.notices)
        cur.execute("SELECT count(*), count(node) FROM madlib_dl.last_fit_hops() WHERE kind = 'train'")
        assert cur.fetchone() == (SEGMENTS, 0)  # every segment trained, none on a node
        cur.execute("SELECT loss_type, training_loss_final > 0, object_table FROM custom_out_summary")
        assert cur.fetchone() == ("double_ce", True, "public.objects")


def _mlp_json() -> str:
    keras = tf_setup.keras()
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(CLASSES, activation="softmax")]).to_json()


def test_a_model_with_two_inputs_and_two_outputs_trains_on_the_nodes(conn):
    """Multi-io on distributed tables: lists of columns pack into shards on both nodes, fit trains there,
    and evaluate on the nodes gives the loss the fit's last validation reported."""
    keras = tf_setup.keras()
    keras.utils.set_random_seed(4)
    first, second = keras.Input((FEATURES,)), keras.Input((FEATURES,))
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([first, second]))
    model = keras.Model([first, second], [keras.layers.Dense(CLASSES, activation="softmax")(hidden),
                                          keras.layers.Dense(2, activation="softmax")(hidden)])
    with conn.cursor() as cur:
        for name, source in (("multi_train", "points_train"), ("multi_val", "points_val")):
            cur.execute(f"CREATE TABLE {name} AS SELECT id, x, (SELECT array_agg(v * v ORDER BY n) FROM "
                        f"unnest(x) WITH ORDINALITY u(v, n)) AS x2, label, label > 0 AS positive FROM {source}")
        cur.execute("SELECT madlib_dl.training_preprocessor_dl('multi_train', 'multi_packed', 'label, positive', "
                    "'x, x2', NULL, 1.0, NULL, %s)", [str(SEGMENTS)])
        cur.execute("SELECT madlib_dl.validation_preprocessor_dl('multi_val', 'multi_packed_val', 'label, positive', "
                    "'x, x2', 'multi_packed')")
        cur.execute("SELECT madlib_dl.load_keras_model('multi_arch', %s::json)", [model.to_json()])
        cur.execute("SELECT madlib_dl.madlib_keras_fit('multi_packed', 'multi_out', 'multi_arch', 1, %s, "
                    "'batch_size=8,epochs=1', 2, FALSE, 'multi_packed_val')", [_adam(0.02)])
        cur.execute("SELECT count(DISTINCT node) FROM madlib_dl.last_fit_hops() WHERE kind = 'train'")
        assert cur.fetchone() == (2,)
        cur.execute("SELECT madlib_dl.madlib_keras_evaluate('multi_out', 'multi_packed_val', 'multi_eval')")
        cur.execute("SELECT e.loss, s.validation_loss_final, cardinality(e.loss_per_output) "
                    "FROM multi_eval e, multi_out_summary s")
        loss, reported, outputs = cur.fetchone()
        assert loss == pytest.approx(reported, rel=1e-5) and outputs == 2
