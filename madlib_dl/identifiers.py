"""Table names given as SQL text arguments: parsed with PostgreSQL's identifier rules, resolved once in
the caller's search_path, then re-quoted with their schema.

A name like ``public."My Table"`` is split into parts exactly as the server would read it; anything that
is not one or two identifiers (``x; DROP TABLE y``) is rejected before it reaches SQL text.

Every madlib_dl function runs with ``search_path = pg_catalog, pg_temp`` (its SET clause), so that no
object another role creates in a schema on the caller's path can stand in for a built-in in madlib_dl's
own statements. A name the caller typed without a schema is resolved once, the way the caller's own
statement would resolve it (:func:`resolve`); from then on every statement, in the caller's backend and
in the workers, names the table with its schema (:meth:`TableName.sql` refuses a name without one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from madlib_dl.errors import InvalidArgument, ObjectExists, ObjectMissing

_UNQUOTED = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_MAX_BYTES = 63  # NAMEDATALEN - 1: longer names would be silently truncated by the server


PINNED_SEARCH_PATH = "pg_catalog, pg_temp"  # what every madlib_dl function's SET clause sets
TEMP_SCHEMA = "pg_temp"                       # the alias of the session's own temporary schema


@dataclass(frozen=True)
class TableName:
    schema: str | None  # None only between parsing and resolving
    name: str
    temporary: bool = field(default=False, compare=False)  # in a session's temporary schema
    oid: int | None = field(default=None, compare=False)    # the relation's OID, for an existing table
    # Messages show a name as the caller typed it: without the schema it was resolved to, if typed so.
    typed_schema: bool = field(default=True, compare=False)

    def sql(self, db) -> str:
        """The quoted, schema-qualified form, safe to place in SQL text."""
        if self.schema is None:
            raise ValueError(f"internal: table name {self.name!r} used before it was resolved to a schema")
        return f"{db.quote_ident(self.schema)}.{db.quote_ident(self.name)}"

    def typed_sql(self, db) -> str:
        """The quoted form as the caller typed it (with its schema only if typed so): for messages and
        for names stored in summaries, which MADlib keeps as given."""
        return self.sql(db) if self.typed_schema else db.quote_ident(self.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema and self.typed_schema else self.name

    def sibling(self, name: str) -> "TableName":
        """Another table of the same schema (``<name>_summary``, say), shown as this one is."""
        return TableName(self.schema, name, self.temporary, None, self.typed_schema)


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


def typed_with_suffix(text: str, suffix: str) -> str:
    """``<name><suffix>`` as the caller typed the name (``My.T`` -> ``My.T_info``, ``"T"`` -> ``"T_info"``):
    how MADlib records companion tables in summaries, neither case-folded nor resolved to a schema."""
    text = text.strip()
    return text[:-1] + suffix + '"' if text.endswith('"') else text + suffix


def table_exists(db, table: TableName) -> bool:
    rows = db.execute("SELECT pg_catalog.to_regclass($1) IS NOT NULL AS found", [table.sql(db)], ["text"])
    return bool(rows[0]["found"])


def check_schema_exists(db, table: TableName, text: str, argument: str) -> None:
    """A schema-qualified name must name an existing schema (``text``: the name as the caller gave it)."""
    if table.schema is None or table.schema == TEMP_SCHEMA:
        return
    rows = db.execute("SELECT pg_catalog.to_regnamespace($1) IS NOT NULL AS found", [db.quote_ident(table.schema)],
                      ["text"])
    if not rows[0]["found"]:
        raise ObjectMissing(f"{argument}: schema {table.schema!r} of {text!r} does not exist")


def caller_search_path(db) -> str | None:
    """The search_path of whoever called the madlib_dl function running (None outside one: a client
    tool or a test calling the Python directly, whose statements run under their own path anyway)."""
    from madlib_dl import session  # the layer below the API; imported here to keep this module pure

    schema = session.schema()
    if schema is None:
        return None
    return db.execute(f"SELECT {db.quote_ident(schema)}.internal_caller_search_path() AS path")[0]["path"]


def _as_caller(db, sql: str, args=(), types=()) -> list[dict]:
    """One statement (naming every object it uses with its schema) run under the caller's search_path."""
    path = caller_search_path(db)
    if path is None:
        return db.execute(sql, args, types)
    db.execute("SELECT pg_catalog.set_config('search_path', $1, true)", [path], ["text"])
    try:
        return db.execute(sql, args, types)
    finally:
        db.execute("SELECT pg_catalog.set_config('search_path', $1, true)", [PINNED_SEARCH_PATH], ["text"])


_RELATION_SQL = ("SELECT n.nspname AS schema, c.relname AS name, c.relpersistence AS persistence "
                 "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
                 "WHERE c.oid OPERATOR(pg_catalog.=) $1")


def resolve(db, table: TableName) -> TableName:
    """The table the caller means, with its schema: an existing relation as the caller's own statement
    would find it (its OID kept), else where the caller's CREATE TABLE would put it (the first schema of
    its search_path that exists). A name in ``pg_temp`` stays there (the session's temporary schema)."""
    text = table.sql(db) if table.schema is not None else db.quote_ident(table.name)
    found = _as_caller(db, "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid AS oid", [text], ["text"])[0]["oid"]
    if found is not None:
        row = db.execute(_RELATION_SQL, [found], ["oid"])[0]
        return TableName(row["schema"], row["name"], temporary=row["persistence"] == "t", oid=int(found),
                         typed_schema=table.schema is not None)
    if table.schema is not None:
        return replace(table, temporary=table.schema == TEMP_SCHEMA)
    schema = _as_caller(db, "SELECT pg_catalog.current_schema() AS schema")[0]["schema"]
    if schema is None:
        raise InvalidArgument(f"table {table.name!r}: no schema to create it in (the search_path names none that "
                              "exists)", hint="Qualify the name with a schema, e.g. public." + table.name + ".")
    return TableName(schema, table.name, typed_schema=False)


def named_table(db, text: str | None, argument: str) -> TableName:
    """A table name the caller typed, parsed, its schema (when given) checked, and resolved."""
    parsed = parse_table_name(text, argument)
    check_schema_exists(db, parsed, text, argument)
    return resolve(db, parsed)


def summary_table(table: TableName, argument: str) -> TableName:
    """``<name>_summary`` in the same schema; refused when the server would have to truncate it."""
    name = table.name + "_summary"
    if len(name.encode()) > _MAX_BYTES:
        raise InvalidArgument(f"{argument}: name {table.name!r} is too long: its summary table {name!r} "
                              f"would be longer than {_MAX_BYTES} bytes")
    return table.sibling(name)


def output_table(db, text: str | None, argument: str) -> TableName:
    """A table name the caller wants created: valid, in an existing schema, and not taken."""
    table = named_table(db, text, argument)
    if table.oid is not None:
        raise ObjectExists(f"{argument}: table {text!r} already exists", hint="Drop it or choose another name.")
    return table
