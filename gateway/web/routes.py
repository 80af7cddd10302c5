"""HTTP routes of design.md's contract (aiohttp web layer).

Errors are JSON `{code, message, errors?}`. Every route but /healthz and /openapi.json needs a
client's bearer token and the route's scope (`requires`); reads mask personal data (`masking`).
"""

from __future__ import annotations

from aiohttp import web

from gateway.web.receipts import get_receipts, post_receipt
from gateway.web.reports import add_report_routes
from gateway.web.service import healthz, metrics, openapi
from gateway.web.warnings import get_coverage, get_deliveries, get_warning, post_warning


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
