"""The channel protocol every adapter implements, and the values passed to it.

A channel is an async context manager (`async with channel:` opens connections, exit closes
them) with one method, `send`, that delivers one `Message` to one `Endpoint`:

- it returns an `Outcome`: `delivered=True` when the far side confirmed receipt (HTTP 2xx from a
  partner, SMTP 250, MQTT PUBACK for a retained message), `delivered=False` when the message was
  handed over and a receipt is expected later (an SMS provider's callback);
- it raises `TransientDeliveryError` (timeouts, 5xx, connection errors, 429 with `retry_after`)
  when trying again may help, `PermanentDeliveryError` when it cannot (4xx-like), and
  `EndpointGone` when the endpoint must not be tried again (HTTP 410). Vendor exceptions are
  wrapped at the boundary with `raise ... from exc`; the retry policy decides what happens next.
- `message.delivery_id` is the idempotency key: the same for every attempt of one delivery, also
  across restarts, so a far side can drop duplicates.

Receipts that arrive later (board acks, provider callbacks) are passed to the `ReceiptSink` the
channel was built with.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

from gateway.exceptions import GatewayError

LEVEL_COLOURS = {1: "红色", 2: "橙色", 3: "黄色", 4: "蓝色"}


class DeliveryError(GatewayError):
    """A delivery attempt failed; subclasses tell the retry policy what to do."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientDeliveryError(DeliveryError):
    """Trying again may succeed; wait at least `retry_after` seconds when given."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Trying again will not help (a 4xx-like answer, a malformed address)."""


class EndpointGone(PermanentDeliveryError):
    """The endpoint asked never to be called again (HTTP 410): disable it."""


@dataclass(frozen=True)
class Endpoint:
    """One place a warning can go, from endpoints.yaml.

    `townships` are the 9-digit codes it serves (every township of the city for city-wide
    partners). `target` is channel-specific: the MQTT kind (`display`/`broadcast`), an SMS group
    name, an email address, a webhook URL. `recipients` are phone numbers or email addresses;
    `devices` the MQTT device ids that acknowledge; `secret` a webhook's `whsec_...` secret.
    `covers_townships` is False for media partners: they carry the warning to the public at
    large but confirm nothing per township, so they do not close a blind spot (art. 20).
    """

    id: str
    channel: str
    townships: tuple[str, ...]
    target: str
    recipients: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    secret: str | None = field(default=None, repr=False)
    timeout: float | None = None
    audiences: frozenset[str] = frozenset({"public", "responsible_persons"})
    levels: frozenset[int] = frozenset({1, 2, 3, 4})
    format: str = "json"
    covers_townships: bool = True
    escalation_for: str | None = None

    @property
    def district(self) -> str | None:
        """The district of a single-township endpoint (its MQTT topic needs it)."""
        return self.townships[0][:6] if len(self.townships) == 1 else None


@dataclass(frozen=True)
class Notice:
    """What a channel needs of a warning: the validated fields, plus the stored JSON as is."""

    id: str
    msg_type: str
    level: int
    hazard: str
    title: str
    content: str
    issuer_unit: str
    sent_at: datetime
    expires_at: datetime
    measures: str | None = None
    contact_phone: str | None = None
    area_description: str | None = None
    document: Mapping[str, Any] = field(default_factory=dict, repr=False)
    referenced_sent_at: str | None = None
    """The sent_at of the warning an update or cancel replaces (CAP's `<references>`)."""

    @property
    def colour(self) -> str:
        """红色/橙色/黄色/蓝色."""
        return LEVEL_COLOURS[self.level]

    @classmethod
    def from_document(
        cls, doc: Mapping[str, Any], *, referenced_sent_at: str | None = None
    ) -> Notice:
        """From a stored warning (the JSON of `gateway.model.Warning`) and, for an update or
        cancel, the sent_at of the warning it references."""
        return cls(
            id=doc["id"],
            msg_type=doc.get("msg_type", "alert"),
            level=int(doc["level"]),
            hazard=doc["hazard"],
            title=doc["title"],
            content=doc["content"],
            issuer_unit=doc["issuer"]["unit"],
            sent_at=datetime.fromisoformat(doc["sent_at"]),
            expires_at=datetime.fromisoformat(doc["expires_at"]),
            measures=doc.get("measures"),
            contact_phone=doc.get("contact_phone"),
            area_description=(doc.get("area") or {}).get("description"),
            document=doc,
            referenced_sent_at=referenced_sent_at,
        )


@dataclass(frozen=True)
class Message:
    """One delivery attempt: the notice, the endpoint, the idempotency key, the attempt number."""

    delivery_id: str
    notice: Notice
    endpoint: Endpoint
    attempt: int = 1


@dataclass(frozen=True)
class Outcome:
    """The result of a successful `send`; `detail` goes into the ledger (no secrets)."""

    delivered: bool
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Receipt:
    """A confirmation that arrives after `send`: a board's ack, a provider's callback.

    Identifies the delivery by `delivery_id` when the far side echoes it, else by
    (`warning_id`, `endpoint_id`). `status` is `delivered`, `undelivered` or `failed`; `at` is
    the far side's timestamp when it gives one (statuses are ordered by it).
    """

    status: str
    at: datetime
    source: str
    delivery_id: str | None = None
    warning_id: str | None = None
    endpoint_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


_T = TypeVar("_T")


class PerWarning(Generic[_T]):
    """What a channel renders once per warning (SMS parts, a JSON document) for the `size`
    most recent warnings. Keyed by warning id and checked by identity, so an update that
    reuses an id with other content (another Notice) is rendered afresh."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: dict[str, tuple[Notice, _T]] = {}

    def get(self, notice: Notice, render: Callable[[Notice], _T]) -> _T:
        cached = self._items.get(notice.id)
        if cached is not None and cached[0] is notice:
            return cached[1]
        value = render(notice)
        self._items[notice.id] = (notice, value)
        if len(self._items) > self.size:
            del self._items[next(iter(self._items))]  # the oldest
        return value


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delay-seconds or HTTP-date).

    None when the header is absent or unreadable; a date in the past gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT by definition
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


ReceiptSink = Callable[[Receipt], Awaitable[None]]


class Channel(ABC):
    """Base of every adapter; see the module docstring for the contract."""

    name: ClassVar[str]
    shared_transport: ClassVar[bool] = False
    """One connection serves every endpoint (a broker, an SMTP server, an SMS provider): a send
    that succeeds through it, or its reconnection, wakes all of the channel's waiting
    deliveries. False: each endpoint is its own far side (a partner's server)."""

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Have `callback` called each time the channel's connection is (re)established."""
        # Kept in the instance's dict so adapters need not call a base __init__.
        vars(self).setdefault("_on_reconnect", []).append(callback)

    def reconnected(self) -> None:
        """For adapters: report that the connection is (again) up."""
        for callback in vars(self).get("_on_reconnect", ()):
            callback()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    @abstractmethod
    async def send(self, message: Message) -> Outcome:
        """Deliver one message; raise a DeliveryError subclass on failure."""


@dataclass
class RecordingChannel(Channel):
    """A test double: records messages; `fail_with` makes the next sends raise it."""

    name: ClassVar[str] = "recording"
    sent: list[Message] = field(default_factory=list)
    fail_with: list[DeliveryError] = field(default_factory=list)

    async def send(self, message: Message) -> Outcome:
        if self.fail_with:
            raise self.fail_with.pop(0)
        self.sent.append(message)
        return Outcome(delivered=True, detail={"recorded": len(self.sent)})
