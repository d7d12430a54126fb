"""The MADlib compatibility suite: what Apache MADlib's own deep-learning install-check tests check
(`src/ports/postgres/modules/deep_learning/test/*.sql_in`), re-checked against madlib_dl through its
public SQL API only, including the parts MADlib runs on Greenplum alone (fit_multiple, automl, model
selection end to end). The tests are our own; where madlib_dl deliberately differs from MADlib (see
docs/*.md, "Differences from MADlib"), a test asserts madlib_dl's documented behaviour and says so.

The fixtures are the integration suite's (a throwaway server with Debian's pg_hba, the plain role alice,
fresh databases); each test file trains as alice in a database of its own, where runs must use
background workers. Data is tiny: iris-like rows drawn with a seed, small MLPs built here with Keras 3.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from tests.integration.conftest import *  # noqa: E402,F401,F403  (fixtures: server, plain_role, ...)
from tests.integration.conftest import Role, Server  # noqa: E402,F401


@pytest.fixture(scope="module")
def db(training_database, request):
    """A connection as alice to this test file's own database (runs must use background workers)."""
    name = "compat_" + Path(request.module.__file__).stem.removeprefix("test_")
    with training_database(name) as conn:
        yield conn


@pytest.fixture
def cur(db):  # noqa: F811  (this suite's cursor: alice's, in the file's database)
    del db.notices[:]
    with db.cursor() as c:
        yield c


@pytest.fixture(scope="module")
def admin(server, db):
    """A superuser's cursor in the file's database (for what MADlib itself needs a superuser for)."""
    with server.connect(db.info.dbname) as conn, conn.cursor() as c:
        yield c
