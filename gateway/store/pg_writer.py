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

from gateway.exceptions import StoreUnavailable
from gateway.ledger import LedgerDraft
from gateway.store import pg_write
from gateway.store.rows import Write, WriteResult
from gateway.store.write_queue import notify, resolve, take_batch

log = logging.getLogger("gateway.store")

RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0
"""Backoff bounds of kept outcomes while the database cannot write."""


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
        self._retry: list[Write] = []  # outcomes whose write failed, kept until they commit
        self._doubt: list[tuple[pg_write.Attempt, list[Write]]] = []
        self._retry_at = 0.0
        self._backoff = 0.0
        self.listeners: list[Callable[[Sequence[LedgerDraft]], None]] = []
        """Called with the entries of each committed transaction (Store.on_commit)."""

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            wait = max(0.0, self._retry_at - loop.time()) if self._retry else None
            batch, stopping = await take_batch(self.queue, wait)  # [] when retries are due
            if self._retry and (loop.time() >= self._retry_at or stopping):
                await self._settle_doubts()
                if self._doubt:  # a kept outcome may have landed: none is retried yet
                    self._retry_at = loop.time() + RETRY_MAX_S
                else:
                    kept = {id(w) for w in self._retry}
                    batch = [*self._retry, *(w for w in batch if id(w) not in kept)]
                    self._retry = []
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
        if self._backoff:
            log.info("the store writes again")
        self._backoff = 0.0
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
                gone = {id(w) for w in writes}
                self._retry = [w for w in self._retry if id(w) not in gone]
        self._doubt = unknown

    def _failed(self, w: Write, exc: Exception) -> None:
        """As in the SQLite store: StoreUnavailable to a waiting caller when the database
        failed; an outcome no one waits for is kept and retried with backoff until it
        commits."""
        store_failed = environmental(exc)
        if w.done is None:
            if not store_failed:
                log.error("an outcome cannot be stored (%s); it resumes on restart", exc)
                return
            if all(k is not w for k in self._retry):
                self._retry.append(w)
            self._backoff = min(RETRY_MAX_S, self._backoff * 2) if self._backoff else RETRY_MIN_S
            self._retry_at = asyncio.get_running_loop().time() + self._backoff
            log.error(
                "the store cannot write (%s); %d outcomes kept, retried in %.1fs",
                exc,
                len(self._retry),
                self._backoff,
            )
            return
        if store_failed:
            log.error("the store cannot write: %s", exc)
            error: Exception = StoreUnavailable(f"the store cannot write: {exc}")
            error.__cause__ = exc
        else:
            log.error("a store write failed", exc_info=exc)
            error = exc
        if not w.done.done():
            w.done.set_exception(error)
