"""Live updates for the console: which warnings changed, from the store's commits to every
open page (Server-Sent Events).

`Hub` is the extension point: `InProcessHub` serves one process; `RedisHub` (redis_hub.py)
also carries the `Change`s over Redis pub/sub, so that pages served by one process see the
commits of another (design.md "Storage and several processes").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from gateway.ledger import LedgerDraft

MAX_PENDING = 1000
"""Changed warnings a slow subscriber may owe before it is told that everything changed."""


@dataclass(frozen=True)
class Change:
    """A committed change of one warning: the ledger stages it wrote (received, delivered,
    receipt, escalated, cancelled, ...)."""

    warning_id: str
    stages: frozenset[str]


def changes_of(entries: Sequence[LedgerDraft]) -> list[Change]:
    """One `Change` per warning that `entries` (one transaction's) touch."""
    stages: dict[str, set[str]] = {}
    for e in entries:
        stages.setdefault(e.warning_id, set()).add(e.stage.value)
    return [Change(wid, frozenset(s)) for wid, s in stages.items()]


class Subscription:
    """What one page is owed: the ids of the warnings changed since it last asked. Changes
    coalesce, so a fast fan-out costs a slow page a set of ids, not a queue of events."""

    def __init__(self) -> None:
        self._pending: set[str] = set()
        self._everything = False
        self._closed = False
        self._ready = asyncio.Event()

    def offer(self, changes: Iterable[Change]) -> None:
        for c in changes:
            self._pending.add(c.warning_id)
        if len(self._pending) > MAX_PENDING:
            self._pending.clear()
            self._everything = True
        self._ready.set()

    def resync(self) -> None:
        """Changes may have been lost: the page is told that everything may have changed."""
        self._pending.clear()
        self._everything = True
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def next(self) -> tuple[frozenset[str], bool] | None:
        """Wait for changes; (changed ids, whether everything may have changed), or None once
        the hub is closing."""
        await self._ready.wait()
        self._ready.clear()
        if self._closed:
            return None
        out = (frozenset(self._pending), self._everything)
        self._pending.clear()
        self._everything = False
        return out


class Hub(Protocol):
    """Carries `Change`s from where they commit to the pages that show them.

    `publish` (and `publish_entries`, the store's `CommitListener`) must not block (it runs in
    the store's commit path); `subscribe` gives a `Subscription` for as long as the context is
    open; `close` (at shutdown) ends every subscription's `next` with None. Delivery is best
    effort: a page that reconnects refetches what it shows, and a hub that may have lost
    changes tells its subscriptions so (`Subscription.resync`), so a lost change costs nothing.
    """

    def publish(self, changes: Sequence[Change]) -> None: ...

    def publish_entries(self, entries: Sequence[LedgerDraft]) -> None: ...

    def subscribe(self) -> AbstractAsyncContextManager[Subscription]: ...

    def close(self) -> None: ...


class InProcessHub:
    """A `Hub` for one process: every subscription hears every change published here."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    def publish(self, changes: Sequence[Change]) -> None:
        if changes:
            for s in self._subscriptions:
                s.offer(changes)

    def publish_entries(self, entries: Sequence[LedgerDraft]) -> None:
        """A `CommitListener`: what a transaction committed, published."""
        self.publish(changes_of(entries))

    @asynccontextmanager
    async def _subscribed(self) -> AsyncIterator[Subscription]:
        s = Subscription()
        self._subscriptions.add(s)
        try:
            yield s
        finally:
            self._subscriptions.discard(s)

    def subscribe(self) -> AbstractAsyncContextManager[Subscription]:
        return self._subscribed()

    def resync(self) -> None:
        """Tell every subscription that everything may have changed."""
        for s in self._subscriptions:
            s.resync()

    def close(self) -> None:
        for s in self._subscriptions:
            s.close()

    def subscribers(self) -> int:
        return len(self._subscriptions)
