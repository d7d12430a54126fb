"""madlib_dl: Keras model selection inside PostgreSQL.

Layers (each imports only the ones below it): ``api`` (SQL-facing functions) -> ``keras_runtime``
(Keras models, parameter strings, model state) -> ``db`` (plpy inside the server, psycopg2 outside).
``tools`` holds the client-side commands (install, embedded cluster, demo); the server never imports it.
"""

__version__ = "0.2.0"


def require_version(version: str) -> None:
    """Every SQL function body calls this with the version its install script declares: a session must
    not run another version's code against this database's functions (after an upgrade of the files
    without ALTER EXTENSION, or a session that imported madlib_dl before the extension was updated)."""
    if version != __version__:
        from madlib_dl import db
        from madlib_dl.errors import WrongVersion

        db.current().fail(WrongVersion(f"this database's extension is version {version} but this session runs "
                                       f"madlib_dl {__version__}",
                                       hint="Run ALTER EXTENSION madlib_dl UPDATE, then reconnect."))
