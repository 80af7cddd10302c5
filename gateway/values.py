"""The values passed between ingest, routing, the dispatcher, the channels and the store.

Plain frozen dataclasses that depend on nothing of the gateway: an `Endpoint` from
endpoints.yaml, the `Notice` a channel renders, a `Receipt` that arrives after a send, and the
level colours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

LEVEL_COLOURS = {1: "红色", 2: "橙色", 3: "黄色", 4: "蓝色"}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One place a warning can go, from endpoints.yaml.

    `townships` are the 9-digit codes it serves (every township of the city for city-wide
    partners). `target` is channel-specific: the MQTT kind (`display`/`broadcast`), an SMS group
    name, an email address, a webhook URL. `recipients` are phone numbers or email addresses;
    `devices` the MQTT device ids that acknowledge; `secret` a webhook's `whsec_...` secret,
    read from the environment variable `secret_env`.
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
    secret_env: str | None = None
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
