"""What the MQTT channel publishes: the warning's JSON payload and its MQTT 5 properties.

The payload is the warning's fields and last the `delivery_id`; all of it but the delivery id is
rendered once per warning (`payload_head`, keyed by `payload_key`). PUBLISH properties depend
only on the expiry and are packed once per value (`publish_properties`).
"""

from __future__ import annotations

import functools
import json

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.values import Notice

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
