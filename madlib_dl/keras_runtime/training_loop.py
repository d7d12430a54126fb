"""Training passes and evaluations over examples already in memory, without Keras' fit/evaluate
machinery.

Why: a hop is one short call on a segment, and Keras' ``fit``/``evaluate`` set up a tf.data pipeline,
callbacks and progress logging on every call. Measured on this project's 2-core machines (1 TF thread,
900 digits examples, batch 32): ``fit`` 51–88 ms per call, ``evaluate`` 49 ms, while the model's own
steps need ~3 ms; tf.data also runs threads beyond the configured TF thread count, so parallel workers
slow each other down. Here the model's own ``train_step``/``test_step`` (its loss, optimizer and
metrics: the math is Keras') run in a TensorFlow loop over batches gathered from the examples.

Semantics, as ``fit(x, y, batch_size, epochs, shuffle)`` on arrays: each epoch visits every example once
in batches of ``batch_size`` (the last one smaller), in the order of a permutation (``shuffle``) or in
order; the loss reported is the last epoch's mean over examples. Permutations come from
``numpy.random.default_rng(seed)``: epoch ``e`` uses the generator's ``e``-th permutation, so a hop
replays exactly as ``fit(x[p], y[p], shuffle=False)`` with those permutations.

The loop returns to Python every ``CHUNK_SECONDS`` or so, where ``check`` runs (a trivial SPI query in a
backend, so a cancel is seen during a long pass)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from madlib_dl.keras_runtime import tf_setup

CHUNK_SECONDS = 0.05  # how long the TensorFlow loop runs before Python checks for a cancel


@dataclass
class Loop:
    """The compiled loops of one model (traced on first use, reused by every later hop)."""
    model: object
    train_steps: object
    test_steps: object
    traced: set = field(default_factory=set)         # kinds whose first call (with tracing) is done
    step_seconds: dict = field(default_factory=dict)  # kind -> seconds per batch, measured


def _steps_function(model, step):
    """A tf.function running ``step`` on batches ``start``..``stop``-1 of ``order``; returns the model's
    metrics after the last one (means since the last ``reset_metrics``).

    One function, an explicit while_loop and no AutoGraph: tracing costs ~25% less than a nested
    tf.function converted by AutoGraph (measured: 195 vs 250 ms per MLP on this project's machines),
    and Keras 3's own steps need no AutoGraph (they are written to trace under JAX, which has none)."""
    tf = tf_setup.tensorflow()
    if getattr(model, "jit_compile", False):  # Keras chose XLA (on a GPU): compile the step, not the loop,
        step = tf.function(step, jit_compile=True, autograph=False, reduce_retracing=True)  # whose shapes vary

    def steps(x, y, order, start, stop, batch_size):
        def one_batch(batch):
            index = order[batch * batch_size:(batch + 1) * batch_size]
            step(tf.nest.map_structure(lambda t: tf.gather(t, index), (x, y)))
            return (batch + 1,)

        tf.while_loop(lambda batch: batch < stop, one_batch, (start,))
        return model.get_metrics_result()

    return tf.function(steps, autograph=False, reduce_retracing=True)


def loop_for(model) -> Loop:
    return Loop(model, _steps_function(model, model.train_step), _steps_function(model, model.test_step))


def as_tensors(x, y):
    """The examples as tensors on TensorFlow's default device (done once per cached segment); x and y
    are arrays, or lists of them for a model with several inputs or outputs."""
    tf = tf_setup.tensorflow()
    return tf.nest.map_structure(tf.convert_to_tensor, (x, y))


def examples(x) -> int:
    """How many examples ``x`` (an array, or a list of them, one per input) holds."""
    return int(tf_setup.tensorflow().nest.flatten(x)[0].shape[0])


def _chunk(loop: Loop, kind: str, left: int) -> int:
    """How many batches to run before Python checks for a cancel: one until a step has been timed
    (the first call also traces), then about CHUNK_SECONDS' worth."""
    per_step = loop.step_seconds.get(kind)
    return 1 if per_step is None else max(1, min(left, int(CHUNK_SECONDS / per_step)))


def _run_batches(loop: Loop, kind: str, x, y, order, batches: int, batch_size: int, check, done_chunk=None) -> dict:
    """All batches of one pass; the model's metrics after the last batch. ``done_chunk(batches done)``
    after every chunk (progress reports)."""
    tf = tf_setup.tensorflow()
    steps = loop.train_steps if kind == "train" else loop.test_steps
    order, size = tf.convert_to_tensor(order, dtype=tf.int64), tf.constant(batch_size, dtype=tf.int64)
    done, logs = 0, {}
    while done < batches:
        chunk = _chunk(loop, kind, batches - done)
        started = time.perf_counter()
        logs = steps(x, y, order, tf.constant(done, tf.int64), tf.constant(done + chunk, tf.int64), size)
        if kind in loop.traced:
            loop.step_seconds[kind] = max((time.perf_counter() - started) / chunk, 1e-6)
        loop.traced.add(kind)
        done += chunk
        if check is not None:
            check()
        if done_chunk is not None:
            done_chunk(done)
    return {k: float(v) for k, v in logs.items()}


def seed_layers(model, seed: int) -> None:
    """Seed the model's own random layers (Dropout, GaussianNoise...: their SeedGenerator states) from
    ``seed``, so what they draw in a pass depends on the seed only, not on which process ran earlier
    passes. Not ``keras.utils.set_random_seed``: resetting TensorFlow's global seed clears its kernel
    caches, and the next call of a traced loop re-instantiates it (~70 ms instead of ~3 ms per hop)."""
    generators = [v for v in model.non_trainable_variables if v.name == "seed_generator_state"]
    if generators:
        starts = np.random.default_rng(seed % (2**64)).integers(0, 2**31, len(generators))
        for variable, start in zip(generators, starts):
            variable.assign(np.array([start, 0], dtype=variable.dtype))


def train(loop: Loop, x, y, batch_size: int, epochs: int, shuffle: bool, seed: int, check=None) -> list[float]:
    """``epochs`` passes over (x, y); [loss, compiled metrics...] as Keras' ``fit`` reports the last epoch
    (its running means over the epoch's batches, the order ``evaluate`` returns them; NaN when it diverged)."""
    return _as_list(train_logs(loop, x, y, batch_size, epochs, shuffle, seed, check))


def train_logs(loop: Loop, x, y, batch_size: int, epochs: int, shuffle: bool, seed: int, check=None,
               report=None) -> dict:
    """As :func:`train`, by the names Keras gives them (``loss`` first; per output for several).
    ``report(batches done, batches in all, examples done)``: called as batches finish (the hop's progress)."""
    n = examples(x)
    batches = -(-n // batch_size)
    permutations = np.random.default_rng(seed % (2**64))
    logs: dict = {}
    for epoch in range(epochs):
        order = permutations.permutation(n) if shuffle else np.arange(n)
        loop.model.reset_metrics()
        logs = _run_batches(loop, "train", x, y, order, batches, batch_size, check,
                            _progress(report, epoch, batches, epochs, n, batch_size))
    return _with_loss_first(logs)


def _progress(report, epoch: int, batches: int, epochs: int, n: int, batch_size: int):
    """``report`` as a pass's ``done_chunk``: batches and examples counted over the hop's epochs."""
    if report is None:
        return None
    return lambda done: report(epoch * batches + done, epochs * batches, epoch * n + min(done * batch_size, n))


def _with_loss_first(logs: dict) -> dict:
    return {"loss": logs.get("loss", float("nan")), **{k: v for k, v in logs.items() if k != "loss"}}


def _as_list(logs: dict) -> list[float]:
    return list(_with_loss_first(logs).values())


def evaluate(loop: Loop, x, y, batch_size: int, check=None) -> list[float]:
    """[loss, compiled metrics...] over (x, y), in the order ``evaluate`` returns them."""
    return _as_list(evaluate_logs(loop, x, y, batch_size, check))


def evaluate_logs(loop: Loop, x, y, batch_size: int, check=None, report=None) -> dict:
    """As :func:`evaluate`, by the names Keras gives them (``report``: as train_logs')."""
    n = examples(x)
    batches = -(-n // batch_size)
    loop.model.reset_metrics()
    return _with_loss_first(_run_batches(loop, "test", x, y, np.arange(n), batches, batch_size, check,
                                         _progress(report, 0, batches, 1, n, batch_size)))
