"""`make install` as PostgreSQL extensions install: the server runs a copy of madlib_dl in its own
directory (pg_config --pkglibdir), so a checkout installed from can be deleted and databases keep
working. Skipped after `make dev-install`, whose functions boot from the venv on purpose."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from madlib_dl import __version__
from madlib_dl.keras_runtime import tf_setup
from madlib_dl.tools import install, paths
from madlib_dl.tools.cluster import EXTENSION_QUERY

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR = install.package_dir(paths.pg_config("--pkglibdir"))


def _installed_script() -> str:
    script = Path(paths.pg_config("--sharedir")) / "extension" / f"{install.EXTENSION}--{__version__}.sql"
    return script.read_text()


pytestmark = pytest.mark.skipif(str(PACKAGE_DIR) not in _installed_script(),
                                reason="the extension was installed with make dev-install (it boots from the venv)")


def _modules(cur, schema: str) -> dict:
    cur.execute(f"SELECT {schema}.version()")  # boots madlib_dl in this backend
    cur.execute("CREATE TEMP TABLE modules AS SELECT NULL::text AS name, NULL::text AS file LIMIT 0")
    cur.execute("DO $$\nimport sys\nfor name in ('madlib_dl', 'keras', 'numpy', 'tensorflow'):\n"
                "    module = sys.modules.get(name) or __import__(name)\n"
                "    plpy.execute(plpy.prepare('INSERT INTO modules VALUES ($1, $2)', ['text', 'text']), "
                "[name, module.__file__])\n$$ LANGUAGE plpython3u")
    cur.execute("SELECT name, file FROM modules")
    return dict(cur.fetchall())


def test_backends_run_the_copy_in_the_servers_directory(server):
    with server.fresh_database("it_installed_copy") as name, server.connect(name) as conn, conn.cursor() as cur:
        cur.execute(EXTENSION_QUERY)
        files = _modules(cur, cur.fetchone()[1])
    assert files["madlib_dl"] == str(PACKAGE_DIR / "madlib_dl" / "__init__.py")
    for name in ("keras", "numpy", "tensorflow"):
        assert files[name].startswith(str(PACKAGE_DIR / "deps") + "/"), files
    assert not files["madlib_dl"].startswith(str(REPO))


def _source_copy(top: Path) -> Path:
    """The checkout's files that git does not ignore (no venv, no build outputs): what a clone of this
    working tree would hold, new files included, so that installing it installs what the tests test."""
    copy = top / "checkout"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    return copy


@pytest.mark.skipif(os.geteuid() != 0, reason="installing into the server's directories needs root")
def test_a_deleted_checkout_leaves_databases_working(server):
    top = Path(tempfile.mkdtemp(prefix="madlib_dl-checkout-"))
    try:
        copy = _source_copy(top)
        env = {**os.environ, "PYTHONPATH": str(copy)}
        done = subprocess.run([sys.executable, "-m", "madlib_dl.tools.cli", "install"], cwd=copy, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        shutil.rmtree(top)
    assert not top.exists()
    with server.fresh_database("it_installed_deleted") as name, server.connect(name) as conn, conn.cursor() as cur:
        cur.execute(EXTENSION_QUERY)
        lib = cur.fetchone()[1]
        cur.execute(f"SELECT {lib}.version()")
        assert f"madlib_dl {__version__}" in cur.fetchone()[0]
        cur.execute("CREATE TABLE src AS SELECT i AS id, ARRAY[i % 3, (i * 7) % 5, i % 2]::REAL[] AS x, "
                    "(i % 3)::INTEGER AS y FROM generate_series(1, 60) i")
        cur.execute(f"SELECT {lib}.training_preprocessor_dl('src', 'packed', 'y', 'x', NULL, 1.0, NULL, '2')")
        keras = tf_setup.keras()
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="softmax")]).to_json()
        cur.execute(f"SELECT {lib}.load_keras_model('arch', %s::json)", [model])
        cur.execute(f"SELECT {lib}.load_model_selection_table('arch', 'mst', ARRAY[1], "
                    "ARRAY[$$loss='categorical_crossentropy', optimizer='SGD', metrics=['accuracy']$$], "
                    "ARRAY['batch_size=8, epochs=1'])")
        cur.execute(f"SELECT {lib}.madlib_keras_fit_multiple_model('packed', 'model', 'mst', 1, FALSE, NULL, NULL, FALSE, "
                    "NULL, NULL, TRUE)")
        cur.execute("SELECT count(*) FROM model WHERE model_weights IS NOT NULL")
        assert cur.fetchone()[0] == 1


def _madlib_dl_files(*roots: Path) -> list[str]:
    return sorted(str(p) for root in roots for p in root.rglob("*") if "madlib_dl" in p.name)


def test_uninstall_removes_every_file_install_wrote(tmp_path):
    """`make install` into a server's directories, then `make uninstall`: no madlib_dl file is left. The
    server's directories are stand-ins here (the test server keeps its install); the dependencies are
    seeded as hard links of the real install's, so that pip does not run again."""
    share, lib = tmp_path / "share", tmp_path / "lib"
    (share / "extension").mkdir(parents=True)
    deps = install.package_dir(str(lib)) / "deps"
    deps.parent.mkdir(parents=True)
    subprocess.run(["cp", "-al", str(PACKAGE_DIR / "deps"), str(deps)], check=True)
    (lib / "madlib_dl" / "0.0.1" / "deps").mkdir(parents=True)  # an older version's files
    cli = [sys.executable, "-m", "madlib_dl.tools.cli", "install", "--sharedir", str(share), "--pkglibdir", str(lib)]
    done = subprocess.run(cli, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"install: removed {lib / 'madlib_dl' / '0.0.1'}" in done.stdout
    assert _madlib_dl_files(share, lib) == sorted(
        [str(share / "extension" / name) for name in ["madlib_dl.control", *install.scripts(REPO / "sql")]]
        + [str(lib / "madlib_dl.so"), str(lib / "madlib_dl"), str(install.package_dir(str(lib)) / "madlib_dl"),
           str(deps / install.DEPS_STAMP)])
    again = subprocess.run(cli, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0 and "install: wrote" not in again.stdout, again.stdout  # nothing changed
    done = subprocess.run(cli + ["--uninstall"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _madlib_dl_files(share, lib) == []
    assert sorted(p.name for p in (share / "extension").iterdir()) == [] and list(lib.iterdir()) == []
