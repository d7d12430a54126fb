"""The check that a madlib_dl call refused bad input cleanly, shared by the integration tests.

madlib_dl refuses a bad argument with one error: a given SQLSTATE, a message that starts with
"madlib_dl: <argument>: " and says what is wrong (its remedy may be in the HINT), and no table made,
dropped or made again. test_evaluate, test_fit, test_fit_multiple_errors, test_predict and
test_predict_multi_io each held a copy of that check; they share this one and keep only a thin wrapper
where their call differs.
"""

from __future__ import annotations

from typing import Callable

import psycopg2
import pytest

_WITH_OIDS = "SELECT schemaname, tablename, format('%I.%I', schemaname, tablename)::regclass::oid FROM pg_tables"
_NAMES = "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"


def tables(cur, oids: bool = True) -> set:
    """Every table in pg_tables. With ``oids``, as (schema, name, oid), so that a table dropped and made
    again counts as a change; without, by its qualified name only."""
    cur.execute(_WITH_OIDS if oids else _NAMES)
    return set(cur.fetchall())


def refused(cur, call: Callable[[], object], sqlstate: str, argument: str, *fragments: str,
            hint_separator: str = "\nHINT:  ", oids: bool = True) -> str:
    """Run ``call``; it must raise a psycopg2.Error with ``sqlstate`` and a primary message
    "madlib_dl: <argument>: ..." that, with ``hint_separator`` and the HINT after it, holds every
    fragment, and leave ``tables(cur, oids)`` as it was. Returns the primary message."""
    before = tables(cur, oids)
    with pytest.raises(psycopg2.Error) as info:
        call()
    error = info.value
    message = error.diag.message_primary or str(error)
    assert error.pgcode == sqlstate, message
    assert message.startswith(f"madlib_dl: {argument}: "), message
    said = f"{message}{hint_separator}{error.diag.message_hint}"
    for fragment in fragments:
        assert fragment in said, said
    assert tables(cur, oids) == before, message
    return message
