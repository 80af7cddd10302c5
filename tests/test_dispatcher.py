"""Dispatcher behaviour: priority by level, retry policy, circuit breaker, flow control."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import pytest

from gateway.channels.base import Channel, Message, Outcome, RecordingChannel
from gateway.config import load_settings
from gateway.drill.samples import red_rainstorm_wanzhou
from gateway.exceptions import TransientDeliveryError
from gateway.flow import LeadGate
from gateway.policies.breaker import CircuitBreaker
from gateway.policies.rate import RateLimiter
from gateway.policies.retry import LAST_TRY_S, RetryPolicy
from tests.conftest import MakeClient
from tests.fanout import fanout_config, ledger, post_warning, settled
from tests.helpers import auth, iso, token_env, warning_body


@dataclass
class SlowChannel(Channel):
    """A test double: each send takes `delay` seconds; records the order of warnings sent."""

    name: ClassVar[str] = "sms"
    delay: float = 0.002
    order: list[str] = field(default_factory=list)
    failures: int = 0

    async def send(self, message: Message) -> Outcome:
        await asyncio.sleep(self.delay)
        if self.failures:
            self.failures -= 1
            raise TransientDeliveryError("told to fail")
        if not message.endpoint.escalation_for:  # escalations of blind spots are not counted
            self.order.append(message.notice.id)
        return Outcome(delivered=True)


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **token_env(),
        "GATEWAY_STORE": f"sqlite:///{tmp_path}/g.db",
    }


async def test_red_deliveries_overtake_a_queued_blue_fanout(
    tmp_path: Path, make_client: MakeClient
) -> None:
    # design.md: a level-1 (red) warning never waits behind a level-4 (blue) fan-out.
    config = fanout_config(tmp_path, channels={"sms": "{provider: stub, concurrency: 1}"})
    slow = SlowChannel()
    api = await make_client(load_settings(config, _env(tmp_path)), channels={"sms": slow})
    now = datetime.now(UTC)
    blue = red_rainstorm_wanzhou(now, "blue-wanzhou")
    blue.update(level=4, title="万州区气象局发布暴雨蓝色预警信号")
    red = warning_body(id="red-yuzhong", level=1)  # 渝中区: 11 SMS groups
    assert (await post_warning(api, blue))["deliveries"] == 49
    assert (await post_warning(api, red))["deliveries"] == 11
    await settled(api, blue["id"])
    await settled(api, red["id"])
    assert len(slow.order) == 60
    last_red = max(i for i, w in enumerate(slow.order) if w == red["id"])
    blue_after_red = sum(1 for w in slow.order[last_red:] if w == blue["id"])
    # Blue was queued first, yet every red delivery went out before most of it.
    assert slow.order.count(red["id"]) == 11
    assert blue_after_red > 30, slow.order


async def test_transient_failures_are_retried_with_the_same_key(
    tmp_path: Path, make_client: MakeClient
) -> None:
    config = fanout_config(tmp_path)
    flaky = RecordingChannel(fail_with=[TransientDeliveryError("busy")] * 2)
    api = await make_client(load_settings(config, _env(tmp_path)), channels={"sms": flaky})
    body = warning_body(area={"townships": ["500103001"]})
    await post_warning(api, body)
    state = await settled(api, body["id"])
    assert state["channels"]["sms"]["delivered"] == 1
    attempts = [e["data"] for e in await ledger(api, body["id"]) if e["stage"] == "attempt"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert {a["delivery_id"] for a in attempts} == {f"{body['id']}/500103001-sms"}
    assert [m.delivery_id for m in flaky.sent] == [f"{body['id']}/500103001-sms"]


async def test_retries_stop_at_expiry(tmp_path: Path, make_client: MakeClient) -> None:
    # design.md "retry": a deadline that never passes expires_at.
    config = fanout_config(
        tmp_path,
        channels={"sms": "{retry: {attempts: 100, initial_s: 0.2, max_s: 0.2, jitter_s: 0}}"},
    )
    slow = SlowChannel(failures=1000)
    api = await make_client(load_settings(config, _env(tmp_path)), channels={"sms": slow})
    body = warning_body(
        area={"townships": ["500103001"]},
        expires_at=iso(datetime.now(UTC) + timedelta(seconds=1.5)),
    )
    await post_warning(api, body)
    state = await settled(api, body["id"], within=10)
    assert state["channels"]["sms"]["failed"] == 1
    attempts = [e for e in await ledger(api, body["id"]) if e["stage"] == "attempt"]
    assert 2 <= len(attempts) < 100


@dataclass
class LoggedChannel(Channel):
    """A test double: logs (channel, delivery) when a send starts; each send takes `delay`
    seconds, or never ends when `hang` is set."""

    name: ClassVar[str] = "sms"
    log: list[tuple[str, str]] = field(default_factory=list)
    label: str = "sms"
    delay: float = 0.002
    hang: bool = False

    async def send(self, message: Message) -> Outcome:
        self.log.append((self.label, message.delivery_id))
        if self.hang:
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay)
        return Outcome(delivered=True)


def _lead_config(tmp_path: Path) -> Path:
    return fanout_config(
        tmp_path,
        channels={
            "sms": "{provider: stub, concurrency: 4}",
            "mqtt": "{url: 'mqtt://127.0.0.1:1', concurrency: 2}",
        },
    )


@pytest.mark.sqlite_only  # one process's lead gate: across gateways a head start only
async def test_boards_and_loudspeakers_are_reached_before_other_channels(
    tmp_path: Path, make_client: MakeClient
) -> None:
    # MQTT leads: boards and loudspeakers reach everyone in the area at once.
    log: list[tuple[str, str]] = []
    mqtt = LoggedChannel(log=log, label="mqtt", delay=0.005)
    sms = LoggedChannel(log=log, label="sms")
    settings = load_settings(_lead_config(tmp_path), _env(tmp_path))
    api = await make_client(settings, channels={"sms": sms, "mqtt": mqtt})
    body = warning_body(level=1)  # 渝中区: 11 townships, 22 MQTT topics, 11 SMS groups
    await post_warning(api, body)
    state = await settled(api, body["id"])
    assert state["channels"]["mqtt"]["delivered"] == 22
    assert state["channels"]["sms"]["delivered"] == 11
    order = [label for label, _ in log]
    assert order.count("mqtt") == 22
    last_mqtt = max(i for i, label in enumerate(order) if label == "mqtt")
    assert order.index("sms") > last_mqtt, order


async def test_a_stalled_lead_holds_no_one_back(tmp_path: Path, make_client: MakeClient) -> None:
    # A broker that never answers must not keep SMS from going out.
    log: list[tuple[str, str]] = []
    mqtt = LoggedChannel(log=log, label="mqtt", hang=True)
    sms = LoggedChannel(log=log, label="sms")
    settings = load_settings(_lead_config(tmp_path), _env(tmp_path))
    api = await make_client(settings, channels={"sms": sms, "mqtt": mqtt})
    body = warning_body(level=1)
    await post_warning(api, body)
    async with asyncio.timeout(20):
        while True:
            state = await (await api.get(f"/v1/warnings/{body['id']}", headers=auth())).json()
            if state["channels"]["sms"].get("delivered") == 11:
                break
            await asyncio.sleep(0.05)
    assert state["channels"]["mqtt"]["pending"] == 22


@dataclass
class HangsOnChannel(Channel):
    """A test double: sends of warning `hang_on` never end (until cancelled); others succeed;
    an error that is not a DeliveryError is raised `bugs` times first (an adapter bug)."""

    name: ClassVar[str] = "sms"
    hang_on: str = ""
    bugs: int = 0
    cancelled: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    hanging: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, message: Message) -> Outcome:
        if message.notice.id == self.hang_on:
            self.hanging.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(message.delivery_id)
                raise
        if self.bugs:
            self.bugs -= 1
            raise KeyError("adapter bug")
        self.delivered.append(message.delivery_id)
        return Outcome(delivered=True)


async def test_a_superseded_send_in_flight_is_interrupted_and_the_worker_goes_on(
    tmp_path: Path, make_client: MakeClient
) -> None:
    config = fanout_config(tmp_path, channels={"sms": "{provider: stub, concurrency: 1}"})
    first = warning_body(area={"townships": ["500103001"]})
    channel = HangsOnChannel(hang_on=first["id"])
    api = await make_client(load_settings(config, _env(tmp_path)), channels={"sms": channel})
    await post_warning(api, first)
    async with asyncio.timeout(10):
        await channel.hanging.wait()  # the one worker is now stuck in the send
        update = warning_body(
            msg_type="update", references=first["id"], area={"townships": ["500103003"]}
        )
        await post_warning(api, update)  # returns although the old send never would
    assert channel.cancelled == [f"{first['id']}/500103001-sms"]
    state = await settled(api, update["id"])
    assert state["channels"]["sms"]["delivered"] == 1  # the same (only) worker sent it
    assert channel.delivered == [f"{update['id']}/500103003-sms"]
    old = await (await api.get(f"/v1/warnings/{first['id']}", headers=auth())).json()
    assert old["status"] == "superseded"
    assert old["channels"]["sms"]["stopped"] == 1
    assert old["channels"]["sms"]["delivered"] == 0


async def test_an_adapter_bug_is_retried_not_lost(tmp_path: Path, make_client: MakeClient) -> None:
    config = fanout_config(tmp_path)
    channel = HangsOnChannel(bugs=2)
    api = await make_client(load_settings(config, _env(tmp_path)), channels={"sms": channel})
    body = warning_body(area={"townships": ["500103001"]})
    await post_warning(api, body)
    state = await settled(api, body["id"])
    assert state["channels"]["sms"]["delivered"] == 1
    attempts = [e["data"] for e in await ledger(api, body["id"]) if e["stage"] == "attempt"]
    assert [a.get("error") for a in attempts] == ["unexpected KeyError"] * 2 + [None]


def test_lead_gate_holds_only_as_urgent_deliveries_while_the_lead_progresses() -> None:
    now = [0.0]
    gate = LeadGate(0.25, 10, clock=lambda: now[0])
    assert not gate.holds(1)  # nothing queued
    gate.queued(4)  # a blue board message
    assert gate.holds(4)
    assert not gate.holds(1)  # a red SMS never waits behind a blue board message
    gate.queued(1)
    assert gate.holds(1)
    now[0] += 0.2
    gate.progressed()
    now[0] += 0.2
    assert gate.holds(1)  # progress 0.2 s ago
    now[0] += 0.1
    assert not gate.holds(1)  # stalled: nothing finished for 0.3 s
    gate.progressed()
    gate.taken(1)
    gate.taken(4)
    assert not gate.holds(4)  # drained


def test_lead_gate_holds_no_one_back_for_long_behind_a_slow_lead() -> None:
    now = [0.0]
    gate = LeadGate(0.25, 1.0, clock=lambda: now[0])
    gate.queued(1)
    for _ in range(4):  # a slow broker: one PUBACK every 0.2 s
        assert gate.holds(2)
        now[0] += 0.2
        gate.progressed()
    now[0] += 0.2
    gate.progressed()
    assert not gate.holds(2)  # 1 s since its backlog began


async def test_lead_gate_wait_ends_when_the_backlog_drains() -> None:
    gate = LeadGate(60, 60)
    gate.queued(2)
    waiter = asyncio.create_task(gate.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.taken(2)
    await asyncio.wait_for(waiter, 5)
    assert not gate.holds(2)


def test_breaker_opens_after_threshold_and_closes_on_success() -> None:
    now = [100.0]
    breaker = CircuitBreaker(3, 30, clock=lambda: now[0])
    for _ in range(2):
        breaker.failure("p")
    assert breaker.delay("p") == 0
    breaker.failure("p")
    assert breaker.delay("p") == 30
    assert breaker.delay("other") == 0  # per endpoint
    now[0] += 31
    assert breaker.delay("p") == 0
    breaker.success("p")
    breaker.failure("p")
    assert breaker.delay("p") == 0


async def test_rate_limiter_spaces_acquisitions() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    limiter = RateLimiter(10, burst=1, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        await limiter.acquire()
    assert len(slept) == 4
    assert sum(slept) == pytest.approx(0.4)


def test_retry_policy_honours_retry_after_and_backs_off_to_max_s() -> None:
    # design.md "Delivery under faults": capped backoff until expires_at; attempts bound nothing.
    policy = RetryPolicy(attempts=3, initial_s=1, max_s=10, jitter_s=0)
    busy = TransientDeliveryError("busy")
    assert policy.next_wait(1, TransientDeliveryError("busy", retry_after=7), 3600) == 7
    assert policy.next_wait(1, busy, 3600) == 1  # exponential: 1, 2, 4, ...
    assert policy.next_wait(2, busy, 3600) == 2
    assert policy.next_wait(3, busy, 3600) == 4  # past `attempts`: still retried
    assert policy.next_wait(50, busy, 3600) == 10  # capped by max_s


def test_retry_policy_goes_on_after_a_restart() -> None:
    # A delivery resumed after many attempts keeps retrying at the capped backoff.
    policy = RetryPolicy(attempts=5, initial_s=0.1, max_s=30, jitter_s=0)
    down = TransientDeliveryError("down")
    assert policy.next_wait(5, down, 600) == pytest.approx(1.6)
    assert policy.next_wait(500, down, 600) == 30


def test_retry_policy_never_waits_past_the_deadline() -> None:
    # design.md "retry": a deadline that never passes expires_at; one last try just before it.
    policy = RetryPolicy(attempts=10, initial_s=1, jitter_s=0)
    assert policy.next_wait(1, TransientDeliveryError("busy"), left_s=5) == 1
    assert policy.next_wait(3, TransientDeliveryError("busy"), left_s=10) == 4
    assert policy.next_wait(4, TransientDeliveryError("busy"), left_s=5) == 5 - LAST_TRY_S
    later = TransientDeliveryError("busy", retry_after=60)
    assert policy.next_wait(1, later, left_s=4) == 4 - LAST_TRY_S
    assert policy.next_wait(1, TransientDeliveryError("busy"), left_s=0.4) is None
