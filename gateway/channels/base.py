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
from typing import Any, ClassVar, Generic, TypeVar

from gateway.exceptions import DeliveryError, PermanentDeliveryError
from gateway.service import Service
from gateway.values import Endpoint, Notice, Receipt


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


class Channel(Service, ABC):
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

    @abstractmethod
    async def send(self, message: Message) -> Outcome:
        """Deliver one message; raise a DeliveryError subclass on failure."""

    async def clear(self, endpoint: Endpoint, warning_id: str) -> None:
        """Withdraw what `send` left at `endpoint` for the warning (a retained message), for a
        channel whose spec says it `clears`; raises like `send`. This one keeps nothing."""
        raise PermanentDeliveryError(f"{self.name} keeps nothing to clear")


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
