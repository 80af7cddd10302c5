"""Ingest of one warning: idempotency, validation, authority, routing, durable acceptance.

The answer is given only after the warning, its planned deliveries (the outbox) and its ledger
entries are committed in one transaction; the deliveries are then handed to the dispatcher.
Every authority refusal is written to the ledger (art. 28) before it is answered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.clients import Client
from gateway.coverage import CoverageTracker
from gateway.endpoints import EndpointBook
from gateway.exceptions import (
    Conflict,
    FieldError,
    InvalidWarning,
    NotFound,
    Refused,
    RequestError,
)
from gateway.ledger import LedgerDraft, Stage, canonical_json
from gateway.lifecycle import Lifecycle
from gateway.metrics import Metrics
from gateway.model import Limits, MsgType, Warning, as_json_dict, parse_warning
from gateway.policies.authority import AuthorityPolicy, Authorization, check_issuing_unit
from gateway.policies.routing import Plan, delivery_id, plan
from gateway.store import Store, StoredWarning
from gateway.store.base import CoverageRow, DeliveryRecord, DeliveryState, WarningState
from gateway.text import scrub, unicode_errors
from gateway.townships import Registry
from gateway.values import Notice

log = logging.getLogger("gateway.ingest")

Clock = Callable[[], datetime]
Dispatch = Callable[[Notice, Sequence[DeliveryRecord]], Awaitable[None]]


def utc_now() -> datetime:
    return datetime.now(UTC)


def body_hash(doc: object) -> str:
    """Hash of a JSON body independent of key order and whitespace."""
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()


@dataclass(frozen=True)
class Submitted:
    """A submission's result: the stored warning (the earlier one for a repeat), the
    deliveries this submission planned (none for a repeat), and whether it was new."""

    warning: StoredWarning
    deliveries: Sequence[DeliveryRecord]
    accepted: bool

    @property
    def status(self) -> int:
        """202 Accepted for a new warning, 200 for a repeat (answered as the first time)."""
        return 202 if self.accepted else 200

    @property
    def answer(self) -> dict[str, Any]:
        return self.warning.answer


class Ingest:
    """Turns request bodies into accepted warnings; see the module docstring."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        authority: AuthorityPolicy,
        metrics: Metrics,
        *,
        book: EndpointBook,
        channels: Collection[str],
        dispatch: Dispatch,
        tracker: CoverageTracker,
        lifecycle: Lifecycle,
        clock: Clock = utc_now,
        limits: Limits | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.authority = authority
        self.metrics = metrics
        self.book = book
        self.channels = channels
        self.dispatch = dispatch
        self.tracker = tracker
        self.lifecycle = lifecycle
        self.clock = clock
        self.limits = limits or Limits()

    async def submit(self, raw: bytes, client: Client) -> Submitted:
        """What a JSON body came to: accepted (202) or a repeat of a stored one (200). Raises
        the RequestError of a refusal (written to the ledger first)."""
        received_at = self.clock()
        doc = _json_object(raw)
        digest = body_hash(doc)
        wid = doc.get("id")
        received = LedgerDraft(
            wid if isinstance(wid, str) else "",
            Stage.RECEIVED,
            received_at,
            {"client": client.name, "body_hash": digest},
        )
        async with self._refusals_recorded(received):
            if isinstance(wid, str):
                prior = await self.store.get_warning(wid)
                if prior is not None:
                    return self._replay(prior, digest)
            # After the replay check: a stored id answers as it did, whatever the clock says.
            warning = parse_warning(
                raw, registry=self.registry, now=received_at, limits=self.limits
            )
            replaced = await self._replaced(warning, received_at)
            authorization = self._authorize(warning, client, replaced)
        old_deliveries = await self.store.deliveries_for(replaced.id) if replaced else []
        routed = self._route(warning, old_deliveries)
        deliveries = [
            DeliveryRecord(
                id=delivery_id(warning.id, e.id),
                warning_id=warning.id,
                endpoint_id=e.id,
                channel=e.channel,
                level=warning.level,
            )
            for e in routed.endpoints
        ]
        cancel = warning.msg_type is MsgType.CANCEL
        # A cancel is over once sent: it is the record of the warning it ended.
        state = WarningState.CANCELLED if cancel else WarningState.ACTIVE
        answer = {
            "id": warning.id,
            "status": state,
            "deliveries": len(deliveries),
            "blind_spots": list(routed.blind_spots),
        }
        stored = StoredWarning(
            id=warning.id,
            body_hash=digest,
            warning=as_json_dict(warning),
            answer=answer,
            state=state,
            received_at=received_at,
            expires_at=warning.expires_at,
            authorization=authorization.ledger_data(),
        )
        entries = [
            received,
            LedgerDraft(warning.id, Stage.AUTHORIZED, self.clock(), authorization.ledger_data()),
            _planned(warning.id, self.clock(), deliveries, routed),
        ]
        clears: list[DeliveryRecord] = []
        retire: tuple[str, str] | None = None
        if replaced is not None:
            clears = self.lifecycle.clears_after(replaced.id, old_deliveries)
            old_state, stage = (
                (WarningState.CANCELLED, Stage.CANCELLED)
                if cancel
                else (WarningState.SUPERSEDED, Stage.SUPERSEDED)
            )
            entries.append(LedgerDraft(replaced.id, stage, self.clock(), {"by": warning.id}))
            retire = (replaced.id, old_state)
        blind = set(routed.blind_spots)
        coverage = (
            [] if cancel else [CoverageRow(warning.id, t, t in blind) for t in routed.townships]
        )
        # Art. 20: no means reaches a blind spot; it is escalated at once, with the warning.
        escalations: list[DeliveryRecord] = []
        escalated: tuple[Sequence[str], datetime] | None = None
        if routed.blind_spots and not cancel:
            at = self.clock()
            escalations, drafts = self.tracker.plan(
                warning.id, warning.level, routed.blind_spots, "blind_spot", at
            )
            entries.extend(drafts)
            escalated = (routed.blind_spots, at)
        result, created = await self.store.accept(
            stored, entries, [*deliveries, *escalations, *clears], coverage, retire, escalated
        )
        if not created:  # the same id arrived concurrently and was stored first
            return self._replay(result, digest)
        self.metrics.warnings.labels("accepted").inc()
        await self._follow_up(stored, [*deliveries, *escalations], replaced, clears)
        return Submitted(stored, [*deliveries, *escalations], accepted=True)

    def _authorize(
        self, warning: Warning, client: Client, replaced: StoredWarning | None
    ) -> Authorization:
        """Annex 1 for the new content; for an update or cancel also art. 18's issuing unit."""
        authorization = self.authority.authorize(warning, client)
        if replaced is not None:
            check_issuing_unit(
                warning, authorization, replaced.warning, replaced.authorization, client
            )
        return authorization

    @asynccontextmanager
    async def _refusals_recorded(self, received: LedgerDraft) -> AsyncIterator[None]:
        """A refusal raised inside (400 with an id, 403, 404, 409) is written to the ledger
        (`received`, `rejected` with the code) before it goes on (art. 28)."""
        try:
            yield
        except RequestError as refusal:
            if isinstance(refusal, Refused):
                self.metrics.refusals.labels(refusal.code).inc()
            if is_warning_id(received.warning_id):
                data = scrub(refusal.body())
                rejected = LedgerDraft(received.warning_id, Stage.REJECTED, self.clock(), data)
                await self.store.append([received, rejected])
            raise

    async def _follow_up(
        self,
        stored: StoredWarning,
        deliveries: Sequence[DeliveryRecord],
        replaced: StoredWarning | None,
        clears: Sequence[DeliveryRecord],
    ) -> None:
        """After the commit: dispatch, retire the replaced warning, watch coverage and expiry.
        The warning is durable: whatever fails here is logged, not answered (a restart resumes
        what is pending), so its 202 is never turned into an error."""
        try:
            referenced = replaced.warning["sent_at"] if replaced is not None else None
            notice = Notice.from_document(stored.warning, referenced_sent_at=referenced)
            await self.dispatch(notice, deliveries)
            if replaced is not None:
                await self.lifecycle.after_retire(replaced, clears)
        except Exception:
            log.exception("follow-up of accepted warning %s failed", stored.id)
        if stored.state != WarningState.ACTIVE:
            return
        self.lifecycle.watch(stored)
        self.tracker.watch(stored)

    def _route(self, warning: Warning, old_deliveries: Sequence[DeliveryRecord]) -> Plan:
        """The plan of an alert or update; a cancel goes to the partners of its area and to the
        SMS/email recipients who got the warning it ends, per `old_deliveries` (art. 18)."""
        routed = plan(warning, self.book, self.registry, self.channels)
        if warning.msg_type is not MsgType.CANCEL:
            return routed
        reached = {
            d.endpoint_id
            for d in old_deliveries
            if d.purpose is None
            and d.channel in ("sms", "email")
            and d.state in (DeliveryState.DELIVERED, DeliveryState.SENT)
        }
        endpoints = tuple(e for e in routed.endpoints if e.channel == "webhook" or e.id in reached)
        return Plan(routed.townships, endpoints, ())

    def _replay(self, prior: StoredWarning, digest: str) -> Submitted:
        if prior.body_hash != digest:
            self.metrics.warnings.labels("conflict").inc()
            raise Conflict(
                f"warning {prior.id} was already accepted with another body; "
                "a new version needs a new id (msg_type update)",
                code="id_conflict",
            )
        self.metrics.warnings.labels("duplicate").inc()
        return Submitted(prior, (), accepted=False)

    async def _replaced(self, warning: Warning, now: datetime) -> StoredWarning | None:
        """The active warning an update or cancel replaces; 404 unknown, 409 no longer active."""
        if warning.msg_type is MsgType.ALERT or warning.references is None:
            return None
        old = await self.store.get_warning(warning.references)
        if old is None:
            raise NotFound(
                f"references names unknown warning {warning.references}", code="unknown_reference"
            )
        state = (
            WarningState.EXPIRED
            if old.state == WarningState.ACTIVE and old.expires_at <= now
            else old.state
        )
        if state != WarningState.ACTIVE:
            raise Conflict(
                f"warning {old.id} is {state}; only an active warning can be updated or cancelled",
                code="reference_not_active",
            )
        return old


def _planned(
    warning_id: str, at: datetime, deliveries: Sequence[DeliveryRecord], routed: Plan
) -> LedgerDraft:
    per_channel: dict[str, int] = {}
    for d in deliveries:
        per_channel[d.channel] = per_channel.get(d.channel, 0) + 1
    data = {
        "deliveries": len(deliveries),
        "channels": per_channel,
        "townships": len(routed.townships),
        "blind_spots": list(routed.blind_spots),
    }
    return LedgerDraft(warning_id, Stage.PLANNED, at, data)


_WARNING_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def is_warning_id(value: str) -> bool:
    """Whether `value` is a well-formed warning id (design.md: 1-128 `[A-Za-z0-9._:-]`)."""
    return _WARNING_ID.fullmatch(value) is not None


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidWarning("the body is not valid JSON", errors=[_body_error(str(exc))]) from exc
    if not isinstance(doc, dict):
        raise InvalidWarning(
            "the body must be a JSON object", errors=[_body_error("not an object")]
        )
    # Before anything hashes or stores it: json.loads lets "\ud800" escapes through.
    errors = unicode_errors(doc)
    if errors:
        raise InvalidWarning("the body holds text that is not valid Unicode", errors=errors)
    return doc


def _body_error(reason: str) -> FieldError:
    return FieldError("(body)", reason)
