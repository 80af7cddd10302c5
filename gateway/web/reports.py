"""Operators' reports: the annex-2 备案表 of a warning and the art. 17/27 statistics.

GET /v1/warnings/{id}/filing  the annex-2 form as JSON; as a printable HTML page when the
                              client prefers text/html (Accept); 404 for an unknown id.
GET /v1/stats                 art. 17 (环节计时) and art. 27 (效能评估) figures for warnings
                              received in [from, to), optionally only those touching `district`.

`add_report_routes(app)` adds both; it is called from `gateway.web.routes.add_routes`. The
AppKeys both modules read are in `gateway.web.keys`.
"""

from __future__ import annotations

from aiohttp import web

from gateway.clients import Scope
from gateway.exceptions import NotFound
from gateway.masking import mask
from gateway.reports.filing import filing_form, filing_html
from gateway.reports.stats_answer import load_report
from gateway.reports.stats_query import parse_query
from gateway.web.guard import read_response, requires
from gateway.web.keys import CLOCK, REGISTRY, STORE

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


@requires(Scope.READ)
async def get_filing(request: web.Request) -> web.StreamResponse:
    wid = request.match_info["id"]
    store = request.app[STORE]
    stored = await store.get_warning(wid)
    if stored is None:
        raise NotFound(f"no warning {wid}")
    now = request.app[CLOCK]()
    form = mask(filing_form(stored, await store.deliveries_for(wid), now=now))
    if prefers_html(request.headers.get("Accept")):
        response = web.Response(text=filing_html(form), content_type=HTML, charset="utf-8")
    else:
        response = read_response(form)
    response.headers["Vary"] = "Accept"
    return response


@requires(Scope.READ)
async def get_stats(request: web.Request) -> web.StreamResponse:
    registry = request.app[REGISTRY]
    query = parse_query(request.query, request.app[CLOCK](), registry)
    return read_response(await load_report(request.app[STORE], query, registry))


def add_report_routes(app: web.Application) -> None:
    """Add GET /v1/warnings/{id}/filing and GET /v1/stats."""
    app.router.add_get("/v1/warnings/{id}/filing", get_filing)
    app.router.add_get("/v1/stats", get_stats)
