"""plot_learning_curves draws what Client.info's frame holds: one axes per metric, one line per model
with its own iterations (or elapsed seconds) and values, labelled by its configuration; and the
client's small helpers (the long form of an _info row, the progress bar's position)."""

import io
import math
from types import SimpleNamespace

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from madlib_dl_client import notebook, plot_automl, plot_learning_curves, plots
from tests.bar_double import RecordingBar

COMPILE = {1: "loss='categorical_crossentropy', optimizer='Adam(learning_rate=0.01)', metrics=['accuracy']",
           2: "loss='categorical_crossentropy', optimizer='SGD(learning_rate=0.1)', metrics=['accuracy']"}


def _info(table="models") -> pd.DataFrame:
    rows = []
    for mst_key in (1, 2):
        for i, iteration in enumerate((1, 2, 3)):
            rows.append([mst_key, mst_key, COMPILE[mst_key], "batch_size=8, epochs=6", iteration,
                         1.0 / (iteration + mst_key), 0.5 + 0.1 * i, 2.0 / (iteration + mst_key), 0.4 + 0.1 * i,
                         1.5 * iteration + 0.25 * mst_key, "accuracy", "categorical_crossentropy", None, None,
                         None, None, {1: "mlp", 2: None}[mst_key]])
    frame = pd.DataFrame(rows, columns=notebook.INFO_COLUMNS)
    frame.attrs["model_output_table"] = table
    return frame


def _lines_by_key(axes):
    return {int(line.get_label().split(":")[0].split()[1]): line for line in axes.get_lines()}


def _legend_texts(figure):
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


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
        assert axes.get_legend() is None  # one legend for the figure, outside the axes


def test_labels_name_the_model_id_its_architecture_and_only_the_parameters_that_differ():
    figure = plot_learning_curves(_info())
    lines = _lines_by_key(figure.axes[0])
    assert lines[1].get_label() == "mst_key 1: model_id 1 (mlp)\noptimizer=Adam(learning_rate=0.01)"
    assert lines[2].get_label() == "mst_key 2: model_id 2\noptimizer=SGD(learning_rate=0.1)"
    assert _legend_texts(figure) == [lines[1].get_label(), lines[2].get_label()]
    for text in _legend_texts(figure):  # the same for both: loss, metrics, batch_size, epochs
        assert "model_id" in text and not any(common in text for common in ("loss", "metrics", "batch_size", "epochs"))
    fit_params = {1: "batch_size=8, epochs=6", 2: "batch_size=32, epochs=6"}
    varied = _info().assign(fit_params=lambda f: f.mst_key.map(fit_params))
    lines = _lines_by_key(plot_learning_curves(varied).axes[0])
    assert lines[2].get_label() == "mst_key 2: model_id 2\noptimizer=SGD(learning_rate=0.1), batch_size=32"
    short = _lines_by_key(plot_learning_curves(_info(), label_width=20).axes[0])
    assert short[1].get_label() == "mst_key 1: model_id…\noptimizer=Adam(lear…"  # each line cut to 20


def test_a_frame_without_model_ids_or_other_columns_is_labelled_by_mst_key_alone():
    info = _info()[["mst_key", "iteration", "training_loss"]]
    info.attrs.clear()  # a frame of the caller's own
    figure = plot_learning_curves(info, metrics=("training_loss",))
    assert _legend_texts(figure) == ["mst_key 1", "mst_key 2"]
    assert figure.axes[0].get_ylabel() == "loss" and figure.get_suptitle() == "learning curves"


def test_the_title_names_the_table_and_the_axes_name_the_loss_and_the_metric():
    figure = plot_learning_curves(_info("public.runs"), metrics=("training_loss", "training_metric",
                                                                 "validation_metric"))
    assert figure.get_suptitle() == "public.runs: learning curves"
    assert [a.get_title() for a in figure.axes] == ["training loss", "training accuracy", "validation accuracy"]
    assert [a.get_ylabel() for a in figure.axes] == ["loss (categorical_crossentropy)", "accuracy", "accuracy"]
    assert plot_learning_curves(_info(), title="mine").get_suptitle() == "mine"
    other = _info().assign(metric_name=lambda f: f.mst_key.map({1: "accuracy", 2: "top_k_categorical_accuracy"}))
    assert plot_learning_curves(other, metrics=("training_metric",)).axes[0].get_ylabel() == (
        "accuracy / top_k_categorical_accuracy")


def test_the_legend_is_outside_the_axes():
    figure = plot_learning_curves(_info())
    canvas = FigureCanvasAgg(figure)  # no GUI
    canvas.draw()
    renderer = canvas.get_renderer()
    legend = figure.legends[0].get_window_extent(renderer)
    for axes in figure.axes:
        assert legend.x0 >= axes.get_window_extent(renderer).x1
    assert legend.x1 <= figure.bbox.x1 + 1  # not cut off


def test_params_split_at_top_level_commas():
    assert plots.parse_params("loss='mse', optimizer='SGD(lr=0.1, momentum=0.9)', metrics=['a', 'b']") == {
        "loss": "mse", "optimizer": "SGD(lr=0.1, momentum=0.9)", "metrics": "['a', 'b']"}
    assert plots.parse_params("optimizer='Adam(lr=0.000123456789)'") == {"optimizer": "Adam(lr=0.0001235)"}
    assert plots.parse_params(None) == {} and plots.parse_params("junk, a = 1") == {"a": "1"}


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


def _automl_info(hyperband=True) -> pd.DataFrame:
    """R=3, eta=3 Hyperband: bracket s=1 trains mst_keys 1-3 one iteration and 2 on to 3; s=0 trains 4
    and 5 three iterations. Every configuration the same Adam with its own learning rate."""
    trials = {1: (1, "stopped", 1, 0), 2: (3, "done", 1, 1), 3: (1, "stopped", 1, 0), 4: (3, "done", 0, 0),
              5: (3, "done", 0, 0)}
    rows = []
    for mst_key, (trained, status, s, i) in trials.items():
        compile_params = f"loss='mse', optimizer='Adam(lr=0.00{mst_key})', metrics=['accuracy']"
        for iteration in range(1, trained + 1):
            rows.append([mst_key, 1, compile_params, "batch_size=8", iteration, 1.0 / (iteration + mst_key), 0.5,
                         1.2 / (iteration + mst_key), 0.5, float(iteration), "accuracy", "mse", status, trained,
                         s if hyperband else None, i if hyperband else None, None])
    frame = pd.DataFrame(rows, columns=notebook.INFO_COLUMNS)
    frame.attrs.update(model_output_table="hb", automl_method="hyperband" if hyperband else "asha")
    return frame


def test_the_automl_figure_marks_where_each_stopped_configuration_stopped():
    figure = plot_automl(_automl_info())
    assert figure.get_suptitle() == "hb: validation loss of each hyperband configuration"
    assert [a.get_title() for a in figure.axes] == ["bracket s=1: 3 configurations, 2 stopped",
                                                    "bracket s=0: 2 configurations, 0 stopped"]
    assert [a.get_ylabel() for a in figure.axes] == ["loss (mse)", ""]  # the y axis is shared
    stops = {line.get_gid(): (list(line.get_xdata()), list(line.get_ydata()))
             for axes in figure.axes for line in axes.get_lines() if line.get_gid()}
    assert stops == {"stopped mst_key 1": ([1], [pytest.approx(0.6)]),
                     "stopped mst_key 3": ([1], [pytest.approx(0.3)])}
    # the survivors are named (by what differs: the learning rate), the stopped ones grouped
    assert _legend_texts(figure) == ["mst_key 2: model_id 1\noptimizer=Adam(lr=0.002)",
                                     "mst_key 4: model_id 1\noptimizer=Adam(lr=0.004)",
                                     "mst_key 5: model_id 1\noptimizer=Adam(lr=0.005)", "stopped (× where it stopped)"]
    survivor = [line for line in figure.axes[0].get_lines() if line.get_label().startswith("mst_key 2")]
    assert list(survivor[0].get_xdata()) == [1, 2, 3] and survivor[0].get_linewidth() > 2
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")


def test_an_automl_run_without_brackets_gets_one_axes_and_a_fit_multiple_run_is_refused():
    figure = plot_automl(_automl_info(hyperband=False), metric="training_loss")
    assert [a.get_title() for a in figure.axes] == ["5 configurations, 2 stopped"]
    assert figure.get_suptitle() == "hb: training loss of each asha configuration"
    with pytest.raises(ValueError, match="automl_status"):
        plot_automl(_info())


def test_an_info_row_becomes_one_row_per_metrics_iteration():
    row = {"mst_key": 3, "model_id": 1, "compile_params": "c", "fit_params": "f", "metrics_iters": [2, 4],
           "training_loss": [0.5, 0.25], "training_metrics": None, "validation_loss": None,
           "validation_metrics": None, "metrics_elapsed_time": [1.0, 2.0]}
    rows = notebook._long_rows(row)
    assert [r[:6] for r in rows] == [[3, 1, "c", "f", 2, 0.5], [3, 1, "c", "f", 4, 0.25]]
    assert all(math.isnan(v) for r in rows for v in r[6:9]) and [r[9] for r in rows] == [1.0, 2.0]
    assert [r[10:] for r in rows] == [[None] * 7] * 2
    row.update(metrics_type=["accuracy", "mae"], loss_type="mse", automl_status="stopped", iterations_trained=4,
               s=1, i=0)
    assert notebook._long_rows(row, {1: "mlp"})[0][10:] == ["accuracy", "mse", "stopped", 4, 1, 0, "mlp"]


def _row(**kw):
    values = {"function": "madlib_keras_fit_multiple_model", "output_table": "m", "iterations": 3, "iteration": 2,
              "phase": "training", "mst_key": 1, "training_loss": None, "batches_done": 5, "batches_total": 40,
              "examples_per_second": None}
    return SimpleNamespace(**{**values, **kw})


def test_the_bar_counts_training_batches_over_every_iteration():
    assert notebook._position(_row()) == (120, 45, "batch")
    assert notebook._position(_row(batches_total=None, batches_done=17)) == (None, 17, "batch")  # automl
    assert notebook._position(_row(phase="starting", iteration=0, batches_done=None, batches_total=None)) == (3, 0, "it")


def test_the_bar_starts_with_the_workers_then_moves_by_batches_with_the_best_loss_so_far():
    bar = notebook._Bar(RecordingBar)
    bar.show([_row(phase="starting", iteration=0, batches_done=None, batches_total=None)])
    assert (bar.bar.unit, bar.bar.total) == ("it", 3) and bar.bar.postfix == "starting, iteration 0/3"
    bar.show([_row(iteration=1, batches_done=4, examples_per_second=1234.4, training_loss=None)])
    assert bar.bar.resets == 1 and bar.bar.shown[-1] == ("batch", 4, 120)  # batches from here: an honest rate
    bar.show([_row(iteration=1, batches_done=30, training_loss=0.5, mst_key=1),
              _row(iteration=1, batches_done=30, training_loss=0.3, mst_key=2)])
    assert bar.bar.shown[-1] == ("batch", 30, 120)
    assert bar.bar.postfix == "training, iteration 1/3, best training loss so far 0.3 (mst_key 2)"
    bar.show([_row(iteration=2, batches_done=2, training_loss=0.6, mst_key=1, examples_per_second=1234.4),
              _row(iteration=2, batches_done=2, training_loss=0.4, mst_key=2)])
    assert bar.bar.shown[-1] == ("batch", 42, 120) and bar.bar.resets == 1
    # the best so far stays the best: a later, worse iteration does not replace it
    assert bar.bar.postfix == ("training, iteration 2/3, 1,234 examples/s, best training loss so far 0.3 "
                               "(mst_key 2)")
