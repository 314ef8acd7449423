"""Readable validation errors: every message names the field and what is allowed."""

from __future__ import annotations

from pydantic import ValidationError


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """Turn a pydantic error into one line per problem: ``field.path: message (got value)``."""
    lines = []
    for item in err.errors():
        loc = ".".join(str(p) for p in (*((prefix,) if prefix else ()), *item["loc"]))
        msg = item["msg"]
        if item["type"] == "value_error":
            # Our own validators already prefix each line with its field path.
            msg = msg.removeprefix("Value error, ")
            lines.append(msg if not loc else f"{loc}: {msg}")
            continue
        if "input" in item and item["type"] not in ("missing",):
            got = item["input"]
            if not isinstance(got, dict | list):
                msg = f"{msg} (got {got!r})"
        lines.append(f"{loc or '<spec>'}: {msg}")
    return "\n".join(lines)


class SpecError(ValueError):
    """A study spec that cannot be run; ``str(err)`` lists every problem, one per line."""
