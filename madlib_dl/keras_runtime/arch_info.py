"""What a Keras architecture JSON says about its inputs and outputs, read without Keras.

Pure JSON reading (no TensorFlow import), so a malformed architecture is refused in microseconds and
the shape facts are available wherever the JSON is: input shapes (batch dimension left out) and the
number of classes of each output (the ``units`` of its Dense layer).

Formats read:
* Keras 3 ``model.to_json()``: a Sequential whose first layer is an ``InputLayer`` with ``batch_shape``
  (or whose config has ``build_input_shape``), and Functional models, whose ``input_layers`` /
  ``output_layers`` name their layers (one ``[name, 0, 0]``, a list of them, or a dict of them);
* Keras 2 style: ``batch_input_shape`` on the input layer or the first layer, and the Keras 2.1
  Sequential whose ``config`` is the list of layers;
* a model nested as the first or last layer of another (transfer learning: ``Sequential([base, Dense])``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import keras2

ARGUMENT = "model_arch"
MODEL_CLASSES = ("Sequential", "Functional", "Model")

NO_INPUT = f"{ARGUMENT}: cannot find the input shape; the first layer must define one (e.g. keras.Input(shape=(4,)))"
NO_CLASSES = f"{ARGUMENT}: cannot find the number of classes: the last layer must be a Dense layer with units"

# Layers that keep their input's shape: a Dense(3) followed by one of these still has 3 classes
# (e.g. Dense(3) then Activation('softmax'), as many models are written).
_SHAPE_KEEPING = frozenset({
    "Activation", "Softmax", "ReLU", "LeakyReLU", "ELU", "PReLU", "Dropout", "AlphaDropout",
    "GaussianDropout", "GaussianNoise", "ActivityRegularization", "BatchNormalization",
    "LayerNormalization",
})


@dataclass(frozen=True)
class ArchInfo:
    input_shapes: tuple[tuple[int | None, ...], ...]  # one per model input, without the batch dimension
    class_counts: tuple[int, ...]                      # one per model output
    keras_version: str | None                          # Keras 2 JSON says which Keras wrote it; Keras 3 does not
    class_names: frozenset[str] = frozenset()          # every class_name in the JSON (layers, initializers...)

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """The first input's shape (models with one input have only this one)."""
        return self.input_shapes[0]

    @property
    def num_classes(self) -> int:
        """The first output's class count."""
        return self.class_counts[0]


def read(model_arch: str | dict | None) -> ArchInfo:
    """Input shapes and class counts of a model JSON (text or already parsed)."""
    model = _parse(model_arch)
    keras2.translate(model)  # a Keras 2 JSON with a layer it cannot translate is refused here, naming the layer
    try:
        return ArchInfo(input_shapes=tuple(input_shapes(model)), class_counts=tuple(num_classes(model)),
                        keras_version=_keras_version(model), class_names=frozenset(_class_names(model)))
    except RecursionError:  # absurdly deep nesting, or a layer graph that loops onto itself
        raise InvalidArgument(f"{ARGUMENT}: not a Keras model JSON: its layers nest or loop too deeply") from None


def refusal(info: ArchInfo) -> str | None:
    """Why madlib_dl will not build this architecture (None: it may), read from the JSON alone, so that
    a row written straight into an architecture table is refused before any worker starts."""
    if "Lambda" in info.class_names:
        # Keras' safe mode refuses it too (builder), but its message suggests turning safe mode off,
        # which a database user cannot and must not do.
        return ("a Lambda layer is refused: it carries Python code that would run inside the database server; "
                "use built-in Keras layers")
    if info.keras_version is not None and not info.keras_version.startswith(("2", "3")):
        # Keras 2 JSON is translated (keras2); older formats differ too much to translate.
        return (f"this JSON was written by Keras {info.keras_version}; madlib_dl builds models with Keras 3 and "
                "translates Keras 2 JSON: recreate the model with Keras 3 and load its model.to_json()")
    return None


def io_mismatch(info: ArchInfo, example_shapes, class_counts) -> str | None:
    """Why examples of ``example_shapes`` (one per independent variable) with ``class_counts`` (one per
    dependent variable) do not fit a model (None: they fit), as the end of a sentence starting with the
    model's name. For models or tables with several inputs or outputs (multi-io): inputs and outputs
    pair with the variables in order."""
    if len(info.input_shapes) != len(example_shapes):
        return (f"has {len(info.input_shapes)} input(s) but {len(example_shapes)} independent variable(s) were "
                "packed (one per input, in the model's input order)")
    if len(info.class_counts) != len(class_counts):
        return (f"has {len(info.class_counts)} output(s) but {len(class_counts)} dependent variable(s) were "
                "packed (one per output, in the model's output order)")
    for number, (expected, shape) in enumerate(zip(info.input_shapes, example_shapes), 1):
        if not accepts(expected, tuple(shape)):
            return (f"expects input shape {shape_text(expected)} at input {number} but independent variable "
                    f"{number} holds examples of shape {shape_text(shape)}")
    for number, (units, classes) in enumerate(zip(info.class_counts, class_counts), 1):
        if units != classes:
            return f"has {units} units at output {number} but dependent variable {number} has {classes} classes"
    return None


def _parse(model_arch) -> dict:
    if model_arch is None:
        raise InvalidArgument(f"{ARGUMENT}: not a Keras model JSON: got NULL; expected model.to_json()")
    if isinstance(model_arch, (str, bytes)):
        try:
            model_arch = json.loads(model_arch)
        except (ValueError, RecursionError) as error:
            raise InvalidArgument(f"{ARGUMENT}: not a Keras model JSON: {error}") from None
    if not _is_model(model_arch):
        raise InvalidArgument(f"{ARGUMENT}: not a Keras model JSON: expected an object with class_name "
                              f"{' or '.join(MODEL_CLASSES)} and its config, as model.to_json() writes")
    _layers(model_arch)  # a model without a layer list is malformed whatever is asked of it
    return model_arch


def _is_model(node: Any) -> bool:
    return isinstance(node, dict) and node.get("class_name") in MODEL_CLASSES and "config" in node


def _keras_version(model: dict) -> str | None:
    version = model.get("keras_version")
    return str(version) if version is not None else None


def _class_names(node: Any) -> set[str]:
    """Every class_name anywhere in the JSON, so callers can refuse a layer type wherever it is nested."""
    names: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("class_name"), str):
            names.add(node["class_name"])
        for value in node.values():
            names |= _class_names(value)
    elif isinstance(node, list):
        for value in node:
            names |= _class_names(value)
    return names


def _layers(model: dict) -> list[dict]:
    config = model["config"]
    layers = config if isinstance(config, list) else config.get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise InvalidArgument(f"{ARGUMENT}: not a Keras model JSON: the model's config has no list of layers")
    return layers


def _config(layer: dict) -> dict:
    config = layer.get("config")
    return config if isinstance(config, dict) else {}


def _is_functional(model: dict) -> bool:
    config = model["config"]
    return isinstance(config, dict) and "input_layers" in config


# ---- inputs ----------------------------------------------------------------------------------------

def input_shapes(model: dict) -> list[tuple[int | None, ...]]:
    if _is_functional(model):
        names = _node_names(model["config"]["input_layers"], NO_INPUT)
        layers = [_layer_named(model, name, NO_INPUT) for name in names]
        return [shape for layer in layers for shape in _layer_input_shapes(layer)]
    return _sequential_input_shapes(model)


def _sequential_input_shapes(model: dict) -> list[tuple[int | None, ...]]:
    layers = _layers(model)
    if layers:
        found = _layer_input_shapes(layers[0], required=False)
        if found:
            return found
    config = model["config"]
    built = config.get("build_input_shape") if isinstance(config, dict) else None
    if built is not None:  # a Sequential built with model.build(shape) but saved without an InputLayer
        return [_shape(built)]
    raise InvalidArgument(NO_INPUT)


def _layer_input_shapes(layer: dict, required: bool = True) -> list[tuple[int | None, ...]]:
    if _is_model(layer):  # a nested model: its own inputs
        return input_shapes(layer)
    config = _config(layer)
    for key in ("batch_shape", "batch_input_shape"):  # Keras 3, Keras 2
        if config.get(key) is not None:
            return [_shape(config[key])]
    if required:
        raise InvalidArgument(NO_INPUT)
    return []


def _shape(batch_shape: Any) -> tuple[int | None, ...]:
    """The shape of one example: the batch dimension (first) dropped; unknown sizes stay None."""
    ok = (isinstance(batch_shape, list) and len(batch_shape) >= 1
          and all(d is None or (type(d) is int and d > 0) for d in batch_shape))
    if not ok:
        raise InvalidArgument(f"{ARGUMENT}: input shape {batch_shape!r} is not a list of positive sizes "
                              "(null for the batch dimension)")
    return tuple(batch_shape[1:])


# ---- outputs ---------------------------------------------------------------------------------------

def num_classes(model: dict) -> list[int]:
    if _is_functional(model):
        names = _node_names(model["config"].get("output_layers"), NO_CLASSES)
        return [_classes_of(model, _layer_named(model, name, NO_CLASSES)) for name in names]
    layers = _layers(model)
    if not layers:
        raise InvalidArgument(NO_CLASSES)
    return [_classes_of(model, layers[-1])]


def _classes_of(model: dict, layer: dict) -> int:
    """The units of ``layer``, looking through trailing shape-keeping layers to the Dense before them."""
    if _is_model(layer):
        classes = num_classes(layer)
        if len(classes) != 1:
            raise InvalidArgument(NO_CLASSES)
        return classes[0]
    if layer.get("class_name") in _SHAPE_KEEPING:
        previous = _previous_layer(model, layer)
        if previous is not None:
            return _classes_of(model, previous)
        raise InvalidArgument(NO_CLASSES)
    units = _config(layer).get("units")
    if type(units) is not int or units < 1:
        raise InvalidArgument(NO_CLASSES)
    return units


def _previous_layer(model: dict, layer: dict) -> dict | None:
    """The layer feeding ``layer``: the one before it in a Sequential, its single inbound layer in a
    Functional model (None when there is not exactly one)."""
    if not _is_functional(model):
        layers = _layers(model)
        index = next(i for i, candidate in enumerate(layers) if candidate is layer)
        return layers[index - 1] if index > 0 else None
    sources = _inbound_layer_names(layer.get("inbound_nodes"))
    if len(sources) != 1:
        return None
    return _layer_named(model, sources.pop(), NO_CLASSES)


def _inbound_layer_names(node: Any) -> set[str]:
    """Names in ``keras_history`` entries (Keras 3) or ``[name, 0, 0, {}]`` lists (Keras 2), anywhere in
    a layer's inbound nodes."""
    names: set[str] = set()
    if isinstance(node, dict):
        history = node.get("keras_history")
        if isinstance(history, list) and history and isinstance(history[0], str):
            names.add(history[0])
        for value in node.values():
            names |= _inbound_layer_names(value)
    elif isinstance(node, list):
        if len(node) >= 3 and isinstance(node[0], str) and isinstance(node[1], int):
            names.add(node[0])
        else:
            for value in node:
                names |= _inbound_layer_names(value)
    return names


# ---- functional graph helpers ----------------------------------------------------------------------

def _node_names(spec: Any, message: str) -> list[str]:
    """Layer names of ``input_layers``/``output_layers``: ``[name, 0, 0]``, a list of those, or a dict."""
    if isinstance(spec, dict):
        spec = list(spec.values())
    if isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str):
        return [spec[0]]
    if isinstance(spec, list) and spec and all(isinstance(s, list) and s and isinstance(s[0], str) for s in spec):
        return [s[0] for s in spec]
    raise InvalidArgument(message)


def _layer_named(model: dict, name: str, message: str) -> dict:
    for layer in _layers(model):
        if layer.get("name", _config(layer).get("name")) == name:
            return layer
    raise InvalidArgument(message)


def shape_text(shape) -> str:
    """A shape as Python writes a tuple, None for a free dimension: ``(8, 8, 1)``, ``(None, 4)``, ``(10,)``."""
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def accepts(input_shape, example_shape) -> bool:
    """Whether a model with ``input_shape`` (None: any size) takes examples of ``example_shape``."""
    return len(input_shape) == len(example_shape) and all(d is None or d == e for d, e in zip(input_shape, example_shape))
