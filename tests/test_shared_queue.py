"""Two gateways on one PostgreSQL database and one Redis, in one test process (design.md
"Storage and several processes"): each delivery is sent by one of them and recorded once, a
cancel posted to one stops the other's sends, each township is escalated once, the claims of
a gateway that stops renewing them are taken over, and Redis losing its data loses no
delivery (the sweeper). The same behaviour with real `gateway serve` processes killed and
restarted is in test_several_gateways.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import aiomqtt
import pytest

from gateway.channels.base import Channel, Message, Outcome
from gateway.config import Settings, load_settings
from gateway.coord.rate import SharedRate
from gateway.coord.relay import SharedQueue
from gateway.ledger import verify
from gateway.redis_link import RedisLink
from gateway.store import open_store
from gateway.web.keys import DISPATCHER, INGEST
from tests.conftest import GatewayClient, MakeClient
from tests.fanout import fanout_config
from tests.helpers import auth, token_env, warning_body
from tests.mqtt_broker import Mosquitto
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow  # real servers killed and restarted: `-m "not slow"` skips them

WANZHOU_AND_YUZHONG = {"districts": ["500101", "500103"]}


@dataclass
class CountingSms(Channel):
    """An SMS channel that takes `delay` seconds a send and counts what it sent, by id."""

    name: ClassVar[str] = "sms"
    delay: float = 0.01
    sent: Counter[str] = field(default_factory=Counter)
    sent_after: dict[str, float] = field(default_factory=dict)
    sending: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once a send has ended."""

    async def send(self, message: Message) -> Outcome:
        await asyncio.sleep(self.delay)
        self.sent[message.delivery_id] += 1
        self.sent_after[message.delivery_id] = asyncio.get_running_loop().time()
        self.sending.set()
        return Outcome(delivered=True)


def shared(settings: Settings, pg_url: str, redis_url: str, **redis: Any) -> Settings:
    """`settings` on the shared PostgreSQL database and Redis."""
    coordination = settings.redis.model_copy(update={"url": redis_url, **redis})
    return dataclasses.replace(settings, store_url=pg_url, redis=coordination)


async def two_gateways(
    tmp_path: Path,
    make_client: MakeClient,
    pg_url: str,
    redis_url: str,
    delay: float = 0.01,
    **redis: Any,
) -> tuple[list[GatewayClient], list[CountingSms]]:
    config = fanout_config(tmp_path, channels={"sms": "{provider: stub, concurrency: 4}"})
    settings = shared(load_settings(config, token_env()), pg_url, redis_url, **redis)
    channels = [CountingSms(delay=delay), CountingSms(delay=delay)]
    apps = [await make_client(settings, channels={"sms": c}) for c in channels]
    return apps, channels


async def wait_settled(
    api: GatewayClient, wid: str, within: float = 60, channel: str = "sms"
) -> dict[str, Any]:
    """The warning's state once no delivery of it on `channel` is open."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        resp = await api.get(f"/v1/warnings/{wid}", headers=auth())
        state: dict[str, Any] = await resp.json()
        sms = state["channels"].get(channel, {})
        if sms and sms.get("pending", 0) == 0 and sms.get("sent", 0) == 0:
            return state
        assert asyncio.get_running_loop().time() < deadline, state
        await asyncio.sleep(0.1)


async def test_two_gateways_share_a_fan_out_and_record_each_delivery_once(
    tmp_path: Path, make_client: MakeClient, pg_url: str, redis_url: str
) -> None:
    (a, b), (sms_a, sms_b) = await two_gateways(tmp_path, make_client, pg_url, redis_url)
    body = warning_body(area=WANZHOU_AND_YUZHONG, channels=["sms"])
    resp = await a.post("/v1/warnings", json=body, headers=auth())
    answer = await resp.json()
    assert resp.status == 202, answer
    state = await wait_settled(b, body["id"])
    planned = answer["deliveries"]
    assert state["channels"]["sms"]["delivered"] == planned
    sent = sms_a.sent + sms_b.sent
    assert set(sent.values()) == {1}  # each sent once, by one
    assert len([d for d in sent if "/escalate-" not in d]) == planned
    assert sms_a.sent  # both took part
    assert sms_b.sent
    resp = await b.get(f"/v1/warnings/{body['id']}/receipts", headers=auth())
    delivered = Counter(
        e["data"]["delivery_id"]
        for e in (await resp.json())["entries"]
        if e["stage"] == "delivered"
    )
    own = {d for d in sent if "/escalate-" not in d}  # escalations are not in the counts waited on
    assert own <= set(delivered)
    assert set(delivered.values()) == {1}
    async with open_store(pg_url) as store:
        assert await verify(store.ledger()) > planned


async def test_a_cancel_on_one_gateway_stops_the_others_sends(
    tmp_path: Path, make_client: MakeClient, pg_url: str, redis_url: str
) -> None:
    (a, b), (sms_a, sms_b) = await two_gateways(tmp_path, make_client, pg_url, redis_url, delay=0.2)
    body = warning_body(area=WANZHOU_AND_YUZHONG, channels=["sms"])
    resp = await a.post("/v1/warnings", json=body, headers=auth())
    planned = (await resp.json())["deliveries"]
    await asyncio.wait_for(asyncio.gather(sms_a.sending.wait(), sms_b.sending.wait()), 30)
    cancel = warning_body(msg_type="cancel", references=body["id"], channels=["sms"])
    resp = await b.post("/v1/warnings", json=cancel, headers=auth())
    assert resp.status == 202, await resp.json()
    answered = asyncio.get_running_loop().time()
    await asyncio.sleep(1.0)  # longer than a send: one still going would have ended
    late = [d for s in (sms_a, sms_b) for d, t in s.sent_after.items() if t > answered]
    assert late == []
    assert len([d for d in sms_a.sent + sms_b.sent if "/escalate-" not in d]) < planned
    resp = await a.get(f"/v1/warnings/{body['id']}", headers=auth())
    assert (await resp.json())["status"] == "cancelled"


async def test_claims_of_a_gateway_gone_silent_are_taken_over(
    tmp_path: Path, make_client: MakeClient, pg_url: str, redis_url: str
) -> None:
    """A claim not renewed for claim_idle_s is taken over (XAUTOCLAIM) by the other."""
    (a, b), (sms_a, sms_b) = await two_gateways(
        tmp_path, make_client, pg_url, redis_url, delay=0.05, claim_idle_s=1.0
    )
    silent = a.app[DISPATCHER]
    body = warning_body(area=WANZHOU_AND_YUZHONG, channels=["sms"])
    resp = await a.post("/v1/warnings", json=body, headers=auth())
    planned = (await resp.json())["deliveries"]
    await asyncio.wait_for(sms_a.sending.wait(), 30)
    queue = silent.relay
    assert isinstance(queue, SharedQueue)
    for task in queue._tasks:  # A freezes: it neither sends nor renews what it claimed
        task.cancel()
    for task in silent._workers:
        task.cancel()
    state = await wait_settled(b, body["id"])
    assert state["channels"]["sms"]["delivered"] == planned
    assert planned <= len(sms_a.sent + sms_b.sent)


async def test_redis_losing_its_data_loses_no_delivery(
    tmp_path: Path, make_client: MakeClient, pg_url: str, own_redis: RedisServer
) -> None:
    (a, b), (sms_a, _) = await two_gateways(
        tmp_path, make_client, pg_url, own_redis.url(), delay=0.05, sweep_s=0.5
    )
    body = warning_body(area=WANZHOU_AND_YUZHONG, channels=["sms"])
    resp = await a.post("/v1/warnings", json=body, headers=auth())
    planned = (await resp.json())["deliveries"]
    await asyncio.wait_for(sms_a.sending.wait(), 30)
    await asyncio.to_thread(own_redis.restart)  # no persistence: queue, claims, live set gone
    state = await wait_settled(b, body["id"], within=90)
    assert state["channels"]["sms"]["delivered"] == planned


async def test_a_gateway_stopped_cleanly_hands_its_claims_back_at_once(
    tmp_path: Path, make_client: MakeClient, pg_url: str, redis_url: str
) -> None:
    """SIGTERM (the app's cleanup): what A claimed goes back to the queue, so B sends it long
    before A's claims could be taken over (claim_idle_s is an hour here)."""
    (a, b), (sms_a, _) = await two_gateways(
        tmp_path, make_client, pg_url, redis_url, delay=0.1, claim_idle_s=3600
    )
    body = warning_body(area=WANZHOU_AND_YUZHONG, channels=["sms"])
    resp = await a.post("/v1/warnings", json=body, headers=auth())
    planned = (await resp.json())["deliveries"]
    await asyncio.wait_for(sms_a.sending.wait(), 30)
    await a.close()
    state = await wait_settled(b, body["id"], within=60)
    assert state["channels"]["sms"]["delivered"] == planned


async def test_a_circuit_opened_by_one_gateway_is_followed_by_the_other(
    tmp_path: Path, make_client: MakeClient, pg_url: str, redis_url: str
) -> None:
    (a, b), _ = await two_gateways(tmp_path, make_client, pg_url, redis_url)
    breaker_a, breaker_b = a.app[DISPATCHER].breaker, b.app[DISPATCHER].breaker
    endpoint = "500101001-sms"
    for _ in range(breaker_a.threshold):
        breaker_a.failure(endpoint)
    assert breaker_a.is_open(endpoint)
    await wait_until(lambda: breaker_b.is_open(endpoint), "B follows the open circuit")
    breaker_a.success(endpoint)
    await wait_until(lambda: not breaker_b.is_open(endpoint), "B follows the close")


async def wait_until(predicate: Callable[[], bool], what: str, within: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_board_ack_is_read_by_one_gateway(
    tmp_path: Path, make_client: MakeClient, pg_url: str, redis_url: str, mosquitto: Mosquitto
) -> None:
    """Board acks arrive through `$share/gateway/...` (MQTT 5 shared subscription): of two
    gateways one reads each ack, so one receipt is recorded (not a receipt and a repeat)."""
    config = fanout_config(tmp_path, mqtt_url=mosquitto.url)
    settings = shared(load_settings(config, token_env()), pg_url, redis_url)
    a, b = [await make_client(settings) for _ in "ab"]
    body = warning_body(area={"townships": ["500103001"]}, channels=["mqtt"])
    resp = await a.post("/v1/warnings", json=body, headers=auth())
    assert resp.status == 202, await resp.json()
    await wait_settled(b, body["id"], channel="mqtt")
    host, port = mosquitto.url.removeprefix("mqtt://").split(":")
    async with aiomqtt.Client(host, int(port)) as board:
        for n in range(5):
            ack = {"warning_id": body["id"], "status": "displayed", "at": f"+{n}"}
            ack["at"] = datetime.now(UTC).isoformat()
            await board.publish("cq/warnings/ack/board-500103001", json.dumps(ack), qos=1)

    async def receipts() -> list[dict[str, Any]]:
        resp = await b.get(f"/v1/warnings/{body['id']}/receipts", headers=auth())
        return [e for e in (await resp.json())["entries"] if e["stage"] == "receipt"]

    for _ in range(100):
        if len(await receipts()) >= 5:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # a second reader's copies would have been recorded by now
    got = await receipts()
    assert len(got) == 5
    assert not [e for e in got if e["data"].get("duplicate")]


async def test_healthz_tells_whether_redis_answers_and_stays_200_without_it(
    tmp_path: Path, make_client: MakeClient, pg_url: str, own_redis: RedisServer
) -> None:
    """Without Redis a gateway still accepts warnings durably (queued once Redis is back), so
    a load balancer keeps sending it requests; /healthz says Redis is down."""
    (a, b), _ = await two_gateways(tmp_path, make_client, pg_url, own_redis.url())
    resp = await a.get("/healthz")
    assert (resp.status, await resp.json()) == (200, {"status": "ok", "store": "ok", "redis": "ok"})
    await asyncio.to_thread(own_redis.kill)
    resp = await a.get("/healthz")
    assert (resp.status, (await resp.json())["redis"]) == (200, "down")
    body = warning_body(channels=["sms"])
    resp = await a.post("/v1/warnings", json=body, headers=auth())
    assert resp.status == 202, await resp.json()
    await asyncio.to_thread(own_redis.start)
    state = await wait_settled(b, body["id"], within=60)  # queued once Redis is back
    assert state["channels"]["sms"]["delivered"] == (await resp.json())["deliveries"]


async def test_a_channel_rate_limit_holds_for_all_gateways_together(redis_url: str) -> None:
    """`rate_per_s` is one schedule in Redis: two gateways' sends together keep to it (a lower
    bound on the time taken, which a slow machine only lengthens)."""
    async with RedisLink(redis_url, "rate-test") as one, RedisLink(redis_url, "rate-test") as two:
        rates = [SharedRate(one, "webhook", 10), SharedRate(two, "webhook", 10)]
        started = asyncio.get_running_loop().time()
        await asyncio.gather(*(rates[i % 2].acquire() for i in range(11)))
        took = asyncio.get_running_loop().time() - started
    assert took >= 0.95  # 11 sends at 10/s: the 11th goes a second after the first


async def test_a_warning_whose_watch_message_never_went_out_is_followed_by_the_backstop(
    tmp_path: Path, make_client: MakeClient, pg_url: str, redis_url: str
) -> None:
    # A warning committed by a process that died before its `watch` message went out: no
    # message reaches A or B, and each must find it in the store within `sweep_s`.
    (a, b), _ = await two_gateways(tmp_path, make_client, pg_url, redis_url, sweep_s=0.5)
    body = warning_body(area=WANZHOU_AND_YUZHONG, channels=["sms"])
    resp = await a.post("/v1/warnings", json=body, headers=auth())
    assert resp.status == 202, await resp.json()
    async with open_store(pg_url) as store:
        seen = await store.get_warning(body["id"])
        assert seen is not None
        unheard = dataclasses.replace(
            seen, id="unheard-1", warning={**seen.warning, "id": "unheard-1"}
        )
        await store.accept(unheard, [])
    lifecycles = [a.app[INGEST].lifecycle, b.app[INGEST].lifecycle]
    assert all(lc is not None for lc in lifecycles)
    await wait_until(
        lambda: all(lc is not None and lc.watches("unheard-1") for lc in lifecycles),
        "both gateways watch the unheard warning's expiry",
    )
    assert all(lc is not None and lc.watches(body["id"]) for lc in lifecycles)
