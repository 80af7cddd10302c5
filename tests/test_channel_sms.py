"""The SMS channel: segmenting, the stub, the HTTP provider against a real process, receipts."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from gateway.channels.base import Message, parse_retry_after
from gateway.channels.sms import (
    HttpProvider,
    SmsChannel,
    StubProvider,
    segments,
    sms_text,
    utf16_units,
)
from gateway.channels.sms_receipts import SmsStatus, parse_callback
from gateway.exceptions import (
    DeliveryError,
    InvalidWarning,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from gateway.values import Endpoint, Notice, Receipt
from tests.sms_provider import SmsProviderProcess, sms_provider

__all__ = ["sms_provider"]  # the fixture, imported so that pytest finds it here

PHONES = ("13800000001", "13800000002")
TOKEN = "sms-token-0123456789"
CALLBACK = "http://127.0.0.1:9/v1/receipts"
SHORT_TIMEOUT = 0.3
"""Only for a provider that hangs; a loaded machine may take longer to answer anything else."""
NORMAL_TIMEOUT = 10.0
T0 = datetime(2026, 7, 1, 8, 0, tzinfo=timezone(timedelta(hours=8)))
EMOJI = "\U0001f600"


def notice(content: str = "预计未来6小时内渝中区降雨量将达50毫米以上。", **kw: Any) -> Notice:
    fields: dict[str, Any] = {
        "id": "w-1",
        "msg_type": "alert",
        "level": 3,
        "hazard": "暴雨",
        "title": "重庆市气象台发布暴雨黄色预警信号",
        "content": content,
        "issuer_unit": "重庆市气象台",
        "sent_at": T0,
        "expires_at": T0 + timedelta(hours=6),
        **kw,
    }
    return Notice(**fields)


def message(
    delivery_id: str = "d-1", *, attempt: int = 1, phones: tuple[str, ...] = PHONES, **kw: Any
) -> Message:
    endpoint = Endpoint(
        id="sms-500103001",
        channel="sms",
        townships=("500103001",),
        target="渝中区解放碑街道",
        recipients=phones,
    )
    return Message(delivery_id, notice(**kw), endpoint, attempt)


def http_channel(provider: SmsProviderProcess, timeout: float | None = None) -> SmsChannel:
    if timeout is None:
        timeout = SHORT_TIMEOUT if "hang" in provider.script else NORMAL_TIMEOUT
    return SmsChannel(
        HttpProvider(provider.url, token=TOKEN, timeout=timeout, callback_url=CALLBACK)
    )


# -- segmenting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "units"),
    [
        pytest.param("预" * 70, [70], id="70-chinese-one"),
        pytest.param("预" * 71, [67, 4], id="71-chinese-two"),
        pytest.param("预" * 134, [67, 67], id="134-chinese-two"),
        pytest.param("预" * 135, [67, 67, 1], id="135-chinese-three"),
        pytest.param("a" * 70, [70], id="70-ascii-one"),
        pytest.param("a" * 71, [67, 4], id="71-ascii-two-ucs2"),
        pytest.param("x", [1], id="one-char"),
        pytest.param(EMOJI * 35, [70], id="35-emoji-one"),
        pytest.param(EMOJI * 36, [66, 6], id="36-emoji-pairs-kept"),
        pytest.param("预" * 66 + EMOJI + "预" * 10, [66, 12], id="emoji-at-boundary-moves"),
        pytest.param("预" * 65 + EMOJI + "预" * 10, [67, 10], id="emoji-fits-exactly"),
    ],
)
def test_segments(text: str, units: list[int]) -> None:
    parts = segments(text)
    assert [utf16_units(p) for p in parts] == units
    assert "".join(parts) == text
    for part in parts:
        part.encode("utf-16-le")  # a split surrogate pair would not encode


def test_segments_of_empty_text_raise() -> None:
    with pytest.raises(ValueError, match="text"):
        segments("")


@pytest.mark.parametrize(
    ("phone", "expected"),
    [
        pytest.param(
            "023-12121",
            "【重庆市气象台】重庆市气象台发布暴雨黄色预警信号：内容。 咨询电话：023-12121",
            id="with-phone",
        ),
        pytest.param(
            None, "【重庆市气象台】重庆市气象台发布暴雨黄色预警信号：内容。", id="no-phone"
        ),
    ],
)
def test_sms_text(phone: str | None, expected: str) -> None:
    text = sms_text(notice("内容。", contact_phone=phone, measures="注意防范。"))
    assert text == expected


# -- stub provider ------------------------------------------------------------------------------


async def test_stub_is_default_and_records() -> None:
    channel = SmsChannel()
    assert isinstance(channel.provider, StubProvider)
    long_msg = message(content="预" * 100)
    async with channel:
        outcome = await channel.send(long_msg)
    expected_parts = tuple(segments(sms_text(long_msg.notice)))
    assert channel.provider.sent == [("d-1", PHONES, expected_parts)]
    assert outcome.delivered  # a stub has no callbacks
    assert outcome.detail == {
        "segments": len(expected_parts),
        "phones": 2,
        "provider": {"provider": "stub", "submission": 1},
    }


@pytest.mark.parametrize(
    ("permanent", "error"),
    [
        pytest.param(False, TransientDeliveryError, id="transient"),
        pytest.param(True, PermanentDeliveryError, id="permanent"),
    ],
)
async def test_stub_fails_on_demand(permanent: bool, error: type[DeliveryError]) -> None:
    stub = StubProvider()
    stub.fail_next(2, permanent=permanent)
    async with SmsChannel(stub) as channel:
        for _ in range(2):
            with pytest.raises(error):
                await channel.send(message())
        assert stub.sent == []
        await channel.send(message())
    assert [s[0] for s in stub.sent] == ["d-1"]


async def test_endpoint_without_phones_is_permanent() -> None:
    stub = StubProvider()
    async with SmsChannel(stub) as channel:
        with pytest.raises(PermanentDeliveryError, match="no recipients"):
            await channel.send(message(phones=()))
    assert stub.sent == []


async def test_never_logs_phones_or_text(
    caplog: pytest.LogCaptureFixture, sms_provider: SmsProviderProcess
) -> None:
    caplog.set_level(logging.DEBUG)
    msg = message(content="独特的正文内容")
    async with SmsChannel() as stub_channel, http_channel(sms_provider) as http:
        await stub_channel.send(msg)
        await http.send(msg)
    assert "d-1" in caplog.text
    for secret in (*PHONES, "独特的正文内容", TOKEN):
        assert secret not in caplog.text


# -- HTTP provider against the fake provider process ---------------------------------------------


async def test_http_body_headers_and_idempotency_key(sms_provider: SmsProviderProcess) -> None:
    first, retry = message("d-7", attempt=1), message("d-7", attempt=2)
    async with http_channel(sms_provider) as channel:
        outcome = await channel.send(first)
        again = await channel.send(retry)
        await channel.send(message("d-8"))
    parts = segments(sms_text(first.notice))
    assert not outcome.delivered  # the provider calls back later
    assert outcome.detail["segments"] == len(parts)
    assert outcome.detail["phones"] == 2
    assert outcome.detail["provider"]["message_id"] == "d-7"
    assert again.detail["provider"]["duplicate"] is True
    assert again.detail["provider"]["provider_ids"] == outcome.detail["provider"]["provider_ids"]

    r1, r2, r3 = sms_provider.requests()
    assert r1["method"] == "POST"
    assert r1["path"] == "/v1/sms"
    assert r1["body"] == {
        "message_id": "d-7",
        "phones": list(PHONES),
        "parts": parts,
        "segments": len(parts),
        "callback_url": CALLBACK,
    }
    assert r1["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert r1["headers"]["content-type"].startswith("application/json")
    assert r1["headers"]["idempotency-key"] == r2["headers"]["idempotency-key"] == "d-7"
    assert r2["body"] == r1["body"]
    assert r3["headers"]["idempotency-key"] == "d-8"


def test_http_body_is_the_json_of_each_message() -> None:
    # The part after the phones is encoded once per warning; it must never leak into another.
    import json

    provider = HttpProvider("http://127.0.0.1:9/v1/sms", callback_url=CALLBACK)
    red, blue = ("【单位】红色", "预警"), ('【单位】蓝色"引号\\',)
    for message_id, phones, parts in [
        ("d-1", PHONES, red),
        ("d-2", ("13800000000",), red),
        ("d-3", PHONES, blue),
        ("d-4", PHONES, red),
    ]:
        expected = {
            "message_id": message_id,
            "phones": list(phones),
            "parts": list(parts),
            "segments": len(parts),
            "callback_url": CALLBACK,
        }
        body = provider._body(message_id, phones, parts)
        assert body == json.dumps(expected, ensure_ascii=False).encode()


async def test_http_without_token_sends_no_authorization(
    sms_provider: SmsProviderProcess,
) -> None:
    async with SmsChannel(HttpProvider(sms_provider.url, timeout=NORMAL_TIMEOUT)) as channel:
        await channel.send(message())
    (request,) = sms_provider.requests()
    assert "authorization" not in request["headers"]
    assert request["body"]["callback_url"] is None


@pytest.mark.parametrize(
    ("sms_provider", "error", "retry_after"),
    [
        pytest.param("500", TransientDeliveryError, None, id="500-transient"),
        pytest.param("503", TransientDeliveryError, None, id="503-transient"),
        pytest.param("408", TransientDeliveryError, None, id="408-transient"),
        pytest.param("429:7", TransientDeliveryError, 7.0, id="429-retry-after"),
        pytest.param("hang", TransientDeliveryError, None, id="timeout-transient"),
        pytest.param("400", PermanentDeliveryError, None, id="400-permanent"),
        pytest.param("401", PermanentDeliveryError, None, id="401-permanent"),
        pytest.param("404", PermanentDeliveryError, None, id="404-permanent"),
    ],
    indirect=["sms_provider"],
)
async def test_http_error_then_success(
    sms_provider: SmsProviderProcess, error: type[DeliveryError], retry_after: float | None
) -> None:
    """The script's first answer fails as classified; the same delivery's retry goes through."""
    async with http_channel(sms_provider) as channel:
        with pytest.raises(error) as caught:
            await channel.send(message())
        if isinstance(caught.value, TransientDeliveryError):
            assert caught.value.retry_after == retry_after
        outcome = await channel.send(message(attempt=2))
    assert outcome.detail["provider"]["message_id"] == "d-1"
    assert [r["headers"]["idempotency-key"] for r in sms_provider.requests()] == ["d-1", "d-1"]


async def test_http_provider_stopped_is_transient(sms_provider: SmsProviderProcess) -> None:
    async with http_channel(sms_provider) as channel:
        await asyncio.to_thread(sms_provider.stop)
        with pytest.raises(TransientDeliveryError, match="unreachable"):
            await channel.send(message())
        await asyncio.to_thread(sms_provider.restart)
        outcome = await channel.send(message(attempt=2))
    assert outcome.detail["provider"]["duplicate"] is False
    assert len(sms_provider.requests()) == 1


def test_http_provider_repr_hides_credentials() -> None:
    provider = HttpProvider("https://user:pw@sms.example/send?key=SECRET", token=TOKEN)
    assert "SECRET" not in repr(provider)
    assert "pw" not in repr(provider)
    assert TOKEN not in repr(provider)


@pytest.mark.parametrize("url", ["ftp://sms.example/", "sms.example/send", ""])
def test_http_provider_rejects_bad_url(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        HttpProvider(url)


async def test_http_provider_outside_async_with() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await HttpProvider("http://127.0.0.1:9/").submit("d-1", PHONES, ["x"])


NOW = datetime(2026, 7, 1, 0, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("7", 7.0, id="seconds"),
        pytest.param(" 0 ", 0.0, id="zero"),
        pytest.param("Wed, 01 Jul 2026 00:00:30 GMT", 30.0, id="http-date"),
        pytest.param("Tue, 30 Jun 2026 23:00:00 GMT", 0.0, id="http-date-past"),
        pytest.param("-5", None, id="negative"),
        pytest.param("soon", None, id="garbage"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


# -- provider callbacks -------------------------------------------------------------------------


def test_parse_callback_full() -> None:
    receipt = parse_callback(
        {
            "message_id": "d-1",
            "status": "undelivered",
            "at": "2026-07-01T08:00:05+08:00",
            "phone": "13800000001",
            "part": 2,
            "error": "absent subscriber",
            "vendor_field": "ignored",
        }
    )
    assert receipt == Receipt(
        status="undelivered",
        at=T0 + timedelta(seconds=5),
        source="sms-callback",
        delivery_id="d-1",
        detail={"phone": "13800000001", "part": 2, "error": "absent subscriber"},
    )


def test_parse_callback_minimal() -> None:
    receipt = parse_callback(
        {"message_id": "d-1", "status": "delivered", "at": "2026-07-01T00:00Z"}
    )
    assert receipt.status == "delivered"
    assert receipt.at == datetime(2026, 7, 1, tzinfo=UTC)
    assert receipt.detail == {"phone": None, "part": None, "error": None}


def test_parse_callback_truncates_long_error() -> None:
    receipt = parse_callback(
        {"message_id": "d", "status": "failed", "at": "2026-07-01T00:00Z", "error": "e" * 10_000}
    )
    assert len(receipt.detail["error"]) == 500


@pytest.mark.parametrize(
    ("doc", "fields"),
    [
        pytest.param([], {"(body)"}, id="not-an-object"),
        pytest.param("delivered", {"(body)"}, id="a-string"),
        pytest.param({}, {"message_id", "status", "at"}, id="empty"),
        pytest.param(
            {
                "message_id": 7,
                "status": "ok",
                "at": "yesterday",
                "phone": 138,
                "part": 0,
                "error": ["x"],
            },
            {"message_id", "status", "at", "phone", "part", "error"},
            id="every-field-bad",
        ),
        pytest.param(
            {"message_id": "d", "status": "delivered", "at": "2026-07-01T08:00:00"},
            {"at"},
            id="at-without-offset",
        ),
        pytest.param(
            {"message_id": "", "status": "delivered", "at": "2026-07-01T00:00Z"},
            {"message_id"},
            id="empty-message-id",
        ),
        pytest.param(
            {"message_id": "d" * 257, "status": "delivered", "at": "2026-07-01T00:00Z"},
            {"message_id"},
            id="long-message-id",
        ),
        pytest.param(
            {"message_id": "d", "status": "delivered", "at": "2026-07-01T00:00Z", "part": True},
            {"part"},
            id="part-bool",
        ),
        pytest.param(
            {"message_id": "d", "status": "delivered", "at": "2026-07-01T00:00Z", "part": 1.0},
            {"part"},
            id="part-float",
        ),
        pytest.param(
            {"message_id": "d", "status": "delivered", "at": "2026-07-01T00:00Z", "phone": ""},
            {"phone"},
            id="empty-phone",
        ),
    ],
)
def test_parse_callback_rejects(doc: object, fields: set[str]) -> None:
    with pytest.raises(InvalidWarning) as caught:
        parse_callback(doc)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_receipt"
    assert {e.field for e in caught.value.errors} == fields


# -- receipt ordering ---------------------------------------------------------------------------


def receipt(
    status: str, seconds: int, *, phone: str | None = PHONES[0], part: int | None = 1
) -> Receipt:
    return Receipt(
        status=status,
        at=T0 + timedelta(seconds=seconds),
        source="sms-callback",
        delivery_id="d-1",
        detail={"phone": phone, "part": part, "error": None},
    )


def apply_all(book: SmsStatus, receipts: list[Receipt]) -> list[str | None]:
    return [book.apply(r) for r in receipts]


@pytest.mark.parametrize(
    ("receipts", "changes", "overall"),
    [
        pytest.param(
            [receipt("delivered", 10), receipt("undelivered", 5)],
            ["delivered", None],
            "delivered",
            id="older-failure-after-newer-success-ignored",
        ),
        pytest.param(
            [receipt("undelivered", 10), receipt("delivered", 5)],
            ["failed", None],
            "failed",
            id="older-success-after-newer-failure-ignored",
        ),
        pytest.param(
            [receipt("undelivered", 5), receipt("delivered", 10)],
            ["failed", "delivered"],
            "delivered",
            id="same-part-newer-success-wins",
        ),
        pytest.param(
            [receipt("delivered", 5), receipt("failed", 5)],
            ["delivered", "failed"],
            "failed",
            id="equal-timestamps-failure-wins",
        ),
        pytest.param(
            [receipt("failed", 5), receipt("delivered", 5)],
            ["failed", None],
            "failed",
            id="equal-timestamps-failure-wins-either-order",
        ),
        pytest.param(
            [receipt("failed", 5, part=1), receipt("delivered", 10, part=2)],
            ["failed", None],
            "failed",
            id="later-part-success-keeps-failure",
        ),
        pytest.param(
            [receipt("delivered", 10, part=2), receipt("undelivered", 5, part=1)],
            ["delivered", "failed"],
            "failed",
            id="earlier-part-failure-arriving-late-fails",
        ),
        pytest.param(
            [
                receipt("delivered", 3, part=2),
                receipt("delivered", 1, part=1),
                receipt("delivered", 2, phone=PHONES[1], part=1),
                receipt("delivered", 4, phone=PHONES[1], part=2),
            ],
            ["delivered", None, None, None],
            "delivered",
            id="all-parts-all-phones-delivered",
        ),
        pytest.param(
            [receipt("delivered", 1, phone=None, part=None)],
            ["delivered"],
            "delivered",
            id="whole-message-receipt",
        ),
    ],
)
def test_sms_status_ordering(
    receipts: list[Receipt], changes: list[str | None], overall: str
) -> None:
    book = SmsStatus()
    assert book.overall is None
    assert apply_all(book, receipts) == changes
    assert book.overall == overall
    # The book persisted and read back decides the same, and is order independent.
    again = SmsStatus.from_json(book.to_json())
    assert again.overall == overall
    assert again.to_json() == book.to_json()
    reverse = SmsStatus()
    apply_all(reverse, receipts[::-1])
    assert reverse.to_json() == book.to_json()


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(receipt("sent", 1), id="unknown-status"),
        pytest.param(Receipt("delivered", datetime(2026, 7, 1), "sms-callback"), id="naive-at"),  # noqa: DTZ001
    ],
)
def test_sms_status_rejects_bad_receipts(bad: Receipt) -> None:
    with pytest.raises(ValueError, match=r"status|offset"):
        SmsStatus().apply(bad)


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param({}, id="no-parts"),
        pytest.param({"parts": [{"phone": None}]}, id="missing-keys"),
        pytest.param(
            {"parts": [{"phone": None, "part": None, "status": "ok", "at": T0.isoformat()}]},
            id="bad-status",
        ),
        pytest.param(
            {"parts": [{"phone": None, "part": None, "status": "failed", "at": "2026-07-01"}]},
            id="naive-at",
        ),
        pytest.param(
            {"parts": [{"phone": 1, "part": "2", "status": "failed", "at": T0.isoformat()}]},
            id="bad-key",
        ),
    ],
)
def test_sms_status_from_json_rejects(doc: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="SmsStatus"):
        SmsStatus.from_json(doc)
