"""MqttChannel against a real Mosquitto (and amqtt for the drill); aiomqtt plays the boards."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal
from urllib.parse import urlsplit

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.channels.base import Message, Outcome
from gateway.channels.mqtt import PAYLOAD_CACHE, MqttChannel
from gateway.channels.mqtt_payload import publish_properties as _publish_properties
from gateway.drill.sinks.mqtt_broker import EmbeddedBroker
from gateway.exceptions import PermanentDeliveryError, TransientDeliveryError
from gateway.values import Endpoint, Notice, Receipt
from tests.mqtt_broker import Mosquitto, mosquitto_fixture  # noqa: F401
from tests.processes import free_port

PREFIX = "cq/warn"
TOWNSHIP = "500103001"
WAIT = 10.0
"""Upper bound on any wait for the far side, so a bug fails instead of hanging; never asserted."""
DEVICES = {"board-1": "ep-500103001-display"}


def make_message(
    warning_id: str | None = None,
    *,
    townships: tuple[str, ...] = (TOWNSHIP,),
    kind: str = "display",
    expires_in: timedelta = timedelta(hours=2),
) -> Message:
    now = datetime.now(UTC)
    notice = Notice(
        id=warning_id or f"w-{uuid.uuid4().hex[:8]}",
        msg_type="alert",
        level=2,
        hazard="暴雨",
        title="重庆市气象台发布暴雨橙色预警信号",
        content="预计未来3小时内渝中区降雨量将达100毫米以上。",
        issuer_unit="重庆市气象台",
        sent_at=now - timedelta(minutes=1),
        expires_at=now + expires_in,
        measures="停止户外作业。",
        contact_phone="12121",
    )
    endpoint = Endpoint(id="ep-1", channel="mqtt", townships=townships, target=kind)
    return Message(delivery_id=f"d-{uuid.uuid4().hex[:8]}", notice=notice, endpoint=endpoint)


class Receipts:
    """A ReceiptSink that queues what it is given."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Receipt] = asyncio.Queue()

    async def __call__(self, receipt: Receipt) -> None:
        await self.queue.put(receipt)

    async def next(self) -> Receipt:
        async with asyncio.timeout(WAIT):
            return await self.queue.get()


def channel_for(
    url: str,
    receipts: Receipts | None = None,
    *,
    protocol: Literal["5", "3.1.1"] = "5",
    connect_timeout: float = WAIT,
    publish_timeout: float = WAIT,
) -> MqttChannel:
    """The channel under test, reconnecting after short pauses."""
    return MqttChannel(
        url,
        prefix=PREFIX,
        receipts=receipts or Receipts(),
        devices=DEVICES,
        protocol=protocol,
        connect_timeout=connect_timeout,
        publish_timeout=publish_timeout,
        reconnect_min_delay=0.05,
        reconnect_max_delay=0.2,
    )


@asynccontextmanager
async def board(url: str, protocol: str = "5") -> AsyncIterator[aiomqtt.Client]:
    """A display board's client: another connection to the broker."""
    parts = urlsplit(url)
    version = aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client(
        parts.hostname or "127.0.0.1",
        parts.port or 1883,
        protocol=version,
        identifier=f"board-{uuid.uuid4().hex[:8]}",
    ) as client:
        yield client


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(WAIT):
        return await anext(aiter(client.messages))


@asynccontextmanager
async def connected(channel: MqttChannel) -> AsyncIterator[MqttChannel]:
    """The channel opened, once it is connected and subscribed to the acks."""
    async with channel:
        async with asyncio.timeout(WAIT):
            await channel.wait_connected()
        yield channel


async def test_retained_warning_reaches_a_board_that_connects_later(mosquitto: Mosquitto) -> None:
    message = make_message()
    async with channel_for(mosquitto.url) as channel:
        outcome = await channel.send(message)

    topic = f"{PREFIX}/500103/{TOWNSHIP}/display/{message.notice.id}"
    seconds_left = int((message.notice.expires_at - datetime.now(UTC)).total_seconds())
    assert outcome.delivered
    assert outcome.detail["topic"] == topic
    assert seconds_left - 30 <= outcome.detail["expiry_s"] <= seconds_left + 1

    async with board(mosquitto.url) as late:
        await late.subscribe(f"{PREFIX}/#", qos=1)
        got = await next_message(late)
    assert str(got.topic) == topic
    assert got.retain
    assert got.qos == 1
    assert got.properties is not None
    properties = got.properties.json()  # type: ignore[no-untyped-call]
    assert seconds_left - 30 <= properties["MessageExpiryInterval"] <= seconds_left + 1
    assert properties["ContentType"] == "application/json"
    notice = message.notice
    assert json.loads(got.payload) == {
        "id": notice.id,
        "msg_type": "alert",
        "level": 2,
        "colour": "橙色",
        "hazard": "暴雨",
        "title": notice.title,
        "content": notice.content,
        "measures": notice.measures,
        "contact_phone": "12121",
        "issuer_unit": "重庆市气象台",
        "sent_at": notice.sent_at.isoformat(),
        "expires_at": notice.expires_at.isoformat(),
        "delivery_id": message.delivery_id,
    }


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(make_message(expires_in=timedelta(seconds=-1)), id="already-expired"),
        pytest.param(make_message(kind="sms-group"), id="unknown-kind"),
        pytest.param(make_message(townships=(TOWNSHIP, "500103002")), id="two-townships"),
        pytest.param(make_message(townships=("500103",)), id="district-not-township"),
    ],
)
async def test_undeliverable_message_is_permanent(mosquitto: Mosquitto, message: Message) -> None:
    async with channel_for(mosquitto.url) as channel:
        with pytest.raises(PermanentDeliveryError):
            await channel.send(message)


async def test_clear_removes_the_retained_warning(mosquitto: Mosquitto) -> None:
    message = make_message(kind="broadcast")
    async with channel_for(mosquitto.url) as channel:
        await channel.send(message)
        await channel.clear(message.endpoint, message.notice.id)

    async with board(mosquitto.url) as late:
        await late.subscribe(f"{PREFIX}/#", qos=1)
        # Retained messages come right after SUBACK, so a later marker arrives first only
        # when nothing was retained.
        await late.publish(f"{PREFIX}/marker", b"m", qos=1)
        got = await next_message(late)
    assert str(got.topic) == f"{PREFIX}/marker"


async def test_board_acks_become_receipts(mosquitto: Mosquitto) -> None:
    receipts = Receipts()
    async with connected(channel_for(mosquitto.url, receipts)), board(mosquitto.url) as b:
        ack = {"warning_id": "w-1", "status": "displayed", "at": "2026-07-01T08:00:05+08:00"}
        await b.publish(f"{PREFIX}/ack/board-1", json.dumps(ack), qos=1)
        await b.publish(f"{PREFIX}/ack/board-9", b'{"warning_id": "w-2"}', qos=1)
        await b.publish(f"{PREFIX}/ack/board-1", b'{"warning_id":"w-3","status":"failed"}', 1)
        displayed, unknown, failed = [await receipts.next() for _ in range(3)]

    assert displayed == Receipt(
        status="delivered",
        at=datetime.fromisoformat("2026-07-01T08:00:05+08:00"),
        source="mqtt-ack",
        warning_id="w-1",
        endpoint_id="ep-500103001-display",
        detail={"device_id": "board-1"},
    )
    assert (unknown.status, unknown.warning_id, unknown.endpoint_id) == ("delivered", "w-2", None)
    assert unknown.detail == {"device_id": "board-9"}
    assert unknown.at.tzinfo is not None
    assert (failed.status, failed.warning_id) == ("failed", "w-3")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b"", id="empty"),
        pytest.param(b'["w-1"]', id="not-an-object"),
        pytest.param(b'{"status": "delivered"}', id="no-warning-id"),
        pytest.param(b'{"warning_id": 7}', id="warning-id-not-string"),
        pytest.param(b'{"warning_id": "w-1", "status": "lost"}', id="unknown-status"),
        pytest.param(b'{"warning_id": "w-1", "status": ["played"]}', id="status-not-string"),
        pytest.param(b'{"warning_id": "w-1", "at": 1751328000}', id="at-not-string"),
        pytest.param(b'{"warning_id": "w-1", "at": "yesterday"}', id="bad-at"),
        pytest.param(b'{"warning_id": "w-1", "at": "2026-07-01T08:00:00"}', id="at-no-offset"),
    ],
)
async def test_malformed_ack_is_dropped_and_the_next_one_arrives(
    mosquitto: Mosquitto, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    receipts = Receipts()
    async with connected(channel_for(mosquitto.url, receipts)), board(mosquitto.url) as b:
        await b.publish(f"{PREFIX}/ack/board-1", payload, qos=1)
        await b.publish(f"{PREFIX}/ack/board-1", b'{"warning_id": "w-ok"}', qos=1)
        receipt = await receipts.next()
    assert receipt.warning_id == "w-ok"
    assert receipts.queue.empty()
    assert "dropped malformed MQTT ack from device board-1" in caplog.text


async def test_broker_restart_transient_then_recovers(mosquitto: Mosquitto) -> None:
    receipts = Receipts()
    channel = channel_for(mosquitto.url, receipts, connect_timeout=0.5, publish_timeout=1.0)
    async with connected(channel):
        await channel.send(make_message())

        await asyncio.to_thread(mosquitto.stop)
        with pytest.raises(TransientDeliveryError):
            await channel.send(make_message())

        await asyncio.to_thread(mosquitto.start)
        async with asyncio.timeout(WAIT):
            await channel.wait_connected()
        outcome = await channel.send(make_message("w-after"))
        assert outcome.delivered

        async with board(mosquitto.url) as b:
            await b.publish(f"{PREFIX}/ack/board-1", b'{"warning_id": "w-after"}', qos=1)
            receipt = await receipts.next()
    assert (receipt.warning_id, receipt.endpoint_id) == ("w-after", "ep-500103001-display")


async def test_broker_crash_mid_flight_fails_sends_transiently(mosquitto: Mosquitto) -> None:
    # The PUBACK timeout is far longer than the test may take: sends waiting for a PUBACK
    # must fail as soon as the connection is lost, not when their timeout runs out.
    channel = channel_for(mosquitto.url, connect_timeout=0.5, publish_timeout=120.0)
    async with connected(channel):
        sends = [asyncio.create_task(channel.send(make_message(f"w-{i}"))) for i in range(300)]
        await asyncio.wait(sends, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.to_thread(mosquitto.kill)
        results = await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True), 30)
    # Which sends got their PUBACK before the crash varies; none may hang or fail otherwise.
    failed = [r for r in results if not isinstance(r, Outcome)]
    assert all(isinstance(r, TransientDeliveryError) for r in failed), failed
    assert any("connection lost before PUBACK" in str(r) for r in failed), results


async def test_send_without_broker_is_transient() -> None:
    channel = channel_for(f"mqtt://127.0.0.1:{free_port()}", connect_timeout=0.2)
    async with channel:
        with pytest.raises(TransientDeliveryError):
            await channel.send(make_message())


async def test_500_concurrent_sends_all_arrive(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    count = 500
    messages = [
        make_message(
            f"w-{i}", townships=(f"500103{i % 40:03d}",), kind=("display", "broadcast")[i % 2]
        )
        for i in range(count)
    ]
    async with board(mosquitto.url) as sub:
        await sub.subscribe(f"{PREFIX}/#", qos=1)
        async with channel_for(mosquitto.url) as channel:
            outcomes = await asyncio.gather(*(channel.send(m) for m in messages))
        topics = set()
        async with asyncio.timeout(WAIT):
            async for got in sub.messages:
                topics.add(str(got.topic))
                if len(topics) == count:
                    break
    assert all(o.delivered for o in outcomes)
    assert topics == {o.detail["topic"] for o in outcomes}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [str(w.message) for w in recwarn] == []


async def test_mqtt_311_against_the_embedded_broker() -> None:
    receipts = Receipts()
    message = make_message("w-drill")
    async with EmbeddedBroker() as broker:
        channel = channel_for(broker.url, receipts, protocol="3.1.1")
        async with connected(channel), board(broker.url, protocol="3.1.1") as b:
            outcome = await channel.send(message)
            await b.subscribe(f"{PREFIX}/500103/#", qos=1)
            got = await next_message(b)
            await b.publish(f"{PREFIX}/ack/board-1", b'{"warning_id": "w-drill"}', qos=1)
            receipt = await receipts.next()
    assert outcome.detail["expiry_s"] is None
    assert str(got.topic) == outcome.detail["topic"]
    assert got.retain
    assert json.loads(got.payload)["id"] == "w-drill"
    assert (receipt.warning_id, receipt.endpoint_id) == ("w-drill", "ep-500103001-display")


# ---- payload and properties built once per warning ------------------------------------------


def reference_payload(message: Message) -> bytes:
    """The payload as built whole for every publish, before the warning's part was cached."""
    notice = message.notice
    doc = {
        "id": notice.id,
        "msg_type": notice.msg_type,
        "level": notice.level,
        "colour": notice.colour,
        "hazard": notice.hazard,
        "title": notice.title,
        "content": notice.content,
        "measures": notice.measures,
        "contact_phone": notice.contact_phone,
        "issuer_unit": notice.issuer_unit,
        "sent_at": notice.sent_at.isoformat(),
        "expires_at": notice.expires_at.isoformat(),
        "delivery_id": message.delivery_id,
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@pytest.mark.parametrize(
    "delivery_id",
    [
        pytest.param("w-2026-0701-001/ep-500103001-display", id="gateway-id"),
        pytest.param('d-"quoted"\\back\nline', id="escapes"),
        pytest.param("投递-1\u2028", id="utf8"),
    ],
)
def test_payload_is_byte_identical_to_building_it_whole(delivery_id: str) -> None:
    channel = channel_for("mqtt://127.0.0.1:1")
    base = make_message("w-1")
    beijing = timezone(timedelta(hours=8))
    changes: list[dict[str, Any]] = [
        {},
        {"title": "暴雨红色预警"},
        {"level": 1},
        {"msg_type": "update"},
        {"hazard": "大风"},
        {"content": "雨势减弱。"},
        {"measures": None},
        {"contact_phone": None},
        {"issuer_unit": "渝中区气象局"},
        # The same instants with another UTC offset: equal datetimes, other isoformat.
        {"sent_at": base.notice.sent_at.astimezone(beijing)},
        {"expires_at": base.notice.expires_at.astimezone(beijing)},
        {"id": "w-2"},
    ]
    for change in changes * 2:
        notice = dataclasses.replace(base.notice, **change)
        message = dataclasses.replace(base, notice=notice, delivery_id=delivery_id)
        assert channel._payload(message) == reference_payload(message), change
    assert len(channel._payload_heads) == len(changes)

    for i in range(PAYLOAD_CACHE + 10):
        channel._payload(
            dataclasses.replace(base, notice=dataclasses.replace(base.notice, id=f"w-{i}"))
        )
    assert len(channel._payload_heads) == PAYLOAD_CACHE


def test_publish_properties_are_shared_per_expiry() -> None:
    properties = _publish_properties(7200)
    assert properties.json() == {  # type: ignore[no-untyped-call]
        "MessageExpiryInterval": 7200,
        "PayloadFormatIndicator": 1,
        "ContentType": "application/json",
    }
    assert _publish_properties(7200) is properties
    # Packed once and kept: the bytes are those paho's own Properties would pack.
    plain = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    plain.MessageExpiryInterval = 7200
    plain.PayloadFormatIndicator = 1
    plain.ContentType = "application/json"
    assert properties.pack() == plain.pack()  # type: ignore[no-untyped-call]
    other = _publish_properties(7199).json()  # type: ignore[no-untyped-call]
    assert other["MessageExpiryInterval"] == 7199
