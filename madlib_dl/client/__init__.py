"""The notebook client (``pip install 'madlib_dl[client]'``): run training calls from Python with a live
progress bar, read the output tables as pandas DataFrames, plot learning curves. It runs on the user's
machine and talks to the server over libpq; the server never imports it (pandas, matplotlib and tqdm
are not among the server's packages)."""

from madlib_dl.client.notebook import Client, plot_learning_curves

__all__ = ["Client", "plot_learning_curves"]
