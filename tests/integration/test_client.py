"""The notebook client against a real server, as a plain role: a fit_multiple run through
Client.fit_multiple draws a progress bar from fit_progress while it runs and returns its NOTICEs;
Client.info reads its _info table long; plot_learning_curves and `madlib-dl plot` draw that data."""

from __future__ import annotations

import io
import subprocess
import sys

import psycopg2
import pytest
import tqdm
from psycopg2.extensions import make_dsn

import digits_data
from madlib_dl_client import Client, notebook, plot_learning_curves

DB = "client"
ITERATIONS = 3
OUT = "curves"
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


def test_the_run_returns_its_notices_and_draws_the_bar_from_fit_progress(run):
    notices, bars = run
    assert any(f"iteration {ITERATIONS}/{ITERATIONS}" in n for n in notices), notices
    assert len(bars) == 1, "fit_progress never showed the run"
    bar = bars[0]
    assert bar.desc.startswith(f"madlib_keras_fit_multiple_model {OUT}")
    hops = ITERATIONS * 2 * 2  # iterations x (models x segments)
    polled = [(n, total, postfix) for n, total, postfix in bar.shown if postfix]
    assert polled and all(total == hops for _, total, _ in polled)
    assert any("best training loss" in postfix for _, _, postfix in polled), polled
    counts = [n for n, _, _ in bar.shown]
    assert counts == sorted(counts) and counts[-1] == hops  # forward only, full when the run ended


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
        assert [line.get_label().split(":")[0] for line in lines] == ["mst_key 1", "mst_key 2"]
        for line, mst_key in zip(lines, (1, 2)):
            assert list(line.get_xdata()) == pytest.approx(table[mst_key][3])
            assert list(line.get_ydata()) == pytest.approx(table[mst_key][column])


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
