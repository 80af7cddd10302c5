"""One attempt at a delivery and what its end means, for the dispatcher (`Attempts` is its
base class): held back (its endpoint's circuit is open, the warning expired, the endpoint is
disabled), sent, delivered, failed for now (retried after its backoff, waiting outside the
queue in the `WaitRoom`) or for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any

from gateway.channels.base import Message
from gateway.dispatch_types import ChannelRuntime
from gateway.exceptions import DeliveryError, EndpointGone, TransientDeliveryError
from gateway.jobs import CLEAR, Job, clear, deadline
from gateway.outcomes import Outcomes
from gateway.policies.breaker import CircuitBreaker
from gateway.store import Store
from gateway.values import Endpoint
from gateway.waitroom import WaitRoom

log = logging.getLogger("gateway.dispatcher")

Clock = Callable[[], datetime]


class Attempts:
    """The attempt logic of `Dispatcher`, over the state the dispatcher sets up."""

    store: Store
    runtimes: Mapping[str, ChannelRuntime]
    breaker: CircuitBreaker
    clock: Clock
    disabled: dict[str, str]
    _outcomes: Outcomes
    _room: WaitRoom[Job]
    _sending: dict[asyncio.Task[Any], Job]

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        raise NotImplementedError

    def _wait_key(self, job: Job) -> str:
        """What a waiting `job` waits for: its channel's shared transport, or its endpoint."""
        runtime = self.runtimes.get(job.rec.channel)
        if runtime is not None and runtime.channel.shared_transport:
            return job.rec.channel
        return f"endpoint {job.rec.endpoint_id}"

    async def _deliver(self, runtime: ChannelRuntime, job: Job, task: asyncio.Task[Any]) -> bool:
        """One attempt at `job`; True when the delivery has ended, False when it was put back
        to be retried later."""
        held = self._hold(job)
        if held is not None:
            return held
        rec, endpoint = job.rec, job.endpoint
        assert endpoint is not None
        if runtime.rate is not None:
            await runtime.rate.acquire()
            if job.stopped:
                self._untrial(job, endpoint)
                return True
        n = job.attempts + 1
        started = self.clock()
        error: DeliveryError | None = None
        self._sending[task] = job
        try:
            if rec.purpose == CLEAR:
                outcome = await clear(runtime.channel, endpoint, rec.warning_id)
            else:
                outcome = await runtime.channel.send(Message(rec.id, job.notice, endpoint, n))
        except DeliveryError as exc:
            error = exc
        except Exception as exc:  # an adapter bug must not lose the delivery
            log.exception("channel %s failed unexpectedly on %s", rec.channel, rec.id)
            error = TransientDeliveryError(f"unexpected {type(exc).__name__}")
        finally:
            del self._sending[task]
            if job.halted is not None:  # interrupted by `stop`, or stopped as it finished
                task.uncancel()
                job.halted.set_result(None)
        if job.stopped:
            self._untrial(job, endpoint)
            return True
        if error is not None:
            return self._failed(runtime, job, endpoint, started, error)
        self.breaker.success(endpoint.id)
        job.trial = False
        self._room.wake(self._wait_key(job))  # the far side is back: nobody waits longer
        self._outcomes.delivered(job.rec, endpoint, n, started, outcome)
        return True

    def _hold(self, job: Job) -> bool | None:
        """Why `job` cannot be sent now: True when it has ended (failed), False when it was put
        back to wait out its endpoint's open circuit, None when it can be sent."""
        notice, endpoint = job.notice, job.endpoint
        if endpoint is None:
            self._outcomes.final(job.rec, job.attempts, "endpoint no longer configured")
            return True
        now = self.clock()
        if now >= deadline(job):
            self._outcomes.final(job.rec, job.attempts, "the warning expired before delivery")
            return True
        if endpoint.id in self.disabled:
            reason = f"endpoint disabled: {self.disabled[endpoint.id]}"
            self._outcomes.final(job.rec, job.attempts + 1, reason, kind="permanent")
            return True
        # Wait out an open circuit outside the queue: other endpoints keep the workers busy.
        delay = self.breaker.admit(endpoint.id)
        if delay <= 0:
            job.trial = self.breaker.in_trial(endpoint.id)
            return None
        left = (notice.expires_at - now).total_seconds()
        if left <= 0:
            reason = "the warning expired while the endpoint was down"
            self._outcomes.final(job.rec, job.attempts + 1, reason, kind="permanent")
            return True
        self._later(min(delay, left), job)
        return False

    def _untrial(self, job: Job, endpoint: Endpoint) -> None:
        """A trial that ends with no verdict (stopped, a permanent error) lets another go."""
        if job.trial:
            job.trial = False
            self.breaker.release(endpoint.id)

    def _failed(
        self,
        runtime: ChannelRuntime,
        job: Job,
        endpoint: Endpoint,
        started: datetime,
        error: DeliveryError,
    ) -> bool:
        """Record a failed attempt; retry later (False) or end the delivery (True)."""
        n = job.attempts = job.attempts + 1
        if isinstance(error, TransientDeliveryError):
            self.breaker.failure(endpoint.id)
            job.trial = False
        else:
            self._untrial(job, endpoint)
        self._outcomes.failed_attempt(job.rec, endpoint, n, started, error)
        if isinstance(error, EndpointGone):
            self.disabled[endpoint.id] = error.reason
            log.warning("endpoint %s disabled: %s", endpoint.id, error.reason)
            self._background(self.store.disable_endpoint(endpoint.id, error.reason, self.clock()))
        if not isinstance(error, TransientDeliveryError):
            self._outcomes.final(job.rec, n, error.reason, kind="permanent")
            return True
        left = (deadline(job) - self.clock()).total_seconds()
        wait = runtime.retry.next_wait(n, error, left)
        if wait is None:  # a dead letter only at expiry (design.md "Delivery under faults")
            self._outcomes.final(
                job.rec, n, f"the warning expired while retrying: {error.reason}", "expired"
            )
            return True
        self._later(wait, job)
        return False

    def _later(self, wait: float, job: Job) -> None:
        """Put `job` back in its queue after `wait` seconds, or as soon as what it waits for
        is back (`WaitRoom`), unless stopped meanwhile."""
        self._room.wait(self._wait_key(job), job, wait)
