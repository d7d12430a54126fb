"""Keras callbacks in fit_params, as MADlib users write them: ``callbacks=[TensorBoard(log_dir='/tmp/tb')]``.

A hop is not a Keras ``fit``: it trains one model on one segment for a few epochs, in a loop of
madlib_dl's own (training_loop), and the model then moves on to another segment and another process.
Callbacks that act on one ``fit`` (stop it, change its learning rate, save its model, log its batches)
would act on a slice of a segment's training and mean nothing for the run, so they are refused, each
with its reason and what to use instead. TensorBoard is what makes sense per hop: each hop's loss and
metrics (and, with ``histogram_freq``, the weights' histograms) as one step of the model's log on that
segment, ``<log_dir>/mst_key_<k>/segment_<s>`` (step n: the model's n-th hop on the segment).

The text is parsed, never evaluated: a list of calls of known names with literal keyword arguments.
Writing files as the server's operating-system user takes the trust loading code does (a superuser or
a member of madlib_dl_code_loader); the training functions and every worker check it.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass

from madlib_dl.errors import InvalidArgument, NotSupported

EXAMPLE = "[TensorBoard(log_dir='/tmp/tensorboard')]"

# TensorBoard's arguments madlib_dl honours, with their types (update_freq: per hop, 'epoch' only).
TENSORBOARD_ARGUMENTS = {"log_dir": str, "histogram_freq": int, "update_freq": str, "write_graph": bool,
                         "write_images": bool, "write_steps_per_second": bool}

REFUSED = {
    "EarlyStopping": "a hop trains one segment for a few epochs, so patience over a fit's epochs means nothing for "
                     "the run; madlib_keras_automl stops configurations early (Hyperband, ASHA), or lower "
                     "num_iterations",
    "ReduceLROnPlateau": "a hop's epochs are a slice of one segment; use an optimizer learning-rate schedule "
                         "(decay) or compare learning rates with model selection",
    "LearningRateScheduler": "it takes a Python function; use the optimizer's decay argument",
    "LambdaCallback": "it takes Python functions, which fit_params cannot carry",
    "ModelCheckpoint": "madlib_dl checkpoints the whole run itself (madlib_dl.checkpoint_every, checkpoints.md)",
    "BackupAndRestore": "madlib_dl checkpoints the whole run itself (madlib_dl.checkpoint_every, checkpoints.md)",
    "CSVLogger": "every hop's loss is in madlib_dl.last_fit_hops() and the model's metrics in the output tables",
    "ProgbarLogger": "progress is in the fit_progress view (monitoring.md)",
    "RemoteMonitor": "progress is in the fit_progress view (monitoring.md)",
    "TerminateOnNaN": "a model whose loss turns NaN keeps NaN in its metrics; madlib_keras_automl drops such "
                      "configurations",
    "History": "the output tables hold every model's history",
}


@dataclass(frozen=True)
class TensorBoardSpec:
    log_dir: str
    histogram_freq: int = 0
    write_graph: bool = True        # accepted for MADlib's scripts; a hop's traced loop is not a graph to log
    write_images: bool = False      # likewise
    write_steps_per_second: bool = False
    update_freq: str = "epoch"


def parse(text: str, argument: str) -> tuple[TensorBoardSpec, ...]:
    """``[TensorBoard(log_dir='/tmp/tb')]`` -> (TensorBoardSpec, ...); ``[]`` -> ()."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise InvalidArgument(f"{argument}: expected a list of callbacks such as {EXAMPLE}, got {text.strip()!r}") from None
    if not isinstance(node, (ast.List, ast.Tuple)):
        raise InvalidArgument(f"{argument}: expected a list of callbacks such as {EXAMPLE}, got {text.strip()!r}")
    return tuple(_callback(element, argument) for element in node.elts)


def _callback(node, argument: str) -> TensorBoardSpec:
    if not (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))):
        raise InvalidArgument(f"{argument}: expected calls such as {EXAMPLE}, got {ast.unparse(node)!r}")
    name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr  # keras.callbacks.X -> X
    if name in REFUSED:
        raise NotSupported(f"{argument}: {name} cannot act per hop: {REFUSED[name]}")
    if name != "TensorBoard":
        raise InvalidArgument(f"{argument}: unknown callback {name!r}; TensorBoard is the one accepted")
    if node.args:
        raise InvalidArgument(f"{argument}: give TensorBoard's arguments as name=value, e.g. {EXAMPLE}")
    values = {}
    for keyword in node.keywords:
        values[keyword.arg] = _argument(keyword, argument)
    if "log_dir" not in values:
        raise InvalidArgument(f"{argument}: TensorBoard needs log_dir, a directory of the server, e.g. {EXAMPLE}")
    if not os.path.isabs(values["log_dir"]):
        raise InvalidArgument(f"{argument}: TensorBoard's log_dir must be an absolute path of the server, "
                              f"got {values['log_dir']!r}")
    if values.get("histogram_freq", 0) < 0:
        raise InvalidArgument(f"{argument}: TensorBoard's histogram_freq must be >= 0, got {values['histogram_freq']}")
    if values.get("update_freq", "epoch") != "epoch":
        raise NotSupported(f"{argument}: TensorBoard's update_freq must be 'epoch': a hop logs once, at its end, "
                           "as its model's step on the segment")
    return TensorBoardSpec(**values)


def _argument(keyword, argument: str):
    name = keyword.arg
    if name is None or name not in TENSORBOARD_ARGUMENTS:
        accepted = ", ".join(TENSORBOARD_ARGUMENTS)
        raise InvalidArgument(f"{argument}: TensorBoard argument {name or '**'!r} is not accepted; accepted: {accepted}")
    try:
        value = ast.literal_eval(keyword.value)
    except (ValueError, SyntaxError, TypeError):
        raise InvalidArgument(f"{argument}: TensorBoard's {name} must be a literal value") from None
    expected = TENSORBOARD_ARGUMENTS[name]
    if type(value) is not expected:
        raise InvalidArgument(f"{argument}: TensorBoard's {name} must be {expected.__name__}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------
# Writing a hop's step

_WRITERS: dict = {}  # directory -> tf.summary writer, kept for the process (one file per directory)


def log_hop(specs, mst_key: int, segment: int, step: int, logs: dict, model) -> None:
    """One hop's ``logs`` (name -> value) as step ``step`` of each TensorBoard's log of the model on the segment.

    Written with TensorFlow's own summary ops in TensorBoard's formats (its scalars and histograms
    plugins), so the server needs no tensorboard package: tf.summary.scalar lives in that package."""
    from madlib_dl.keras_runtime import tf_setup

    tf = tf_setup.tensorflow()
    for spec in specs:
        directory = os.path.join(spec.log_dir, f"mst_key_{mst_key}", f"segment_{segment}")
        writer = _WRITERS.get(directory)
        if writer is None:
            writer = _WRITERS[directory] = tf.summary.create_file_writer(directory)
        with writer.as_default(step=step):
            for name, value in logs.items():
                tf.summary.write(f"epoch_{name}", tf.constant(value, tf.float32), metadata=_metadata("scalars"))
            if spec.histogram_freq and step % spec.histogram_freq == 0:
                for weight in model.weights:
                    tf.summary.write(weight.path, _histogram(weight.numpy()), metadata=_metadata("histograms"))
        writer.flush()


def _metadata(plugin: str):
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))


def _histogram(values, buckets: int = 30):
    """TensorBoard's histogram tensor: one row (left edge, right edge, count) per bucket."""
    import numpy as np

    flat = np.asarray(values, dtype=np.float64).ravel()
    counts, edges = np.histogram(flat, bins=buckets) if flat.size else (np.zeros(0), np.zeros(1))
    return np.stack([edges[:-1], edges[1:], counts], axis=1).astype(np.float64)
