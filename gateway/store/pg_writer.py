"""The PostgreSQL store's writer: group commit with retries, one task per process.

It takes whatever is queued (up to MAX_BATCH writes) and commits it as one transaction
(gateway/store/pg_write.py). A batch whose data fails it is retried write by write, so only the
failing write fails. A batch whose connection fails is tried once more on a fresh connection;
if its COMMIT had been sent, the chain tells whether it landed (`pg_write.landed`), so nothing
is written twice. Awaited writes that still fail get `StoreUnavailable`; outcomes no one waits
for (`record_soon`) are kept and retried with backoff until they commit, and held back while
it is unknown whether an earlier try of theirs landed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.ledger import LedgerDraft
from gateway.store import pg_write
from gateway.store.rows import Write, WriteResult
from gateway.store.write_queue import RETRY_MAX_S, Kept, notify, resolve, take_batch

log = logging.getLogger("gateway.store")


def environmental(exc: BaseException) -> bool:
    """Whether `exc` is the database failing (down, connection lost, disk full, a lock
    conflict), not the data."""
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | PoolTimeout)


class GroupCommit:
    """The queue of writes and the task (`run`) that commits them; `None` queued stops it."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool
        self.queue: asyncio.Queue[Write | None] = asyncio.Queue()
        self.committed = asyncio.Event()
        """Set after every batch."""
        self._kept = Kept()
        self._doubt: list[tuple[pg_write.Attempt, list[Write]]] = []
        self.listeners: list[Callable[[Sequence[LedgerDraft]], None]] = []
        """Called with the entries of each committed transaction (Store.on_commit)."""

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            batch, stopping = await take_batch(self.queue, self._kept.wait(loop.time()))
            if self._kept.due(loop.time(), stopping):
                await self._settle_doubts()
                if self._doubt:  # a kept outcome may have landed: none is retried yet
                    self._kept.at = loop.time() + RETRY_MAX_S
                else:
                    batch = self._kept.first(batch)
            if batch:
                await self._commit_batch(batch)
            self.committed.set()

    async def _commit_batch(self, batch: list[Write]) -> None:
        """Commit `batch` as one transaction; if its data fails it, each write alone."""
        try:
            results, entries_of = await self._commit(batch)
        except Exception as exc:
            if environmental(exc) or len(batch) == 1:
                for w in batch:
                    self._failed(w, exc)
                return
            log.warning("a store batch of %d writes failed; retrying them one by one", len(batch))
            for w in batch:
                await self._commit_batch([w])
            return
        self._kept.healthy()
        for w, r in zip(batch, results, strict=True):
            resolve(w, r)
        notify(self.listeners, [e for entries in entries_of for e in entries])

    async def _commit(
        self, batch: list[Write]
    ) -> tuple[list[WriteResult], list[Sequence[LedgerDraft]]]:
        """One transaction, tried again once on a fresh connection if the connection fails
        (unless its COMMIT was sent and whether it landed cannot be known yet)."""
        for retry in (False, True):
            attempt = pg_write.Attempt()
            try:
                async with self._pool.connection() as conn:
                    await pg_write.run(conn, batch, attempt)
                return attempt.results, attempt.entries_of
            except Exception as exc:
                if not environmental(exc):
                    raise
                if attempt.committing:
                    landed = await self._landed(attempt)
                    if landed:
                        return attempt.results, attempt.entries_of
                    if landed is None:
                        self._doubt.append((attempt, [w for w in batch if w.done is None]))
                        raise
                if retry:
                    raise
                log.warning("a store transaction failed (%s); trying it again", exc)
        raise AssertionError("unreachable")

    async def _landed(self, attempt: pg_write.Attempt) -> bool | None:
        """Whether a batch whose COMMIT went unanswered landed; None while that cannot be
        read."""
        try:
            async with self._pool.connection() as conn:
                return await pg_write.landed(conn, attempt)
        except Exception as exc:
            if not environmental(exc):
                raise
            return None

    async def _settle_doubts(self) -> None:
        """Drop the kept outcomes of unanswered batches that landed; those still unknown stay
        in `_doubt`, and no kept outcome is retried until they are known."""
        unknown = []
        for attempt, writes in self._doubt:
            landed = await self._landed(attempt)
            if landed is None:
                unknown.append((attempt, writes))
            elif landed:
                for w in writes:
                    self._kept.writes.pop(id(w), None)
        self._doubt = unknown

    def _failed(self, w: Write, exc: Exception) -> None:
        self._kept.failed(w, exc, environmental(exc))
