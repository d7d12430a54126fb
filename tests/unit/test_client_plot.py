"""plot_learning_curves draws what Client.info's frame holds: one axes per metric, one line per model
with its own iterations (or elapsed seconds) and values, labelled by its configuration; and the
client's small helpers (the long form of an _info row, the progress bar's position)."""

import io
import math
from types import SimpleNamespace

import pandas as pd
import pytest

from madlib_dl_client import notebook, plot_learning_curves

COMPILE = {1: "loss='categorical_crossentropy', optimizer='Adam(learning_rate=0.01)', metrics=['accuracy']",
           2: "loss='categorical_crossentropy', optimizer='SGD(learning_rate=0.1)', metrics=['accuracy']"}


def _info() -> pd.DataFrame:
    rows = []
    for mst_key in (1, 2):
        for i, iteration in enumerate((1, 2, 3)):
            rows.append([mst_key, 1, COMPILE[mst_key], "batch_size=8, epochs=6", iteration,
                         1.0 / (iteration + mst_key), 0.5 + 0.1 * i, 2.0 / (iteration + mst_key), 0.4 + 0.1 * i,
                         1.5 * iteration + 0.25 * mst_key])
    return pd.DataFrame(rows, columns=notebook.INFO_COLUMNS)


def _lines_by_key(axes):
    return {int(line.get_label().split(":")[0].split()[1]): line for line in axes.get_lines()}


def test_one_axes_per_metric_and_one_line_per_model_with_its_data():
    info = _info()
    figure = plot_learning_curves(info)
    assert [a.get_title() for a in figure.axes] == ["training loss", "validation loss"]
    for axes, metric in zip(figure.axes, ("training_loss", "validation_loss")):
        lines = _lines_by_key(axes)
        assert sorted(lines) == [1, 2] and len(axes.get_lines()) == 2
        for mst_key, line in lines.items():
            model = info[info.mst_key == mst_key]
            assert list(line.get_xdata()) == [1, 2, 3]
            assert list(line.get_ydata()) == pytest.approx(list(model[metric]))
            assert line.get_label().startswith(f"mst_key {mst_key}: ")


def test_labels_name_the_optimizer_and_the_fit_params():
    lines = _lines_by_key(plot_learning_curves(_info()).axes[0])
    assert lines[1].get_label() == "mst_key 1: Adam(learning_rate=0.01), batch_size=8,epochs=6"
    assert lines[2].get_label().startswith("mst_key 2: SGD(learning_rate=0.1)")
    short = _lines_by_key(plot_learning_curves(_info(), label_width=20).axes[0])
    assert len(short[1].get_label()) == 20 and short[1].get_label().endswith("…")


def test_elapsed_puts_the_seconds_on_x_and_metric_columns_can_be_asked_for():
    info = _info()
    figure = plot_learning_curves(info, x="elapsed", metrics=("training_loss", "training_metric",
                                                               "validation_metric"))
    assert len(figure.axes) == 3
    assert figure.axes[1].get_xlabel() == "elapsed (s)"
    for axes, metric in zip(figure.axes, ("training_loss", "training_metric", "validation_metric")):
        for mst_key, line in _lines_by_key(axes).items():
            model = info[info.mst_key == mst_key]
            assert list(line.get_xdata()) == pytest.approx(list(model.elapsed))
            assert list(line.get_ydata()) == pytest.approx(list(model[metric]))


def test_a_metric_without_any_value_gets_no_axes_and_bad_arguments_are_refused():
    info = _info().assign(validation_loss=float("nan"))
    assert [a.get_title() for a in plot_learning_curves(info).axes] == ["training loss"]
    with pytest.raises(ValueError, match="x: expected"):
        plot_learning_curves(info, x="epoch")
    with pytest.raises(ValueError, match="no column accuracy"):
        plot_learning_curves(info, metrics=("accuracy",))
    with pytest.raises(ValueError, match="no values"):
        plot_learning_curves(info, metrics=("validation_loss",))


def test_the_figure_saves_as_png_without_a_gui_backend():
    buffer = io.BytesIO()
    plot_learning_curves(_info()).savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")


def test_an_info_row_becomes_one_row_per_metrics_iteration():
    row = {"mst_key": 3, "model_id": 1, "compile_params": "c", "fit_params": "f", "metrics_iters": [2, 4],
           "training_loss": [0.5, 0.25], "training_metrics": None, "validation_loss": None,
           "validation_metrics": None, "metrics_elapsed_time": [1.0, 2.0]}
    rows = notebook._long_rows(row)
    assert [r[:6] for r in rows] == [[3, 1, "c", "f", 2, 0.5], [3, 1, "c", "f", 4, 0.25]]
    assert all(math.isnan(v) for r in rows for v in r[6:9]) and [r[9] for r in rows] == [1.0, 2.0]


def test_the_bar_counts_hops_when_their_number_is_known_else_iterations():
    def row(**kw):
        return SimpleNamespace(**{"iterations": 3, "iteration": 2, "hops_done": 1, "hops_total": 4, **kw})
    assert notebook._position(row()) == (12, 5)
    assert notebook._position(row(hops_total=None, hops_done=None)) == (3, 2)
    rows = [SimpleNamespace(phase="training", training_loss=loss, mst_key=k) for k, loss in ((1, 0.3), (2, 0.2))]
    assert notebook._postfix(rows) == "training, best training loss 0.2 (mst_key 2)"
