"""arch_size without Keras: the shapes a JSON describes, the traps in it (a build_config that lies, a
compiled model, a loop), and the check's errors."""

import json

import pytest

from madlib_dl import settings
from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import arch_size
from madlib_dl.keras_runtime.arch_size import ArchSize, NotClosedForm


def layer(class_name, build_config=None, **config):
    found = {"module": "keras.layers", "class_name": class_name, "config": config}
    if build_config is not None:
        found["build_config"] = {"input_shape": build_config}
    return found


def sequential(*layers, inputs=(4,), **extra):
    return {"module": "keras", "class_name": "Sequential", **extra, "config": {"name": "s", "layers": [
        layer("InputLayer", batch_shape=[None, *inputs]), *layers]}}


def test_dense_weights_and_bytes():
    size = arch_size.closed_form(json.dumps(sequential(layer("Dense", units=10), layer("Dense", units=3))))
    assert size == ArchSize(4 * 10 + 10 + 10 * 3 + 3, 4 * 83)
    assert size.build_bytes == arch_size.BUILD_COPIES * 4 * 83


def test_a_build_config_that_lies_counts_the_larger_build():
    # Keras builds the layer from build_config when it deserializes it, before any shape flows in
    lying = sequential(layer("Dense", units=4, build_config=[None, 1_000_000]), layer("Dense", units=3))
    assert arch_size.closed_form(lying).params == 1_000_000 * 4 + 4 + 4 * 3 + 3


def test_a_layer_never_called_is_counted_from_its_build_config():
    model = {"module": "keras", "class_name": "Functional", "config": {
        "name": "f", "input_layers": [["in", 0, 0]], "output_layers": [["out", 0, 0]], "layers": [
            {**layer("InputLayer", batch_shape=[None, 4]), "name": "in", "inbound_nodes": []},
            {**layer("Dense", units=3), "name": "out", "inbound_nodes": [{"args": [
                {"class_name": "__keras_tensor__", "config": {"keras_history": ["in", 0, 0]}}], "kwargs": {}}]},
            {**layer("Dense", units=10, build_config=[None, 100]), "name": "idle", "inbound_nodes": []}]}}
    assert arch_size.closed_form(model).params == (4 * 3 + 3) + (100 * 10 + 10)


def test_a_loop_in_the_graph_is_refused():
    def node(source):
        return [{"args": [{"class_name": "__keras_tensor__", "config": {"keras_history": [source, 0, 0]}}], "kwargs": {}}]
    model = {"module": "keras", "class_name": "Functional", "config": {
        "name": "f", "input_layers": [["in", 0, 0]], "output_layers": [["b", 0, 0]], "layers": [
            {**layer("InputLayer", batch_shape=[None, 4]), "name": "in", "inbound_nodes": []},
            {**layer("Dense", units=3), "name": "a", "inbound_nodes": node("b")},
            {**layer("Dense", units=3), "name": "b", "inbound_nodes": node("a")}]}}
    with pytest.raises(InvalidArgument, match="loop"):
        arch_size.closed_form(model)


@pytest.mark.parametrize("model", [
    sequential(layer("MultiHeadAttention", num_heads=2, key_dim=4)),            # a layer without a closed form
    sequential(layer("Dense", units=3, dtype="int8_from_float32")),             # a quantized policy
    sequential(layer("Dense", units=3, quantization_config={"mode": "int8"})),
    sequential(layer("Dense", units=3), inputs=(None,)),                        # a size that must be known
    {"module": "keras", "class_name": "Sequential", "config": {"name": "s", "layers": [layer("Dense", units=3)]}},
    sequential(layer("LSTM", units=3, stateful=True), inputs=(2, 3)),
    "not json",
])
def test_what_the_closed_forms_do_not_cover_is_left_to_keras(model):
    with pytest.raises(NotClosedForm):
        arch_size.closed_form(model if isinstance(model, str) else json.dumps(model))


def test_constants_made_while_building_count_as_memory():
    model = sequential(layer("Normalization", mean=0.5, variance=2.0), layer("Reshape", target_shape=[1000, 1]),
                       layer("GlobalAveragePooling1D"), layer("Dense", units=3), inputs=(1000,))
    size = arch_size.closed_form(model)
    assert size.params == 1 * 3 + 3 and size.other_bytes == 16 * 1000


def test_a_huge_model_is_counted_in_microseconds_without_allocating():
    size = arch_size.closed_form(sequential(layer("Dense", units=10**12), layer("Dense", units=3)))
    assert size.params == 4 * 10**12 + 10**12 + 3 * 10**12 + 3


def test_check_names_the_argument_the_numbers_and_the_cap_to_raise():
    size = ArchSize(24_000_003, 96_000_012)
    with pytest.raises(InvalidArgument) as refused:
        arch_size.check(size, "model_arch", cap_mib=16, budget_mib=1 << 20)
    message, hint = str(refused.value), refused.value.hint
    assert message.startswith("model_arch: the model has 24,000,003 parameters (91.6 MiB of weights); building it "
                              "takes about 274.7 MiB, over the 16 MiB that madlib_dl.max_model_memory_mb allows")
    assert hint == ("Use a smaller model, or ask a superuser to raise the cap (ALTER SYSTEM SET "
                    "madlib_dl.max_model_memory_mb = 275, then SELECT pg_reload_conf()).")


def test_check_against_the_budget_names_the_setting_the_caller_can_change():
    size = ArchSize(1_000_000, 4_000_000)
    arch_size.check(size, "model_id 3", cap_mib=100, budget_mib=None)  # 11.4 MiB: under the cap, budget unchecked
    with pytest.raises(InvalidArgument) as refused:
        arch_size.check(size, "model_id 3", cap_mib=100, budget_mib=8)
    assert str(refused.value).endswith(f"over the memory budget {settings.MEMORY_BUDGET_MB.name} = 8 MiB")
    assert refused.value.hint == f"Use a smaller model, or raise the budget: SET {settings.MEMORY_BUDGET_MB.name} = 12."
