"""The notebook client against a real server, as a plain role: a fit_multiple run through
Client.fit_multiple draws a progress bar from fit_progress while it runs and returns its NOTICEs;
Client.info reads its _info table long; plot_learning_curves and `madlib-dl plot` draw that data, and
plot_automl an automl run's. With MADLIB_DL_DOCS_IMAGES=<folder> (docs/images), the docs' figures are
made from a longer run of their own and written there."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
import tqdm
from psycopg2.extensions import make_dsn

import digits_data
from madlib_dl_client import Client, cli, notebook, plot_automl, plot_learning_curves

DB = "client"
ITERATIONS = 3
OUT = "curves"
ARCH_NAME = "digits MLP"
DOCS_IMAGES = os.environ.get("MADLIB_DL_DOCS_IMAGES")
@pytest.fixture(scope="module")
def db(training_database):
    """Digits packed on 2 segments with a validation table, and 2 configurations of one MLP."""
    with training_database(DB) as conn, conn.cursor() as cur:
        digits_data.create_table(cur)
        cur.execute("CREATE TABLE digits_train AS SELECT * FROM digits WHERE id % 5 <> 0")
        cur.execute("CREATE TABLE digits_test AS SELECT * FROM digits WHERE id % 5 = 0")
        digits_data.pack_and_select(cur, hidden=64, epochs=4, source="digits_train")
        cur.execute("SELECT madlib_dl.validation_preprocessor_dl('digits_test', 'test_packed', 'label', 'pixels', "
                    "'train_packed')")
        cur.execute("UPDATE arch SET name = %s", [ARCH_NAME])
        conn.commit()
        yield conn


class RecordingBar(tqdm.tqdm):
    """A tqdm bar that draws into a buffer and keeps (n, total, postfix) of every refresh."""
    made: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, file=io.StringIO(), **kwargs)
        self.shown = []
        RecordingBar.made.append(self)

    def refresh(self, *args, **kwargs):
        if hasattr(self, "shown"):
            self.shown.append((self.n, self.total, self.postfix))
        return super().refresh(*args, **kwargs)


@pytest.fixture(scope="module")
def run(db, server, plain_role):
    """The run, once for the module: its NOTICEs and the bar it drew."""
    RecordingBar.made.clear()
    patch = pytest.MonkeyPatch()
    patch.setattr(notebook, "POLL_SECONDS", 0.1)  # more snapshots of a short run
    try:
        notices = Client(server.dsn(DB, user=plain_role)).fit_multiple(
            progress=RecordingBar, source_table="train_packed", model_output_table=OUT, model_selection_table="mst",
            num_iterations=ITERATIONS, use_gpus=False, validation_table="test_packed", metrics_compute_frequency=1)
    finally:
        patch.undo()
    return notices, RecordingBar.made


def _info_table(db) -> dict:
    with db.cursor() as cur:
        cur.execute(f"SELECT mst_key, metrics_iters, training_loss, validation_loss, metrics_elapsed_time "
                    f"FROM {OUT}_info ORDER BY mst_key")
        return {row[0]: row[1:] for row in cur.fetchall()}


def _batches(db) -> int:
    """The run's training batches: every iteration, both models (batch size 8, 4 epochs) on each segment."""
    with db.cursor() as cur:
        cur.execute("SELECT sum(ceil(n / 8.0) * 4) FROM (SELECT sum(pixels_shape[1]) AS n FROM train_packed "
                    "GROUP BY __dist_key__) s")
        return int(cur.fetchone()[0]) * 2 * ITERATIONS


def test_the_run_returns_its_notices_and_draws_the_bar_from_fit_progress(run, db):
    notices, bars = run
    assert any(f"iteration {ITERATIONS}/{ITERATIONS}" in n for n in notices), notices
    assert len(bars) == 1, "fit_progress never showed the run"
    bar = bars[0]
    assert bar.desc.startswith(f"madlib_keras_fit_multiple_model {OUT}")
    assert bar.unit == "batch"
    batches = _batches(db)
    polled = [(n, total, postfix) for n, total, postfix in bar.shown if postfix and "training" in postfix]
    assert polled and all(total == batches for _, total, _ in polled), (batches, polled)
    assert any("best training loss so far" in postfix for _, _, postfix in polled), polled
    counts = [n for n, _, _ in bar.shown]
    assert counts == sorted(counts) and counts[-1] == batches  # forward only, full when the run ended


def test_info_has_one_row_per_model_and_metrics_iteration_with_the_tables_values(run, db, server, plain_role):
    info = Client(**server.dsn(DB, user=plain_role)).info(OUT)
    table = _info_table(db)
    assert len(info) == 2 * ITERATIONS
    assert sorted(table) == [1, 2]
    for mst_key, (iters, training_loss, validation_loss, elapsed) in table.items():
        model = info[info.mst_key == mst_key]
        assert list(model.iteration) == iters == [1, 2, 3]
        assert list(model.training_loss) == pytest.approx(training_loss)
        assert list(model.validation_loss) == pytest.approx(validation_loss)
        assert list(model.elapsed) == pytest.approx(elapsed)
        assert model.training_metric.between(0, 1).all() and model.validation_metric.between(0, 1).all()
    assert set(info.compile_params) == set(digits_data.TWO_CONFIGS)


def test_the_curves_plot_the_tables_data(run, db, server, plain_role):
    info = Client(**server.dsn(DB, user=plain_role)).info(OUT)
    figure = plot_learning_curves(info, x="elapsed")
    table = _info_table(db)
    assert len(figure.axes) == 2
    for axes, column in zip(figure.axes, (1, 2)):  # training_loss, validation_loss
        lines = axes.get_lines()
        assert [line.get_label() for line in lines] == [  # the optimizers differ; loss, metrics and fit_params not
            f"mst_key 1: model_id 1 ({ARCH_NAME})\noptimizer=Adam(learning_rate=0.01)",
            f"mst_key 2: model_id 1 ({ARCH_NAME})\noptimizer=SGD(learning_rate=0.1)"]
        for line, mst_key in zip(lines, (1, 2)):
            assert list(line.get_xdata()) == pytest.approx(table[mst_key][3])
            assert list(line.get_ydata()) == pytest.approx(table[mst_key][column])


def test_the_figure_names_the_table_the_loss_and_the_metric(run, server, plain_role):
    info = Client(**server.dsn(DB, user=plain_role)).info(OUT)
    assert info.attrs == {"model_output_table": OUT, "automl_method": None}
    assert set(info.arch_name) == {ARCH_NAME} and set(info.metric_name) == {"accuracy"}
    figure = plot_learning_curves(info, metrics=("training_loss", "validation_metric"))
    assert figure.get_suptitle() == f"{OUT}: learning curves"
    assert [a.get_title() for a in figure.axes] == ["training loss", "validation accuracy"]
    assert [a.get_ylabel() for a in figure.axes] == ["loss (categorical_crossentropy)", "accuracy"]
    assert [t.get_text() for t in figure.legends[0].get_texts()] == [
        line.get_label() for line in figure.axes[0].get_lines()]


def test_an_architecture_table_without_names_or_gone_leaves_the_name_out(run, db, server, plain_role):
    with db.cursor() as cur:
        cur.execute("CREATE TABLE unnamed_arch AS SELECT model_id, model_arch FROM arch")  # no name column
        cur.execute(f"CREATE TABLE moved_summary AS SELECT * FROM {OUT}_summary")
        cur.execute(f"CREATE TABLE moved_info AS SELECT * FROM {OUT}_info")
        cur.execute("UPDATE moved_summary SET model_arch_table = 'unnamed_arch'")
        cur.execute("CREATE TABLE missing_summary AS SELECT * FROM moved_summary")
        cur.execute("CREATE TABLE missing_info AS SELECT * FROM moved_info")
        cur.execute("UPDATE missing_summary SET model_arch_table = 'no_such_arch'")
    db.commit()
    client = Client(**server.dsn(DB, user=plain_role))
    for table in ("moved", "missing"):
        info = client.info(table)
        assert info.arch_name.isna().all() and len(info) == 2 * ITERATIONS
        assert plot_learning_curves(info).axes[0].get_lines()[0].get_label() == (
            "mst_key 1: model_id 1\noptimizer=Adam(learning_rate=0.01)")


@pytest.fixture(scope="module")
def automl_run(db, server, plain_role):
    """A small ASHA run through Client.automl: 6 configurations, some stopped after 1 iteration."""
    Client(server.dsn(DB, user=plain_role)).automl(
        progress=False, source_table="train_packed", model_output_table="asha_out", model_arch_table="arch",
        model_selection_table="asha_mst", model_id_list=[1],
        compile_params_grid="{'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'], "
                            "'optimizer_params_list': [{'optimizer': ['Adam'], 'lr': [0.0003, 0.1, 'log']}]}",
        fit_params_grid="{'batch_size': [32, 128], 'epochs': [1]}", automl_method="asha",
        automl_params="max_iterations=3, grace_iterations=1, reduction_factor=3, num_configs=6", random_state=7,
        validation_table="test_packed")
    return "asha_out"


def test_the_automl_figure_marks_the_stopped_configurations(automl_run, db, server, plain_role):
    info = Client(**server.dsn(DB, user=plain_role)).info(automl_run)
    assert info.attrs["automl_method"] == "asha"
    with db.cursor() as cur:
        cur.execute(f"SELECT mst_key, iterations_trained, automl_status FROM {automl_run}_info ORDER BY mst_key")
        trials = {key: (trained, status) for key, trained, status in cur.fetchall()}
    figure = plot_automl(info)
    assert figure.get_suptitle() == f"{automl_run}: validation loss of each asha configuration"
    assert figure.axes[0].get_ylabel() == "loss (categorical_crossentropy)"
    stops = {line.get_gid(): line.get_xdata()[0] for line in figure.axes[0].get_lines() if line.get_gid()}
    stopped = {key for key, (_, status) in trials.items() if status == "stopped"}
    assert stopped and stops == {f"stopped mst_key {key}": trials[key][0] for key in stopped}
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert [text.split(":")[0] for text in legend[:-1]] == [f"mst_key {k}" for k in sorted(set(trials) - stopped)]
    assert all("model_id 1 (digits MLP)" in text and "loss=" not in text for text in legend[:-1])
    assert figure.axes[0].get_title() == f"{len(trials)} configurations, {len(stopped)} stopped"
    # `madlib-dl plot` of an automl run draws this figure, of the one metric asked for
    assert cli.figure_for(info).get_suptitle() == figure.get_suptitle()
    assert cli.figure_for(info, metrics=["training_loss"]).get_suptitle() == (
        f"{automl_run}: training loss of each asha configuration")
    with pytest.raises(SystemExit, match="one metric: --metrics takes one name here, got 2"):
        cli.figure_for(info, metrics=["training_loss", "validation_loss"])


@pytest.mark.skipif(not DOCS_IMAGES, reason="MADLIB_DL_DOCS_IMAGES is not set")
def test_the_docs_figures(db, server, plain_role):
    """docs/monitoring.md's figures: 4 configurations of the digits MLP (Adam and SGD, two learning rates
    each) for 10 iterations, and a Hyperband run (R=9, eta=3) of Adam's learning rate and the batch size."""
    with db.cursor() as cur:
        cur.execute("SELECT madlib_dl.load_model_selection_table('arch', 'docs_mst', ARRAY[1], %s, %s)",
                    [[f"loss='categorical_crossentropy', optimizer='{opt}(learning_rate={lr})', metrics=['accuracy']"
                      for opt, lr in (("Adam", 0.01), ("Adam", 0.001), ("SGD", 0.1), ("SGD", 0.01))],
                     ["batch_size=8, epochs=1"]])
    db.commit()
    client = Client(server.dsn(DB, user=plain_role))
    client.fit_multiple(progress=False, source_table="train_packed", model_output_table="docs_curves",
                        model_selection_table="docs_mst", num_iterations=10, use_gpus=False,
                        validation_table="test_packed", metrics_compute_frequency=1)
    client.automl(progress=False, source_table="train_packed", model_output_table="docs_hyperband",
                  model_arch_table="arch", model_selection_table="docs_hb_mst", model_id_list=[1],
                  compile_params_grid="{'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'], "
                                      "'optimizer_params_list': [{'optimizer': ['Adam'], 'lr': [0.0003, 0.1, 'log']}]}",
                  fit_params_grid="{'batch_size': [16, 64], 'epochs': [1]}", automl_method="hyperband",
                  automl_params="R=9, eta=3, skip_last=0", random_state=3, validation_table="test_packed",
                  metrics_compute_frequency=1)
    folder = Path(__file__).parents[2] / DOCS_IMAGES  # relative: to the checkout
    plot_learning_curves(client.info("docs_curves"), metrics=("training_loss", "validation_loss",
                                                              "validation_metric")).savefig(
        folder / "learning-curves.png", dpi=100)
    plot_automl(client.info("docs_hyperband")).savefig(folder / "automl-hyperband.png", dpi=100)


def test_madlib_dl_plot_writes_the_png(run, server, plain_role, tmp_path):
    target = tmp_path / "c.png"
    done = subprocess.run([sys.executable, "-m", "madlib_dl.tools.cli", "plot", OUT, "-o", str(target),
                           "--dsn", make_dsn(**server.dsn(DB, user=plain_role))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(target)
    assert target.read_bytes().startswith(b"\x89PNG")


def test_the_calls_error_is_raised_in_the_caller(db, server, plain_role):
    client = Client(make_dsn(**server.dsn(DB, user=plain_role)))
    with pytest.raises(psycopg2.Error, match="missing_packed"):
        client.fit_multiple(source_table="missing_packed", model_output_table="never", model_selection_table="mst",
                            num_iterations=1, use_gpus=False)
