"""MQTT channel: one retained message per township, endpoint kind and warning; board acks.

A warning for an endpoint of kind `display` or `broadcast` serving township T of district D is
published with QoS 1 and the retain flag to `{prefix}/D/T/{kind}/{warning_id}`, so a board that
(re)connects later still sees every current warning. Under MQTT 5 the message carries a
MessageExpiryInterval of the whole seconds left to `expires_at`, so the broker drops it on time;
MQTT 3.1.1 (amqtt, the drill's embedded broker) has no expiry and relies on `clear`.

Board acks on `{prefix}/ack/{device_id}` become Receipts for the ReceiptSink (`mqtt_acks`).

One long-lived client connection is kept by a background task started on `async with`: it
reconnects with capped exponential backoff and re-subscribes to the acks after every reconnect.
A `send` waits at most `connect_timeout` for a connection and `publish_timeout` for the PUBACK;
anything that goes wrong on the way is a `TransientDeliveryError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import sys
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.properties import Properties
from pydantic import Field

from gateway.channels.base import Channel, Message, Outcome, ReceiptSink
from gateway.channels.mqtt_acks import RECEIPT_SOURCE, parse_ack
from gateway.channels.mqtt_payload import (
    JSON,
    payload_head,
    payload_key,
    publish_properties,
    seconds_left,
    topic_of,
)
from gateway.channels.spec import (
    BuildContext,
    Capabilities,
    ChannelOptions,
    ChannelSpec,
    EndpointFields,
    OptionError,
    Target,
    TownshipEndpoints,
    check_url_option,
)
from gateway.exceptions import TransientDeliveryError
from gateway.values import Endpoint

log = logging.getLogger("gateway.channels.mqtt")

DEFAULT_PORT = 1883
DEFAULT_URL = "mqtt://127.0.0.1:1883"
DEFAULT_PREFIX = "cq/warnings"
DEFAULT_CONCURRENCY = 64
DEFAULT_RECONCILE_S = 300.0
"""Seconds between reconciliations of retained messages (also after every reconnect)."""
SHARED_ACK_GROUP = "gateway"
"""`$share/gateway/{prefix}/ack/+` (design.md): the gateways of a deployment share the acks."""
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

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("MqttChannel is already open")
        self._task = asyncio.create_task(self._maintain(), name=f"mqtt-{self.client_id}")

    async def close(self) -> None:
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
        topic = topic_of(self.prefix, endpoint, notice.id)
        expiry = seconds_left(notice.expires_at)
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

    async def clear(self, endpoint: Endpoint, warning_id: str) -> None:
        """Remove the retained warning from the endpoint's topic (empty retained payload, QoS 1).

        Raises like `send`: PermanentDeliveryError for an impossible topic,
        TransientDeliveryError when the broker cannot be reached.
        """
        await self._publish(topic_of(self.prefix, endpoint, warning_id), b"", None)

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
            receipt = parse_ack(str(msg.topic), msg.payload, self._ack_prefix, self._devices)
            if receipt is None:
                continue
            try:
                await self._receipts(receipt)
            except Exception:
                # A failing sink must not stop the loop that also keeps the connection.
                log.exception("receipt sink failed for MQTT ack on %s", msg.topic)


class MqttOptions(ChannelOptions):
    """`channels.mqtt` in gateway.yaml; GATEWAY_MQTT_URL overrides `url`."""

    url: str = DEFAULT_URL
    prefix: str = Field(default=DEFAULT_PREFIX, pattern=r"^[^#+]+[^/#+]$")
    protocol: Literal["5", "3.1.1"] = "5"
    reconcile_s: float = Field(default=DEFAULT_RECONCILE_S, ge=1, le=86400)


class MqttFields(EndpointFields):
    """A board or loudspeaker group of endpoints.yaml: its `kind` and the `devices` that ack."""

    kind: Literal["display", "broadcast"] | None = None
    devices: list[str] = Field(default_factory=list)


def _check(options: MqttOptions) -> None:
    check_url_option(options.url, "mqtt")


def _target(entry: MqttFields, endpoint_id: str) -> Target:
    if entry.kind is None:
        raise OptionError("kind", "an mqtt endpoint needs display|broadcast")
    return Target(sys.intern(entry.kind), devices=tuple(entry.devices))


def _build(options: MqttOptions, context: BuildContext) -> Channel:
    devices = {device: e.id for e in context.endpoints for device in e.devices}
    return MqttChannel(
        options.url,
        prefix=options.prefix,
        receipts=context.receipts,
        devices=devices,
        protocol=options.protocol,
        shared_acks=SHARED_ACK_GROUP if context.shared else None,
    )


SPEC = ChannelSpec(
    name="mqtt",
    options=MqttOptions,
    build=_build,
    capabilities=Capabilities(clears=True),
    concurrency=DEFAULT_CONCURRENCY,
    audiences=frozenset({"public"}),
    env={"url": "GATEWAY_MQTT_URL"},
    check=_check,
    township=TownshipEndpoints(MqttFields, _target),
    receipt_sources=frozenset({RECEIPT_SOURCE}),
    start_order=0,
    leads=True,
)
