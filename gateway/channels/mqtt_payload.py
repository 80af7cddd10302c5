"""What the MQTT channel publishes: the topic, the warning's JSON payload and its MQTT 5
properties.

The topic of a warning at an endpoint is `{prefix}/{district}/{township}/{kind}/{warning_id}`.

The payload is the warning's fields and last the `delivery_id`; all of it but the delivery id is
rendered once per warning (`payload_head`, keyed by `payload_key`). PUBLISH properties depend
only on the expiry and are packed once per value (`publish_properties`).
"""

from __future__ import annotations

import functools
import json
import re
from datetime import UTC, datetime

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.exceptions import PermanentDeliveryError
from gateway.values import Endpoint, Notice

KINDS = frozenset({"display", "broadcast"})
_TOWNSHIP = re.compile(r"[0-9]{9}")
_WARNING_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
PROPERTIES_CACHE = 64
"""Expiry values whose MQTT 5 PUBLISH properties are kept (nothing else in them varies)."""


class PackedProperties(Properties):
    """Properties that paho packs once: it packs them again for every PUBLISH otherwise,
    which cost more than the rest of a publish. Only for properties never modified after."""

    def pack(self) -> bytes:
        packed: bytes | None = self.__dict__.get("_packed")
        if packed is None:
            packed = super().pack()  # type: ignore[no-untyped-call]
            self.__dict__["_packed"] = packed  # past paho's __setattr__, which only takes names
        return packed


@functools.lru_cache(maxsize=PROPERTIES_CACHE)
def publish_properties(expiry: int) -> Properties:
    """MQTT 5 PUBLISH properties: expiry after `expiry` seconds, UTF-8 JSON. Shared: never
    modify the result (paho only packs it)."""
    properties = PackedProperties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.MessageExpiryInterval = expiry
    properties.PayloadFormatIndicator = 1
    properties.ContentType = "application/json"
    properties.pack()  # packed now, before anyone can share it
    return properties


JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
"""Compact JSON with UTF-8 text as is: `json.dumps(..., ensure_ascii=False, separators=...)`."""


def payload_key(notice: Notice) -> tuple[object, ...]:
    """Every field the payload's warning part uses; UTC offsets too, as `isoformat` shows them."""
    return (
        notice.id,
        notice.msg_type,
        notice.level,
        notice.hazard,
        notice.title,
        notice.content,
        notice.measures,
        notice.contact_phone,
        notice.issuer_unit,
        notice.sent_at,
        notice.sent_at.utcoffset(),
        notice.expires_at,
        notice.expires_at.utcoffset(),
    )


def payload_head(notice: Notice) -> bytes:
    """The payload's JSON object up to the value of its last key, `delivery_id`."""
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
    }
    return (JSON.encode(doc)[:-1] + ',"delivery_id":').encode("utf-8")


def topic_of(prefix: str, endpoint: Endpoint, warning_id: str) -> str:
    """The retained topic of `warning_id` at `endpoint`; PermanentDeliveryError when there is
    none (not one 9-digit township, a kind other than display|broadcast, an id that cannot be
    a topic level)."""
    if len(endpoint.townships) != 1:
        raise PermanentDeliveryError(
            f"MQTT endpoint {endpoint.id} must serve exactly one township, "
            f"has {len(endpoint.townships)}"
        )
    township, kind = endpoint.townships[0], endpoint.target
    if kind not in KINDS:
        raise PermanentDeliveryError(f"MQTT endpoint kind must be display|broadcast: {kind!r}")
    if not _TOWNSHIP.fullmatch(township):
        raise PermanentDeliveryError(f"not a 9-digit township code: {township!r}")
    if not _WARNING_ID.fullmatch(warning_id):
        raise PermanentDeliveryError(f"warning id cannot be a topic level: {warning_id!r}")
    return f"{prefix}/{township[:6]}/{township}/{kind}/{warning_id}"


def seconds_left(expires_at: datetime) -> int:
    """Whole seconds to `expires_at`, at least 1; PermanentDeliveryError once it has passed."""
    if expires_at.tzinfo is None:
        raise PermanentDeliveryError("expires_at has no UTC offset")
    left = (expires_at - datetime.now(UTC)).total_seconds()
    if left <= 0:
        raise PermanentDeliveryError(f"warning expired at {expires_at.isoformat()}")
    return max(1, int(left))
