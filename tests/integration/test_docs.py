"""The documentation cannot rot: every ```sql block of README.md and docs/*.md runs, page by page, in
order, in one psql session of a new database (docs/README.md's convention: signatures and messages
are ```text blocks, which do not run). A page's blocks are its examples and quick starts."""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```sql\n(.*?)^\1```", re.M | re.S)


def sql_blocks(page: Path) -> list[str]:
    return [textwrap.dedent(found.group(2)) for found in FENCE.finditer(page.read_text())]


RUNNABLE = [page for page in PAGES if sql_blocks(page)]


def test_the_quick_start_and_the_reference_have_examples():
    names = {page.name for page in RUNNABLE}
    assert {"README.md", "preprocessing.md", "fit-multiple.md", "fit.md", "evaluate.md", "predict.md",
            "model-architectures.md", "model-selection-tables.md", "settings.md"} <= names
    assert len(sql_blocks(REPO / "README.md")) >= 6  # the quick start's steps


def test_a_block_is_found_indented_in_a_list_and_dedented():
    page = "1. a step\n\n   ```sql\n   SELECT 1;\n   ```\n\n```text\nSELECT no;\n```\n"
    assert [textwrap.dedent(m.group(2)) for m in FENCE.finditer(page)] == ["SELECT 1;\n"]


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(REPO)) for p in RUNNABLE])
def test_every_sql_block_of_the_page_runs(server, page):
    script = "\n".join(sql_blocks(page))
    with server.fresh_database(f"docs_{re.sub(r'[^a-z0-9]+', '_', page.stem.lower())}") as db:
        env = dict(os.environ, **server.libpq_env(db), PSQLRC="/dev/null")
        done = subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-q"], input=script, text=True, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600, cwd=REPO)
    assert done.returncode == 0, f"{page.relative_to(REPO)}:\n{done.stdout[-4000:]}"
    assert "ERROR:" not in done.stdout, done.stdout[-4000:]
