"""The dispatcher: runs every planned delivery to its end, durably.

Each channel has a queue, most urgent first (level 1, red, before level 4, blue; FIFO within a
level), and `concurrency` worker tasks that take deliveries from it, so a red warning never
waits behind a queued blue fan-out and at most `concurrency` sends of a channel are in flight.
MQTT leads: while it has deliveries queued as urgent as theirs and is making progress, the other
channels hold back (`LeadGate`), so boards and loudspeakers are reached first.
A worker respects the channel's rate limit, sends, and hands the outcome and its ledger entries
to the store's next group commit (`record_soon`) before taking the next delivery; when the
store falls behind, the workers wait for it. A delivery whose outcome was not yet written
stays `pending` in the store, so a crash loses nothing: on
start the dispatcher resumes every pending delivery, and a resumed delivery keeps its id, which
is its idempotency key at the far side.

A transient failure is retried by the channel's retry policy until the warning's expiry; the
delivery waits out its backoff (or an open circuit of its endpoint) outside the queue, in the
`WaitRoom`, and holds no worker meanwhile. What it waits for (the channel's broker or server,
or its endpoint) coming back wakes it at once: a send through it that succeeds, a channel's
reconnection, or the room's probe. At most `per_endpoint` sends to one endpoint are in flight;
more wait parked, so a hanging endpoint holds few workers. Dead letters (`failed`) are permanent
errors and expiry only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from gateway.attempts import Attempts
from gateway.coverage import escalation_notice
from gateway.dispatch_types import ChannelRuntime, Relay
from gateway.endpoints import EndpointBook
from gateway.flow import EndpointSlots, LeadGate
from gateway.jobs import AFTER_END, EXPIRED, Job, notice_of
from gateway.ledger import LedgerDraft, Stage
from gateway.outcomes import Outcomes
from gateway.policies.breaker import CircuitBreaker
from gateway.service import Service
from gateway.store import Store
from gateway.store.base import DeliveryRecord
from gateway.townships import Registry
from gateway.values import Notice
from gateway.waitroom import DEFAULT_PROBE_S, WaitRoom

__all__ = ["ChannelRuntime", "Dispatcher", "Relay"]

log = logging.getLogger("gateway.dispatcher")

Clock = Callable[[], datetime]
LEAD_STALL_S = 0.25
LEAD_MAX_HOLD_S = 1.0
DISABLED_REFRESH_S = 10.0
"""How often the disabled endpoints are read again (`gateway partners enable` lifts one)."""
RETIRED_KEPT = 10_000
# A worker whose sends complete without suspending (a stub) lets others run this often.
YIELD_EVERY = 32
Sleep = Callable[[float], Awaitable[None]]


_Queue = asyncio.PriorityQueue[tuple[int, int, Job]]


class Dispatcher(Service, Attempts):
    """Owns the channel workers; an async context manager (exit cancels what is in flight,
    which stays `pending` in the store and resumes on the next start)."""

    def __init__(
        self,
        store: Store,
        book: EndpointBook,
        runtimes: Mapping[str, ChannelRuntime],
        breaker: CircuitBreaker,
        *,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        registry: Registry | None = None,
        probe_s: float = DEFAULT_PROBE_S,
    ) -> None:
        self.store = store
        self.book = book
        self.runtimes = runtimes
        self.breaker = breaker
        self.clock = clock
        self.sleep = sleep
        self.registry = registry
        self.disabled: dict[str, str] = {}
        self._queues: dict[str, _Queue] = {name: asyncio.PriorityQueue() for name in runtimes}
        self._order = itertools.count()
        self._workers: set[asyncio.Task[None]] = set()
        self._sending: dict[asyncio.Task[Any], Job] = {}
        self._jobs: dict[str, set[Job]] = {}  # by warning: what `stop` stops (not clears)
        self._outcomes = Outcomes(store, clock)
        self._retired: dict[str, None] = {}  # warnings stopped lately, oldest first
        self._tasks: set[asyncio.Task[None]] = set()
        # Boards and loudspeakers reach everyone in an area at once: their deliveries lead.
        self._leading = frozenset(name for name, rt in runtimes.items() if rt.leads)
        self._lead = LeadGate(LEAD_STALL_S, LEAD_MAX_HOLD_S) if self._leading else None
        self._start_order = {name: rt.start_order for name, rt in runtimes.items()}
        self.clearing = frozenset(name for name, rt in runtimes.items() if rt.clears)
        """The channels whose deliveries are cleared when their warning ends."""
        self._room: WaitRoom[Job] = WaitRoom(
            self._requeue, rank=lambda job: job.rec.level, sleep=sleep, probe_s=probe_s
        )
        self._slots: dict[str, EndpointSlots[Job]] = {
            name: EndpointSlots(runtime.per_endpoint) for name, runtime in runtimes.items()
        }
        self._closing = False
        self._live: dict[str, Job] = {}  # every delivery of this process not yet ended
        self.relay: Relay | None = None
        for name, runtime in runtimes.items():
            runtime.channel.on_reconnect(functools.partial(self.wake, name))

    def attach(self, relay: Relay) -> None:
        """Queue through `relay` from now on (before `async with`): several processes."""
        self.relay = relay
        self._outcomes.on_durable = relay.ended

    async def start(self) -> None:
        self.disabled = await self.store.disabled_endpoints()
        self._background(self._refresh_disabled())
        for name, runtime in self.runtimes.items():
            for _ in range(runtime.concurrency):
                self._start_worker(name)
        if self.relay is None:  # else a dead process's claims are taken over (gateway/coord)
            await self.resume()

    async def close(self) -> None:
        self._closing = True
        self._room.close()
        tasks = [*self._workers, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as a task of the dispatcher (cancelled on exit); failures are logged."""

        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("dispatcher background task failed")

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_disabled(self) -> None:
        while True:
            await asyncio.sleep(DISABLED_REFRESH_S)  # not the injected sleep: it may not wait
            with contextlib.suppress(Exception):  # a store hiccup: keep what is known
                self.disabled = await self.store.disabled_endpoints()

    async def resume(self) -> None:
        """Queue every delivery left `pending` by an earlier process."""
        pending = await self.store.unfinished()
        by_warning: dict[str, list[DeliveryRecord]] = {}
        for rec in pending:
            by_warning.setdefault(rec.warning_id, []).append(rec)
        for warning_id, records in by_warning.items():
            stored = await self.store.get_warning(warning_id)
            if stored is None:
                log.error("deliveries of unknown warning %s left pending", warning_id)
                continue
            await self.dispatch(await notice_of(self.store, stored), records, resumed=True)
        if pending:
            log.info(
                "resumed %d unfinished deliveries of %d warnings", len(pending), len(by_warning)
            )

    async def dispatch(
        self, notice: Notice, records: Sequence[DeliveryRecord], *, resumed: bool = False
    ) -> None:
        """Queue `records` (deliveries of `notice`) and record that in the ledger."""
        if not records:
            return
        counts: dict[str, int] = {}
        for rec in records:
            counts[rec.channel] = counts.get(rec.channel, 0) + 1
        data: dict[str, Any] = {"deliveries": len(records), "channels": counts}
        if resumed:
            data["resumed"] = True
        # Not awaited: the deliveries are durable already, and queueing them must not wait for
        # (or fail with) the store; the entry rides the next group commit.
        self.store.record_soon([], [LedgerDraft(notice.id, Stage.QUEUED, self.clock(), data)])
        if self.relay is not None:
            await self.relay.publish(records)
        else:
            self.take(notice, records)

    def take(self, notice: Notice, records: Sequence[DeliveryRecord]) -> None:
        """Queue `records` (pending deliveries of `notice`) on this process's channel queues;
        one already here is not queued twice."""
        # Idle workers wake in this order: boards and loudspeakers first, they reach everyone
        # in the area at once; the order among channels of one level is only a head start.
        ordered = sorted(records, key=lambda r: self._start_order.get(r.channel, 99))
        tracked = self._jobs.setdefault(notice.id, set())
        for rec in ordered:
            if rec.id in self._live:
                continue
            job_notice = notice
            if rec.purpose == EXPIRED:
                job_notice = replace(notice, msg_type=EXPIRED)
            elif rec.escalation_of and self.registry is not None:
                job_notice = escalation_notice(notice, rec.escalation_of, self.registry)
            job = Job(job_notice, rec, self.book.by_id.get(rec.endpoint_id), rec.attempts)
            if rec.purpose not in AFTER_END:
                tracked.add(job)
            self._live[rec.id] = job
            self._enqueue(job)
        if not tracked:
            del self._jobs[notice.id]

    def tracked(self) -> set[str]:
        """The warnings this process has deliveries of that their end would stop."""
        return set(self._jobs)

    def backlog(self, channel: str) -> int:
        """Deliveries of `channel` waiting here for a worker."""
        return self._queues[channel].qsize()

    def drop(self, delivery_ids: Sequence[str]) -> None:
        """Let go of deliveries another process now holds (this one's claim lapsed): they
        are not sent again from here (a send in flight ends as it will)."""
        for delivery_id in delivery_ids:
            job = self._live.pop(delivery_id, None)
            if job is not None:
                job.stopped = True
                self._room.discard(self._wait_key(job), job)
                self._forget(job)

    async def stop(self, warning_id: str, *, everywhere: bool = True) -> None:
        """Stop the deliveries of a warning (superseded, cancelled, expired), which the store
        has already marked stopped: drop the queued ones, interrupt the sends in flight and
        return once none of them can still reach an endpoint, here and (`everywhere`, with
        a relay) in every other process."""
        await self._stop_here(warning_id)
        if everywhere and self.relay is not None:
            await self.relay.stop_everywhere(warning_id)

    async def _stop_here(self, warning_id: str) -> None:
        self._outcomes.forget(warning_id)
        self._retired[warning_id] = None
        if len(self._retired) > RETIRED_KEPT:
            del self._retired[next(iter(self._retired))]
        jobs = self._jobs.pop(warning_id, set())
        for job in jobs:
            job.stopped = True
            self._room.discard(self._wait_key(job), job)  # so no probe picks a dead delivery
            if self._live.pop(job.rec.id, None) is not None and self.relay is not None:
                self.relay.ended(job.rec.id)  # the store marked it stopped already
        halted = []
        loop = asyncio.get_running_loop()
        for task, job in list(self._sending.items()):
            if job.stopped and job.halted is None:
                job.halted = loop.create_future()
                halted.append(job.halted)
                task.cancel()
        await asyncio.gather(*halted)

    def queued(self) -> dict[str, int]:
        """Deliveries waiting in each channel's queue for a worker."""
        return {name: queue.qsize() for name, queue in self._queues.items()}

    def retired(self, warning_id: str) -> bool:
        """Whether `warning_id` was stopped (superseded, cancelled, expired) lately."""
        return warning_id in self._retired

    def wake(self, channel: str) -> None:
        """The channel's connection is back: its waiting deliveries go now, its endpoints'
        circuits close (design.md "Delivery under faults")."""
        woken = self._room.wake(channel)
        for endpoint_id in self.breaker.open_ids():
            endpoint = self.book.by_id.get(endpoint_id)
            if endpoint is not None and endpoint.channel == channel:
                self.breaker.success(endpoint_id)
        if woken:
            log.info("%s is back: %d waiting deliveries go now", channel, woken)

    def _requeue(self, job: Job) -> None:
        if not job.stopped and not self._closing:
            self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        queue = self._queues.get(job.rec.channel)
        if queue is None:
            self._forget(job)
            self._outcomes.final(job.rec, job.attempts, "channel no longer configured")
            return
        if self._lead is not None and job.rec.channel in self._leading:
            self._lead.queued(job.rec.level)
        queue.put_nowait((job.rec.level, next(self._order), job))

    def _start_worker(self, channel: str) -> None:
        task = asyncio.create_task(self._work(channel), name=f"{channel} worker")
        self._workers.add(task)
        task.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        self._workers.discard(task)
        if task.cancelled() or self._closing:
            return
        # A bug must not shrink a channel's capacity for good.
        log.error("worker %s crashed; starting another", task.get_name(), exc_info=task.exception())
        self._start_worker(task.get_name().removesuffix(" worker"))

    async def _work(self, channel: str) -> None:
        queue = self._queues[channel]
        runtime = self.runtimes[channel]
        task = asyncio.current_task()
        assert task is not None
        # This channel reports to the lead gate when it leads, and asks it when it follows.
        leading = self._lead if channel in self._leading else None
        following = self._lead if channel not in self._leading else None
        ran = 0
        while True:
            *_, job = await queue.get()
            if leading is not None:
                leading.taken(job.rec.level)
            elif following is not None:
                while following.holds(job.rec.level):
                    await following.wait()
            if job.stopped:
                continue
            slots = self._slots[channel]
            if not slots.take(job.rec.endpoint_id, job, job.rec.level):
                continue  # parked until a send to its endpoint ends; the worker goes on
            try:
                await self._run(runtime, job, task, leading)
            finally:
                parked = slots.give(job.rec.endpoint_id)
                if parked is not None:
                    self._enqueue(parked)
            ran += 1
            if ran % YIELD_EVERY == 0 or self.store.lagging():
                await self._pace()

    async def _run(
        self,
        runtime: ChannelRuntime,
        job: Job,
        task: asyncio.Task[Any],
        leading: LeadGate | None,
    ) -> None:
        """One attempt at `job` by the worker `task`; nothing but a cancellation escapes."""
        try:
            if await self._deliver(runtime, job, task):
                self._forget(job)
            if leading is not None:
                leading.progressed()
        except asyncio.CancelledError:
            if job.halted is not None and task.cancelling() == 0:
                return  # `stop` interrupted this send; the worker carries on
            raise
        except Exception as exc:
            # A bug here must not leave the delivery silently pending until a restart.
            log.exception("delivery %s failed in the dispatcher", job.rec.id)
            self._forget(job)
            self._outcomes.final(job.rec, job.attempts, f"internal error: {type(exc).__name__}")

    async def _pace(self) -> None:
        """Let the others run, and wait for the store when it falls behind."""
        if self.store.lagging():
            await self.store.caught_up()
        else:
            await asyncio.sleep(0)

    def _forget(self, job: Job) -> None:
        if self._live.get(job.rec.id) is job:
            del self._live[job.rec.id]
        jobs = self._jobs.get(job.rec.warning_id)
        if jobs is not None:
            jobs.discard(job)
            if not jobs:
                del self._jobs[job.rec.warning_id]
