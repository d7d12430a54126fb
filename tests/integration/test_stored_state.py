"""Optimizer states too large for one value go to <model table>_optimizer_state in parts, and read back
whole; sizes are checked before training. States are written in the server, as the driver writes them
(each value handed over to its statement: a memory file's range that the C library reads, or bytes in
GD), by a PL/Python function of the test; one test
lowers the limits so that small states take the large-state path, another writes a state over the real
part size (the bench trains a 140M-parameter model through it for real)."""

from __future__ import annotations

import hashlib
import json
import os

import psycopg2
import pytest

from madlib_dl import db as database
from madlib_dl import handoff
from madlib_dl.errors import InvalidArgument
from madlib_dl.identifiers import TableName
from madlib_dl.training import stored_state


# write_states(table, models, one_value, part): writes each model's state as fit_multiple's driver does
# (stored_state.write_state into a row of `table` inserted without it), from a memory file (as a worker's
# reply brings it: handed over as the file's range), bytes or a bytearray (handed over in GD) of random
# bytes, with the limits given (NULL: the real ones); the SHA-256 of each value.
WRITE_STATES = """
CREATE OR REPLACE FUNCTION pg_temp.write_states(table_name TEXT, models TEXT, one_value BIGINT, part BIGINT)
RETURNS TEXT LANGUAGE plpython3u AS $$
import hashlib, json, os
plpy.execute("SELECT madlib_dl.internal_take_value('')")  # boots madlib_dl in this session
from madlib_dl import channel, db as database, handoff
from madlib_dl.identifiers import TableName
from madlib_dl.training import stored_state

MAKE = {"shared": channel.SharedBlob.copy_of, "bytes": bytes, "bytearray": bytearray}


class Model:
    weights = optimizer_state = None


def state(kind, size):
    if size is None:
        return None, None
    data = os.urandom(size)
    return MAKE[kind](data), hashlib.sha256(data).hexdigest()


db = database.current()
table = TableName("public", table_name)
saved = stored_state.ONE_VALUE_BYTES, stored_state.PART_BYTES
if one_value is not None:
    stored_state.ONE_VALUE_BYTES, stored_state.PART_BYTES = one_value, part
try:
    db.execute(f"CREATE TABLE {table.sql(db)} (mst_key INTEGER PRIMARY KEY, model_weights BYTEA, "
               "optimizer_state BYTEA)")
    digests = {}
    for key, (kind, weights, optimizer) in json.loads(models).items():
        model = Model()
        (model.weights, weights_digest), (model.optimizer_state, optimizer_digest) = state(kind, weights), \
            state(kind, optimizer)
        db.execute(f"INSERT INTO {table.sql(db)} VALUES ($1, NULL, NULL)", [int(key)], ["integer"])
        stored_state.write_state(db, "madlib_dl", table, int(key), model, "WHERE mst_key = $2", [int(key)],
                                 ["integer"])
        assert model.weights is None and model.optimizer_state is None  # let go of once written
        digests[key] = [weights_digest, optimizer_digest]
finally:
    stored_state.ONE_VALUE_BYTES, stored_state.PART_BYTES = saved
return json.dumps({"digests": digests, "files": handoff.files_available(db, "madlib_dl")})
$$"""


def _digest(value) -> str | None:
    return None if value is None else hashlib.sha256(bytes(value)).hexdigest()


def _write_and_read_back(cur, table: TableName, models: dict, one_value=None, part=None) -> None:
    """Write ``models`` (key -> (kind, weights bytes, optimizer bytes or None)) in the server, then read
    each state back as warm start does and compare it bit for bit (by SHA-256) with what was written."""
    cur.execute(WRITE_STATES)
    cur.execute("SELECT pg_temp.write_states(%s, %s, %s, %s)", [table.name, json.dumps(models), one_value, part])
    answer = json.loads(cur.fetchone()[0])
    written = answer["digests"]
    assert answer["files"]  # states in memory files were read straight from them (internal_take_file)
    db = database.PsycopgDatabase(cur.connection)
    for key in models:
        cur.execute(f"SELECT model_weights, optimizer_state FROM {table.sql(db)} WHERE mst_key = %s", [int(key)])
        weights, column = cur.fetchone()
        assert _digest(weights) == written[key][0], f"model {key}: weights"
        assert _digest(stored_state.read(db, table, int(key), column)) == written[key][1], f"model {key}: optimizer"


def _parts(cur, table: TableName) -> list:
    side = stored_state.side_table(table).sql(database.PsycopgDatabase(cur.connection))
    cur.execute(f"SELECT mst_key, part, length(data) FROM {side} ORDER BY 1, 2")
    return cur.fetchall()


def _drop(cur, table: TableName) -> None:
    db = database.PsycopgDatabase(cur.connection)
    stored_state.drop(db, table)
    cur.execute(f"DROP TABLE IF EXISTS {table.sql(db)}")


def test_a_large_state_is_stored_in_parts_and_read_back_whole(cur):
    table = TableName("public", "state_models")
    _drop(cur, table)
    models = {"1": ("shared", 700, 2500), "2": ("bytes", 1500, 1000), "3": ("bytearray", 10, None),
              "4": ("bytearray", 20, 1001), "5": ("bytes", 30, 1200), "6": ("shared", 40, 900)}
    _write_and_read_back(cur, table, models, one_value=1000, part=300)
    assert _parts(cur, table) == [(1, i, 300) for i in range(8)] + [(1, 8, 100)] + \
        [(4, 0, 300), (4, 1, 300), (4, 2, 300), (4, 3, 101)] + [(5, i, 300) for i in range(4)]
    cur.execute("SELECT mst_key, length(optimizer_state) FROM public.state_models ORDER BY 1")
    assert cur.fetchall() == [(1, None), (2, 1000), (3, None), (4, None), (5, None), (6, 900)]  # when it fits
    db = database.PsycopgDatabase(cur.connection)
    assert stored_state.read(db, table, 3, None) is None
    _drop(cur, table)
    cur.execute("SELECT to_regclass('public.state_models_optimizer_state') IS NULL")
    assert cur.fetchone()[0]
    assert stored_state.read(db, table, 1, None) is None


def test_a_state_over_the_real_part_size_round_trips_bit_exactly(cur):
    """The real limits: an optimizer state over one value, in whole parts and a partial last one, from the
    memory file a worker's reply brings; the weights as one value, from bytes."""
    table = TableName("public", "state_real_parts")
    _drop(cur, table)
    one, part = stored_state.ONE_VALUE_BYTES, stored_state.PART_BYTES
    size = one + part // 2 + 3
    _write_and_read_back(cur, table, {"7": ("shared", 3 << 20, size), "8": ("bytes", 5, one + 1)})
    whole, rest = divmod(size, part)
    assert _parts(cur, table) == [(7, i, part) for i in range(whole)] + [(7, whole, rest)] + \
        [(8, i, min(part, one + 1 - i * part)) for i in range(-(-(one + 1) // part))]
    _drop(cur, table)


def test_nothing_is_written_when_every_state_fits_its_column(plain_cur, monkeypatch):
    monkeypatch.setattr(stored_state, "ONE_VALUE_BYTES", 1000)
    db = database.PsycopgDatabase(plain_cur.connection)
    stored_state.write_large(db, "madlib_dl", TableName("public", "state_small"), 1, b"x" * 1000)
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


# take_file(kind, size, armed_size, token): arms a value as a range of a file of this backend (a memory
# file, or a file on disk), as madlib_dl's Python does, then runs internal_take_file(token) twice.
TAKE_FILE = """
CREATE OR REPLACE FUNCTION pg_temp.take_file(kind TEXT, size INTEGER, armed_size INTEGER, token TEXT)
RETURNS BYTEA[] LANGUAGE plpython3u AS $$
import tempfile
plpy.execute("SELECT madlib_dl.internal_take_value('')")  # boots madlib_dl (and loads its C library)
from madlib_dl import channel, native
data = bytes(range(256)) * (size // 256) + bytes(size % 256)
if kind == "memfd":
    held = channel.SharedBlob.copy_of(data)
    fd = held.fd
else:
    held = tempfile.TemporaryFile()
    held.write(data)
    held.flush()
    fd = held.fileno()
native.hand_over_file("armed-token", fd, 3, armed_size)
try:
    plan = plpy.prepare("SELECT madlib_dl.internal_take_file($1) AS v", ["text"])
    return [plpy.execute(plan, [token])[0]["v"] for _ in range(2)]
finally:
    native.forget_file()
$$"""


def test_a_value_handed_over_as_a_memory_files_range_is_read_once_for_its_token_only(cur, plain_cur):
    cur.execute(TAKE_FILE)
    cur.execute("SELECT pg_temp.take_file('memfd', 3000, 2000, 'armed-token')")
    first, second = cur.fetchone()[0]
    assert bytes(first) == (bytes(range(256)) * 12)[3:2003] and second is None  # the armed range, once
    cur.execute("SELECT pg_temp.take_file('memfd', 3000, 2000, 'another-token')")
    assert cur.fetchone()[0] == [None, None]
    plain_cur.execute("SELECT madlib_dl.internal_take_file('armed-token') IS NULL")
    assert plain_cur.fetchone()[0]  # nothing armed in this session


@pytest.mark.parametrize("kind, armed_size", [("disk", 100), ("memfd", 2998)])
def test_only_a_memory_file_holding_the_whole_range_is_read(cur, kind, armed_size):
    """A file on disk (a relation's, say) is never read, nor past a memory file's end."""
    cur.execute(TAKE_FILE)
    with pytest.raises(psycopg2.errors.InternalError_, match="a value handed over is not in a memory file of its size"):
        cur.execute("SELECT pg_temp.take_file(%s, 3000, %s, 'armed-token')", [kind, armed_size])
