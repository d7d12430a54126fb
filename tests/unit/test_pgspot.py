"""pgspot (the PostgreSQL extension script checker) over every script `make install` writes: no error, no
warning, no unknown. Install scripts are checked alone; an update script FROM--TO is checked after the
install script of FROM (`pgspot -a`), as PostgreSQL runs it: on a database whose extension FROM created
the schema and the functions it replaces. plpython3u bodies are Python, which pgspot cannot read
(--ignore-lang); what they run is pinned by their SET search_path."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from madlib_dl.tools import install

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
PGSPOT = [sys.executable, "-m", "pgspot", "--ignore-lang", "plpython3u"]
SUMMARY = re.compile(r"Errors: (\d+) Warnings: (\d+) Unknown: (\d+)")


def pgspot(*paths: Path) -> tuple[tuple[int, int, int], str]:
    """(errors, warnings, unknowns) and pgspot's report for ``paths`` (several: appended, in order)."""
    result = subprocess.run([*PGSPOT, *(["--append"] if len(paths) > 1 else []), *map(str, paths)],
                            capture_output=True, text=True, timeout=300)
    found = SUMMARY.findall(result.stdout)  # several files: each file's, then the TOTAL
    assert found, f"pgspot gave no summary (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    counts = tuple(int(n) for n in found[-1])
    assert (counts == (0, 0, 0)) == (result.returncode == 0), result.stdout
    return counts, result.stdout


def rendered(directory: Path) -> dict[str, Path]:
    """Every script install.install would write, rendered as it would render them, by file name."""
    boot = install.Boot("/usr/lib/postgresql/15/lib")
    out = {}
    for name, (template, version) in install.scripts(SQL_DIR).items():
        out[name] = directory / name
        out[name].write_text(install.render(template, install.DEFAULT_SCHEMA, boot.directories(version), version))
    return out


def checks(scripts: dict[str, Path]) -> list[tuple[str, tuple[Path, ...]]]:
    """What to run pgspot on: each install script alone, each update script after its source's install script."""
    out = []
    for name, path in sorted(scripts.items()):
        versions = install._versions(name)
        if len(versions) == 1:
            out.append((name, (path,)))
        else:
            base = f"{install.EXTENSION}--{versions[0]}.sql"
            assert base in scripts, f"{name}: no install script of {versions[0]} to check it after"
            out.append((name, (scripts[base], path)))
    return out


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    return rendered(tmp_path_factory.mktemp("scripts"))


def test_every_script_is_checked(scripts):
    names = {name for name, _ in checks(scripts)}
    assert f"{install.EXTENSION}--{install.__version__}.sql" in names
    assert f"{install.EXTENSION}--0.1.0.sql" in names and f"{install.EXTENSION}--0.1.0--0.2.0.sql" in names
    assert names == set(scripts)


@pytest.mark.parametrize("name", sorted(install.scripts(SQL_DIR)))
def test_pgspot_finds_nothing(scripts, name):
    paths = dict(checks(scripts))[name]
    counts, report = pgspot(*paths)
    assert counts == (0, 0, 0), f"pgspot on {name}: errors, warnings, unknowns {counts}:\n{report}"


SAMPLE_HEAD = "CREATE SCHEMA s;\nCREATE FUNCTION s.f() RETURNS int LANGUAGE plpython3u AS $$ return 1 $$;\n"


@pytest.mark.parametrize("sample, code", [
    # an unqualified call and operator in a SQL function without a pinned search_path
    ("CREATE FUNCTION s.g(x int) RETURNS int LANGUAGE sql AS $$ SELECT abs(x) + 1 $$;", "PS005"),
    ("CREATE FUNCTION s.g(x int) RETURNS int LANGUAGE sql AS $$ SELECT abs(x) + 1 $$;", "PS016"),
    ("CREATE FUNCTION s.g(x int) RETURNS int LANGUAGE sql AS $$ SELECT abs(x) + 1 $$;", "PS001"),
    # the same at the top level of a script (a table's default, a policy)
    ("CREATE TABLE s.t (a timestamptz DEFAULT clock_timestamp());", "PS016"),
    # CREATE OR REPLACE of a function in a schema the script did not create
    ("CREATE OR REPLACE FUNCTION public.h() RETURNS int LANGUAGE plpython3u AS $$ return 1 $$;", "PS002"),
    # a language pgspot does not know is an unknown, which fails the check too
    ("CREATE FUNCTION s.k() RETURNS int LANGUAGE plperlu AS $$ 1 $$;", "Unknown function language"),
])
def test_the_check_fails_on_what_pgspot_reports(tmp_path, sample, code):
    path = tmp_path / "sample.sql"
    path.write_text(SAMPLE_HEAD + sample + "\n")
    counts, report = pgspot(path)
    assert counts != (0, 0, 0) and code in report, report
    clean = tmp_path / "clean.sql"
    clean.write_text(SAMPLE_HEAD + "CREATE FUNCTION s.g(x int) RETURNS int LANGUAGE sql "
                     "SET search_path = pg_catalog, pg_temp AS $$ SELECT pg_catalog.abs(x) OPERATOR(pg_catalog.+) 1 $$;\n")
    assert pgspot(clean)[0] == (0, 0, 0), pgspot(clean)[1]


def test_an_update_is_checked_after_its_source(tmp_path):
    """Appended to the install script that created the schema, replacing its functions is no finding;
    alone (pgspot cannot know the schema is the extension's), it is."""
    base, update = tmp_path / "x--1.sql", tmp_path / "x--1--2.sql"
    base.write_text(SAMPLE_HEAD)
    update.write_text("CREATE OR REPLACE FUNCTION s.f() RETURNS int LANGUAGE plpython3u AS $$ return 2 $$;\n")
    assert pgspot(base, update)[0] == (0, 0, 0)
    assert pgspot(update)[0][1] == 1
