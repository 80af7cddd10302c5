"""Receipts that arrive after a send: SMS provider callbacks, MQTT board acks, partner acks,
and manual confirmations (art. 20), each counted only from its source (design.md "Trust").

- A board ack counts only over MQTT, for an MQTT delivery; an SMS report only from an
  `sms_callbacks` client, for an SMS delivery; a partner ack only from a `partner_acks` client
  that lists the partner, for that partner's delivery; a manual confirmation only from a
  `confirm` client, for a township of its districts. Anything else is 403 `source_not_allowed`
  (or `scope_required`), and nothing is written.
- A report time before the delivery was sent (before the warning was received while the send is
  not yet recorded) or more than `MAX_FUTURE_S` ahead is a 400.
- Each report is written to the ledger (`receipt`) with the far side's timestamp. SMS callbacks
  go through the delivery's `SmsStatus` book (ordered by provider timestamp; a part's final
  failure is never overwritten by another part's success) and settle the delivery as `delivered`
  or `failed`. A report about a final delivery is recorded but changes neither its state nor
  coverage; the same report twice is applied once (the second is answered `duplicate`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from gateway.channels.sms_receipts import RECEIPT_SOURCE as SMS_SOURCE
from gateway.channels.sms_receipts import SmsStatus, parse_callback
from gateway.channels.webhook import ACK_SOURCE as PARTNER_SOURCE
from gateway.clients import Client, Scope
from gateway.endpoints import EndpointBook
from gateway.exceptions import FieldError, InvalidWarning, NotFound, Refused
from gateway.ledger import LedgerDraft, Stage, canonical_json, timestamp
from gateway.policies.routing import delivery_id
from gateway.store import Store
from gateway.store.base import Cover, DeliveryRecord, DeliveryState, DeliveryUpdate
from gateway.text import in_utc, unicode_errors
from gateway.townships import Registry, normalise
from gateway.values import Receipt

log = logging.getLogger("gateway.receipts")

MAX_FUTURE_S = 300.0
"""How far ahead of the gateway's clock a report may be dated (clock skew)."""
MAX_FINGERPRINTS = 200
"""Reports remembered per delivery to apply a repeat once."""


@dataclass(frozen=True)
class ReportOutcome:
    """What a report did: the delivery's state after it; `duplicate` when it was seen before."""

    delivery_id: str
    state: str
    duplicate: bool = False

    def answer(self) -> dict[str, object]:
        return {
            "status": "duplicate" if self.duplicate else "recorded",
            "delivery_id": self.delivery_id,
            "state": self.state,
        }


class ReceiptDesk:
    """Applies receipts to deliveries, one at a time per delivery."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime],
        book: EndpointBook,
        registry: Registry,
        sources: Mapping[str, str],
    ) -> None:
        """`sources` maps a receipt's source to the one channel it may report on."""
        self.store = store
        self.clock = clock
        self.book = book
        self.registry = registry
        self.sources = sources
        self._locks: dict[str, asyncio.Lock] = {}

    async def report(self, receipt: Receipt, client: Client) -> ReportOutcome:
        """Record an SMS report or partner ack posted by `client`; Refused (403) when the client
        is not the report's source, NotFound for an unknown delivery, InvalidWarning (400) for
        a report time out of bounds."""
        client.require(Scope.SMS_CALLBACKS if receipt.source == SMS_SOURCE else Scope.PARTNER_ACKS)
        return await self._locked(receipt, client)

    async def sink(self, receipt: Receipt) -> None:
        """A ReceiptSink for channels (board acks over MQTT): what is refused is logged."""
        try:
            await self._locked(receipt, None)
        except (NotFound, Refused, InvalidWarning) as exc:
            log.warning("receipt from %s dropped: %s", receipt.source, exc)

    async def manual(
        self, c: ManualConfirmation, registry: Registry, client: Client
    ) -> dict[str, object]:
        """Record a manual confirmation (art. 20) by a `confirm` client for a township of its
        districts; 404 unknown warning, 400 township outside the area or time out of bounds."""
        client.require(Scope.CONFIRM)
        township = normalise(c.township) or c.township
        if not client.allows_district(township[:6]):
            raise Refused(
                f"client {client.name} may not confirm for district {township[:6]}",
                code="source_not_allowed",
                errors=[FieldError("township", "outside the client's districts")],
            )
        stored = await self.store.get_warning(c.warning_id)
        if stored is None:
            raise NotFound(f"no warning {c.warning_id}", code="unknown_warning")
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
        now = self.clock()
        _check_time(c.at, datetime.fromisoformat(stored.warning["sent_at"]), now)
        data: dict[str, object] = {
            "source": "manual",
            "township": township,
            "means": c.means,
            "by": c.by,
            "reported_at": timestamp(c.at),
        }
        if c.note:
            data["note"] = c.note
        with self._lock_of(f"manual {c.warning_id}") as lock:
            async with lock:
                if await self._confirmed_before(c.warning_id, data):
                    return {**data, "duplicate": True}
                by = {"means": c.means, "by": c.by, "reported_at": timestamp(c.at)}
                await self.store.record(
                    [],
                    [LedgerDraft(c.warning_id, Stage.RECEIPT, now, data)],
                    [Cover(c.warning_id, township, now, by)],
                )
        return data

    async def _confirmed_before(self, warning_id: str, data: dict[str, object]) -> bool:
        """Whether this very confirmation already covered its township (a repeat)."""
        by = {k: data[k] for k in ("means", "by", "reported_at")}
        for row in await self.store.coverage_for(warning_id):
            if row.township == data["township"]:
                return row.covered_by == by
        return False

    @contextmanager
    def _lock_of(self, key: str) -> Iterator[asyncio.Lock]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            yield lock
        finally:
            if not lock.locked() and not getattr(lock, "_waiters", None):
                self._locks.pop(key, None)

    async def _locked(self, receipt: Receipt, client: Client | None) -> ReportOutcome:
        did = receipt.delivery_id
        if did is None and receipt.warning_id and receipt.endpoint_id:
            did = delivery_id(receipt.warning_id, receipt.endpoint_id)
        if did is None:
            raise NotFound("the receipt names no delivery", code="unknown_delivery")
        with self._lock_of(did) as lock:
            async with lock:
                return await self._apply(did, receipt, client)

    def _check_source(self, rec: DeliveryRecord, receipt: Receipt, client: Client | None) -> None:
        wanted = self.sources.get(receipt.source)
        allowed = wanted == rec.channel
        if receipt.source == PARTNER_SOURCE:
            allowed = allowed and client is not None and rec.endpoint_id in client.partners
        if not allowed:
            raise Refused(
                f"a {receipt.source} report cannot be about delivery {rec.id} "
                f"({rec.channel} to {rec.endpoint_id})",
                code="source_not_allowed",
            )

    async def _apply(self, did: str, receipt: Receipt, client: Client | None) -> ReportOutcome:
        rec = await self.store.get_delivery(did)
        if rec is None:
            raise NotFound(f"no delivery {did}", code="unknown_delivery")
        self._check_source(rec, receipt, client)
        now = self.clock()
        await self._check_report_time(rec, receipt.at, now)
        doc = dict(rec.receipt or {})
        seen: list[str] = list(doc.pop("reports", []))
        mark = _fingerprint(receipt)
        if mark in seen:
            return ReportOutcome(did, rec.state, duplicate=True)
        seen = [*seen, mark][-MAX_FINGERPRINTS:]
        final = rec.state in DeliveryState.FINAL
        state = rec.state
        if receipt.source == SMS_SOURCE and not final:
            status = SmsStatus.from_json(doc) if doc.get("parts") is not None else SmsStatus()
            status.apply(receipt)
            doc = status.to_json()
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
        if client is not None:
            data["client"] = client.name
        detail = {k: v for k, v in receipt.detail.items() if v is not None}
        if detail:
            data["detail"] = detail
        if final:
            data["final_before"] = rec.state
        receipt_doc = {**doc, "reports": seen}
        updates = [DeliveryUpdate(did, state, receipt=receipt_doc)]
        endpoint = self.book.by_id.get(rec.endpoint_id)
        reached = state == DeliveryState.DELIVERED or receipt.status == "delivered"
        townships = endpoint.townships if endpoint and endpoint.covers_townships else ()
        by = {"channel": rec.channel, "endpoint": rec.endpoint_id, "receipt": receipt.source}
        covers = [
            Cover(rec.warning_id, t, now, by)
            for t in townships
            if reached and not final and not rec.purpose
        ]
        await self.store.record(
            updates, [LedgerDraft(rec.warning_id, Stage.RECEIPT, now, data)], covers
        )
        return ReportOutcome(did, state)

    async def _check_report_time(self, rec: DeliveryRecord, at: datetime, now: datetime) -> None:
        sent_at = rec.detail.get("sent_at")
        if isinstance(sent_at, str):
            floor = datetime.fromisoformat(sent_at)
        else:  # the send's outcome is not recorded yet: the warning's receipt is the floor
            stored = await self.store.get_warning(rec.warning_id)
            floor = stored.received_at if stored is not None else now
        _check_time(at, floor, now)


def _check_time(at: datetime, floor: datetime, now: datetime) -> None:
    """InvalidWarning (400) unless `floor` (to the whole second) <= `at` <= now + skew."""
    if at < floor.replace(microsecond=0):
        reason = f"before {timestamp(floor)}, when the report's subject was sent"
    elif at > now + timedelta(seconds=MAX_FUTURE_S):
        reason = f"more than {MAX_FUTURE_S:.0f} s ahead of the gateway's clock"
    else:
        return
    raise InvalidWarning(
        "the report time is out of bounds",
        code="invalid_receipt",
        errors=[FieldError("at", reason)],
    )


def _fingerprint(receipt: Receipt) -> str:
    """What makes two reports the same report."""
    detail = {k: v for k, v in receipt.detail.items() if v is not None}
    doc = [receipt.source, receipt.status, timestamp(receipt.at), detail]
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()[:24]


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
        status=ack.status, at=ack.at or now, source=PARTNER_SOURCE, delivery_id=ack.delivery_id
    )
