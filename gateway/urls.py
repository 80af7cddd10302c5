"""Checks of the service URLs named in settings, with any password in them masked."""

from __future__ import annotations

from urllib.parse import urlsplit


def masked(url: str) -> str:
    """`url` with a password in it replaced by ***."""
    head, at, host = url.rpartition("@")
    if not at or ":" not in head.partition("://")[2]:
        return url
    scheme, _, user = head.partition("://")
    return f"{scheme}://{user.partition(':')[0]}:***@{host}"


def url_problem(value: str, scheme: str) -> str | None:
    """Why `value` is not a `scheme://host:port` (or `{scheme}s://`) URL; None when it is.
    The reason never shows a password."""
    parts = urlsplit(value)
    shown = masked(value)
    if parts.scheme not in (scheme, scheme + "s") or not parts.hostname:
        return f"{shown!r} is not {scheme}://host:port"
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return f"{shown!r} has a bad port"
    return None
