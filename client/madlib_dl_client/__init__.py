"""The notebook client of madlib_dl (the ``madlib-dl-client`` distribution: ``pip install ./client`` from
a checkout): run training calls from Python with a live progress bar, read the output tables as pandas
DataFrames, plot learning curves and which configurations an automl run stopped. It runs on the user's
machine and talks to the server over libpq; it needs psycopg2, pandas, matplotlib and tqdm, and never
imports the server package (madlib_dl), TensorFlow or Keras.

``Client``, ``plot_learning_curves`` and ``plot_automl`` are loaded on first use, so that the
``madlib-dl`` command starts without pandas and matplotlib."""

from __future__ import annotations

__version__ = "0.2.0"  # madlib_dl's version it was released with (tests/unit/test_client_package.py)

__all__ = ["Client", "plot_automl", "plot_learning_curves", "__version__"]


def __getattr__(name: str):
    if name in ("Client", "plot_automl", "plot_learning_curves"):
        from madlib_dl_client import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
