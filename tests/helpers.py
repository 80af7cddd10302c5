"""Shared test data: a valid warning body that tests change one field at a time."""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway import clients

TOKENS = {
    "platform": "tok-platform-0123456789",
    "wanzhou": "tok-wanzhou-0123456789",
    "duty": "tok-duty-0123456789",
    "yuzhong": "tok-yuzhong-0123456789",
    "reader": "tok-reader-0123456789",
    "sms-provider": "tok-sms-provider-0123456789",
    "cqtv": "tok-cqtv-0123456789",
}
REPO_CONFIG_GATEWAY_YAML = """
listen: 127.0.0.1:0
store: sqlite:///unused.db
clients:
  platform: {}
  wanzhou: {districts: ["500101"]}
  duty: {temporary_release: true}
  yuzhong: {districts: ["500103"]}
  reader: {scopes: [read]}
  sms-provider: {scopes: [sms_callbacks]}
  cqtv: {scopes: [partner_acks], partners: [partner-cq-tv]}
channels:   # ingest tests: only the stub SMS provider, no network
  sms: {provider: stub}
  email: {enabled: false}
  mqtt: {enabled: false}
  webhook: {enabled: false}
"""
_ids = itertools.count(1)


def token_env() -> dict[str, str]:
    """GATEWAY_TOKEN_<CLIENT> of every test client."""
    return {clients.token_env(name): token for name, token in TOKENS.items()}


def auth(client: str = "platform") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[client]}"}


def iso(dt: datetime) -> str:
    return dt.isoformat()


def warning_body(**changes: Any) -> dict[str, Any]:
    """A valid level-3 暴雨 warning by 重庆气象局 for 渝中区; `changes` replace top-level keys
    (a value of None removes the key)."""
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "id": f"w-{next(_ids)}-{now.timestamp():.6f}",
        "issuer": {"unit": "重庆市气象台", "role": "重庆气象局"},
        "approval": {
            "approved_by": "重庆气象局值班领导",
            "approved_at": iso(now - timedelta(minutes=10)),
            "ref": "渝气预〔2026〕12号",
        },
        "category": "natural_disaster",
        "hazard": "暴雨",
        "level": 3,
        "title": "重庆市气象台发布暴雨黄色预警信号",
        "content": "预计未来6小时内渝中区降雨量将达50毫米以上。",
        "sent_at": iso(now - timedelta(minutes=1)),
        "expires_at": iso(now + timedelta(hours=6)),
        "area": {"districts": ["500103"]},
    }
    for key, value in copy.deepcopy(changes).items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def district_issuer(
    role: str, district: str = "500101", unit: str = "万州区某单位"
) -> dict[str, str]:
    return {"unit": unit, "role": role, "district": district}
