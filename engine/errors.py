"""Readable validation errors: every message names the field and what is allowed.

Messages echo what was given so a person can find it, but never more than a short excerpt:
a spec is user input, and a 10 MB name must not become 10 MB of error text (``short``).
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationError

ECHO_LIMIT = 80  # characters of a value's repr echoed in an error message
MAX_PROBLEMS = 25  # lines of one error message; the rest are counted, not listed


def short(value: Any, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)``, cut to ``limit`` characters with ``… (N chars)`` when longer.

    Long containers are sliced before ``repr`` so that echoing a 100 000-item list costs
    as little as echoing a short one.
    """
    if isinstance(value, list | tuple) and len(value) > limit:
        text = repr(type(value)(value[:limit]))
        return f"{text[:limit]}… ({len(value)} items)"
    if isinstance(value, dict) and len(value) > limit:
        return f"{{…}} ({len(value)} keys)"
    if isinstance(value, str) and len(value) > 4 * limit:
        # repr of a huge string is itself huge: cut first, count the original.
        return f"{value[:limit]!r}… ({len(value)} chars)"
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} chars)"


def clip(text: str, limit: int = 400) -> str:
    """Plain text (already safe to show) cut to ``limit`` characters, counting the rest."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def control_chars(text: str) -> str | None:
    """A description of the first control character in ``text`` (NUL, escape, newline, …),
    or None when there is none. Names are shown in terminals, logs, file names and HTML,
    where such characters hide or rewrite what a person reads."""
    for i, ch in enumerate(text):
        if unicodedata.category(ch) == "Cc":
            return f"control character U+{ord(ch):04X} at position {i}"
    return None


def named(field: str, message: str) -> str:
    """``field: message``; just ``message`` when ``field`` is empty (inside a pydantic field
    validator, whose error location already names the field)."""
    return f"{field}: {message}" if field else message


def check_name(value: str, field: str = "") -> str:
    """``value`` unchanged, or ``ValueError`` naming ``field`` when it holds a control
    character (leave ``field`` empty in a pydantic field validator)."""
    bad = control_chars(value)
    if bad:
        raise ValueError(named(field, f"must not contain a {bad} (got {short(value)})"))
    return value


# A name a person gave (a study, a method, a matrix label): printable, checked where declared.
# (A lambda: pydantic would take check_name's second parameter for its validation info.)
Printable = Annotated[str, AfterValidator(lambda v: check_name(v))]


def join_problems(problems: list[str]) -> str:
    """Problems one per line, at most ``MAX_PROBLEMS`` of them, then how many more."""
    if len(problems) <= MAX_PROBLEMS:
        return "\n".join(problems)
    rest = len(problems) - MAX_PROBLEMS
    return "\n".join([*problems[:MAX_PROBLEMS], f"… and {rest} more problem(s)"])


def field_part(part: Any) -> str:
    """One part of a field path for a message; a user's dict key is shown as is when short
    and printable, else shortened like any echoed value."""
    if isinstance(part, int) or (isinstance(part, str) and len(part) <= 40
                                 and not control_chars(part)):
        return str(part)
    return short(part, 40)


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """Turn a pydantic error into one line per problem: ``field.path: message (got value)``."""
    lines = []
    for item in err.errors(include_url=False):
        loc = ".".join(field_part(p) for p in (*((prefix,) if prefix else ()), *item["loc"]))
        msg = item["msg"]
        if item["type"] == "value_error":
            # Our own validators already prefix each line with its field path.
            msg = msg.removeprefix("Value error, ")
            # A model validator reports many problems in one message, one per line.
            lines.extend(line if not loc else f"{loc}: {line}" for line in msg.splitlines())
            continue
        if "input" in item and item["type"] not in ("missing",):
            got = item["input"]
            if not isinstance(got, dict | list):
                msg = f"{msg} (got {short(got)})"
        lines.append(f"{loc or '<spec>'}: {msg}")
    return join_problems(lines)


class SpecError(ValueError):
    """A study spec that cannot be run; ``str(err)`` lists every problem, one per line."""


class MapError(SpecError):
    """A spectral map that has no answer for this input (or whose factorisation failed on it).

    The message names the map, the input's shape and the reason, e.g.
    ``freon: no answer for a matrix of shape (1, 64): …``. ``nonfinite`` says the input held
    NaN or inf, which a training loop with ``nonfinite="propagate"`` turns into a divergence.
    """

    def __init__(self, map_name: str, shape: tuple[int, ...], reason: str,
                 nonfinite: bool = False) -> None:
        self.map_name, self.shape, self.reason, self.nonfinite = map_name, shape, reason, nonfinite
        super().__init__(f"{map_name}: no answer for a matrix of shape {shape}: {reason}")
