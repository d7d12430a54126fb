"""MADlib's keras_model_arch_table.sql_in (and the Keras 2.1.6 architectures of its iris setup), on
madlib_dl: the table load_keras_model creates (column types, ids from 1, the JSON readable with JSON
operators, weights NULL unless given, name and description), deletion by id, the table dropped with its
last model, and the refusals (unknown id, empty or missing table, a table without model_id).

Deliberate differences (docs/model-architectures.md, "Checks"): MADlib stores any JSON and any bytes;
madlib_dl refuses JSON that is not a Keras model and weights whose length does not match the model, so
these tests load real models (and assert those refusals)."""

from __future__ import annotations

import json

import pytest

from compat import S, columns, exists, fails, mlp, mlp_json, row, scalar, weights_bytes

LOAD = f"SELECT {S}load_keras_model(%s, %s::json"
DELETE = f"SELECT {S}delete_keras_model(%s, %s)"


def _keras21_dense(name, units, activation, trainable=True, **extra):
    return {"class_name": "Dense", "config": {
        "name": name, "units": units, "activation": activation, "trainable": trainable, "use_bias": True,
        "kernel_initializer": {"class_name": "VarianceScaling",
                               "config": {"distribution": "uniform", "scale": 1.0, "seed": 0, "mode": "fan_avg"}},
        "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
        "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None,
        "bias_constraint": None, **extra}}


def keras21_json(trainable=True) -> str:
    """A Sequential in Keras 2.1.6's format, as MADlib's documentation and iris setup keep them: the config
    is the bare layer list and the first layer carries batch_input_shape."""
    return json.dumps({"class_name": "Sequential", "keras_version": "2.1.6", "backend": "tensorflow", "config": [
        _keras21_dense("dense_1", 10, "relu", trainable, batch_input_shape=[None, 4], dtype="float32"),
        _keras21_dense("dense_2", 10, "relu", trainable),
        _keras21_dense("dense_3", 3, "softmax", trainable)]})


def test_table_layout_and_ids(db, cur):
    cur.execute(LOAD + ")", ["arch_a", mlp_json()])
    types = columns(cur, "arch_a")
    assert types["model_id"] == "integer" and types["model_arch"] == "json" and types["model_weights"] == "bytea"
    assert types["name"] == "text" and types["description"] == "text"
    assert row(cur, "SELECT model_id, model_weights FROM arch_a") == {"model_id": 1, "model_weights": None}
    # the architecture is JSON that SQL reads
    assert scalar(cur, "SELECT model_arch->>'class_name' FROM arch_a") == "Sequential"
    assert scalar(cur, "SELECT model_arch->'config'->'layers'->1->'config'->>'units' FROM arch_a") == "8"
    cur.execute(LOAD + ")", ["arch_a", mlp_json(hidden=5)])
    cur.execute(LOAD + ")", ["arch_a", mlp_json(hidden=7)])
    assert scalar(cur, "SELECT array_agg(model_id ORDER BY model_id) FROM arch_a") == [1, 2, 3]
    assert scalar(cur, "SELECT model_arch->'config'->'layers'->1->'config'->>'units' FROM arch_a "
                       "WHERE model_id = 3") == "7"


def test_delete_and_drop_with_the_last_model(db, cur):
    for hidden in (4, 5, 6):
        cur.execute(LOAD + ")", ["arch_d", mlp_json(hidden=hidden)])
    cur.execute(DELETE, ["arch_d", 2])
    cur.execute(DELETE, ["arch_d", 3])
    assert scalar(cur, "SELECT array_agg(model_id) FROM arch_d") == [1]
    fails(cur, DELETE, ["arch_d", 3])  # already deleted
    cur.execute(DELETE, ["arch_d", 1])
    assert not exists(cur, "arch_d")  # the last model's deletion drops the table
    fails(cur, DELETE, ["arch_d", 3])  # no table


def test_empty_and_invalid_tables(db, cur):
    cur.execute(LOAD + ")", ["arch_e", mlp_json()])
    cur.execute("DELETE FROM arch_e")
    fails(cur, DELETE, ["arch_e", 3])  # empty table
    cur.execute("DROP TABLE arch_e")
    cur.execute(LOAD + ")", ["arch_e", mlp_json()])
    cur.execute("ALTER TABLE arch_e DROP COLUMN model_id")
    fails(cur, DELETE, ["arch_e", 1], match="model_id")
    fails(cur, LOAD + ")", ["arch_e", mlp_json()], match="model_id")
    assert scalar(cur, "SELECT count(*) FROM arch_e") == 1


def test_weights_name_and_description(db, cur):
    model = mlp()
    cur.execute(LOAD + ", %s)", ["arch_w", model.to_json(), weights_bytes(model)])
    cur.execute(LOAD + ", NULL, 'my name', 'my desc')", ["arch_w", mlp_json()])
    first = row(cur, "SELECT * FROM arch_w WHERE model_id = 1")
    assert bytes(first["model_weights"]) == weights_bytes(model)
    assert first["name"] is None and first["description"] is None
    second = row(cur, "SELECT * FROM arch_w WHERE model_id = 2")
    assert second["model_weights"] is None and second["name"] == "my name" and second["description"] == "my desc"


@pytest.mark.parametrize("arch, weights", [
    ('{"a": 1, "b": 2, "c": [4, 5, 6]}', None),  # JSON that is not a Keras model
    ('{"config": [1, 2, 3]}', None),
    (None, b"dummy weights"),  # bytes that are not this model's weights
], ids=["not_keras_json", "config_list_of_numbers", "dummy_weights"])
def test_deliberate_difference_non_models_are_refused(db, cur, arch, weights):
    """MADlib stores these; madlib_dl checks the architecture and the weights' length before writing."""
    fails(cur, LOAD + ", %s)", ["arch_bad", arch or mlp_json(), weights])
    assert not exists(cur, "arch_bad")


def test_keras_2_1_6_architecture(db, cur):
    """MADlib's iris architectures are Keras 2.1.6 JSON; madlib_dl stores Keras 3's translation with a
    NOTICE (docs/model-architectures.md), keeping trainable false, and trains it."""
    cur.execute(LOAD + ")", ["arch_k2", keras21_json()])
    cur.execute(LOAD + ")", ["arch_k2", keras21_json(trainable=False)])
    assert any("2.1.6" in n for n in cur.connection.notices), cur.connection.notices
    layers = scalar(cur, "SELECT model_arch->'config'->'layers' FROM arch_k2 WHERE model_id = 2")
    assert layers[0]["class_name"] == "InputLayer"
    assert [layer["config"]["trainable"] for layer in layers[1:]] == [False, False, False]
    cur.execute("CREATE TABLE flowers (id INTEGER, x REAL[], label INTEGER)")
    cur.execute("INSERT INTO flowers SELECT i, ARRAY[i % 3, i % 5, i % 7, 1], i % 3 FROM generate_series(1, 24) i")
    cur.execute(f"SELECT {S}training_preprocessor_dl('flowers', 'flowers_packed', 'label', 'x', NULL, 1.0, NULL, "
                "'2')")
    cur.execute(f"SELECT {S}madlib_keras_fit('flowers_packed', 'flowers_model', 'arch_k2', 1, "
                "$$loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']$$, "
                "'batch_size=4, epochs=1', 1)")
    assert scalar(cur, "SELECT training_loss_final >= 0 FROM flowers_model_summary")
