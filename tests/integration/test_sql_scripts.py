"""psql scripts in tests/sql/, each run in a new database and compared with tests/sql/expected/NAME.out
(pg_regress style: the script is echoed with its results and errors, at psql's default verbosity, so HINTs show). psql runs in tests/sql, so scripts
load data with e.g. \\copy iris FROM 'data/iris.csv'. On a difference the actual output
is written to tests/sql/results/NAME.out and the diff is shown."""

import difflib
import os
import subprocess
from pathlib import Path

import pytest

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
SCRIPTS = sorted(SQL_DIR.glob("*.sql"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_sql_script(server, script):
    with server.fresh_database(f"sql_{script.stem}", extension=False) as db:
        env = dict(os.environ, **server.libpq_env(db), PGOPTIONS="-c client_min_messages=notice",
                   PSQLRC="/dev/null")  # the password comes in PGPASSWORD (no .pgpass, no trust line)
        with script.open() as stdin:
            result = subprocess.run(["psql", "-X", "-a", "-q", "-v", "VERBOSITY=default"], stdin=stdin,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=300,
                                    cwd=SQL_DIR)
    actual = result.stdout
    expected_path = SQL_DIR / "expected" / f"{script.stem}.out"
    expected = expected_path.read_text() if expected_path.exists() else ""
    if actual != expected:
        results = SQL_DIR / "results"
        results.mkdir(exist_ok=True)
        (results / f"{script.stem}.out").write_text(actual)
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            str(expected_path), "actual"))
        pytest.fail(f"{script.name}: output differs from {expected_path.name}:\n{diff}")


def test_there_are_sql_scripts():
    assert SCRIPTS, "tests/sql/*.sql is empty"
