"""Keras 2 / tf.keras 2.x architecture JSON (hand-written here as those versions wrote it: this venv has
Keras 3 only) is translated to JSON Keras 3 builds, the same model: same input shape, same weights in
the same order (MADlib's flat model_weights stay valid). Layers without a translation, Lambda layers and
custom functions are refused, naming the layer; nothing is imported or run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import arch_info, arch_size, builder, keras2, tf_setup

keras = tf_setup.keras()

GLOROT = {"class_name": "GlorotUniform", "config": {"seed": None}}
ZEROS = {"class_name": "Zeros", "config": {}}
ONES = {"class_name": "Ones", "config": {}}
VARIANCE_SCALING = {"class_name": "VarianceScaling",  # Keras 2.1's glorot_uniform
                    "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None}}


def _weighted(**extra):
    """The initializer/regularizer/constraint arguments tf.keras 2 wrote for Dense and Conv layers."""
    return {"activation": "linear", "use_bias": True, "kernel_initializer": GLOROT, "bias_initializer": ZEROS,
            "kernel_regularizer": None, "bias_regularizer": None, "activity_regularizer": None,
            "kernel_constraint": None, "bias_constraint": None, **extra}


def layer(cls, name, **config):
    return {"class_name": cls, "config": {"name": name, "trainable": True, "dtype": "float32", **config}}


def dense(name, units, activation="linear", **extra):
    return layer("Dense", name, units=units, **_weighted(activation=activation, **extra))


def input_layer(shape, name="input_1"):
    return {"class_name": "InputLayer", "config": {"batch_input_shape": [None, *shape], "dtype": "float32",
                                                   "sparse": False, "ragged": False, "name": name}}


def sequential(layers, version="2.9.0"):
    return {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers},
            "keras_version": version, "backend": "tensorflow"}


# tf.keras 2.x: an InputLayer first, batch_input_shape repeated on the first layer
TF2_MLP = sequential([input_layer([4], "dense_input"), dense("dense", 10, "relu", batch_input_shape=[None, 4]),
                      dense("dense_1", 3, "softmax")])
# Keras 2.1.6 (MADlib's documentation): the Sequential's config is the list of layers, no InputLayer
KERAS21_MLP = {"class_name": "Sequential", "keras_version": "2.1.6", "backend": "tensorflow", "config": [
    dense("dense_1", 10, "relu", kernel_initializer=VARIANCE_SCALING, batch_input_shape=[None, 4]),
    dense("dense_2", 10, "relu", kernel_initializer=VARIANCE_SCALING),
    dense("dense_3", 3, "softmax", kernel_initializer=VARIANCE_SCALING)]}
CONV = {"filters": 4, "kernel_size": [3, 3], "strides": [1, 1], "padding": "valid", "data_format": "channels_last",
        "dilation_rate": [1, 1], "groups": 1}
CONV_NO_GROUPS = {k: v for k, v in CONV.items() if k != "groups"}
# A recurrent layer's config as tf.keras 2.x writes it (the LSTM and GRU cases add their own keys).
RNN = {"units": 4, "activation": "tanh", "use_bias": True, "kernel_initializer": GLOROT,
       "recurrent_initializer": {"class_name": "Orthogonal", "config": {"gain": 1.0, "seed": None}},
       "bias_initializer": ZEROS, "kernel_regularizer": None, "recurrent_regularizer": None, "bias_regularizer": None,
       "activity_regularizer": None, "kernel_constraint": None, "recurrent_constraint": None, "bias_constraint": None,
       "dropout": 0.0, "recurrent_dropout": 0.0, "return_sequences": False, "return_state": False,
       "go_backwards": False, "stateful": False, "unroll": False, "time_major": False}
POOL = {"pool_size": [2, 2], "padding": "valid", "strides": [2, 2], "data_format": "channels_last"}
BATCH_NORM = {"axis": [3], "momentum": 0.99, "epsilon": 0.001, "center": True, "scale": True,
              "beta_initializer": ZEROS, "gamma_initializer": ONES, "moving_mean_initializer": ZEROS,
              "moving_variance_initializer": ONES, "beta_regularizer": None, "gamma_regularizer": None,
              "beta_constraint": None, "gamma_constraint": None}
TF2_CNN = sequential([
    input_layer([8, 8, 1], "conv2d_input"),
    layer("Conv2D", "conv2d", batch_input_shape=[None, 8, 8, 1], **CONV, **_weighted(activation="relu")),
    layer("BatchNormalization", "batch_normalization", **BATCH_NORM),
    layer("Activation", "activation", activation="relu"),
    layer("MaxPooling2D", "max_pooling2d", **POOL),
    layer("Dropout", "dropout", rate=0.25, noise_shape=None, seed=None),
    layer("Reshape", "reshape", target_shape=[9, 4]),
    layer("Flatten", "flatten", data_format="channels_last"),
    dense("dense", 10, "softmax", kernel_regularizer={"class_name": "L1L2", "config": {"l1": 0.0, "l2": 0.01}},
          kernel_constraint={"class_name": "MaxNorm", "config": {"max_value": 2, "axis": 0}})])
# Keras 2.2 functional model, with the layer names and inbound nodes of that format
KERAS22_FUNCTIONAL = {"class_name": "Model", "keras_version": "2.2.4", "backend": "tensorflow", "config": {
    "name": "model_1", "input_layers": [["input_1", 0, 0]], "output_layers": [["out", 0, 0]], "layers": [
        {**input_layer([6]), "name": "input_1", "inbound_nodes": []},
        {**dense("a", 5, "relu"), "name": "a", "inbound_nodes": [[["input_1", 0, 0, {}]]]},
        {**dense("b", 5, "tanh"), "name": "b", "inbound_nodes": [[["input_1", 0, 0, {}]]]},
        {**layer("Concatenate", "concatenate", axis=-1), "name": "concatenate",
         "inbound_nodes": [[["a", 0, 0, {}], ["b", 0, 0, {}]]]},
        {**dense("out", 3, "softmax"), "name": "out", "inbound_nodes": [[["concatenate", 0, 0, {}]]]}]}}


def _build(model):
    return builder.model_from_json(json.dumps(model))


@pytest.mark.parametrize("model, input_shape, weight_shapes", [
    (TF2_MLP, (None, 4), [(4, 10), (10,), (10, 3), (3,)]),
    (KERAS21_MLP, (None, 4), [(4, 10), (10,), (10, 10), (10,), (10, 3), (3,)]),
    (TF2_CNN, (None, 8, 8, 1), [(3, 3, 1, 4), (4,), (4,), (4,), (4,), (4,), (36, 10), (10,)]),
    (KERAS22_FUNCTIONAL, (None, 6), [(6, 5), (5,), (6, 5), (5,), (10, 3), (3,)]),
], ids=["tf.keras-2.9-mlp", "keras-2.1.6-mlp", "tf.keras-2.9-cnn", "keras-2.2.4-functional"])
def test_keras2_json_builds_the_same_model_in_keras3(model, input_shape, weight_shapes):
    built = _build(model)
    assert built.input_shape == input_shape
    assert [tuple(w.shape) for w in built.get_weights()] == weight_shapes  # Keras 2's order: MADlib weights fit
    x = np.zeros((2, *input_shape[1:]), dtype=np.float32)
    assert built.predict(x, verbose=0).shape[0] == 2
    translated = keras2.translate(json.dumps(model))
    assert translated.translated and translated.keras_version == model["keras_version"]
    info = arch_info.read(json.dumps(model))
    assert info.input_shape == input_shape[1:] and arch_info.refusal(info) is None
    params = sum(int(np.prod(s)) for s in weight_shapes)
    assert builder.size(json.dumps(model)).params == params  # the memory check counts it before building
    assert arch_size.closed_form(translated.model).params == params


def test_the_translation_is_keras3_json_and_translating_again_changes_nothing():
    translated = keras2.keras3_json(json.dumps(TF2_CNN))
    assert keras2.keras3_json(translated) == translated
    assert keras.models.model_from_json(translated).input_shape == (None, 8, 8, 1)  # Keras 3 alone reads it
    own = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]).to_json()
    assert keras2.keras3_json(own) is own and not keras2.translate(own).translated


def test_what_changed_is_said_in_one_line():
    summary = keras2.translate(json.dumps(KERAS21_MLP)).summary()
    assert summary == ("the JSON was written by Keras 2.1.6 and was translated to Keras 3's form (batch_input_shape "
                       "[null, 4] became an InputLayer)")
    assert "module names added" in keras2.translate(json.dumps(TF2_MLP)).summary()


def test_renamed_and_removed_arguments():
    model = sequential([
        input_layer([5]),
        layer("Embedding", "embedding", input_dim=10, output_dim=2, embeddings_initializer=GLOROT,
              embeddings_regularizer=None, activity_regularizer=None, embeddings_constraint=None, mask_zero=False,
              input_length=5),
        layer("Flatten", "flatten", data_format="channels_last"),
        layer("LeakyReLU", "leaky_re_lu", alpha=0.2),
        dense("dense", 3, kernel_initializer={"class_name": "VarianceScaling", "config": {
            "scale": 2.0, "mode": "fan_in", "distribution": "normal", "seed": None, "dtype": "float32"}})])
    translation = keras2.translate(model)
    built = _build(model)
    assert built.layers[2].negative_slope == pytest.approx(0.2)
    assert built.layers[-1].kernel_initializer.distribution == "truncated_normal"  # Keras 2's 'normal'
    assert translation.notes == ["Embedding input_length dropped (Keras 3 removed it)",
                                 "LeakyReLU alpha became negative_slope",
                                 "VarianceScaling distribution 'normal' became 'truncated_normal' (as Keras 2 did)"]


@pytest.mark.parametrize("cls, config, input_shape", [
    ("Conv1D", {**CONV, "kernel_size": [3], "strides": [1], "dilation_rate": [1], **_weighted()}, [8, 2]),
    ("Conv2DTranspose", {**CONV, "output_padding": None, **_weighted()}, [8, 8, 1]),
    ("DepthwiseConv2D", {**{k: v for k, v in CONV.items() if k != "filters"}, "depth_multiplier": 1, "depthwise_initializer": GLOROT, "bias_initializer": ZEROS,
                         "depthwise_regularizer": None, "bias_regularizer": None, "activity_regularizer": None,
                         "depthwise_constraint": None, "bias_constraint": None, "activation": "relu",
                         "use_bias": True}, [8, 8, 1]),
    ("SeparableConv2D", {**CONV_NO_GROUPS, "depth_multiplier": 1, "depthwise_initializer": GLOROT,
                         "pointwise_initializer": GLOROT, "bias_initializer": ZEROS, "depthwise_regularizer": None,
                         "pointwise_regularizer": None, "bias_regularizer": None, "activity_regularizer": None,
                         "depthwise_constraint": None, "pointwise_constraint": None, "bias_constraint": None,
                         "activation": "relu", "use_bias": True}, [8, 8, 1]),
    ("MaxPooling1D", {"pool_size": [2], "padding": "valid", "strides": [2], "data_format": "channels_last"}, [8, 2]),
    ("AveragePooling2D", POOL, [8, 8, 1]),
    ("GlobalAveragePooling2D", {"data_format": "channels_last", "keepdims": False}, [8, 8, 1]),
    ("GlobalMaxPooling1D", {"data_format": "channels_last"}, [8, 2]),
    ("ZeroPadding2D", {"padding": [[1, 1], [1, 1]], "data_format": "channels_last"}, [8, 8, 1]),
    ("UpSampling2D", {"size": [2, 2], "data_format": "channels_last", "interpolation": "nearest"}, [8, 8, 1]),
    ("Cropping2D", {"cropping": [[1, 1], [1, 1]], "data_format": "channels_last"}, [8, 8, 1]),
    ("Permute", {"dims": [2, 1]}, [8, 2]),
    ("RepeatVector", {"n": 2}, [4]),
    ("ReLU", {"max_value": None, "negative_slope": 0.0, "threshold": 0.0}, [4]),
    ("ELU", {"alpha": 1.0}, [4]),
    ("PReLU", {"alpha_initializer": ZEROS, "alpha_regularizer": None, "alpha_constraint": None,
               "shared_axes": None}, [4]),
    ("Softmax", {"axis": -1}, [4]),
    ("GaussianNoise", {"stddev": 0.1}, [4]),
    ("GaussianDropout", {"rate": 0.1}, [4]),
    ("LayerNormalization", {"axis": [1], "epsilon": 0.001, "center": True, "scale": True, "beta_initializer": ZEROS,
                            "gamma_initializer": ONES, "beta_regularizer": None, "gamma_regularizer": None,
                            "beta_constraint": None, "gamma_constraint": None}, [4]),
    ("BatchNormalization", {**BATCH_NORM, "axis": -1, "renorm": False, "virtual_batch_size": None,
                            "adjustment": None}, [4]),
    ("LSTM", {**RNN, "recurrent_activation": "sigmoid", "unit_forget_bias": True, "implementation": 2}, [3, 2]),
    ("GRU", {**RNN, "recurrent_activation": "sigmoid", "implementation": 1, "reset_after": True}, [3, 2]),
    ("SimpleRNN", RNN, [3, 2]),
])
def test_each_translated_layer_builds_from_a_tf_keras2_config(cls, config, input_shape):
    model = sequential([input_layer(input_shape), layer(cls, "probe", **config), layer("Flatten", "flatten"),
                        dense("out", 3)])
    assert _build(model).get_layer("probe").__class__.__name__ == cls


def test_every_translated_layer_is_a_keras3_layer():
    assert all(hasattr(keras.layers, name) for name in keras2.LAYERS)


def _refused(model, message):
    for read in (keras2.translate, arch_info.read, lambda m: builder.model_from_json(json.dumps(m))):
        with pytest.raises(InvalidArgument, match=message):
            read(model)


def test_a_layer_without_translation_is_refused_naming_it():
    conv_lstm = layer("ConvLSTM2D", "conv_lstm_1", filters=4, kernel_size=[2, 2])
    _refused(sequential([input_layer([3, 4, 4, 1]), conv_lstm, dense("d", 3)]),
             r"^model_arch: layer 'conv_lstm_1' \(ConvLSTM2D\) in this Keras 2.9.0 JSON has no Keras 3 translation "
             r"here; translated layers: Activation, ")


def test_a_time_major_rnn_is_refused_naming_the_argument():
    lstm = layer("LSTM", "lstm_1", **{**RNN, "time_major": True})
    _refused(sequential([input_layer([3, 2]), lstm, dense("d", 3)]), r"time_major=True, which Keras 3 removed")


def test_lambda_layers_and_custom_functions_are_refused_never_run():
    code = ["4wEAAAAAAAAAAQAAAAIAAABDAAAAcwgAAAB8AGQBFABTACkC", None, None]  # Keras 2's marshalled lambda
    lam = layer("Lambda", "lambda", function=code, function_type="lambda", module="__main__", output_shape=None,
                output_shape_type="raw", output_shape_module=None, arguments={})
    _refused(sequential([input_layer([4]), lam, dense("d", 3)]), r"Lambda")
    inner = {"class_name": "Sequential", "config": {"name": "inner", "layers": [input_layer([4]), lam]}}
    nested = sequential([input_layer([4]), inner, dense("d", 3)])
    _refused(nested, r"Lambda")
    custom = dense("d", 3, activation={"class_name": "function", "config": "os.system"})
    _refused(sequential([input_layer([4]), custom]), r"layer 'd' \(Dense\) .* activation that is not a name")
    initializer = dense("d", 3, kernel_initializer={"class_name": "MyInit", "config": {}})
    _refused(sequential([input_layer([4]), initializer]), r"layer 'd' \(Dense\) .* kernel_initializer='MyInit'")
    removed = layer("BatchNormalization", "bn", **{**BATCH_NORM, "axis": -1, "virtual_batch_size": 2})
    _refused(sequential([input_layer([4]), removed, dense("d", 3)]), r"virtual_batch_size=2, which Keras 3 removed")


def test_keras1_json_is_left_to_arch_info_and_malformed_json_to_the_usual_checks():
    old = {**sequential([input_layer([4]), dense("d", 3)]), "keras_version": "1.2.2"}
    assert not keras2.translate(old).translated
    assert "Keras 1.2.2" in arch_info.refusal(arch_info.read(old))
    assert not keras2.translate("not json").translated
    assert not keras2.translate('{"class_name": "Sequential"}').translated


def test_translating_imports_neither_keras_nor_tensorflow():
    code = ("import sys, json; from madlib_dl.keras_runtime import keras2; "
            "keras2.keras3_json(sys.stdin.read()); print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(TF2_CNN), capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "False"]
