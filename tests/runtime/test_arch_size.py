"""arch_size's closed forms count what Keras' count_params() counts, for the common layers, through
Sequential and Functional graphs; builder.symbolic_size counts any model with Keras itself without
allocating it; builder.size uses the first and falls back to the second."""

import json
import warnings

import pytest

from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import arch_size, builder, tf_setup

keras = tf_setup.keras()
L = keras.layers


def seq(shape, *layers):
    return keras.Sequential([keras.Input(shape), *layers])


def _functional():
    a, b = keras.Input((4,), name="a"), keras.Input((2, 3), name="b")
    shared = L.Dense(4)
    x = L.Concatenate()([a, L.Flatten()(b)])
    y = shared(shared(L.Dense(4)(x)))  # one layer called twice: its weights counted once
    z = L.Add()([y, L.Dense(4)(a)])
    z = L.Maximum()([L.Multiply()([z, L.Dense(1)(a)]), z])
    return keras.Model([a, b], [L.Dense(3, name="s")(z), L.Dense(2, name="c")(x)])


def _nested():
    base = seq((8, 8, 1), L.Conv2D(3, 3), L.Flatten())
    inputs = keras.Input((8, 8, 1))
    return keras.Sequential([keras.Model(inputs, L.Dense(5)(base(inputs))), L.Dense(2)])


def _models():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LayerNormalization(rms_scaling=True) is deprecated, still written
        return {
            "dense": seq((4,), L.Dense(10), L.Dense(3, use_bias=False)),
            "dense_on_3d": seq((5, 4), L.Dense(7), L.Flatten(), L.Dense(2)),
            "lora_float64": seq((4,), L.Dense(10, lora_rank=2), L.Dense(3, dtype="float64")),
            "conv2d": seq((8, 8, 1), L.Conv2D(4, 3), L.MaxPooling2D(), L.Conv2D(6, (2, 3), strides=2, padding="same"),
                          L.Flatten(), L.Dense(3)),
            "conv2d_channels_first": seq((2, 9, 9), L.Conv2D(4, 3, data_format="channels_first", dilation_rate=2),
                                         L.AveragePooling2D(2, data_format="channels_first", padding="same"),
                                         L.GlobalAveragePooling2D(data_format="channels_first"), L.Dense(3)),
            "conv2d_groups": seq((8, 8, 4), L.Conv2D(8, 3, groups=2), L.GlobalMaxPooling2D(), L.Dense(3)),
            "conv1d": seq((20, 3), L.Conv1D(5, 3, padding="causal"), L.Conv1D(4, 2, strides=3),
                          L.MaxPooling1D(3, strides=2), L.GlobalAveragePooling1D(), L.Dense(2)),
            "conv3d": seq((6, 6, 6, 2), L.Conv3D(3, 2), L.MaxPooling3D(), L.GlobalMaxPooling3D(keepdims=True),
                          L.Flatten(), L.Dense(2)),
            "depthwise_separable": seq((8, 8, 3), L.DepthwiseConv2D(3, depth_multiplier=2),
                                       L.SeparableConv2D(5, 3, depth_multiplier=3, padding="same"), L.Flatten(),
                                       L.Dense(2)),
            "depthwise_separable_1d": seq((10, 3), L.DepthwiseConv1D(3), L.SeparableConv1D(4, 2), L.Flatten(),
                                          L.Dense(2)),
            "transposed": seq((5, 5, 3), L.Conv2DTranspose(4, 3, strides=2), L.Conv2DTranspose(2, 2, strides=2, padding="same"),
                              L.Conv2DTranspose(2, 3, strides=2, padding="same", output_padding=1), L.Flatten(),
                              L.Dense(2)),
            "transposed_1d_3d": seq((4, 4, 4, 1), L.Conv3DTranspose(2, 2, strides=2), L.Flatten(), L.Reshape((-1, 2)),
                                    L.Conv1DTranspose(3, 3), L.Flatten(), L.Dense(2)),
            "embedding_lstm": seq((7,), L.Embedding(100, 8), L.LSTM(5), L.Dense(2)),
            "recurrent": seq((6, 3), L.SimpleRNN(4, return_sequences=True), L.GRU(5, return_sequences=True),
                             L.GRU(3, reset_after=False, return_sequences=True), L.LSTM(2, use_bias=False), L.Dense(2)),
            "bidirectional": seq((6, 3), L.Bidirectional(L.LSTM(4, return_sequences=True)),
                                 L.Bidirectional(L.GRU(3), merge_mode="sum"), L.Dense(2)),
            "bidirectional_backward_layer": seq((6, 3), L.Bidirectional(L.LSTM(4), backward_layer=L.LSTM(2, go_backwards=True)),
                                                L.Dense(2)),
            "time_distributed": seq((5, 8, 8, 1), L.TimeDistributed(L.Conv2D(2, 3)), L.TimeDistributed(L.Flatten()),
                                    L.LSTM(3), L.Dense(2)),
            "normalizations": seq((6, 4), L.BatchNormalization(), L.LayerNormalization(),
                                  L.BatchNormalization(axis=1, center=False), L.LayerNormalization(axis=[1, 2], scale=False),
                                  L.LayerNormalization(rms_scaling=True), L.GroupNormalization(groups=2),
                                  L.UnitNormalization(), L.Flatten(), L.Dense(2)),
            "normalization_layer": seq((6, 4), L.Normalization(), L.Normalization(mean=1.0, variance=2.0), L.Flatten(),
                                       L.Dense(2)),
            "prelu": seq((6, 4), L.PReLU(), L.PReLU(shared_axes=[1]), L.Flatten(), L.Dense(2)),
            "shape_only": seq((4, 6), L.Permute((2, 1)), L.Reshape((3, 8)), L.Flatten(), L.RepeatVector(3), L.Flatten(),
                              L.Dropout(0.2), L.Activation("relu"), L.ReLU(), L.LeakyReLU(), L.ELU(), L.Softmax(),
                              L.GaussianNoise(0.1), L.GaussianDropout(0.1), L.AlphaDropout(0.1),
                              L.ActivityRegularization(), L.Identity(), L.Masking(), L.Rescaling(0.5), L.Dense(2)),
            "padding_cropping_upsampling": seq((8, 8, 2), L.ZeroPadding2D(2), L.Cropping2D(((1, 0), (2, 1))),
                                               L.UpSampling2D((2, 3)), L.SpatialDropout2D(0.1), L.Flatten(), L.Dense(2)),
            "padding_1d_3d": seq((8, 2), L.ZeroPadding1D((1, 2)), L.Cropping1D(1), L.UpSampling1D(3), L.Flatten(),
                                 L.Reshape((2, 3, -1, 1)), L.ZeroPadding3D(1), L.Cropping3D(1), L.UpSampling3D(2),
                                 L.Flatten(), L.Dense(2)),
            "resizing": seq((10, 12, 3), L.Resizing(5, 6), L.CenterCrop(4, 4), L.Flatten(), L.Dense(2)),
            "functional": _functional(),
            "nested": _nested(),
        }


MODELS = _models()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_closed_form_counts_what_keras_counts(name):
    model = MODELS[name]
    size = arch_size.closed_form(model.to_json())
    assert size.params == model.count_params()
    assert size.weight_bytes == sum(w.numpy().nbytes for w in model.weights)


def test_a_compiled_models_json_counts_its_optimizer_slots_in_memory():
    model = seq((4,), L.Dense(10), L.Dense(3))
    plain = arch_size.closed_form(model.to_json())
    model.compile(optimizer="adam", loss="mse")
    compiled = arch_size.closed_form(model.to_json())
    assert compiled.params == plain.params
    assert compiled.build_bytes == plain.build_bytes + arch_size.OPTIMIZER_SLOTS * plain.weight_bytes


@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")
@pytest.mark.parametrize("name", ["dense", "conv2d", "functional", "nested", "embedding_lstm", "normalizations"])
def test_symbolic_size_counts_at_least_what_keras_builds(name):
    model = MODELS[name]
    size = builder.symbolic_size(model.to_json())
    # every variable Keras makes: the weights, and a seed generator's few integers for random layers
    assert model.count_params() <= size.params <= model.count_params() + 8


def test_unknown_layers_are_counted_by_keras_without_building_them():
    query, value = keras.Input((5, 8)), keras.Input((5, 8))
    attention = keras.Model([query, value], L.Dense(2)(L.Flatten()(L.MultiHeadAttention(2, 4)(query, value))))
    einsum = seq((4,), L.EinsumDense("ab,bc->ac", output_shape=5, bias_axes="c"), L.Dense(2))
    for model in (attention, einsum):
        with pytest.raises(arch_size.NotClosedForm):
            arch_size.closed_form(model.to_json())
        assert builder.size(model.to_json()).params == model.count_params()


def _vm_hwm() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) << 10 for line in status if line.startswith("VmHWM:"))


def _huge(*layers, inputs=1000) -> str:
    return json.dumps({"module": "keras", "class_name": "Sequential", "config": {"name": "huge", "layers": [
        {"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [None, inputs]}},
        *({"module": "keras.layers", "class_name": c, "config": config} for c, config in layers)]}})


def test_counting_a_40_gb_model_allocates_nothing():
    huge = _huge(("Dense", {"units": 10_000_000}), ("Dense", {"units": 3}))
    einsum = _huge(("EinsumDense", {"equation": "ab,bc->ac", "output_shape": 10_000_000}), ("Dense", {"units": 3}))
    constants = _huge(("Normalization", {"mean": 0.5, "variance": 2.0}), ("Reshape", {"target_shape": [500_000_000, 1]}),
                      ("GlobalAveragePooling1D", {}), ("Dense", {"units": 3}), inputs=500_000_000)
    before = _vm_hwm()
    closed = arch_size.closed_form(huge)
    symbolic = builder.symbolic_size(huge)
    unknown = builder.size(einsum)  # no closed form: Keras counts it in a graph, variables deferred
    graph_constants = builder.symbolic_size(constants)
    grown = _vm_hwm() - before
    assert closed == symbolic == arch_size.ArchSize(10_040_000_003, 40_160_000_012)
    assert unknown.params == 10_000_000_000 + 30_000_003
    assert arch_size.closed_form(constants).other_bytes == 16 * 500_000_000
    assert graph_constants.params == 6  # the broadcast constants are graph nodes: never made
    assert grown < 100 << 20, f"counting grew this process's peak memory by {grown >> 20} MiB"


def test_keras_works_as_before_after_a_symbolic_count():
    builder.symbolic_size(MODELS["dense"].to_json())
    model = builder.model_from_json(MODELS["dense"].to_json())
    assert [w.shape for w in model.get_weights()] == [(4, 10), (10,), (10, 3)]
    from keras.src.backend.common import global_state
    assert not global_state.get_global_attribute("uninitialized_variables")


def test_symbolic_size_refuses_what_keras_cannot_build_naming_the_argument():
    with pytest.raises(InvalidArgument, match=r"^model_id 3: not a loadable Keras model JSON: "):
        builder.symbolic_size(_huge(("NoSuchLayer", {"units": 3})), "model_id 3")
