"""Fan-out on real servers: Mosquitto, an SMTP server, webhook receivers, the SMS stub.

design.md "Flow": one delivery per endpoint, durable before the 202, retried by policy, recorded
in the ledger (art. 17 全程留痕、预警回执); blind spots listed (art. 20).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from standardwebhooks import Webhook

from gateway.config import load_settings
from gateway.drill.samples import red_rainstorm_wanzhou
from gateway.ledger import verify
from gateway.store import open_store
from tests.conftest import MakeClient
from tests.fanout import (
    SAMPLE_BLIND_SPOTS,
    SECRET_NEWS,
    SECRET_TV,
    WANZHOU_COVERED,
    fanout_config,
    ledger,
    partner_env,
    post_warning,
    settled,
)
from tests.helpers import auth, token_env, warning_body
from tests.mqtt_broker import Mosquitto
from tests.smtp_server import SmtpServer, SmtpServerFactory
from tests.store_switch import store_url
from tests.webhook_receiver import MakeReceiver


def env_for(tmp_path: Path) -> dict[str, str]:
    return {
        **token_env(),
        "GATEWAY_STORE": f"sqlite:///{tmp_path}/gateway.db",
        **partner_env(),
    }


def red_wanzhou(tag: str) -> dict[str, Any]:
    return red_rainstorm_wanzhou(datetime.now(UTC), f"red-{tag}-{datetime.now(UTC):%H%M%S%f}")


async def retained(url: str, topic: str, *, expect: int, within: float = 10) -> dict[str, Any]:
    """Retained messages under `topic` as a board that connects now sees them."""
    host, port = url.removeprefix("mqtt://").split(":")
    seen: dict[str, Any] = {}
    async with aiomqtt.Client(host, int(port), protocol=aiomqtt.ProtocolVersion.V5) as c:
        await c.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(within):
                async for msg in c.messages:
                    seen[str(msg.topic)] = msg
                    if len(seen) >= expect:
                        break
        except TimeoutError:
            pass
    return seen


async def test_red_warning_reaches_every_channel(
    tmp_path: Path,
    make_client: MakeClient,
    mosquitto: Mosquitto,
    smtp_server: SmtpServer,
    webhook_receivers: MakeReceiver,
) -> None:
    tv = webhook_receivers(secret=SECRET_TV)
    news = webhook_receivers(secret=SECRET_NEWS)
    config = fanout_config(
        tmp_path,
        mqtt_url=mosquitto.url,
        smtp_url=smtp_server.url,
        partners={"partner-cq-tv": tv.url, "partner-cq-news": news.url},
    )
    settings = load_settings(config, env_for(tmp_path))
    api = await make_client(settings)
    body = red_wanzhou("all")
    answer = await post_warning(api, body)
    # 49 townships with endpoints: 2 MQTT + 1 SMS + 1 email each, and the 2 city-wide partners.
    assert answer["deliveries"] == WANZHOU_COVERED * 4 + 2
    assert answer["blind_spots"] == SAMPLE_BLIND_SPOTS

    state = await settled(api, body["id"])
    dead = await (
        await api.get(f"/v1/warnings/{body['id']}/deliveries?state=failed", headers=auth())
    ).json()
    assert dead["deliveries"] == []
    assert state["channels"] == {
        "mqtt": {
            "planned": 98,
            "pending": 0,
            "sent": 0,
            "delivered": 98,
            "failed": 0,
            "stopped": 0,
        },
        "sms": {"planned": 49, "pending": 0, "sent": 0, "delivered": 49, "failed": 0, "stopped": 0},
        "email": {
            "planned": 49,
            "pending": 0,
            "sent": 0,
            "delivered": 49,
            "failed": 0,
            "stopped": 0,
        },
        "webhook": {
            "planned": 2,
            "pending": 0,
            "sent": 0,
            "delivered": 2,
            "failed": 0,
            "stopped": 0,
        },
    }
    # Boards that connect now see the warning, retained, with its expiry.
    boards = await retained(mosquitto.url, "cq/warnings/500101/#", expect=98)
    assert len(boards) == 98
    topic = f"cq/warnings/500101/500101001/display/{body['id']}"
    msg = boards[topic]
    assert json.loads(msg.payload)["colour"] == "红色"
    assert msg.properties is not None
    assert 0 < msg.properties.MessageExpiryInterval <= 6 * 3600
    # Every township command centre got one email with the colour in its subject.
    mails = smtp_server.messages()
    to_townships = [m for m in mails if m.rcpt_tos[0].endswith("@townships.example.org")]
    assert len(to_townships) == 49
    assert all("红色" in m.message["Subject"] for m in mails)
    # The 3 blind spots were escalated at once to 万州区's command centre (art. 20-21).
    escalations = [m for m in mails if m.rcpt_tos == ("command-500101@districts.example.org",)]
    assert len(escalations) == 1
    assert "未覆盖" in escalations[0].message["Subject"]
    plain = escalations[0].message.get_body(("plain",))
    assert plain is not None
    body_text = plain.get_content()
    assert all(name in body_text for name in ("恒合土家族乡", "黄柏乡", "茨竹乡"))
    # Each partner got one delivery, verified with the stock standardwebhooks library.
    for receiver, secret in ((tv, SECRET_TV), (news, SECRET_NEWS)):
        reqs = receiver.requests()
        assert len(reqs) == 1
        assert reqs[0]["verified"] is True
        assert (
            reqs[0]["webhook_id"]
            == f"{body['id']}/{'partner-cq-tv' if receiver is tv else 'partner-cq-news'}"
        )
        Webhook(secret)  # the secret is one the library accepts
    # The ledger holds each stage, and its chain verifies.
    entries = await ledger(api, body["id"])
    stages = [e["stage"] for e in entries]
    # Blind spots are escalated with the warning, in its transaction (design.md "Delivery
    # under faults": everything decided at ingest is committed with the warning).
    assert stages[:3] == ["received", "authorized", "planned"]
    assert stages[3:6] == ["escalated"] * 3
    assert stages[6] == "queued"
    warning_only = [e for e in entries if "/escalate-" not in e["data"].get("delivery_id", "")]
    assert [e["stage"] for e in warning_only].count("attempt") == 198
    assert [e["stage"] for e in warning_only].count("delivered") == 198
    await api.close()
    async with open_store(store_url(settings.store_url)) as store:
        assert await verify(store.ledger()) > 0


async def test_responsible_persons_warning_uses_sms_and_email_only(
    tmp_path: Path, make_client: MakeClient
) -> None:
    settings = load_settings(fanout_config(tmp_path), env_for(tmp_path))
    api = await make_client(settings)
    body = warning_body(audience="responsible_persons", channels=["sms", "mqtt"])
    answer = await post_warning(api, body)
    assert answer["deliveries"] == 11  # 渝中区: one SMS group per township; MQTT is public-only
    assert answer["blind_spots"] == []


async def test_explicit_channels_leave_blind_spots(tmp_path: Path, make_client: MakeClient) -> None:
    settings = load_settings(fanout_config(tmp_path), env_for(tmp_path))
    api = await make_client(settings)
    body = warning_body(channels=["webhook"], area={"townships": ["500103001"]})
    answer = await post_warning(api, body)
    assert answer["deliveries"] == 0  # webhooks are disabled in this config
    assert answer["blind_spots"] == ["500103001"]


async def test_smtp_refusing_then_accepting_loses_nothing(
    tmp_path: Path, make_client: MakeClient, smtp_server_factory: SmtpServerFactory
) -> None:
    smtp = smtp_server_factory(fail_first=5, fail_code=451)
    settings = load_settings(fanout_config(tmp_path, smtp_url=smtp.url), env_for(tmp_path))
    api = await make_client(settings)
    body = red_wanzhou("smtp")
    await post_warning(api, body)
    state = await settled(api, body["id"])
    assert state["channels"]["email"]["delivered"] == 49
    to_townships = [m for m in smtp.messages() if "townships" in m.rcpt_tos[0]]
    assert len(to_townships) == 49
    errors = [e for e in await ledger(api, body["id"]) if e["data"].get("error")]
    assert len(errors) == 5
    assert all(e["data"]["transient"] for e in errors)


async def test_partner_500_then_200_and_410(
    tmp_path: Path, make_client: MakeClient, webhook_receivers: MakeReceiver
) -> None:
    flaky = webhook_receivers(secret=SECRET_TV, script="500,500,200")
    gone = webhook_receivers(secret=SECRET_NEWS, script="410")
    partners = {"partner-cq-tv": flaky.url, "partner-cq-news": gone.url}
    settings = load_settings(fanout_config(tmp_path, partners=partners), env_for(tmp_path))
    api = await make_client(settings)
    body = red_wanzhou("partners")
    await post_warning(api, body)
    state = await settled(api, body["id"])
    assert state["channels"]["webhook"]["delivered"] == 1
    assert state["channels"]["webhook"]["failed"] == 1
    ids = {r["webhook_id"] for r in flaky.requests()}
    assert ids == {f"{body['id']}/partner-cq-tv"}  # one id across the three attempts
    assert len(flaky.requests()) == 3
    assert len(gone.requests()) == 1  # 410 is final: not retried
    dead = await (
        await api.get(f"/v1/warnings/{body['id']}/deliveries?state=failed", headers=auth())
    ).json()
    assert [d["endpoint"] for d in dead["deliveries"]] == ["partner-cq-news"]
    assert "410" in dead["deliveries"][0]["detail"]["reason"] or "gone" in json.dumps(dead).lower()
    # A later warning does not call the disabled partner again.
    second = red_wanzhou("partners2")
    await post_warning(api, second)
    await settled(api, second["id"])
    assert len(gone.requests()) == 1


async def test_partner_timeout_is_retried(
    tmp_path: Path, make_client: MakeClient, webhook_receivers: MakeReceiver
) -> None:
    slow = webhook_receivers(secret=SECRET_TV, script="hang,200", hang_s=5)
    ok = webhook_receivers(secret=SECRET_NEWS)
    partners = {"partner-cq-tv": slow.url, "partner-cq-news": ok.url}
    config = fanout_config(
        tmp_path,
        partners=partners,
        channels={"webhook": "{retry: {attempts: 4, initial_s: 0.05, max_s: 0.1}}"},
    )
    endpoints = config / "endpoints.yaml"
    text = endpoints.read_text(encoding="utf-8").replace("timeout_s: 5", "timeout_s: 0.5")
    endpoints.write_text(text, encoding="utf-8")  # the partner's own timeout applies
    api = await make_client(load_settings(config, env_for(tmp_path)))
    body = red_wanzhou("timeout")
    await post_warning(api, body)
    state = await settled(api, body["id"])
    assert state["channels"]["webhook"]["delivered"] == 2
    attempts = [
        e
        for e in await ledger(api, body["id"])
        if e["stage"] == "attempt" and e["data"]["endpoint"] == "partner-cq-tv"
    ]
    assert len(attempts) == 2
    assert attempts[0]["data"]["transient"] is True


async def test_transient_failures_are_retried_until_expiry_then_dead_letters(
    tmp_path: Path, make_client: MakeClient, webhook_receivers: MakeReceiver
) -> None:
    """design.md "Delivery under faults": a warning is worth delivering until it expires;
    `attempts` bounds nothing, dead letters are permanent errors and expiry only."""
    down = webhook_receivers(secret=SECRET_TV, script="503", retry_after="")
    ok = webhook_receivers(secret=SECRET_NEWS)
    partners = {"partner-cq-tv": down.url, "partner-cq-news": ok.url}
    settings = load_settings(fanout_config(tmp_path, partners=partners), env_for(tmp_path))
    api = await make_client(settings)
    body = red_wanzhou("dead") | {"channels": ["webhook"]}
    body["expires_at"] = (datetime.now(UTC) + timedelta(seconds=4)).isoformat()
    await post_warning(api, body)
    state = await settled(api, body["id"])
    assert state["channels"]["webhook"] == {
        "planned": 2,
        "pending": 0,
        "sent": 0,
        "delivered": 1,
        "failed": 1,
        "stopped": 0,
    }
    assert len(down.requests()) > 6  # past the policy's `attempts: 6`
    failed = [e for e in await ledger(api, body["id"]) if e["stage"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["data"]["attempts"] == len(down.requests())
    assert failed[0]["data"]["error"] == "expired"
    assert "503" in failed[0]["data"]["reason"]
    resp = await api.get(f"/v1/warnings/{body['id']}/deliveries?state=failed", headers=auth())
    dead = await resp.json()
    assert [d["endpoint"] for d in dead["deliveries"]] == ["partner-cq-tv"]


async def test_broker_restart_mid_fanout_loses_nothing(
    tmp_path: Path, make_client: MakeClient, mosquitto: Mosquitto
) -> None:
    config = fanout_config(
        tmp_path,
        mqtt_url=mosquitto.url,
        channels={
            "mqtt": f"{{url: '{mosquitto.url}', concurrency: 2, "
            "retry: {attempts: 50, initial_s: 0.05, max_s: 0.3, jitter_s: 0.01}}"
        },
    )
    api = await make_client(load_settings(config, env_for(tmp_path)))
    body = red_wanzhou("broker")
    mosquitto.stop()
    await post_warning(api, body)
    await asyncio.sleep(0.3)
    mosquitto.start()
    state = await settled(api, body["id"], within=60)
    assert state["channels"]["mqtt"]["delivered"] == 98
    boards = await retained(mosquitto.url, "cq/warnings/#", expect=98)
    assert len(boards) == 98


async def test_board_ack_becomes_a_receipt(
    tmp_path: Path, make_client: MakeClient, mosquitto: Mosquitto
) -> None:
    config = fanout_config(tmp_path, mqtt_url=mosquitto.url)
    api = await make_client(load_settings(config, env_for(tmp_path)))
    body = warning_body(area={"townships": ["500103001"]}, channels=["mqtt"])
    await post_warning(api, body)
    await settled(api, body["id"])
    host, port = mosquitto.url.removeprefix("mqtt://").split(":")
    async with aiomqtt.Client(host, int(port)) as board:
        ack = {"warning_id": body["id"], "status": "displayed", "at": datetime.now(UTC).isoformat()}
        await board.publish("cq/warnings/ack/board-500103001", json.dumps(ack), qos=1)
    for _ in range(100):
        receipts = [e for e in await ledger(api, body["id"]) if e["stage"] == "receipt"]
        if receipts:
            break
        await asyncio.sleep(0.05)
    assert len(receipts) == 1
    assert receipts[0]["data"]["endpoint"] == "500103001-display"
    assert receipts[0]["data"]["source"] == "mqtt-ack"


A, B = "13800103001", "13900103001"  # the two phones of 七星岗街道's SMS group


@pytest.mark.parametrize(
    ("callbacks", "final"),
    [
        pytest.param(
            [("delivered", A, 1, "10:00:01"), ("delivered", B, 1, "10:00:02")],
            "delivered",
            id="every-phone-delivered",
        ),
        pytest.param(
            [("delivered", A, 1, "10:00:01")],
            "sent",
            id="one-phone-of-two-is-not-yet-delivered",
        ),
        pytest.param(
            [("undelivered", A, 1, "10:00:01"), ("delivered", B, 1, "10:00:05")],
            "failed",
            id="later-success-keeps-the-failure",
        ),
        pytest.param(
            [
                ("delivered", A, 1, "10:00:05"),
                ("failed", A, 1, "10:00:01"),
                ("delivered", B, 1, "10:00:02"),
            ],
            "delivered",
            id="ordered-by-provider-time",
        ),
        pytest.param(
            [("delivered", None, None, "10:00:05")],
            "delivered",
            id="whole-message-receipt",
        ),
    ],
)
async def test_sms_provider_callbacks_settle_deliveries(
    tmp_path: Path,
    make_client: MakeClient,
    callbacks: list[tuple[str, str | None, int | None, str]],
    final: str,
) -> None:
    from tests.sms_provider import SmsProviderProcess

    provider = SmsProviderProcess(tmp_path / "sms.jsonl").start()
    try:
        config = fanout_config(
            tmp_path, channels={"sms": f"{{provider: http, url: '{provider.url}'}}"}
        )
        api = await make_client(load_settings(config, env_for(tmp_path)))
        # Short enough for one segment, so one receipt per phone settles it.
        body = warning_body(area={"townships": ["500103001"]}, channels=["sms"], content="暴雨")
        await post_warning(api, body)
        state = await settled(api, body["id"], allow_sent=True)
        assert state["channels"]["sms"]["sent"] == 1
        did = f"{body['id']}/500103001-sms"
        sent = datetime.now(UTC)  # callbacks are dated after the send (design.md "Trust")
        for status, phone, part, hms in callbacks:
            at = sent + timedelta(seconds=int(hms.rsplit(":", 1)[1]))
            doc: dict[str, object] = {"message_id": did, "status": status, "at": at.isoformat()}
            if phone:
                doc |= {"phone": phone, "part": part}
            resp = await api.post("/v1/receipts", json=doc, headers=auth("sms-provider"))
            assert resp.status == 202, await resp.text()
        deliveries = await (
            await api.get(f"/v1/warnings/{body['id']}/deliveries", headers=auth())
        ).json()
        assert deliveries["deliveries"][0]["detail"]["segments"] == 1
        assert deliveries["deliveries"][0]["state"] == final
        receipts = [e for e in await ledger(api, body["id"]) if e["stage"] == "receipt"]
        assert len(receipts) == len(callbacks)
    finally:
        provider.stop()


async def test_receipts_need_a_token_and_a_known_delivery(
    tmp_path: Path, make_client: MakeClient
) -> None:
    api = await make_client(load_settings(fanout_config(tmp_path), env_for(tmp_path)))
    doc = {"message_id": "nope/x", "status": "delivered", "at": "2026-11-24T10:00:00+08:00"}
    assert (await api.post("/v1/receipts", json=doc)).status == 401
    headers = auth("sms-provider")
    resp = await api.post("/v1/receipts", json=doc, headers=headers)
    assert resp.status == 404
    bad = await api.post("/v1/receipts", json={"message_id": 1, "status": "x"}, headers=headers)
    assert bad.status == 400
    fields = {e["field"] for e in (await bad.json())["errors"]}
    assert {"message_id", "status", "at"} <= fields
    not_json = await api.post("/v1/receipts", data=b"{oops", headers=headers)
    assert not_json.status == 400
    assert (await not_json.json())["code"] == "invalid_receipt"
    ack = await api.post(
        "/v1/receipts", json={"delivery_id": "w/x", "status": "lost"}, headers=headers
    )
    assert ack.status == 400
    assert "status" in {e["field"] for e in (await ack.json())["errors"]}
    unknown = await api.post("/v1/receipts", json={"delivery_id": "w/x"}, headers=auth("cqtv"))
    assert unknown.status == 404
    assert (await unknown.json())["code"] == "unknown_delivery"


async def test_partner_disabled_by_410_stays_disabled_across_restarts_until_enabled(
    tmp_path: Path, make_client: MakeClient, webhook_receivers: MakeReceiver
) -> None:
    """design.md: a partner disabled by 410 stays disabled across restarts until
    `gateway partners enable ID`."""
    from tests.processes import run_gateway

    tv = webhook_receivers(secret=SECRET_TV)
    gone = webhook_receivers(secret=SECRET_NEWS, script="410")
    config = fanout_config(
        tmp_path, partners={"partner-cq-tv": tv.url, "partner-cq-news": gone.url}
    )
    env = env_for(tmp_path)
    first = await make_client(load_settings(config, env))
    body = red_wanzhou("gone") | {"channels": ["webhook"]}
    await post_warning(first, body)
    await settled(first, body["id"])
    assert len(gone.requests()) == 1
    await first.close()  # the gateway stops; a new one starts on the same store

    second = await make_client(load_settings(config, env))
    again = red_wanzhou("gone-again") | {"channels": ["webhook"]}
    await post_warning(second, again)
    state = await settled(second, again["id"])
    assert state["channels"]["webhook"]["failed"] == 1
    assert len(gone.requests()) == 1  # still disabled after the restart
    await second.close()

    cli_env = {**env, "GATEWAY_CONFIG": str(config)}
    enabled = run_gateway("partners", "enable", "partner-cq-news", env=cli_env, cwd=tmp_path)
    assert enabled.returncode == 0, enabled.stderr
    assert "partner-cq-news enabled" in enabled.stdout
    twice = run_gateway("partners", "enable", "partner-cq-news", env=cli_env, cwd=tmp_path)
    assert twice.returncode == 1
    assert "was not disabled" in twice.stderr

    third = await make_client(load_settings(config, env))
    last = red_wanzhou("gone-enabled") | {"channels": ["webhook"]}
    await post_warning(third, last)
    await settled(third, last["id"])
    assert len(gone.requests()) == 2  # called again once enabled


async def test_partners_get_warning_expired(
    tmp_path: Path, make_client: MakeClient, webhook_receivers: MakeReceiver
) -> None:
    """design.md: partners get `warning.cancel` and `warning.expired` webhooks."""

    tv = webhook_receivers(secret=SECRET_TV)
    news = webhook_receivers(secret=SECRET_NEWS)
    config = fanout_config(
        tmp_path, partners={"partner-cq-tv": tv.url, "partner-cq-news": news.url}
    )
    api = await make_client(load_settings(config, env_for(tmp_path)))
    body = red_wanzhou("expiring") | {"channels": ["webhook"]}
    body["expires_at"] = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    await post_warning(api, body)
    for _ in range(100):
        if len(tv.requests()) >= 2 and len(news.requests()) >= 2:
            break
        await asyncio.sleep(0.1)
    for receiver in (tv, news):
        reqs = receiver.requests()
        assert len(reqs) == 2, reqs
        assert all(r["verified"] for r in reqs)  # with the stock standardwebhooks library
        docs = [json.loads(r["body"]) for r in reqs]
        assert [d["type"] for d in docs] == ["warning.alert", "warning.expired"]
        assert docs[1]["data"]["id"] == body["id"]
        assert str(reqs[1]["webhook_id"]).startswith(f"{body['id']}/expired/")
    # The partner answered before the gateway recorded the outcome: wait for the record.
    for _ in range(100):
        state = await (await api.get(f"/v1/warnings/{body['id']}", headers=auth())).json()
        notices = state.get("expiry_notices", {}).get("webhook", {})
        if not notices.get("pending") and not notices.get("sent"):
            break
        await asyncio.sleep(0.05)
    assert state["status"] == "expired"
    assert state["expiry_notices"]["webhook"]["delivered"] == 2
