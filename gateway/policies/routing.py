"""Routing: which endpoints a warning goes to, from its area, level, audience and channels.

One delivery per endpoint. A delivery's id, `{warning_id}/{endpoint_id}`, is its idempotency
key: the same for every attempt and across restarts. Townships of the area that no chosen
township-level endpoint serves are the blind spots (art. 20); city-wide media partners do not
close them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from gateway.endpoints import EndpointBook
from gateway.model import Warning
from gateway.townships import Registry
from gateway.values import Endpoint


def delivery_id(warning_id: str, endpoint_id: str) -> str:
    return f"{warning_id}/{endpoint_id}"


@dataclass(frozen=True)
class Plan:
    townships: tuple[str, ...]
    endpoints: tuple[Endpoint, ...]
    blind_spots: tuple[str, ...]


def plan(
    warning: Warning, book: EndpointBook, registry: Registry, enabled: Collection[str]
) -> Plan:
    """The endpoints for `warning` among channels `enabled` (and its own `channels` list)."""
    townships = registry.expand(warning.area.codes())
    channels = set(enabled)
    if warning.channels is not None:
        channels &= {c.value for c in warning.channels}
    chosen = [
        e
        for e in book.serving(townships)
        if e.channel in channels
        and warning.audience.value in e.audiences
        and warning.level in e.levels
    ]
    reached = {t for e in chosen if e.covers_townships for t in e.townships}
    blind = tuple(t for t in townships if t not in reached)
    return Plan(tuple(townships), tuple(chosen), blind)
