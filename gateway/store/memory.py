"""In-memory store: the Store protocol read a second time, plainly, for tests.

Nothing is durable: the state lives as long as the object. `open_store("memory://")` makes
one, but the configuration accepts only `sqlite:///` and `postgresql://` store URLs
(design.md), so a gateway never runs on it; only code reaches it (tests/test_store_contract.py
runs the store suite against it beside the other two).

Writes take the same path as in the other stores: `WriteQueue` checks and encodes each one
(`prepare`, so what they refuse it refuses) and queues it; one writer task takes what is
queued, up to MAX_BATCH, as one commit: it applies each write in queue order to the tables
(memory_tables.py, as SQLite's statements would), chains the commit's ledger entries
(gateway.ledger.entry_hash), adds them to the figures, tells the `on_commit` listeners, then
the callers. So `record_soon` returns at once, `lagging` and `caught_up` see a real backlog,
and closing commits what is still queued. `stats` is summed at read time (memory_stats.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime

from gateway.ledger import GENESIS, LedgerDraft, LedgerEntry, canonical_json, entry_hash, timestamp
from gateway.store import memory_stats
from gateway.store.base import (
    CommitListener,
    CoverageRow,
    DeliveryRecord,
    DeliveryState,
    StoredWarning,
    WarningState,
)
from gateway.store.memory_tables import Tables
from gateway.store.rows import Write, WriteResult
from gateway.store.tallies import StatsFigures
from gateway.store.write_queue import WriteQueue, notify, resolve, take_batch
from gateway.text import printable

log = logging.getLogger("gateway.store")


class MemoryStore(WriteQueue):
    """A store in dicts; see the module docstring. Records read back are the store's own:
    treat them as read-only (they are frozen; their dicts are not)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Write | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._committed = asyncio.Event()
        self._listeners: list[CommitListener] = []
        self._t = Tables()
        self._name = f"memory-{uuid.uuid4().hex}"

    async def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="memory-writer")

    async def close(self) -> None:
        await self._stop_writer()

    # -- writes ------------------------------------------------------------------------------

    def on_commit(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def _batch_done(self) -> asyncio.Event:
        return self._committed

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = await take_batch(self._queue, None)
            if batch:
                self._commit(batch)
            self._committed.set()
            await asyncio.sleep(0)  # producers run between commits, as while a disk writes

    def _commit(self, batch: list[Write]) -> None:
        """Apply `batch` as one commit; a write that cannot apply fails alone, to its caller."""
        done: list[tuple[Write, WriteResult]] = []
        committed: list[LedgerDraft] = []
        for w in batch:
            try:
                result, entries = self._t.apply(w)
            except ValueError as exc:
                _failed(w, exc)
                continue
            for draft in entries:
                self._chain(draft)
            committed.extend(entries)
            done.append((w, result))
        self._t.tally(committed)
        notify(self._listeners, committed)
        for w, result in done:
            resolve(w, result)

    def _chain(self, draft: LedgerDraft) -> None:
        last = self._t.ledger[-1] if self._t.ledger else None
        seq, prev = (last.seq + 1, last.hash) if last is not None else (1, GENESIS)
        at, stage, data = timestamp(draft.at), draft.stage.value, canonical_json(draft.data)
        digest = entry_hash(prev, seq, draft.warning_id, stage, at, draft.data, data)
        self._t.chain(LedgerEntry(seq, draft.warning_id, stage, at, json.loads(data), prev, digest))

    async def disable_endpoint(self, endpoint_id: str, reason: str, at: datetime) -> None:
        self._check_open()
        self._t.disabled[endpoint_id] = printable(reason)

    async def enable_endpoint(self, endpoint_id: str) -> bool:
        self._check_open()
        return self._t.disabled.pop(endpoint_id, None) is not None

    async def ping(self) -> None:
        self._check_open()

    # -- reads -------------------------------------------------------------------------------

    async def get_warning(self, warning_id: str) -> StoredWarning | None:
        return self._t.warnings.get(warning_id)

    async def entries_for(self, warning_id: str) -> list[LedgerEntry]:
        return list(self._t.entries_of.get(warning_id, []))

    async def ledger(self) -> AsyncIterator[LedgerEntry]:
        """Every entry in order, those appended while it is read included."""
        at = 0
        while at < len(self._t.ledger):
            yield self._t.ledger[at]
            at += 1

    async def unfinished(self) -> list[DeliveryRecord]:
        pending = (d for d in self._t.deliveries.values() if d.state == DeliveryState.PENDING)
        return sorted(pending, key=lambda d: d.level)

    async def pending_keys(self) -> list[tuple[str, str, int]]:
        return [(d.id, d.channel, d.level) for d in await self.unfinished()]

    async def deliveries_by_id(self, ids: Sequence[str]) -> list[DeliveryRecord]:
        found = (self._t.deliveries.get(i) for i in dict.fromkeys(ids))
        return [d for d in found if d is not None]

    async def deployment(self) -> str:
        return self._name

    async def deliveries_for(self, warning_id: str) -> list[DeliveryRecord]:
        return [self._t.deliveries[i] for i in self._t.deliveries_of.get(warning_id, [])]

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        return self._t.deliveries.get(delivery_id)

    async def coverage_for(self, warning_id: str) -> list[CoverageRow]:
        rows = self._t.coverage.get(warning_id, {})
        return [rows[t] for t in sorted(rows)]

    async def delivery_counts(self, warning_id: str) -> list[tuple[str | None, str, str, int]]:
        counts: dict[tuple[str | None, str, str], int] = {}
        for d in await self.deliveries_for(warning_id):
            key = (d.purpose, d.channel, d.state)
            counts[key] = counts.get(key, 0) + 1
        return [(*key, n) for key, n in counts.items()]

    async def warnings_received(self, start: datetime, end: datetime) -> list[StoredWarning]:
        return self._by_received(
            w for w in self._t.warnings.values() if start <= w.received_at < end
        )

    async def stats(
        self, start: datetime, end: datetime, district: str | None, listed: int
    ) -> StatsFigures:
        return memory_stats.figures(self._t, start, end, district, listed)

    async def unexpired_warnings(self, now: datetime) -> list[StoredWarning]:
        return self._by_received(w for w in self._t.warnings.values() if w.expires_at > now)

    async def active_warnings(self) -> list[StoredWarning]:
        return [w for w in self._t.warnings.values() if w.state == WarningState.ACTIVE]

    async def active_warning_ids(self) -> set[str]:
        return {w.id for w in await self.active_warnings()}

    async def disabled_endpoints(self) -> dict[str, str]:
        return dict(self._t.disabled)

    @staticmethod
    def _by_received(warnings: Iterable[StoredWarning]) -> list[StoredWarning]:
        return sorted(warnings, key=lambda w: w.received_at)


def _failed(w: Write, exc: Exception) -> None:
    if w.done is None:
        log.error("an outcome cannot be stored (%s); it resumes on restart", exc)
    elif not w.done.done():
        w.done.set_exception(exc)
