"""The dispatcher's relay onto the shared queue (gateway/coord/streams.py): what one process
dispatches, whichever process has a free worker sends.

Per channel a feeder claims entries while that channel's local queue has room (at most its
`concurrency` waiting), so a busy process leaves work to the others; it reads each claimed
delivery from the store, and queues it here only if it is still pending (the store is the
truth: an entry of a delivery that ended or was stopped is acked at once). A delivery stays
claimed while this process works on it, retries included: its claim is renewed every third
of `claim_idle_s`, and acked (deleted) once its outcome is durable (`ended`). Claims of a
process that stopped renewing them are taken over after `claim_idle_s`. A claim this process
lost (Redis lost its data, or another process took it) is dropped here; Redis losing data is
repaired by the sweeper, so no delivery is lost with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import RedisError, ResponseError

from gateway.coord.control import Control
from gateway.coord.streams import Entry, Streams
from gateway.dispatcher import Dispatcher
from gateway.exceptions import StoreUnavailable
from gateway.jobs import notice_of
from gateway.ledger import LedgerDraft, Stage
from gateway.redis_link import stop_tasks
from gateway.service import Service
from gateway.store import Store
from gateway.store.base import DeliveryRecord, DeliveryState
from gateway.values import Notice

log = logging.getLogger("gateway.coord")

READ_BLOCK_MS = 1000
MAX_READ = 256
FULL_POLL_S = 0.01
"""How often a feeder whose channel has no room looks again."""
RETRY_MIN_S, RETRY_MAX_S = 0.1, 5.0
NOTICES_KEPT = 1000
MAX_TAKE_OVER = 20_000
"""Claims taken over in one round at most (the next round takes the rest)."""


class SharedQueue(Service):
    """`Relay` of a dispatcher over Redis Streams; an async context manager that runs the
    feeders, renewals, take-overs and acks (attach it to the dispatcher before entering)."""

    def __init__(
        self,
        streams: Streams,
        control: Control,
        store: Store,
        dispatcher: Dispatcher,
        *,
        claim_idle_s: float,
    ) -> None:
        self.streams = streams
        self.control = control
        self.store = store
        self.dispatcher = dispatcher
        self.claim_idle_s = claim_idle_s
        self._held: dict[str, Entry] = {}  # by delivery id: the entry this process claimed
        self._acks: list[Entry] = []
        self._acked = asyncio.Event()
        self._unpushed: list[tuple[str, str, int]] = []
        self._notices: dict[str, Notice] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._redis_down = False
        self._closing = False

    async def start(self) -> None:
        with contextlib.suppress(RedisError):  # else the loops create them once Redis is up
            await self.streams.ensure_groups()
        every = max(0.5, self.claim_idle_s / 3)
        self._tasks = [
            *(
                asyncio.create_task(self._feed(channel), name=f"feed {channel}")
                for channel in self.dispatcher.runtimes
            ),
            asyncio.create_task(self._every(every, self._renew), name="coord renew"),
            asyncio.create_task(self._every(every, self._take_over), name="coord take-over"),
            asyncio.create_task(self._flush_acks(), name="coord acks"),
            asyncio.create_task(self._every(1.0, self._push_kept), name="coord push"),
        ]

    async def close(self) -> None:
        self._closing = True
        await stop_tasks(self._tasks)
        try:
            await self.streams.ack(self._acks)
            await self.streams.push(self._unpushed)
            await self._hand_back()
        except (RedisError, StoreUnavailable, OSError) as exc:
            log.warning("claims not handed back (%s): taken over after claim_idle_s", exc)

    async def _hand_back(self) -> None:
        """Queue again, for the others at once, what this process still holds (else taken
        over after claim_idle_s); the dispatcher's workers stopped first."""
        held = {e.id: e for e in [*self._held.values(), *await self.streams.mine()]}
        if not held:
            return
        records = await self.store.deliveries_by_id(list({e.delivery_id for e in held.values()}))
        again = [r for r in records if r.state == DeliveryState.PENDING]
        await self.streams.push([(r.id, r.channel, r.level) for r in again])
        pending = {r.id for r in again}
        await self.streams.ack([e for e in held.values() if e.delivery_id in pending], done=False)
        await self.streams.ack([e for e in held.values() if e.delivery_id not in pending])
        log.info("handed %d unfinished deliveries back to the queue", len(again))

    # -- Relay ---------------------------------------------------------------------------

    async def publish(self, records: Sequence[DeliveryRecord]) -> None:
        keys = [(r.id, r.channel, r.level) for r in records]
        try:
            await self.streams.push(keys)
        except RedisError as exc:
            # Durable already: queued once Redis answers (or by the sweeper).
            self._lost(exc)
            self._unpushed += keys

    def ended(self, delivery_id: str) -> None:
        entry = self._held.pop(delivery_id, None)
        if entry is not None:
            self._acks.append(entry)
            self._acked.set()

    async def stop_everywhere(self, warning_id: str) -> None:
        await self.control.stop_everywhere(warning_id)

    # -- loops ---------------------------------------------------------------------------

    async def _every(self, seconds: float, work: Callable[[], Any]) -> None:
        while not self._closing:
            await asyncio.sleep(seconds)
            try:
                await work()
                self._up()
            except RedisError as exc:
                self._lost(exc)
            except Exception:
                log.exception("%s failed", getattr(work, "__name__", "coordination"))

    async def _feed(self, channel: str) -> None:
        runtime = self.dispatcher.runtimes[channel]
        backoff = RETRY_MIN_S
        while not self._closing:
            room = runtime.concurrency - self.dispatcher.backlog(channel)
            if room <= 0:
                await asyncio.sleep(FULL_POLL_S)
                continue
            try:
                entries = await self.streams.read(channel, min(room, MAX_READ), READ_BLOCK_MS)
                if entries:
                    await self._claimed(entries)
                self._up()
                backoff = RETRY_MIN_S
            except (RedisError, StoreUnavailable) as exc:
                await self._recover(exc)
                await asyncio.sleep(backoff)
                backoff = min(RETRY_MAX_S, backoff * 2)

    async def _recover(self, exc: Exception) -> None:
        if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
            log.warning("the delivery queue is gone from Redis (restarted?); creating it again")
            with contextlib.suppress(RedisError):
                await self.streams.ensure_groups()
            return
        if isinstance(exc, RedisError):
            self._lost(exc)
        else:
            log.error("cannot read claimed deliveries from the store: %s", exc)

    async def _claimed(self, entries: Sequence[Entry], *, taken_over: bool = False) -> None:
        """Queue here the claimed `entries` whose deliveries are pending; ack the rest. Those
        `taken_over` from a silent process are recorded in the ledger as queued again."""
        again: list[Entry] = []
        fresh: list[Entry] = []
        for e in entries:
            if e.delivery_id in self._held:
                again.append(e)
            else:
                # Held (so renewed) from now on: reading the store may take a while (it may
                # be down), and a claim left idle meanwhile would be taken over and sent twice.
                self._held[e.delivery_id] = e
                fresh.append(e)
        records = {r.id: r for r in await self._read([e.delivery_id for e in fresh])}
        over: list[Entry] = []
        by_warning: dict[str, list[DeliveryRecord]] = {}
        for e in fresh:
            if self._held.get(e.delivery_id) is not e:
                continue  # lost meanwhile (another process holds it now)
            rec = records.get(e.delivery_id)
            if rec is None or rec.state != DeliveryState.PENDING:
                del self._held[e.delivery_id]
                over.append(e)
                continue
            by_warning.setdefault(rec.warning_id, []).append(rec)
        for warning_id, recs in by_warning.items():
            try:
                notice = await self._notice(warning_id)
            except Exception:
                # Left claimed and not renewed: taken over (here or elsewhere) once idle.
                for r in recs:
                    self._held.pop(r.id, None)
                raise
            if notice is None:
                log.error("deliveries of unknown warning %s were queued", warning_id)
                over += [self._held.pop(r.id) for r in recs]
                continue
            self.dispatcher.take(notice, recs)
            if taken_over:
                self._record_resumed(warning_id, recs)
        await self.streams.ack(again, done=False)
        await self.streams.ack(over)

    def _record_resumed(self, warning_id: str, recs: Sequence[DeliveryRecord]) -> None:
        """The `queued` entry of deliveries resumed here after their process went silent (as
        a restarted gateway records what it resumes)."""
        channels: dict[str, int] = {}
        for r in recs:
            channels[r.channel] = channels.get(r.channel, 0) + 1
        data = {"deliveries": len(recs), "channels": channels, "resumed": True}
        entry = LedgerDraft(warning_id, Stage.QUEUED, self.dispatcher.clock(), data)
        self.store.record_soon([], [entry])

    async def _read(self, ids: Sequence[str]) -> list[DeliveryRecord]:
        """The deliveries of `ids`, waiting out a store outage (they stay claimed)."""
        backoff = RETRY_MIN_S
        while not self._closing:
            try:
                return await self.store.deliveries_by_id(ids) if ids else []
            except (StoreUnavailable, OSError) as exc:
                log.error("cannot read claimed deliveries from the store: %s", exc)
            await asyncio.sleep(backoff)
            backoff = min(RETRY_MAX_S, backoff * 2)
        raise asyncio.CancelledError  # closing: the claims are taken over (or handed back)

    async def _notice(self, warning_id: str) -> Notice | None:
        notice = self._notices.get(warning_id)
        if notice is None:
            stored = await self.store.get_warning(warning_id)
            if stored is None:
                return None
            notice = await notice_of(self.store, stored)
            if len(self._notices) >= NOTICES_KEPT:
                del self._notices[next(iter(self._notices))]
            self._notices[warning_id] = notice
        return notice

    async def _renew(self) -> None:
        by_stream: dict[str, list[Entry]] = {}
        for e in list(self._held.values()):
            by_stream.setdefault(e.stream, []).append(e)
        lost: list[str] = []
        for stream, entries in by_stream.items():
            try:
                gone = set(await self.streams.renew(stream, [e.id for e in entries]))
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                gone = {e.id for e in entries}  # Redis lost the queue: the sweeper refills it
            lost += [e.delivery_id for e in entries if e.id in gone]
        if lost:
            log.warning("%d claimed deliveries are no longer this gateway's", len(lost))
            for delivery_id in lost:
                self._held.pop(delivery_id, None)
            self.dispatcher.drop(lost)

    async def _take_over(self) -> None:
        idle_ms = int(self.claim_idle_s * 1000)
        taken: list[Entry] = []
        for stream in self.streams.all_streams():
            while not self._closing and len(taken) < MAX_TAKE_OVER:
                entries = await self.streams.take_over(stream, idle_ms, MAX_READ)
                taken += entries
                if len(entries) < MAX_READ:
                    break
        if taken:
            log.warning("taking over %d deliveries of a gateway gone silent", len(taken))
            await self._claimed(taken, taken_over=True)

    async def _flush_acks(self) -> None:
        while not self._closing:
            await self._acked.wait()
            self._acked.clear()
            await asyncio.sleep(0.005)  # gather the acks of a burst into one round trip
            batch, self._acks = self._acks, []
            try:
                await self.streams.ack(batch)
                self._up()
            except RedisError as exc:
                self._lost(exc)
                self._acks = batch + self._acks
                await asyncio.sleep(RETRY_MIN_S)
                self._acked.set()

    async def _push_kept(self) -> None:
        if self._unpushed:
            kept, self._unpushed = self._unpushed, []
            try:
                await self.streams.push(kept)
            except RedisError:
                self._unpushed = kept + self._unpushed
                raise
            log.info("queued %d deliveries kept while Redis was unreachable", len(kept))

    def _lost(self, exc: Exception) -> None:
        if not self._redis_down:
            log.error("Redis is unreachable (%s); deliveries claimed here go on", exc)
        self._redis_down = True

    def _up(self) -> None:
        if self._redis_down:
            log.info("Redis answers again")
        self._redis_down = False
