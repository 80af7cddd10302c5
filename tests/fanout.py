"""Building blocks of the fan-out tests: a config dir pointing at real servers, polling helpers."""

from __future__ import annotations

import asyncio
import base64
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config import REPO_CONFIG
from tests.conftest import GatewayClient
from tests.helpers import auth

SECRET_TV = "whsec_" + base64.b64encode(b"tv-secret-0123456789abcdef0123").decode()
SECRET_NEWS = "whsec_" + base64.b64encode(b"news-secret-0123456789abcdef01").decode()
SAMPLE_BLIND_SPOTS = ["500101239", "500101244", "500101247"]
WANZHOU_COVERED = 52 - len(SAMPLE_BLIND_SPOTS)

FAST_RETRY = "retry: {attempts: 6, initial_s: 0.05, max_s: 0.2, jitter_s: 0.01}"


def fanout_config(
    dest: Path,
    *,
    mqtt_url: str | None = None,
    smtp_url: str | None = None,
    partners: Mapping[str, str] | None = None,
    extra: str = "",
    channels: Mapping[str, str] | None = None,
) -> Path:
    """The shipped config with real servers' addresses, fast retries and test clients.

    `partners` maps the sample partner ids to receiver URLs; `channels` gives a channel's YAML
    body (e.g. `{"sms": "{provider: stub}"}`); channels without a server are disabled.
    """
    out = dest / "config"
    shutil.copytree(REPO_CONFIG, out)
    body = {
        "sms": f"{{provider: stub, {FAST_RETRY}}}",
        "email": f"{{url: '{smtp_url}', {FAST_RETRY}}}" if smtp_url else "{enabled: false}",
        "mqtt": f"{{url: '{mqtt_url}', {FAST_RETRY}}}" if mqtt_url else "{enabled: false}",
        "webhook": f"{{timeout_s: 2, {FAST_RETRY}}}" if partners else "{enabled: false}",
    }
    body.update(channels or {})
    lines = [
        "listen: 127.0.0.1:0",
        "clients:",
        "  platform: {}",
        "  sms-provider: {scopes: [sms_callbacks]}",
        "  cqtv: {scopes: [partner_acks], partners: [partner-cq-tv]}",
        "channels:",
        *(f"  {name}: {value}" for name, value in body.items()),
        "breaker: {failures: 50, cooldown_s: 0.2}",
        extra,
    ]
    (out / "gateway.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if partners:
        text = (out / "endpoints.yaml").read_text(encoding="utf-8")
        text = text.replace("http://127.0.0.1:8701/warnings", partners["partner-cq-tv"])
        text = text.replace("http://127.0.0.1:8702/warnings", partners["partner-cq-news"])
        (out / "endpoints.yaml").write_text(text, encoding="utf-8")
    return out


def partner_env() -> dict[str, str]:
    return {
        "GATEWAY_WEBHOOK_SECRET_CQ_TV": SECRET_TV,
        "GATEWAY_WEBHOOK_SECRET_CQ_NEWS": SECRET_NEWS,
    }


async def post_warning(api: GatewayClient, body: dict[str, Any]) -> dict[str, Any]:
    resp = await api.post("/v1/warnings", json=body, headers=auth())
    answer: dict[str, Any] = await resp.json()
    assert resp.status == 202, answer
    return answer


async def settled(
    api: GatewayClient, warning_id: str, *, within: float = 30, allow_sent: bool = False
) -> dict[str, Any]:
    """The warning's state once no delivery is pending (nor `sent`, unless allowed)."""
    open_states = ("pending",) if allow_sent else ("pending", "sent")
    deadline = asyncio.get_running_loop().time() + within
    while True:
        state: dict[str, Any] = await (
            await api.get(f"/v1/warnings/{warning_id}", headers=auth())
        ).json()
        left = sum(c.get(s, 0) for c in state["channels"].values() for s in open_states)
        if left == 0:
            return state
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"deliveries still open after {within}s: {state['channels']}")
        await asyncio.sleep(0.05)


async def ledger(api: GatewayClient, warning_id: str) -> list[dict[str, Any]]:
    doc = await (await api.get(f"/v1/warnings/{warning_id}/receipts", headers=auth())).json()
    entries: list[dict[str, Any]] = doc["entries"]
    return entries
