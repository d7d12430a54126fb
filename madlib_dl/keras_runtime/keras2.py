"""Keras 2 (and tf.keras 2.x) architecture JSON, translated to JSON that Keras 3 builds.

MADlib's users keep ``model.to_json()`` of tf.keras 2.x in their model architecture tables. Keras 3's
``model_from_json`` cannot read it: its objects have no ``module`` key, Keras 2.1's Sequential keeps its
layers in a bare list, the input shape is a ``batch_input_shape`` on the first layer, and a few layers
renamed or dropped an argument. This module rewrites such a JSON into Keras 3's form.

Where it runs: ``load_keras_model`` stores the translation (with a NOTICE saying what changed), so the
table holds what is built and trained, and a Keras 3 client reads it back with ``model_from_json``;
every reader of an architecture (``builder.model_from_json``, ``builder.size``, ``arch_size.closed_form``)
translates too, so that a row copied straight from a MADlib table (``INSERT ... SELECT``) trains without
being loaded again. Translating a Keras 3 JSON (one whose top object has a ``module``) returns it as it is.

Security: this is pure JSON rewriting (no Keras import, nothing is called). Every class name in a Keras 2
JSON must be on the lists below (layers, initializers, regularizers, constraints), activations must be
names, and the result is deserialized by Keras 3 in safe mode like any other JSON: a Lambda layer or a
serialized function is refused, never run.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from madlib_dl.errors import InvalidArgument

MODEL_CLASSES = ("Sequential", "Functional", "Model")

# Layers whose Keras 2 configs Keras 3 accepts once translated (tests/runtime/test_keras2.py builds each
# from a tf.keras 2.x style config). Other layers are refused with their name.
LAYERS = frozenset((
    "InputLayer", "Dense", "Activation", "Dropout", "Flatten", "Reshape", "Permute", "RepeatVector",
    "BatchNormalization", "LayerNormalization",
    "Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose", "SeparableConv2D", "DepthwiseConv2D",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D", "UpSampling1D", "UpSampling2D",
    "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax", "GaussianNoise", "GaussianDropout",
    "Embedding", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
    "SimpleRNN", "LSTM", "GRU",
))

# Nested objects by the key suffix that holds them, with the class names Keras 2 wrote for them.
OBJECTS = {
    "initializer": ("keras.initializers", frozenset((
        "Zeros", "Ones", "Constant", "RandomNormal", "RandomUniform", "TruncatedNormal", "VarianceScaling",
        "Orthogonal", "Identity", "GlorotUniform", "GlorotNormal", "HeNormal", "HeUniform", "LecunNormal",
        "LecunUniform"))),
    "regularizer": ("keras.regularizers", frozenset(("L1L2", "L1", "L2", "OrthogonalRegularizer"))),
    "constraint": ("keras.constraints", frozenset(("MaxNorm", "NonNeg", "UnitNorm", "MinMaxNorm"))),
}

# Arguments Keras 3 removed: dropped silently at these values (a speed hint, or the value that changes
# nothing), dropped with a note when "any" value only informed shape inference; at any other value they
# change the model, and the JSON is refused, naming them.
_DROPPED = {
    "BatchNormalization": {"fused": (None, True, False), "virtual_batch_size": (None,), "adjustment": (None,)},
    "Conv2DTranspose": {"groups": (1,)},  # tf.keras wrote Conv's groups for these too
    "SeparableConv2D": {"groups": (1,)},
    "DepthwiseConv2D": {"groups": (1,)},
    "Embedding": {"input_length": "any"},
    # implementation 1 or 2 chose how tf.keras computed the same gates; time_major=True fed time first
    "LSTM": {"implementation": (1, 2), "time_major": (False,)},
    "GRU": {"implementation": (1, 2), "time_major": (False,)},
    "SimpleRNN": {"time_major": (False,)},
}


@dataclass
class Translation:
    model: Any                      # the JSON, parsed: Keras 3's form when ``translated``
    translated: bool = False
    keras_version: str | None = None
    notes: list[str] = field(default_factory=list)  # what changed besides adding module names

    def summary(self) -> str:
        """One line for a NOTICE."""
        written = f"Keras {self.keras_version}" if self.keras_version else "Keras 2 (no module names)"
        changes = "; ".join(dict.fromkeys(self.notes)) or "module names added"
        return f"the JSON was written by {written} and was translated to Keras 3's form ({changes})"


def needs_translation(model: Any) -> bool:
    """A Keras model JSON (parsed) in Keras 2's form: no ``module`` on the model (Keras 3 always writes
    one), and no Keras version other than 2.x (Keras 1 JSON is refused by arch_info)."""
    if not (isinstance(model, dict) and model.get("class_name") in MODEL_CLASSES and "config" in model):
        return False
    version = model.get("keras_version")
    return "module" not in model and (version is None or str(version).startswith("2"))


def translate(model_arch: str | bytes | dict, argument: str = "model_arch") -> Translation:
    """The JSON (text or parsed) in Keras 3's form. Text that is not JSON, or JSON that is not a Keras 2
    model, comes back untranslated (parsed when it could be): the usual checks report on it."""
    model = model_arch
    if isinstance(model, (str, bytes)):
        try:
            model = json.loads(model)
        except (ValueError, RecursionError):
            return Translation(model_arch)
    if not needs_translation(model):
        return Translation(model)
    version = model.get("keras_version")
    translation = Translation(None, True, None if version is None else str(version))
    try:
        translation.model = _Translator(translation, argument).model(copy.deepcopy(model), top=True)
    except RecursionError:
        raise InvalidArgument(f"{argument}: not a Keras model JSON: its layers nest too deeply") from None
    return translation


def keras3_json(model_arch: str, argument: str = "model_arch") -> str:
    """``model_arch`` text itself when it needs no translation, else its Keras 3 translation."""
    translation = translate(model_arch, argument)
    return json.dumps(translation.model) if translation.translated else model_arch


class _Translator:
    def __init__(self, translation: Translation, argument: str):
        self.translation, self.argument = translation, argument

    def note(self, text: str) -> None:
        self.translation.notes.append(text)

    def refuse(self, what: str, why: str, hint: str | None = None) -> InvalidArgument:
        version = self.translation.keras_version or "2"
        return InvalidArgument(f"{self.argument}: {what} in this Keras {version} JSON {why}",
                               hint=hint or "Recreate the model with Keras 3 and load its model.to_json(), or "
                                            "replace that layer with built-in Keras 3 layers.")

    # ---- models ------------------------------------------------------------------------------------

    def model(self, model: dict, top: bool = False) -> dict:
        config = model.get("config")
        if isinstance(config, list):  # Keras 2.1: the Sequential's config is its layer list
            config = {"name": "sequential", "layers": config}
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            return model  # malformed: arch_info says so, in its words
        functional = model["class_name"] != "Sequential" or "input_layers" in config
        layers = [self.layer(layer, functional) for layer in config["layers"]]
        if not functional:
            layers = self._sequential_input(layers)
        config = {**config, "layers": layers}
        if functional:
            out = {"module": "keras.src.models.functional", "class_name": "Functional", "config": config,
                   "registered_name": "Functional"}
        else:
            out = {"module": "keras", "class_name": "Sequential", "config": config, "registered_name": None}
        if not top and "name" in model:  # a nested model in a Functional one keeps its node fields
            out.update({k: model[k] for k in ("name", "inbound_nodes") if k in model})
        return out

    def _sequential_input(self, layers: list[dict]) -> list[dict]:
        """Keras 2 put the input shape on the first layer (and tf.keras 2 repeated it there after an
        InputLayer); Keras 3 wants an InputLayer first."""
        shapes = [layer.pop("_batch_input_shape", None) for layer in layers]
        if layers and layers[0]["class_name"] != "InputLayer" and shapes[0] is not None:
            first = layers[0]["config"]
            name = f"{first.get('name', 'input')}_input"
            self.note(f"batch_input_shape {json.dumps(shapes[0])} became an InputLayer")
            dtype = first.get("dtype") if isinstance(first.get("dtype"), str) else "float32"
            layers.insert(0, {"module": "keras.layers", "class_name": "InputLayer",
                              "config": {"batch_shape": shapes[0], "dtype": dtype, "name": name},
                              "registered_name": None})
        return layers

    # ---- layers ------------------------------------------------------------------------------------

    def layer(self, layer: Any, functional: bool) -> dict:
        if not isinstance(layer, dict) or not isinstance(layer.get("config"), dict) and not _is_model(layer):
            raise InvalidArgument(f"{self.argument}: not a Keras model JSON: a layer is not an object with "
                                  "class_name and config")
        if _is_model(layer):
            return self.model(layer)
        cls = layer.get("class_name")
        config = dict(layer["config"])
        name = config.get("name", layer.get("name"))
        described = f"layer {name!r} ({cls})" if name else f"a {cls} layer"
        if cls == "Lambda":
            raise self.refuse(described, "carries Python code, which would run inside the database server: "
                                         "Lambda layers are refused", hint="Use built-in Keras layers.")
        if cls not in LAYERS:
            raise self.refuse(described, f"has no Keras 3 translation here; translated layers: "
                                         f"{', '.join(sorted(LAYERS))}")
        shape = config.pop("batch_input_shape", None)
        config.pop("batch_size", None)  # tf.keras wrote it beside batch_input_shape, which holds it
        if cls == "InputLayer":
            if shape is not None:
                config["batch_shape"] = shape
            for key in ("input_dim", "input_tensor"):
                config.pop(key, None)
            shape = None
        if isinstance(config.get("dtype"), dict):  # tf.keras 2 mixed precision: {"class_name": "Policy", ...}
            policy = config["dtype"].get("config", {})
            config["dtype"] = policy.get("name") if isinstance(policy, dict) else None
            if not isinstance(config["dtype"], str):
                raise self.refuse(described, "has a dtype policy without a name")
        self._layer_arguments(cls, config, described)
        for key, value in list(config.items()):
            if isinstance(value, dict) and "class_name" in value:
                config[key] = self.nested(key, value, described)
        out = {"module": "keras.layers", "class_name": cls, "config": config, "registered_name": None}
        if functional:
            out.update({k: layer[k] for k in ("name", "inbound_nodes") if k in layer})
            if shape is not None:
                raise self.refuse(described, "has a batch_input_shape but is not an InputLayer of the "
                                             "functional model")
        elif shape is not None:
            out["_batch_input_shape"] = shape  # taken off again by _sequential_input
        return out

    def _layer_arguments(self, cls: str, config: dict, described: str) -> None:
        for key, values in _DROPPED.get(cls, {}).items():
            if key in config:
                value = config.pop(key)
                if values == "any":
                    self.note(f"{cls} {key} dropped (Keras 3 removed it)")
                elif value not in values:
                    raise self.refuse(described, f"has {key}={value!r}, which Keras 3 removed")
        if cls == "BatchNormalization" and isinstance(config.get("axis"), list) and len(config["axis"]) == 1:
            config["axis"] = config["axis"][0]
        if cls == "LeakyReLU" and "alpha" in config:
            config["negative_slope"] = config.pop("alpha")
            self.note("LeakyReLU alpha became negative_slope")
        activation = config.get("activation")
        if activation is not None and not isinstance(activation, str):
            raise self.refuse(described, "has an activation that is not a name (a custom function)",
                              hint="Use a built-in activation, such as 'relu'.")

    def nested(self, key: str, value: dict, described: str) -> dict:
        kind = next((k for k in OBJECTS if key.endswith(k)), None)
        cls = value.get("class_name")
        if kind is None or cls not in OBJECTS[kind][1] or not isinstance(value.get("config", {}), dict):
            raise self.refuse(described, f"has {key}={cls!r}, which is not translated (known: "
                                         f"{', '.join(sorted(set().union(*(o[1] for o in OBJECTS.values()))))})")
        config = dict(value.get("config") or {})
        if kind == "initializer":
            config.pop("dtype", None)  # tf.keras 1.x wrote the initializer's dtype; Keras 3 takes the layer's
            if cls == "VarianceScaling" and config.get("distribution") == "normal":
                config["distribution"] = "truncated_normal"  # what Keras 2 meant by 'normal'
                self.note("VarianceScaling distribution 'normal' became 'truncated_normal' (as Keras 2 did)")
        return {"module": OBJECTS[kind][0], "class_name": cls, "config": config, "registered_name": None}


def _is_model(node: Any) -> bool:
    return isinstance(node, dict) and node.get("class_name") in MODEL_CLASSES and "config" in node
