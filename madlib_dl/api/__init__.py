"""SQL-facing functions: one module per family of user-facing SQL functions."""
