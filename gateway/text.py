"""Text sanity at the edge (design.md, "Warning": every string valid Unicode; a one-line title
with visible text).

`unicode_errors` walks decoded JSON (dict keys and values, any depth) for strings that are not
valid Unicode: `json.loads` turns a `"\\ud800"` escape into a lone surrogate, which no UTF-8
encoder (canonical JSON, SQLite, SMTP, MQTT) accepts. The other checks are pydantic
`AfterValidator`s for the warning's fields: what goes into an email header (the title, into the
Subject) must be one line, and no field may carry control characters an adapter would pass on.
`in_utc` refuses the one kind of aware timestamp that parses but breaks later: one that cannot
be converted to UTC (year 1 with a positive offset, 9999 with a negative one).
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Any

from gateway.exceptions import FieldError

MAX_REPORTED = 20
"""At most this many invalid strings are named in one answer."""

# Line breaks that Python's str.splitlines() and mail/MQTT clients honour beyond CR/LF.
_LINE_BREAKS = frozenset("\u2028\u2029")
# Categories that show nothing on their own: controls, format (zero-width, bidi), surrogates,
# private use, unassigned, separators, combining marks with no base.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Me"})
# Letters and symbols that render as blank space.
_BLANK = frozenset("\u115f\u1160\u3164\uffa0\u2800")
_MULTILINE_ALLOWED = frozenset("\n\t")


def printable(text: str) -> str:
    """`text` with anything that is not valid Unicode escaped (`\\ud800`), safe to answer."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def scrub(value: Any) -> Any:
    """JSON-ready `value` with every string (key or value) that is not valid Unicode escaped
    (`\\ud800`); everything else as it is."""
    if isinstance(value, str):
        return value if valid_unicode(value) else printable(value)
    if isinstance(value, dict):
        return {scrub(k) if isinstance(k, str) else k: scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def valid_unicode(text: str) -> bool:
    """Whether `text` encodes as UTF-8 (holds no lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unicode_errors(value: object) -> list[FieldError]:
    """A FieldError for each string of decoded JSON `value`, key or value at any depth, that is
    not valid Unicode, named by its dotted path (`detail.phone`, `area.townships[0]`); at most
    MAX_REPORTED. Iterative: as deep as `json.loads` went, never a RecursionError."""
    errors: list[FieldError] = []
    stack: list[tuple[str, object]] = [("", value)]
    while stack and len(errors) < MAX_REPORTED:
        path, item = stack.pop()
        if isinstance(item, str):
            if not valid_unicode(item):
                errors.append(FieldError(path or "(body)", "not valid Unicode (lone surrogate)"))
        elif isinstance(item, dict):
            for key, child in item.items():
                name = str(key)
                if not valid_unicode(name):
                    where = f"{path}.{printable(name)}" if path else printable(name)
                    errors.append(FieldError(where, "the key is not valid Unicode"))
                    continue
                stack.append((f"{path}.{name}" if path else name, child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
    return errors


def one_line(text: str) -> str:
    """`text` if it holds no line break (CR, LF, U+2028/2029, NEL) and no other control
    character (category Cc); else ValueError. For what may reach a header: titles, names."""
    for ch in text:
        if ch in _LINE_BREAKS or unicodedata.category(ch) == "Cc":
            raise ValueError(f"must be one line without control characters (found U+{ord(ch):04X})")
    return text


def unix_newlines(value: object) -> object:
    """CRLF and lone CR as LF in multi-line text: a platform on Windows sends CRLF, and a
    warning must not be refused for its line endings."""
    if isinstance(value, str) and "\r" in value:
        return value.replace("\r\n", "\n").replace("\r", "\n")
    return value


def no_controls(text: str) -> str:
    """`text` if its only control characters (C0, DEL, C1) are LF and tab; else ValueError.
    For multi-line text: content, measures, development."""
    for ch in text:
        if unicodedata.category(ch) == "Cc" and ch not in _MULTILINE_ALLOWED:
            raise ValueError(f"must not contain control character U+{ord(ch):04X}")
    return text


def visible(text: str) -> str:
    """`text` if at least one character shows something (not whitespace, not a zero-width,
    bidi or other format character, not a control); else ValueError."""
    for ch in text:
        visible_char = ch not in _BLANK and not ch.isspace()
        if visible_char and unicodedata.category(ch) not in _INVISIBLE_CATEGORIES:
            return text
    raise ValueError("must contain visible text")


def in_utc(at: datetime) -> datetime:
    """`at` if it converts to UTC; else ValueError (not the OverflowError a later conversion
    would raise)."""
    try:
        at.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("cannot be represented in UTC") from exc
    return at
