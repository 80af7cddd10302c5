"""The annex-2 备案表 (重庆市突发事件预警信息发布备案表) of a warning: GET /v1/warnings/{id}/filing.

Annex 2 lists 单位名称, 信息标题, 预警信息类别, 预警信息发布时间 (××年××月××日), 预警信息级别,
发布对象, 预警信息传播方式, 预警有效期 (××天××小时), 预警信息发布原因, 预警信息主要内容,
可能产生的社会经济影响 and 备注; the form is filed by the issuing unit (单位（盖章）).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from aiohttp import web
from pytest_aiohttp import AiohttpClient

from gateway.app import build_app
from gateway.config import load_settings
from gateway.drill.samples import red_rainstorm_wanzhou
from gateway.reports.filing import FORM_FIELDS, channels_used, validity
from gateway.store.base import DeliveryRecord
from gateway.web.reports import add_report_routes, prefers_html
from tests.conftest import GatewayClient
from tests.fanout import fanout_config, post_warning, settled
from tests.helpers import auth, token_env, warning_body
from tests.store_switch import settings_for

BEIJING = timezone(timedelta(hours=8))
MACHINE_FIELDS = {"warning_id", "generated_at"}


def has_report_routes(app: web.Application) -> bool:
    return any(getattr(r.resource, "canonical", None) == "/v1/stats" for r in app.router.routes())


async def reports_client(
    aiohttp_client: AiohttpClient, tmp_path: Path, *, temporary_release: bool = False
) -> GatewayClient:
    """The gateway on the fan-out test config (stub SMS only) with the report routes, whether or
    not `gateway.web.routes.add_routes` adds them already (routes must be added before
    startup)."""
    config = fanout_config(tmp_path)
    if temporary_release:  # art. 26: the platform client may release unlisted hazards
        yaml = config / "gateway.yaml"
        text = yaml.read_text(encoding="utf-8")
        yaml.write_text(
            text.replace("platform: {}", "platform: {temporary_release: true}"), encoding="utf-8"
        )
    env = {
        **token_env(),
        "GATEWAY_STORE": f"sqlite:///{tmp_path}/g.db",
    }
    app = build_app(settings_for(load_settings(config, env)))
    if not has_report_routes(app):
        add_report_routes(app)
    return await aiohttp_client(app)


async def filing(api: GatewayClient, warning_id: str) -> dict[str, Any]:
    resp = await api.get(f"/v1/warnings/{warning_id}/filing", headers=auth())
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    form: dict[str, Any] = await resp.json()
    return form


async def test_filing_form_of_the_red_rainstorm_sample_has_every_annex2_field(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    api = await reports_client(aiohttp_client, tmp_path)
    body = red_rainstorm_wanzhou(datetime.now(UTC), "filing-red")
    await post_warning(api, body)
    await settled(api, body["id"])
    form = await filing(api, body["id"])

    # Keys: annex 2's labels exactly, in its order, plus the machine fields.
    assert list(form)[: len(FORM_FIELDS)] == list(FORM_FIELDS)
    assert set(form) == set(FORM_FIELDS) | MACHINE_FIELDS
    sent = datetime.fromisoformat(body["sent_at"]).astimezone(BEIJING)
    assert form["单位名称"] == "万州区气象局"
    assert form["信息标题"] == "万州区气象局发布暴雨红色预警信号"
    assert form["预警信息类别"] == "自然灾害"
    assert form["预警信息发布时间"] == sent.strftime("%Y年%m月%d日 %H:%M:%S")
    assert form["预警信息级别"] == "一级（红色）"
    assert form["发布对象"] == "公众"
    # Only the stub SMS channel runs in this config; annex 2 calls it 短信.
    assert form["预警信息传播方式"] == "短信"
    assert form["预警有效期"] == "0天6小时"
    assert form["预警信息发布原因"] == "强降雨"
    assert form["预警信息主要内容"] == body["content"]
    assert form["可能产生的社会经济影响"] == body["impact"]
    assert "依据预警信息发布清单（附件1）第" in form["备注"]
    assert "审核：万州区气象局值班领导，万气预〔2026〕1号" in form["备注"]
    assert form["warning_id"] == body["id"]
    generated = datetime.fromisoformat(form["generated_at"])
    assert generated.utcoffset() == timedelta(hours=8)
    assert abs(generated - datetime.now(UTC)) < timedelta(minutes=1)


async def test_missing_optional_fields_are_empty_strings_and_art26_release_is_remarked(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    api = await reports_client(aiohttp_client, tmp_path, temporary_release=True)
    # 沙尘暴 is not in annex 1: released temporarily under art. 26, to be filed for the list.
    body = warning_body(hazard="沙尘暴", level=2, audience="responsible_persons")
    await post_warning(api, body)
    form = await filing(api, body["id"])
    assert set(form) == set(FORM_FIELDS) | MACHINE_FIELDS
    assert form["预警信息发布原因"] == ""
    assert form["可能产生的社会经济影响"] == ""
    assert form["预警信息级别"] == "二级（橙色）"
    assert form["发布对象"] == "特定责任人"
    assert "第二十六条临时发布" in form["备注"]
    assert all(isinstance(form[k], str) for k in FORM_FIELDS)


async def test_html_page_is_the_printable_annex2_table(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    api = await reports_client(aiohttp_client, tmp_path)
    body = red_rainstorm_wanzhou(datetime.now(UTC), "filing-html")
    await post_warning(api, body)
    resp = await api.get(
        f"/v1/warnings/{body['id']}/filing", headers={**auth(), "Accept": "text/html"}
    )
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert resp.charset == "utf-8"
    assert "Accept" in resp.headers.get("Vary", "")
    page = await resp.text()
    assert page.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in page
    assert "重庆市突发事件预警信息发布备案表" in page
    assert "万州区气象局发布暴雨红色预警信号" in page
    assert "预警信息发布单位" in page
    assert "单位（盖章）" in page
    assert "@media print" in page
    assert "@page" in page
    assert "<script" not in page
    assert "http" not in page
    for label in FORM_FIELDS:
        assert label in page
    assert "一级（红色）" in page


async def test_browser_accept_gets_html_and_wildcard_gets_json(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    api = await reports_client(aiohttp_client, tmp_path)
    body = warning_body()
    await post_warning(api, body)
    url = f"/v1/warnings/{body['id']}/filing"
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    assert (await api.get(url, headers={**auth(), "Accept": browser})).content_type == "text/html"
    for accept in ("*/*", "application/json", "application/json, text/html;q=0.5"):
        resp = await api.get(url, headers={**auth(), "Accept": accept})
        assert resp.content_type == "application/json", accept


async def test_values_are_html_escaped(tmp_path: Path, aiohttp_client: AiohttpClient) -> None:
    api = await reports_client(aiohttp_client, tmp_path)
    title = '<script>alert("备案")</script> & <b>粗</b>'
    body = warning_body(title=title, reason="<img src=x onerror=alert(1)>")
    await post_warning(api, body)
    form = await filing(api, body["id"])
    assert form["信息标题"] == title  # JSON carries the text as given
    resp = await api.get(
        f"/v1/warnings/{body['id']}/filing", headers={**auth(), "Accept": "text/html"}
    )
    page = await resp.text()
    assert "<script>" not in page
    assert "<img" not in page
    assert "<b>" not in page
    assert (
        "&lt;script&gt;alert(&quot;备案&quot;)&lt;/script&gt; &amp; &lt;b&gt;粗&lt;/b&gt;" in page
    )
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


async def test_filing_of_unknown_warning_is_404(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    api = await reports_client(aiohttp_client, tmp_path)
    for accept in ("application/json", "text/html"):
        resp = await api.get("/v1/warnings/nope/filing", headers={**auth(), "Accept": accept})
        assert resp.status == 404
        answer = await resp.json()
        assert answer["code"] == "not_found"
        assert "nope" in answer["message"]


# -- pure parts ----------------------------------------------------------------------------------


def _delivery(endpoint: str, channel: str, state: str, **kw: Any) -> DeliveryRecord:
    return DeliveryRecord(f"w/{endpoint}", "w", endpoint, channel, 1, state, **kw)


def test_channels_are_named_as_annex2_names_them() -> None:
    deliveries = [
        _delivery("m1", "mqtt", "delivered", detail={"topic": "cq/500101/500101001/display/w"}),
        _delivery("500101001-broadcast", "mqtt", "sent"),
        _delivery("p1", "webhook", "delivered"),
        _delivery("e1", "email", "delivered"),
        _delivery("s1", "sms", "failed"),  # never went out: not a means used
        _delivery("c1", "sms", "delivered", purpose="escalation:500101239"),  # not the warning's
    ]
    assert channels_used(deliveries) == [
        "应急广播",
        "电子显示屏",
        "媒体（网站/微信/微博等）",
        "电子邮件",
    ]
    assert channels_used([]) == []


def test_validity_is_days_and_hours_with_minutes_when_not_whole() -> None:
    assert validity(timedelta(hours=6)) == "0天6小时"
    assert validity(timedelta(days=2, hours=3)) == "2天3小时"
    assert validity(timedelta(hours=1, minutes=30)) == "0天1小时30分钟"
    assert validity(timedelta(minutes=5, seconds=7)) == "0天0小时5分钟7秒"


def test_accept_negotiation_prefers_json_on_ties() -> None:
    assert prefers_html("text/html")
    assert prefers_html("text/*, application/json;q=0.9")
    assert not prefers_html(None)
    assert not prefers_html("")
    assert not prefers_html("*/*")
    assert not prefers_html("text/html;q=0, */*")
    assert not prefers_html("application/json, text/html")
