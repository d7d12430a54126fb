"""Custom metrics madlib_dl itself provides for object tables (load_top_k_accuracy_function).

They are pickled by reference (this module and class), so the object table holds no code of its own:
loading one imports madlib_dl's, whatever version the server runs.
"""

from __future__ import annotations

from madlib_dl.keras_runtime import tf_setup


class TopKAccuracy:
    """Top-k categorical accuracy for one k, named ``top_<k>_accuracy`` as MADlib names it."""

    def __init__(self, k: int):
        self.k = int(k)
        self.__name__ = f"top_{self.k}_accuracy"

    def __call__(self, y_true, y_pred):
        return tf_setup.keras().metrics.top_k_categorical_accuracy(y_true, y_pred, k=self.k)
