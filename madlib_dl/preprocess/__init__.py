"""Turning a table of examples into packed buffers (pure Python and numpy; no database code)."""
