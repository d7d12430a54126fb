"""What a segment backend keeps between the statements of one run, in PL/Python's GD dictionary.

* data: a segment's examples, decoded once (first hop) and reused by later hops when ``use_caching``;
* models: compiled Keras models reused across hops (rebuilding per hop costs ~10x per hop and leaks
  memory in TF 2.21), so a hop only loads its MST's state into one. Every hop loads the whole state
  (weights and optimizer variables, the learning rate among them), so MSTs whose architecture and
  compile parameters differ at most in the learning rate share one model and its traced loops: tracing
  is most of a first hop's cost (~0.2 s for an MLP, ~0.5 s for a small CNN) and would otherwise be paid
  once per MST in every worker;
* constants and tables: the run's models (architecture, compile and fit parameters) and packed tables,
  registered once per backend, so hops name a model by its mst_key;
* staged / pending / output: the call the next aggregate computes (with the model state it brought), the
  buffers its transition decoded, the state its final function left.

Everything is keyed by the run id: a store for another run is dropped, never served, so a later run in
the same session (or an in-process run after a failed one) cannot see earlier data.

Compiled models are the exception: they hold no run's data (every call loads its model's whole state,
weights and optimizer variables, before it trains or evaluates), so after a run the backend keeps up to
``KEEP_MODELS`` of them (at most ``KEEP_WEIGHT_BYTES`` of weights together) for the session's next call,
which then skips building, compiling and tracing them (most of a small evaluate), as predict keeps its
models. A run uses them only through a configuration of its own, made with a fresh optimizer's values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

GD_KEY = "madlib_dl_run"
MODELS_KEY = "madlib_dl_compiled_models"
KEEP_MODELS = 4
KEEP_WEIGHT_BYTES = 256 << 20


@dataclass
class SegmentData:
    x: Any  # float32 features, examples first (a tensor on TensorFlow's device once made ready);
    y: Any  # float32 one-hot labels. Each a list of them, one per variable, for several (multi-io)

    @property
    def images(self) -> int:
        return int(_arrays(self.x)[0].shape[0])

    @property
    def nbytes(self) -> int:
        return 4 * sum(int(np.prod(a.shape)) for a in _arrays(self.x) + _arrays(self.y))


def _arrays(side) -> list:
    return list(side) if isinstance(side, list) else [side]


@dataclass
class CompiledModel:
    model: Any
    loop: Any  # training_loop.Loop: the model's traced training and evaluation loops


@dataclass
class ConfiguredModel:
    """What a call with one (model_arch, compile_params) trains: a possibly shared compiled model and the
    optimizer state a fresh optimizer of exactly these compile parameters starts from."""
    compiled: CompiledModel
    initial_optimizer: list

    @property
    def model(self):
        return self.compiled.model

    @property
    def loop(self):
        return self.compiled.loop


@dataclass
class Pending:
    call: Any  # requests.Fit or requests.Evaluate
    x: list = field(default_factory=list)  # decoded buffers, until the final function concatenates them
    y: list = field(default_factory=list)
    buffers_read: int = 0


@dataclass
class RunStore:
    run_id: str
    data: dict = field(default_factory=dict)    # (kind, segment) -> SegmentData
    models: dict = field(default_factory=dict)   # (model_arch, compile parameters but the learning rate) -> CompiledModel
                                                 # (the backend's compiled_models, shared with later runs)
    configs: dict = field(default_factory=dict)  # (model_arch, compile_params) -> ConfiguredModel
    schema: str = ""                 # the extension's schema (where the aggregates are)
    constants: dict = field(default_factory=dict)  # mst_key -> requests.ModelConstants
    custom: dict = field(default_factory=dict)     # mst_key -> {name: custom_functions.CustomFunction}
    registered: set = field(default_factory=set)   # mst_keys whose callbacks and custom functions are checked here
    hops: dict = field(default_factory=dict)       # (mst_key, segment) -> hops trained here (TensorBoard's step)
    tables: dict = field(default_factory=dict)     # 'train', 'validation', 'test' -> requests.TableRef
    next_call_id: int = 0
    staged: tuple | None = None    # (call id, requests.Fit or Evaluate) for the next aggregate
    pending: Pending | None = None
    output: Any = None             # model_state.ModelState the last fit hop left


def compiled_models(gd: dict) -> dict:
    """The backend's compiled models, oldest use first."""
    return gd.setdefault(MODELS_KEY, {})


def run_store(gd: dict, run_id: str) -> RunStore:
    """This run's store; whatever another run left in this backend is dropped first."""
    store = gd.get(GD_KEY)
    if store is None or store.run_id != run_id:
        gd.pop(GD_KEY, None)
        store = gd[GD_KEY] = RunStore(run_id, models=compiled_models(gd))
    return store


def release(gd: dict, run_id: str | None = None) -> bool:
    """Drop the run's data and configurations (any run's when ``run_id`` is None), keeping the most
    recently used compiled models within the limits. True when a run was held."""
    store = gd.get(GD_KEY)
    if store is None or (run_id is not None and store.run_id != run_id):
        return False
    del gd[GD_KEY]
    _trim(compiled_models(gd))
    return True


def forget_models(gd: dict) -> None:
    gd.pop(MODELS_KEY, None)


def _trim(models: dict) -> None:
    kept, weight_bytes = 0, 0
    for key in reversed(list(models)):  # newest first
        size = sum(4 * int(np.prod(v.shape)) for v in models[key].model.weights)
        if kept < KEEP_MODELS and weight_bytes + size <= KEEP_WEIGHT_BYTES:
            kept, weight_bytes = kept + 1, weight_bytes + size
        else:
            del models[key]
