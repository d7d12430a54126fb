"""The 'help' overloads MADlib users know: f() or f('') gives a summary, f('usage') the full usage."""

from __future__ import annotations

USAGE_WORDS = ("usage", "help", "?")


def answer(function: str, message: str | None, summary: str, usage: str) -> str:
    """Pick the text for ``function(message)``; an unknown message says which ones exist."""
    word = (message or "").strip().lower()
    if not word:
        return summary
    if word in USAGE_WORDS:
        return usage
    return (f"{function}: no help topic {message!r}. Use {function}() for a summary "
            f"or {function}('usage') for arguments and examples.")
