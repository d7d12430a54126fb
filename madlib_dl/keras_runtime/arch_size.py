"""How big a Keras architecture is, read from its JSON before anything is built.

A few hundred bytes of JSON can describe a model of billions of weights, and Keras allocates every one
of them (plus copies) as soon as the model is built: in the caller's backend for load_keras_model and
predict, in the workers for a run's initial weights. So the size is computed first, from the JSON alone
(no TensorFlow import), and checked against the DBA's cap and the caller's memory budget
(:func:`check`) before Keras is asked to build anything.

:func:`closed_form` follows the tensor shapes through Sequential and Functional graphs (nested models and
the wrappers Bidirectional and TimeDistributed included) and counts each layer's weights with the formula
Keras' ``build`` uses, for the common layers (:data:`KNOWN_LAYERS`); the count equals Keras'
``model.count_params()``. A layer Keras builds from its ``build_config`` (every layer ``to_json`` writes
has one) is built on the shape written there, whatever shape later flows into it, so a layer is counted
on both and the larger kept. Anything else (an unknown layer, a quantized layer, a stateful recurrent
one, a shape that cannot be followed) raises :class:`NotClosedForm`: the caller then counts it with Keras
itself, in a way that allocates nothing (``builder.symbolic_size``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

from madlib_dl import settings
from madlib_dl.errors import InvalidArgument

# Building a model takes about this many times its weights: the initializers' tensors, the variables
# they fill, and one NumPy copy (get_weights; or the weights being loaded into it). Measured with Keras
# 3.15 on TensorFlow 2.21: 1.96x after model_from_json, 2.96x once get_weights has run, 1.83x while
# predict loads given weights (a 191 MiB model); the report saw 3.7 GB for 1 GiB of weights.
BUILD_COPIES = 3

MODEL_CLASSES = ("Sequential", "Functional", "Model")
FLOAT_POLICIES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8,
                  "mixed_float16": 4, "mixed_bfloat16": 4}  # bytes of each variable (mixed: float32 variables)

OPTIMIZER_SLOTS = 4  # the most variables per weight a built-in Keras optimizer keeps (AMSGrad with EMA)

Shape = tuple  # full shape, batch dimension first; a dimension is an int or None


class NotClosedForm(Exception):
    """This JSON (or one of its layers) is outside what :func:`closed_form` computes."""


@dataclass(frozen=True)
class ArchSize:
    params: int             # as Keras' model.count_params() counts them (non-trainable ones included)
    weight_bytes: int       # the variables' bytes (float32: 4 per parameter)
    other_bytes: int = 0    # constants a layer makes while it is built (Normalization's given mean and variance)

    @property
    def build_bytes(self) -> int:
        """Memory building the model takes in one backend, at its peak."""
        return BUILD_COPIES * self.weight_bytes + self.other_bytes

    def __add__(self, other: "ArchSize") -> "ArchSize":
        return ArchSize(self.params + other.params, self.weight_bytes + other.weight_bytes,
                        self.other_bytes + other.other_bytes)


ZERO = ArchSize(0, 0)


# ---- the check -------------------------------------------------------------------------------------

def format_bytes(count: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def check(size: ArchSize, argument: str, cap_mib: int, budget_mib: int | None = None) -> None:
    """Refuse a model whose building would take more than the DBA's cap
    (``madlib_dl.max_model_memory_mb``) or the caller's ``madlib_dl.memory_budget_mb`` (None: not
    checked, e.g. in a worker, which has not the caller's settings)."""
    needed = size.build_bytes
    what = (f"{argument}: the model has {size.params:,} parameters ({format_bytes(size.weight_bytes)} of weights); "
            f"building it takes about {format_bytes(needed)}")
    suggested = -(-needed // (1 << 20))
    cap = settings.MAX_MODEL_MEMORY_MB.name
    if needed > cap_mib << 20:
        raise InvalidArgument(
            f"{what}, over the {cap_mib} MiB that {cap} allows one model on this server",
            hint=f"Use a smaller model, or ask a superuser to raise the cap (ALTER SYSTEM SET {cap} = {suggested}, "
                 "then SELECT pg_reload_conf()).")
    budget = settings.MEMORY_BUDGET_MB.name
    if budget_mib is not None and needed > budget_mib << 20:
        raise InvalidArgument(f"{what}, over the memory budget {budget} = {budget_mib} MiB",
                              hint=f"Use a smaller model, or raise the budget: SET {budget} = {suggested}.")


# ---- counting from the JSON ------------------------------------------------------------------------

def closed_form(model_arch: str | dict) -> ArchSize:
    """The size of the model in ``model_arch`` (text or parsed), counted without Keras; raises
    :class:`NotClosedForm` when some part of it is not one this module knows."""
    if isinstance(model_arch, (str, bytes)):
        try:
            model_arch = json.loads(model_arch)
        except (ValueError, RecursionError):
            raise NotClosedForm("not JSON") from None
    try:
        size, _ = _model(model_arch, None)
    except RecursionError:
        raise NotClosedForm("nested too deeply") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as error:
        raise NotClosedForm(f"{type(error).__name__}: {error}") from None
    return size


def _is_model(node: Any) -> bool:
    return isinstance(node, dict) and node.get("class_name") in MODEL_CLASSES and isinstance(node.get("config"), (dict, list))


def _config(layer: dict) -> dict:
    config = layer.get("config")
    if not isinstance(config, dict):
        raise NotClosedForm(f"layer without a config: {layer.get('class_name')!r}")
    return config


def _layers(model: dict) -> list[dict]:
    config = model["config"]
    layers = config if isinstance(config, list) else config.get("layers")
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise NotClosedForm("the model's config has no list of layers")
    return layers


def _model(model: dict, given: list[Shape] | None) -> tuple[ArchSize, list[Shape]]:
    """(size, output shapes) of a model, built on its own inputs, else on ``given`` (a nested model
    called on the shapes that flow into it)."""
    if not _is_model(model):
        raise NotClosedForm("not a Keras model JSON")
    config = model["config"]
    if isinstance(config, dict) and "input_layers" in config:
        size, outputs = _functional(model)
    else:
        size, outputs = _sequential(model, given)
    if model.get("compile_config"):
        # A compiled model's JSON: deserializing compiles it again and builds its optimizer's slots (Adam's
        # 2 per weight; AMSGrad and EMA one more each): counted as up to 4 more copies of the weights.
        size = size + ArchSize(0, 0, OPTIMIZER_SLOTS * size.weight_bytes)
    return size, outputs


def _sequential(model: dict, given: list[Shape] | None) -> tuple[ArchSize, list[Shape]]:
    layers = _layers(model)
    shapes: list[Shape] | None = None
    if layers:
        first = _config(layers[0]) if not _is_model(layers[0]) else {}
        for key in ("batch_shape", "batch_input_shape"):
            if first.get(key) is not None:
                shapes = [_shape(first[key])]
                break
    config = model["config"]
    if shapes is None and isinstance(config, dict) and config.get("build_input_shape") is not None:
        shapes = [_shape(config["build_input_shape"])]
    if shapes is None:  # not built by from_config: built from its build_config, else where it is first called
        shapes = _build_config_shapes(model) or given
    total = ZERO
    for layer in layers:
        if layer.get("class_name") == "InputLayer":
            continue
        if shapes is None:  # never built from a flowing shape; only build_config can build it now
            raise NotClosedForm("a Sequential model without an input shape")
        size, shapes = _layer(layer, shapes)
        total = total + size
    if shapes is None:
        raise NotClosedForm("a Sequential model without an input shape")
    return total, shapes


def _functional(model: dict) -> tuple[ArchSize, list[Shape]]:
    layers = _layers(model)
    by_name: dict[str, dict] = {}
    for layer in layers:
        name = layer.get("name", _config(layer).get("name"))
        if not isinstance(name, str) or name in by_name:
            raise NotClosedForm("layers without distinct names")
        by_name[name] = layer
    outputs: dict[tuple[str, int], list[Shape]] = {}  # (layer name, node index) -> that call's output shapes
    sizes: dict[str, ArchSize] = {}
    busy: set[tuple[str, int]] = set()

    def node_outputs(name: str, node_index: int) -> list[Shape]:
        key = (name, node_index)
        if name not in by_name:
            raise NotClosedForm(f"an inbound node names no layer: {name!r}")
        if key not in outputs:
            if key in busy:
                raise InvalidArgument("model_arch: not a Keras model JSON: its layers form a loop")
            busy.add(key)
            layer = by_name[name]
            if layer.get("class_name") == "InputLayer":
                if node_index != 0:
                    raise NotClosedForm(f"input layer {name!r} has no node {node_index}")
                outputs[key], sizes[name] = [_input_shape(layer)], ZERO
            else:
                nodes = layer.get("inbound_nodes")
                if not isinstance(nodes, list) or not 0 <= node_index < len(nodes):
                    raise NotClosedForm(f"layer {name!r} has no node {node_index}")
                inputs = [node_outputs(n, i)[t] for n, i, t in _node_inputs(nodes[node_index])]
                if node_index > 0:
                    node_outputs(name, 0)  # built once, on its first call
                size, outputs[key] = _layer(layer, inputs)
                sizes.setdefault(name, size)
            busy.discard(key)
        return outputs[key]

    for name, layer in by_name.items():  # from_config makes (and builds) every layer listed, wired to the outputs or not
        if layer.get("class_name") == "InputLayer" or layer.get("inbound_nodes"):
            node_outputs(name, 0)
        else:  # never called: built only from its build_config, if it has one
            sizes[name] = _build_config_size(layer)
    result = []
    for name, node_index, tensor_index in _references(model["config"].get("output_layers")):
        result.append(node_outputs(name, node_index)[tensor_index])
    total = ZERO
    for size in sizes.values():
        total = total + size
    return total, result


def _input_shape(layer: dict) -> Shape:
    config = _config(layer)
    for key in ("batch_shape", "batch_input_shape"):
        if config.get(key) is not None:
            return _shape(config[key])
    raise NotClosedForm("an InputLayer without batch_shape")


def _references(spec: Any) -> list[tuple[str, int, int]]:
    """``input_layers``/``output_layers``: ``[name, node, tensor]``, a list of those, or a dict of them."""
    if isinstance(spec, dict):
        spec = list(spec.values())
    if isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str):
        spec = [spec]
    if not isinstance(spec, list) or not spec:
        raise NotClosedForm("no output layers")
    found = []
    for item in spec:
        if not (isinstance(item, list) and len(item) >= 3 and isinstance(item[0], str)
                and type(item[1]) is int and type(item[2]) is int):
            raise NotClosedForm(f"an output reference that is not [name, node, tensor]: {item!r}")
        found.append((item[0], item[1], item[2]))
    return found


def _node_inputs(node: Any) -> list[tuple[str, int, int]]:
    """The tensors a node passes in ``args`` (its keyword arguments, masks and states, change no
    weight): Keras 3 ``__keras_tensor__`` entries, or Keras 2's ``[name, node, tensor, kwargs]`` lists."""
    if isinstance(node, dict):
        found: list[tuple[str, int, int]] = []
        _keras_tensors(node.get("args", []), found)
        return found
    if isinstance(node, list) and all(isinstance(r, list) and len(r) >= 3 and isinstance(r[0], str) for r in node):
        return [(r[0], r[1], r[2]) for r in node]
    raise NotClosedForm("an inbound node of an unknown form")


def _keras_tensors(value: Any, found: list) -> None:
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            history = (value.get("config") or {}).get("keras_history")
            if not (isinstance(history, list) and len(history) == 3 and isinstance(history[0], str)
                    and type(history[1]) is int and type(history[2]) is int):
                raise NotClosedForm("a keras tensor without its history")
            found.append(tuple(history))
            return
        for item in value.values():
            _keras_tensors(item, found)
    elif isinstance(value, list):
        for item in value:
            _keras_tensors(item, found)


def _shape(value: Any) -> Shape:
    if not (isinstance(value, list) and value
            and all(d is None or (type(d) is int and d > 0) for d in value)):
        raise NotClosedForm(f"not a shape: {value!r}")
    return tuple(value)


# ---- one layer -------------------------------------------------------------------------------------

def _layer(layer: dict, inputs: list[Shape]) -> tuple[ArchSize, list[Shape]]:
    """(size, output shapes) of ``layer`` called on ``inputs``. A layer with a build_config was built on
    that shape when it was deserialized: its size is the larger of the two builds."""
    if _is_model(layer):
        size, outputs = _model(layer, inputs)
        return size, outputs
    size, outputs = _known(layer, inputs)
    built = _build_config_size(layer)
    if built.build_bytes > size.build_bytes or built.params > size.params:
        size = built
    return size, outputs


def _build_config_shapes(layer: dict) -> list[Shape] | None:
    """The input shapes of a layer's ``build_config`` (None: it has none)."""
    build = layer.get("build_config")
    if build is None:
        return None
    if not isinstance(build, dict) or set(build) - {"input_shape"}:
        raise NotClosedForm(f"a build_config other than an input shape: {build!r}")
    shape = build.get("input_shape")
    if shape is None:
        return None
    if isinstance(shape, list) and shape and all(isinstance(s, list) for s in shape):
        return [_shape(s) for s in shape]
    return [_shape(shape)]


def _build_config_size(layer: dict) -> ArchSize:
    if _is_model(layer):  # built by from_config on its own inputs, else on its build_config's
        return _model(layer, None)[0]
    shapes = _build_config_shapes(layer)
    return ZERO if shapes is None else _known(layer, shapes)[0]


def _known(layer: dict, inputs: list[Shape]) -> tuple[ArchSize, list[Shape]]:
    name = layer.get("class_name")
    rule = KNOWN_LAYERS.get(name)
    if rule is None:
        raise NotClosedForm(f"layer class {name!r}")
    config = _config(layer)
    if config.get("quantization_config") is not None:
        raise NotClosedForm("a quantized layer")
    width = _variable_bytes(config.get("dtype"))
    if not inputs:
        raise NotClosedForm(f"{name} called on nothing")
    result = rule(config, inputs)
    params, outputs = result[0], result[1]
    other = result[2] if len(result) > 2 else 0
    if isinstance(params, ArchSize):  # a wrapper: its inner layers' sizes, dtypes included
        return params, outputs
    return ArchSize(params, params * width, other), outputs


def _variable_bytes(dtype: Any) -> int:
    if dtype is None:
        return 4
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name")
    if not isinstance(dtype, str) or dtype not in FLOAT_POLICIES:
        raise NotClosedForm(f"dtype policy {dtype!r}")
    return FLOAT_POLICIES[dtype]


def _one(inputs: list[Shape]) -> Shape:
    if len(inputs) != 1:
        raise NotClosedForm(f"{len(inputs)} inputs to a one-input layer")
    return inputs[0]


def _known_dim(d: Any) -> int:
    if type(d) is not int or d < 1:
        raise NotClosedForm(f"a dimension that must be known: {d!r}")
    return d


def _ints(value: Any, rank: int) -> tuple[int, ...]:
    if type(value) is int:
        return (value,) * rank
    if isinstance(value, list) and len(value) == rank and all(type(v) is int and v >= 1 for v in value):
        return tuple(value)
    raise NotClosedForm(f"expected {rank} sizes, got {value!r}")


def _prod(values) -> int:
    return math.prod(values)


def _lora(config: dict, fan_in: int, fan_out: int) -> int:
    rank = config.get("lora_rank")
    if rank is None:
        return 0
    return _known_dim(rank) * (fan_in + fan_out)


def _bias(config: dict, size: int) -> int:
    return size if config.get("use_bias", True) else 0


def _axis(axis: Any, rank: int) -> int:
    if type(axis) is not int or not -rank <= axis < rank:
        raise NotClosedForm(f"axis {axis!r} of a rank-{rank} input")
    return axis % rank


def _axes(config: dict, shape: Shape, default: int = -1) -> list[int]:
    axis = config.get("axis", default)
    axes = axis if isinstance(axis, list) else [axis]
    return sorted({_axis(a, len(shape)) for a in axes})


# shape-keeping layers: no weights, output = input

def _same(config, inputs):
    return 0, [_one(inputs)]


def _dense(config, inputs):
    shape = _one(inputs)
    units, fan_in = _known_dim(config.get("units")), _known_dim(shape[-1])
    return fan_in * units + _bias(config, units) + _lora(config, fan_in, units), [shape[:-1] + (units,)]


def _channels_last(config: dict) -> bool:
    data_format = config.get("data_format") or "channels_last"
    if data_format not in ("channels_last", "channels_first"):
        raise NotClosedForm(f"data_format {data_format!r}")
    return data_format == "channels_last"


def _split(shape: Shape, rank: int, last: bool) -> tuple[Any, tuple, Any]:
    """(batch, spatial dims, channels) of a conv-style input."""
    if len(shape) != rank + 2:
        raise NotClosedForm(f"a rank-{rank} layer on shape {shape}")
    return (shape[0], shape[1:-1], shape[-1]) if last else (shape[0], shape[2:], shape[1])


def _join(batch, spatial, channels, last: bool) -> Shape:
    return (batch,) + tuple(spatial) + (channels,) if last else (batch, channels) + tuple(spatial)


def _windowed(sizes, kernel, strides, dilation, padding) -> tuple:
    """Output sizes of a convolution or pooling window, as Keras computes them."""
    out = []
    for n, k, s, d in zip(sizes, kernel, strides, dilation):
        if n is None:
            out.append(None)
        elif padding == "valid":
            out.append(max(1, (n - d * (k - 1) - 1) // s + 1))
        elif padding in ("same", "causal"):
            out.append((n - 1) // s + 1)
        else:
            raise NotClosedForm(f"padding {padding!r}")
    return tuple(out)


def _conv(rank: int):
    def rule(config, inputs):
        last = _channels_last(config)
        batch, spatial, channels = _split(_one(inputs), rank, last)
        filters, groups = _known_dim(config.get("filters")), _known_dim(config.get("groups", 1))
        kernel = _ints(config.get("kernel_size"), rank)
        channels = _known_dim(channels)
        if channels % groups or filters % groups:
            raise NotClosedForm("channels or filters not divisible by groups")
        params = _prod(kernel) * (channels // groups) * filters + _bias(config, filters)
        out = _convolved(spatial, kernel, config, rank)
        return params, [_join(batch, out, filters, last)]
    return rule


def _convolved(spatial, kernel, config, rank: int):
    """The spatial output shape of a (depthwise, separable) convolution over ``spatial``."""
    return _windowed(spatial, kernel, _ints(config.get("strides", 1), rank), _ints(config.get("dilation_rate", 1), rank),
                     config.get("padding", "valid"))


def _depthwise(rank: int):
    def rule(config, inputs):
        last = _channels_last(config)
        batch, spatial, channels = _split(_one(inputs), rank, last)
        multiplier, channels = _known_dim(config.get("depth_multiplier", 1)), _known_dim(channels)
        kernel = _ints(config.get("kernel_size"), rank)
        params = _prod(kernel) * channels * multiplier + _bias(config, channels * multiplier)
        out = _convolved(spatial, kernel, config, rank)
        return params, [_join(batch, out, channels * multiplier, last)]
    return rule


def _separable(rank: int):
    def rule(config, inputs):
        last = _channels_last(config)
        batch, spatial, channels = _split(_one(inputs), rank, last)
        multiplier, channels = _known_dim(config.get("depth_multiplier", 1)), _known_dim(channels)
        filters = _known_dim(config.get("filters"))
        kernel = _ints(config.get("kernel_size"), rank)
        params = (_prod(kernel) * channels * multiplier + channels * multiplier * filters
                  + _bias(config, filters))
        out = _convolved(spatial, kernel, config, rank)
        return params, [_join(batch, out, filters, last)]
    return rule


def _transposed(rank: int):
    def rule(config, inputs):
        last = _channels_last(config)
        batch, spatial, channels = _split(_one(inputs), rank, last)
        filters, channels = _known_dim(config.get("filters")), _known_dim(channels)
        if config.get("groups", 1) != 1:
            raise NotClosedForm("grouped transposed convolution")
        kernel = _ints(config.get("kernel_size"), rank)
        strides = _ints(config.get("strides", 1), rank)
        dilation = _ints(config.get("dilation_rate", 1), rank)
        padding = config.get("padding", "valid")
        output_padding = config.get("output_padding")
        if output_padding is not None:
            output_padding = _ints(output_padding, rank) if output_padding != 0 else (0,) * rank
        out = []
        for i, n in enumerate(spatial):
            k = (kernel[i] - 1) * dilation[i] + 1
            if n is None:
                out.append(None)
            elif padding == "valid":
                extra = max(k, strides[i]) - k if output_padding is None else output_padding[i]
                out.append((n - 1) * strides[i] + k + extra)
            elif padding == "same":
                out.append(n * strides[i] if output_padding is None
                           else (n - 1) * strides[i] + k % 2 + output_padding[i])
            else:
                raise NotClosedForm(f"padding {padding!r}")
        return _prod(kernel) * filters * channels + _bias(config, filters), [_join(batch, out, filters, last)]
    return rule


def _pooling(rank: int):
    def rule(config, inputs):
        last = _channels_last(config)
        batch, spatial, channels = _split(_one(inputs), rank, last)
        pool = _ints(config.get("pool_size", 2), rank)
        strides = config.get("strides")
        strides = pool if strides is None else _ints(strides, rank)
        out = _windowed(spatial, pool, strides, (1,) * rank, config.get("padding", "valid"))
        return 0, [_join(batch, out, channels, last)]
    return rule


def _global_pooling(rank: int):
    def rule(config, inputs):
        last = _channels_last(config)
        batch, spatial, channels = _split(_one(inputs), rank, last)
        if config.get("keepdims"):
            return 0, [_join(batch, (1,) * rank, channels, last)]
        return 0, [(batch, channels)]
    return rule


def _pairs(value: Any, rank: int) -> list[tuple[int, int]]:
    """ZeroPadding / Cropping amounts: an int, one int per axis, or a pair per axis."""
    if type(value) is int:
        return [(value, value)] * rank
    if rank == 1 and isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value):
        return [tuple(value)]
    if isinstance(value, list) and len(value) == rank:
        pairs = []
        for item in value:
            if type(item) is int:
                pairs.append((item, item))
            elif isinstance(item, list) and len(item) == 2 and all(type(v) is int for v in item):
                pairs.append(tuple(item))
            else:
                raise NotClosedForm(f"padding or cropping {value!r}")
        return pairs
    raise NotClosedForm(f"padding or cropping {value!r}")


def _resize_spatial(rank: int, key: str, default, change: Callable[[int, tuple], int]):
    def rule(config, inputs):
        last = _channels_last(config)
        batch, spatial, channels = _split(_one(inputs), rank, last)
        amounts = config.get(key, default)
        amounts = _pairs(amounts, rank) if key != "size" else [(a, a) for a in _ints(amounts, rank)]
        out = tuple(None if n is None else max(1, change(n, a)) for n, a in zip(spatial, amounts))
        return 0, [_join(batch, out, channels, last)]
    return rule


def _flatten(config, inputs):
    shape = _one(inputs)
    rest = shape[1:]
    return 0, [(shape[0], None if any(d is None for d in rest) else _prod(rest))]


def _reshape(config, inputs):
    shape = _one(inputs)
    target = config.get("target_shape")
    if not isinstance(target, list) or not all(type(d) is int and (d > 0 or d == -1) for d in target) \
            or target.count(-1) > 1:
        raise NotClosedForm(f"target_shape {target!r}")
    if -1 in target:
        known = _prod(d for d in target if d != -1)
        total = None if any(d is None for d in shape[1:]) else _prod(shape[1:])
        target = [(None if total is None else max(1, total // known)) if d == -1 else d for d in target]
    return 0, [(shape[0],) + tuple(target)]


def _permute(config, inputs):
    shape = _one(inputs)
    dims = config.get("dims")
    if not isinstance(dims, list) or sorted(dims) != list(range(1, len(shape))):
        raise NotClosedForm(f"dims {dims!r}")
    return 0, [(shape[0],) + tuple(shape[d] for d in dims)]


def _repeat_vector(config, inputs):
    shape = _one(inputs)
    if len(shape) != 2:
        raise NotClosedForm("RepeatVector of a shape that is not (batch, features)")
    return 0, [(shape[0], _known_dim(config.get("n")), shape[1])]


def _embedding(config, inputs):
    shape = _one(inputs)
    vocabulary, width = _known_dim(config.get("input_dim")), _known_dim(config.get("output_dim"))
    return vocabulary * width + _lora(config, vocabulary, width), [shape + (width,)]


def _batch_norm(config, inputs):
    shape = _one(inputs)
    if config.get("renorm") or config.get("synchronized"):
        raise NotClosedForm("BatchNormalization with renorm or synchronized")
    size = _prod(_known_dim(shape[a]) for a in _axes(config, shape))
    return size * (2 + bool(config.get("scale", True)) + bool(config.get("center", True))), [shape]


def _layer_norm(config, inputs):
    shape = _one(inputs)
    size = _prod(_known_dim(shape[a]) for a in _axes(config, shape))
    rms = bool(config.get("rms_scaling", False))
    gamma = bool(config.get("scale", True)) or rms
    beta = bool(config.get("center", True)) and not rms
    return size * (gamma + beta), [shape]


def _group_norm(config, inputs):
    shape = _one(inputs)
    size = _prod(_known_dim(shape[a]) for a in _axes(config, shape))
    return size * (bool(config.get("scale", True)) + bool(config.get("center", True))), [shape]


def _normalization(config, inputs):
    """Keras' Normalization: adapted mean and variance are variables (kept axes' shape, and a count);
    a given mean and variance become constants broadcast to the kept axes while it is built."""
    shape = _one(inputs)
    kept = _axes(config, shape)
    size = _prod(_known_dim(shape[a]) for a in kept)
    if config.get("mean") is None:  # float mean and variance, and an int64 count
        return ArchSize(2 * size + 1, 2 * size * _variable_bytes(config.get("dtype")) + 8), [shape]
    return 0, [shape], 2 * 8 * size  # mean and variance, each converted and broadcast (float32, two copies)


def _prelu(config, inputs):
    shape = _one(inputs)
    dims = [_known_dim(d) for d in shape[1:]]
    shared = config.get("shared_axes") or []
    shared = shared if isinstance(shared, list) else [shared]
    for axis in shared:
        if type(axis) is not int or not 1 <= axis <= len(dims):
            raise NotClosedForm(f"shared_axes {shared!r}")
        dims[axis - 1] = 1
    return _prod(dims), [shape]


def _rnn(gates: int):
    def rule(config, inputs):
        shape = _one(inputs)
        if len(shape) != 3:
            raise NotClosedForm("a recurrent layer on a shape that is not (batch, time, features)")
        if config.get("stateful") or "cell" in config:
            raise NotClosedForm("a stateful recurrent layer or one with its own cell")
        units, fan_in = _known_dim(config.get("units")), _known_dim(shape[-1])
        bias = gates * units if config.get("use_bias", True) else 0
        if gates == 3 and config.get("reset_after", True) and bias:
            bias *= 2  # GRU with reset_after keeps an input and a recurrent bias
        params = gates * units * (fan_in + units) + bias
        output = (shape[0], shape[1], units) if config.get("return_sequences") else (shape[0], units)
        outputs = [output]
        if config.get("return_state"):
            outputs += [(shape[0], units)] * (2 if gates == 4 else 1)
        return params, outputs
    return rule


_RECURRENT = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}


def _inner(config: dict, key: str) -> dict:
    inner = config.get(key)
    if not isinstance(inner, dict) or inner.get("class_name") not in KNOWN_LAYERS or _is_model(inner):
        raise NotClosedForm(f"a wrapped {key} without a closed form")
    return inner


def _bidirectional(config, inputs):
    forward = _inner(config, "layer")
    if forward.get("class_name") not in _RECURRENT or _config(forward).get("return_state"):
        raise NotClosedForm("Bidirectional around something other than SimpleRNN, LSTM or GRU without state")
    backward = config.get("backward_layer")
    backward = forward if backward is None else _inner(config, "backward_layer")
    forward_size, forward_out = _known(forward, inputs)
    backward_size, backward_out = _known(backward, inputs)
    merge = config.get("merge_mode", "concat")
    a, b = forward_out[0], backward_out[0]
    if merge == "concat":
        out = [a[:-1] + (a[-1] + b[-1],)]
    elif merge in ("sum", "ave", "mul"):
        out = [a]
    elif merge is None:
        out = [a, b]
    else:
        raise NotClosedForm(f"merge_mode {merge!r}")
    return forward_size + backward_size, out


def _time_distributed(config, inputs):
    inner = _inner(config, "layer")
    shape = _one(inputs)
    if len(shape) < 3:
        raise NotClosedForm("TimeDistributed on a shape without a time axis")
    size, out = _known(inner, [(shape[0],) + shape[2:]])
    if len(out) != 1:
        raise NotClosedForm("TimeDistributed of a layer with several outputs")
    return size, [(shape[0], shape[1]) + out[0][1:]]


def _merge(config, inputs):
    if len(inputs) < 2:
        raise NotClosedForm("a merge layer with fewer than two inputs")
    rank = max(len(s) for s in inputs)
    result = []
    for position in range(1, rank + 1):
        dims = {s[-position] for s in inputs if len(s) >= position}
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            raise NotClosedForm("merge of shapes that do not broadcast")
        result.append(known.pop() if known else (1 if dims == {1} else None))
    return 0, [tuple(reversed(result))]


def _concatenate(config, inputs):
    if len(inputs) < 2 or len({len(s) for s in inputs}) != 1:
        raise NotClosedForm("Concatenate of fewer than two inputs or of different ranks")
    axis = _axis(config.get("axis", -1), len(inputs[0]))
    dims = [s[axis] for s in inputs]
    out = list(inputs[0])
    out[axis] = None if None in dims else sum(dims)
    return 0, [tuple(out)]


def _fixed_spatial(config, inputs):
    """Resizing and CenterCrop: the output's height and width are the layer's."""
    shape = _one(inputs)
    height, width = _known_dim(config.get("height")), _known_dim(config.get("width"))
    if len(shape) != 4:
        raise NotClosedForm("an image layer on a shape that is not (batch, height, width, channels)")
    last = _channels_last(config)
    return 0, [_join(shape[0], (height, width), shape[-1] if last else shape[1], last)]


KNOWN_LAYERS: dict[str, Callable] = {
    "Dense": _dense,
    "Embedding": _embedding,
    "BatchNormalization": _batch_norm,
    "LayerNormalization": _layer_norm,
    "GroupNormalization": _group_norm,
    "Normalization": _normalization,
    "PReLU": _prelu,
    "Bidirectional": _bidirectional,
    "TimeDistributed": _time_distributed,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Permute": _permute,
    "RepeatVector": _repeat_vector,
    "Concatenate": _concatenate,
    "Resizing": _fixed_spatial,
    "CenterCrop": _fixed_spatial,
    **{name: _rnn(gates) for name, gates in _RECURRENT.items()},
    **{name: _merge for name in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")},
    **{name: _same for name in (
        "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
        "SpatialDropout3D", "GaussianDropout", "GaussianNoise", "AlphaDropout", "ActivityRegularization",
        "Identity", "Masking", "Rescaling", "UnitNormalization")},
}
for _rank in (1, 2, 3):
    KNOWN_LAYERS.update({
        f"Conv{_rank}D": _conv(_rank),
        f"Conv{_rank}DTranspose": _transposed(_rank),
        f"MaxPooling{_rank}D": _pooling(_rank),
        f"AveragePooling{_rank}D": _pooling(_rank),
        f"GlobalMaxPooling{_rank}D": _global_pooling(_rank),
        f"GlobalAveragePooling{_rank}D": _global_pooling(_rank),
        f"ZeroPadding{_rank}D": _resize_spatial(_rank, "padding", 1, lambda n, a: n + a[0] + a[1]),
        f"Cropping{_rank}D": _resize_spatial(_rank, "cropping", 0, lambda n, a: n - a[0] - a[1]),
        f"UpSampling{_rank}D": _resize_spatial(_rank, "size", 2, lambda n, a: n * a[0]),
    })
for _rank in (1, 2):
    KNOWN_LAYERS.update({f"DepthwiseConv{_rank}D": _depthwise(_rank), f"SeparableConv{_rank}D": _separable(_rank)})
KNOWN_LAYERS["Convolution2D"] = KNOWN_LAYERS["Conv2D"]
