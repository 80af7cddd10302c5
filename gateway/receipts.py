"""Receipts that arrive after a send: SMS provider callbacks, MQTT board acks, partner acks.

Each receipt is written to the ledger (`receipt`) with the far side's timestamp. SMS callbacks
go through the delivery's `SmsStatus` book (ordered by provider timestamp; a part's final failure
is never overwritten by another part's success) and settle the delivery as `delivered` or
`failed`. An ack of a channel that already confirmed delivery (MQTT PUBACK, HTTP 2xx) adds the
receipt without changing the state. A final state is never changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from gateway.channels.base import Receipt
from gateway.channels.sms import RECEIPT_SOURCE as SMS_SOURCE
from gateway.channels.sms import SmsStatus, parse_callback
from gateway.endpoints import EndpointBook
from gateway.exceptions import FieldError, InvalidWarning, NotFound
from gateway.ledger import LedgerDraft, Stage, timestamp
from gateway.policies.routing import delivery_id
from gateway.store import Store
from gateway.store.base import Cover, DeliveryRecord, DeliveryState, DeliveryUpdate
from gateway.text import in_utc, unicode_errors
from gateway.townships import Registry, normalise

log = logging.getLogger("gateway.receipts")


class ReceiptDesk:
    """Applies receipts to deliveries, one at a time per delivery."""

    def __init__(
        self, store: Store, clock: Callable[[], datetime], book: EndpointBook | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        self.book = book
        self._locks: dict[str, asyncio.Lock] = {}

    async def apply(self, receipt: Receipt) -> DeliveryRecord:
        """Record `receipt`; NotFound when it names no known delivery."""
        did = receipt.delivery_id
        if did is None and receipt.warning_id and receipt.endpoint_id:
            did = delivery_id(receipt.warning_id, receipt.endpoint_id)
        if did is None:
            raise NotFound("the receipt names no delivery", code="unknown_delivery")
        lock = self._locks.setdefault(did, asyncio.Lock())
        try:
            async with lock:
                return await self._apply(did, receipt)
        finally:
            if not lock.locked() and not getattr(lock, "_waiters", None):
                self._locks.pop(did, None)

    async def manual(self, c: ManualConfirmation, registry: Registry) -> dict[str, object]:
        """Record a manual confirmation; 404 for an unknown warning, 400 for a township
        outside its area."""
        stored = await self.store.get_warning(c.warning_id)
        if stored is None:
            raise NotFound(f"no warning {c.warning_id}", code="unknown_warning")
        township = normalise(c.township) or c.township
        area = stored.warning.get("area", {})
        inside = township in area.get("townships", ()) or (
            township in registry.townships and township[:6] in area.get("districts", ())
        )
        if not inside:
            raise InvalidWarning(
                "the township is not in the warning's area",
                code="invalid_receipt",
                errors=[FieldError("township", f"{township} is not in the area of {c.warning_id}")],
            )
        data: dict[str, object] = {
            "source": "manual",
            "township": township,
            "means": c.means,
            "by": c.by,
            "reported_at": timestamp(c.at),
        }
        if c.note:
            data["note"] = c.note
        now = self.clock()
        by = {"means": c.means, "by": c.by, "reported_at": timestamp(c.at)}
        await self.store.record(
            [],
            [LedgerDraft(c.warning_id, Stage.RECEIPT, now, data)],
            [Cover(c.warning_id, township, now, by)],
        )
        return data

    async def sink(self, receipt: Receipt) -> None:
        """A ReceiptSink for channels: unknown deliveries are logged, not raised."""
        try:
            await self.apply(receipt)
        except NotFound:
            log.warning("receipt from %s for an unknown delivery dropped", receipt.source)

    async def _apply(self, did: str, receipt: Receipt) -> DeliveryRecord:
        rec = await self.store.get_delivery(did)
        if rec is None:
            raise NotFound(f"no delivery {did}", code="unknown_delivery")
        state = rec.state
        sms_book: dict[str, object] | None = None
        if receipt.source == SMS_SOURCE:
            status = SmsStatus.from_json(rec.receipt) if rec.receipt else SmsStatus()
            status.apply(receipt)
            sms_book = status.to_json()
            if status.overall == "delivered" and _all_parts_reported(status, rec.detail):
                state = DeliveryState.DELIVERED
            elif status.overall == "failed":
                state = DeliveryState.FAILED
        elif receipt.status == "delivered" and state == DeliveryState.SENT:
            state = DeliveryState.DELIVERED
        data: dict[str, object] = {
            "delivery_id": did,
            "channel": rec.channel,
            "endpoint": rec.endpoint_id,
            "status": receipt.status,
            "source": receipt.source,
            "reported_at": timestamp(receipt.at),
        }
        detail = {k: v for k, v in receipt.detail.items() if v is not None}
        if detail:
            data["detail"] = detail
        if state != rec.state and rec.state in DeliveryState.FINAL:
            state = rec.state
        updates = []
        if sms_book is not None or state != rec.state:
            receipt_doc = sms_book or dict(rec.receipt or {})
            updates.append(DeliveryUpdate(did, state, receipt=receipt_doc))
        now = self.clock()
        covers: list[Cover] = []
        endpoint = self.book.by_id.get(rec.endpoint_id) if self.book else None
        reached = state == DeliveryState.DELIVERED or receipt.status == "delivered"
        if reached and endpoint is not None and endpoint.covers_townships and not rec.purpose:
            by = {"channel": rec.channel, "endpoint": rec.endpoint_id, "receipt": receipt.source}
            covers = [Cover(rec.warning_id, t, now, by) for t in endpoint.townships]
        await self.store.record(
            updates, [LedgerDraft(rec.warning_id, Stage.RECEIPT, now, data)], covers
        )
        return replace(rec, state=state, receipt=sms_book or rec.receipt)


def _all_parts_reported(status: SmsStatus, detail: dict[str, Any]) -> bool:
    """Whether the callbacks so far account for every part to every phone of the delivery.

    A receipt without phone and part stands for the whole message; per-phone receipts without a
    part count one per phone; otherwise segments x phones receipts are expected.
    """
    parts = status.to_json()["parts"]
    if any(p["phone"] is None and p["part"] is None for p in parts):
        return True
    phones = int(detail.get("phones", 1) or 1)
    segments = int(detail.get("segments", 1) or 1)
    expected = phones if all(p["part"] is None for p in parts) else phones * segments
    return len(parts) >= expected


MEANS = ("鸣锣", "吹哨", "敲门入户", "广播车", "other")


ReportTime = Annotated[AwareDatetime, Field(strict=True), AfterValidator(in_utc)]


class _PartnerAck(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    delivery_id: str = Field(min_length=1, max_length=300)
    status: Literal["delivered", "failed"] = "delivered"
    at: ReportTime | None = None


class ManualConfirmation(BaseModel):
    """A township's confirmation that a manual means reached people (art. 20)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    warning_id: str = Field(min_length=1, max_length=128)
    township: str = Field(pattern=r"^\d{9}(\d{3})?$")
    means: Literal["鸣锣", "吹哨", "敲门入户", "广播车", "other"]
    by: str = Field(min_length=1, max_length=200)
    at: ReportTime
    note: str | None = Field(default=None, max_length=500)


def parse_receipt(raw: bytes, now: datetime) -> Receipt | ManualConfirmation:
    """The receipt in a POST /v1/receipts body: an SMS provider callback (`message_id`), a
    partner ack (`delivery_id`) or a manual confirmation (`township`). InvalidWarning (400,
    code `invalid_receipt`) lists every bad field."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidWarning(
            "the body is not valid JSON",
            code="invalid_receipt",
            errors=[FieldError("(body)", str(exc))],
        ) from exc
    # Before anything stores or hashes it: json.loads lets "\ud800" escapes through.
    bad_text = unicode_errors(doc)
    if bad_text:
        raise InvalidWarning(
            "the receipt holds text that is not valid Unicode",
            code="invalid_receipt",
            errors=bad_text,
        )
    if isinstance(doc, dict) and "message_id" in doc:
        return parse_callback(doc)
    try:
        if isinstance(doc, dict) and "township" in doc:
            return ManualConfirmation.model_validate_json(raw)
        ack = _PartnerAck.model_validate_json(raw)
    except ValidationError as exc:
        errors = [
            FieldError(".".join(str(p) for p in e["loc"]) or "(body)", e["msg"])
            for e in exc.errors(include_url=False)
        ]
        raise InvalidWarning("invalid receipt", code="invalid_receipt", errors=errors) from exc
    return Receipt(
        status=ack.status, at=ack.at or now, source="partner-ack", delivery_id=ack.delivery_id
    )
