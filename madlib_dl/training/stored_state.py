"""A trained model's state in its output table, whatever its size.

``model_weights`` keeps MADlib's format: one BYTEA value, so a model whose weights exceed PostgreSQL's
limit for one value (1 GB) cannot be stored and is refused before training (:func:`check_sizes`). The
optimizer state (Adam: twice the weights, and more) goes in ``optimizer_state`` while it is at most
``ONE_VALUE_BYTES``; a larger one goes, in parts of ``PART_BYTES``, to a side table
``<model table>_optimizer_state (mst_key, part, data)`` and the column is NULL. Warm start reads either.

Each value is handed over (madlib_dl.handoff), not bound as a parameter: a state in a memory file (as
a worker's reply brings it) is read by the C library straight into the datum, which the executor
copies into the row it toasts; any other state goes through GD as Python bytes, which PL/Python drops
as it makes the datum. Either way a value is held at most twice at once (bound, a 64 MiB part raised
the peak by about five times its size). So a model's row is written one large value per statement
(:func:`write_state`), and large optimizer states in parts: the driver's own peak grows by about twice
the model's largest value (its weights, or its optimizer state when that fits the column), within one
model's state plus a few times its largest part. What each step costs: bench/state_write.py and
bench/FINDINGS.md, "Writing output states".
"""

from __future__ import annotations

import contextlib
import os

from madlib_dl import catalog, channel, handoff
from madlib_dl.errors import InvalidArgument
from madlib_dl.identifiers import TableName
from madlib_dl.training import memory

MAX_VALUE_BYTES = (1 << 30) - 1 - 4 - 1024  # PostgreSQL's largest value (1 GB) less its header, with a margin
ONE_VALUE_BYTES = 64 << 20  # larger optimizer states are stored in parts
PART_BYTES = 64 << 20
SIDE_SUFFIX = "_optimizer_state"
SINGLE_KEY = 0  # madlib_keras_fit's one model, in the side table's mst_key column


def side_table(model_table: TableName) -> TableName | None:
    """The side table for ``model_table``'s large optimizer states; None when its name would be too long."""
    name = model_table.name + SIDE_SUFFIX
    return model_table.sibling(name) if len(name.encode()) <= 63 else None


def check_sizes(weight_bytes: dict[int, int], model_table: TableName, argument: str) -> None:
    """Before training: every model's weights fit in one value, and a model whose optimizer state may
    need the side table (Adam keeps two slots per weight) has a name for it."""
    for key, size in sorted(weight_bytes.items()):
        if size > MAX_VALUE_BYTES:
            raise InvalidArgument(
                f"model_id {key}: the model has {size // 4} parameters, whose weights take {size} bytes "
                f"({memory.format_bytes(size)}), more than the {MAX_VALUE_BYTES} bytes PostgreSQL stores in one value "
                f"(model_weights keeps MADlib's one-value format)", hint="Choose a smaller model.")
        if 2 * size > ONE_VALUE_BYTES and side_table(model_table) is None:
            raise InvalidArgument(
                f"{argument}: name {model_table.name!r} is too long: model_id {key}'s optimizer state needs a side "
                f"table named {model_table.name + SIDE_SUFFIX!r}, which would exceed 63 bytes")


def drop(db, model_table: TableName) -> None:
    side = side_table(model_table)
    if side is not None:
        db.execute(f"DROP TABLE IF EXISTS {side.sql(db)}")


def as_value(state, start: int = 0, size: int | None = None):
    """A state (or ``size`` bytes of it from ``start``) as PL/Python binds it to a BYTEA parameter without
    copying it once more: bytes. A shared blob is read from its memory file, not through its mapping,
    so its pages do not join this backend's resident memory on top of the copy."""
    if state is None:
        return None
    size = len(state) - start if size is None else min(size, len(state) - start)
    if isinstance(state, bytes) and start == 0 and size == len(state):
        return state
    if isinstance(state, channel.SharedBlob):
        return _read_file(state.fd, start, size)
    return bytes(memoryview(state).cast("B")[start:start + size])


def _read_file(fd: int, start: int, size: int) -> bytes:
    data = os.pread(fd, size, start)
    if len(data) == size:
        return data
    parts = [data]  # a read returns at most ~2 GB at once
    while sum(map(len, parts)) < size:
        done = sum(map(len, parts))
        parts.append(os.pread(fd, size - done, start + done))
        if not parts[-1]:
            raise OSError(f"a state's memory file ended after {done} of {size} bytes")
    return b"".join(parts)


def write_state(db, schema: str, model_table: TableName, key: int, model, where: str = "", where_args=(),
                where_types=(), keep_weights: bool = False) -> None:
    """Set the state of a model's row, inserted without it (``where``: which row, its parameters from $2):
    model_weights, then optimizer_state or its parts, one large value per statement. ``model``: a
    driver.ModelProgress (its state is taken from it; its weights stay with ``keep_weights``).

    Each value is handed over (madlib_dl.handoff), not bound: from its memory file straight into the
    datum when the state is in one, else as bytes in GD."""
    files = handoff.files_available(db, schema)
    state = model.weights
    if not keep_weights:
        model.weights = None
    _set(db, schema, model_table, "model_weights", state, files, where, where_args, where_types)
    state, model.optimizer_state = model.optimizer_state, None
    if state is None or len(state) > ONE_VALUE_BYTES:
        write_large(db, schema, model_table, key, state, files)
        return
    _set(db, schema, model_table, "optimizer_state", state, files, where, where_args, where_types)


@contextlib.contextmanager
def _handed_over(db, schema: str, state, files: bool, start: int = 0, size: int | None = None):
    """(the SQL expression that reads the value, its token: the expression's $1) for ``size`` bytes of
    ``state`` from ``start``, for the statement run inside the block: a shared blob's range read by the C
    library from its memory file when ``files`` (handoff.files_available), else the bytes in GD."""
    if files and isinstance(state, channel.SharedBlob):
        size = len(state) - start if size is None else min(size, len(state) - start)
        with handoff.file_handed_over(state.fd, start, size) as token:
            yield handoff.taking_file(schema, db.quote_ident), token
        return
    with handoff.handed_over(as_value(state, start, size)) as token:
        yield handoff.taking(schema, db.quote_ident), token


def _set(db, schema: str, model_table: TableName, column: str, state, files: bool, where, where_args,
         where_types) -> None:
    with _handed_over(db, schema, state, files) as (taking, token):
        db.execute(f"UPDATE {model_table.sql(db)} SET {db.quote_ident(column)} = {taking} {where}",
                   [token, *where_args], ["text", *where_types])


def write_large(db, schema: str, model_table: TableName, key: int, state, files: bool | None = None) -> None:
    """A state too large for the column, in parts (the side table is made by the first one), each
    handed over like the column values (``files``: handoff.files_available, found when None)."""
    if state is None or len(state) <= ONE_VALUE_BYTES:
        return
    if files is None:
        files = handoff.files_available(db, schema)
    side = side_table(model_table)
    db.execute(f"CREATE TABLE IF NOT EXISTS {side.sql(db)} (mst_key INTEGER, part INTEGER, data BYTEA, "
               "PRIMARY KEY (mst_key, part))")
    catalog.store_uncompressed(db, side, ("data",))
    for part, start in enumerate(range(0, len(state), PART_BYTES)):
        with _handed_over(db, schema, state, files, start, PART_BYTES) as (taking, token):
            db.execute(f"INSERT INTO {side.sql(db)} VALUES ($2, $3, {taking})", [token, key, part],
                       ["text", "integer", "integer"])


def read(db, model_table: TableName, key: int, column) -> bytes | None:
    """A model's optimizer state as stored: the column's value, else its parts from the side table."""
    if column is not None:
        return bytes(column)
    side = side_table(model_table)
    if side is None or not db.execute("SELECT to_regclass($1) IS NOT NULL AS found", [side.sql(db)], ["text"])[0]["found"]:
        return None
    state = bytearray()
    for rows in db.batches(f"SELECT data FROM {side.sql(db)} WHERE mst_key = $1 ORDER BY part", [key], ["integer"],
                           size=1):  # one part in memory at a time besides the state
        state += rows[0]["data"]
    return bytes(state) if state else None
