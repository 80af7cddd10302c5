"""Township coverage and escalation (art. 20: 实现至少1种手段覆盖预警信息传播盲区; art. 21:
乡镇街道基层治理指挥中心 receive, act and report back)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_settings
from gateway.drill.samples import red_rainstorm_wanzhou
from tests.conftest import GatewayClient, MakeClient
from tests.fanout import SAMPLE_BLIND_SPOTS, fanout_config, ledger, post_warning, settled
from tests.helpers import auth, token_env, warning_body
from tests.processes import run_gateway
from tests.smtp_server import SmtpServerFactory


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **token_env(),
        "GATEWAY_STORE": f"sqlite:///{tmp_path}/g.db",
    }


async def coverage(api: GatewayClient, warning_id: str) -> dict[str, Any]:
    resp = await api.get(f"/v1/warnings/{warning_id}/coverage", headers=auth())
    assert resp.status == 200
    doc: dict[str, Any] = await resp.json()
    return doc


def township(doc: dict[str, Any], code: str) -> dict[str, Any]:
    found: dict[str, Any] = next(t for t in doc["townships"] if t["township"] == code)
    return found


async def test_whole_district_with_every_channel_delivering_is_fully_covered(
    tmp_path: Path, make_client: MakeClient
) -> None:
    api = await make_client(load_settings(fanout_config(tmp_path), _env(tmp_path)))
    body = warning_body(area={"districts": ["500103"]})  # 渝中区: every township has endpoints
    await post_warning(api, body)
    await settled(api, body["id"])
    doc = await coverage(api, body["id"])
    assert doc["counts"] == {
        "townships": 11,
        "covered": 11,
        "pending": 0,
        "blind_spots": 0,
        "escalated": 0,
    }
    assert doc["covered_share"] == 1.0
    first = township(doc, "500103001")
    assert first["status"] == "covered"
    assert first["covered_by"] == {"channel": "sms", "endpoint": "500103001-sms"}
    assert first["name"] == "七星岗街道"


async def test_blind_spots_are_listed_recorded_and_escalated_at_once(
    tmp_path: Path, make_client: MakeClient, smtp_server_factory: SmtpServerFactory
) -> None:
    smtp = smtp_server_factory()
    config = fanout_config(tmp_path, smtp_url=smtp.url)
    api = await make_client(load_settings(config, _env(tmp_path)))
    body = red_rainstorm_wanzhou(datetime.now(UTC), "blind-spots")
    answer = await post_warning(api, body)
    assert answer["blind_spots"] == SAMPLE_BLIND_SPOTS
    await settled(api, body["id"])
    doc = await coverage(api, body["id"])
    assert doc["counts"]["blind_spots"] == 3
    assert doc["counts"]["escalated"] == 3
    assert doc["counts"]["covered"] == 49
    for code in SAMPLE_BLIND_SPOTS:
        t = township(doc, code)
        assert t["blind_spot"] is True
        assert t["status"] == "pending"
        assert "escalated_at" in t
    escalated = [e for e in await ledger(api, body["id"]) if e["stage"] == "escalated"]
    assert sorted(e["data"]["township"] for e in escalated) == SAMPLE_BLIND_SPOTS
    assert {e["data"]["reason"] for e in escalated} == {"blind_spot"}
    # Each blind spot's township centre (SMS) and 万州区's centre (email + SMS) were told.
    state = await (await api.get(f"/v1/warnings/{body['id']}", headers=auth())).json()
    assert state["escalations"]["email"]["delivered"] == 1
    assert state["escalations"]["sms"]["delivered"] == 4
    district_mail = [m for m in smtp.messages() if "districts" in m.rcpt_tos[0]]
    assert len(district_mail) == 1


async def test_never_acknowledged_endpoint_is_escalated_then_covered_by_a_manual_receipt(
    tmp_path: Path, make_client: MakeClient, smtp_server_factory: SmtpServerFactory
) -> None:
    # An SMS provider that never calls back: the delivery stays `sent`, the township pending.
    from tests.sms_provider import SmsProviderProcess

    provider = SmsProviderProcess(tmp_path / "sms.jsonl").start()
    smtp = smtp_server_factory()
    try:
        config = fanout_config(
            tmp_path,
            smtp_url=smtp.url,
            channels={
                "sms": f"{{provider: http, url: '{provider.url}'}}",
                "email": "{enabled: false}",
            },
            extra="coverage: {deadlines_s: {1: 0.5, 2: 0.5, 3: 0.5, 4: 0.5}}",
        )
        api = await make_client(load_settings(config, _env(tmp_path)))
        body = warning_body(area={"townships": ["500103001"]}, channels=["sms"])
        assert (await post_warning(api, body))["blind_spots"] == []
        for _ in range(100):
            doc = await coverage(api, body["id"])
            if doc["counts"]["escalated"]:
                break
            await asyncio.sleep(0.05)
        t = township(doc, "500103001")
        assert t["status"] == "pending"
        assert t["blind_spot"] is False
        assert "escalated_at" in t
        escalated = [e for e in await ledger(api, body["id"]) if e["stage"] == "escalated"]
        assert [e["data"]["reason"] for e in escalated] == ["deadline"]
        # Email is disabled here, so the centres' SMS contacts are used.
        assert escalated[0]["data"]["to"] == ["centre-500103001-sms", "centre-500103-sms"]

        manual = {
            "warning_id": body["id"],
            "township": "500103001",
            "means": "敲门入户",
            "by": "七星岗街道网格员张三",
            "at": datetime.now(UTC).isoformat(),
        }
        resp = await api.post("/v1/receipts", json=manual, headers=auth())
        assert resp.status == 202, await resp.text()
        doc = await coverage(api, body["id"])
        t = township(doc, "500103001")
        assert t["status"] == "covered"
        assert t["covered_by"]["means"] == "敲门入户"
        assert doc["covered_share"] == 1.0
    finally:
        provider.stop()


@pytest.mark.parametrize(
    ("changes", "status", "field"),
    [
        pytest.param({"township": "500101001"}, 400, "township", id="outside-area"),
        pytest.param({"means": "smoke signals"}, 400, "means", id="unknown-means"),
        pytest.param({"at": "yesterday"}, 400, "at", id="bad-time"),
        pytest.param({"by": ""}, 400, "by", id="no-reporter"),
        pytest.param({"warning_id": "no-such"}, 404, None, id="unknown-warning"),
    ],
)
async def test_bad_manual_receipts_are_refused(
    tmp_path: Path,
    make_client: MakeClient,
    changes: dict[str, str],
    status: int,
    field: str | None,
) -> None:
    api = await make_client(load_settings(fanout_config(tmp_path), _env(tmp_path)))
    body = warning_body(area={"townships": ["500103001"]})
    await post_warning(api, body)
    manual = {
        "warning_id": body["id"],
        "township": "500103001",
        "means": "鸣锣",
        "by": "网格员",
        "at": datetime.now(UTC).isoformat(),
        **changes,
    }
    resp = await api.post("/v1/receipts", json=manual, headers=auth())
    assert resp.status == status
    answer = await resp.json()
    if field:
        assert field in {e["field"] for e in answer["errors"]}


async def test_coverage_of_unknown_warning_is_404(api: GatewayClient) -> None:
    assert (await api.get("/v1/warnings/nope/coverage", headers=auth())).status == 404


async def test_coverage_cli_prints_district_by_district(
    tmp_path: Path, make_client: MakeClient
) -> None:
    config = fanout_config(tmp_path)
    env = _env(tmp_path)
    api = await make_client(load_settings(config, env))
    body = red_rainstorm_wanzhou(datetime.now(UTC), "cli-coverage")
    await post_warning(api, body)
    await settled(api, body["id"])
    await api.close()
    result = await asyncio.to_thread(
        run_gateway, "coverage", body["id"], "--config", str(config), env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "49/52 townships covered" in result.stdout
    assert "万州区 (500101): 49/52 covered" in result.stdout
    assert "恒合土家族乡" in result.stdout
    assert "blind spot" in result.stdout
    missing = await asyncio.to_thread(
        run_gateway, "coverage", "nope", "--config", str(config), env=env, cwd=tmp_path
    )
    assert missing.returncode == 1
