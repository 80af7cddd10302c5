"""`gateway drill`: the whole flow in one process, on embedded sinks.

Starts an in-process MQTT broker (amqtt, MQTT 3.1.1), an SMTP sink (aiosmtpd), one webhook
receiver per media partner that verifies every signature, and uses the SMS stub; boards and
loudspeakers are simulated by a client that acknowledges each retained message. The gateway runs
on a free loopback port with a throw-away store. The drill posts the sample red warning for
万州区 through the real HTTP API, waits for every delivery to settle, checks the sinks got what
the ledger says was delivered, verifies the ledger, and prints per channel planned / delivered /
failed and which townships were reached. Exit code 1 when anything was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiomqtt
from aiohttp import ClientSession, ClientTimeout, web

from gateway.app import build_app
from gateway.channels import mqtt
from gateway.clients import Client
from gateway.config import Settings, load_settings
from gateway.drill.samples import red_rainstorm_wanzhou
from gateway.drill.sinks.mqtt_broker import EmbeddedBroker
from gateway.drill.sinks.smtp_sink import SmtpSink
from gateway.drill.sinks.webhook_receiver import WebhookSink, new_secret
from gateway.endpoints import EndpointBook
from gateway.exceptions import LedgerCorrupt
from gateway.ingest import utc_now
from gateway.ledger import verify
from gateway.store import open_store
from gateway.townships import Registry
from gateway.values import Endpoint

HTTP_TIMEOUT = ClientTimeout(total=30)
SETTLE_TIMEOUT_S = 60.0
POLL_S = 0.1
FAST_RETRY = {"attempts": 5, "initial_s": 0.2, "max_s": 2.0, "jitter_s": 0.1}


def run_drill(config_dir: Path | None, *, as_json: bool) -> int:
    """Run the drill in a throw-away directory; the exit code of `gateway drill`."""
    with tempfile.TemporaryDirectory(prefix="gateway-drill-") as tmp:
        db = Path(tmp).resolve() / "drill.db"
        return asyncio.run(_drill(config_dir, db, as_json=as_json))


DRILL_CHANNELS: dict[str, dict[str, object]] = {
    "sms": {"provider": "stub"},
    "email": {"starttls": False},
    "mqtt": {"protocol": "3.1.1"},  # amqtt, the embedded broker, speaks 3.1.1
    "webhook": {},
}
"""What the drill sets, beside `enabled`, fast retries and its sinks' URLs."""


def _drill_settings(base: Settings, db: Path, token: str, broker: str, smtp: str) -> Settings:
    urls = {"email": {"url": smtp}, "mqtt": {"url": broker}}
    channels = dict(base.channels)
    for name, update in DRILL_CHANNELS.items():
        cs = channels[name]
        retry = cs.retry.model_copy(update=FAST_RETRY)
        changes = {**update, **urls.get(name, {}), "enabled": True, "retry": retry}
        channels[name] = cs.model_copy(update=changes)
    return replace(
        base,
        store_url=f"sqlite:///{db}",
        clients=(Client("drill", token),),
        channels=channels,
        env={},  # no secret of the deployment: its sinks need none
    )


def _prefix(settings: Settings) -> str:
    return mqtt.SPEC.options_of(settings.channels["mqtt"]).prefix


async def _drill(config_dir: Path | None, db: Path, *, as_json: bool) -> int:
    token = secrets.token_urlsafe(24)
    base = load_settings(config_dir, listen="127.0.0.1:0")
    registry = Registry.load(base.townships_path)
    book = EndpointBook.load(base.endpoints_path, registry, {})
    partners = [e for e in book.by_id.values() if e.channel == "webhook"]
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(EmbeddedBroker())
        smtp = await stack.enter_async_context(SmtpSink())
        sinks: dict[str, WebhookSink] = {}
        changes: dict[str, Endpoint] = {}
        for p in partners:
            secret = new_secret()
            sinks[p.id] = await stack.enter_async_context(WebhookSink(secret))
            changes[p.id] = replace(p, target=sinks[p.id].url + "/warnings", secret=secret)
        book = book.replace_endpoints(changes)
        settings = _drill_settings(base, db, token, broker.url, smtp.url)
        boards = asyncio.create_task(_boards(broker.url, _prefix(settings), book))
        app = build_app(settings, book=book)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            summary = await _drive(f"http://127.0.0.1:{port}", token, book)
        finally:
            boards.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await boards
            await runner.cleanup()
        summary["sinks"] = {
            "email": len(smtp.messages),
            "webhook": sum(1 for s in sinks.values() for r in s.received if r.verified),
            "webhook_unverified": sum(
                1 for s in sinks.values() for r in s.received if not r.verified
            ),
        }
    async with open_store(settings.store_url) as store:
        try:
            await verify(store.ledger())
            summary["ledger_ok"] = True
        except LedgerCorrupt:
            summary["ledger_ok"] = False
    ok = _check(summary)
    if as_json:
        out = {k: summary[k] for k in ("warning_id", "channels", "lost", "ledger_ok")}
        print(json.dumps(out, ensure_ascii=False))
    else:
        _print(summary, registry)
    return 0 if ok else 1


async def _boards(url: str, prefix: str, book: EndpointBook) -> None:
    """Simulated boards and loudspeakers: acknowledge every retained warning they receive."""
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    while True:
        try:
            async with aiomqtt.Client(host, int(port), protocol=aiomqtt.ProtocolVersion.V311) as c:
                await c.subscribe(f"{prefix}/+/+/+/+", qos=1)
                async for msg in c.messages:
                    if not msg.payload:
                        continue
                    *_, township, kind, warning_id = str(msg.topic).split("/")
                    endpoint = book.by_id.get(f"{township}-{kind}")
                    for device in endpoint.devices if endpoint else ():
                        ack = {
                            "warning_id": warning_id,
                            "status": "displayed",
                            "at": utc_now().isoformat(),
                        }
                        await c.publish(f"{prefix}/ack/{device}", json.dumps(ack), qos=1)
        except aiomqtt.MqttError:
            await asyncio.sleep(POLL_S)


async def _drive(base_url: str, token: str, book: EndpointBook) -> dict[str, Any]:
    wid = f"drill-{utc_now():%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    warning = red_rainstorm_wanzhou(utc_now(), wid)
    headers = {"Authorization": f"Bearer {token}"}
    async with ClientSession(base_url, timeout=HTTP_TIMEOUT, headers=headers) as http:
        async with http.post("/v1/warnings", json=warning) as resp:
            answer = await resp.json()
            status = resp.status
        state: dict[str, Any] = {"channels": {}}
        deliveries: list[dict[str, Any]] = []
        receipts: list[dict[str, Any]] = []
        if status == 202:
            state, deliveries, receipts = await _settle(http, wid)
    counts = {
        name: {k: c.get(k, 0) for k in ("planned", "delivered", "failed")}
        for name, c in state["channels"].items()
    }
    escalations = {
        name: {k: c.get(k, 0) for k in ("planned", "delivered", "failed")}
        for name, c in state.get("escalations", {}).items()
    }
    lost = sum(
        c["planned"] - c["delivered"] - c["failed"]
        for c in [*counts.values(), *escalations.values()]
    )
    reached = sorted(
        {
            t
            for d in deliveries
            if d["state"] == "delivered"
            and (e := book.by_id.get(d["endpoint"])) is not None
            and e.covers_townships
            for t in e.townships
        }
    )
    return {
        "warning_id": wid,
        "title": warning["title"],
        "http_status": status,
        "answer": answer,
        "accepted": status == 202,
        "channels": counts,
        "lost": lost if status == 202 else 1,
        "escalations": escalations,
        "reached": reached,
        "blind_spots": answer.get("blind_spots", []),
        "acks": sum(1 for r in receipts if r["data"].get("source") == "mqtt-ack"),
        "ledger": receipts,
    }


async def _settle(
    http: ClientSession, wid: str
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Wait until no delivery is open and every MQTT delivery was acknowledged (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_TIMEOUT_S
    while True:
        async with http.get(f"/v1/warnings/{wid}") as resp:
            state: dict[str, Any] = await resp.json()
        async with http.get(f"/v1/warnings/{wid}/receipts") as resp:
            entries: list[dict[str, Any]] = (await resp.json())["entries"]
        groups = [*state["channels"].values(), *state.get("escalations", {}).values()]
        open_ = sum(c["pending"] + c["sent"] for c in groups)
        acks = sum(1 for e in entries if e["data"].get("source") == "mqtt-ack")
        mqtt = state["channels"].get("mqtt", {}).get("delivered", 0)
        if (open_ == 0 and acks >= mqtt) or loop.time() > deadline:
            break
        await asyncio.sleep(POLL_S)
    async with http.get(f"/v1/warnings/{wid}/deliveries") as resp:
        deliveries: list[dict[str, Any]] = (await resp.json())["deliveries"]
    return state, deliveries, entries


def _check(s: dict[str, Any]) -> bool:
    """Everything accepted was delivered, and the sinks got what the ledger says."""
    channels = s["channels"]
    sinks = s["sinks"]
    emails = channels.get("email", {}).get("delivered", 0)
    emails += s["escalations"].get("email", {}).get("delivered", 0)
    return bool(
        s["accepted"]
        and s["ledger_ok"]
        and s["lost"] == 0
        and sinks["email"] == emails
        and sinks["webhook"] == channels.get("webhook", {}).get("delivered", 0)
        and sinks["webhook_unverified"] == 0
    )


def _print(s: dict[str, Any], registry: Registry) -> None:
    print(f"drill warning {s['warning_id']}: {s['title']}")
    print(f"  POST /v1/warnings -> {s['http_status']}, {s['answer'].get('deliveries')} deliveries")
    print(f"  {'channel':<8} {'planned':>8} {'delivered':>10} {'failed':>7}")
    for name, c in sorted(s["channels"].items()):
        print(f"  {name:<8} {c['planned']:>8} {c['delivered']:>10} {c['failed']:>7}")
    sinks = s["sinks"]
    print(
        f"  sinks: {sinks['email']} emails received, {sinks['webhook']} webhooks verified, "
        f"{s['acks']} board/loudspeaker acks"
    )
    names = [registry.name(t) for t in s["reached"]]
    print(f"  townships reached: {len(names)}: {'、'.join(names)}")
    blind = [f"{registry.name(t)} ({t})" for t in s["blind_spots"]]
    print(f"  blind spots (no endpoint): {len(blind)}: {'、'.join(blind) or '-'}")
    sent = sum(c["delivered"] for c in s["escalations"].values())
    print(f"  escalated to command centres: {sent} message(s) delivered")
    print(f"  ledger: {len(s['ledger'])} entries, chain {'ok' if s['ledger_ok'] else 'BROKEN'}")
    print(f"  lost: {s['lost']}")
