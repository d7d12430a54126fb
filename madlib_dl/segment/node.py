"""A Citus worker node's side of a run: the driver on the coordinator keeps one connection per segment
to the node holding it, and each request of a segment (segment.requests: start, begin the run, a hop, an
evaluation, release) arrives as one call of ``internal_node_call(header, blob1, blob2)``, served by the
same code as a background worker's (segment.server) with this session's GD as the store, so the
segment's examples stay cached in the node's session for the run. The model state travels as the call's
binary BYTEA parameters and result columns, never as SQL text.

It serves the calling role's own session only: whoever calls it can do nothing that the in-process
executor would not do in that session."""

from __future__ import annotations

import json

from madlib_dl import db as database
from madlib_dl.errors import InvalidArgument
from madlib_dl.segment import hop_progress, requests, server

MAX_BLOBS = 2  # a request or reply carries at most the weights and the optimizer state
PIECES = "madlib_dl_node_pieces"  # GD: the pieces of the next request's blobs, by blob
REPLY = "madlib_dl_node_reply"    # GD: the last reply's blobs, until the driver has read them in pieces


def call(header: str, blob1, blob2) -> dict:
    """Serve one call; its result as the SQL function's row. A call is a request (segment.requests) or,
    for a state larger than one call carries (a BYTEA and a libpq message hold at most 1 GiB), a piece of
    the next request's blobs ({"piece": blob}) or of the last reply's ({"get": [blob, offset, length]})."""
    try:
        message = json.loads(header)
    except (TypeError, ValueError):
        message = None
    if not isinstance(message, dict):
        raise InvalidArgument("internal_node_call: header: expected a madlib_dl request as JSON")
    gd = database.session_dict()
    if "piece" in message:
        _add_piece(gd, message["piece"], blob1 or b"")
        return _row({}, [])
    if "get" in message:
        return _row({}, [_reply_piece(gd, message["get"])])
    gd.pop(REPLY, None)  # a new request: the last reply was read
    limit = message.pop("reply_limit", None)
    names = message.get("blobs", [])
    if message.pop("pieces", False):
        uploaded = gd.pop(PIECES, {})
        blobs = [b"".join(uploaded.get(i, ([], 0))[0]) for i in range(len(names) if isinstance(names, list) else 0)]
    else:
        blobs = [blob1, blob2][:len(names) if isinstance(names, list) else 0]
    request = requests.decode(message, blobs)
    db = database.current()
    with hop_progress.sink(lambda report: db.notice(hop_progress.as_notice(report))):  # to the driver's connection
        reply = server.handle(db, gd, request)
    reply_header, reply_blobs = requests.encode(reply)
    if len(reply_blobs) > MAX_BLOBS:
        raise InvalidArgument(f"internal: a reply of {len(reply_blobs)} blobs")
    values = [bytes(memoryview(b).cast("B")) if b is not None else None for b in reply_blobs]
    if isinstance(limit, int) and sum(len(v) for v in values if v is not None) > limit:
        gd[REPLY] = values  # read back in pieces
        return _row({**reply_header, "pieces": [None if v is None else len(v) for v in values]}, [])
    return _row(reply_header, values)


def _add_piece(gd: dict, where, data: bytes) -> None:
    """The next piece of a blob of the coming request, which must start where the blob's pieces end."""
    if not (isinstance(where, list) and len(where) == 2 and all(isinstance(v, int) and v >= 0 for v in where)):
        raise InvalidArgument(f"internal_node_call: piece: expected [blob, offset], got {where!r}")
    pieces, length = gd.setdefault(PIECES, {}).get(_index(where[0]), ([], 0))
    if where[1] != length:
        gd.pop(PIECES, None)
        raise InvalidArgument(f"internal_node_call: piece: blob {where[0]} has {length} bytes, not {where[1]}")
    gd[PIECES][where[0]] = (pieces + [data], length + len(data))


def _index(value) -> int:
    if not isinstance(value, int) or not 0 <= value < MAX_BLOBS:
        raise InvalidArgument(f"internal_node_call: expected a blob number below {MAX_BLOBS}, got {value!r}")
    return value


def _reply_piece(gd: dict, where) -> bytes:
    """``length`` bytes from ``offset`` of the last reply's blob; the reply is dropped with its last piece."""
    if not (isinstance(where, list) and len(where) == 3 and all(isinstance(v, int) and v >= 0 for v in where)):
        raise InvalidArgument(f"internal_node_call: get: expected [blob, offset, length], got {where!r}")
    index, offset, length = _index(where[0]), where[1], where[2]
    values = gd.get(REPLY)
    if not values or values[index] is None:
        raise InvalidArgument("internal_node_call: get: no reply waits to be read")
    piece = values[index][offset:offset + length]
    if offset + length >= len(values[index]) and all(v is None for v in values[index + 1:]):
        gd.pop(REPLY, None)
    return piece


def _row(header: dict, values: list) -> dict:
    values = list(values) + [None] * (MAX_BLOBS - len(values))
    return {"reply_header": json.dumps(header), "reply_blob1": values[0], "reply_blob2": values[1]}
