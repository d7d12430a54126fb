"""``dependent_varname`` and ``independent_varname``: one column name, or (MADlib's multi-input /
multi-output packing) a comma-separated list of them."""

from __future__ import annotations

from madlib_dl.errors import InvalidArgument


def split_list(text: str | None, argument: str) -> list[str | None]:
    """The names of a comma-separated list as written, whitespace around them removed: ``'a, "B,c"'`` →
    ``['a', '"B,c"']`` (a comma inside double quotes is part of a quoted identifier). NULL or blank text
    is one element, for catalog.column to name the problem; an empty element (``'a,,b'``) is refused."""
    if text is None or not text.strip():
        return [text]
    parts, start, quoted = [], 0, False
    for i, char in enumerate(text):
        if char == '"':
            quoted = not quoted  # a doubled quote inside a quoted identifier toggles twice
        elif char == "," and not quoted:
            parts.append(text[start:i].strip())
            start = i + 1
    if quoted:
        raise InvalidArgument(f"{argument}: unterminated quoted identifier in {text!r}")
    parts.append(text[start:].strip())
    if not all(parts):
        raise InvalidArgument(f"{argument}: empty column name in the list {text!r}",
                              hint="Separate column names with single commas, e.g. 'a, b'.")
    return parts


def ordinal(index: int, count: int) -> str:
    """How a message names variable ``index`` of ``count``: nothing for the only one."""
    return "" if count == 1 else f" (variable {index + 1} of {count})"
