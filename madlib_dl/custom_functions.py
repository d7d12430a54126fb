"""Custom losses and metrics: Python functions kept (dill-pickled) in an object table, MADlib's layout
``id SERIAL, name TEXT PRIMARY KEY, description TEXT, object BYTEA``.

Unpickling runs code as the server's OS user, so the rules are about who could have written the bytes:

* only trusted roles load (a superuser or a member of :data:`LOADER_ROLE`, which the extension creates
  and the DBA grants);
* at every use, before anything is unpickled, the table must be a plain table owned by a trusted role,
  no untrusted role may be able to write to it (INSERT, UPDATE, DELETE, TRUNCATE or TRIGGER, by grant,
  by PUBLIC, through a group or pg_write_all_data), and it may have no triggers;
* any role that may SELECT from the table may use its functions.

MADlib checks only that the owner is a superuser; a grant of INSERT to PUBLIC then runs anyone's code.
The check and the read are one transaction under an ACCESS SHARE lock taken first, so the table cannot
be dropped, replaced or given away between them (only its trusted owner can grant).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from madlib_dl import catalog, identifiers
from madlib_dl.errors import InvalidArgument, ObjectMissing, PermissionDenied
from madlib_dl.identifiers import TableName
from madlib_dl.keras_runtime import params
from madlib_dl.segment.requests import ObjectTable

LOADER_ROLE = "madlib_dl_code_loader"
COLUMNS = {"name": ("text", "character varying"), "object": ("bytea",)}  # the columns read
CREATE_SQL = "CREATE TABLE {table} (id SERIAL, name TEXT PRIMARY KEY, description TEXT, object BYTEA NOT NULL)"
NAME_LIMIT = 63  # a custom function's name becomes a metric's name in output tables

LOADER_HINT = (f"Loading code that runs as the server's operating-system user takes a role the DBA trusts: "
               f"GRANT {LOADER_ROLE} TO <role> (see docs/security.md).")


@dataclass(frozen=True)
class CustomFunction:
    name: str
    function: object
    digest: str  # sha256 of the pickled bytes: a compiled model is reused only with the same function


# ---------------------------------------------------------------------------------------------------
# Who is trusted

_TRUSTED_ROLE = ("(SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) {role}) "
                 "OR COALESCE(pg_catalog.pg_has_role({role}, (SELECT l.oid FROM pg_catalog.pg_roles l "
                 f"WHERE l.rolname OPERATOR(pg_catalog.=) '{LOADER_ROLE}'), 'MEMBER'), false)")

_TRUST_SQL = f"""
SELECT c.relkind::text AS kind, pg_catalog.pg_get_userbyid(c.relowner) AS owner,
       {_TRUSTED_ROLE.format(role="c.relowner")} AS owner_trusted,
       EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid OPERATOR(pg_catalog.=) c.oid
               AND NOT t.tgisinternal) AS has_triggers,
       ARRAY(SELECT w.rolname::text FROM pg_catalog.pg_roles w
             WHERE w.oid OPERATOR(pg_catalog.>=) 16384  -- predefined roles (pg_write_all_data): their members count
               AND NOT ({_TRUSTED_ROLE.format(role="w.oid")})
               AND (pg_catalog.has_table_privilege(w.oid, c.oid, 'DELETE, TRUNCATE, TRIGGER')
                    OR pg_catalog.has_any_column_privilege(w.oid, c.oid, 'INSERT, UPDATE'))
             ORDER BY 1 LIMIT 5) AS writers
FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1"""


def may_load(db) -> bool:
    """Whether the current user may load or delete custom functions."""
    user = "(SELECT u.oid FROM pg_catalog.pg_roles u WHERE u.rolname OPERATOR(pg_catalog.=) current_user)"
    return bool(db.execute(f"SELECT {_TRUSTED_ROLE.format(role=user)} AS ok")[0]["ok"])


def require_loader(db, function: str, doing: str = "load or delete custom functions") -> None:
    """``function``: what the error begins with; ``doing``: what takes the trust."""
    if not may_load(db):
        user = db.execute("SELECT current_user AS u")[0]["u"]
        raise PermissionDenied(f"{function}: role {user!r} may not {doing}: only superusers "
                               f"and members of {LOADER_ROLE} may", hint=LOADER_HINT)


CALLBACKS_DOING = "use callbacks, which write files as the server's operating-system user"


def require_callbacks_allowed(db, fit_params: str | None, where: str) -> None:
    """fit_params with callbacks (TensorBoard writes files on the server) take a trusted role."""
    if params.parse_fit_params(fit_params, where).callbacks:
        require_loader(db, f"{where}: callbacks", CALLBACKS_DOING)


def trust_problem(db, oid: int) -> str | None:
    """Why the relation ``oid`` cannot be trusted as an object table (None: it can)."""
    rows = db.execute(_TRUST_SQL, [oid], ["oid"])
    if not rows:
        return "it no longer exists"
    row = rows[0]
    if row["kind"] != "r":
        return "it is not a plain table (views, partitioned and foreign tables are refused)"
    if not row["owner_trusted"]:
        return (f"its owner {row['owner']!r} is neither a superuser nor a member of {LOADER_ROLE}, so the code "
                "it holds may come from anyone")
    if row["writers"]:
        return (f"role(s) {', '.join(repr(w) for w in row['writers'])} can write to it but may not load code "
                f"(revoke INSERT, UPDATE, DELETE, TRUNCATE and TRIGGER from them, or from PUBLIC)")
    if row["has_triggers"]:
        return "it has triggers, whose functions could change what it holds"
    return None


# ---------------------------------------------------------------------------------------------------
# Finding and checking a table

def resolve(db, text: str | None, argument: str = "object_table") -> ObjectTable:
    """An existing, readable, trusted object table the caller names."""
    table = catalog.input_table(db, text, argument)
    return check(db, _ref(table, text), argument)


def _ref(table: TableName, text: str) -> ObjectTable:
    return ObjectTable(table.schema, table.name, table.oid, text)


def check(db, ref: ObjectTable, argument: str = "object_table") -> ObjectTable:
    """Lock ``ref`` against drop and replacement for the rest of the transaction, then check its layout
    and that it can be trusted. Done by every process before it reads names or unpickles anything."""
    db.execute(f"LOCK TABLE ONLY {ref.sql(db)} IN ACCESS SHARE MODE")
    now = db.execute("SELECT pg_catalog.to_regclass($1)::pg_catalog.oid AS oid", [ref.sql(db)], ["text"])[0]["oid"]
    if now is None or int(now) != ref.oid:
        raise ObjectMissing(f"{argument}: table {str(ref)!r} was dropped or replaced during the call")
    problem = trust_problem(db, ref.oid)
    if problem is not None:
        raise PermissionDenied(f"{argument}: {str(ref)!r} cannot hold custom functions: {problem}", hint=LOADER_HINT)
    present = catalog.columns(db, TableName(ref.schema, ref.name))
    wrong = [f"{c} {t[0]}" for c, t in COLUMNS.items() if c not in present or present[c].type not in t]
    if wrong:
        raise InvalidArgument(f"{argument}: {str(ref)!r} is not an object table (it needs column(s) {', '.join(wrong)})",
                              hint="Make one with load_custom_function().")
    return ref


def available(db, ref: ObjectTable | None) -> frozenset[str]:
    """The names compile_params may use besides Keras' built-ins (none without an object table). ``ref``:
    as :func:`named` returned it in this transaction, so checked and locked already."""
    if ref is None:
        return frozenset()
    return frozenset(r["name"] for r in db.execute(f"SELECT name FROM ONLY {ref.sql(db)}"))


def for_models(db, ref: ObjectTable, compile_params: dict) -> dict:
    """key -> {name: CustomFunction}: the functions of ``ref`` that each model's compile_params (key ->
    text) name as its loss or metrics. The table is checked once, and each function unpickled once
    however many models use it, only after the check."""
    check(db, ref)
    names = available(db, ref)
    wanted = {key: params.custom_names(params.parse_compile_params(text, custom=names))
              for key, text in compile_params.items()}
    loaded = _load(db, ref, set().union(*wanted.values()))
    return {key: {name: loaded[name] for name in used} for key, used in wanted.items()}


def _load(db, ref: ObjectTable, wanted: set) -> dict[str, CustomFunction]:
    if not wanted:
        return {}
    rows = db.execute(f"SELECT name, object FROM ONLY {ref.sql(db)} WHERE name OPERATOR(pg_catalog.=) ANY($1)",
                      [sorted(wanted)], ["text[]"])
    found = {r["name"]: bytes(r["object"]) for r in rows}
    missing = sorted(wanted - set(found))
    if missing:
        raise InvalidArgument(f"object_table: {str(ref)!r} holds no function {', '.join(map(repr, missing))}")
    return {name: CustomFunction(name, unpickle(blob, f"object_table: function {name!r} of {str(ref)!r}"),
                                 hashlib.sha256(blob).hexdigest()) for name, blob in found.items()}


def unpickle(blob: bytes, what: str):
    """A function from dill's bytes; only ever called on bytes a trusted role wrote."""
    import dill  # imported here: only sessions that use custom functions pay for it

    try:
        function = dill.loads(blob)
    except Exception as error:  # noqa: BLE001: any failure of foreign bytes is the caller's to fix
        raise InvalidArgument(f"{what}: not a dill-pickled function ({type(error).__name__}: {error})") from None
    if not callable(function):
        raise InvalidArgument(f"{what}: not a function but a {type(function).__name__}")
    return function


def in_scope(db, ref: ObjectTable | None):
    """A block in which compile parameters may name ``ref``'s functions (params.custom_functions); ``ref``
    as :func:`named` returned it in this transaction."""
    return params.custom_functions(available(db, ref))


def table_text(db, table: ObjectTable | None) -> str | None:
    """The object table as the summaries store it (schema-qualified, quoted where needed)."""
    return None if table is None else table.sql(db)


def named(db, text: str | None, argument: str = "object_table") -> ObjectTable | None:
    """``object_table`` as fit, fit_multiple, evaluate and automl take it, or as a summary stores it
    (:func:`table_text`): NULL for none."""
    return None if text is None else resolve(db, text, argument)
