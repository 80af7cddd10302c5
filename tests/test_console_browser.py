"""The console in a real browser (Debian's chromium, driven by Playwright): sign in, live list
and page, blind spots and escalations, a manual confirmation, the reconnect banner; no request
leaves loopback. Screenshots go to each test's tmp_path, the README's to docs/."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, async_playwright, expect

from gateway.channels.base import Channel, Message, Outcome
from gateway.config import Settings
from gateway.console import HUB
from gateway.drill.samples import red_rainstorm_wanzhou
from tests.conftest import GatewayClient, MakeClient
from tests.fanout import SAMPLE_BLIND_SPOTS, post_warning
from tests.helpers import TOKENS, auth

pytestmark = pytest.mark.slow  # a real Chromium: `-m "not slow"` skips these

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS = Path(__file__).resolve().parent.parent / "docs"
LIVE_S = 1.0
"""design.md: the list and the page follow a change within a second."""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Chromium, or an error: a console test never skips for want of a browser."""
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


class Loopback:
    """Records every request the browser makes and refuses any that would leave loopback."""

    def __init__(self) -> None:
        self.hosts: set[str] = set()
        self.refused: list[str] = []

    async def attach(self, context: BrowserContext) -> None:
        context.on("request", lambda request: self.hosts.add(urlsplit(request.url).hostname or ""))
        await context.route(re.compile(r"^(?!http://127\.0\.0\.1:\d+/)"), self._refuse)

    async def _refuse(self, route: Route) -> None:
        self.refused.append(route.request.url)
        await route.abort()

    def check(self) -> None:
        assert self.refused == []
        assert self.hosts == {"127.0.0.1"}


async def open_console(
    browser: Browser, api: GatewayClient, who: str = "platform", *, width: int = 1366
) -> tuple[Page, Loopback]:
    context = await browser.new_context(
        viewport={"width": width, "height": 768 if width == 1366 else 1080},
        locale="zh-CN",
        timezone_id="Asia/Shanghai",
    )
    loopback = Loopback()
    await loopback.attach(context)
    page = await context.new_page()
    await page.goto(str(api.make_url("/console")))
    await page.get_by_label("令牌").fill(TOKENS[who])
    await page.get_by_role("button", name="登录").click()
    await expect(page.get_by_role("heading", name="预警列表")).to_be_visible()
    await page.evaluate("window.stillTheSamePage = true")
    return page, loopback


async def same_page(page: Page) -> None:
    """The page was updated in place, never reloaded."""
    assert await page.evaluate("window.stillTheSamePage === true")


def no_horizontal_scroll(page: Page) -> str:
    return "document.documentElement.scrollWidth <= window.innerWidth"


async def test_sign_in_live_list_warning_page_and_manual_confirmation(
    browser: Browser, api: GatewayClient, tmp_path: Path
) -> None:
    page, loopback = await open_console(browser, api)
    await page.screenshot(path=tmp_path / "list-empty.png")
    wid = "browser-red-1"
    body = red_rainstorm_wanzhou(datetime.now(UTC), wid)
    await post_warning(api, body)
    link = page.locator("#live").get_by_role("link", name=body["title"])
    await expect(link).to_be_visible(timeout=LIVE_S * 1000)
    await same_page(page)
    row = page.locator(f'tr[data-warning="{wid}"]')
    await expect(row.locator(".lvl-1")).to_have_text("红色")
    await expect(row.locator(".state-active")).to_have_text("生效中")
    assert await page.evaluate(no_horizontal_scroll(page))
    await page.screenshot(path=tmp_path / "list.png", full_page=True)

    await link.click()
    await expect(page.get_by_role("heading", name="乡镇（街道）覆盖")).to_be_visible()
    await page.evaluate("window.stillTheSamePage = true")
    for code in SAMPLE_BLIND_SPOTS:
        cell = page.locator(f'li[data-township="{code}"]')
        await expect(cell).to_have_attribute("data-state", "escalated")
        await expect(cell.locator(".ts")).to_have_text("已上报 · 盲区")
    await expect(page.locator('li[data-state="pending"], li[data-state="covered"]')).to_have_count(
        49
    )
    assert await page.evaluate(no_horizontal_scroll(page))
    await page.screenshot(path=tmp_path / "warning.png", full_page=True)
    if os.environ.get("GATEWAY_UPDATE_SCREENSHOTS"):  # the README's picture, refreshed on demand
        DOCS.mkdir(exist_ok=True)
        await page.screenshot(path=DOCS / "console-warning.png", full_page=True)

    # A confirmation from elsewhere (the platform's API) shows without a reload.
    first, second = SAMPLE_BLIND_SPOTS[0], SAMPLE_BLIND_SPOTS[1]
    receipt = {
        "warning_id": wid,
        "township": second,
        "means": "鸣锣",
        "by": "王五",
        "at": datetime.now(UTC).isoformat(),
    }
    assert (await api.post("/v1/receipts", json=receipt, headers=auth())).status == 202
    cell = page.locator(f'li[data-township="{second}"]')
    await expect(cell).to_have_attribute("data-state", "covered", timeout=LIVE_S * 1000)
    await expect(cell.locator(".tw")).to_contain_text("鸣锣（王五）")
    await same_page(page)

    # The form: a confirm session records one for the first blind spot.
    await page.get_by_label("乡镇（街道）", exact=True).select_option(first)
    await page.get_by_label("方式", exact=True).select_option("敲门入户")
    await page.get_by_label("确认人").fill("李四")
    await page.get_by_role("button", name="记录人工确认").click()
    await expect(page.get_by_role("status").filter(has_text="人工确认已记录")).to_be_visible()
    cell = page.locator(f'li[data-township="{first}"]')
    await expect(cell).to_have_attribute("data-state", "covered")
    await expect(cell.locator(".tw")).to_contain_text("敲门入户（李四）")
    await page.screenshot(path=tmp_path / "warning-confirmed.png", full_page=True)

    filing = await page.context.new_page()
    await filing.goto(str(api.make_url(f"/console/warnings/{wid}/filing")))
    await expect(filing.get_by_text("重庆市突发事件预警信息发布备案表").first).to_be_visible()
    await filing.screenshot(path=tmp_path / "filing.png", full_page=True)
    loopback.check()


class SlowSms(Channel):
    """SMS that takes its time, a few at once: a fan-out the list can be watched through."""

    name: ClassVar[str] = "sms"
    DELAY_S = 0.15

    def __init__(self) -> None:
        self._slots = asyncio.Semaphore(4)

    async def send(self, message: Message) -> Outcome:
        async with self._slots:
            await asyncio.sleep(self.DELAY_S)
        return Outcome(delivered=True)


async def test_the_list_follows_a_fan_out_as_it_runs(
    browser: Browser, settings: Settings, make_client: MakeClient, tmp_path: Path
) -> None:
    api = await make_client(settings, channels={"sms": SlowSms()})
    page, loopback = await open_console(browser, api, "reader", width=1920)
    wid = "browser-fanout-1"
    await post_warning(api, red_rainstorm_wanzhou(datetime.now(UTC), wid))
    bar = page.locator(f'tr[data-warning="{wid}"] [data-channel="sms"] progress')
    await expect(bar).to_be_visible(timeout=LIVE_S * 1000)
    planned = int(await bar.get_attribute("max") or 0)
    seen: list[int] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not seen or seen[-1] < planned:
        assert loop.time() < deadline, seen
        value = int(await bar.get_attribute("value") or 0)
        if not seen or value != seen[-1]:
            seen.append(value)
        await asyncio.sleep(0.05)
    assert planned == 49
    assert len([v for v in seen if 0 < v < planned]) >= 3, seen  # steps shown, not just the end
    await same_page(page)
    assert await page.evaluate(no_horizontal_scroll(page))
    await page.screenshot(path=tmp_path / "list-1920.png", full_page=True)
    loopback.check()


async def test_a_lost_connection_shows_and_recovers(
    browser: Browser, api: GatewayClient, tmp_path: Path
) -> None:
    page, loopback = await open_console(browser, api, "reader")
    banner = page.get_by_text("连接已断开，正在重连…")
    await expect(banner).to_be_hidden()
    api.app[HUB].close()  # every open event stream ends, as when a connection drops
    await expect(banner).to_be_visible()
    await page.screenshot(path=tmp_path / "reconnecting.png")
    await expect(banner).to_be_hidden(timeout=10_000)
    body = red_rainstorm_wanzhou(datetime.now(UTC), "browser-after-reconnect")
    await post_warning(api, body)
    await expect(page.get_by_role("link", name=body["title"])).to_be_visible(timeout=LIVE_S * 1000)
    await same_page(page)
    loopback.check()
