"""The write side both stores share: each Store write becomes a `Write` (rows.py), checked
and encoded by `prepare` before it joins the writer's queue (so one that cannot be stored is
refused to its caller alone), then committed by the store's own group-commit task.

A store subclasses `WriteQueue`, sets `_queue` and `_writer` when it opens, and says which event
its writer sets after each batch (`_batch_done`); it may add checks to `_prepare`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from gateway.exceptions import StoreUnavailable, Unstorable
from gateway.ledger import LedgerDraft, timestamp
from gateway.service import Service
from gateway.store.base import (
    CommitListener,
    Cover,
    CoverageRow,
    DeliveryRecord,
    DeliveryUpdate,
    StoredWarning,
)
from gateway.store.rows import Write, WriteResult, prepare, scrubbed

log = logging.getLogger("gateway.store")

MAX_BATCH = 256
"""Writes committed in one transaction at most."""
MAX_BACKLOG = 2 * MAX_BATCH
"""Queued writes beyond which producers of outcomes are asked to wait (`lagging`)."""


RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0
"""Backoff bounds of kept outcomes while the store cannot write (down, a full disk)."""


class Kept:
    """The SQL stores' kept outcomes: writes no one waits for (`record_soon`) whose commit
    failed because the store did, kept by identity in order and retried with backoff until
    they commit, so that an outcome is never forgotten before it is durable."""

    def __init__(self) -> None:
        self.writes: dict[int, Write] = {}
        self.at = 0.0
        """The loop time of the next retry."""
        self._backoff = 0.0

    def wait(self, now: float) -> float | None:
        """How long the writer may wait for new writes: until the next retry, or forever."""
        return max(0.0, self.at - now) if self.writes else None

    def due(self, now: float, stopping: bool) -> bool:
        return bool(self.writes) and (now >= self.at or stopping)

    def first(self, batch: Sequence[Write]) -> list[Write]:
        """The kept writes, no longer kept, then those of `batch` that are not among them."""
        kept, self.writes = self.writes, {}
        return [*kept.values(), *(w for w in batch if id(w) not in kept)]

    def healthy(self) -> None:
        """A commit went through."""
        if self._backoff:
            log.info("the store writes again")
        self._backoff = 0.0

    def failed(self, w: Write, exc: Exception, store_failed: bool) -> None:
        """`w` could not commit: its caller gets StoreUnavailable (503) when the store itself
        failed (`store_failed`), else `exc`; one no one waits for is kept when the store
        failed, else given up (it resumes on restart)."""
        if w.done is None:
            if not store_failed:
                log.error("an outcome cannot be stored (%s); it resumes on restart", exc)
                return
            self.writes.setdefault(id(w), w)
            self._backoff = min(RETRY_MAX_S, self._backoff * 2) if self._backoff else RETRY_MIN_S
            self.at = asyncio.get_running_loop().time() + self._backoff
            log.error(
                "the store cannot write (%s); %d outcomes kept, retried in %.1fs",
                exc,
                len(self.writes),
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


class WriteQueue(Service):
    """accept, retire, append, record, record_soon, escalate, lagging, caught_up of the Store
    protocol, over the store's queue of writes."""

    _queue: asyncio.Queue[Write | None]
    _writer: asyncio.Task[None] | None

    def _batch_done(self) -> asyncio.Event:
        """The event the writer sets after every batch."""
        raise NotImplementedError

    def _prepare(self, write: Write) -> Write:
        """`write` checked and encoded; Unstorable when it cannot be stored."""
        return prepare(write)

    async def accept(
        self,
        warning: StoredWarning,
        entries: Sequence[LedgerDraft],
        deliveries: Sequence[DeliveryRecord] = (),
        coverage: Sequence[CoverageRow] = (),
        retire: tuple[str, str] | None = None,
        escalated: tuple[Sequence[str], datetime] | None = None,
    ) -> tuple[StoredWarning, bool]:
        write = Write(entries, warning, deliveries, coverage=coverage, retire=retire)
        if escalated is not None:  # blind spots escalated at once (art. 20), with the warning
            write.escalated = (warning.id, escalated[0], timestamp(escalated[1]))
        result = await self._submit(write)
        assert isinstance(result, tuple)
        return result

    async def retire(
        self,
        warning_id: str,
        state: str,
        entries: Sequence[LedgerDraft],
        deliveries: Sequence[DeliveryRecord] = (),
    ) -> bool:
        done = await self._submit(Write(entries, deliveries=deliveries, retire=(warning_id, state)))
        return done is True

    async def append(self, entries: Sequence[LedgerDraft]) -> None:
        if entries:
            await self._submit(Write(entries))

    async def record(
        self,
        updates: Sequence[DeliveryUpdate],
        entries: Sequence[LedgerDraft],
        covers: Sequence[Cover] = (),
    ) -> None:
        if updates or entries or covers:
            await self._submit(Write(entries, updates=updates, covers=covers))

    def record_soon(
        self,
        updates: Sequence[DeliveryUpdate],
        entries: Sequence[LedgerDraft],
        covers: Sequence[Cover] = (),
        then: Callable[[], None] | None = None,
    ) -> None:
        self._check_open()
        write = Write(entries, updates=updates, covers=covers, then=then)
        try:
            self._prepare(write)
        except Unstorable as exc:
            # An outcome is not lost over a diagnostic text: stored with that text escaped.
            log.error("an outcome cannot be stored as given (%s); its text is escaped", exc)
            try:
                write = self._prepare(scrubbed(write))
                write.then = then
            except Unstorable:
                log.exception("an outcome cannot be stored; its delivery resumes on restart")
                return
        self._queue.put_nowait(write)

    async def escalate(
        self,
        warning_id: str,
        townships: Sequence[str],
        at: datetime,
        deliveries: Sequence[DeliveryRecord],
        entries: Sequence[LedgerDraft],
    ) -> list[DeliveryRecord]:
        escalated = (warning_id, townships, timestamp(at))
        done = await self._submit(Write(entries, deliveries=deliveries, escalated=escalated))
        assert isinstance(done, list)
        return done

    def lagging(self) -> bool:
        return self._queue.qsize() > MAX_BACKLOG

    async def caught_up(self) -> None:
        done = self._batch_done()
        while self._queue.qsize() > MAX_BACKLOG // 2:
            self._check_open()
            done.clear()
            await done.wait()

    def _check_open(self) -> None:
        if self._writer is None or self._writer.done():
            raise RuntimeError("the store is not open")

    async def _stop_writer(self) -> None:
        """Let the writer commit what is queued, then end it."""
        if self._writer is not None:
            await self._queue.put(None)
            await self._writer

    async def _submit(self, write: Write) -> WriteResult:
        self._check_open()
        self._prepare(write)  # raises to this caller alone
        write.done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(write)
        return await write.done


async def take_batch(
    queue: asyncio.Queue[Write | None], wait: float | None
) -> tuple[list[Write], bool]:
    """The next batch of `queue` (at most MAX_BATCH, the first awaited up to `wait` seconds,
    forever when None; empty when none came) and whether the writer is told to stop."""
    batch: list[Write] = []
    try:
        first = await asyncio.wait_for(queue.get(), wait)
    except TimeoutError:
        return batch, False
    if first is None:
        return batch, True
    batch.append(first)
    while len(batch) < MAX_BATCH and not queue.empty():
        item = queue.get_nowait()
        if item is None:
            return batch, True
        batch.append(item)
    return batch, False


def resolve(w: Write, result: WriteResult) -> None:
    """`w` is committed: tell whoever waits for it."""
    if w.done is not None and not w.done.done():
        w.done.set_result(result)
    if w.then is not None:
        try:
            w.then()
        except Exception:  # a caller's follow-up must never fail the writer
            log.exception("the follow-up of a write failed")


def notify(listeners: Sequence[CommitListener], committed: Sequence[LedgerDraft]) -> None:
    """Tell the listeners of the entries of a commit, if it had any."""
    for listener in listeners if committed else ():
        try:
            listener(committed)
        except Exception:  # an observer must never fail the writer
            log.exception("a commit listener failed")
