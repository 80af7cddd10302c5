"""The warning routes: POST /v1/warnings (JSON, or CAP 1.2 mapped to the same JSON), and
GET /v1/warnings/{id} (its state and delivery counts, or the warning as CAP), its deliveries and
its township coverage."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from gateway.cap.profile import DEFAULT_CAP_SENDER
from gateway.cap.read import cap_to_document
from gateway.cap.write import document_to_cap
from gateway.clients import Scope
from gateway.coverage import coverage_report
from gateway.exceptions import NotFound, RequestError, UnsupportedMedia
from gateway.ingest import utc_now
from gateway.release_list import ReleaseList
from gateway.store.base import DeliveryRecord, StoredWarning, WarningState
from gateway.web.body import read_body
from gateway.web.guard import AUTH, json_response, read_response, requires
from gateway.web.keys import (
    INGEST,
    MAX_BODY,
    METRICS,
    REGISTRY,
    RELEASE_LIST,
    STORE,
    TRACKER,
)

JSON_TYPES = {"application/json", "text/json"}
CAP_TYPE = "application/cap+xml"


async def post_warning(request: web.Request) -> web.Response:
    started = time.perf_counter()
    app = request.app
    metrics = app[METRICS]
    try:
        client = app[AUTH].authenticate(request.headers.get("Authorization"))
        client.require(Scope.SUBMIT)
        ctype = request.content_type
        if ctype not in (*JSON_TYPES, CAP_TYPE) and request.headers.get("Content-Type"):
            raise UnsupportedMedia(
                f"Content-Type {ctype} is not accepted; send application/json or {CAP_TYPE}"
            )
        raw = await read_body(request, app[MAX_BODY])
        if ctype == CAP_TYPE:
            raw = cap_as_json(raw, app[MAX_BODY], app[RELEASE_LIST])
        submitted = await app[INGEST].submit(raw, client)
    except RequestError as exc:
        metrics.warnings.labels(exc.code if exc.status != 403 else "refused").inc()
        raise
    finally:
        metrics.ingest_seconds.observe(time.perf_counter() - started)
    return json_response(submitted.answer, submitted.status)


def cap_as_json(raw: bytes, limit: int, release_list: ReleaseList) -> bytes:
    """A CAP 1.2 body as the JSON warning it stands for; the category follows from annex 1, or
    for an event annex 1 does not list, from CAP's own <category>."""

    def category_of(hazard: str) -> str | None:
        category = release_list.category_of(hazard)
        return category.value if category is not None else None

    doc = cap_to_document(raw, max_bytes=limit, category_of=category_of)
    return json.dumps(doc, ensure_ascii=False).encode()


def wants_cap(request: web.Request) -> bool:
    return CAP_TYPE in request.headers.get("Accept", "")


@requires(Scope.READ)
async def get_warning(request: web.Request) -> web.Response:
    wid = request.match_info["id"]
    stored = await request.app[STORE].get_warning(wid)
    if stored is None:
        raise NotFound(f"no warning {wid}")
    if wants_cap(request):
        ref = stored.warning.get("references")
        referenced = await request.app[STORE].get_warning(ref) if ref else None
        xml = document_to_cap(
            stored.warning,
            sender=DEFAULT_CAP_SENDER,
            referenced_sent_at=referenced.warning["sent_at"] if referenced else None,
            registry=request.app[REGISTRY],
        )
        return web.Response(body=xml, content_type=CAP_TYPE, charset="utf-8")
    counts = await request.app[STORE].delivery_counts(wid)
    return read_response(warning_summary(stored, counts, utc_now()))


def warning_state(stored: StoredWarning, now: datetime) -> str:
    """`active`, `superseded`, `cancelled` or `expired` (an active one past its expiry)."""
    if stored.state == WarningState.ACTIVE and now >= stored.expires_at:
        return WarningState.EXPIRED
    return stored.state


def warning_summary(
    stored: StoredWarning, counts: list[tuple[str | None, str, str, int]], now: datetime
) -> dict[str, Any]:
    """The GET /v1/warnings/{id} answer (unmasked) from the warning and its delivery counts."""
    w = stored.warning
    return {
        "id": stored.id,
        "status": warning_state(stored, now),
        "received_at": stored.received_at.isoformat(),
        "expires_at": w["expires_at"],
        "msg_type": w.get("msg_type", "alert"),
        "hazard": w["hazard"],
        "level": w["level"],
        "authorization": stored.authorization,
        "deliveries": sum(n for purpose, _, _, n in counts if not purpose),
        "channels": channel_counts(counts, lambda p: not p),
        "escalations": channel_counts(counts, lambda p: (p or "").startswith("escalation")),
        "clears": channel_counts(counts, lambda p: p == "clear"),
        "expiry_notices": channel_counts(counts, lambda p: p == "expired"),
        "blind_spots": stored.answer.get("blind_spots", []),
        "warning": w,
    }


def channel_counts(
    counts: list[tuple[str | None, str, str, int]], kind: Callable[[str | None], bool]
) -> dict[str, dict[str, int]]:
    """Per channel: planned, and how many are pending, sent, delivered, failed, stopped, over
    the deliveries whose purpose `kind` accepts."""
    out: dict[str, dict[str, int]] = {}
    for purpose, channel, state, n in counts:
        if not kind(purpose):
            continue
        c = out.setdefault(
            channel,
            {"planned": 0, "pending": 0, "sent": 0, "delivered": 0, "failed": 0, "stopped": 0},
        )
        c["planned"] += n
        c[state] = c.get(state, 0) + n
    return out


def delivery_json(d: DeliveryRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": d.id,
        "channel": d.channel,
        "endpoint": d.endpoint_id,
        "state": d.state,
        "attempts": d.attempts,
        "detail": d.detail,
    }
    if d.escalation_of:
        out["escalation_of"] = d.escalation_of
    if d.receipt:
        out["receipt"] = d.receipt
    return out


@requires(Scope.READ)
async def get_deliveries(request: web.Request) -> web.Response:
    """Every delivery of a warning; `?state=failed` lists the dead letters."""
    wid = request.match_info["id"]
    if await request.app[STORE].get_warning(wid) is None:
        raise NotFound(f"no warning {wid}")
    deliveries = await request.app[STORE].deliveries_for(wid)
    state = request.query.get("state")
    if state:
        deliveries = [d for d in deliveries if d.state == state]
    return read_response({"warning_id": wid, "deliveries": [delivery_json(d) for d in deliveries]})


@requires(Scope.READ)
async def get_coverage(request: web.Request) -> web.Response:
    """Per township: covered (by what, when) or pending, blind spot, escalated (art. 20)."""
    wid = request.match_info["id"]
    store = request.app[STORE]
    stored = await store.get_warning(wid)
    if stored is None:
        raise NotFound(f"no warning {wid}")
    rows = await store.coverage_for(wid)
    deadline = request.app[TRACKER].deadline(stored)
    return read_response(coverage_report(stored, rows, request.app[REGISTRY], deadline))
