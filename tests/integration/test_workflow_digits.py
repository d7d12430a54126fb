"""The data API end to end on sklearn's digits (8x8x1 images, 10 classes), loaded through psycopg2:
pack, load an architecture with initial weights, generate configurations, then train in Keras on what
the tables hold. A model that learns from the decoded buffers proves features and labels line up.
Everything runs as a plain role on a server with Debian's pg_hba; its training runs must use background
workers (conftest.training_database)."""

from __future__ import annotations

import numpy as np
import pytest
from psycopg2.extras import execute_values
from sklearn.datasets import load_digits

from madlib_dl import settings
from madlib_dl.keras_runtime import arch_info, builder, params, serialization, tf_setup
from madlib_dl.preprocess import packing

keras = tf_setup.keras()


def _conv_net():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


@pytest.fixture(scope="module")
def cur(training_database):
    with training_database("workflow_digits") as conn, conn.cursor() as c:
        digits = load_digits()
        c.execute("CREATE TABLE digits (id INTEGER, pixels REAL[], label INTEGER)")
        execute_values(c, "INSERT INTO digits VALUES %s",
                       [(i, img.reshape(8, 8, 1).tolist(), int(y))
                        for i, (img, y) in enumerate(zip(digits.images, digits.target))])
        c.execute("CREATE TABLE digits_train AS SELECT * FROM digits WHERE id % 5 <> 0")
        c.execute("CREATE TABLE digits_val AS SELECT * FROM digits WHERE id % 5 = 0")
        yield c


def _packed(cur, table):
    cur.execute(f"SELECT __dist_key__, pixels, pixels_shape, label, label_shape FROM {table} ORDER BY buffer_id")
    return [(key, packing.decode(bytes(x), xs, packing.FEATURE_DTYPE), packing.decode(bytes(y), ys, packing.LABEL_DTYPE))
            for key, x, xs, y, ys in cur.fetchall()]


def test_digits_from_table_to_trainable_configurations(cur):
    cur.execute("SELECT madlib_dl.training_preprocessor_dl('digits_train', 'train_packed', 'label', 'pixels', "
                "100, 16.0, NULL, '3')")
    cur.execute("SELECT madlib_dl.validation_preprocessor_dl('digits_val', 'val_packed', 'label', 'pixels', "
                "'train_packed')")
    train, val = _packed(cur, "train_packed"), _packed(cur, "val_packed")
    assert sum(len(x) for _, x, _ in train) == 1437 and sum(len(x) for _, x, _ in val) == 360
    for buffers in (train, val):
        per_segment = np.bincount([k for k, _, _ in buffers], minlength=3)
        assert per_segment.max() - per_segment.min() <= 1 and len(per_segment) == 3
        assert all(x.shape[1:] == (8, 8, 1) and y.shape[1] == 10 for _, x, y in buffers)
        assert all(0.0 <= x.min() and x.max() <= 1.0 for _, x, _ in buffers)  # divided by 16

    net = _conv_net()
    initial = serialization.serialize_weights(net.get_weights())
    cur.execute("SELECT madlib_dl.load_keras_model('arch', %s::json, %s, 'cnn', '8x8x1 -> 10')",
                [net.to_json(), initial])
    cur.execute("SELECT model_id, model_arch::text, model_weights FROM arch")
    model_id, arch_json, weights = cur.fetchone()
    info = arch_info.read(arch_json)
    assert info.input_shape == (8, 8, 1) and info.class_counts == (10,)

    cur.execute("SELECT madlib_dl.generate_model_configs('arch', 'mst', ARRAY[%s], "
                "$${'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'], "
                "'optimizer_params_list': [{'optimizer': ['Adam'], 'lr': [0.003, 0.03, 'log']}]}$$, "
                "$${'batch_size': [32, 64], 'epochs': [1]}$$, 'random', 3, 7)", [model_id])
    cur.execute("SELECT compile_params, fit_params FROM mst ORDER BY mst_key")
    configs = cur.fetchall()
    assert len(configs) == 3

    # Train the first configuration on the packed training buffers, as a worker would.
    compile_params, fit_params = params.parse_compile_params(configs[0][0]), params.parse_fit_params(configs[0][1])
    model = builder.model_from_json(arch_json)
    model.set_weights(serialization.deserialize_weights(bytes(weights), [w.shape for w in model.get_weights()]))
    builder.compile_model(model, compile_params)
    keras.utils.set_random_seed(0)
    for _ in range(4):
        for _, x, y in train:
            model.fit(x, y.astype("float32"), batch_size=fit_params.batch_size, epochs=1, verbose=0)
    x_val = np.concatenate([x for _, x, _ in val])
    y_val = np.concatenate([y for _, _, y in val]).argmax(axis=1)
    accuracy = float((model.predict(x_val, verbose=0).argmax(axis=1) == y_val).mean())
    assert accuracy > 0.8, f"a CNN trained on the packed digits should learn them; validation accuracy {accuracy}"


def test_model_selection_on_digits_finds_a_good_model(cur):
    """The whole product on digits: 4 configurations, 5 iterations over 3 segments with caching; the
    best model's validation accuracy is at least 0.9."""
    cur.execute("DROP TABLE IF EXISTS mst4, mst4_summary, sel, sel_summary, sel_info")
    cur.execute("SELECT madlib_dl.generate_model_configs('arch', 'mst4', ARRAY[1], "
                "$${'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'], "
                "'optimizer_params_list': [{'optimizer': ['Adam'], 'lr': [0.01, 0.003]}]}$$, "
                "$${'batch_size': [32, 64], 'epochs': [1]}$$)")
    cur.execute("SELECT count(*) FROM mst4")
    assert cur.fetchone()[0] == 4
    cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model('train_packed', 'sel', 'mst4', 5, FALSE, "
                "'val_packed', NULL, FALSE, NULL, NULL, use_caching => TRUE)")
    cur.execute("SELECT mst_key, validation_metrics_final, training_loss_final FROM sel_info "
                "ORDER BY validation_metrics_final DESC")
    ranked = cur.fetchall()
    assert len(ranked) == 4
    assert ranked[0][1] >= 0.9, f"best validation accuracy {ranked[0][1]}"
    cur.execute("SELECT count(*), sum(images), count(DISTINCT worker_pid), bool_or(worker_pid = pg_backend_pid()) "
                "FROM madlib_dl.last_fit_hops() WHERE kind = 'train'")
    # background workers: one per CPU for these small models, at most one per segment (training.parallelism)
    assert cur.fetchone() == (4 * 3 * 5, 4 * 1437 * 5, min(3, settings.cpu_count()), False)
