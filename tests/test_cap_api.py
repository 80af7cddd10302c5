"""CAP 1.2 over HTTP: ingest as application/cap+xml, emit with Accept: application/cap+xml
(validated against the OASIS CAP 1.2 XSD), partners configured for CAP."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.cap import DEFAULT_CAP_SENDER, document_to_cap, validate_cap
from gateway.config import load_settings
from tests.conftest import GatewayClient, MakeClient
from tests.fanout import SECRET_NEWS, SECRET_TV, fanout_config, partner_env, settled
from tests.helpers import auth, token_env, warning_body
from tests.webhook_receiver import MakeReceiver

CAP = {"Content-Type": "application/cap+xml"}
DATA = Path(__file__).parent / "data" / "cap"
CST = timezone(timedelta(hours=8))


async def post_cap(api: GatewayClient, xml: bytes) -> tuple[int, dict[str, object]]:
    resp = await api.post("/v1/warnings", data=xml, headers={**auth(), **CAP})
    return resp.status, await resp.json()


async def test_cap_alert_is_accepted_and_emitted_back_valid(api: GatewayClient) -> None:
    body = warning_body(area={"districts": ["500103"], "townships": ["500101001"]})
    body.pop("category")  # CAP carries no gateway category: annex 1 gives it
    xml = document_to_cap({**body, "category": "natural_disaster"}, sender=DEFAULT_CAP_SENDER)
    status, answer = await post_cap(api, xml)
    assert status == 202, answer
    resp = await api.get(f"/v1/warnings/{body['id']}", headers=auth())
    stored = (await resp.json())["warning"]
    assert stored["category"] == "natural_disaster"
    assert (stored["area"]["districts"], stored["area"]["townships"]) == (["500103"], ["500101001"])
    assert stored["level"] == body["level"]
    resp = await api.get(
        f"/v1/warnings/{body['id']}", headers={**auth(), "Accept": "application/cap+xml"}
    )
    assert resp.status == 200
    assert resp.content_type == "application/cap+xml"
    emitted = await resp.read()
    assert validate_cap(emitted) == []
    assert body["id"].encode() in emitted
    # The same CAP again is the same warning: idempotent.
    assert (await post_cap(api, xml))[0] == 200


async def test_cap_without_approval_is_not_approved(api: GatewayClient) -> None:
    body = warning_body()
    del body["approval"]
    xml = document_to_cap(body, sender=DEFAULT_CAP_SENDER)
    status, answer = await post_cap(api, xml)
    assert (status, answer["code"]) == (403, "not_approved")  # art. 15


@pytest.mark.parametrize(
    "name",
    sorted(
        p.name
        for p in DATA.glob("*.xml")
        if p.name.startswith(("bomb", "xxe", "doctype", "hostile"))
    ),
)
async def test_hostile_cap_is_400(api: GatewayClient, name: str) -> None:
    status, answer = await post_cap(api, (DATA / name).read_bytes())
    assert status == 400
    assert answer["code"] == "invalid_cap"


async def test_billion_laughs_and_garbage_are_400(api: GatewayClient) -> None:
    bomb = b"""<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&lol2;</identifier></alert>"""
    for xml in (bomb, b"not xml at all", b"<alert/>"):
        status, answer = await post_cap(api, xml)
        assert status == 400, xml
        assert answer["code"] == "invalid_cap"


async def test_oversize_cap_is_413(api: GatewayClient) -> None:
    status, answer = await post_cap(api, b"<a>" + b"x" * 70_000 + b"</a>")
    assert (status, answer["code"]) == (413, "payload_too_large")


async def test_partner_configured_for_cap_gets_valid_signed_cap(
    tmp_path: Path, make_client: MakeClient, webhook_receivers: MakeReceiver
) -> None:
    tv = webhook_receivers(secret=SECRET_TV)
    news = webhook_receivers(secret=SECRET_NEWS)
    config = fanout_config(
        tmp_path, partners={"partner-cq-tv": tv.url, "partner-cq-news": news.url}
    )
    endpoints = config / "endpoints.yaml"
    text = endpoints.read_text(encoding="utf-8")
    text = text.replace("  - id: partner-cq-tv\n", "  - id: partner-cq-tv\n    format: cap\n")
    endpoints.write_text(text, encoding="utf-8")
    env = {
        **token_env(),
        "GATEWAY_STORE": f"sqlite:///{tmp_path}/g.db",
        **partner_env(),
    }
    api = await make_client(load_settings(config, env))
    body = warning_body()
    resp = await api.post("/v1/warnings", json=body, headers=auth())
    assert resp.status == 202
    await settled(api, body["id"])
    (request,) = tv.requests()
    assert request["verified"] is True
    assert validate_cap(request["body"].encode()) == []


async def test_national_profile_cap_with_two_info_blocks_is_accepted(api: GatewayClient) -> None:
    """China's national system: en-US and zh-CN info blocks, 12-digit CPEAS geocodes."""
    raw = (DATA / "cn_national_alert.xml").read_text(encoding="utf-8")
    # Move the sample's times (sent 10:00, expiring 22:00 on 2026-11-24 +08:00) to now.
    shift = datetime.now(CST) - datetime(2026, 11, 24, 10, 5, tzinfo=CST)

    def moved(m: re.Match[str]) -> str:
        return (datetime.fromisoformat(m.group(0)) + shift).isoformat(timespec="seconds")

    xml = re.sub(r"2026-11-2\dT\d\d:\d\d:\d\d\+08:00", moved, raw).encode()
    status, answer = await post_cap(api, xml)
    assert status == 202, answer
    stored = (await (await api.get(f"/v1/warnings/{answer['id']}", headers=auth())).json())[
        "warning"
    ]
    assert stored["hazard"] == "暴雨"  # the zh-CN block, not the en-US "Rainstorm"
    assert stored["category"] == "natural_disaster"  # from annex 1 row 10
    assert stored["area"]["districts"] == ["500103"]
    assert stored["area"]["townships"] == ["500101001"]
