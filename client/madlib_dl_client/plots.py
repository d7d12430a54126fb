"""Figures of a training run's ``_info`` table, as ``Client.info`` reads it: learning curves, and for an
automl run which configurations were stopped where. Each is a ``matplotlib.figure.Figure``, which needs
no GUI backend: a notebook shows it, a script saves it with ``fig.savefig``.

Lines are labelled by ``mst_key``, ``model_id`` (with the architecture's name where the architecture
table has one) and only the compile and fit parameters that differ between the plotted configurations;
axes are named after the run's loss and metric (``loss_type``, ``metrics_type``); the figure's title
names the model output table (``info.attrs["model_output_table"]``, set by ``Client.info``)."""

from __future__ import annotations

import re

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

X_AXES = {"iteration": "iteration", "elapsed": "elapsed (s)"}
LOSSES = ("training_loss", "validation_loss")
METRICS = ("training_metric", "validation_metric")
# Colours of the lines, one per configuration (tab10, then tab20's lighter halves).
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5"]
STOPPED_COLOUR = "#9a9a9a"
STOP_MARKER = dict(marker="X", markersize=8, color="#c0392b", markeredgecolor="white", markeredgewidth=0.6,
                   linestyle="none")


def plot_learning_curves(info: pd.DataFrame, x: str = "iteration", metrics=LOSSES, label_width: int = 80,
                         title: str | None = None) -> Figure:
    """One axes per metric of ``Client.info``'s frame, one line per mst_key, against the metrics
    iteration or the elapsed seconds; the legend, to the right of the axes, names each configuration.
    A metric with no value at all (no validation table) gets no axes. ``title``: the figure's title
    (default: the model output table's name, when the frame knows it)."""
    if x not in X_AXES:
        raise ValueError(f"x: expected one of {', '.join(X_AXES)}, got {x!r}")
    missing = [name for name in (x, "mst_key", *metrics) if name not in info.columns]
    if missing:
        raise ValueError(f"info: no column {', '.join(missing)}")
    shown = [metric for metric in metrics if info[metric].notna().any()]
    if not shown:
        raise ValueError(f"info: no values in {', '.join(metrics)}")
    labels = config_labels(info, label_width)
    colours = {key: COLOURS[n % len(COLOURS)] for n, key in enumerate(labels)}
    figure = Figure(figsize=(4.4 * len(shown) + _legend_inches(labels.values()), 4), layout="constrained")
    for axes, metric in zip(figure.subplots(1, len(shown), squeeze=False)[0], shown):
        for mst_key, model in info.sort_values(["mst_key", x]).groupby("mst_key", sort=True):
            axes.plot(model[x].to_numpy(), model[metric].to_numpy(), marker="o", markersize=3, linewidth=1.5,
                      color=colours[mst_key], label=labels[mst_key])
        axes.set(title=metric_title(info, metric), xlabel=X_AXES[x], ylabel=metric_axis_label(info, metric))
        if x == "iteration":
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    figure.legend(*figure.axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small",
                  title="configuration", title_fontsize="small", frameon=False)
    figure.suptitle(title if title is not None else _title(info, "learning curves"))
    return figure


def plot_automl(info: pd.DataFrame, metric: str | None = None, label_width: int = 80,
                title: str | None = None) -> Figure:
    """An automl run (``Client.info`` of madlib_keras_automl's output table): each configuration's
    ``metric`` (default: the validation loss, else the training loss) against the iteration, one axes
    per Hyperband bracket (``s``). Configurations that trained their whole budget are coloured and
    named in the legend; stopped ones are grey, with a red cross where they stopped."""
    if "automl_status" not in info.columns or not info["automl_status"].notna().any():
        raise ValueError("info: no automl_status: not the _info table of a madlib_keras_automl run")
    if metric is None:
        metric = next((m for m in LOSSES[::-1] if m in info.columns and info[m].notna().any()), "validation_loss")
    if metric not in info.columns or not info[metric].notna().any():
        raise ValueError(f"info: no values in {metric}")
    labels = config_labels(info, label_width)
    survivors = [key for key in labels if _status(info, key) != "stopped"]
    colours = {key: COLOURS[n % len(COLOURS)] for n, key in enumerate(survivors)}
    brackets = (sorted(info["s"].dropna().unique(), reverse=True)
                if "s" in info.columns and info["s"].notna().any() else [None])
    legend = [labels[key] for key in survivors] + ["stopped (× where it stopped)"]
    figure = Figure(figsize=(4.2 * len(brackets) + _legend_inches(legend), 4), layout="constrained")
    grid = figure.subplots(1, len(brackets), squeeze=False, sharey=True)[0]
    for axes, bracket in zip(grid, brackets):
        part = info if bracket is None else info[info["s"] == bracket]
        for mst_key, model in part.sort_values(["mst_key", "iteration"]).groupby("mst_key", sort=True):
            model = model[model[metric].notna()]
            xs, ys = model["iteration"].to_numpy(), model[metric].to_numpy()
            if not len(xs):
                continue
            if mst_key in colours:
                axes.plot(xs, ys, marker="o", markersize=4, linewidth=2.2, color=colours[mst_key],
                          label=labels[mst_key], zorder=3)
            else:
                axes.plot(xs, ys, marker=".", markersize=4, linewidth=1, color=STOPPED_COLOUR, alpha=0.8,
                          label="_stopped", zorder=2)
                axes.plot(xs[-1:], ys[-1:], gid=f"stopped mst_key {mst_key}", label="_stop", zorder=4, **STOP_MARKER)
        stopped = sum(_status(part, key) == "stopped" for key in part["mst_key"].unique())
        where = "" if bracket is None else f"bracket s={int(bracket)}: "
        axes.set(title=f"{where}{part['mst_key'].nunique()} configurations, {stopped} stopped", xlabel="iteration",
                 ylabel=metric_axis_label(info, metric) if axes is grid[0] else "")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.title.set_fontsize("medium")
    handles = [Line2D([], [], color=colours[key], linewidth=2.2, marker="o", markersize=4) for key in survivors]
    handles.append(Line2D([], [], **{**STOP_MARKER, "color": STOPPED_COLOUR, "markerfacecolor": STOP_MARKER["color"],
                                     "linestyle": "-", "linewidth": 1}))
    figure.legend(handles, legend, loc="outside right upper", fontsize="small", frameon=False,
                  title="trained to the end", title_fontsize="small")
    method = info.attrs.get("automl_method")
    figure.suptitle(title if title is not None else _title(
        info, f"{metric_title(info, metric)} of each {method + ' ' if method else ''}configuration"))
    return figure


# -- labels ------------------------------------------------------------------------------------------

def config_labels(info: pd.DataFrame, width: int = 80) -> dict:
    """``{mst_key: "mst_key N: model_id M (name)\\nkey=value, ..."}``: the model, then the parameters
    (compile_params and fit_params) that differ between the frame's configurations, each line cut to
    ``width`` characters."""
    rows = info.drop_duplicates("mst_key").sort_values("mst_key").to_dict("records")  # keeps each column's type
    params = {row["mst_key"]: {**parse_params(row.get("compile_params")), **parse_params(row.get("fit_params"))}
              for row in rows}
    names = list(dict.fromkeys(name for p in params.values() for name in p))
    varying = [name for name in names if len({p.get(name) for p in params.values()}) > 1]
    labels = {}
    for row in rows:
        text = f"mst_key {row['mst_key']}"
        model_id = row.get("model_id")
        if model_id is not None and not pd.isna(model_id):
            arch = row.get("arch_name")
            text += f": model_id {int(model_id)}" + (f" ({arch})" if isinstance(arch, str) and arch else "")
        shown = ", ".join(f"{name}={params[row['mst_key']][name]}" for name in varying
                          if name in params[row["mst_key"]])
        labels[row["mst_key"]] = "\n".join(_cut(line, width) for line in (text, shown) if line)
    return labels


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def parse_params(text) -> dict:
    """``"a=1, b='x(y=2, z=3)'"`` -> ``{"a": "1", "b": "x(y=2, z=3)"}``: split at the commas outside
    quotes and brackets, quotes around a value dropped, long decimals shortened to 4 significant digits."""
    params = {}
    for part in split_top_level(text if isinstance(text, str) else ""):
        name, sep, value = part.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        params[name.strip()] = re.sub(r"\d*\.\d{5,}(?:[eE][-+]?\d+)?", lambda m: f"{float(m.group()):.4g}", value)
    return params


def split_top_level(text: str) -> list[str]:
    """``text`` split at the commas that are outside quotes and brackets, parts stripped, empty ones left out."""
    parts, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def metric_title(info: pd.DataFrame, column: str) -> str:
    """``training_metric`` -> ``training accuracy`` (the run's metrics_type), ``validation_loss`` ->
    ``validation loss``; other columns with their underscores as spaces."""
    for kind in ("training", "validation"):
        if column == f"{kind}_metric":
            return f"{kind} {_names(info, 'metric_name') or 'metric'}"
    return column.replace("_", " ")


def metric_axis_label(info: pd.DataFrame, column: str) -> str:
    """The y axis: the metric's name, or ``loss (<loss_type>)``."""
    if column in LOSSES:
        loss = _names(info, "loss_name")
        return f"loss ({loss})" if loss else "loss"
    if column in METRICS:
        return _names(info, "metric_name") or "metric"
    return column


def _names(info: pd.DataFrame, column: str) -> str:
    if column not in info.columns:
        return ""
    return " / ".join(dict.fromkeys(str(v) for v in info[column].dropna() if str(v)))


def _title(info: pd.DataFrame, what: str) -> str:
    table = info.attrs.get("model_output_table")
    return f"{table}: {what}" if table else what


def _status(info: pd.DataFrame, mst_key) -> str | None:
    values = info.loc[info["mst_key"] == mst_key, "automl_status"].dropna()
    return values.iloc[0] if len(values) else None


def _legend_inches(labels) -> float:
    """Room for a legend of ``labels`` at the right (small font: about 0.075 in a character)."""
    return 0.5 + 0.075 * max((len(line) for label in labels for line in label.split("\n")), default=0)
