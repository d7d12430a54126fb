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
from madlib_dl.segment import requests, server

MAX_BLOBS = 2  # a request or reply carries at most the weights and the optimizer state


def call(header: str, blob1, blob2) -> dict:
    """Serve one request; the reply as the SQL function's row."""
    try:
        message = json.loads(header)
    except (TypeError, ValueError):
        raise InvalidArgument("internal_node_call: header: expected a madlib_dl request as JSON") from None
    names = message.get("blobs", []) if isinstance(message, dict) else []
    blobs = [blob1, blob2][:len(names)]
    request = requests.decode(message, blobs)
    reply = server.handle(database.current(), database.session_dict(), request)
    reply_header, reply_blobs = requests.encode(reply)
    if len(reply_blobs) > MAX_BLOBS:
        raise InvalidArgument(f"internal: a reply of {len(reply_blobs)} blobs")
    values = [bytes(memoryview(b).cast("B")) if b is not None else None for b in reply_blobs]
    values += [None] * (MAX_BLOBS - len(values))
    return {"header": json.dumps(reply_header), "blob1": values[0], "blob2": values[1]}
