"""Table names given as SQL text arguments: parsed with PostgreSQL's identifier rules, then re-quoted.

A name like ``public."My Table"`` is split into parts exactly as the server would read it; anything that
is not one or two identifiers (``x; DROP TABLE y``) is rejected before it reaches SQL text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from madlib_dl.errors import InvalidArgument, ObjectExists, ObjectMissing

_UNQUOTED = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_MAX_BYTES = 63  # NAMEDATALEN - 1: longer names would be silently truncated by the server


@dataclass(frozen=True)
class TableName:
    schema: str | None
    name: str

    def sql(self, db) -> str:
        """The quoted form, safe to place in SQL text."""
        parts = [self.schema, self.name] if self.schema else [self.name]
        return ".".join(db.quote_ident(p) for p in parts)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


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
                    raise InvalidArgument(f"{argument}: unterminated quoted identifier in {text!r}")
                part.append(text[j:k])
                if text[k + 1:k + 2] == '"':  # doubled quote inside a quoted identifier
                    part.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            ident = "".join(part)
            if not ident:
                raise InvalidArgument(f"{argument}: empty quoted identifier in {text!r}")
        else:
            match = _UNQUOTED.match(text, i)
            if not match:
                raise InvalidArgument(
                    f"{argument}: expected a table name such as my_table or my_schema.my_table, got {text!r}")
            ident = _ascii_lower(match.group(0))
            i = match.end()
        if len(ident.encode()) > _MAX_BYTES:
            raise InvalidArgument(f"{argument}: identifier {ident!r} is longer than {_MAX_BYTES} bytes")
        parts.append(ident)
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            return parts
        if text[i] != ".":
            raise InvalidArgument(
                f"{argument}: expected a table name such as my_table or my_schema.my_table, got {text!r}")
        i += 1


def _ascii_lower(s: str) -> str:
    # The server folds only ASCII letters of unquoted identifiers in UTF-8 databases.
    return "".join(c.lower() if c.isascii() else c for c in s)


def parse_table_name(text: str | None, argument: str) -> TableName:
    if text is None:
        raise InvalidArgument(f"{argument}: expected a table name, got NULL")
    if not text.strip():
        raise InvalidArgument(f"{argument}: expected a table name, got an empty string")
    parts = split_identifiers(text, argument)
    if len(parts) > 2:
        raise InvalidArgument(f"{argument}: expected table or schema.table, got {len(parts)} parts in {text!r}")
    return TableName(parts[0], parts[1]) if len(parts) == 2 else TableName(None, parts[0])


def table_exists(db, table: TableName) -> bool:
    rows = db.execute("SELECT to_regclass($1) IS NOT NULL AS found", [table.sql(db)], ["text"])
    return bool(rows[0]["found"])


def check_schema_exists(db, table: TableName, text: str, argument: str) -> None:
    """A schema-qualified name must name an existing schema (``text``: the name as the caller gave it)."""
    if table.schema is None:
        return
    rows = db.execute("SELECT to_regnamespace($1) IS NOT NULL AS found", [db.quote_ident(table.schema)], ["text"])
    if not rows[0]["found"]:
        raise ObjectMissing(f"{argument}: schema {table.schema!r} of {text!r} does not exist")


def summary_table(table: TableName, argument: str) -> TableName:
    """``<name>_summary`` in the same schema; refused when the server would have to truncate it."""
    name = table.name + "_summary"
    if len(name.encode()) > _MAX_BYTES:
        raise InvalidArgument(f"{argument}: name {table.name!r} is too long: its summary table {name!r} "
                              f"would be longer than {_MAX_BYTES} bytes")
    return TableName(table.schema, name)


def output_table(db, text: str | None, argument: str) -> TableName:
    """A table name the caller wants created: valid, in an existing schema, and not taken."""
    table = parse_table_name(text, argument)
    check_schema_exists(db, table, text, argument)
    if table_exists(db, table):
        raise ObjectExists(f"{argument}: table {text!r} already exists", hint="Drop it or choose another name.")
    return table
