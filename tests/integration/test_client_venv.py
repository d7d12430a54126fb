"""The notebook client as a laptop installs it: `pip install ./client` into a fresh venv (python -m venv)
brings psycopg2-binary, pandas, matplotlib and tqdm at the project's pins and nothing of the server (no
tensorflow, keras, optuna or madlib_dl); from that venv, as the plain role over TCP with its scram
password, the client reads a finished run's tables (Client.info, Client.summary), plots them, writes
them with its own `madlib-dl plot`, and raises a failed call's error, without importing madlib_dl.

pip needs the package index: where the network is unreachable the test skips and says so; any other
failure to install fails it."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from psycopg2.extensions import make_dsn

import digits_data

REPO = Path(__file__).resolve().parents[2]
DB = "client_venv"
OUT = "venv_curves"
ITERATIONS = 2
SERVER_PACKAGES = {"tensorflow", "tensorflow-cpu", "keras", "tf-keras", "optuna", "madlib-dl"}
CLIENT_PACKAGES = {"madlib-dl-client", "psycopg2-binary", "pandas", "matplotlib", "tqdm"}
INDEX = ("pypi.org", 443)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _network_problem() -> str | None:
    """Why the package index cannot be reached, or None when it can."""
    try:
        socket.create_connection(INDEX, timeout=10).close()
        return None
    except OSError as error:
        return f"{INDEX[0]}:{INDEX[1]}: {error}"


def _clean_env(**extra) -> dict:
    """The environment of the fresh venv's programs: nothing that would let them see the checkout or the
    project's venv (PYTHONPATH, VIRTUAL_ENV), no PG* variables but those given."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("PG")}
    return {**env, "PYTHONNOUSERSITE": "1", **extra}


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """A fresh venv with `pip install ./client`, pinned as src/setup.sh pins the project's venv. The
    client directory is copied first, so that pip's in-tree build writes nothing into the checkout."""
    base = tmp_path_factory.mktemp("client-venv")
    source = base / "client"
    shutil.copytree(REPO / "client", source,
                    ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pins = [arg for name in ("requirements.txt", "requirements-client.txt", "constraints.txt")
            for arg in ("-c", str(REPO / name))]
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "--retries", "2", "--timeout", "60", str(source), *pins],
                          capture_output=True, text=True, timeout=600, env=_clean_env(), cwd=base)
    if done.returncode != 0:
        said = (done.stdout + done.stderr).strip()[-2000:]
        problem = _network_problem()
        if problem is not None:
            pytest.skip(f"network unreachable ({problem}): pip cannot fetch the client's dependencies into a "
                        f"fresh venv; pip said: {said}")
        pytest.fail(f"pip install ./client into a fresh venv failed with the index reachable:\n{said}")
    return venv


@pytest.fixture(scope="module")
def finished_run(training_database):
    """A fit_multiple run of 2 configurations with a validation table, finished, made by the plain role in
    a database of its own; yields the plain role's connection."""
    with training_database(DB) as conn, conn.cursor() as cur:
        digits_data.create_table(cur)
        cur.execute("CREATE TABLE digits_train AS SELECT * FROM digits WHERE id % 5 <> 0")
        cur.execute("CREATE TABLE digits_test AS SELECT * FROM digits WHERE id % 5 = 0")
        digits_data.pack_and_select(cur, hidden=16, epochs=1, source="digits_train")
        cur.execute("SELECT madlib_dl.validation_preprocessor_dl('digits_test', 'test_packed', 'label', 'pixels', "
                    "'train_packed')")
        cur.execute("SELECT madlib_dl.madlib_keras_fit_multiple_model(source_table => 'train_packed', "
                    "model_output_table => %s, model_selection_table => 'mst', num_iterations => %s, "
                    "use_gpus => FALSE, validation_table => 'test_packed', metrics_compute_frequency => 1)",
                    [OUT, ITERATIONS])
        yield conn


SCRIPT = textwrap.dedent("""\
    import importlib.metadata
    import json
    import sys

    import psycopg2

    import madlib_dl_client
    from madlib_dl_client import Client, plot_learning_curves

    out, png = sys.argv[1:]
    client = Client("")  # PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD
    info = client.info(out)
    summary = client.summary(out)
    figure = plot_learning_curves(info, x="iteration")
    figure.savefig(png)
    try:
        client.fit_multiple(progress=False, source_table="missing_packed", model_output_table="never",
                            model_selection_table="mst", num_iterations=1, use_gpus=False)
        error = None
    except psycopg2.Error as e:
        error = str(e)
    print(json.dumps({
        "client": madlib_dl_client.__file__,
        "info": {str(k): {c: list(model[c]) for c in ("iteration", "training_loss", "validation_loss")}
                 for k, model in info.groupby("mst_key")},
        "summary": {"rows": len(summary), "model_selection_table": str(summary.model_selection_table[0])},
        "axes": [[axes.get_title(), [line.get_label() for line in axes.get_lines()]] for axes in figure.axes],
        "error": error,
        "modules": sorted({m.split(".")[0] for m in sys.modules} & {"madlib_dl", "tensorflow", "keras", "optuna"}),
        "distributions": sorted(d.metadata["Name"] for d in importlib.metadata.distributions()),
    }))
    """)


def _pip_list(venv: Path) -> set[str]:
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json",
                           "--disable-pip-version-check"], capture_output=True, text=True, timeout=120,
                          env=_clean_env(), check=True)
    return {_canonical(package["name"]) for package in json.loads(done.stdout)}


def test_the_fresh_venv_holds_the_client_and_nothing_of_the_server(client_venv):
    packages = _pip_list(client_venv)
    assert CLIENT_PACKAGES <= packages, packages
    assert not packages & SERVER_PACKAGES, packages
    assert "psycopg2" not in packages  # the binary wheel: nothing compiled on the laptop


def test_the_client_reads_plots_and_calls_from_the_fresh_venv_as_the_plain_role(client_venv, finished_run, server,
                                                                                plain_role, tmp_path):
    dsn = server.dsn(DB, user=plain_role)
    env = _clean_env(PGHOST=dsn["host"], PGPORT=str(dsn["port"]), PGDATABASE=DB, PGUSER=dsn["user"],
                     PGPASSWORD=dsn["password"])
    png = tmp_path / "from-python.png"
    done = subprocess.run([str(client_venv / "bin" / "python"), "-c", SCRIPT, OUT, str(png)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert Path(seen["client"]).is_relative_to(client_venv)  # the installed copy, not the checkout's
    assert seen["modules"] == []
    assert not {_canonical(name) for name in seen["distributions"]} & SERVER_PACKAGES
    with finished_run.cursor() as cur:
        cur.execute(f"SELECT mst_key, metrics_iters, training_loss, validation_loss FROM {OUT}_info ORDER BY mst_key")
        table = {str(row[0]): row[1:] for row in cur.fetchall()}
    assert sorted(seen["info"]) == sorted(table) == ["1", "2"]
    for mst_key, (iters, training_loss, validation_loss) in table.items():
        model = seen["info"][mst_key]
        assert model["iteration"] == iters == list(range(1, ITERATIONS + 1))
        assert model["training_loss"] == pytest.approx(training_loss)
        assert model["validation_loss"] == pytest.approx(validation_loss)
    assert seen["summary"] == {"rows": 1, "model_selection_table": "mst"}
    assert [title for title, _ in seen["axes"]] == ["training loss", "validation loss"]
    assert all([label.split(":")[0] for label in labels] == ["mst_key 1", "mst_key 2"] for _, labels in seen["axes"])
    assert png.read_bytes().startswith(b"\x89PNG")
    assert seen["error"] is not None and "missing_packed" in seen["error"]


def test_the_fresh_venvs_madlib_dl_command_plots_and_refuses_server_commands(client_venv, finished_run, server,
                                                                             plain_role, tmp_path):
    dsn = server.dsn(DB, user=plain_role)
    env = _clean_env(PGPASSWORD=dsn.pop("password"))
    command = str(client_venv / "bin" / "madlib-dl")
    target = tmp_path / "c.png"
    done = subprocess.run([command, "plot", OUT, "-o", str(target), "--x", "elapsed", "--dsn", make_dsn(**dsn)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(target)
    assert target.read_bytes().startswith(b"\x89PNG")
    refused = subprocess.run([command, "start"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert refused.returncode == 2
    assert "'start' is a command of the server package" in refused.stderr, refused.stderr
