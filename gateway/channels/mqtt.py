"""MQTT channel: one retained message per township, endpoint kind and warning; board acks.

A warning for an endpoint of kind `display` or `broadcast` serving township T of district D is
published with QoS 1 and the retain flag to `{prefix}/D/T/{kind}/{warning_id}`, so a board that
(re)connects later still sees every current warning. Under MQTT 5 the message carries a
MessageExpiryInterval of the whole seconds left to `expires_at`, so the broker drops it on time;
MQTT 3.1.1 (amqtt, the drill's embedded broker) has no expiry and relies on `clear`.

Boards acknowledge on `{prefix}/ack/{device_id}` with JSON
`{"warning_id": ..., "status": "delivered"|"displayed"|"played"|"failed", "at": ISO-8601}`
(`status` defaults to delivered, `at` to the arrival time); each valid ack becomes a `Receipt`
for the ReceiptSink. Malformed acks are logged and dropped.

One long-lived client connection is kept by a background task started on `async with`: it
reconnects with capped exponential backoff and re-subscribes to the acks after every reconnect.
A `send` waits at most `connect_timeout` for a connection and `publish_timeout` for the PUBACK;
anything that goes wrong on the way is a `TransientDeliveryError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ClassVar, Literal, Self
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.properties import Properties

from gateway.channels.base import Channel, Message, Outcome, ReceiptSink
from gateway.channels.mqtt_payload import JSON, payload_head, payload_key, publish_properties
from gateway.exceptions import PermanentDeliveryError, TransientDeliveryError
from gateway.values import Endpoint, Receipt

log = logging.getLogger("gateway.channels.mqtt")

DEFAULT_PORT = 1883
DEFAULT_CONNECT_TIMEOUT = 5.0
"""Seconds one connection attempt may take, and a send may wait for a connection."""
DEFAULT_PUBLISH_TIMEOUT = 10.0
"""Seconds a send waits for its PUBACK once connected, queueing behind other sends included."""
RECONNECT_MIN_DELAY = 0.5
RECONNECT_MAX_DELAY = 2.0
"""A broker back after a crash is found within this (deliveries wait for it meanwhile)."""
KEEPALIVE = 30
MAX_CONCURRENT_CALLS = 100
"""Publishes (and the ack subscription) waiting for the broker at once; the rest queue."""
MAX_INFLIGHT = 20
"""QoS-1 messages on the wire without a PUBACK: Mosquitto's default receive maximum."""
PAYLOAD_CACHE = 64
"""Warnings whose payload (all of it but the delivery id) a channel keeps, least recently used
dropped first."""

KINDS = frozenset({"display", "broadcast"})
ACK_STATUSES = {
    "delivered": "delivered",
    "displayed": "delivered",
    "played": "delivered",
    "failed": "failed",
}
RECEIPT_SOURCE = "mqtt-ack"
_TOWNSHIP = re.compile(r"[0-9]{9}")
_WARNING_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PROTOCOLS = {"5": aiomqtt.ProtocolVersion.V5, "3.1.1": aiomqtt.ProtocolVersion.V311}


@dataclass
class _Connection:
    """One live client; `lost` is set when it stops being usable, and then every publish
    still waiting for its PUBACK (`in_flight`) times out at once."""

    client: aiomqtt.Client
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: set[asyncio.Timeout] = field(default_factory=set)

    def lose(self) -> None:
        self.lost.set()
        now = asyncio.get_running_loop().time()
        for scope in self.in_flight:
            scope.reschedule(now)


class MqttChannel(Channel):
    """Publishes retained warnings to `{prefix}/{district}/{township}/{kind}/{warning_id}`.

    `url` is `mqtt://[user:pass@]host[:port]`; `devices` maps a board's device id to the id of
    the endpoint it belongs to, so acks name their endpoint. With `shared_acks` (a group
    name) the acks are read through the MQTT shared subscription `$share/{group}/...`, so of
    several gateways one gets each ack. Use as `async with channel:`.
    """

    name: ClassVar[str] = "mqtt"
    shared_transport: ClassVar[bool] = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        receipts: ReceiptSink,
        devices: Mapping[str, str] | None = None,
        protocol: Literal["5", "3.1.1"] = "5",
        client_id: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        reconnect_min_delay: float = RECONNECT_MIN_DELAY,
        reconnect_max_delay: float = RECONNECT_MAX_DELAY,
        shared_acks: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise ValueError(f"MQTT url must be mqtt://host:port, got scheme {parts.scheme!r}")
        if not prefix or prefix.endswith("/") or any(c in prefix for c in "+#\0"):
            raise ValueError(f"MQTT prefix must be a plain topic path: {prefix!r}")
        if protocol not in _PROTOCOLS:
            raise ValueError(f"MQTT protocol must be 5 or 3.1.1, got {protocol!r}")
        self.host = parts.hostname
        self.port = parts.port or DEFAULT_PORT
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self.prefix = prefix
        self.protocol = protocol
        self.client_id = client_id or f"gateway-{uuid.uuid4().hex[:12]}"
        self._receipts = receipts
        self._devices = dict(devices or {})
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._reconnect_min_delay = reconnect_min_delay
        self._reconnect_max_delay = reconnect_max_delay
        self._ack_prefix = f"{prefix}/ack/"
        # Several gateways: each ack reaches one of them (an MQTT 5 shared subscription).
        self._share = f"$share/{shared_acks}/" if shared_acks else ""
        self._conn: _Connection | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._payload_heads: OrderedDict[tuple[object, ...], bytes] = OrderedDict()

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("MqttChannel is already open")
        self._task = asyncio.create_task(self._maintain(), name=f"mqtt-{self.client_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def connected(self) -> bool:
        """True while a connection is up and subscribed to the acks."""
        return self._conn is not None

    async def wait_connected(self) -> None:
        """Wait until connected and subscribed to the acks; bound it with `asyncio.timeout`."""
        await self._live()

    async def _live(self) -> _Connection:
        while (conn := self._conn) is None:
            await self._ready.wait()
        return conn

    async def send(self, message: Message) -> Outcome:
        """Publish the warning retained with QoS 1; delivered once the broker sent PUBACK.

        Raises PermanentDeliveryError for an endpoint that has no MQTT topic (kind, one
        9-digit township) or a warning already expired; TransientDeliveryError when there is
        no connection, the publish fails, times out or the connection drops before PUBACK.
        """
        endpoint, notice = message.endpoint, message.notice
        topic = self._topic(_single_township(endpoint), endpoint.target, notice.id)
        expiry = _seconds_left(notice.expires_at)
        properties: Properties | None = None
        detail: dict[str, Any] = {"topic": topic, "expiry_s": None}
        if self.protocol == "5":
            properties = publish_properties(expiry)
            detail["expiry_s"] = expiry
        else:
            detail["expiry"] = "not set (MQTT 3.1.1 has no message expiry)"
        await self._publish(topic, self._payload(message), properties)
        return Outcome(delivered=True, detail=detail)

    def _payload(self, message: Message) -> bytes:
        """The JSON payload: the warning's part rendered once per warning, then the delivery id."""
        notice = message.notice
        key = payload_key(notice)
        head = self._payload_heads.get(key)
        if head is None:
            head = payload_head(notice)
            self._payload_heads[key] = head
            if len(self._payload_heads) > PAYLOAD_CACHE:
                self._payload_heads.popitem(last=False)
        else:
            self._payload_heads.move_to_end(key)
        return head + JSON.encode(message.delivery_id).encode("utf-8") + b"}"

    async def clear(self, township: str, kind: str, warning_id: str) -> None:
        """Remove the retained warning from its topic (empty retained payload, QoS 1).

        Raises like `send`: PermanentDeliveryError for an impossible topic,
        TransientDeliveryError when the broker cannot be reached.
        """
        await self._publish(self._topic(township, kind, warning_id), b"", None)

    def _topic(self, township: str, kind: str, warning_id: str) -> str:
        if kind not in KINDS:
            raise PermanentDeliveryError(f"MQTT endpoint kind must be display|broadcast: {kind!r}")
        if not _TOWNSHIP.fullmatch(township):
            raise PermanentDeliveryError(f"not a 9-digit township code: {township!r}")
        if not _WARNING_ID.fullmatch(warning_id):
            raise PermanentDeliveryError(f"warning id cannot be a topic level: {warning_id!r}")
        return f"{self.prefix}/{township[:6]}/{township}/{kind}/{warning_id}"

    async def _publish(self, topic: str, payload: bytes, properties: Properties | None) -> None:
        conn = await self._connection()
        # aiomqtt waits for a PUBACK even after the connection dropped: `_maintain` ends the
        # scope of every publish in flight when it loses the connection. Awaiting the publish
        # in this task (no extra tasks) keeps the per-message cost near a bare publish loop.
        try:
            async with asyncio.timeout(self._publish_timeout) as scope:
                conn.in_flight.add(scope)
                try:
                    if conn.lost.is_set():
                        raise TimeoutError
                    await conn.client.publish(
                        topic, payload, qos=1, retain=True, properties=properties, timeout=math.inf
                    )
                finally:
                    conn.in_flight.discard(scope)
        except aiomqtt.MqttError as exc:
            raise TransientDeliveryError(f"MQTT publish to {topic} failed: {exc}") from exc
        except TimeoutError as exc:
            if conn.lost.is_set():
                raise TransientDeliveryError(
                    f"MQTT connection lost before PUBACK for {topic}"
                ) from exc
            raise TransientDeliveryError(
                f"no PUBACK for {topic} within {self._publish_timeout}s"
            ) from exc

    async def _connection(self) -> _Connection:
        if self._conn is not None:
            return self._conn
        if self._task is None:
            raise RuntimeError("MqttChannel is not open: use `async with channel:`")
        try:
            async with asyncio.timeout(self._connect_timeout):
                return await self._live()
        except TimeoutError as exc:
            raise TransientDeliveryError(
                f"no connection to MQTT broker {self.host}:{self.port} "
                f"within {self._connect_timeout}s"
            ) from exc

    def _client(self) -> aiomqtt.Client:
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self._username,
            password=self._password,
            identifier=self.client_id,
            protocol=_PROTOCOLS[self.protocol],
            timeout=self._connect_timeout,
            keepalive=KEEPALIVE,
            max_inflight_messages=MAX_INFLIGHT,
            max_concurrent_outgoing_calls=MAX_CONCURRENT_CALLS,
        )
        # The semaphore above bounds pending calls, so more than this is never a surprise.
        client.pending_calls_threshold = MAX_CONCURRENT_CALLS
        return client

    async def _maintain(self) -> None:
        """Connect, subscribe to acks, read them; on any loss back off and start again."""
        delay = self._reconnect_min_delay
        while True:
            was_up = False
            try:
                async with self._client() as client:
                    await client.subscribe(
                        f"{self._share}{self._ack_prefix}+", qos=1, timeout=self._connect_timeout
                    )
                    conn = _Connection(client)
                    self._conn = conn
                    self._ready.set()
                    was_up = True
                    self.reconnected()
                    log.info("MQTT connected to %s:%s as %s", self.host, self.port, self.client_id)
                    try:
                        await self._read_acks(client)
                    finally:
                        self._ready.clear()
                        self._conn = None
                        conn.lose()
            except aiomqtt.MqttError as exc:
                error = str(exc)
            except Exception as exc:
                # Never let the connection task die quietly: every send would then time out.
                log.exception("MQTT connection task failed")
                error = repr(exc)
            else:
                error = "connection closed"
            delay = (
                self._reconnect_min_delay if was_up else min(2 * delay, self._reconnect_max_delay)
            )
            # Jitter keeps several gateways from reconnecting to a restarted broker in step.
            pause = delay * random.uniform(0.5, 1.0)
            log.warning(
                "MQTT broker %s:%s unavailable (%s); reconnecting in %.2fs",
                self.host,
                self.port,
                error,
                pause,
            )
            await asyncio.sleep(pause)

    async def _read_acks(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            receipt = self._parse_ack(str(msg.topic), msg.payload)
            if receipt is None:
                continue
            try:
                await self._receipts(receipt)
            except Exception:
                # A failing sink must not stop the loop that also keeps the connection.
                log.exception("receipt sink failed for MQTT ack on %s", msg.topic)

    def _parse_ack(self, topic: str, payload: bytes) -> Receipt | None:
        """The Receipt of one ack, or None (logged) when it is malformed."""
        device_id = topic.removeprefix(self._ack_prefix)
        try:
            data = json.loads(payload.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            warning_id = data.get("warning_id")
            if not isinstance(warning_id, str) or not warning_id:
                raise ValueError("warning_id missing")
            given = data.get("status", "delivered")
            status = ACK_STATUSES.get(given) if isinstance(given, str) else None
            if status is None:
                raise ValueError("unknown status")
            at = _parse_at(data.get("at"))
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError included
            log.warning("dropped malformed MQTT ack from device %s: %s", device_id, exc)
            return None
        endpoint_id = self._devices.get(device_id)
        if endpoint_id is None:
            log.info("MQTT ack from unknown device %s for warning %s", device_id, warning_id)
        return Receipt(
            status=status,
            at=at,
            source=RECEIPT_SOURCE,
            warning_id=warning_id,
            endpoint_id=endpoint_id,
            detail={"device_id": device_id},
        )


def _single_township(endpoint: Endpoint) -> str:
    if len(endpoint.townships) != 1:
        raise PermanentDeliveryError(
            f"MQTT endpoint {endpoint.id} must serve exactly one township, "
            f"has {len(endpoint.townships)}"
        )
    return endpoint.townships[0]


def _seconds_left(expires_at: datetime) -> int:
    """Whole seconds to `expires_at`, at least 1; PermanentDeliveryError once it has passed."""
    if expires_at.tzinfo is None:
        raise PermanentDeliveryError("expires_at has no UTC offset")
    left = (expires_at - datetime.now(UTC)).total_seconds()
    if left <= 0:
        raise PermanentDeliveryError(f"warning expired at {expires_at.isoformat()}")
    return max(1, int(left))


def _parse_at(value: object) -> datetime:
    if value is None:
        return datetime.now(UTC)
    if not isinstance(value, str):
        raise ValueError("at is not a string")
    at = datetime.fromisoformat(value)
    if at.tzinfo is None:
        raise ValueError("at has no UTC offset")
    return at
