"""Trust: only the right party can act (design.md "Trust: who may do what").

Every attack is sent over real HTTP to the gateway on a loopback port; each test asserts the
refusal and that nothing else changed (the referenced warning still active, no clears planned,
coverage and delivery states as before).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_settings
from gateway.drill.samples import red_rainstorm_wanzhou
from tests.conftest import GatewayClient, MakeClient
from tests.fanout import fanout_config, ledger, partner_env, post_warning, settled
from tests.helpers import TOKENS, auth, district_issuer, token_env, warning_body
from tests.webhook_receiver import MakeReceiver

WANZHOU, YUZHONG = "500101", "500103"
GAOSUNTANG = "500101001"  # 万州区 高笋塘街道: board, loudspeaker, SMS group, email
QIXINGGANG = "500103001"  # 渝中区 七星岗街道


def wanzhou_red(**changes: Any) -> dict[str, Any]:
    """A red 暴雨 warning by 万州区气象局 for one 万州区 township (SMS only: the stub)."""
    now = datetime.now(UTC)
    body = red_rainstorm_wanzhou(now, f"wz-{now.timestamp():.6f}")
    body |= {"area": {"townships": [GAOSUNTANG]}, "channels": ["sms"]}
    return {**body, **changes}


def replacing(old: dict[str, Any], msg_type: str = "cancel", **changes: Any) -> dict[str, Any]:
    """An update or cancel of `old`, by its issuer unless `changes` say otherwise."""
    now = datetime.now(UTC)
    body = {
        **old,
        "id": f"{old['id']}-{msg_type}-{now.timestamp():.6f}",
        "msg_type": msg_type,
        "references": old["id"],
        "sent_at": (now - timedelta(seconds=1)).isoformat(),
    }
    body["approval"] = {**old["approval"], "approved_at": (now - timedelta(seconds=2)).isoformat()}
    return {**body, **changes}


async def status_of(api: GatewayClient, wid: str) -> dict[str, Any]:
    resp = await api.get(f"/v1/warnings/{wid}", headers=auth())
    assert resp.status == 200, await resp.text()
    doc: dict[str, Any] = await resp.json()
    return doc


async def post(api: GatewayClient, body: dict[str, Any], client: str) -> tuple[int, Any]:
    resp = await api.post("/v1/warnings", json=body, headers=auth(client))
    return resp.status, await resp.json()


# --- scopes (design.md's scope table) -----------------------------------------------------

READS = [
    "/v1/warnings/{id}",
    "/v1/warnings/{id}/receipts",
    "/v1/warnings/{id}/deliveries",
    "/v1/warnings/{id}/coverage",
    "/v1/warnings/{id}/filing",
    "/v1/stats",
    "/metrics",
]


@pytest.mark.parametrize("path", READS)
async def test_every_read_needs_a_read_token(api: GatewayClient, path: str) -> None:
    body = warning_body()
    assert (await post(api, body, "platform"))[0] == 202
    url = path.format(id=body["id"])
    assert (await api.get(url)).status == 401
    assert (await api.get(url, headers={"Authorization": "Bearer wrong"})).status == 401
    for client in ("sms-provider", "cqtv"):  # no read scope
        resp = await api.get(url, headers=auth(client))
        assert resp.status == 403
        assert (await resp.json())["code"] == "scope_required"
    for client in ("reader", "platform"):
        assert (await api.get(url, headers=auth(client))).status == 200


async def test_healthz_and_openapi_are_open(api: GatewayClient) -> None:
    assert (await api.get("/healthz")).status == 200
    assert (await api.get("/openapi.json")).status == 200


async def test_metrics_public_when_configured(
    config_dir: Path, env: dict[str, str], make_client: MakeClient
) -> None:
    gateway_yaml = config_dir / "gateway.yaml"
    gateway_yaml.write_text(gateway_yaml.read_text() + "metrics: {public: true}\n")
    api = await make_client(load_settings(config_dir, env))
    resp = await api.get("/metrics")
    assert resp.status == 200
    assert "gateway_warnings_total" in await resp.text()


@pytest.mark.parametrize("client", ["reader", "sms-provider", "cqtv"])
async def test_submit_needs_the_submit_scope(api: GatewayClient, client: str) -> None:
    body = warning_body()
    status, answer = await post(api, body, client)
    assert (status, answer["code"]) == (403, "scope_required")
    assert (await api.get(f"/v1/warnings/{body['id']}", headers=auth())).status == 404


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(f"Bearer  {TOKENS['platform']}", id="two-spaces"),
        pytest.param(f"Bearer {TOKENS['platform']}==", id="base64-padding"),
        pytest.param(f"Bearer {TOKENS['platform']} x", id="second-word"),
        pytest.param(f"Bearer {TOKENS['platform'][:-1]}", id="prefix"),
        pytest.param(f"Bearer {TOKENS['platform']}0", id="longer"),
        pytest.param(f"Basic {TOKENS['platform']}", id="other-scheme"),
        pytest.param(TOKENS["platform"], id="no-scheme"),
    ],
)
async def test_tokens_are_compared_exactly(api: GatewayClient, header: str) -> None:
    resp = await api.post("/v1/warnings", json=warning_body(), headers={"Authorization": header})
    assert resp.status == 401


async def test_bearer_scheme_is_case_insensitive(api: GatewayClient) -> None:
    headers = {"Authorization": f"bearer {TOKENS['platform']}"}
    assert (await api.post("/v1/warnings", json=warning_body(), headers=headers)).status == 202


def test_partner_of_a_client_must_exist(config_dir: Path, env: dict[str, str]) -> None:
    from gateway.app import build_app
    from gateway.exceptions import ConfigError

    gateway_yaml = config_dir / "gateway.yaml"
    text = gateway_yaml.read_text().replace("partners: [partner-cq-tv]", "partners: [nobody]")
    gateway_yaml.write_text(text)
    with pytest.raises(ConfigError, match=r"clients\.cqtv\.partners.*nobody"):
        build_app(load_settings(config_dir, env))


# --- update and cancel: only the issuing unit (art. 18) -----------------------------------


async def test_district_client_cannot_cancel_another_districts_warning(api: GatewayClient) -> None:
    """The attack of the issue: a 渝中区 client's cancel of a 万州区 red 暴雨 warning."""
    old = wanzhou_red()
    assert (await post(api, old, "platform"))[0] == 202
    attacks = [
        # its own district's issuer, area and client: annex 1 passes, art. 18 does not
        (
            replacing(
                old,
                issuer=district_issuer("区县（自治县）气象主管机构", YUZHONG, "渝中区气象局"),
                area={"districts": [YUZHONG]},
            ),
            "not_issuing_unit",
        ),
        # the referenced warning's issuer, through a client not allowed for 万州区
        (replacing(old), "issuer_not_authorized"),
    ]
    for cancel, code in attacks:
        status, answer = await post(api, cancel, "yuzhong")
        assert (status, answer["code"]) == (403, code), answer
        stages = [e["stage"] for e in await ledger(api, cancel["id"])]
        assert stages == ["received", "rejected"]
    state = await status_of(api, old["id"])
    assert state["status"] == "active"
    assert state["clears"] == {}


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        pytest.param(
            {
                "issuer": district_issuer("区县（自治县）气象主管机构", YUZHONG, "渝中区气象局"),
                "area": {"districts": [YUZHONG]},
            },
            "not_issuing_unit",
            id="another-districts-unit",
        ),
        pytest.param(
            {"issuer": district_issuer("区县（自治县）气象主管机构", WANZHOU, "万州区水利局")},
            "not_issuing_unit",
            id="another-unit-claiming-the-same-role",
        ),
        pytest.param(
            {"issuer": {"unit": "万州区气象局", "role": "区县（自治县）气象主管机构"}},
            "issuer_not_authorized",
            id="same-name-without-district",
        ),
    ],
)
async def test_only_the_issuing_unit_updates_or_cancels(
    api: GatewayClient, changes: dict[str, Any], code: str
) -> None:
    old = wanzhou_red()
    assert (await post(api, old, "platform"))[0] == 202
    for msg_type in ("update", "cancel"):
        body = replacing(old, msg_type, **changes)
        status, answer = await post(api, body, "platform")
        assert (status, answer["code"]) == (403, code), answer
        assert [e["stage"] for e in await ledger(api, body["id"])] == ["received", "rejected"]
    assert (await status_of(api, old["id"]))["status"] == "active"


@pytest.mark.parametrize(
    ("client", "changes"),
    [
        pytest.param("platform", {}, id="the-issuer-itself"),
        pytest.param("wanzhou", {}, id="through-its-district-client"),
        pytest.param(
            "platform",
            {"issuer": district_issuer("区县气象主管机构", WANZHOU, "万州区气象局")},
            id="the-role-spelt-another-way",
        ),
        pytest.param(
            "platform",
            {"issuer": {"unit": "重庆市气象台", "role": "重庆气象局"}},
            id="the-city-unit-of-the-same-role",
        ),
    ],
)
async def test_issuing_unit_cancels(
    api: GatewayClient, client: str, changes: dict[str, Any]
) -> None:
    old = wanzhou_red()
    assert (await post(api, old, "platform"))[0] == 202
    status, answer = await post(api, replacing(old, **changes), client)
    assert status == 202, answer
    assert (await status_of(api, old["id"]))["status"] == "cancelled"


async def test_upgrade_to_red_is_checked_against_annex_1_again(api: GatewayClient) -> None:
    """An update passes annex 1 again: a level-1 供水事故 needs the city government's approval
    (annex 1 row 27), also when it raises an accepted level 2."""
    base = warning_body(
        category="accident_disaster",
        hazard="供水事故",
        issuer={"unit": "市水利局", "role": "市水利局"},
        level=2,
        area={"districts": [WANZHOU]},
    )
    status, answer = await post(api, base, "platform")
    assert status == 202, answer
    upgrade = replacing(base, "update", level=1)
    status, answer = await post(api, upgrade, "platform")
    assert (status, answer["code"]) == (403, "higher_approval_required")
    assert (await status_of(api, base["id"]))["status"] == "active"


@pytest.mark.parametrize(
    ("reference", "status", "code"),
    [
        pytest.param("no-such-warning", 404, "unknown_reference", id="unknown"),
    ],
)
async def test_refused_reference_is_in_the_ledger(
    api: GatewayClient, reference: str, status: int, code: str
) -> None:
    body = warning_body(msg_type="cancel", references=reference)
    got, answer = await post(api, body, "platform")
    assert (got, answer["code"]) == (status, code)
    entries = await ledger(api, body["id"])
    assert [e["stage"] for e in entries] == ["received", "rejected"]
    assert entries[1]["data"]["code"] == code


async def test_id_conflict_is_in_the_ledger(api: GatewayClient) -> None:
    body = warning_body()
    assert (await post(api, body, "platform"))[0] == 202
    got, answer = await post(api, {**body, "title": "另一个标题"}, "platform")
    assert (got, answer["code"]) == (409, "id_conflict")
    entries = await ledger(api, body["id"])
    stages = [e["stage"] for e in entries]
    # The first warning's own outcomes may commit after the refusal: find the refusal's pair.
    assert stages.count("received") == 2
    second = len(stages) - 1 - stages[::-1].index("received")
    assert stages[second : second + 2] == ["received", "rejected"]
    assert entries[second + 1]["data"]["code"] == "id_conflict"
    assert (await status_of(api, body["id"]))["status"] == "active"


# --- receipts only from their source -------------------------------------------------------


async def sms_delivery(api: GatewayClient) -> tuple[dict[str, Any], str]:
    """A delivered (stub) SMS of a 渝中区 warning and its delivery id."""
    body = warning_body(area={"townships": [QIXINGGANG]}, channels=["sms"])
    assert (await post(api, body, "platform"))[0] == 202
    await settled(api, body["id"])
    return body, f"{body['id']}/{QIXINGGANG}-sms"


def callback(did: str, status: str = "delivered", **changes: Any) -> dict[str, Any]:
    return {"message_id": did, "status": status, "at": datetime.now(UTC).isoformat(), **changes}


async def receipt(api: GatewayClient, doc: dict[str, Any], client: str) -> tuple[int, Any]:
    resp = await api.post("/v1/receipts", json=doc, headers=auth(client))
    return resp.status, await resp.json()


async def receipt_entries(api: GatewayClient, wid: str) -> list[dict[str, Any]]:
    return [e for e in await ledger(api, wid) if e["stage"] == "receipt"]


@pytest.mark.parametrize("client", ["platform", "reader", "cqtv", "yuzhong"])
async def test_sms_reports_only_from_an_sms_callbacks_client(
    api: GatewayClient, client: str
) -> None:
    body, did = await sms_delivery(api)
    status, answer = await receipt(api, callback(did, "failed"), client)
    assert (status, answer["code"]) == (403, "scope_required")
    assert await receipt_entries(api, body["id"]) == []
    assert (await status_of(api, body["id"]))["channels"]["sms"]["delivered"] == 1


async def test_final_delivery_is_unchanged_by_a_later_report(api: GatewayClient) -> None:
    body, did = await sms_delivery(api)
    before = await (await api.get(f"/v1/warnings/{body['id']}/coverage", headers=auth())).json()
    status, answer = await receipt(api, callback(did, "failed"), "sms-provider")
    assert status == 202, answer
    assert answer["state"] == "delivered"
    assert (await status_of(api, body["id"]))["channels"]["sms"]["delivered"] == 1
    after = await (await api.get(f"/v1/warnings/{body['id']}/coverage", headers=auth())).json()
    assert after["townships"] == before["townships"]
    [entry] = await receipt_entries(api, body["id"])
    assert entry["data"]["status"] == "failed"  # recorded all the same
    assert entry["data"]["final_before"] == "delivered"


async def test_the_same_report_twice_is_applied_once(api: GatewayClient) -> None:
    body, did = await sms_delivery(api)
    doc = callback(did, phone="13800103001", part=1)
    first = await receipt(api, doc, "sms-provider")
    second = await receipt(api, doc, "sms-provider")
    assert first[0] == second[0] == 202
    assert (first[1]["status"], second[1]["status"]) == ("recorded", "duplicate")
    assert len(await receipt_entries(api, body["id"])) == 1
    other = await receipt(api, {**doc, "part": 2}, "sms-provider")
    assert other[1]["status"] == "recorded"
    assert len(await receipt_entries(api, body["id"])) == 2


@pytest.mark.parametrize(
    "at",
    [
        pytest.param("2000-01-01T00:00:00+08:00", id="year-2000"),
        pytest.param("-1h", id="before-the-send"),
        pytest.param("+10min", id="ten-minutes-ahead"),
    ],
)
async def test_report_time_out_of_bounds_is_400(api: GatewayClient, at: str) -> None:
    body, did = await sms_delivery(api)
    now = datetime.now(UTC)
    when = {"-1h": now - timedelta(hours=1), "+10min": now + timedelta(minutes=10)}
    stamp = when[at].isoformat() if at in when else at
    status, answer = await receipt(api, callback(did, "failed", at=stamp), "sms-provider")
    assert (status, answer["code"]) == (400, "invalid_receipt")
    assert [e["field"] for e in answer["errors"]] == ["at"]
    assert await receipt_entries(api, body["id"]) == []
    ahead = callback(did, at=(now + timedelta(minutes=1)).isoformat())  # clock skew: fine
    assert (await receipt(api, ahead, "sms-provider"))[0] == 202


async def test_sms_report_about_a_partner_delivery_is_refused(
    tmp_path: Path, make_client: MakeClient, webhook_receivers: MakeReceiver
) -> None:
    tv = webhook_receivers(secret=partner_env()["GATEWAY_WEBHOOK_SECRET_CQ_TV"])
    news = webhook_receivers(secret=partner_env()["GATEWAY_WEBHOOK_SECRET_CQ_NEWS"])
    config = fanout_config(
        tmp_path, partners={"partner-cq-tv": tv.url, "partner-cq-news": news.url}
    )
    env = {**token_env(), **partner_env(), "GATEWAY_STORE": f"sqlite:///{tmp_path}/g.db"}
    api = await make_client(load_settings(config, env))
    body = warning_body(area={"townships": [QIXINGGANG]}, channels=["sms", "webhook"])
    await post_warning(api, body)
    await settled(api, body["id"])
    wid = body["id"]
    tv_did, news_did, sms_did = (
        f"{wid}/partner-cq-tv",
        f"{wid}/partner-cq-news",
        f"{wid}/{QIXINGGANG}-sms",
    )
    refused = [
        (callback(tv_did), "sms-provider", "source_not_allowed"),  # SMS report, webhook delivery
        ({"delivery_id": news_did}, "cqtv", "source_not_allowed"),  # another partner's delivery
        ({"delivery_id": sms_did}, "cqtv", "source_not_allowed"),  # not a partner delivery
        ({"delivery_id": tv_did}, "platform", "scope_required"),  # not the partner's client
    ]
    for doc, client, code in refused:
        status, answer = await receipt(api, doc, client)
        assert (status, answer["code"]) == (403, code), (doc, client)
    assert await receipt_entries(api, wid) == []
    status, answer = await receipt(api, {"delivery_id": tv_did}, "cqtv")
    assert status == 202, answer
    [entry] = await receipt_entries(api, wid)
    assert (entry["data"]["delivery_id"], entry["data"]["client"]) == (tv_did, "cqtv")


def manual(wid: str, township: str, **changes: Any) -> dict[str, Any]:
    return {
        "warning_id": wid,
        "township": township,
        "means": "鸣锣",
        "by": "网格员张三",
        "at": datetime.now(UTC).isoformat(),
        **changes,
    }


async def test_manual_confirmation_only_inside_the_clients_districts(api: GatewayClient) -> None:
    """A 渝中区 client cannot close a 万州区 blind spot (art. 20: the township's own centre
    confirms)."""
    old = wanzhou_red(area={"districts": [WANZHOU]}, channels=["email"])  # email is off: uncovered
    assert (await post(api, old, "platform"))[0] == 202
    doc = manual(old["id"], "500101239")  # 恒合土家族乡, a sample blind spot
    for client, code in (("yuzhong", "source_not_allowed"), ("reader", "scope_required")):
        status, answer = await receipt(api, doc, client)
        assert (status, answer["code"]) == (403, code)
    cov = await (await api.get(f"/v1/warnings/{old['id']}/coverage", headers=auth())).json()
    spot = next(t for t in cov["townships"] if t["township"] == "500101239")
    assert spot.get("covered") is None
    for client in ("wanzhou", "platform"):
        status, answer = await receipt(api, manual(old["id"], "500101239", by=client), client)
        assert status == 202, answer
    stale = manual(old["id"], "500101239", at="2000-01-01T00:00:00+08:00")
    assert (await receipt(api, stale, "platform"))[0] == 400


# --- what reads show ------------------------------------------------------------------------

# Not inside a run of hex digits: a ledger hash may hold eleven decimal digits in a row.
MOBILE = re.compile(r"(?<![0-9a-f])1[3-9][0-9]{9}(?![0-9a-f])")


async def test_reads_mask_phone_numbers_and_email_local_parts(api: GatewayClient) -> None:
    body, did = await sms_delivery(api)
    doc = callback(did, phone="13800103001", part=1, error="13900103001 unreachable")
    assert (await receipt(api, doc, "sms-provider"))[0] == 202
    texts = []
    for path in ("", "/receipts", "/deliveries", "/coverage", "/filing"):
        resp = await api.get(f"/v1/warnings/{body['id']}{path}", headers=auth("reader"))
        assert resp.status == 200
        texts.append(await resp.text())
    everything = "\n".join(texts)
    found = MOBILE.search(everything)
    assert found is None, everything[max(found.start() - 80, 0) : found.end() + 20]
    assert "138****3001" in everything
    assert did in everything  # ids are kept
    entries = json.loads(texts[1])["entries"]
    assert any(e["data"].get("detail", {}).get("phone") == "138****3001" for e in entries)


def test_mask_rules() -> None:
    from gateway.masking import mask

    doc = {
        "phone": "13800001001",
        "to": ["zhang.san@example.org"],
        "error": "+8613912345678 busy",
        "message_id": "sms-13800001001",
        "landline": "023-12345678",
    }
    assert mask(doc) == {
        "phone": "138****1001",
        "to": ["z***@example.org"],
        "error": "+86139****5678 busy",
        "message_id": "sms-13800001001",
        "landline": "023-12345678",
    }


async def test_the_same_manual_confirmation_twice_is_applied_once(api: GatewayClient) -> None:
    old = wanzhou_red(area={"districts": [WANZHOU]}, channels=["email"])  # email is off
    assert (await post(api, old, "platform"))[0] == 202
    doc = manual(old["id"], "500101244")  # 黄柏乡, a sample blind spot
    first = await receipt(api, doc, "platform")
    second = await receipt(api, doc, "platform")
    assert first[0] == second[0] == 202
    assert "duplicate" not in first[1]
    assert second[1]["duplicate"] is True
    manual_entries = [
        e for e in await receipt_entries(api, old["id"]) if e["data"]["source"] == "manual"
    ]
    assert len(manual_entries) == 1
