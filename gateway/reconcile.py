"""Retained MQTT messages as desired state (design.md "Delivery under faults").

A broker that crashes may come back with an old or empty retained store (Mosquitto saves it
every 30 minutes at best). So after every (re)connection of the MQTT channel, and every
`interval_s`, the `Reconciler` republishes the retained message of every delivered topic of
every active warning, and clears again the topics of warnings retired before they expired.
Each warning gets one ledger entry (`sent`, `reconciled`) per reconciliation, not one per topic.
A topic is never republished once its warning is retired (`retired`): a clear is not undone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from gateway.channels.base import Channel, Message
from gateway.channels.mqtt import DEFAULT_RECONCILE_S
from gateway.endpoints import EndpointBook
from gateway.exceptions import DeliveryError
from gateway.ledger import LedgerDraft, Stage
from gateway.service import Service
from gateway.store import Store
from gateway.store.base import DeliveryRecord, DeliveryState, StoredWarning, WarningState
from gateway.values import Endpoint, Notice

log = logging.getLogger("gateway.reconcile")

Clock = Callable[[], datetime]
BATCH = 64
"""Topics republished at once (the MQTT client bounds its own in-flight window)."""
CLEAR = "clear"


class Reconciler(Service):
    """Runs reconciliations of `channel` (MQTT) on reconnect and every `interval_s`; an async
    context manager. `retired(warning_id)` tells whether the dispatcher has stopped a warning
    (its clears may be under way)."""

    def __init__(
        self,
        store: Store,
        channel: Channel,
        book: EndpointBook,
        *,
        clock: Clock,
        retired: Callable[[str], bool],
        interval_s: float = DEFAULT_RECONCILE_S,
    ) -> None:
        self.store = store
        self.channel = channel
        self.book = book
        self.clock = clock
        self.retired = retired
        self.interval_s = interval_s
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.runs = 0
        channel.on_reconnect(self._kick.set)

    async def start(self) -> None:
        self._kick.set()  # a restarted gateway repairs what the broker lost meanwhile
        self._task = asyncio.create_task(self._loop(), name="mqtt reconcile")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._kick.wait()
            self._kick.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("MQTT reconciliation failed; the next one retries")

    async def reconcile(self) -> None:
        """One pass over every unexpired warning (see the module docstring)."""
        now = self.clock()
        warnings = await self.store.unexpired_warnings(now)
        entries: list[LedgerDraft] = []
        for stored in warnings:
            records = [d for d in await self.store.deliveries_for(stored.id) if d.channel == "mqtt"]
            data = await self._warning(stored, records)
            if data is not None:
                entries.append(LedgerDraft(stored.id, Stage.SENT, self.clock(), data))
        if entries:
            await self.store.append(entries)
        self.runs += 1
        log.info("MQTT reconciled: %d warnings", len(entries))

    async def _warning(
        self, stored: StoredWarning, records: Sequence[DeliveryRecord]
    ) -> dict[str, Any] | None:
        active = stored.state == WarningState.ACTIVE and not self.retired(stored.id)
        if active:
            wanted = [
                d for d in records if d.purpose is None and d.state == DeliveryState.DELIVERED
            ]
        else:
            wanted = [
                d for d in records if d.purpose == CLEAR and d.state == DeliveryState.DELIVERED
            ]
        if not wanted:
            return None
        notice = Notice.from_document(stored.warning)
        done = failed = 0
        for start in range(0, len(wanted), BATCH):
            batch = wanted[start : start + BATCH]
            results = await asyncio.gather(
                *(self._one(notice, d, active) for d in batch), return_exceptions=True
            )
            for r in results:
                if isinstance(r, BaseException):
                    failed += 1
                elif r:
                    done += 1
        if active and self.retired(stored.id):
            # Retired while republishing: its clears are queued; clear what was republished.
            await asyncio.gather(
                *(self._clear(d, stored.id) for d in wanted), return_exceptions=True
            )
        kind = "republished" if active else "cleared"
        return {"reconciled": "mqtt", kind: done, "failed": failed}

    async def _one(self, notice: Notice, rec: DeliveryRecord, active: bool) -> bool:
        endpoint = self.book.by_id.get(rec.endpoint_id)
        if endpoint is None:
            return False
        if not active:
            await self._clear(rec, notice.id, endpoint)
            return True
        if self.retired(notice.id):
            return False
        try:
            await self.channel.send(Message(rec.id, notice, endpoint, rec.attempts))
        except DeliveryError as exc:
            log.warning("republish of %s failed: %s", rec.id, exc)
            raise
        return True

    async def _clear(
        self, rec: DeliveryRecord, warning_id: str, endpoint: Endpoint | None = None
    ) -> None:
        endpoint = endpoint or self.book.by_id.get(rec.endpoint_id)
        if endpoint is None or len(endpoint.townships) != 1:
            return
        await self.channel.clear(endpoint, warning_id)
