"""The 'help' overloads MADlib users know: f() or f('') gives a summary, f('usage') the full usage."""

from __future__ import annotations

import re

from madlib_dl import session

USAGE_WORDS = ("usage", "help", "?")


def answer(function: str, message: str | None, summary: str, usage: str) -> str:
    """Pick the text for ``function(message)``; an unknown message says which ones exist. The texts'
    calls are written madlib_dl.f(...); they name the schema the extension was installed in."""
    word = (message or "").strip().lower()
    if not word:
        text = summary
    elif word in USAGE_WORDS:
        text = usage
    else:
        text = (f"{function}: no help topic {message!r}. Use madlib_dl.{function}() for a summary "
                f"or madlib_dl.{function}('usage') for arguments and examples.")
    return in_schema(text, session.schema() or "madlib_dl")


def in_schema(text: str, schema: str) -> str:
    return text if schema == "madlib_dl" else re.sub(r"\bmadlib_dl\.(?=\w+\()", f"{schema}.", text)
