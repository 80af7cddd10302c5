"""Input sanity at the edge: valid Unicode, one-line visible titles, control characters, and the
time window of a new warning (design.md, "Warning"; art. 14 lists what a warning holds: 发布时间,
起始时间, 预警级别, 警示事项 ...). Every case is a 400 naming the field, never a 500 and never a
202 that an adapter then fails on (MQTT's 32-bit expiry, an email Subject, an email date)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.cap.read import cap_to_document
from gateway.config import load_settings
from gateway.exceptions import ConfigError, InvalidWarning
from gateway.model import DEFAULT_MAX_VALIDITY_DAYS, DEFAULT_SENT_FUTURE_S, DEFAULT_SENT_PAST_S
from gateway.text import in_utc, one_line, unicode_errors, visible
from tests.conftest import GatewayClient, MakeClient
from tests.helpers import REPO_CONFIG_GATEWAY_YAML, auth, iso, warning_body

LONE = "\ud800"
Change = Callable[[datetime], dict[str, Any]]


def _approval(**over: Any) -> Change:
    return lambda now: {
        "approval": {
            "approved_by": "重庆气象局值班领导",
            "approved_at": iso(now - timedelta(minutes=10)),
            **over,
        }
    }


BAD_WARNINGS = [
    # design.md: every string of a body, key or value, valid Unicode.
    pytest.param(lambda now: {"title": f"暴雨{LONE}预警"}, "title", id="surrogate-title"),
    pytest.param(lambda now: {"content": f"{LONE}"}, "content", id="surrogate-content"),
    pytest.param(
        lambda now: {"issuer": {"unit": LONE, "role": "重庆气象局"}},
        "issuer.unit",
        id="surrogate-nested",
    ),
    pytest.param(
        lambda now: {"area": {"districts": ["500103"], "description": f"a{LONE}"}},
        "area.description",
        id="surrogate-area-description",
    ),
    pytest.param(
        lambda now: {"area": {"districts": ["500103", "\udc00"]}},
        "area.districts[1]",
        id="surrogate-in-list",
    ),
    pytest.param(lambda now: {f"x{LONE}": 1}, "x\\ud800", id="surrogate-key"),
    pytest.param(_approval(ref=LONE), "approval.ref", id="surrogate-approval-ref"),
    # Title: one line with visible text (it is the email Subject).
    pytest.param(lambda now: {"title": "暴雨\r\nBcc: x@example.org"}, "title", id="title-crlf"),
    pytest.param(lambda now: {"title": "暴雨\n预警"}, "title", id="title-lf"),
    pytest.param(lambda now: {"title": "暴雨\u2028预警"}, "title", id="title-u2028"),
    pytest.param(lambda now: {"title": "暴雨\u2029预警"}, "title", id="title-u2029"),
    pytest.param(lambda now: {"title": "暴雨\x85预警"}, "title", id="title-nel"),
    pytest.param(lambda now: {"title": "暴雨\t预警"}, "title", id="title-tab"),
    pytest.param(lambda now: {"title": "\u200b\u200c\u200d\ufeff"}, "title", id="title-zero-width"),
    pytest.param(lambda now: {"title": "\u202e\u202d\u2066\u2069"}, "title", id="title-bidi-only"),
    pytest.param(lambda now: {"title": "\u3000\u2800\u3164"}, "title", id="title-blank-letters"),
    pytest.param(lambda now: {"title": "\u0301\u0302"}, "title", id="title-marks-only"),
    # Other text: no C0/C1 controls but LF and tab.
    pytest.param(lambda now: {"content": "暴雨\x00预警"}, "content", id="content-nul"),
    pytest.param(lambda now: {"content": "暴雨\x1b[31m预警"}, "content", id="content-escape"),
    pytest.param(lambda now: {"measures": "\x9b预警"}, "measures", id="measures-c1"),
    pytest.param(
        lambda now: {"issuer": {"unit": "气象\n台", "role": "重庆气象局"}},
        "issuer.unit",
        id="issuer-unit-newline",
    ),
    pytest.param(lambda now: {"hazard": "暴\n雨"}, "hazard", id="hazard-newline"),
    # Times: a new id's sent_at within ingest.sent_window_s of now.
    pytest.param(
        lambda now: {"sent_at": iso(now - timedelta(hours=2))}, "sent_at", id="sent-2h-ago"
    ),
    pytest.param(
        lambda now: {"sent_at": iso(now + timedelta(minutes=10))}, "sent_at", id="sent-10min-ahead"
    ),
    pytest.param(
        lambda now: {"sent_at": "9999-12-31T23:59:59-12:00"}, "sent_at", id="sent-9999-minus-12h"
    ),
    pytest.param(
        lambda now: {"sent_at": "0001-01-01T00:00:00+14:00"}, "sent_at", id="sent-0001-plus-14h"
    ),
    pytest.param(lambda now: {"sent_at": "9999-12-31T23:59:59+00:00"}, "sent_at", id="sent-9999"),
    # expires_at after sent_at, at most ingest.max_validity_days later.
    pytest.param(
        lambda now: {"expires_at": "2999-01-01T00:00:00+08:00"}, "expires_at", id="expires-2999"
    ),
    pytest.param(
        lambda now: {"expires_at": "9999-12-31T23:59:59-12:00"},
        "expires_at",
        id="expires-9999-minus-12h",
    ),
    pytest.param(
        lambda now: {"expires_at": iso(now + timedelta(days=31))},
        "expires_at",
        id="expires-31-days",
    ),
    pytest.param(
        lambda now: {"onset_at": "0001-01-01T00:00:00+14:00"}, "onset_at", id="onset-0001-plus-14h"
    ),
    pytest.param(
        lambda now: {"onset_at": "0001-01-01T00:00:00+00:00"}, "onset_at", id="onset-year-1"
    ),
    # art. 15: approval times that no later conversion can overflow on.
    pytest.param(
        _approval(approved_at="9999-12-31T23:59:59-12:00"),
        "approval.approved_at",
        id="approved-9999-minus-12h",
    ),
    pytest.param(
        _approval(approved_at="0001-01-01T00:00:00+00:00"),
        "approval.approved_at",
        id="approved-year-1",
    ),
    pytest.param(
        _approval(higher_approval={"unit": "重庆市人民政府", "approved_at": "9999-12-31T00:00Z"}),
        "approval.higher_approval.approved_at",
        id="higher-approved-9999",
    ),
]


@pytest.mark.parametrize(("change", "field"), BAD_WARNINGS)
async def test_bad_warning_is_400_naming_the_field(
    api: GatewayClient, change: Change, field: str
) -> None:
    """design.md "Warning": a lone surrogate, a multi-line or invisible title, a control
    character, or a time outside the window is a 400 `invalid_body` whose errors name it."""
    body = warning_body(**change(datetime.now(UTC)))
    resp = await api.post("/v1/warnings", json=body, headers=auth())
    answer = await resp.json()
    assert resp.status == 400, answer
    assert answer["code"] == "invalid_body"
    fields = [e["field"] for e in answer["errors"]]
    assert any(f == field or f.startswith(field + ".") for f in fields), answer


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda now: {"title": "\u202b暴雨预警\u202c"}, id="title-bidi-around-text"),
        pytest.param(lambda now: {"content": "第一行\n\t第二行"}, id="content-lf-tab"),
        pytest.param(lambda now: {"content": "暴雨\u2028预警"}, id="content-u2028"),
        pytest.param(lambda now: {"content": "第一行\r\n第二行\r第三行"}, id="content-crlf"),
        pytest.param(
            lambda now: {
                "sent_at": iso(now - timedelta(minutes=59)),
                **_approval(approved_at=iso(now - timedelta(minutes=70)))(now),
            },
            id="sent-59m-ago",
        ),
        pytest.param(lambda now: {"sent_at": iso(now + timedelta(minutes=4))}, id="sent-4m-ahead"),
        pytest.param(lambda now: {"expires_at": iso(now + timedelta(days=29))}, id="expires-29d"),
        pytest.param(
            lambda now: {"sent_at": (now - timedelta(minutes=1)).astimezone().isoformat()},
            id="sent-local-offset",
        ),
    ],
)
async def test_sane_edge_values_are_accepted(api: GatewayClient, change: Change) -> None:
    """The bounds are not tighter than design.md says: a title may hold bidi marks around
    visible text, multi-line fields keep LF and tab, sent_at 59 min back or 4 min ahead."""
    resp = await api.post(
        "/v1/warnings", json=warning_body(**change(datetime.now(UTC))), headers=auth()
    )
    assert resp.status == 202, await resp.json()


async def test_crlf_line_endings_are_stored_as_lf(api: GatewayClient) -> None:
    """A platform on Windows sends CRLF: the warning goes out, its lines as LF (an email or
    SMS body never carries a bare CR)."""
    body = warning_body(content="第一行\r\n第二行\r第三行", measures="一\r\n二")
    assert (await api.post("/v1/warnings", json=body, headers=auth())).status == 202
    resp = await api.get(f"/v1/warnings/{body['id']}", headers=auth())
    stored = (await resp.json())["warning"]
    assert (stored["content"], stored["measures"]) == ("第一行\n第二行\n第三行", "一\n二")


async def test_a_replay_answers_200_after_its_sent_at_left_the_window(
    settings: Any, make_client: MakeClient
) -> None:
    """design.md: the same id and body again is a 200 with the first answer. The window applies
    to a NEW id: idempotency is checked before the body is parsed."""
    now = [datetime.now(UTC)]
    api = await make_client(settings, clock=lambda: now[0])
    body = warning_body()
    first = await api.post("/v1/warnings", json=body, headers=auth())
    assert first.status == 202
    now[0] += timedelta(hours=2)  # sent_at is now 2 h 1 min old
    again = await api.post("/v1/warnings", json=body, headers=auth())
    assert again.status == 200
    assert await again.json() == await first.json()
    fresh = await api.post("/v1/warnings", json={**body, "id": body["id"] + "-2"}, headers=auth())
    assert fresh.status == 400
    assert [e["field"] for e in (await fresh.json())["errors"]] == ["sent_at"]


BAD_RECEIPTS = [
    pytest.param({"message_id": LONE, "status": "delivered"}, "message_id", id="sms-message-id"),
    pytest.param(
        {"message_id": "m", "status": "delivered", "phone": f"138{LONE}"}, "phone", id="sms-phone"
    ),
    pytest.param({"message_id": "m", "status": "failed", "error": LONE}, "error", id="sms-error"),
    pytest.param({"message_id": "m", "status": LONE}, "status", id="sms-status"),
    pytest.param(
        {"message_id": "m", "status": "delivered", "detail": {"a": [{"b": LONE}]}},
        "detail.a[0].b",
        id="sms-nested-detail",
    ),
    pytest.param({"message_id": "m", "status": "delivered", LONE: 1}, "\\ud800", id="sms-key"),
    pytest.param(
        {"message_id": "m", "status": "delivered", "at": "9999-12-31T23:59:59-12:00"},
        "at",
        id="sms-at-9999",
    ),
    pytest.param({"delivery_id": LONE}, "delivery_id", id="ack-delivery-id"),
    pytest.param({"delivery_id": "d", "at": "0001-01-01T00:00:00+14:00"}, "at", id="ack-at-0001"),
    pytest.param(
        {"warning_id": "w", "township": "500103001", "means": "鸣锣", "by": LONE, "at": "x"},
        "by",
        id="manual-by",
    ),
    pytest.param(
        {
            "warning_id": "w",
            "township": "500103001",
            "means": "鸣锣",
            "by": "张三",
            "at": "9999-12-31T23:59:59-12:00",
        },
        "at",
        id="manual-at-9999",
    ),
]


@pytest.mark.parametrize(("receipt", "field"), BAD_RECEIPTS)
async def test_bad_receipt_is_400_naming_the_field(
    api: GatewayClient, receipt: dict[str, Any], field: str
) -> None:
    """design.md "Trust": receipts (SMS callbacks, partner acks, manual confirmations, art. 17
    预警回执) with text that is not valid Unicode or a time that cannot be represented are a
    400 `invalid_receipt` naming the field."""
    receipt.setdefault("at", iso(datetime.now(UTC)))
    resp = await api.post("/v1/receipts", json=receipt, headers=auth())
    answer = await resp.json()
    assert resp.status == 400, answer
    assert answer["code"] == "invalid_receipt"
    assert field in [e["field"] for e in answer["errors"]], answer


def test_cap_with_a_surrogate_character_reference_is_invalid_cap() -> None:
    """design.md "Warning", CAP paragraph: malformed input is a 400 (`invalid_cap`)."""
    xml = b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&#xD800;</identifier>'
    with pytest.raises(InvalidWarning) as caught:
        cap_to_document(xml + b"</alert>", max_bytes=4096)
    assert caught.value.code == "invalid_cap"


@pytest.mark.parametrize(
    ("value", "paths"),
    [
        pytest.param({"a": "ok", "b": ["x", {"c": LONE}]}, ["b[1].c"], id="nested"),
        pytest.param({LONE: "v"}, ["\\ud800"], id="key"),
        pytest.param(["\udfff", "ok"], ["[0]"], id="top-list"),
        pytest.param("\udc80", ["(body)"], id="top-string"),
        pytest.param({"deep": [[[[[[[[[[LONE]]]]]]]]]]}, ["deep" + "[0]" * 10], id="deep"),
    ],
)
def test_unicode_errors_walks_keys_and_values(value: object, paths: list[str]) -> None:
    assert [e.field for e in unicode_errors(value)] == paths


def test_unicode_errors_is_not_recursive() -> None:
    """As deep as json.loads goes (it allows ~1,000 levels): never a RecursionError."""
    deep: object = LONE
    for _ in range(50_000):
        deep = [deep]
    assert len(unicode_errors(deep)) == 1


@pytest.mark.parametrize(
    ("check", "text", "ok"),
    [
        pytest.param(one_line, "暴雨预警", True, id="one-line"),
        pytest.param(one_line, "a\x7fb", False, id="one-line-del"),
        pytest.param(visible, "\u00a0\u2003\u200b", False, id="visible-spaces"),
        pytest.param(visible, "\u200b红", True, id="visible-after-zwsp"),
    ],
)
def test_text_checks(check: Callable[[str], str], text: str, ok: bool) -> None:
    if ok:
        assert check(text) == text
    else:
        with pytest.raises(ValueError, match=r"."):
            check(text)


def test_in_utc_refuses_what_overflows() -> None:
    assert in_utc(datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="UTC"):
        in_utc(datetime.fromisoformat("9999-12-31T23:59:59-12:00"))


def test_window_defaults_are_named_constants(tmp_path: Path) -> None:
    """design.md: default 1 h back, 5 min ahead, 30 days validity."""
    assert (DEFAULT_SENT_PAST_S, DEFAULT_SENT_FUTURE_S, DEFAULT_MAX_VALIDITY_DAYS) == (
        3600,
        300,
        30,
    )
    settings = load_settings(_config(tmp_path, ""), {})
    assert (settings.limits.sent_past_s, settings.limits.sent_future_s) == (3600, 300)


def _config(tmp_path: Path, ingest: str) -> Path:
    (tmp_path / "gateway.yaml").write_text(
        REPO_CONFIG_GATEWAY_YAML + (f"ingest:\n{ingest}" if ingest else ""), encoding="utf-8"
    )
    return tmp_path


@pytest.mark.parametrize(
    ("ingest", "key"),
    [
        pytest.param("  sent_window_s: {past: 0}\n", "ingest.sent_window_s.past", id="past-0"),
        pytest.param(
            "  sent_window_s: {future: -1}\n", "ingest.sent_window_s.future", id="future-negative"
        ),
        pytest.param(
            "  sent_window_s: {ahead: 10}\n", "ingest.sent_window_s.ahead", id="unknown-key"
        ),
        pytest.param("  sent_window_s: 3600\n", "ingest.sent_window_s", id="not-a-mapping"),
        pytest.param("  max_validity_days: 0\n", "ingest.max_validity_days", id="validity-0"),
        pytest.param(
            "  max_validity_days: 100000\n", "ingest.max_validity_days", id="validity-huge"
        ),
    ],
)
def test_bad_window_config_is_a_config_error(tmp_path: Path, ingest: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_config(tmp_path, ingest), {})
    assert caught.value.key == key


async def test_configured_window_is_applied(tmp_path: Path, make_client: MakeClient) -> None:
    """`ingest.sent_window_s` and `ingest.max_validity_days` from gateway.yaml reach ingest."""
    ingest = "  sent_window_s: {past: 60, future: 0}\n  max_validity_days: 1\n"
    env = {"GATEWAY_TOKEN_PLATFORM": auth()["Authorization"].removeprefix("Bearer ")}
    env["GATEWAY_STORE"] = f"sqlite:///{tmp_path}/g.db"
    settings = load_settings(_config(tmp_path, ingest), env)
    api = await make_client(settings)
    now = datetime.now(UTC)
    for change, field in [
        ({"sent_at": iso(now - timedelta(minutes=2))}, "sent_at"),
        ({"sent_at": iso(now + timedelta(seconds=30))}, "sent_at"),
        ({"expires_at": iso(now + timedelta(days=2))}, "expires_at"),
    ]:
        resp = await api.post("/v1/warnings", json=warning_body(**change), headers=auth())
        assert resp.status == 400
        assert field in [e["field"] for e in (await resp.json())["errors"]]
