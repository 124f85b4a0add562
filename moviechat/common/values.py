"""Values read from users and files, one way everywhere: booleans spelled as words, and short excerpts of what a
file held for an error message (never the whole file: a linked ``/etc/passwd`` or ``secret.env`` stays unprinted)."""

from __future__ import annotations

import math

TRUE = ("true", "yes", "on", "1")
FALSE = ("false", "no", "off", "0")


def parse_bool(value: object, name: str) -> bool:
    """``value`` as a boolean: True/False, 1/0, or true/false/yes/no/on/off/1/0 in any case; anything else raises
    ``ValueError`` naming ``name``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(f"{name}={excerpt(value)} must be true or false (also yes/no, on/off, 1/0)")


def finite_number(value: object, minimum: float = -math.inf) -> bool:
    """A finite number of at least ``minimum``: not a boolean (``True`` is an int in Python), not a string, not
    NaN or infinity."""
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            and value >= minimum)


def excerpt(value: object, limit: int = 40) -> str:
    """``value`` for an error message: a text's ``repr`` of at most ``limit`` printable characters, anything
    else's ``repr`` cut to ``limit``."""
    text = value if isinstance(value, str) else repr(value)
    short = "".join(c if c.isprintable() else "?" for c in text[:limit])
    more = f" (and {len(text) - limit} more characters)" if len(text) > limit else ""
    return (repr(short) if isinstance(value, str) else short) + more
