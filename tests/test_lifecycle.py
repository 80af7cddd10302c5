"""Warning lifecycle (art. 18): 调整预警级别并重新发布 (update supersedes), 终止预警 (cancel),
and expiry; retained MQTT messages follow, pending deliveries stop."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.config import load_settings
from tests.conftest import GatewayClient, MakeClient
from tests.fanout import SECRET_NEWS, SECRET_TV, fanout_config, ledger, partner_env, settled
from tests.helpers import auth, iso, token_env, warning_body
from tests.mqtt_broker import Mosquitto
from tests.sms_provider import SmsProviderProcess
from tests.webhook_receiver import MakeReceiver

TOWNSHIP = "500103001"  # 渝中区 七星岗街道


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **token_env(),
        "GATEWAY_STORE": f"sqlite:///{tmp_path}/g.db",
        **partner_env(),
    }


async def post(api: GatewayClient, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = await api.post("/v1/warnings", json=body, headers=auth())
    doc: dict[str, Any] = await resp.json()
    return resp.status, doc


async def status(api: GatewayClient, warning_id: str) -> str:
    doc = await (await api.get(f"/v1/warnings/{warning_id}", headers=auth())).json()
    return str(doc["status"])


def follow_up(original: dict[str, Any], msg_type: str, **changes: Any) -> dict[str, Any]:
    return warning_body(
        msg_type=msg_type,
        references=original["id"],
        area=original["area"],
        **changes,
    )


async def retained_topics(url: str, prefix: str, within: float = 1.0) -> dict[str, bytes]:
    host, port = url.removeprefix("mqtt://").split(":")
    seen: dict[str, bytes] = {}
    async with aiomqtt.Client(host, int(port), protocol=aiomqtt.ProtocolVersion.V5) as c:
        await c.subscribe(f"{prefix}/#", qos=1)
        try:
            async with asyncio.timeout(within):
                async for msg in c.messages:
                    assert isinstance(msg.payload, bytes)
                    seen[str(msg.topic)] = msg.payload
        except TimeoutError:
            pass
    return seen


async def test_update_supersedes_and_replaces_retained_topics(
    tmp_path: Path, make_client: MakeClient, mosquitto: Mosquitto
) -> None:
    config = fanout_config(tmp_path, mqtt_url=mosquitto.url)
    api = await make_client(load_settings(config, _env(tmp_path)))
    first = warning_body(level=3, area={"townships": [TOWNSHIP]})
    assert (await post(api, first))[0] == 202
    await settled(api, first["id"])
    update = follow_up(first, "update", level=2, title="暴雨橙色预警信号（升级）")
    code, answer = await post(api, update)
    assert code == 202, answer
    await settled(api, update["id"])
    for _ in range(50):
        if (await (await api.get(f"/v1/warnings/{first['id']}", headers=auth())).json())[
            "clears"
        ].get("mqtt", {}).get("delivered") == 2:
            break
        await asyncio.sleep(0.05)
    assert await status(api, first["id"]) == "superseded"
    assert await status(api, update["id"]) == "active"
    topics = await retained_topics(mosquitto.url, f"cq/warnings/500103/{TOWNSHIP}")
    assert set(topics) == {
        f"cq/warnings/500103/{TOWNSHIP}/display/{update['id']}",
        f"cq/warnings/500103/{TOWNSHIP}/broadcast/{update['id']}",
    }
    stages = [e["stage"] for e in await ledger(api, first["id"])]
    assert "superseded" in stages


async def test_update_stops_pending_deliveries_of_the_old_warning(
    tmp_path: Path, make_client: MakeClient
) -> None:
    provider = SmsProviderProcess(tmp_path / "sms.jsonl", script="hang").start()
    try:
        config = fanout_config(
            tmp_path,
            channels={
                "sms": f"{{provider: http, url: '{provider.url}', concurrency: 1, timeout_s: 30}}"
            },
        )
        api = await make_client(load_settings(config, _env(tmp_path)))
        first = warning_body(area={"districts": ["500103"]})
        assert (await post(api, first))[0] == 202
        await asyncio.sleep(0.2)  # one delivery in flight (hanging), ten queued
        update = follow_up(first, "update", channels=["webhook"])
        assert (await post(api, update))[0] == 202
        state = await (await api.get(f"/v1/warnings/{first['id']}", headers=auth())).json()
        assert state["status"] == "superseded"
        assert state["channels"]["sms"]["stopped"] == 11
        assert state["channels"]["sms"]["pending"] == 0
    finally:
        provider.stop()


async def test_cancel_clears_boards_and_tells_partners_and_recipients(
    tmp_path: Path,
    make_client: MakeClient,
    mosquitto: Mosquitto,
    webhook_receivers: MakeReceiver,
) -> None:
    tv = webhook_receivers(secret=SECRET_TV)
    news = webhook_receivers(secret=SECRET_NEWS)
    partners = {"partner-cq-tv": tv.url, "partner-cq-news": news.url}
    config = fanout_config(tmp_path, mqtt_url=mosquitto.url, partners=partners)
    api = await make_client(load_settings(config, _env(tmp_path)))
    first = warning_body(area={"townships": [TOWNSHIP]})
    assert (await post(api, first))[0] == 202
    await settled(api, first["id"])
    cancel = follow_up(
        first, "cancel", title="解除暴雨黄色预警信号", content="降雨已减弱，预警解除。"
    )
    code, answer = await post(api, cancel)
    assert code == 202, answer
    assert answer["status"] == "cancelled"
    assert answer["deliveries"] == 3  # 2 partners + the SMS group that got the warning
    await settled(api, cancel["id"])
    assert await status(api, first["id"]) == "cancelled"
    for _ in range(50):
        topics = await retained_topics(mosquitto.url, "cq/warnings/500103", within=0.3)
        if not topics:
            break
    assert topics == {}
    assert [json.loads(r["body"])["type"] for r in tv.requests()] == [
        "warning.alert",
        "warning.cancel",
    ]
    assert all(r["verified"] for r in tv.requests())
    stages = [e["stage"] for e in await ledger(api, first["id"])]
    assert "cancelled" in stages
    # A cancelled warning can be neither updated nor cancelled again.
    again = follow_up(first, "cancel")
    code, answer = await post(api, again)
    assert code == 409
    assert answer["code"] == "reference_not_active"


async def test_update_of_unknown_or_expired_warning(
    tmp_path: Path, make_client: MakeClient
) -> None:
    api = await make_client(load_settings(fanout_config(tmp_path), _env(tmp_path)))
    code, answer = await post(api, warning_body(msg_type="update", references="nope"))
    assert (code, answer["code"]) == (404, "unknown_reference")
    short = warning_body(expires_at=iso(datetime.now(UTC) + timedelta(seconds=1)))
    assert (await post(api, short))[0] == 202
    await asyncio.sleep(1.2)
    code, answer = await post(api, follow_up(short, "update"))
    assert (code, answer["code"]) == (409, "reference_not_active")


async def test_expiry_clears_retained_and_drops_retries(
    tmp_path: Path, make_client: MakeClient, mosquitto: Mosquitto
) -> None:
    config = fanout_config(
        tmp_path,
        mqtt_url=mosquitto.url,
        channels={
            "sms": "{provider: http, url: 'http://127.0.0.1:9', "
            "retry: {attempts: 100, initial_s: 0.2, max_s: 0.2, jitter_s: 0}}",
        },
    )
    api = await make_client(load_settings(config, _env(tmp_path)))
    body = warning_body(
        area={"townships": [TOWNSHIP]}, expires_at=iso(datetime.now(UTC) + timedelta(seconds=2))
    )
    assert (await post(api, body))[0] == 202
    for _ in range(100):
        if await status(api, body["id"]) == "expired" and not await retained_topics(
            mosquitto.url, "cq/warnings/500103", within=0.2
        ):
            break
        await asyncio.sleep(0.1)
    state = await (await api.get(f"/v1/warnings/{body['id']}", headers=auth())).json()
    assert state["status"] == "expired"
    assert state["channels"]["sms"]["pending"] == 0  # the retrying SMS was dropped
    stages = [e["stage"] for e in await ledger(api, body["id"])]
    assert "expired" in stages
    assert await retained_topics(mosquitto.url, "cq/warnings/500103", within=0.3) == {}


async def test_expiry_while_down_is_processed_on_start(
    tmp_path: Path, make_client: MakeClient
) -> None:
    settings = load_settings(fanout_config(tmp_path), _env(tmp_path))
    api = await make_client(settings)
    body = warning_body(expires_at=iso(datetime.now(UTC) + timedelta(seconds=1)))
    assert (await post(api, body))[0] == 202
    await api.close()
    await asyncio.sleep(1.2)
    api = await make_client(settings)
    for _ in range(50):
        stages = [e["stage"] for e in await ledger(api, body["id"])]
        if "expired" in stages:
            break
        await asyncio.sleep(0.05)
    assert "expired" in stages
    assert await status(api, body["id"]) == "expired"
