"""Importing Keras inside a backend, with its environment set first.

TensorFlow fixes its thread pools at its first op and refuses changes afterwards, and Keras writes
``~/.keras`` on first use (the server's home may not be writable), so both are settled here, before
anything else touches TensorFlow. Every madlib_dl module gets Keras through :func:`keras`.
"""

from __future__ import annotations

import os
import sys
import tempfile

from madlib_dl.errors import NotSupported

_threads: int | None = None


def _environment() -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out of the server log
    if "KERAS_HOME" not in os.environ:
        home = os.path.join(tempfile.gettempdir(), f"madlib_dl-keras-{os.getuid()}")
        os.makedirs(home, mode=0o700, exist_ok=True)
        os.environ["KERAS_HOME"] = home


def keras(threads: int | None = None):
    """The keras module, configured. ``threads`` sets TensorFlow's intra- and inter-op pools; it takes
    effect only before this backend's first TensorFlow op, so a different count later is an error."""
    global _threads
    if "tensorflow" not in sys.modules:
        _environment()
    import keras as keras_module
    import tensorflow as tf

    if threads and threads != _threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            raise NotSupported(
                f"TensorFlow already runs with {_threads or 'its default number of'} threads in this session; "
                f"{threads} threads can only be set before its first operation (use a new session)") from None
        _threads = threads
    return keras_module


def tensorflow():
    keras()
    import tensorflow as tf

    return tf
