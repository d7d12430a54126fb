"""What the server's catalog says about existing tables and their columns."""

from __future__ import annotations

from dataclasses import dataclass

from madlib_dl import identifiers
from madlib_dl.errors import InvalidArgument, NotSupported, ObjectMissing, PermissionDenied
from madlib_dl.identifiers import TableName


@dataclass(frozen=True)
class Column:
    name: str
    type: str            # format_type(): 'integer[]', 'character varying', 'double precision' ...
    category: str        # pg_type.typcategory: 'N' numeric, 'S' string, 'B' boolean, 'A' array ...
    element_category: str | None  # for arrays: the element type's category
    type_oid: int

    @property
    def is_array(self) -> bool:
        return self.category == "A"

    @property
    def is_numeric_array(self) -> bool:
        return self.is_array and self.element_category == "N"


_COLUMNS_SQL = """
SELECT a.attname AS name, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type, t.typcategory AS category,
       e.typcategory AS element_category, a.atttypid::pg_catalog.int4 AS type_oid
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid
LEFT JOIN pg_catalog.pg_type e ON e.oid OPERATOR(pg_catalog.=) t.typelem AND t.typcategory OPERATOR(pg_catalog.=) 'A'
WHERE a.attrelid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass AND a.attnum OPERATOR(pg_catalog.>) 0
  AND NOT a.attisdropped
ORDER BY a.attnum"""


def input_table(db, text: str | None, argument: str) -> TableName:
    """A table (or view) the caller names as input: valid and existing."""
    table = identifiers.resolve(db, identifiers.parse_table_name(text, argument))
    if table.oid is None:
        raise ObjectMissing(f"{argument}: table {text!r} does not exist")
    require_select(db, table, argument, text)
    return table


def require_select(db, table: TableName, argument: str, text: str, companion: bool = False) -> None:
    """The caller must be able to read ``table``: the one the argument names as ``text``, or with
    ``companion`` one that goes with it (its summary, say). Refused up front, naming what the caller
    typed and the grant that is missing."""
    rows = db.execute("SELECT pg_catalog.has_table_privilege(pg_catalog.to_regclass($1), 'SELECT') AS ok",
                      [table.sql(db)], ["text"])
    if rows[0]["ok"] is False:
        which = f"table {str(table)!r} of {text!r}" if companion else f"table {text!r}"
        raise PermissionDenied(f"{argument}: permission denied to read {which}",
                               hint=f"Its owner can run GRANT SELECT ON {table.sql(db)} TO {_current_role(db)}.")


def _current_role(db) -> str:
    return db.quote_ident(db.execute("SELECT current_user AS r")[0]["r"])


def columns(db, table: TableName) -> dict[str, Column]:
    rows = db.execute(_COLUMNS_SQL, [table.sql(db)], ["text"])
    return {r["name"]: Column(r["name"], r["type"], r["category"], r["element_category"], r["type_oid"])
            for r in rows}


def column(db, table: TableName, text: str | None, argument: str) -> Column:
    """One column named by the caller (PostgreSQL identifier rules: folded unless quoted)."""
    if text is None or not text.strip():
        raise InvalidArgument(f"{argument}: expected a column name of {table}, got {'NULL' if text is None else 'an empty string'}")
    try:
        parts = identifiers.split_identifiers(text, argument)
    except InvalidArgument:
        parts = None
    if parts is None or len(parts) != 1:
        raise InvalidArgument(f"{argument}: expected one column name of {table}, got {text!r}")
    found = columns(db, table).get(parts[0])
    if found is None:
        raise InvalidArgument(f"{argument}: column {parts[0]!r} does not exist in table {table}")
    return found


def is_empty(db, table: TableName) -> bool:
    return not db.execute(f"SELECT 1 AS one FROM {table.sql(db)} LIMIT 1")


def store_uncompressed(db, table: TableName, columns) -> None:
    """Model states and packed buffers are float data that barely compresses: storing them out of line
    without trying (STORAGE EXTERNAL) saves pglz a pass over every value (writing a packed buffer about
    3 times faster), and its output buffer the size of the value (bench/FINDINGS.md)."""
    for column in columns:
        db.execute(f"ALTER TABLE {table.sql(db)} ALTER COLUMN {db.quote_ident(column)} SET STORAGE EXTERNAL")


def extension_schema(conn) -> str:
    """The schema of the extension's functions."""
    # the install script creates its own schema, so ask where its functions are (not pg_extension.extnamespace)
    rows = conn.execute("SELECT n.nspname AS schema FROM pg_extension e "
                        "JOIN pg_depend d ON d.refobjid = e.oid AND d.deptype = 'e' AND d.classid = 'pg_proc'::regclass "
                        "JOIN pg_proc p ON p.oid = d.objid JOIN pg_namespace n ON n.oid = p.pronamespace "
                        "WHERE e.extname = 'madlib_dl' AND p.proname = 'internal_worker_serve'")
    if not rows:
        raise ObjectMissing("madlib_dl: the extension is not installed in this database (CREATE EXTENSION madlib_dl)")
    return rows[0]["schema"]
