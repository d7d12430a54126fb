"""Optimizer states too large for one value go to <model table>_optimizer_state in parts, and read back
whole; sizes are checked before training. The limits are lowered here so that small states take the
large-state path (the bench trains a 140M-parameter model through it for real)."""

from __future__ import annotations

import os

import pytest

from madlib_dl import db as database
from madlib_dl import handoff
from madlib_dl.errors import InvalidArgument
from madlib_dl.identifiers import TableName
from madlib_dl.training import stored_state


@pytest.fixture
def small_limits(monkeypatch):
    monkeypatch.setattr(stored_state, "ONE_VALUE_BYTES", 1000)
    monkeypatch.setattr(stored_state, "PART_BYTES", 300)


def test_a_large_state_is_stored_in_parts_and_read_back_whole(plain_cur, small_limits):
    db = database.PsycopgDatabase(plain_cur.connection)
    table = TableName("public", "state_models")
    stored_state.drop(db, table)
    large, small = os.urandom(2500), os.urandom(1000)
    for key, state in ((1, large), (2, small), (3, None)):
        stored_state.write_large(db, table, key, state)
    plain_cur.execute("SELECT mst_key, part, length(data) FROM state_models_optimizer_state ORDER BY 1, 2")
    assert plain_cur.fetchall() == [(1, i, 300) for i in range(8)] + [(1, 8, 100)]
    assert stored_state.read(db, table, 1, None) == large
    assert stored_state.read(db, table, 2, small) == small  # the column's value wins
    assert stored_state.read(db, table, 3, None) is None
    stored_state.drop(db, table)
    plain_cur.execute("SELECT to_regclass('state_models_optimizer_state') IS NULL")
    assert plain_cur.fetchone()[0]
    assert stored_state.read(db, table, 1, None) is None


def test_nothing_is_written_when_every_state_fits_its_column(plain_cur, small_limits):
    db = database.PsycopgDatabase(plain_cur.connection)
    stored_state.write_large(db, TableName("public", "state_small"), 1, b"x" * 1000)
    plain_cur.execute("SELECT to_regclass('state_small_optimizer_state') IS NULL")
    assert plain_cur.fetchone()[0]


def test_weights_over_one_value_are_refused_before_training():
    table = TableName(None, "m")
    stored_state.check_sizes({1: 4 * 1000, 2: stored_state.MAX_VALUE_BYTES}, table, "model_output_table")
    with pytest.raises(InvalidArgument, match=r"model_id 3: the model has 268435456 parameters, whose weights take "
                                              r"1073741824 bytes \(1\.0 GiB\), more than the 1073740795 bytes "
                                              r"PostgreSQL stores in one value"):
        stored_state.check_sizes({3: 1 << 30}, table, "model_output_table")


def test_a_large_state_needs_room_for_its_side_table_name():
    long_name = TableName(None, "m" * 48)
    assert stored_state.side_table(TableName("s", "m" * 47)) == TableName("s", "m" * 47 + "_optimizer_state")
    assert stored_state.side_table(long_name) is None
    stored_state.check_sizes({1: 1000}, long_name, "model")  # small: the column holds it
    with pytest.raises(InvalidArgument, match="model: name 'm{48}' is too long: model_id 1's optimizer state needs"):
        stored_state.check_sizes({1: stored_state.ONE_VALUE_BYTES}, long_name, "model")


def test_a_value_handed_over_to_the_writing_statement_is_taken_once_and_leaves_nothing(plain_cur):
    """The hand-over (GD in the server, a module dictionary here): a value is taken once and nothing
    stays after the block; the server function returns NULL for a token it was not given."""
    gd = database.session_dict()
    with handoff.handed_over(b"\x00\x01payload") as token:
        assert handoff.take(gd, token) == b"\x00\x01payload"
        assert handoff.take(gd, token) is None
    with handoff.handed_over(b"never taken"):
        pass
    assert not gd[handoff.KEY]
    plain_cur.execute("SELECT madlib_dl.internal_take_value('nothing-here') IS NULL")
    assert plain_cur.fetchone()[0]
