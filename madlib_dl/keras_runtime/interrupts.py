"""Letting a backend notice cancel requests while Keras trains.

``model.fit`` runs TensorFlow's loop without returning to PostgreSQL, so ``pg_cancel_backend``,
``statement_timeout`` and a closing client would wait for the whole fit. Any SPI call lets the server
process a pending interrupt (it raises the cancel as a Python exception out of ``fit``), so a callback
makes a trivial query between batches, at most every ``interval`` seconds to keep its cost negligible.
"""

from __future__ import annotations

import time


_extra_checks: list = []  # more checks made with the server's (see also_check)


def server_check():
    """The check to use inside a backend; None in a client process (nothing to notice there)."""
    try:
        import plpy
    except ImportError:
        return None

    def check():
        plpy.execute("SELECT 1")
        for extra in _extra_checks:
            extra()

    return check


def also_check(check) -> None:
    """Make ``check`` part of every server check in this process from now on (a background worker
    checks that its driver is still there: it raises when not)."""
    if check not in _extra_checks:
        _extra_checks.append(check)


_callback_class = None


def _callback_class_for(keras):
    global _callback_class
    if _callback_class is None:
        class InterruptCheck(keras.callbacks.Callback):
            def __init__(self, check, interval, report):
                super().__init__()
                self._check, self._interval, self._last = check, interval, time.monotonic()
                self._report, self._epoch, self._first = report, 0, None

            def _maybe_check(self, batch=None, logs=None):
                now = time.monotonic()
                if self._check is not None and now - self._last >= self._interval:
                    self._last = now
                    self._check()

            def on_epoch_begin(self, epoch, logs=None):
                self._first = epoch if self._first is None else self._first  # fit's initial_epoch
                self._epoch = epoch - self._first

            def on_train_batch_end(self, batch, logs=None):
                self._maybe_check()
                steps, epochs = (self.params or {}).get("steps"), (self.params or {}).get("epochs")
                if self._report is not None and steps and epochs:
                    self._report(self._epoch * steps + batch + 1, (epochs - (self._first or 0)) * steps)

            on_test_batch_end = _maybe_check
            on_predict_batch_end = _maybe_check

        _callback_class = InterruptCheck
    return _callback_class


def callback(check=None, interval: float = 0.05, report=None):
    """A Keras callback that calls ``check`` (default: a trivial SPI query) between batches of training,
    evaluation and prediction, at most every ``interval`` seconds; and ``report(batches done, batches in
    all)`` after every training batch (a hop's progress)."""
    from madlib_dl.keras_runtime import tf_setup

    return _callback_class_for(tf_setup.keras())(check or server_check(), interval, report)
