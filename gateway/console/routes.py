"""The console's routes (design.md "Operator console (GET /console)").

GET  /console                          the sign-in form, or (signed in) the warnings list
POST /console/sign-in                  form `token`: a `read` client's token opens a session
                                       (303 to /console, cookie set); a wrong token 401, a
                                       token without `read` 403, both with the form again;
                                       429 (Retry-After) after too many wrong tokens from one
                                       address (sign_in_limit.py); 503 when the shared
                                       sessions (Redis) cannot answer
POST /console/sign-out                 form `csrf`: ends the session (303 to /console)
GET  /console/warnings/{id}            a warning's page (303 to /console without a session)
GET  /console/warnings/{id}/filing     the 备案表 print view
POST /console/warnings/{id}/confirmations  form csrf, township, means, by, at (Beijing time):
                                       a manual confirmation by a `confirm` session (303 back)
GET  /console/fragments/warnings       the list's live part (HTML; 401 without a session)
GET  /console/fragments/warnings/{id}  a warning page's live part
GET  /console/events                   Server-Sent Events `change` {warnings: [ids], all}
GET  /console/static/...               CSS and JS, no session needed

Without a live session no route but the sign-in form and the static files shows anything: a
page redirects to the form, the rest answer 401. Forms that write carry the session's CSRF
token; a POST without it, or with another, is 403 `csrf_failed`. While the shared sessions
cannot answer, pages answer 503 (`console_unavailable`) and event streams end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

from aiohttp import web
from aiohttp.web_request import FileField
from aiohttp_sse import sse_response
from multidict import MultiDictProxy
from pydantic import ValidationError

from gateway.clients import Scope
from gateway.console import pages, warning_html
from gateway.console.events import Hub
from gateway.console.sessions import COOKIE, COOKIE_PATH, Session, Sessions
from gateway.console.sign_in_limit import SignInLimit, address_of
from gateway.console.views import Filters, warning_page, warning_rows
from gateway.exceptions import ConsoleUnavailable, Refused, RequestError, Unauthenticated
from gateway.ingest import utc_now
from gateway.masking import mask
from gateway.receipts import ManualConfirmation
from gateway.reports.filing import filing_form, filing_html
from gateway.web.guard import AUTH
from gateway.web.keys import RECEIPTS, REGISTRY, STORE, TRACKER

log = logging.getLogger("gateway.console")

SESSIONS: web.AppKey[Sessions] = web.AppKey("console_sessions", Sessions)
SIGN_IN_LIMIT: web.AppKey[SignInLimit] = web.AppKey("console_sign_in_limit", SignInLimit)
HUB: web.AppKey[Hub] = web.AppKey("console_hub", Hub)
STATIC = Path(__file__).parent / "static"
SSE_COALESCE_S = 0.2
"""A page hears of changes at most this often: a fan-out's commits arrive as one event."""
SSE_PING_S = 15.0
MAX_IDS_PER_EVENT = 200
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
BEIJING = timezone(timedelta(hours=8))


def html(text: str, status: int = 200) -> web.Response:
    response = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def current(request: web.Request) -> Session | None:
    """The request's live session, if any; ConsoleUnavailable (503) when sessions cannot
    answer."""
    return await request.app[SESSIONS].get(request.cookies.get(COOKIE))


async def signed_in(request: web.Request) -> Session:
    """The request's session; Unauthenticated (401) without a live one."""
    session = await current(request)
    if session is None:
        raise Unauthenticated("sign in at /console first", code="session_required")
    return session


async def check_csrf(
    request: web.Request, session: Session
) -> MultiDictProxy[str | bytes | bytearray | FileField]:
    form = await request.post()
    token = form.get("csrf")
    if not session.csrf_ok(token if isinstance(token, str) else None):
        raise Refused("the form's CSRF token is missing or wrong", code="csrf_failed")
    return form


def to_sign_in() -> web.Response:
    return web.Response(status=303, headers={"Location": "/console", "Cache-Control": "no-store"})


def unavailable(exc: ConsoleUnavailable) -> web.Response:
    response = html(pages.sign_in_page("值班台登录服务暂时不可用，请稍后再试。"), exc.status)
    response.headers.update(exc.headers())
    return response


async def index(request: web.Request) -> web.Response:
    try:
        session = await current(request)
    except ConsoleUnavailable as exc:
        return unavailable(exc)
    if session is None:
        return html(pages.sign_in_page())
    filters = Filters.parse(request.query)
    registry = request.app[REGISTRY]
    rows = await warning_rows(request.app[STORE], registry, utc_now(), filters)
    districts = {code: d.name for code, d in sorted(registry.districts.items())}
    return html(pages.list_page(session, filters, districts, pages.list_fragment(rows)))


async def sign_in(request: web.Request) -> web.Response:
    try:
        return await _sign_in(request)
    except ConsoleUnavailable as exc:
        return unavailable(exc)


async def _sign_in(request: web.Request) -> web.Response:
    form = await request.post()
    token = form.get("token")
    limit, address = request.app[SIGN_IN_LIMIT], address_of(request)
    wait = await limit.blocked(address)
    if wait is not None:
        response = html(pages.sign_in_page("登录失败次数过多，请稍后再试。"), 429)
        response.headers["Retry-After"] = str(wait)
        return response
    try:
        if not isinstance(token, str) or not token:
            raise Unauthenticated("no token")
        client = request.app[AUTH].authenticate(f"Bearer {token}")
    except Unauthenticated:
        await limit.failed(address)
        return html(pages.sign_in_page("令牌无效，请检查后重新输入。"), 401)
    if Scope.READ not in client.scopes:
        return html(pages.sign_in_page("该令牌没有查看（read）权限，不能登录值班台。"), 403)
    book = request.app[SESSIONS]
    session = await book.open(client)
    log.info("console: client %s signed in", client.name)
    response = to_sign_in()
    response.set_cookie(
        COOKIE,
        session.id,
        path=COOKIE_PATH,
        max_age=book.max_age(session),
        httponly=True,
        samesite="Strict",
        secure=request.secure or request.headers.get("X-Forwarded-Proto") == "https",
    )
    return response


async def sign_out(request: web.Request) -> web.Response:
    session = await current(request)
    if session is not None:
        await check_csrf(request, session)
        await request.app[SESSIONS].close(session.id)
    response = to_sign_in()
    response.del_cookie(COOKIE, path=COOKIE_PATH)
    return response


async def list_fragment(request: web.Request) -> web.Response:
    await signed_in(request)
    rows = await warning_rows(
        request.app[STORE], request.app[REGISTRY], utc_now(), Filters.parse(request.query)
    )
    return html(pages.list_fragment(rows))


async def _page_data(request: web.Request) -> dict[str, object] | None:
    app = request.app
    stored = await app[STORE].get_warning(request.match_info["id"])
    if stored is None:
        return None
    deadline = app[TRACKER].deadline(stored)
    return await warning_page(app[STORE], app[REGISTRY], stored, deadline, utc_now())


async def warning(request: web.Request) -> web.Response:
    session = await current(request)
    if session is None:
        return to_sign_in()
    data = await _page_data(request)
    if data is None:
        return html(pages.message_page("未找到", "没有这条预警。", session), 404)
    form = warning_html.confirm_form(data, session, utc_now(), request.query.get("notice"))
    fragment = warning_html.warning_fragment(data)
    return html(warning_html.warning_document(data, session, fragment, form))


async def warning_fragment(request: web.Request) -> web.Response:
    await signed_in(request)
    data = await _page_data(request)
    if data is None:
        return html(pages.message_page("未找到", "没有这条预警。"), 404)
    return html(warning_html.warning_fragment(data))


async def filing(request: web.Request) -> web.Response:
    session = await current(request)
    if session is None:
        return to_sign_in()
    store = request.app[STORE]
    stored = await store.get_warning(request.match_info["id"])
    if stored is None:
        return html(pages.message_page("未找到", "没有这条预警。", session), 404)
    form = mask(filing_form(stored, await store.deliveries_for(stored.id)))
    response = web.Response(text=filing_html(form), content_type="text/html", charset="utf-8")
    response.headers["Cache-Control"] = "no-store"
    return response


async def confirm(request: web.Request) -> web.Response:
    """A manual confirmation from the form, through the API's own checks (ReceiptDesk)."""
    session = await signed_in(request)
    form = await check_csrf(request, session)
    session.client.require(Scope.CONFIRM)
    wid = request.match_info["id"]
    try:
        local = datetime.fromisoformat(str(form.get("at", "")))
        at = local.replace(tzinfo=BEIJING) if local.tzinfo is None else local
        c = ManualConfirmation(
            warning_id=wid,
            township=str(form.get("township", "")),
            means=str(form.get("means", "")),
            by=str(form.get("by", "")).strip(),
            at=at,
        )
    except (ValueError, ValidationError):
        return html(
            pages.message_page("无法记录", "请填写乡镇、方式、确认人和时间。", session), 400
        )
    try:
        data = await request.app[RECEIPTS].manual(c, request.app[REGISTRY], session.client)
    except RequestError as exc:
        status = exc.status
        return html(pages.message_page("无法记录", exc.message, session), status)
    log.info("console: manual confirmation for %s by client %s", wid, session.client.name)
    notice = "duplicate" if data.get("duplicate") else "recorded"
    location = f"{pages.warning_href(wid)}?notice={notice}"
    return web.Response(status=303, headers={"Location": location})


async def events(request: web.Request) -> web.StreamResponse:
    """Which warnings changed, as they commit, coalesced to one event per SSE_COALESCE_S."""
    session = await signed_in(request)
    book, hub = request.app[SESSIONS], request.app[HUB]
    async with hub.subscribe() as sub, sse_response(request, ping_interval=SSE_PING_S) as resp:
        await resp.send(json.dumps({"warnings": [], "all": True}), event="change")
        closed = asyncio.ensure_future(resp.wait())
        try:
            while True:
                nxt = asyncio.ensure_future(sub.next())
                await asyncio.wait({nxt, closed}, return_when=asyncio.FIRST_COMPLETED)
                if closed.done():
                    nxt.cancel()
                    break
                batch = nxt.result()
                if batch is None or not await still_signed_in(book, session):
                    break
                ids, everything = batch
                everything = everything or len(ids) > MAX_IDS_PER_EVENT
                body = {"warnings": [] if everything else sorted(ids), "all": everything}
                await resp.send(json.dumps(body, ensure_ascii=False), event="change")
                await asyncio.sleep(SSE_COALESCE_S)
        finally:
            closed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await closed
    return resp


async def still_signed_in(book: Sessions, session: Session) -> bool:
    """Whether `session` is live; False too when sessions cannot answer (the page's stream
    ends, and it retries)."""
    try:
        return await book.get(session.id) is not None
    except ConsoleUnavailable:
        return False


async def close_hub(app: web.Application) -> None:
    app[HUB].close()


def add_console_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/console", index)
    r.add_post("/console/sign-in", sign_in)
    r.add_post("/console/sign-out", sign_out)
    r.add_get("/console/warnings/{id}", warning)
    r.add_get("/console/warnings/{id}/filing", filing)
    r.add_post("/console/warnings/{id}/confirmations", confirm)
    r.add_get("/console/fragments/warnings", list_fragment)
    r.add_get("/console/fragments/warnings/{id}", warning_fragment)
    r.add_get("/console/events", events)
    r.add_static("/console/static", STATIC, append_version=False)
    app.on_shutdown.append(close_hub)
