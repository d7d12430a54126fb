"""The notebook client is a distribution of its own (client/: madlib-dl-client, import package
madlib_dl_client): pinned as the project pins, at madlib_dl's version, importing nothing of the server
package, TensorFlow, Keras or Optuna; its table-name parser is the server's; its `madlib-dl` plots, hands
the server's commands to madlib_dl's CLI where madlib_dl is installed, and refuses them where it is not.
(tests/integration/test_client_venv.py installs it into a fresh venv and runs it against a server.)"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import madlib_dl
from madlib_dl import errors, identifiers
from madlib_dl.tools import constraints
from madlib_dl_client import cli, names

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "client"
NOT_IMPORTED = {"madlib_dl", "tensorflow", "keras", "optuna"}


def _project() -> dict:
    return tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]


def test_the_client_is_pinned_as_the_project_pins_with_the_binary_psycopg2():
    project = _project()
    assert project["name"] == "madlib-dl-client"
    assert project["scripts"] == {"madlib-dl": "madlib_dl_client.cli:main"}
    client = constraints.pins("\n".join(project["dependencies"]))
    runtime = constraints.pins((REPO / "requirements.txt").read_text())
    expected = {**constraints.pins((REPO / "requirements-client.txt").read_text()),
                "psycopg2-binary": "psycopg2-binary==" + runtime["psycopg2"].split("==")[1]}
    assert client == expected
    assert len(project["dependencies"]) == len(expected)  # every dependency pinned


def test_the_client_has_madlib_dls_version():
    source = (CLIENT / "madlib_dl_client" / "__init__.py").read_text()
    assert f'__version__ = "{madlib_dl.__version__}"' in source


@pytest.mark.parametrize("module", sorted((CLIENT / "madlib_dl_client").glob("*.py")), ids=lambda p: p.name)
def test_no_client_module_imports_the_server_package_or_tensorflow(module):
    imported = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert not imported & NOT_IMPORTED


def test_importing_and_using_the_client_loads_nothing_of_the_server():
    """In the project's venv, where madlib_dl is installed too: the client's modules never reach it."""
    code = ("import sys, madlib_dl_client\n"
            "from madlib_dl_client import Client, plot_learning_curves, cli, names, notebook\n"
            "Client('host=nowhere'); cli._parser().parse_args(['plot', 't'])\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & %r))" % NOT_IMPORTED)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_package_loads_pandas_only_when_the_notebook_api_is_used():
    code = ("import sys, madlib_dl_client.cli; before = 'pandas' in sys.modules\n"
            "from madlib_dl_client import Client; print(before, 'pandas' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert done.stdout.split() == ["False", "True"], done.stderr


@pytest.mark.parametrize("text", ["t", "My_Table", '"My Table"', 'public."My ""Models"""', "  s . t  ", "Ünï.x",
                                  "a" * 63, "a" * 64, "a.b.c", "", "   ", "x; DROP TABLE y", '"unterminated',
                                  '""', "s.", "1abc"])
def test_the_clients_table_names_are_the_servers(text):
    try:
        server = identifiers.parse_table_name(text, "model_output_table")
    except errors.InvalidArgument as error:
        with pytest.raises(ValueError) as raised:
            names.parse_table_name(text, "model_output_table")
        assert str(raised.value) == str(error)
    else:
        assert names.parse_table_name(text, "model_output_table") == (server.schema, server.name)


def test_plot_arguments_and_their_defaults():
    args = cli._parser().parse_args(["plot", "models"])
    assert (args.table, args.output, args.x, args.metrics, args.dsn) == (
        "models", "curves.png", "iteration", None, None)  # None: the losses, or an automl run's one metric


def test_every_command_goes_to_the_servers_cli_where_madlib_dl_is_installed(monkeypatch):
    calls = []
    monkeypatch.setattr(cli.os, "execv", lambda path, argv: calls.append(argv) or sys.exit(0))
    assert cli._server_cli_installed()
    for argv in (["start"], ["plot", "models", "-o", "x.png"], ["--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
    assert calls == [[sys.executable, "-m", "madlib_dl.tools.cli", *argv]
                     for argv in (["start"], ["plot", "models", "-o", "x.png"], ["--help"])]


def test_without_madlib_dl_server_commands_are_refused_with_where_they_live(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_server_cli_installed", lambda: False)
    with pytest.raises(SystemExit) as exited:
        cli.main(["install", "--dev"])
    assert exited.value.code == 2
    assert "'install' is a command of the server package (madlib_dl" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        cli.main(["frobnicate"])
    assert exited.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_plot_writes_the_png_of_the_tables_curves(monkeypatch, tmp_path):
    import pandas as pd

    from madlib_dl_client import notebook

    rows = [[k, 1, "loss='x', optimizer='Adam()'", "batch_size=8", i, 1.0 / i, 0.5, 2.0 / i, 0.4, float(i)]
            for k in (1, 2) for i in (1, 2)]
    seen = []

    class Recording(notebook.Client):
        def info(self, table):
            seen.append((self.dsn, table))
            return pd.DataFrame(rows, columns=notebook.INFO_COLUMNS[:10])  # a frame without the per-model columns

    monkeypatch.setattr(notebook, "Client", Recording)
    monkeypatch.setattr(cli, "_server_cli_installed", lambda: False)
    target = tmp_path / "c.png"
    cli.main(["plot", "s.models", "-o", str(target), "--dsn", "host=db dbname=ml"])
    assert seen == [("host=db dbname=ml", "s.models")]
    assert target.read_bytes().startswith(b"\x89PNG")
