"""Table names as the server reads them (``public."My Models"``): split into their identifier parts with
PostgreSQL's rules, unquoted parts folded to lower case, so that the client can quote them back with
``psycopg2.sql.Identifier`` and never place the caller's text in SQL. The server package parses names
the same way (madlib_dl/identifiers.py); the client keeps its own copy so that it never imports it."""

from __future__ import annotations

import re
from typing import NamedTuple

_UNQUOTED = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_MAX_BYTES = 63  # NAMEDATALEN - 1: longer names would be silently truncated by the server


class TableName(NamedTuple):
    schema: str | None  # None: found through the connection's search_path
    name: str


def parse_table_name(text: str | None, argument: str) -> TableName:
    """``table`` or ``schema.table`` as the server parses it; ValueError names ``argument`` otherwise."""
    if text is None:
        raise ValueError(f"{argument}: expected a table name, got None")
    if not text.strip():
        raise ValueError(f"{argument}: expected a table name, got an empty string")
    parts = split_identifiers(text, argument)
    if len(parts) > 2:
        raise ValueError(f"{argument}: expected table or schema.table, got {len(parts)} parts in {text!r}")
    return TableName(parts[0], parts[1]) if len(parts) == 2 else TableName(None, parts[0])


def split_identifiers(text: str, argument: str) -> list[str]:
    """Split ``a.b`` / ``"A"."b"`` into identifier parts the way the server's parser does."""
    parts, i, n = [], 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == '"':
            j, part = i + 1, []
            while True:
                k = text.find('"', j)
                if k < 0:
                    raise ValueError(f"{argument}: unterminated quoted identifier in {text!r}")
                part.append(text[j:k])
                if text[k + 1:k + 2] == '"':  # doubled quote inside a quoted identifier
                    part.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            ident = "".join(part)
            if not ident:
                raise ValueError(f"{argument}: empty quoted identifier in {text!r}")
        else:
            match = _UNQUOTED.match(text, i)
            if not match:
                raise ValueError(
                    f"{argument}: expected a table name such as my_table or my_schema.my_table, got {text!r}")
            ident = _ascii_lower(match.group(0))
            i = match.end()
        if len(ident.encode()) > _MAX_BYTES:
            raise ValueError(f"{argument}: identifier {ident!r} is longer than {_MAX_BYTES} bytes")
        parts.append(ident)
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            return parts
        if text[i] != ".":
            raise ValueError(
                f"{argument}: expected a table name such as my_table or my_schema.my_table, got {text!r}")
        i += 1


def _ascii_lower(s: str) -> str:
    # The server folds only ASCII letters of unquoted identifiers in UTF-8 databases.
    return "".join(c.lower() if c.isascii() else c for c in s)
