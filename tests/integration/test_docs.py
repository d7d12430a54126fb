"""The documentation cannot rot: every ```sql and ```python block of README.md and docs/*.md runs, page
by page, in order, in a new database (docs/README.md's convention: signatures and messages are ```text
blocks, which do not run). Consecutive SQL blocks share one psql session; a Python block runs as a
program of its own, finding the database through PGHOST, PGPORT, PGDATABASE, PGUSER and PGPASSWORD."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```(sql|python)\n(.*?)^\1```", re.M | re.S)


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every runnable block, in order, consecutive SQL blocks joined."""
    out: list[tuple[str, str]] = []
    for found in FENCE.finditer(text):
        language, code = found.group(2), textwrap.dedent(found.group(3))
        if out and language == "sql" and out[-1][0] == "sql":
            out[-1] = ("sql", out[-1][1] + "\n" + code)
        else:
            out.append((language, code))
    return out


RUNNABLE = [page for page in PAGES if blocks(page.read_text())]


def test_the_quick_start_and_the_reference_have_examples():
    names = {page.name for page in RUNNABLE}
    assert {"README.md", "preprocessing.md", "fit-multiple.md", "fit.md", "evaluate.md", "predict.md",
            "model-architectures.md", "model-selection-tables.md", "settings.md"} <= names
    readme = blocks((REPO / "README.md").read_text())
    languages = [language for language, _ in readme]
    assert languages[-2:] == ["python", "sql"]  # the quick start: Python, then psql
    assert readme[-1][1].count("SELECT madlib_dl.") >= 7  # pack (2), load, configs, fit_multiple, evaluate, predict


def test_blocks_are_found_indented_in_a_list_and_joined_while_sql_follows_sql():
    page = ("1. a step\n\n   ```sql\n   SELECT 1;\n   ```\n\n```text\nSELECT no;\n```\n"
            "```sql\nSELECT 2;\n```\n```python\nprint(3)\n```\n```sql\nSELECT 4;\n```\n")
    assert blocks(page) == [("sql", "SELECT 1;\n\nSELECT 2;\n"), ("python", "print(3)\n"), ("sql", "SELECT 4;\n")]


def _run(language: str, code: str, env: dict) -> subprocess.CompletedProcess:
    command = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-q"] if language == "sql" else [sys.executable, "-"]
    return subprocess.run(command, input=code, text=True, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=600, cwd=REPO)


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(REPO)) for p in RUNNABLE])
def test_every_block_of_the_page_runs(server, page):
    with server.fresh_database(f"docs_{re.sub(r'[^a-z0-9]+', '_', page.stem.lower())}") as db:
        env = dict(os.environ, **server.libpq_env(db), PSQLRC="/dev/null")
        for language, code in blocks(page.read_text()):
            done = _run(language, code, env)
            where = f"{page.relative_to(REPO)}, a {language} block:\n{done.stdout[-4000:]}"
            assert done.returncode == 0, where
            assert "ERROR:" not in done.stdout and "Traceback" not in done.stdout, where
