"""The form of madlib_dl's own error messages: what went wrong in the message, what to do in the HINT
(psql shows it on a line of its own; a client reads it from its own field)."""

import ast
import re
from pathlib import Path

from madlib_dl import errors

PACKAGE = Path(errors.__file__).resolve().parent
ERROR_TYPES = {name for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, errors.MadlibDLError)}
# an instruction after "; " in a message: it belongs in the hint
REMEDY = re.compile(r"; (use|run|give|pass|choose|make|rename|set|try|drop|raise|call|install|reconnect|write) ")


def _raised_messages():
    """(file:line, the message's literal text) of every `raise <MadlibDLError type>(message, ...)`."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if "tools" in path.relative_to(PACKAGE).parts:  # client commands: they exit with a message
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            call = node.exc if isinstance(node, ast.Raise) else None
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in ERROR_TYPES
                    and call.args):
                continue
            parts = [n.value for n in ast.walk(call.args[0]) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            yield f"{path.relative_to(PACKAGE)}:{node.lineno}", "".join(parts)


def test_the_scan_finds_the_messages():
    found = dict(_raised_messages())
    assert len(found) > 100
    assert any("already exists" in text for text in found.values())


def test_remedies_are_hints_not_part_of_the_message():
    inline = [f"{where}: {text}" for where, text in _raised_messages() if REMEDY.search(text)]
    assert not inline, "\n".join(inline)


def test_hints_are_sentences():
    """PostgreSQL's style for HINT: a capitalized sentence ending in a period."""
    hints = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.keyword) and node.arg == "hint" and isinstance(node.value, (ast.Constant, ast.JoinedStr)):
                parts = [n.value for n in ast.walk(node.value) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                hints.append((f"{path.relative_to(PACKAGE)}:{node.lineno}", "".join(parts)))
    assert len(hints) >= 10
    bad = [f"{where}: {text!r}" for where, text in hints if not (text[:1].isupper() and text.endswith("."))]
    assert not bad, "\n".join(bad)
