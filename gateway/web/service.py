"""The routes about the gateway itself rather than a warning: GET /healthz, GET /metrics
(Prometheus) and GET /openapi.json (the document shipped beside this module)."""

from __future__ import annotations

import asyncio
import json
import logging
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.clients import Scope
from gateway.exceptions import StoreUnavailable
from gateway.ingest import utc_now
from gateway.web.guard import AUTH, json_response
from gateway.web.keys import DISPATCHER, METRICS, PUBLIC_METRICS, QUEUE_PING, STORE

log = logging.getLogger("gateway.api")


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
