"""The flow control that design.md "Delivery under faults" rests on, with a fake clock and sleep
(nothing here really waits):

- "When a channel's connection comes back, its waiting deliveries are tried at once, not after
  their backoff": `WaitRoom.wake` releases a wait group; its probe tries the most urgent waiter
  after at most `probe_s`, so a far side that came back unannounced is noticed.
- "a circuit breaker half-opens with one trial request": `CircuitBreaker.admit`.
- "A slow or hanging endpoint holds at most `per_endpoint` of its channel's workers":
  `EndpointSlots`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable

import pytest

from gateway.flow import EndpointSlots
from gateway.policies.breaker import CircuitBreaker
from gateway.waitroom import WaitRoom

PROBE_S = 2.0
LONG_S = 30.0
"""A backoff much longer than the probe."""
RANKS = {"red": 1, "orange": 2, "blue": 4, "blue2": 4}


class FakeTime:
    """A clock and a sleep that only move on `advance`."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move the clock on, waking each sleeper due on the way (in time order)."""
        await settle()
        target = self.now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, future = heapq.heappop(self._sleepers)
            self.now = when
            if not future.done():  # a cancelled sleep is done already
                future.set_result(None)
                await settle()
        self.now = target
        await settle()


async def settle() -> None:
    """Let every task that can run, run (the room's timers are tasks)."""
    for _ in range(10):
        await asyncio.sleep(0)


class Room:
    """A WaitRoom of named waiters ranked by `RANKS`, recording what it releases."""

    def __init__(self, probe_s: float = PROBE_S) -> None:
        self.time = FakeTime()
        self.released: list[str] = []
        self.room: WaitRoom[str] = WaitRoom(
            self.released.append,
            rank=lambda item: RANKS.get(item, 9),
            sleep=self.time.sleep,
            probe_s=probe_s,
        )


# ---- WaitRoom ------------------------------------------------------------------------------


async def test_wake_releases_its_whole_group_and_only_it() -> None:
    r = Room()
    r.room.wait("mqtt", "red", LONG_S)
    r.room.wait("mqtt", "blue", LONG_S)
    r.room.wait("endpoint partner-cq-tv", "orange", LONG_S)
    await settle()
    assert r.room.wake("mqtt") == 2
    assert sorted(r.released) == ["blue", "red"]
    assert len(r.room) == 1
    assert r.room.wake("mqtt") == 0  # nothing left there
    assert r.room.wake("email") == 0  # a group nobody waits in
    assert sorted(r.released) == ["blue", "red"]
    assert r.room.wake("endpoint partner-cq-tv") == 1
    assert sorted(r.released) == ["blue", "orange", "red"]
    assert len(r.room) == 0


@pytest.mark.parametrize(
    ("waiters", "first"),
    [
        pytest.param(["blue", "red", "blue2"], "red", id="most-urgent-first"),
        pytest.param(["blue", "orange", "red"], "red", id="red-queued-last-still-first"),
        pytest.param(["blue2", "blue"], "blue2", id="among-equals-the-longest-waiting"),
        pytest.param(["orange"], "orange", id="a-lone-waiter"),
    ],
)
async def test_probe_releases_the_most_urgent_waiter_after_probe_s(
    waiters: list[str], first: str
) -> None:
    r = Room()
    for item in waiters:
        r.room.wait("mqtt", item, LONG_S)
    await r.time.advance(PROBE_S - 0.01)
    assert r.released == []
    await r.time.advance(0.01)
    assert r.released == [first]  # one trial, not the whole group
    assert len(r.room) == len(waiters) - 1
    # The others keep their own timers: released once each at the end of their backoff.
    await r.time.advance(LONG_S)
    assert sorted(r.released) == sorted(waiters)


async def test_a_probed_waiter_that_never_comes_back_leaves_its_group_probed() -> None:
    """The probe's trial may end without a verdict (its warning was cancelled meanwhile, a
    permanent error): the group must still be probed, or the rest wait out their backoff after
    the far side is back."""
    r = Room()
    for item in ("red", "orange", "blue"):
        r.room.wait("endpoint partner-cq-tv", item, LONG_S)
    await r.time.advance(PROBE_S)
    assert r.released == ["red"]  # dropped by its owner: it will not wait again
    await r.time.advance(PROBE_S)
    assert r.released == ["red", "orange"]
    await r.time.advance(PROBE_S)
    assert r.released == ["red", "orange", "blue"]
    assert len(r.room) == 0
    await r.time.advance(2 * LONG_S)
    assert r.released == ["red", "orange", "blue"]


async def test_a_short_wait_needs_no_probe() -> None:
    r = Room()
    r.room.wait("mqtt", "blue", 1.0)
    await r.time.advance(0.99)
    assert r.released == []
    await r.time.advance(0.01)
    assert r.released == ["blue"]
    await r.time.advance(LONG_S)
    assert r.released == ["blue"]


async def wake_group(r: Room) -> None:
    r.room.wake("mqtt")


async def probe_then_wake(r: Room) -> None:
    await r.time.advance(PROBE_S)
    r.room.wake("mqtt")


async def wait_again_then_wake(r: Room) -> None:
    r.room.wait("mqtt", "red", LONG_S)  # a second wait replaces the first timer
    r.room.wake("mqtt")


@pytest.mark.parametrize(
    "release",
    [
        pytest.param(wake_group, id="woken"),
        pytest.param(probe_then_wake, id="probed-then-woken"),
        pytest.param(wait_again_then_wake, id="waited-twice-then-woken"),
    ],
)
async def test_a_released_waiter_is_not_released_again(
    release: Callable[[Room], Awaitable[None]],
) -> None:
    r = Room()
    r.room.wait("mqtt", "red", LONG_S)
    r.room.wait("mqtt", "blue", LONG_S)
    await settle()
    await release(r)
    await r.time.advance(2 * LONG_S)  # past every timer and probe
    assert sorted(r.released) == ["blue", "red"]
    assert len(r.room) == 0


async def test_a_discarded_waiter_is_never_released_nor_probed() -> None:
    """A stopped delivery leaves the room at once: the probe picks a live one."""
    r = Room()
    r.room.wait("mqtt", "red", LONG_S)
    r.room.wait("mqtt", "blue", LONG_S)
    await settle()
    r.room.discard("mqtt", "red")
    r.room.discard("mqtt", "red")  # twice, or never there: no-op
    r.room.discard("email", "red")
    assert len(r.room) == 1
    await r.time.advance(PROBE_S)
    assert r.released == ["blue"]
    await r.time.advance(2 * LONG_S)
    assert r.released == ["blue"]


async def test_close_releases_nothing() -> None:
    r = Room()
    r.room.wait("mqtt", "red", LONG_S)
    r.room.wait("endpoint partner-cq-tv", "blue", 1.0)
    await settle()
    r.room.close()
    await r.time.advance(2 * LONG_S)
    assert r.released == []
    assert len(r.room) == 0
    assert r.room.wake("mqtt") == 0


# ---- CircuitBreaker ------------------------------------------------------------------------

COOLDOWN_S = 10.0
EP = "partner-cq-tv"


def opened() -> tuple[FakeTime, CircuitBreaker]:
    """A breaker whose circuit of `EP` opened (2 failures) and whose cooldown has passed."""
    time = FakeTime()
    breaker = CircuitBreaker(2, COOLDOWN_S, clock=time.clock)
    assert breaker.admit(EP) == 0  # closed
    breaker.failure(EP)
    assert breaker.admit(EP) == 0  # one failure of two: still closed
    breaker.failure(EP)
    assert breaker.admit(EP) == COOLDOWN_S
    assert breaker.is_open(EP)
    time.now += COOLDOWN_S
    return time, breaker


def test_half_open_admits_one_trial_and_the_others_wait() -> None:
    _, breaker = opened()
    assert not breaker.is_open(EP)  # half-open
    assert breaker.admit(EP) == 0  # the trial
    assert breaker.admit(EP) == COOLDOWN_S  # the others wait (the trial's outcome wakes them)
    assert breaker.admit(EP) == COOLDOWN_S
    assert breaker.admit("partner-cq-news") == 0  # other endpoints are not affected
    assert breaker.open_ids() == [EP]


@pytest.mark.parametrize(
    ("verdict", "admits"),
    [
        pytest.param("success", [0, 0, 0], id="success-closes"),
        pytest.param("failure", [COOLDOWN_S, COOLDOWN_S], id="failure-reopens"),
        pytest.param("release", [0, COOLDOWN_S], id="release-admits-another-trial"),
    ],
)
def test_the_trials_verdict(verdict: str, admits: list[float]) -> None:
    time, breaker = opened()
    assert breaker.admit(EP) == 0
    getattr(breaker, verdict)(EP)
    assert [breaker.admit(EP) for _ in admits] == admits
    if verdict == "failure":
        time.now += COOLDOWN_S  # reopened for a whole cooldown, then half-open again
        assert [breaker.admit(EP), breaker.admit(EP)] == [0, COOLDOWN_S]


def test_success_forgets_the_failures() -> None:
    _, breaker = opened()
    assert breaker.admit(EP) == 0
    breaker.success(EP)
    breaker.failure(EP)  # one failure after closing does not reopen (threshold 2)
    assert breaker.admit(EP) == 0
    assert breaker.open_ids() == []


# ---- EndpointSlots -------------------------------------------------------------------------


def test_slots_bound_each_endpoint_and_hand_back_the_most_urgent() -> None:
    slots: EndpointSlots[str] = EndpointSlots(2)
    assert slots.take("tv", "blue-1", 4)
    assert slots.take("tv", "blue-2", 4)
    assert slots.take("news", "blue-1", 4)  # another endpoint has its own slots
    parked = [("blue-3", 4), ("orange", 2), ("blue-4", 4), ("red", 1)]
    assert [slots.take("tv", item, rank) for item, rank in parked] == [False] * 4
    assert slots.parked() == 4
    handed = [slots.give("tv") for _ in range(4)]
    assert handed == ["red", "orange", "blue-3", "blue-4"]  # by rank, FIFO among equals
    assert slots.give("tv") is None
    assert slots.give("news") is None
    assert slots.parked() == 0


@pytest.mark.parametrize("limit", [1, 4])
def test_slots_free_up_as_sends_end(limit: int) -> None:
    slots: EndpointSlots[int] = EndpointSlots(limit)
    assert [slots.take("tv", i, 4) for i in range(limit + 1)] == [True] * limit + [False]
    back = slots.give("tv")
    assert back == limit  # the parked one, to be taken again
    assert slots.take("tv", back, 4)  # it gets the freed slot
    assert not slots.take("tv", limit + 1, 4)  # and the endpoint is full again
