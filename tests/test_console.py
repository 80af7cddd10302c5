"""The console's session handling, CSRF and data routes (design.md "Operator console")."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie

import pytest

from gateway.console import SESSIONS, SIGN_IN_LIMIT
from gateway.console.sessions import ABSOLUTE, COOKIE, IDLE, SessionBook
from gateway.console.sign_in_limit import MAX_FAILURES, WINDOW, MemorySignInLimit
from gateway.drill.samples import red_rainstorm_wanzhou
from tests.conftest import GatewayClient
from tests.console_helpers import sign_in
from tests.fanout import SAMPLE_BLIND_SPOTS, post_warning, settled
from tests.helpers import TOKENS, auth, warning_body

BLIND = SAMPLE_BLIND_SPOTS[0]


def data_routes(wid: str) -> list[tuple[str, str]]:
    return [
        ("GET", "/console/fragments/warnings"),
        ("GET", f"/console/fragments/warnings/{wid}"),
        ("GET", "/console/events"),
        ("GET", f"/console/warnings/{wid}"),
        ("GET", f"/console/warnings/{wid}/filing"),
        ("POST", f"/console/warnings/{wid}/confirmations"),
    ]


async def assert_no_data(api: GatewayClient, wid: str, title: str, headers: dict[str, str]) -> None:
    """Every data route refuses (401) or sends to the sign-in form (303), showing nothing."""
    for method, path in data_routes(wid):
        resp = await api.request(method, path, headers=headers, allow_redirects=False)
        text = await resp.text()
        assert resp.status in (401, 303), (path, resp.status)
        if resp.status == 303:
            assert resp.headers["Location"] == "/console"
        assert title not in text
        assert wid not in text
    page = await (await api.get("/console", headers=headers)).text()
    assert 'name="token"' in page
    assert 'type="password"' in page
    assert title not in page


async def test_without_a_session_no_warning_data(api: GatewayClient) -> None:
    body = warning_body()
    await post_warning(api, body)
    await assert_no_data(api, body["id"], body["title"], {})
    await assert_no_data(api, body["id"], body["title"], {"Cookie": f"{COOKIE}=forged-session"})


async def test_sign_in_sets_a_strict_httponly_cookie_and_shows_the_list(
    api: GatewayClient,
) -> None:
    body = warning_body()
    await post_warning(api, body)
    resp = await api.post(
        "/console/sign-in", data={"token": TOKENS["reader"]}, allow_redirects=False
    )
    assert resp.status == 303
    assert resp.headers["Location"] == "/console"
    morsel = SimpleCookie(resp.headers["Set-Cookie"])[COOKIE]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/console"
    assert 0 < int(morsel["max-age"]) <= ABSOLUTE.total_seconds()
    assert TOKENS["reader"] not in morsel.value
    assert len(morsel.value) >= 40
    api.session.cookie_jar.clear()
    page = await api.get("/console", headers={"Cookie": f"{COOKIE}={morsel.value}"})
    text = await page.text()
    assert body["title"] in text
    assert "Content-Security-Policy" in page.headers


@pytest.mark.sqlite_only  # the in-memory session book (Redis sessions: test_console_redis.py)
@pytest.mark.parametrize(
    ("token", "status", "message"),
    [
        pytest.param("not-a-token", 401, "令牌无效", id="wrong-token"),
        pytest.param("", 401, "令牌无效", id="empty"),
        pytest.param(TOKENS["sms-provider"], 403, "没有查看（read）权限", id="no-read-scope"),
        pytest.param(TOKENS["reader"] + "x", 401, "令牌无效", id="token-prefix"),
    ],
)
async def test_a_bad_token_gets_a_message_and_no_session(
    api: GatewayClient, token: str, status: int, message: str
) -> None:
    resp = await api.post("/console/sign-in", data={"token": token}, allow_redirects=False)
    assert resp.status == status
    assert message in await resp.text()
    assert "Set-Cookie" not in resp.headers
    book = api.app[SESSIONS]
    assert isinstance(book, SessionBook)
    assert len(book) == 0


@pytest.mark.sqlite_only  # the in-memory limit (the shared one: test_console_redis.py)
async def test_failed_sign_ins_from_one_address_are_refused_for_a_while(
    api: GatewayClient,
) -> None:
    now = [datetime(2026, 7, 1, 8, tzinfo=UTC)]
    limit = api.app[SIGN_IN_LIMIT]
    assert isinstance(limit, MemorySignInLimit)
    limit.clock = lambda: now[0]
    guesser = {"X-Forwarded-For": "203.0.113.7"}  # as the proxy in front appends it
    for i in range(MAX_FAILURES):
        wrong = await api.post("/console/sign-in", data={"token": f"guess-{i}"}, headers=guesser)
        assert wrong.status == 401
    right = {"token": TOKENS["reader"]}

    async def status(forwarded_for: str) -> int:
        resp = await api.post(
            "/console/sign-in",
            data=right,
            headers={"X-Forwarded-For": forwarded_for},
            allow_redirects=False,
        )
        if resp.status == 429:
            assert resp.headers["Retry-After"] == str(int(WINDOW.total_seconds()))
            assert "登录失败次数过多" in await resp.text()
            assert "Set-Cookie" not in resp.headers
        return resp.status

    assert await status("203.0.113.7") == 429  # the right token too: no guessing on
    assert await status("198.51.100.1, 203.0.113.7") == 429  # the proxy's hop counts
    assert await status("203.0.113.7, 198.51.100.2") == 303  # the duty room is not locked out
    now[0] += WINDOW
    assert await status("203.0.113.7") == 303


async def test_session_ends_after_idle_time_and_absolute_time(api: GatewayClient) -> None:
    now = [datetime(2026, 7, 1, 8, tzinfo=UTC)]
    api.app[SESSIONS].clock = lambda: now[0]
    body = warning_body()
    await post_warning(api, body)
    fragment = "/console/fragments/warnings"

    headers, _ = await sign_in(api)
    now[0] += IDLE - timedelta(seconds=1)
    assert (await api.get(fragment, headers=headers)).status == 200
    now[0] += timedelta(hours=3)  # past IDLE since sign-in, not since the last use
    assert (await api.get(fragment, headers=headers)).status == 200

    headers, _ = await sign_in(api)
    now[0] += IDLE
    await assert_no_data(api, body["id"], body["title"], headers)

    headers, _ = await sign_in(api)
    started = now[0]
    while now[0] - started < ABSOLUTE - timedelta(hours=1):
        now[0] += timedelta(hours=1)
        assert (await api.get(fragment, headers=headers)).status == 200
    now[0] = started + ABSOLUTE
    assert (await api.get(fragment, headers=headers)).status == 401


async def test_sign_out_ends_the_session(api: GatewayClient) -> None:
    body = warning_body()
    await post_warning(api, body)
    headers, csrf = await sign_in(api)
    refused = await api.post("/console/sign-out", headers=headers, allow_redirects=False)
    assert refused.status == 403  # no CSRF token: the session stays
    assert (await api.get("/console/fragments/warnings", headers=headers)).status == 200
    resp = await api.post(
        "/console/sign-out", data={"csrf": csrf}, headers=headers, allow_redirects=False
    )
    assert resp.status == 303
    assert SimpleCookie(resp.headers["Set-Cookie"])[COOKIE].value == ""
    await assert_no_data(api, body["id"], body["title"], headers)


async def coverage_of(api: GatewayClient, wid: str, township: str) -> dict[str, object]:
    doc = await (await api.get(f"/v1/warnings/{wid}/coverage", headers=auth())).json()
    found: dict[str, object] = next(t for t in doc["townships"] if t["township"] == township)
    return found


def confirmation(csrf: str | None) -> dict[str, str]:
    at = (datetime.now(UTC) + timedelta(hours=8)).strftime("%Y-%m-%dT%H:%M:%S")
    form = {"township": BLIND, "means": "敲门入户", "by": "张三", "at": at}
    if csrf is not None:
        form["csrf"] = csrf
    return form


@pytest.mark.parametrize(
    "csrf", [pytest.param(None, id="missing"), pytest.param("wrong-token", id="wrong")]
)
async def test_a_confirmation_without_the_sessions_csrf_token_is_refused(
    api: GatewayClient, csrf: str | None
) -> None:
    wid = "console-csrf-1"
    await post_warning(api, red_rainstorm_wanzhou(datetime.now(UTC), wid))
    headers, right = await sign_in(api, "platform")
    path = f"/console/warnings/{wid}/confirmations"
    resp = await api.post(path, data=confirmation(csrf), headers=headers, allow_redirects=False)
    assert resp.status == 403
    assert (await resp.json())["code"] == "csrf_failed"
    assert (await coverage_of(api, wid, BLIND))["status"] == "pending"
    _, other = await sign_in(api, "platform")  # another session's token does not do either
    resp = await api.post(path, data=confirmation(other), headers=headers, allow_redirects=False)
    assert resp.status == 403
    resp = await api.post(path, data=confirmation(right), headers=headers, allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"].endswith("?notice=recorded")
    township = await coverage_of(api, wid, BLIND)
    assert township["status"] == "covered"
    assert township["covered_by"] == {
        "means": "敲门入户",
        "by": "张三",
        "reported_at": township["covered_by"]["reported_at"],  # type: ignore[index]
    }


async def test_a_read_only_session_cannot_confirm(api: GatewayClient) -> None:
    wid = "console-readonly-1"
    await post_warning(api, red_rainstorm_wanzhou(datetime.now(UTC), wid))
    headers, csrf = await sign_in(api, "reader")
    page = await (await api.get(f"/console/warnings/{wid}", headers=headers)).text()
    assert "记录人工确认" not in page
    resp = await api.post(
        f"/console/warnings/{wid}/confirmations",
        data=confirmation(csrf),
        headers=headers,
        allow_redirects=False,
    )
    assert resp.status == 403
    assert (await resp.json())["code"] == "scope_required"


async def test_warning_page_shows_blind_spots_escalations_and_masked_data(
    api: GatewayClient,
) -> None:
    wid = "console-page-1"
    body = red_rainstorm_wanzhou(datetime.now(UTC), wid)
    body["area"]["description"] = "万州区全境（值班 13800001234）"
    await post_warning(api, body)
    await settled(api, wid, allow_sent=True)
    headers, _ = await sign_in(api)
    text = await (await api.get(f"/console/fragments/warnings/{wid}", headers=headers)).text()
    for code in SAMPLE_BLIND_SPOTS:
        assert f'data-township="{code}" data-state="escalated"' in text
    assert "万州区气象局" in text
    assert "备案表打印视图" in text
    filing = await api.get(f"/console/warnings/{wid}/filing", headers=headers)
    assert filing.status == 200
    assert "重庆市突发事件预警信息发布备案表" in await filing.text()
    assert "13800001234" not in text
    assert "138****1234" in text
    listed = await (await api.get("/console/fragments/warnings", headers=headers)).text()
    assert "13800001234" not in listed
    assert "138****1234" in listed


async def test_events_name_the_changed_warning(api: GatewayClient) -> None:
    headers, _ = await sign_in(api)
    body = warning_body()
    async with api.get("/console/events", headers=headers) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        await post_warning(api, body)

        async def named() -> None:
            async for line in stream.content:
                if line.startswith(b"data:") and body["id"] in json.loads(line[5:])["warnings"]:
                    return

        await asyncio.wait_for(named(), 1.0)


async def test_metrics_count_outcomes_and_coverage(api: GatewayClient) -> None:
    body = warning_body()
    await post_warning(api, body)
    await settled(api, body["id"], allow_sent=True)
    text = await (await api.get("/metrics", headers=auth("reader"))).text()
    assert 'gateway_deliveries_total{channel="sms",state="delivered"} 11.0' in text
    assert 'gateway_delivery_seconds_count{channel="sms"} 11.0' in text
    assert 'gateway_coverage_share{level="3"} 1.0' in text
    assert 'gateway_queue_depth{channel="sms"} 0.0' in text
