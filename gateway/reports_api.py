"""Operators' reports: the annex-2 备案表 of a warning and the art. 17/27 statistics.

GET /v1/warnings/{id}/filing  the annex-2 form as JSON; as a printable HTML page when the
                              client prefers text/html (Accept); 404 for an unknown id.
GET /v1/stats                 art. 17 (环节计时) and art. 27 (效能评估) figures for warnings
                              received in [from, to), optionally only those touching `district`.

`add_report_routes(app)` adds both; it is called from `gateway.api.add_routes`. The handlers
import `gateway.api` (its AppKeys, `json_response`) when they run, not at module level, so
`gateway.api` may import this module at its top whichever of the two is imported first.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from gateway.exceptions import NotFound
from gateway.filing import filing_form, filing_html
from gateway.stats_query import parse_query
from gateway.stats_report import load_report

HTML = "text/html"
JSON = "application/json"


def _quality(accept: str, wanted: str) -> float:
    """The q-value `accept` gives `wanted` (`type/subtype`): the most specific range wins."""
    kind = wanted.split("/")[0]
    best: tuple[int, float] = (-1, 0.0)
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        media = media.lower()
        specificity = {wanted: 2, f"{kind}/*": 1, "*/*": 0}.get(media)
        if specificity is None or specificity < best[0]:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 0.0
        best = (specificity, q)
    return best[1]


def prefers_html(accept: str | None) -> bool:
    """Whether the Accept header prefers text/html over JSON; JSON on a tie or no header."""
    if not accept:
        return False
    return _quality(accept, HTML) > _quality(accept, JSON)


async def get_filing(request: web.Request) -> web.Response:
    from gateway.api import STORE, json_response

    wid = request.match_info["id"]
    store = request.app[STORE]
    stored = await store.get_warning(wid)
    if stored is None:
        raise NotFound(f"no warning {wid}")
    form = filing_form(stored, await store.deliveries_for(wid))
    if prefers_html(request.headers.get("Accept")):
        response = web.Response(text=filing_html(form), content_type=HTML, charset="utf-8")
    else:
        response = json_response(form)
    response.headers["Vary"] = "Accept"
    return response


async def get_stats(request: web.Request) -> web.Response:
    from gateway.api import REGISTRY, STORE, json_response

    registry = request.app[REGISTRY]
    query = parse_query(request.query, datetime.now(UTC), registry)
    return json_response(await load_report(request.app[STORE], query, registry))


def add_report_routes(app: web.Application) -> None:
    """Add GET /v1/warnings/{id}/filing and GET /v1/stats."""
    app.router.add_get("/v1/warnings/{id}/filing", get_filing)
    app.router.add_get("/v1/stats", get_stats)


OPENAPI_PATHS: dict[str, object] = {
    "/v1/warnings/{id}/filing": {
        "get": {
            "summary": "The annex-2 备案表 of a warning: JSON with annex 2's labels as keys, "
            "or a printable HTML page with Accept: text/html",
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {
                    "description": "the filing form",
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/html": {"schema": {"type": "string"}},
                    },
                },
                "404": {"$ref": "#/components/responses/Error"},
            },
        }
    },
    "/v1/stats": {
        "get": {
            "summary": "Art. 17/27 figures for warnings received in [from, to): times to first "
            "and last delivery and to full coverage, success rate, retries, failures, "
            "escalations; per warning, per district and per channel",
            "parameters": [
                {
                    "name": "from",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "format": "date-time"},
                    "description": "ISO 8601 with offset; default: seven days before `to`",
                },
                {
                    "name": "to",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "format": "date-time"},
                    "description": "ISO 8601 with offset, exclusive; default: now",
                },
                {
                    "name": "district",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[0-9]{6}$"},
                    "description": "only warnings whose area touches this district",
                },
            ],
            "responses": {
                "200": {"description": "the figures"},
                "400": {"$ref": "#/components/responses/Error"},
            },
        }
    },
}
"""The two routes for gateway/openapi.json (test_openapi keeps that file equal to the routes)."""
