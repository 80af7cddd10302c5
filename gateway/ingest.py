"""Ingest of one warning: idempotency, validation, authority, routing, durable acceptance.

The answer is given only after the warning, its planned deliveries (the outbox) and its ledger
entries are committed in one transaction; the deliveries are then handed to the dispatcher.
Every authority refusal is written to the ledger (art. 28) before it is answered.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.channels.base import Notice
from gateway.clients import Client
from gateway.coverage import CoverageTracker
from gateway.endpoints import EndpointBook
from gateway.exceptions import (
    Conflict,
    FieldError,
    InvalidWarning,
    NotFound,
    NotImplementedYet,
    Refused,
)
from gateway.ledger import LedgerDraft, Stage, canonical_json
from gateway.metrics import Metrics
from gateway.model import MsgType, Warning, as_json_dict, parse_warning
from gateway.policies.authority import AuthorityPolicy
from gateway.policies.routing import delivery_id, plan
from gateway.store import Store, StoredWarning
from gateway.store.base import CoverageRow, DeliveryRecord
from gateway.townships import Registry

Clock = Callable[[], datetime]
Dispatch = Callable[[Notice, Sequence[DeliveryRecord]], Awaitable[None]]


def utc_now() -> datetime:
    return datetime.now(UTC)


def body_hash(doc: object) -> str:
    """Hash of a JSON body independent of key order and whitespace."""
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()


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
        dispatch: Dispatch | None = None,
        tracker: CoverageTracker | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.store = store
        self.registry = registry
        self.authority = authority
        self.metrics = metrics
        self.book = book
        self.channels = channels
        self.dispatch = dispatch
        self.tracker = tracker
        self.clock = clock

    async def submit(self, raw: bytes, client: Client) -> tuple[int, dict[str, Any]]:
        """(HTTP status, answer) for a JSON body: 202 when accepted, 200 for a repeat."""
        received_at = self.clock()
        doc = _json_object(raw)
        digest = body_hash(doc)
        wid = doc.get("id")
        if isinstance(wid, str):
            prior = await self.store.get_warning(wid)
            if prior is not None:
                return self._replay(prior, digest)
        warning = parse_warning(raw, registry=self.registry, now=received_at)
        await self._check_reference(warning)
        received = LedgerDraft(
            warning.id, Stage.RECEIVED, received_at, {"client": client.name, "body_hash": digest}
        )
        try:
            authorization = self.authority.authorize(warning, client)
        except Refused as refusal:
            self.metrics.refusals.labels(refusal.code).inc()
            rejected = LedgerDraft(warning.id, Stage.REJECTED, self.clock(), refusal.body())
            await self.store.append([received, rejected])
            raise
        routed = plan(warning, self.book, self.registry, self.channels)
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
        answer = {
            "id": warning.id,
            "status": "active",
            "deliveries": len(deliveries),
            "blind_spots": list(routed.blind_spots),
        }
        stored = StoredWarning(
            id=warning.id,
            body_hash=digest,
            warning=as_json_dict(warning),
            answer=answer,
            state="active",
            received_at=received_at,
            expires_at=warning.expires_at,
            authorization=authorization.ledger_data(),
        )
        authorized = LedgerDraft(
            warning.id, Stage.AUTHORIZED, self.clock(), authorization.ledger_data()
        )
        per_channel: dict[str, int] = {}
        for d in deliveries:
            per_channel[d.channel] = per_channel.get(d.channel, 0) + 1
        planned = LedgerDraft(
            warning.id,
            Stage.PLANNED,
            self.clock(),
            {
                "deliveries": len(deliveries),
                "channels": per_channel,
                "townships": len(routed.townships),
                "blind_spots": list(routed.blind_spots),
            },
        )
        blind = set(routed.blind_spots)
        coverage = [CoverageRow(warning.id, t, t in blind) for t in routed.townships]
        result, created = await self.store.accept(
            stored, [received, authorized, planned], deliveries, coverage
        )
        if not created:  # the same id arrived concurrently and was stored first
            return self._replay(result, digest)
        self.metrics.warnings.labels("accepted").inc()
        if self.dispatch is not None:
            await self.dispatch(Notice.from_document(stored.warning), deliveries)
        if self.tracker is not None:
            self.tracker.watch(stored)
            if routed.blind_spots:  # art. 20: no means reaches them; escalate at once
                await self.tracker.escalate(stored, routed.blind_spots, reason="blind_spot")
        return 202, answer

    def _replay(self, prior: StoredWarning, digest: str) -> tuple[int, dict[str, Any]]:
        if prior.body_hash != digest:
            self.metrics.warnings.labels("conflict").inc()
            raise Conflict(
                f"warning {prior.id} was already accepted with another body; "
                "a new version needs a new id (msg_type update)",
                code="id_conflict",
            )
        self.metrics.warnings.labels("duplicate").inc()
        return 200, prior.answer

    async def _check_reference(self, warning: Warning) -> None:
        if warning.msg_type is MsgType.ALERT or warning.references is None:
            return
        if await self.store.get_warning(warning.references) is None:
            raise NotFound(
                f"references names unknown warning {warning.references}", code="unknown_reference"
            )
        raise NotImplementedYet(
            f"msg_type {warning.msg_type} (art. 18) is not supported by this gateway version yet"
        )


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidWarning("the body is not valid JSON", errors=[_body_error(str(exc))]) from exc
    if not isinstance(doc, dict):
        raise InvalidWarning(
            "the body must be a JSON object", errors=[_body_error("not an object")]
        )
    return doc


def _body_error(reason: str) -> FieldError:
    return FieldError("(body)", reason)
