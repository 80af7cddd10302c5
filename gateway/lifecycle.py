"""A warning's life after acceptance (art. 18): superseded by an update, ended by a cancel
(终止预警), or expired.

When a warning ends, its pending deliveries stop (state `stopped`), the ledger records why
(`superseded`, `cancelled`, `expired`), and the retained MQTT messages of its boards and
loudspeakers are cleared by `clear` deliveries, durable and retried like any other; at expiry the
partners that got it are sent a `warning.expired` webhook. Expiry
timers are rebuilt from the store on start, so they survive restarts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from datetime import datetime

from gateway.dispatcher import Dispatcher
from gateway.jobs import CLEAR, EXPIRED, notice_of
from gateway.ledger import LedgerDraft, Stage
from gateway.service import Service
from gateway.store import Store
from gateway.store.base import DeliveryRecord, DeliveryState, StoredWarning, WarningState
from gateway.timers import Sleep, Timers

log = logging.getLogger("gateway.lifecycle")

Clock = Callable[[], datetime]


def clear_deliveries(
    warning_id: str, deliveries: Sequence[DeliveryRecord], clearing: Collection[str]
) -> list[DeliveryRecord]:
    """One `clear` delivery per endpoint of a `clearing` channel (one that keeps what it sent,
    as MQTT keeps retained messages) the warning was, or may have been, sent to."""
    reached = [d for d in deliveries if d.channel in clearing and d.state != DeliveryState.FAILED]
    return _after_end(warning_id, reached, CLEAR)


def expiry_notices(warning_id: str, deliveries: Sequence[DeliveryRecord]) -> list[DeliveryRecord]:
    """One `warning.expired` webhook per partner that got the warning (design.md)."""
    got = (DeliveryState.DELIVERED, DeliveryState.SENT)
    reached = [d for d in deliveries if d.channel == "webhook" and d.state in got]
    return _after_end(warning_id, reached, EXPIRED)


def _after_end(
    warning_id: str, deliveries: Sequence[DeliveryRecord], purpose: str
) -> list[DeliveryRecord]:
    """A `purpose` delivery (id `{warning}/{purpose}/{endpoint}`) to the endpoint of each of the
    warning's own `deliveries`."""
    return [
        DeliveryRecord(
            id=f"{warning_id}/{purpose}/{d.endpoint_id}",
            warning_id=warning_id,
            endpoint_id=d.endpoint_id,
            channel=d.channel,
            level=d.level,
            purpose=purpose,
        )
        for d in deliveries
        if d.purpose is None
    ]


class Lifecycle(Service):
    """Expiry timers and the follow-up of superseded or cancelled warnings."""

    def __init__(
        self, store: Store, dispatcher: Dispatcher, *, clock: Clock, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.clock = clock
        self._timers = Timers("expiry", clock=clock, sleep=sleep)

    async def start(self) -> None:
        for w in await self.store.active_warnings():
            self.watch(w)  # a warning that expired while the gateway was down ends at once

    async def close(self) -> None:
        await self._timers.close()

    def clears_after(
        self, warning_id: str, deliveries: Sequence[DeliveryRecord]
    ) -> list[DeliveryRecord]:
        """The clears of a warning that ends, whose `deliveries` these are."""
        return clear_deliveries(warning_id, deliveries, self.dispatcher.clearing)

    def watch(self, stored: StoredWarning) -> None:
        """Expire `stored` at its expires_at."""
        if stored.state == WarningState.ACTIVE:
            self._timers.at(stored.id, stored.expires_at, lambda: self._at_expiry(stored))

    def watches(self, warning_id: str) -> bool:
        """Whether the expiry of `warning_id` is watched here."""
        return self._timers.has(warning_id)

    def unwatch(self, warning_id: str) -> None:
        self._timers.cancel(warning_id)

    async def _at_expiry(self, stored: StoredWarning) -> None:
        try:
            data: dict[str, object] = {"expires_at": stored.expires_at.isoformat()}
            await self.end(stored, WarningState.EXPIRED, Stage.EXPIRED, data)
        except Exception:
            log.exception("expiry of %s failed", stored.id)

    async def end(
        self, stored: StoredWarning, state: str, stage: Stage, data: dict[str, object]
    ) -> None:
        """Retire `stored` (stop its deliveries, clear its retained messages)."""
        self.unwatch(stored.id)
        current = await self.store.get_warning(stored.id)
        if current is None or current.state != WarningState.ACTIVE:
            return
        deliveries = await self.store.deliveries_for(stored.id)
        clears = self.clears_after(stored.id, deliveries)
        if state == WarningState.EXPIRED:  # partners hear of it; a cancel is a warning of its own
            clears += expiry_notices(stored.id, deliveries)
        entry = LedgerDraft(stored.id, stage, self.clock(), data)
        if await self.store.retire(stored.id, state, [entry], clears):
            await self.after_retire(stored, clears)
        else:  # another process ended it first, and sends the clears
            await self.dispatcher.stop(stored.id)

    async def after_retire(self, stored: StoredWarning, clears: Sequence[DeliveryRecord]) -> None:
        """Once the store says `stored` is over: stop its tasks, send the clears."""
        self.unwatch(stored.id)
        await self.dispatcher.stop(stored.id)
        await self.dispatcher.dispatch(await notice_of(self.store, stored), clears)
