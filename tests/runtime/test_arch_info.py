"""arch_info reads input shapes and class counts from the JSON real Keras models write, and refuses
malformed JSON with a message naming model_arch."""

import json
import subprocess
import sys

import pytest

from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import arch_info, tf_setup

keras = tf_setup.keras()
L = keras.layers


def _iris_mlp():
    return keras.Sequential([keras.Input((4,)), L.Dense(10, activation="relu"), L.Dense(3, activation="softmax")])


def _conv_net():
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, activation="relu")(inputs)
    x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(10, activation="softmax")(x))


def _functional_two_io():
    a, b = keras.Input((4,), name="a"), keras.Input((2, 3), name="b")
    x = L.Concatenate()([a, L.Flatten()(b)])
    return keras.Model([a, b], [L.Dense(3, name="species")(x), L.Dense(2, name="colour")(x)])


# ---- models Keras writes today ---------------------------------------------------------------------

def test_sequential_with_input_layer():
    info = arch_info.read(_iris_mlp().to_json())
    assert info.input_shapes == ((4,),) and info.input_shape == (4,)
    assert info.class_counts == (3,) and info.num_classes == 3
    assert info.keras_version is None


def test_sequential_built_without_input_layer_uses_build_input_shape():
    model = keras.Sequential([L.Dense(5), L.Dense(7)])
    model.build((None, 6))
    config = json.loads(model.to_json())
    assert arch_info.read(config).input_shape == (6,)
    del config["config"]["layers"][0]  # Keras writes an InputLayer too; without it build_input_shape remains
    assert config["config"]["layers"][0]["class_name"] == "Dense"
    assert arch_info.read(config).input_shape == (6,)


def test_functional_conv_net_on_8x8x1():
    info = arch_info.read(_conv_net().to_json())
    assert info.input_shapes == ((8, 8, 1),) and info.class_counts == (10,)


def test_functional_several_inputs_and_outputs_in_order():
    info = arch_info.read(_functional_two_io().to_json())
    assert info.input_shapes == ((4,), (2, 3)) and info.class_counts == (3, 2)


def test_functional_dict_inputs():
    a, b = keras.Input((4,), name="a"), keras.Input((2,), name="b")
    model = keras.Model({"a": a, "b": b}, L.Dense(5)(L.Concatenate()([a, b])))
    info = arch_info.read(model.to_json())
    assert (info.input_shapes, info.class_counts) == (((4,), (2,)), (5,))


def test_unknown_sizes_stay_none():
    model = keras.Sequential([keras.Input((None, 3)), L.GlobalAveragePooling1D(), L.Dense(4)])
    assert arch_info.read(model.to_json()).input_shape == (None, 3)


def test_a_dense_followed_by_shape_keeping_layers_gives_its_units():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3), L.Dropout(0.1), L.Activation("softmax")])
    assert arch_info.read(model.to_json()).num_classes == 3
    inputs = keras.Input((4,))
    functional = keras.Model(inputs, L.Softmax()(L.Dense(6)(inputs)))
    assert arch_info.read(functional.to_json()).num_classes == 6


def test_nested_base_model_transfer_learning():
    base = keras.Sequential([keras.Input((8,)), L.Dense(5)])
    assert arch_info.read(keras.Sequential([base, L.Dense(2)]).to_json()).input_shape == (8,)
    head = keras.Sequential([keras.Input((5,)), L.Dense(9)])
    outer = keras.Sequential([keras.Input((8,)), L.Dense(5), head])
    assert arch_info.read(outer.to_json()).num_classes == 9


def test_class_names_cover_nested_layers():
    inner = keras.Sequential([keras.Input((4,)), L.Lambda(lambda t: t * 2)])
    info = arch_info.read(keras.Sequential([inner, L.Dense(3)]).to_json())
    assert {"Sequential", "InputLayer", "Lambda", "Dense", "GlorotUniform"} <= info.class_names
    assert "Lambda" not in arch_info.read(_iris_mlp().to_json()).class_names


def test_reading_never_imports_tensorflow():
    code = ("import sys; from madlib_dl.keras_runtime import arch_info; "
            "arch_info.read(sys.stdin.read()); print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], input=_conv_net().to_json(), capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---- Keras 2 style JSON (hand-written: this venv has Keras 3 only) ----------------------------------

KERAS2_DENSE = {"class_name": "Dense", "config": {"name": "dense", "units": 10, "batch_input_shape": [None, 4]}}
KERAS2_OUT = {"class_name": "Dense", "config": {"name": "dense_1", "units": 3, "activation": "softmax"}}


def test_keras2_sequential_with_batch_input_shape_on_first_layer():
    model = {"class_name": "Sequential", "keras_version": "2.10.0",
             "config": {"name": "sequential", "layers": [KERAS2_DENSE, KERAS2_OUT]}}
    info = arch_info.read(model)
    assert (info.input_shapes, info.class_counts, info.keras_version) == (((4,),), (3,), "2.10.0")


def test_keras21_sequential_whose_config_is_the_layer_list():
    model = {"class_name": "Sequential", "keras_version": "2.1.6", "config": [KERAS2_DENSE, KERAS2_OUT]}
    assert arch_info.read(json.dumps(model)).input_shape == (4,)


def test_keras2_functional():
    model = {"class_name": "Model", "keras_version": "2.2.4", "config": {
        "name": "model", "input_layers": [["input_1", 0, 0]], "output_layers": [["out", 0, 0]],
        "layers": [
            {"class_name": "InputLayer", "name": "input_1", "inbound_nodes": [],
             "config": {"name": "input_1", "batch_input_shape": [None, 28, 28, 1]}},
            {"class_name": "Dense", "name": "out", "inbound_nodes": [[["input_1", 0, 0, {}]]],
             "config": {"name": "out", "units": 10}}]}}
    assert arch_info.read(model).input_shape == (28, 28, 1) and arch_info.read(model).num_classes == 10


# ---- refused -------------------------------------------------------------------------------------

NOT_MODEL = "model_arch: not a Keras model JSON"


@pytest.mark.parametrize("text", [None, "", "{", "[1, 2]", "42", '"Sequential"',
                                  '{"class_name": "Dense", "config": {}}', '{"class_name": "Sequential"}',
                                  '{"class_name": "Sequential", "config": 3}',
                                  '{"class_name": "Sequential", "config": {"layers": [1]}}',
                                  '{"class_name": "Sequential", "config": {"name": "no layers"}}'])
def test_not_a_model_json(text):
    with pytest.raises(InvalidArgument, match=NOT_MODEL):
        arch_info.read(text)


def test_no_input_shape():
    unbuilt = keras.Sequential([L.Dense(10), L.Dense(3)])
    with pytest.raises(InvalidArgument, match=r"^model_arch: cannot find the input shape; the first layer must "
                                              r"define one \(e\.g\. keras\.Input\(shape=\(4,\)\)\)$"):
        arch_info.read(unbuilt.to_json())
    with pytest.raises(InvalidArgument, match="cannot find the input shape"):
        arch_info.read('{"class_name": "Sequential", "config": {"layers": []}}')


def test_functional_input_naming_a_missing_layer():
    config = json.loads(_conv_net().to_json())
    config["config"]["input_layers"] = ["nowhere", 0, 0]
    with pytest.raises(InvalidArgument, match="cannot find the input shape"):
        arch_info.read(config)


@pytest.mark.parametrize("shape", [[None, 0], [None, -3], [None, 2.5], [None, "4"], [], "4", [None, True]])
def test_bad_input_shape_values(shape):
    config = json.loads(_iris_mlp().to_json())
    config["config"]["layers"][0]["config"]["batch_shape"] = shape
    with pytest.raises(InvalidArgument, match=r"model_arch: input shape .* is not a list of positive sizes"):
        arch_info.read(config)


def test_no_dense_last_layer():
    message = r"^model_arch: cannot find the number of classes: the last layer must be a Dense layer with units$"
    flat = keras.Sequential([keras.Input((4, 2)), L.Flatten()])
    with pytest.raises(InvalidArgument, match=message):
        arch_info.read(flat.to_json())
    softmax_only = keras.Sequential([keras.Input((4,)), L.Softmax()])  # looks back to the InputLayer: no units
    with pytest.raises(InvalidArgument, match=message):
        arch_info.read(softmax_only.to_json())
    config = json.loads(_iris_mlp().to_json())
    config["config"]["layers"][-1]["config"]["units"] = "3"
    with pytest.raises(InvalidArgument, match=message):
        arch_info.read(config)


def test_a_flatten_before_the_end_is_not_looked_through():
    # Dense(5) -> Flatten changes nothing about classes in theory, but Flatten is not shape-keeping in
    # general, so the count is not guessed.
    model = keras.Sequential([keras.Input((4,)), L.Dense(5), L.Flatten()])
    with pytest.raises(InvalidArgument, match="cannot find the number of classes"):
        arch_info.read(model.to_json())


def test_a_layer_graph_that_loops_is_refused_not_a_crash():
    inputs = keras.Input((4,))
    config = json.loads(keras.Model(inputs, L.Softmax(name="s")(L.Dense(3)(inputs))).to_json())
    softmax = next(layer for layer in config["config"]["layers"] if layer["name"] == "s")
    softmax["inbound_nodes"][0]["args"][0]["config"]["keras_history"] = ["s", 0, 0]  # fed by itself
    with pytest.raises(InvalidArgument, match="model_arch: not a Keras model JSON: its layers nest or loop"):
        arch_info.read(config)


def test_deeply_nested_json_is_refused():
    with pytest.raises(InvalidArgument, match=NOT_MODEL):
        arch_info.read("[" * 100000 + "]" * 100000)
