"""CAP 1.2 over HTTP: ingest as application/cap+xml, emit with Accept: application/cap+xml
(validated against the OASIS CAP 1.2 XSD), partners configured for CAP."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from gateway.cap.profile import CAP_NS, DEFAULT_CAP_SENDER
from gateway.cap.read import validate_cap
from gateway.cap.write import cap_time, document_to_cap
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


async def test_partner_configured_for_cap_verifies_every_delivery_with_the_stock_library(
    tmp_path: Path, make_client: MakeClient, webhook_receivers: MakeReceiver
) -> None:
    """The receiver verifies with `standardwebhooks.Webhook(secret).verify(body, headers)`,
    the library's default call, which also parses the body as JSON."""
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
    alert, update = alert_and_update()
    for body in (alert, update):
        resp = await api.post("/v1/warnings", json=body, headers=auth())
        assert resp.status == 202, await resp.text()
        await settled(api, body["id"])
    requests = tv.requests()
    assert [r["verified"] for r in requests] == [True] * len(requests), requests
    assert len(requests) >= 2
    payloads = [json.loads(r["body"]) for r in requests]
    assert {p["type"] for p in payloads} >= {"warning.alert", "warning.update"}
    assert all(r["headers"]["content-type"] == "application/json" for r in requests)
    for payload in payloads:
        assert payload["data"]["format"] == "cap"
        assert validate_cap(payload["data"]["cap"].encode()) == []
    (update_cap,) = [p["data"]["cap"] for p in payloads if p["type"] == "warning.update"]
    assert cap_references(update_cap.encode()) == expected_reference(alert)


def alert_and_update() -> tuple[dict[str, Any], dict[str, Any]]:
    """An alert sent 5 minutes ago and an update of it sent 1 minute ago."""
    alert = warning_body(sent_at=(datetime.now(UTC) - timedelta(minutes=5)).isoformat())
    update = warning_body(msg_type="update", references=alert["id"], level=2)
    assert update["sent_at"] != alert["sent_at"]
    return alert, update


def cap_references(xml: bytes) -> str | None:
    root = ET.fromstring(xml)
    return root.findtext(f"{{{CAP_NS}}}references")


def expected_reference(alert: dict[str, Any]) -> str:
    return f"{DEFAULT_CAP_SENDER},{alert['id']},{cap_time(alert['sent_at'])}"


@pytest.mark.parametrize("msg_type", ["update", "cancel"])
async def test_update_as_cap_references_the_referenced_message(
    api: GatewayClient, msg_type: str
) -> None:
    alert, update = alert_and_update()
    update["msg_type"] = msg_type
    for body in (alert, update):
        resp = await api.post("/v1/warnings", json=body, headers=auth())
        assert resp.status == 202, await resp.text()
    resp = await api.get(
        f"/v1/warnings/{update['id']}", headers={**auth(), "Accept": "application/cap+xml"}
    )
    assert resp.status == 200
    xml = await resp.read()
    assert validate_cap(xml) == []
    assert cap_references(xml) == expected_reference(alert)
    assert cap_time(alert["sent_at"]) != cap_time(update["sent_at"])


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


async def _stages(api: GatewayClient, wid: str) -> list[str]:
    resp = await api.get(f"/v1/warnings/{wid}/receipts", headers=auth())
    assert resp.status == 200, await resp.text()
    return [e["stage"] for e in (await resp.json())["entries"]]


@pytest.mark.parametrize(
    ("client", "status", "code", "stages"),
    [
        pytest.param("platform", 403, "issuer_not_authorized", ["received", "rejected"], id="403"),
        pytest.param("duty", 202, None, ["received", "authorized"], id="art26-duty-releases"),
    ],
)
async def test_unlisted_cap_event_answers_like_its_json_twin(
    api: GatewayClient, client: str, status: int, code: str | None, stages: list[str]
) -> None:
    """沙尘暴 is not in annex 1: CAP (<category>Met</category>) and JSON give the same answer."""
    answers = []
    for as_cap in (False, True):
        body = warning_body(hazard="沙尘暴", title="重庆市气象台发布沙尘暴黄色预警")
        if as_cap:
            # No `category` parameter: CAP's own <category> is all the message says.
            xml = document_to_cap({**body, "category": None}, sender=DEFAULT_CAP_SENDER)
            xml = xml.replace(b"<category>Other</category>", b"<category>Met</category>")
            assert b"<category>Met</category>" in xml
            assert b"natural_disaster" not in xml
            resp = await api.post("/v1/warnings", data=xml, headers={**auth(client), **CAP})
        else:
            resp = await api.post("/v1/warnings", json=body, headers=auth(client))
        answer = await resp.json()
        assert resp.status == status, answer
        assert answer.get("code") == code
        answers.append((resp.status, answer.get("code"), (await _stages(api, body["id"]))[:2]))
    assert answers[0] == answers[1] == (status, code, stages)
