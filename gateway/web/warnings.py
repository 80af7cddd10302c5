"""HTTP routes of design.md's contract (aiohttp web layer).

Errors are JSON `{code, message, errors?}`. Every route but /healthz and /openapi.json needs a
client's bearer token and the route's scope (`requires`); reads mask personal data (`masking`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from importlib import resources
from typing import Any

from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.cap.profile import DEFAULT_CAP_SENDER
from gateway.cap.read import cap_to_document
from gateway.cap.write import document_to_cap
from gateway.clients import Scope
from gateway.config import DEFAULT_BODY_TIMEOUT_S
from gateway.coverage import coverage_report
from gateway.exceptions import (
    BodyTimeout,
    ClientGone,
    InvalidWarning,
    NotFound,
    PayloadTooLarge,
    RequestError,
    StoreUnavailable,
    UnsupportedMedia,
)
from gateway.ingest import utc_now
from gateway.ledger import LedgerEntry
from gateway.masking import mask
from gateway.receipts import ManualConfirmation, parse_receipt
from gateway.release_list import ReleaseList
from gateway.store.base import DeliveryRecord, StoredWarning
from gateway.web.guard import AUTH, CLIENT, json_response, read_response, requires
from gateway.web.keys import (
    BODY_TIMEOUT,
    DISPATCHER,
    INGEST,
    MAX_BODY,
    METRICS,
    PUBLIC_METRICS,
    QUEUE_PING,
    RECEIPTS,
    REGISTRY,
    RELEASE_LIST,
    STORE,
    TRACKER,
)
from gateway.web.reports import add_report_routes

log = logging.getLogger("gateway.api")

MAX_RECEIPT_BODY = 16 * 1024

JSON_TYPES = {"application/json", "text/json"}
CAP_TYPE = "application/cap+xml"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as a JSON body; nothing internal leaks to the client. An HTTP
    exception's headers (Allow of a 405, Retry-After) are kept; a body timeout closes the
    connection; a client that left gets no answer."""
    try:
        return await handler(request)
    except BodyTimeout as exc:
        return await _answer_and_close(request, json_response(exc.body(), exc.status))
    except RequestError as exc:
        response = json_response(exc.body(), exc.status)
        response.headers.update(exc.headers())
        return response
    except ClientGone:
        return web.Response(status=400)  # unsendable: aiohttp drops it quietly
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        resp = json_response({"code": code, "message": exc.reason}, exc.status)
        resp.headers.extend((k, v) for k, v in exc.headers.items() if k not in _BODY_HEADERS)
        return resp
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response({"code": "internal_error", "message": "internal error"}, 500)


_BODY_HEADERS = frozenset({hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH})


async def _answer_and_close(request: web.Request, resp: web.Response) -> web.Response:
    """Send `resp`, then close the connection at once: the rest of a stalled body is not
    waited for (aiohttp would linger reading it)."""
    resp.force_close()
    await resp.prepare(request)
    await resp.write_eof()
    request.protocol.force_close()
    return resp


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, or PayloadTooLarge past `limit` bytes (declared or actual).

    Also UnsupportedMedia (`unsupported_encoding`) for a Content-Encoding other than identity,
    BodyTimeout when the body has not arrived within the app's BODY_TIMEOUT, InvalidWarning for
    a body aiohttp cannot frame, ClientGone (logged in one line) when the client left mid-body.
    """
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMedia(
            f"Content-Encoding {encoding} is not accepted; send the body unencoded (identity)",
            code="unsupported_encoding",
        )
    too_large = PayloadTooLarge(f"the body is larger than {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    timeout = request.app.get(BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT_S)
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError as exc:
        raise BodyTimeout(f"the body did not arrive within {timeout:g} s") from exc
    except (ConnectionError, web.RequestPayloadError) as exc:
        if request.transport is None or request.transport.is_closing():
            log.info(
                "%s %s: client %s left after %d body bytes: %s",
                request.method,
                request.path,
                request.remote,
                size,
                exc,
            )
            raise ClientGone(str(exc)) from exc
        raise InvalidWarning(f"the body cannot be read: {exc}", code="malformed_body") from exc
    return b"".join(chunks)


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
        status, answer = await app[INGEST].submit(raw, client)
    except RequestError as exc:
        metrics.warnings.labels(exc.code if exc.status != 403 else "refused").inc()
        raise
    finally:
        metrics.ingest_seconds.observe(time.perf_counter() - started)
    return json_response(answer, status)


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
    if stored.state == "active" and now >= stored.expires_at:
        return "expired"
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


@requires(None)
async def post_receipt(request: web.Request) -> web.Response:
    """A receipt from its source only (design.md "Trust"); the scope depends on its kind."""
    app = request.app
    client = request[CLIENT]
    raw = await read_body(request, MAX_RECEIPT_BODY)
    receipt = parse_receipt(raw, utc_now())
    if isinstance(receipt, ManualConfirmation):
        data = await app[RECEIPTS].manual(receipt, app[REGISTRY], client)
        log.info("manual confirmation for %s by client %s", receipt.warning_id, client.name)
        return json_response({"status": "recorded", **mask(data)}, 202)
    outcome = await app[RECEIPTS].report(receipt, client)
    return json_response(outcome.answer(), 202)


@requires(Scope.READ)
async def get_receipts(request: web.Request) -> web.Response:
    wid = request.match_info["id"]
    entries = await request.app[STORE].entries_for(wid)
    if not entries:
        raise NotFound(f"no ledger entries for {wid}")
    return read_response(receipts_timeline(wid, entries))


def receipts_timeline(wid: str, entries: Sequence[LedgerEntry]) -> dict[str, Any]:
    """The GET /v1/warnings/{id}/receipts answer (unmasked): each entry with the milliseconds
    since the first, and when each stage was first reached; `entries` is not empty."""
    start = datetime.fromisoformat(entries[0].at)
    out: list[dict[str, Any]] = []
    for e in entries:
        item = e.as_json()
        item["elapsed_ms"] = round((datetime.fromisoformat(e.at) - start).total_seconds() * 1000, 3)
        out.append(item)
    stages: dict[str, float] = {}
    for item in out:
        stages.setdefault(item["stage"], item["elapsed_ms"])
    return {"warning_id": wid, "entries": out, "stage_elapsed_ms": stages}


async def healthz(request: web.Request) -> web.Response:
    """200 while the store reads and writes (a probe write each time); 503 otherwise. With
    several gateways it also says whether Redis answers (`redis`): without it a gateway still
    accepts warnings durably (queued once Redis is back), so it stays 200."""
    try:
        await request.app[STORE].ping()
    except Exception as exc:
        log.warning("health check: store unavailable: %s", exc)
        response = json_response({"status": "unavailable", "store": "down"}, 503)
        response.headers["Retry-After"] = str(StoreUnavailable.retry_after)
        return response
    answer = {"status": "ok", "store": "ok"}
    queue_ping = request.app.get(QUEUE_PING)
    if queue_ping is not None:
        try:
            await asyncio.wait_for(queue_ping(), 2)
            answer["redis"] = "ok"
        except Exception as exc:
            log.warning("health check: Redis unavailable: %s", exc)
            answer["redis"] = "down"
    return json_response(answer)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; behind `read` unless gateway.yaml has `metrics.public: true`."""
    if not request.app[PUBLIC_METRICS]:
        client = request.app[AUTH].authenticate(request.headers.get("Authorization"))
        client.require(Scope.READ)
    await refresh_metrics(request.app)
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def refresh_metrics(app: web.Application) -> None:
    """The gauges read at scrape time: coverage share of the active warnings, queue depths."""
    store, now = app[STORE], utc_now()
    coverage = []
    for w in await store.active_warnings():
        if w.expires_at > now:
            rows = await store.coverage_for(w.id)
            covered = sum(r.covered_at is not None for r in rows)
            coverage.append((int(w.warning["level"]), len(rows), covered))
    app[METRICS].refresh(coverage, app[DISPATCHER].queued())


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document shipped in the package (gateway/web/openapi.json)."""
    text = resources.files("gateway.web").joinpath("openapi.json").read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/warnings", post_warning)
    app.router.add_get("/v1/warnings/{id}", get_warning)
    app.router.add_get("/v1/warnings/{id}/receipts", get_receipts)
    app.router.add_get("/v1/warnings/{id}/deliveries", get_deliveries)
    app.router.add_get("/v1/warnings/{id}/coverage", get_coverage)
    app.router.add_post("/v1/receipts", post_receipt)
    add_report_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
