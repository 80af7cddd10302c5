"""The webhook channel against a partner's receiver in its own process, verifying with the stock
`standardwebhooks` library, and the drill's in-process WebhookSink."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from gateway.channels.base import Message, parse_retry_after
from gateway.channels.webhook import MAX_DETAIL_BYTES, USER_AGENT, WebhookChannel
from gateway.drill.sinks.webhook_receiver import WebhookSink, builtin_verifier, new_secret
from gateway.exceptions import (
    DeliveryError,
    EndpointGone,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from gateway.values import Endpoint, Notice
from tests.helpers import warning_body
from tests.webhook_receiver import MakeReceiver, WebhookReceiver
from tests.webhook_receiver import fixture_webhook_receivers as fixture_webhook_receivers

SHORT_TIMEOUT = 0.3


def make_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


SECRET = make_secret()
OTHER_SECRET = make_secret()


def message(
    url: str = "http://127.0.0.1:9/unused",
    *,
    secret: str | None = SECRET,
    timeout: float | None = 5.0,
    fmt: str = "json",
    delivery_id: str | None = None,
) -> Message:
    endpoint = Endpoint(
        id="partner-cq-tv",
        channel="webhook",
        townships=("500103001",),
        target=url,
        secret=secret,
        timeout=timeout,
        format=fmt,
    )
    notice = Notice.from_document(warning_body())
    return Message(delivery_id=delivery_id or f"d-{uuid.uuid4()}", notice=notice, endpoint=endpoint)


@pytest.fixture
async def channel() -> AsyncIterator[WebhookChannel]:
    async with WebhookChannel() as ch:
        yield ch


def only_verified(receiver: WebhookReceiver) -> None:
    logged = receiver.requests()
    assert logged, "the receiver logged no request"
    assert all(r["verified"] for r in logged), [r["error"] for r in logged]


async def test_delivers_signed_json_that_the_library_verifies(
    channel: WebhookChannel, webhook_receivers: MakeReceiver
) -> None:
    receiver = webhook_receivers(secret=SECRET)
    msg = message(receiver.url)

    outcome = await channel.send(msg)

    assert outcome.delivered
    assert outcome.detail == {"status": 200}
    only_verified(receiver)
    [logged] = receiver.requests()
    assert logged["webhook_id"] == msg.delivery_id
    assert logged["headers"]["idempotency-key"] == msg.delivery_id
    assert logged["headers"]["content-type"] == "application/json"
    assert logged["headers"]["user-agent"] == USER_AGENT
    assert msg.notice.title in logged["body"]  # UTF-8, not \\u escapes
    payload = json.loads(logged["body"])
    assert payload["type"] == "warning.alert"
    assert datetime.fromisoformat(payload["timestamp"]).tzinfo is not None
    assert payload["data"] == {
        **msg.notice.document,
        "colour": "黄色",
        "delivery_id": msg.delivery_id,
    }


async def test_5xx_is_transient_and_the_retry_keeps_the_webhook_id(
    channel: WebhookChannel, webhook_receivers: MakeReceiver
) -> None:
    receiver = webhook_receivers(secret=SECRET, script="500,200")
    msg = message(receiver.url)

    with pytest.raises(TransientDeliveryError) as first:
        await channel.send(msg)
    retried = replace(msg, attempt=2)
    outcome = await channel.send(retried)

    assert "500" in first.value.reason
    assert first.value.retry_after is None
    assert outcome.delivered
    only_verified(receiver)
    assert [r["status"] for r in receiver.requests()] == [500, 200]
    assert {r["webhook_id"] for r in receiver.requests()} == {msg.delivery_id}


@pytest.mark.parametrize(
    ("status", "retry_after_header", "error", "retry_after"),
    [
        pytest.param("429", "7", TransientDeliveryError, 7.0, id="429-retry-after-seconds"),
        pytest.param("429", "", TransientDeliveryError, None, id="429-no-retry-after"),
        pytest.param("429", "soon", TransientDeliveryError, None, id="429-garbage-retry-after"),
        pytest.param("408", "", TransientDeliveryError, None, id="408"),
        pytest.param("425", "", TransientDeliveryError, None, id="425"),
        pytest.param("503", "7", TransientDeliveryError, 7.0, id="503-retry-after"),
        pytest.param("500", "7", TransientDeliveryError, None, id="500-ignores-retry-after"),
        pytest.param("410", "", EndpointGone, None, id="410-gone"),
        pytest.param("400", "", PermanentDeliveryError, None, id="400"),
        pytest.param("401", "", PermanentDeliveryError, None, id="401"),
        pytest.param("404", "", PermanentDeliveryError, None, id="404"),
        pytest.param("302", "", PermanentDeliveryError, None, id="redirect-not-followed"),
    ],
)
async def test_answers_map_to_typed_errors(
    channel: WebhookChannel,
    webhook_receivers: MakeReceiver,
    status: str,
    retry_after_header: str,
    error: type[DeliveryError],
    retry_after: float | None,
) -> None:
    receiver = webhook_receivers(secret=SECRET, script=status, retry_after=retry_after_header)

    with pytest.raises(DeliveryError) as caught:
        await channel.send(message(receiver.url))

    assert type(caught.value) is error
    assert "partner-cq-tv" in caught.value.reason
    assert f"HTTP {status}" in caught.value.reason
    if isinstance(caught.value, TransientDeliveryError):
        assert caught.value.retry_after == retry_after
    only_verified(receiver)


async def test_a_large_error_answer_is_read_only_in_part(
    channel: WebhookChannel, webhook_receivers: MakeReceiver
) -> None:
    receiver = webhook_receivers(secret=SECRET, script="400", reply_bytes=1_000_000)

    with pytest.raises(PermanentDeliveryError) as caught:
        await channel.send(message(receiver.url))

    assert "status 400 xxx" in caught.value.reason
    assert len(caught.value.reason) < MAX_DETAIL_BYTES + 100


@pytest.mark.parametrize(
    ("default_timeout", "endpoint_timeout"),
    [
        pytest.param(30.0, SHORT_TIMEOUT, id="endpoint-timeout"),
        pytest.param(SHORT_TIMEOUT, None, id="channel-default-timeout"),
    ],
)
async def test_no_answer_in_time_is_transient(
    webhook_receivers: MakeReceiver, default_timeout: float, endpoint_timeout: float | None
) -> None:
    receiver = webhook_receivers(secret=SECRET, script="hang")

    async with WebhookChannel(default_timeout=default_timeout) as channel:
        with pytest.raises(TransientDeliveryError) as caught:
            await channel.send(message(receiver.url, timeout=endpoint_timeout))

    assert f"no answer within {SHORT_TIMEOUT:g} s" in caught.value.reason
    only_verified(receiver)


async def test_receiver_down_is_transient_and_delivery_resumes_after_restart(
    channel: WebhookChannel, webhook_receivers: MakeReceiver
) -> None:
    receiver = webhook_receivers(secret=SECRET)
    msg = message(receiver.url)
    assert (await channel.send(msg)).delivered

    receiver.stop()
    with pytest.raises(TransientDeliveryError) as caught:
        await channel.send(replace(msg, attempt=2))
    receiver.restart()
    # A gateway restart: a new channel sends the same delivery again.
    async with WebhookChannel() as restarted:
        outcome = await restarted.send(replace(msg, attempt=3))

    assert "partner-cq-tv" in caught.value.reason
    assert outcome.delivered
    only_verified(receiver)
    assert [r["webhook_id"] for r in receiver.requests()] == [msg.delivery_id] * 2


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param(SECRET.removeprefix("whsec_"), id="no-prefix"),
        pytest.param("whsec_***not*base64***", id="not-base64"),
        pytest.param("whsec_", id="empty-key"),
        pytest.param(f"{SECRET} whsec_%%%", id="second-of-two-bad"),
    ],
)
async def test_bad_secret_is_permanent_and_nothing_is_sent(
    channel: WebhookChannel, webhook_receivers: MakeReceiver, secret: str | None
) -> None:
    receiver = webhook_receivers(secret=SECRET)

    with pytest.raises(PermanentDeliveryError) as caught:
        await channel.send(message(receiver.url, secret=secret))

    assert "partner-cq-tv" in caught.value.reason
    for key in (secret or "").replace("whsec_", " ").split():
        assert key not in str(caught.value)
    assert receiver.requests() == []


async def test_json_body_is_the_whole_payload_for_each_warning(channel: WebhookChannel) -> None:
    # The document part is encoded once per warning; it must never leak into another.
    import json
    from dataclasses import replace

    first = message()
    # An update of the same warning id with other content (a new Notice object).
    changed = Notice.from_document({**first.notice.document, "title": "另一条预警"})
    second = replace(first, notice=changed, delivery_id="d-second")
    for msg in (first, second, first, replace(first, delivery_id="d-again")):
        now = datetime.now(UTC)
        body, headers = channel.build_request(msg, now)
        payload = {
            "type": f"warning.{msg.notice.msg_type}",
            "timestamp": now.isoformat(),
            "data": {
                **msg.notice.document,
                "colour": msg.notice.colour,
                "delivery_id": msg.delivery_id,
            },
        }
        assert body == json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        assert Webhook(SECRET).verify(body, headers)["data"]["delivery_id"] == msg.delivery_id


async def test_signature_does_not_verify_after_tampering(channel: WebhookChannel) -> None:
    msg = message()
    body, headers = channel.build_request(msg, datetime.now(UTC))
    verifier = Webhook(SECRET)
    assert verifier.verify(body, headers)["data"]["delivery_id"] == msg.delivery_id

    index = body.index(b'"level":3') + len(b'"level":')
    tampered_body = body[:index] + b"1" + body[index + 1 :]
    with pytest.raises(WebhookVerificationError):
        verifier.verify(tampered_body, headers)
    for header, value in [("webhook-id", "d-other"), ("webhook-timestamp", "1")]:
        with pytest.raises(WebhookVerificationError):
            verifier.verify(body, {**headers, header: value})
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(body, headers)


async def test_receiver_with_another_secret_logs_unverified(
    channel: WebhookChannel, webhook_receivers: MakeReceiver
) -> None:
    receiver = webhook_receivers(secret=OTHER_SECRET)

    await channel.send(message(receiver.url, secret=SECRET))

    [logged] = receiver.requests()
    assert logged["verified"] is False
    assert "No matching signature" in (logged["error"] or "")


async def test_key_rotation_signs_with_every_secret(
    channel: WebhookChannel, webhook_receivers: MakeReceiver
) -> None:
    old, new = webhook_receivers(secret=SECRET), webhook_receivers(secret=OTHER_SECRET)
    rotating = f"{SECRET} {OTHER_SECRET}"

    for receiver in (old, new):
        assert (await channel.send(message(receiver.url, secret=rotating))).delivered

    for receiver in (old, new):
        only_verified(receiver)
        [logged] = receiver.requests()
        signatures = logged["headers"]["webhook-signature"].split(" ")
        assert [s.split(",")[0] for s in signatures] == ["v1", "v1"]


async def test_cap_format_posts_signed_schema_valid_cap_in_json(channel: WebhookChannel) -> None:
    from gateway.cap.read import validate_cap

    msg = message(fmt="cap")
    body, headers = channel.build_request(msg, datetime.now(UTC))
    assert headers["Content-Type"] == "application/json"
    # The stock library's default call verifies and parses the JSON envelope.
    payload = Webhook(SECRET).verify(body, headers)
    assert payload["type"] == "warning.alert"
    assert payload["data"]["format"] == "cap"
    assert payload["data"]["delivery_id"] == msg.delivery_id
    assert validate_cap(payload["data"]["cap"].encode()) == []


async def test_invalid_url_is_permanent(channel: WebhookChannel) -> None:
    with pytest.raises(PermanentDeliveryError, match="invalid URL"):
        await channel.send(message("not a url"))


async def test_send_outside_async_with_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await WebhookChannel().send(message())


NOW = datetime(2026, 11, 24, 8, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        pytest.param("7", 7.0, id="seconds"),
        pytest.param(" 120 ", 120.0, id="seconds-padded"),
        pytest.param("Tue, 24 Nov 2026 08:01:30 GMT", 90.0, id="http-date"),
        pytest.param("Tue, 24 Nov 2026 07:59:00 GMT", 0.0, id="http-date-past"),
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("-5", None, id="negative"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("٣", None, id="non-ascii-digit"),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


@pytest.mark.parametrize("prefer_library", [True, False], ids=["standardwebhooks", "builtin"])
async def test_webhook_sink_records_verified_deliveries(
    channel: WebhookChannel, prefer_library: bool
) -> None:
    secret = new_secret()
    async with WebhookSink(secret, prefer_library=prefer_library) as sink:
        msg = message(sink.url, secret=secret)
        outcome = await channel.send(msg)
        with pytest.raises(PermanentDeliveryError, match="HTTP 401"):
            await channel.send(message(sink.url, secret=SECRET))

    assert outcome.delivered
    good, bad = sink.received
    webhook_id, verified, data = good
    assert (webhook_id, verified) == (msg.delivery_id, True)
    assert data["data"]["id"] == msg.notice.id
    assert bad.verified is False


async def test_builtin_verifier_rejects_tampering(channel: WebhookChannel) -> None:
    secret = new_secret()
    body, headers = channel.build_request(message(secret=secret), datetime.now(UTC))
    verify = builtin_verifier(secret)
    verify(body, headers)

    for bad_body, bad_headers in [
        (body + b" ", headers),
        (body, {**headers, "webhook-id": "d-other"}),
        (body, {**headers, "webhook-timestamp": "1"}),
        (body, {**headers, "webhook-signature": "v2," + headers["webhook-signature"][3:]}),
        (body, {**headers, "webhook-signature": "v1,***"}),
    ]:
        with pytest.raises(ValueError, match=r"signature|timestamp"):
            verify(bad_body, bad_headers)
