"""Board acks of the MQTT channel: `{prefix}/ack/{device_id}` carrying JSON
`{"warning_id": ..., "status": "delivered"|"displayed"|"played"|"failed", "at": ISO-8601}`
(`status` defaults to delivered, `at` to the arrival time), read into `Receipt`s."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime

from gateway.values import Receipt

log = logging.getLogger("gateway.channels.mqtt")

ACK_STATUSES = {
    "delivered": "delivered",
    "displayed": "delivered",
    "played": "delivered",
    "failed": "failed",
}
RECEIPT_SOURCE = "mqtt-ack"


def parse_ack(
    topic: str, payload: bytes, ack_prefix: str, devices: Mapping[str, str]
) -> Receipt | None:
    """The Receipt of one ack, or None (logged) when it is malformed. `devices` maps a board's
    device id to its endpoint's id; an unknown device's ack has no endpoint."""
    device_id = topic.removeprefix(ack_prefix)
    try:
        data = json.loads(payload.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        warning_id = data.get("warning_id")
        if not isinstance(warning_id, str) or not warning_id:
            raise ValueError("warning_id missing")
        given = data.get("status", "delivered")
        status = ACK_STATUSES.get(given) if isinstance(given, str) else None
        if status is None:
            raise ValueError("unknown status")
        at = _parse_at(data.get("at"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError included
        log.warning("dropped malformed MQTT ack from device %s: %s", device_id, exc)
        return None
    endpoint_id = devices.get(device_id)
    if endpoint_id is None:
        log.info("MQTT ack from unknown device %s for warning %s", device_id, warning_id)
    return Receipt(
        status=status,
        at=at,
        source=RECEIPT_SOURCE,
        warning_id=warning_id,
        endpoint_id=endpoint_id,
        detail={"device_id": device_id},
    )


def _parse_at(value: object) -> datetime:
    if value is None:
        return datetime.now(UTC)
    if not isinstance(value, str):
        raise ValueError("at is not a string")
    at = datetime.fromisoformat(value)
    if at.tzinfo is None:
        raise ValueError("at has no UTC offset")
    return at
