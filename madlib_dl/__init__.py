"""madlib_dl: Keras model selection inside PostgreSQL.

Layers (each imports only the ones below it): ``api`` (SQL-facing functions) -> ``keras_runtime``
(Keras models, parameter strings, model state) -> ``db`` (plpy inside the server, psycopg2 outside).
``tools`` holds the client-side commands (install, embedded cluster, demo); the server never imports it.
"""

__version__ = "0.1.0"
