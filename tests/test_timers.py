"""The one timer service of expiry (art. 18: a warning ends at its expires_at) and coverage
deadlines (art. 20), on an injected clock and sleep: no test waits for real time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.timers import Timers
from tests.test_waitroom import FakeTime, settle

EPOCH = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


def timers() -> tuple[Timers, FakeTime, list[str]]:
    time = FakeTime()
    return (
        Timers("test", clock=lambda: EPOCH + timedelta(seconds=time.now), sleep=time.sleep),
        time,
        [],
    )


def at(seconds: float) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


async def test_an_action_runs_when_its_time_comes_and_not_before() -> None:
    t, time, ran = timers()

    async def action() -> None:
        ran.append("expired")

    assert t.at("w1", at(10), action)
    await time.advance(9.9)
    assert ran == []
    assert t.has("w1")
    await time.advance(0.1)
    assert ran == ["expired"]
    assert not t.has("w1")  # done: its key is free again


async def test_a_time_already_past_runs_at_once() -> None:
    t, time, ran = timers()

    async def action() -> None:
        ran.append("late")

    await time.advance(60)
    t.at("w1", at(10), action)
    await settle()
    assert ran == ["late"]


async def test_one_timer_per_key() -> None:
    t, time, ran = timers()

    async def first() -> None:
        ran.append("first")

    async def second() -> None:
        ran.append("second")

    assert t.at("w1", at(5), first)
    assert not t.at("w1", at(1), second)
    await time.advance(10)
    assert ran == ["first"]


async def test_cancelled_and_closed_timers_never_run() -> None:
    t, time, ran = timers()

    async def action() -> None:
        ran.append("ran")

    t.at("w1", at(5), action)
    t.at("w2", at(5), action)
    t.cancel("w1")
    assert not t.has("w1")
    assert t.has("w2")
    await t.close()
    await time.advance(10)
    assert ran == []


async def test_an_action_may_cancel_its_own_key_and_still_finish() -> None:
    t, time, ran = timers()

    async def action() -> None:
        t.cancel("w1")  # as Lifecycle.end unwatches the warning it ends
        await time.sleep(1)
        ran.append("finished")

    t.at("w1", at(5), action)
    await time.advance(5)
    assert not t.has("w1")
    await time.advance(1)
    assert ran == ["finished"]
