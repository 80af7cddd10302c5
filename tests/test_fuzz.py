"""Generated hostile input over HTTP: no body is a 5xx, and a warning answered 202 is one every
adapter can carry (design.md, "Warning": every string valid Unicode, a one-line visible title,
sent_at within `ingest.sent_window_s`, expires_at at most `ingest.max_validity_days` later;
"Channels": MQTT's message expiry is 32 bits, the email Subject carries the title; art. 14).

Bounded (150 examples each, no deadline) so the module runs in well under 30 s; the example
database is off so nothing is written into the repository.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.text import one_line, visible
from tests.conftest import GatewayClient
from tests.helpers import auth, warning_body

MQTT_MAX_EXPIRY_S = 2**32 - 1
JSON = {**auth(), "Content-Type": "application/json"}
STATUSES: dict[int, int] = {}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
NASTY = [
    "\ud800",
    "\udfff",
    "a\udc00b",
    "\x00",
    "\r\n",
    "\n",
    "\u2028",
    "\u2029",
    "\x85",
    "\x1b[2J",
    "\u202e",
    "\u200b",
    "\ufeff",
    "",
    " ",
    "\t",
    "𠀀",
]
ODD_TIMES = [
    "9999-12-31T23:59:59-12:00",
    "9999-12-31T23:59:59+00:00",
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00+00:00",
    "2999-01-01T00:00:00+08:00",
    "2026-13-01T00:00:00Z",
    "2026-01-01T00:00:00",
    "not a time",
]

texts = (
    st.text(max_size=30)
    | st.sampled_from(NASTY)
    | st.lists(st.sampled_from(NASTY) | st.text(max_size=5), max_size=5).map("".join)
)
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
times = (
    st.sampled_from(ODD_TIMES)
    | st.builds(
        lambda dt, tz: dt.replace(tzinfo=tz).isoformat(),
        st.datetimes(),
        offsets,
    )
    | st.builds(
        lambda s, tz: (datetime.now(UTC) + timedelta(seconds=s)).astimezone(tz).isoformat(),
        st.integers(-40 * 86400, 40 * 86400),
        offsets,
    )
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
    | times
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
WARNING_FIELDS = [
    "id",
    "msg_type",
    "references",
    "issuer",
    "issuer.unit",
    "issuer.role",
    "issuer.district",
    "approval",
    "approval.approved_by",
    "approval.approved_at",
    "approval.higher_approval",
    "category",
    "hazard",
    "level",
    "title",
    "content",
    "measures",
    "development",
    "contact_phone",
    "sent_at",
    "onset_at",
    "expires_at",
    "area",
    "area.districts",
    "area.townships",
    "area.description",
    "audience",
    "channels",
    "joint_issuers",
    "reason",
    "impact",
]
near_now = st.builds(
    lambda s, tz: (datetime.now(UTC) + timedelta(seconds=s)).astimezone(tz).isoformat(),
    st.integers(-20 * 60, 20 * 60),
    offsets,
)
readable = st.text(st.characters(categories=["L", "N", "P", "Zs"]), min_size=1, max_size=40)
later = st.builds(
    lambda s: (datetime.now(UTC) + timedelta(seconds=s)).isoformat(),
    st.integers(-3600, 40 * 86400),
)
# Wild changes to any field, or plausible ones to the fields whose bounds matter downstream
# (so that some bodies are accepted and their deliverability is checked).
mutations = st.dictionaries(st.sampled_from(WARNING_FIELDS) | texts, values, max_size=4) | (
    st.fixed_dictionaries(
        {},
        optional={
            "sent_at": near_now,
            "expires_at": later | times,
            "onset_at": near_now | times,
            "title": readable | texts,
            "content": readable | texts,
            "measures": readable | texts,
        },
    )
)
deep = st.integers(1, 5000).map(lambda n: ("[" * n + "]" * n).encode())


def _mutated(changes: dict[str, Any]) -> dict[str, Any]:
    body = warning_body()
    for path, value in changes.items():
        *parents, last = path.split(".")
        node: Any = body
        for key in parents:
            node = node.setdefault(key, {}) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[last] = value
    return body


async def _assert_deliverable(api: GatewayClient, wid: str) -> None:
    """What an adapter will do with the stored warning does not overflow or break a header."""
    resp = await api.get(f"/v1/warnings/{wid}", headers=auth())
    warning = (await resp.json())["warning"]
    expires = datetime.fromisoformat(warning["expires_at"])
    left = (expires - datetime.now(UTC)).total_seconds()
    assert 0 < left <= MQTT_MAX_EXPIRY_S
    expires.astimezone(timezone(timedelta(hours=8)))  # the email body's Beijing time
    assert one_line(warning["title"])
    assert visible(warning["title"])
    mail = EmailMessage()
    mail["Subject"] = f"【黄色预警】{warning['title']}"  # raises on a header injection
    assert mail["Subject"]


@FUZZ
@given(changes=mutations)
@example(changes={})
@example(changes={"expires_at": "9999-12-31T23:59:59-12:00"})
@example(changes={"title": "\u200b\u202e"})
async def test_generated_warning_bodies_never_get_a_5xx(
    api: GatewayClient, changes: dict[str, Any]
) -> None:
    body = _mutated(changes)
    resp = await api.post("/v1/warnings", data=json.dumps(body), headers=JSON)
    assert resp.status < 500, (body, await resp.text())
    STATUSES[resp.status] = STATUSES.get(resp.status, 0) + 1
    if resp.status == 202:
        await _assert_deliverable(api, body["id"])


@FUZZ
@given(raw=deep | st.binary(max_size=200) | values.map(lambda v: json.dumps(v).encode()))
async def test_generated_raw_bodies_never_get_a_5xx(api: GatewayClient, raw: bytes) -> None:
    """Deeply nested JSON, bytes that are not UTF-8, JSON that is not an object."""
    for path in ("/v1/warnings", "/v1/receipts"):
        resp = await api.post(path, data=raw, headers=JSON)
        assert resp.status < 500, (path, raw[:100], await resp.text())


RECEIPT_BASES: list[dict[str, Any]] = [
    {"message_id": "m-1", "status": "delivered", "at": datetime.now(UTC).isoformat()},
    {"delivery_id": "d-1", "status": "delivered"},
    {"warning_id": "w-1", "township": "500103001", "means": "鸣锣", "by": "张三", "at": "x"},
]


@FUZZ
@given(
    base=st.sampled_from(RECEIPT_BASES),
    changes=st.dictionaries(
        st.sampled_from(
            [
                *("message_id", "status", "at", "phone", "part", "error", "delivery_id"),
                *("detail", "warning_id", "township", "means", "by", "note"),
            ]
        )
        | texts,
        values,
        max_size=4,
    ),
)
async def test_generated_receipts_never_get_a_5xx(
    api: GatewayClient, base: dict[str, Any], changes: dict[str, Any]
) -> None:
    receipt = {**base, **changes}
    resp = await api.post("/v1/receipts", data=json.dumps(receipt), headers=JSON)
    assert resp.status < 500, (receipt, await resp.text())
