"""The dispatcher: runs every planned delivery to its end, durably.

Each delivery runs as a task: wait out the endpoint's circuit breaker, take a slot of its
channel (by priority = level), respect the channel's rate limit, `send`, and record the outcome
with its ledger entries before going on. Transient failures are retried by the channel's retry
policy up to the warning's expiry; a delivery that runs out is `failed` (a dead letter). On start
the dispatcher resumes every delivery still `pending` in the store, so a crash loses nothing;
a resumed delivery keeps its id, which is its idempotency key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

from gateway.channels.base import (
    Channel,
    DeliveryError,
    Endpoint,
    EndpointGone,
    Message,
    Notice,
    Outcome,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from gateway.coverage import escalation_notice
from gateway.endpoints import EndpointBook
from gateway.flow import CircuitBreaker, PrioritySlots, RateLimiter
from gateway.ledger import LedgerDraft, Stage
from gateway.policies.retry import RetryPolicy
from gateway.store import Store
from gateway.store.base import Cover, DeliveryRecord, DeliveryState, DeliveryUpdate
from gateway.townships import Registry

log = logging.getLogger("gateway.dispatcher")

Clock = Callable[[], datetime]
CLEAR = "clear"
CHANNEL_START_ORDER = {"mqtt": 0, "webhook": 1, "sms": 2, "email": 3}
CLEAR_GRACE_S = 3600.0
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class ChannelRuntime:
    """A channel with its flow control and retry policy."""

    channel: Channel
    slots: PrioritySlots
    retry: RetryPolicy
    rate: RateLimiter | None = None


class Dispatcher:
    """Owns the delivery tasks; an async context manager (exit cancels what is in flight,
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
    ) -> None:
        self.store = store
        self.book = book
        self.runtimes = runtimes
        self.breaker = breaker
        self.clock = clock
        self.sleep = sleep
        self.registry = registry
        self.disabled: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_warning: dict[str, set[asyncio.Task[None]]] = {}

    async def __aenter__(self) -> Self:
        await self.resume()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def resume(self) -> None:
        """Start every delivery left `pending` by an earlier process."""
        pending = await self.store.unfinished()
        by_warning: dict[str, list[DeliveryRecord]] = {}
        for rec in pending:
            by_warning.setdefault(rec.warning_id, []).append(rec)
        for warning_id, records in by_warning.items():
            stored = await self.store.get_warning(warning_id)
            if stored is None:
                log.error("deliveries of unknown warning %s left pending", warning_id)
                continue
            await self.dispatch(Notice.from_document(stored.warning), records, resumed=True)
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
        await self.store.append([LedgerDraft(notice.id, Stage.QUEUED, self.clock(), data)])
        # Tasks start in creation order: boards and loudspeakers first, they reach everyone
        # in the area at once; the order among channels of one level is only a head start.
        ordered = sorted(records, key=lambda r: CHANNEL_START_ORDER.get(r.channel, 9))
        for rec in ordered:
            task = asyncio.create_task(self._run(notice, rec), name=f"delivery {rec.id}")
            self._tasks.add(task)
            if rec.purpose != CLEAR:
                self._by_warning.setdefault(rec.warning_id, set()).add(task)
            task.add_done_callback(self._done)

    async def stop(self, warning_id: str) -> None:
        """Cancel the running deliveries of a warning (superseded, cancelled, expired); the
        store has already marked them stopped."""
        tasks = self._by_warning.pop(warning_id, set())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        for tasks in self._by_warning.values():
            tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task %s crashed", task.get_name(), exc_info=task.exception())

    async def _run(self, notice: Notice, rec: DeliveryRecord) -> None:
        try:
            await self._deliver(notice, rec)
        except asyncio.CancelledError:
            raise  # shutdown: the delivery stays pending and resumes on the next start
        except Exception as exc:
            # A bug here must not leave the delivery silently pending until a restart.
            log.exception("delivery %s failed in the dispatcher", rec.id)
            await self._final(notice, rec, rec.attempts, f"internal error: {type(exc).__name__}")

    async def _deliver(self, notice: Notice, rec: DeliveryRecord) -> None:
        endpoint = self.book.by_id.get(rec.endpoint_id)
        runtime = self.runtimes.get(rec.channel)
        if endpoint is None or runtime is None:
            what = "endpoint" if endpoint is None else "channel"
            await self._final(notice, rec, rec.attempts, f"{what} no longer configured")
            return
        # Clearing must also work once the warning has expired.
        grace = timedelta(seconds=CLEAR_GRACE_S if rec.purpose == CLEAR else 0)
        if self.clock() >= notice.expires_at + grace:
            await self._final(notice, rec, rec.attempts, "the warning expired before delivery")
            return
        if rec.purpose != CLEAR and rec.escalation_of and self.registry is not None:
            notice = escalation_notice(notice, rec.escalation_of, self.registry)
        attempts = rec.attempts + 1
        try:
            try:
                outcome, started = await self._attempt(runtime, notice, endpoint, rec, attempts)
            except TransientDeliveryError as first:
                # Retries only now: most deliveries succeed at once and need no retry state.
                if attempts >= runtime.retry.attempts:
                    raise
                wait = runtime.retry.first_wait(first)
                if self.clock() + timedelta(seconds=wait) >= notice.expires_at + grace:
                    raise
                await self.sleep(wait)
                left = (notice.expires_at + grace - self.clock()).total_seconds()
                retrying = runtime.retry.retrying(done=attempts, deadline_s=left, sleep=self.sleep)
                async for attempt in retrying:
                    with attempt:
                        attempts += 1
                        outcome, started = await self._attempt(
                            runtime, notice, endpoint, rec, attempts
                        )
        except DeliveryError as exc:
            if isinstance(exc, EndpointGone):
                self.disabled[endpoint.id] = exc.reason
                log.warning("endpoint %s disabled: %s", endpoint.id, exc.reason)
            kind = "transient" if isinstance(exc, TransientDeliveryError) else "permanent"
            await self._final(notice, rec, attempts, exc.reason, kind=kind)
            return
        state = DeliveryState.DELIVERED if outcome.delivered else DeliveryState.SENT
        stage = Stage.DELIVERED if outcome.delivered else Stage.SENT
        detail = dict(outcome.detail)
        now = self.clock()
        covers = []
        if outcome.delivered and endpoint.covers_townships and not rec.purpose:
            by = {"channel": rec.channel, "endpoint": endpoint.id}
            covers = [Cover(rec.warning_id, t, now, by) for t in endpoint.townships]
        await self.store.record(
            [DeliveryUpdate(rec.id, state, attempts, detail)],
            [
                LedgerDraft(notice.id, Stage.ATTEMPT, started, _entry(rec, endpoint, attempts)),
                LedgerDraft(notice.id, stage, now, _entry(rec, endpoint, attempts, detail)),
            ],
            covers,
        )

    async def _attempt(
        self,
        runtime: ChannelRuntime,
        notice: Notice,
        endpoint: Endpoint,
        rec: DeliveryRecord,
        n: int,
    ) -> tuple[Outcome, datetime]:
        if endpoint.id in self.disabled:
            raise PermanentDeliveryError(f"endpoint disabled: {self.disabled[endpoint.id]}")
        # Wait out an open circuit outside the slot: other endpoints keep the channel busy.
        while (delay := self.breaker.delay(endpoint.id)) > 0:
            await self.sleep(
                min(delay, max(0.0, (notice.expires_at - self.clock()).total_seconds()))
            )
            if self.clock() >= notice.expires_at:
                raise PermanentDeliveryError("the warning expired while the endpoint was down")
        started = self.clock()
        # acquire/release rather than `async with slots.slot()`: this runs once per delivery,
        # and the generator-based context manager was a measurable share of it.
        await runtime.slots.acquire(notice.level)
        try:
            if runtime.rate is not None:
                await runtime.rate.acquire()
            if rec.purpose == CLEAR:
                outcome = await _clear(runtime.channel, endpoint, rec.warning_id)
            else:
                outcome = await runtime.channel.send(Message(rec.id, notice, endpoint, n))
        except DeliveryError as exc:
            error: DeliveryError = exc
        except Exception as exc:  # an adapter bug must not lose the delivery
            log.exception("channel %s failed unexpectedly on %s", rec.channel, rec.id)
            error = TransientDeliveryError(f"unexpected {type(exc).__name__}")
        else:
            self.breaker.success(endpoint.id)
            return outcome, started
        finally:
            runtime.slots.release()
        if isinstance(error, TransientDeliveryError):
            self.breaker.failure(endpoint.id)
        await self._failed_attempt(notice, rec, endpoint, n, started, error)
        raise error

    async def _failed_attempt(
        self,
        notice: Notice,
        rec: DeliveryRecord,
        endpoint: Endpoint,
        n: int,
        started: datetime,
        error: DeliveryError,
    ) -> None:
        data = _entry(rec, endpoint, n)
        data["error"] = error.reason
        data["transient"] = isinstance(error, TransientDeliveryError)
        draft = LedgerDraft(notice.id, Stage.ATTEMPT, started, data)
        # The attempt count is stored so a restart does not grant a fresh set of attempts.
        detail = {"last_error": error.reason}
        await self.store.record([DeliveryUpdate(rec.id, DeliveryState.PENDING, n, detail)], [draft])

    async def _final(
        self, notice: Notice, rec: DeliveryRecord, attempts: int, reason: str, kind: str = ""
    ) -> None:
        data: dict[str, Any] = {
            "delivery_id": rec.id,
            "channel": rec.channel,
            "endpoint": rec.endpoint_id,
            "attempts": attempts,
            "reason": reason,
        }
        if kind:
            data["error"] = kind
        await self.store.record(
            [DeliveryUpdate(rec.id, DeliveryState.FAILED, attempts, {"reason": reason})],
            [LedgerDraft(notice.id, Stage.FAILED, self.clock(), data)],
        )


async def _clear(channel: Channel, endpoint: Endpoint, warning_id: str) -> Outcome:
    """Remove what `channel` keeps for the warning at `endpoint` (an MQTT retained message)."""
    clear = getattr(channel, "clear", None)
    if clear is None or len(endpoint.townships) != 1:
        raise PermanentDeliveryError(f"{channel.name} keeps nothing to clear")
    await clear(endpoint.townships[0], endpoint.target, warning_id)
    return Outcome(delivered=True, detail={"cleared": True})


def _entry(
    rec: DeliveryRecord, endpoint: Endpoint, n: int, detail: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "delivery_id": rec.id,
        "channel": rec.channel,
        "endpoint": endpoint.id,
        "attempt": n,
    }
    if detail:
        data["detail"] = dict(detail)
    return data
