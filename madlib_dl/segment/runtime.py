"""The transition and final functions of the fit_step_multiple_model and internal_keras_evaluate
aggregates, and the worker's set-up and release calls. Runs inside the backend that serves a segment.

A run registers its models once (:func:`begin_run`); a hop's request, model state included, is staged
in GD (:func:`stage`) and the aggregate is called with data and keys only (run id, call id). One hop is
one aggregate over the segment's buffers (``ORDER BY buffer_id``): the transition decodes each buffer,
the final function trains (or evaluates) the model on the segment's examples and leaves its new state
in GD for :func:`take_output`. With ``use_caching`` the first call on a segment keeps the decoded
examples in GD and later calls pass NULL data (one row), so the table is read once per segment per
run. The last call of the run on a segment (``is_final_call``) drops that segment's cache.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import numpy as np

from madlib_dl import channel, db
from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import (builder, callbacks, interrupts, model_state, output_logs, params, serialization,
                                     tf_setup, training_loop)
from madlib_dl.preprocess import joined, packing
from madlib_dl.segment import hop_progress, process_memory, requests
from madlib_dl.segment import store as stores
from madlib_dl.segment.store import CompiledModel, ConfiguredModel, Pending, RunStore, SegmentData

EVALUATE_BATCH_SIZE = 256  # results do not depend on it (up to float rounding); memory and speed do


# ---------------------------------------------------------------------------------------------------
# Reading the segment's examples (transition) and finding them again (final)

def begin_run(gd: dict, run: requests.BeginRun) -> RunStore:
    """Register a run's tables and models in this backend (whatever another run left is dropped)."""
    store = stores.run_store(gd, run.run_id)
    store.schema, store.tables, store.constants = run.schema, dict(run.tables), dict(run.models)
    return store


def stage(gd: dict, call) -> int:
    """Hand a Fit or Evaluate request to the aggregate that runs next; returns the key the aggregate is
    called with. The request (model state included) stays here: it never travels as a SQL value."""
    store = begun(gd, call.run_id)
    if getattr(call, "constants", None) is not None:
        store.constants.setdefault(call.mst_key, call.constants)
    if call.mst_key not in store.constants:
        raise InvalidArgument(f"mst_key {call.mst_key}: not a model of run {call.run_id}")
    store.next_call_id += 1
    store.staged = (store.next_call_id, call)
    store.output = None
    return store.next_call_id


def take_output(gd: dict) -> model_state.ModelState | None:
    """The state the last fit hop left (and forget it)."""
    store = gd.get(stores.GD_KEY)
    if store is None:
        return None
    output, store.output = store.output, None
    return output


def begun(gd: dict, run_id: str) -> RunStore:
    """The store of a run begun here (an error for any other run)."""
    store = gd.get(stores.GD_KEY)
    if store is None or store.run_id != run_id:
        raise InvalidArgument(f"run {run_id}: not begun in this session")
    return store


def collect(gd: dict, state, dependent_var, independent_var, dependent_var_shape, independent_var_shape,
            run_id: str, call_id: int) -> int:
    """One row of the aggregate: take the staged call (first row) and decode the buffer, if any."""
    store = begun(gd, run_id)
    if state is None or store.pending is None:
        if store.staged is None or store.staged[0] != call_id:
            raise InvalidArgument(f"call {call_id}: no such call is staged for run {run_id}")
        store.pending, store.staged = Pending(store.staged[1]), None
    if independent_var is not None:
        table = store.tables.get(store.pending.call.table)  # None: a call made without BeginRun's tables
        store.pending.x.append(joined.decode(independent_var, independent_var_shape, packing.FEATURE_DTYPE,
                                             len(table.independents) if table else 1))
        store.pending.y.append(joined.decode(dependent_var, dependent_var_shape, packing.LABEL_DTYPE,
                                             len(table.dependents) if table else 1))
        store.pending.buffers_read += 1
    return (state or 0) + 1


def _take_pending(gd: dict, state) -> tuple[RunStore, Pending] | None:
    store = gd.get(stores.GD_KEY)
    if state is None or store is None or store.pending is None:
        return None  # the aggregate saw no rows
    pending, store.pending = store.pending, None
    return store, pending


def _segment_data(store: RunStore, pending: Pending) -> SegmentData:
    call = pending.call
    key = (call.kind, call.segment)
    if pending.x:
        x, y = _concatenated(pending.x), _concatenated(pending.y, np.float32)
        pending.x, pending.y = [], []  # the buffers are not needed past this point (memory)
        data = SegmentData(*training_loop.as_tensors(x, y))
        if call.use_caching:
            store.data[key] = data
    elif call.use_caching and key in store.data:
        data = store.data[key]
    else:
        raise InvalidArgument(f"segment {call.segment}: no {call.kind} examples were passed and none are cached "
                              f"for run {call.run_id}")
    if data.images != call.expected_images:
        raise InvalidArgument(
            f"segment {call.segment}: read {data.images} {call.kind} examples but the run counted "
            f"{call.expected_images}; the table changed during the run, or has changes not yet committed "
            "that background workers cannot see (commit first, or SET madlib_dl.executor = 'in_process')")
    return data


def _concatenated(buffers: list, dtype=None):
    """The buffers' examples as one array, or one per variable where a buffer holds several (multi-io)."""
    if isinstance(buffers[0], list):
        return [_concatenated([b[i] for b in buffers], dtype) for i in range(len(buffers[0]))]
    merged = np.concatenate(buffers)
    return merged if dtype is None else merged.astype(dtype)


def _release_segment(store: RunStore, segment: int) -> None:
    for key in [k for k in store.data if k[1] == segment]:
        del store.data[key]


# ---------------------------------------------------------------------------------------------------
# Models kept per MST

def _configured(store: RunStore, mst_key: int) -> ConfiguredModel:
    constants = store.constants[mst_key]
    model_arch, compile_params = constants.model_arch, constants.compile_params
    custom = store.custom.get(mst_key, {})
    # A custom function is part of the key by its bytes: the same name may hold other code in another run.
    functions = tuple(sorted((name, f.digest) for name, f in custom.items()))
    entry = store.configs.get((model_arch, compile_params, functions))
    if entry is None:
        parsed = params.parse_compile_params(compile_params, custom=frozenset(custom))
        key = (model_arch, _without_learning_rate(parsed), functions)
        compiled = store.models.pop(key, None)
        if compiled is None:
            model = builder.model_from_json(model_arch)
            builder.compile_model(model, parsed, {name: f.function for name, f in custom.items()})
            compiled = CompiledModel(model, training_loop.loop_for(model))
            initial = [_fresh_value(v) for v in model.optimizer.variables]
        else:  # the shared optimizer holds another MST's (or run's) state: take a fresh one's values
            optimizer = builder.make_optimizer(parsed.optimizer)
            optimizer.build(compiled.model.trainable_variables)
            initial = [_fresh_value(v) for v in optimizer.variables]
        store.models[key] = compiled  # the most recently used last (store.release keeps the newest)
        entry = store.configs[(model_arch, compile_params, functions)] = ConfiguredModel(compiled, initial)
    return entry


@dataclass(frozen=True)
class Filled:
    """A fresh optimizer variable that holds one value everywhere (Adam's zero moments, Adagrad's initial
    accumulator): kept as that value, not as an array the size of the model."""
    value: object


def _fresh_value(variable):
    ops = tf_setup.keras().ops
    flat = ops.reshape(variable, (-1,))
    if flat.shape[0] > 1 and bool(ops.all(ops.equal(flat, flat[0]))):  # compared in TF: no copy of the variable
        return Filled(ops.convert_to_numpy(flat[0]))
    return variable.numpy()


def _assign_fresh(variable, value) -> None:
    if isinstance(value, Filled):
        variable.assign(tf_setup.keras().ops.full(tuple(variable.shape), value.value, dtype=variable.dtype))
    else:
        variable.assign(value)


def _without_learning_rate(parsed: params.CompileParams) -> str:
    """The compile parameters as a key, the learning rate left out when it is a number: it lives in an
    optimizer variable (loaded with the state every hop), while other hyper-parameters are constants
    in the traced graph."""
    kwargs = {k: v for k, v in parsed.optimizer.kwargs.items()
              if not (k == "learning_rate" and isinstance(v, (int, float)))}
    return repr(replace(parsed, optimizer=replace(parsed.optimizer, kwargs=kwargs)))


def initial_weights(model_arch: str, seed: int) -> list[np.ndarray]:
    """Weights of a freshly built model under ``seed``: the same architecture and seed give the same
    weights in every backend."""
    tf_setup.keras().utils.set_random_seed(seed)
    return builder.model_from_json(model_arch).get_weights()


def _load_state(entry: ConfiguredModel, call: requests.Fit) -> None:
    if not call.weights:  # the driver always sends them; a direct call must too
        raise InvalidArgument("model_weights: expected the model's weights (MADlib's format), got NULL")
    if call.optimizer_state is None:
        model_state.set_weights(entry.model, call.weights)
        for variable, value in zip(entry.model.optimizer.variables, entry.initial_optimizer):
            _assign_fresh(variable, value)
    else:
        model_state.set_state(entry.model, model_state.ModelState(call.weights, call.optimizer_state))


def _result(pending: Pending, data: SegmentData, started: float, seconds: float, **values) -> dict:
    used = process_memory.current()
    return {"loss": None, "metric": None, "output_losses": None, "output_metrics": None,
            "images": data.images, "buffers_read": pending.buffers_read, "seconds": seconds,
            "started": started, "ended": started + seconds, "pid": os.getpid(),
            "rss_bytes": used and used.rss, "peak_rss_bytes": used and used.peak,
            "shared_rss_bytes": used and used.shared, **values}


# ---------------------------------------------------------------------------------------------------
# The SQL entry points

@db.sql_function
def fit_transition(gd, state, dependent_var, independent_var, dependent_var_shape, independent_var_shape,
                   run_id, call_id) -> int:
    return collect(gd, state, dependent_var, independent_var, dependent_var_shape, independent_var_shape, run_id,
                   call_id)


def _final_call(gd, state):
    """What a final function works on: (store, pending call, examples, compiled model); None for no rows."""
    taken = _take_pending(gd, state)
    if taken is None:
        return None
    store, pending = taken
    return store, pending, _segment_data(store, pending), _configured(store, pending.call.mst_key)


@db.sql_function
def fit_final(gd, state) -> dict | None:
    prepared = _final_call(gd, state)
    if prepared is None:
        return None
    store, pending, data, entry = prepared
    call: requests.Fit = pending.call
    _load_state(entry, call)
    training_loop.seed_layers(entry.model, call.seed)
    fit = params.parse_fit_params(store.constants[call.mst_key].fit_params)
    started, clock = time.time(), time.perf_counter()
    logs = train(entry, data, fit, call.seed)
    seconds = time.perf_counter() - clock
    if fit.callbacks:
        _log_hop(store, call, fit, logs, entry.model)
    spare = model_state.ModelState(call.weights, call.optimizer_state) if call.overwrite_state else None
    store.output = model_state.get_state(entry.model, allocate=channel.allocate, reuse=spare)
    if call.is_final_call:
        _release_segment(store, call.segment)
    return _result(pending, data, started, seconds, **output_logs.hop_values(logs, output_logs.output_names(entry.model)))


def _log_hop(store: RunStore, call: requests.Fit, fit: params.FitParams, logs: dict, model) -> None:
    """The hop's loss and metrics as the next step of the model's TensorBoard log on this segment."""
    key = (call.mst_key, call.segment)
    store.hops[key] = step = store.hops.get(key, 0) + 1
    if len(model.outputs) < 2:  # named as compile_params names the metrics
        constants = store.constants[call.mst_key]
        names = ["loss", *params.parse_compile_params(
            constants.compile_params, custom=frozenset(store.custom.get(call.mst_key, {}))).metrics]
        logs = dict(zip(names, logs.values()))
    callbacks.log_hop(fit.callbacks, call.mst_key, call.segment, step, logs, model)


def train(entry: ConfiguredModel, data: SegmentData, fit: params.FitParams, seed: int) -> dict:
    """One hop's training: training_loop's passes, or Keras' fit for the options that loop does not
    have (class_weight, steps_per_epoch). Returns the last epoch's loss and metrics by name (``loss``
    first) as fit reports them (running means over the epoch's batches); {} when there was no epoch."""
    if fit.class_weight is not None or fit.steps_per_epoch is not None:
        report = hop_progress.reporter("train")
        size = fit.batch_size or params.DEFAULT_BATCH_SIZE  # Keras' fit says batches only: batch_size examples each
        per_batch = None if report is None else (lambda done, total: report(done, total, done * size))
        history = entry.model.fit(data.x, data.y, callbacks=[interrupts.callback(report=per_batch)],
                                  **fit.keras_kwargs())
        logs = {name: values[-1] for name, values in history.history.items() if values}
        return {"loss": logs.pop("loss", float("nan")), **logs} if logs else {}
    epochs = fit.epochs - fit.initial_epoch
    if epochs <= 0:
        return {}
    return training_loop.train_logs(entry.loop, data.x, data.y, fit.batch_size or params.DEFAULT_BATCH_SIZE, epochs,
                                    fit.shuffle, seed, interrupts.server_check(), hop_progress.reporter("train"))


@db.sql_function
def evaluate_transition(gd, state, dependent_var, independent_var, dependent_var_shape, independent_var_shape,
                        run_id, call_id) -> int:
    return collect(gd, state, dependent_var, independent_var, dependent_var_shape, independent_var_shape, run_id,
                   call_id)


@db.sql_function
def evaluate_final(gd, state) -> dict | None:
    prepared = _final_call(gd, state)
    if prepared is None:
        return None
    store, pending, data, entry = prepared
    call: requests.Evaluate = pending.call
    model_state.set_weights(entry.model, call.weights)
    started, clock = time.time(), time.perf_counter()
    logs = training_loop.evaluate_logs(entry.loop, data.x, data.y, EVALUATE_BATCH_SIZE, interrupts.server_check(),
                                       hop_progress.reporter("evaluate"))
    seconds = time.perf_counter() - clock
    if call.is_final_call:
        _release_segment(store, call.segment)
    return _result(pending, data, started, seconds, **output_logs.hop_values(logs, output_logs.output_names(entry.model)))


@db.sql_function
def worker_init(gd, threads: int | None, cuda_visible_devices: str | None, memory_limit_mib: int | None,
                worker_session: bool = False) -> int:
    """Set up this backend before TensorFlow starts: which GPU it sees, its memory cap, its thread count
    (``worker_session``: a background worker the driver started, see tf_setup.keras). Drops whatever
    a run left here. Returns the backend's pid."""
    stores.release(gd)
    stores.forget_models(gd)
    if cuda_visible_devices is not None:
        current = os.environ.get("CUDA_VISIBLE_DEVICES")
        if tf_setup.started() and current != cuda_visible_devices:
            raise InvalidArgument(f"use_gpus: TensorFlow already runs in this session with CUDA_VISIBLE_DEVICES="
                                  f"{current!r}; a worker needs a fresh session")
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # nvidia-smi's numbering, which placement uses
    tf_setup.keras(threads=threads or None, worker_session=bool(worker_session))
    if memory_limit_mib:
        tf_setup.limit_gpu_memory(memory_limit_mib)
    return os.getpid()


@db.sql_function
def release(gd, run_id: str | None) -> bool:
    return stores.release(gd, run_id)


def initial_model_weights(model_arch: str, seed: int) -> bytes:
    """The weights a run starts the model from: the same architecture and seed give the same weights.
    Computed once per model (by the driver, before the first hop): seeding resets TensorFlow's global
    seed, which clears its kernel caches, so doing it in a worker mid-run slows every traced loop's next call."""
    return serialization.serialize_weights(initial_weights(model_arch, seed))
