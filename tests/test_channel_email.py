"""The email channel against a real aiosmtpd server process (tests/smtp_server.py) and the sink."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtplib.email import flatten_message

from gateway.channels import email_render as email_module
from gateway.channels.base import Message
from gateway.channels.email import EmailChannel
from gateway.channels.email_render import TEMPLATE_CACHE, compose, message_id
from gateway.drill.sinks.smtp_sink import SmtpSink
from gateway.exceptions import PermanentDeliveryError, TransientDeliveryError
from gateway.values import Endpoint, Notice
from tests.processes import free_port
from tests.smtp_server import SmtpServer, SmtpServerFactory
from tests.smtp_server import fixture_smtp_server as fixture_smtp_server
from tests.smtp_server import fixture_smtp_server_factory as fixture_smtp_server_factory

SENDER = "warnings@cq-gateway.example.cn"
CENTRE = "yuzhong-jiefangbei@cq-gov.example.cn"
DEPUTY = "yuzhong-duty@cq-gov.example.cn"
TITLE = "重庆市气象台发布暴雨红色预警信号"
SHORT_TIMEOUT = 0.3
PASSWORD = "s3cret-Pa55word"

# A self-signed certificate for 127.0.0.1 (P-256, valid to 2126), for the STARTTLS test only.
TEST_CERT = """-----BEGIN CERTIFICATE-----
MIIBkDCCATagAwIBAgIUCPz+r2exS/JBNSN49Ae0TgrZWm4wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJMTI3LjAuMC4xMCAXDTI2MTEyNDA1NDg0OFoYDzIxMjYxMDMx
MDU0ODQ4WjAUMRIwEAYDVQQDDAkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAATrzOY7mJRO205qH6DLN0dbjBF6oLMbHvBjaZ+M27VTBaUU1BXA1xeG
Jm2tqCEhcwyleKuyuf1aqKXXqvpRhDzvo2QwYjAdBgNVHQ4EFgQUnWG/htaL3pym
hOylPgWGSNZszZ0wHwYDVR0jBBgwFoAUnWG/htaL3pymhOylPgWGSNZszZ0wDwYD
VR0TAQH/BAUwAwEB/zAPBgNVHREECDAGhwR/AAABMAoGCCqGSM49BAMCA0gAMEUC
IAbA44K+enlOlmYbZfqjBgvPgJiCbvT+ckUvqwzBdATCAiEA6OlLUKB9lJZ3IT1Y
+OZ6H+eSSU8HMjnmHrUIRru02xs=
-----END CERTIFICATE-----
"""
TEST_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgh7FSqStWmEs4RjO4
vI+t30zcc6Ia+b7loXc6aRnzqpGhRANCAATrzOY7mJRO205qH6DLN0dbjBF6oLMb
HvBjaZ+M27VTBaUU1BXA1xeGJm2tqCEhcwyleKuyuf1aqKXXqvpRhDzv
-----END PRIVATE KEY-----
"""


def make_message(
    delivery_id: str = "d-1",
    *,
    level: int = 1,
    recipients: tuple[str, ...] = (CENTRE,),
    title: str = TITLE,
    msg_type: str = "alert",
) -> Message:
    sent = datetime(2026, 7, 1, 6, 30, tzinfo=UTC)
    notice = Notice(
        id="w-2026-0701-001",
        msg_type=msg_type,
        level=level,
        hazard="暴雨",
        title=title,
        content="预计未来3小时渝中区降雨量将达100毫米以上。",
        issuer_unit="重庆市气象台",
        sent_at=sent,
        expires_at=sent + timedelta(hours=6),
        measures="停止集会、停课、停业；转移危险地带人员。",
        contact_phone="023-12121",
        area_description="渝中区全域",
    )
    endpoint = Endpoint(
        id="email-500103001",
        channel="email",
        townships=("500103001",),
        target=recipients[0] if recipients else "",
        recipients=recipients,
    )
    return Message(delivery_id=delivery_id, notice=notice, endpoint=endpoint)


def channel(url: str, **options: object) -> EmailChannel:
    return EmailChannel(url, sender=SENDER, timeout=5.0, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("level", "colour"),
    [
        pytest.param(1, "红色", id="red"),
        pytest.param(2, "橙色", id="orange"),
        pytest.param(3, "黄色", id="yellow"),
        pytest.param(4, "蓝色", id="blue"),
    ],
)
async def test_subject_shows_colour_and_title(
    smtp_server: SmtpServer, level: int, colour: str
) -> None:
    async with channel(smtp_server.url) as email:
        await email.send(make_message(level=level))

    (stored,) = smtp_server.messages()
    assert stored.message["Subject"] == f"【{colour}预警】{TITLE}"
    assert b"=?utf-8?" in stored.raw  # encoded, not raw 8-bit, in the header


@pytest.mark.parametrize(
    ("msg_type", "level", "expected"),
    [
        pytest.param("alert", 2, f"【橙色预警】{TITLE}", id="alert"),
        pytest.param("update", 2, f"【更新】橙色预警 {TITLE}", id="update"),
        pytest.param("cancel", 3, f"【解除】黄色预警 {TITLE}", id="cancel-解除预警"),
    ],
)
async def test_subject_says_update_and_cancel(
    smtp_server: SmtpServer, msg_type: str, level: int, expected: str
) -> None:
    async with channel(smtp_server.url) as email:
        await email.send(make_message(level=level, msg_type=msg_type))

    (stored,) = smtp_server.messages()
    assert stored.message["Subject"] == expected


async def test_body_headers_and_envelope(smtp_server: SmtpServer) -> None:
    async with channel(smtp_server.url) as email:
        outcome = await email.send(make_message("d-body", recipients=(CENTRE, DEPUTY)))

    assert outcome.delivered
    assert outcome.detail["accepted"] == 2
    assert "queued" in outcome.detail["reply"]
    (stored,) = smtp_server.messages()
    assert stored.mail_from == SENDER
    assert stored.rcpt_tos == (CENTRE, DEPUTY)
    mail = stored.message
    assert mail["X-Warning-Id"] == "w-2026-0701-001"
    assert mail["X-Delivery-Id"] == "d-body"
    assert mail["Date"].datetime is not None
    assert [a.addr_spec for a in mail["To"].addresses] == [CENTRE, DEPUTY]
    text = mail.get_content()
    for part in (
        TITLE,
        "预计未来3小时渝中区降雨量将达100毫米以上。",
        "停止集会、停课、停业",
        "023-12121",
        "重庆市气象台",
        "2026-07-01 14:30",  # sent_at in Beijing time
        "2026-07-01 20:30",  # expires_at
    ):
        assert part in text


async def test_message_id_is_stable_per_delivery(smtp_server: SmtpServer) -> None:
    async with channel(smtp_server.url) as email:
        for delivery_id in ("d-same", "d-same", "d-other"):
            await email.send(make_message(delivery_id))

    ids = [m.message["Message-ID"] for m in smtp_server.messages()]
    assert ids[0] == ids[1] == message_id("d-same")
    assert ids[2] == message_id("d-other") != ids[0]


async def test_sequential_sends_reuse_one_connection(smtp_server: SmtpServer) -> None:
    async with channel(smtp_server.url) as email:
        for i in range(20):
            await email.send(make_message(f"d-{i}"))

    assert len(smtp_server.messages()) == 20
    assert smtp_server.sessions() == 1


async def test_200_concurrent_sends_all_arrive(smtp_server: SmtpServer) -> None:
    ids = {f"d-{i}" for i in range(200)}
    async with channel(smtp_server.url, pool_size=4) as email:
        outcomes = await asyncio.gather(*(email.send(make_message(i)) for i in sorted(ids)))

    assert all(o.delivered for o in outcomes)
    assert sorted(m.message["X-Delivery-Id"] for m in smtp_server.messages()) == sorted(ids)
    assert 1 <= smtp_server.sessions() <= 4


@pytest.mark.parametrize(
    ("code", "error"),
    [
        pytest.param(451, TransientDeliveryError, id="451-transient"),
        pytest.param(452, TransientDeliveryError, id="452-transient"),
        pytest.param(550, PermanentDeliveryError, id="550-permanent"),
        pytest.param(554, PermanentDeliveryError, id="554-permanent"),
    ],
)
async def test_refused_data_then_accepted(
    smtp_server_factory: SmtpServerFactory, code: int, error: type[Exception]
) -> None:
    server = smtp_server_factory(fail_first=1, fail_code=code)
    async with channel(server.url) as email:
        with pytest.raises(error, match=str(code)) as raised:
            await email.send(make_message("d-retry"))
        assert type(raised.value) is error
        outcome = await email.send(make_message("d-retry"))

    assert outcome.delivered
    (stored,) = server.messages()
    assert stored.message["Message-ID"] == message_id("d-retry")


async def test_one_refused_recipient_of_two_is_delivered(
    smtp_server_factory: SmtpServerFactory,
) -> None:
    server = smtp_server_factory(reject_rcpt=[DEPUTY])
    async with channel(server.url) as email:
        outcome = await email.send(make_message(recipients=(CENTRE, DEPUTY)))

    assert outcome.delivered
    assert outcome.detail["accepted"] == 1
    assert outcome.detail["refused"][DEPUTY].startswith("550")
    assert [m.rcpt_tos for m in server.messages()] == [(CENTRE,)]


async def test_all_recipients_refused_is_permanent(smtp_server_factory: SmtpServerFactory) -> None:
    server = smtp_server_factory(reject_rcpt=[CENTRE, DEPUTY])
    async with channel(server.url) as email:
        with pytest.raises(PermanentDeliveryError, match="recipients refused"):
            await email.send(make_message(recipients=(CENTRE, DEPUTY)))
        # The connection is still good for the next message.
        server_ok = await email.send(make_message(recipients=(CENTRE, "other@example.cn")))
    assert server_ok.detail["accepted"] == 1


async def test_server_down_is_transient_and_same_channel_recovers(
    smtp_server: SmtpServer,
) -> None:
    async with channel(smtp_server.url) as email:
        await email.send(make_message("d-before"))
        smtp_server.stop()
        with pytest.raises(TransientDeliveryError):
            await email.send(make_message("d-down"))
        smtp_server.start()
        outcome = await email.send(make_message("d-after"))

    assert outcome.delivered
    got = [m.message["X-Delivery-Id"] for m in smtp_server.messages()]
    assert got == ["d-before", "d-after"]


async def test_idle_connection_closed_by_restart_is_reopened(smtp_server: SmtpServer) -> None:
    async with channel(smtp_server.url) as email:
        await email.send(make_message("d-1"))
        smtp_server.restart()  # the pooled connection is now dead
        outcome = await email.send(make_message("d-2"))

    assert outcome.delivered
    assert len(smtp_server.messages()) == 2
    assert smtp_server.sessions() == 2


async def test_connection_refused_is_transient() -> None:
    async with channel(f"smtp://127.0.0.1:{free_port()}") as email:
        with pytest.raises(TransientDeliveryError, match="connect"):
            await email.send(make_message())


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) but never says anything."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


async def test_no_greeting_times_out_as_transient(silent_listener: int) -> None:
    email = EmailChannel(
        f"smtp://127.0.0.1:{silent_listener}", sender=SENDER, timeout=SHORT_TIMEOUT
    )
    async with email:
        with pytest.raises(TransientDeliveryError, match="timeout"):
            await email.send(make_message())


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(make_message(recipients=()), id="no-address"),
        pytest.param(make_message(recipients=("not an address",)), id="bad-address"),
        pytest.param(make_message(recipients=("a@b.cn\nBcc: x@y.cn",)), id="header-injection"),
    ],
)
async def test_unusable_address_is_permanent(smtp_server: SmtpServer, message: Message) -> None:
    async with channel(smtp_server.url) as email:
        with pytest.raises(PermanentDeliveryError):
            await email.send(message)
    assert smtp_server.messages() == []


async def test_auth_and_password_never_logged(
    smtp_server_factory: SmtpServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = smtp_server_factory(auth=f"gateway:{PASSWORD}")
    async with channel(server.url, username="gateway", password=PASSWORD) as email:
        assert (await email.send(make_message("d-auth"))).delivered
    async with channel(server.url, username="gateway", password="wrong-" + PASSWORD) as email:
        with pytest.raises(PermanentDeliveryError, match="535") as raised:
            await email.send(make_message("d-bad-auth"))
    async with channel(server.url) as email:  # no credentials: the server requires AUTH
        with pytest.raises(PermanentDeliveryError, match="530"):
            await email.send(make_message("d-no-auth"))
    async with channel(server.url, username="gateway", password=PASSWORD, starttls=True) as email:
        with pytest.raises(PermanentDeliveryError, match="STARTTLS"):  # offered no STARTTLS
            await email.send(make_message("d-no-tls"))

    assert [m.message["X-Delivery-Id"] for m in server.messages()] == ["d-auth"]
    assert PASSWORD not in caplog.text
    assert PASSWORD not in str(raised.value)
    assert PASSWORD not in repr(email)


async def test_auth_not_offered_is_permanent(smtp_server: SmtpServer) -> None:
    async with channel(smtp_server.url, username="gateway", password=PASSWORD) as email:
        with pytest.raises(PermanentDeliveryError, match="AUTH"):
            await email.send(make_message())


@pytest.fixture
def cert_files(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text(TEST_CERT)
    key.write_text(TEST_KEY)
    return cert, key


async def test_starttls_then_auth(
    smtp_server_factory: SmtpServerFactory, cert_files: tuple[Path, Path]
) -> None:
    # The server offers AUTH only after STARTTLS, so delivery proves the upgrade happened.
    cert, key = cert_files
    server = smtp_server_factory(auth=f"gateway:{PASSWORD}", tls_cert=cert, tls_key=key)
    trust = ssl.create_default_context(cadata=TEST_CERT)
    async with channel(
        server.url, username="gateway", password=PASSWORD, starttls=True, tls_context=trust
    ) as email:
        for i in range(3):
            assert (await email.send(make_message(f"d-tls-{i}"))).delivered

    assert len(server.messages()) == 3
    assert server.sessions() == 1


@pytest.mark.parametrize(
    ("url", "options"),
    [
        pytest.param("http://127.0.0.1:25", {}, id="scheme"),
        pytest.param("smtp://", {}, id="no-host"),
        pytest.param("smtps://127.0.0.1", {"starttls": True}, id="tls-and-starttls"),
        pytest.param("smtp://127.0.0.1", {"pool_size": 0}, id="pool-size"),
    ],
)
def test_bad_settings_are_refused(url: str, options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="email channel"):
        channel(url, **options)


# ---- rendered once per warning: the same bytes as composing each email whole ----------------

FIXED_DATE = "Wed, 01 Jul 2026 14:30:00 +0800"
LONG_TITLE = "重庆市气象台发布暴雨红色预警信号：" + "渝中区、江北区、南岸区、九龙坡区" * 3
MANY = tuple(f"township-{i:03d}-duty-room@cq-gov.example.cn" for i in range(4))


@pytest.fixture
def fixed_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(email_module, "format_datetime", lambda _dt: FIXED_DATE)


def composed_bytes(message: Message, recipients: tuple[str, ...], cte_type: str) -> bytes:
    """What the adapter sent before rendering was cached: compose, then send_message's flatten."""
    utf8 = not (SENDER + "".join(recipients)).isascii()
    return flatten_message(compose(message, SENDER, recipients), utf8=utf8, cte_type=cte_type)


@pytest.mark.usefixtures("fixed_date")
@pytest.mark.parametrize("cte_type", ["8bit", "7bit"])
@pytest.mark.parametrize(
    "recipients",
    [
        pytest.param((CENTRE,), id="one"),
        pytest.param((CENTRE, DEPUTY), id="two"),
        pytest.param(MANY, id="folded"),
        pytest.param(("d" * 52 + "@cq-gov.example.cn",), id="70-chars"),
        pytest.param(("d" * 60 + "@cq-gov.example.cn",), id="78-chars"),
        pytest.param(("Duty Room <duty@cq-gov.example.cn>",), id="display-name"),
        pytest.param(("值班室 <duty@cq-gov.example.cn>",), id="utf8-display-name"),
        pytest.param(("duty@渝中.中国",), id="utf8-domain"),
        pytest.param(('"duty room"@cq-gov.example.cn',), id="quoted-local-part"),
        pytest.param(("duty@[127.0.0.1]",), id="address-literal"),
        pytest.param(("Duty: a@cq-gov.example.cn, b@cq-gov.example.cn;",), id="group"),
    ],
)
@pytest.mark.parametrize(
    ("delivery_id", "title"),
    [
        pytest.param("d-1", TITLE, id="short-id"),
        pytest.param("w-2026-0701-001/email-500103001", TITLE, id="gateway-id"),
        pytest.param("w-2026-0701-001/" + "e" * 44, TITLE, id="gateway-id-60"),
        pytest.param("w-2026-0701-001/" + "e" * 45, TITLE, id="gateway-id-61"),
        pytest.param("0f9c2e4a-5b1d-4c7e-9a3f-2d8e6b1c0a47:email-500103001", TITLE, id="uuid-id"),
        pytest.param("d-" + "x" * 90, TITLE, id="long-id"),
        pytest.param("delivery id with spaces", TITLE, id="spaces-id"),
        pytest.param("=?utf-8?q?d-1?=", TITLE, id="encoded-word-id"),
        pytest.param("投递-1", LONG_TITLE, id="utf8-id-long-title"),
        pytest.param("d-2", "Heavy rain red warning =?x?=", id="ascii-title"),
    ],
)
def test_rendered_email_is_byte_identical_to_composed(
    recipients: tuple[str, ...], cte_type: str, delivery_id: str, title: str
) -> None:
    email = channel("smtp://127.0.0.1")
    message = make_message(delivery_id, recipients=recipients, title=title)
    for _ in range(2):  # rendered, then from the cache
        mail = email._render(message, recipients)
        assert mail.flatten(cte_type) == composed_bytes(message, recipients, cte_type)


@pytest.mark.usefixtures("fixed_date")
def test_cached_rendering_follows_every_field_and_stays_bounded() -> None:
    email = channel("smtp://127.0.0.1")
    base = make_message("d-1")
    changes: list[dict[str, Any]] = [
        {},
        {"title": "暴雨橙色预警"},
        {"level": 2},
        {"msg_type": "update"},
        {"content": "雨势减弱。"},
        {"measures": None},
        {"contact_phone": "12121"},
        {"area_description": None},
        {"issuer_unit": "渝中区气象局"},
        {"sent_at": base.notice.sent_at + timedelta(minutes=1)},
        {"expires_at": base.notice.expires_at + timedelta(hours=1)},
        {"id": "w-2026-0701-002"},
    ]
    for change in changes * 2:
        message = dataclasses.replace(base, notice=dataclasses.replace(base.notice, **change))
        rendered = email._render(message, (CENTRE,)).flatten("8bit")
        assert rendered == composed_bytes(message, (CENTRE,), "8bit"), change
    assert len(email._templates) == len(changes)

    for i in range(TEMPLATE_CACHE + 10):
        notice = dataclasses.replace(base.notice, id=f"w-{i}")
        email._render(dataclasses.replace(base, notice=notice), (CENTRE,))
    assert len(email._templates) == TEMPLATE_CACHE


@pytest.mark.parametrize(
    ("delivery_id", "recipients", "title", "notice_id"),
    [
        pytest.param("d-1", ("not an address",), TITLE, None, id="bad-address"),
        pytest.param("d-1", ("a..b@cq-gov.example.cn",), TITLE, None, id="repeated-dots"),
        pytest.param("d-1", ("值班@cq-gov.example.cn",), TITLE, None, id="utf8-local-part"),
        pytest.param("d-1", ("a@b.cn\nBcc: x@y.cn",), TITLE, None, id="header-injection"),
        pytest.param("d-1\nBcc: x@y.cn", (CENTRE,), TITLE, None, id="delivery-id-newline"),
        pytest.param("d-1", (CENTRE,), "标题\n第二行", None, id="title-newline"),
        pytest.param("d-1", ("not an address",), TITLE, "w\n1", id="bad-address-and-id"),
    ],
)
def test_unusable_values_fail_as_composing_does(
    delivery_id: str, recipients: tuple[str, ...], title: str, notice_id: str | None
) -> None:
    message = make_message(delivery_id, recipients=recipients, title=title)
    if notice_id is not None:
        message = dataclasses.replace(
            message, notice=dataclasses.replace(message.notice, id=notice_id)
        )
    unusable = "bad recipient address|may not contain linefeed"
    with pytest.raises(ValueError, match=unusable) as composing:
        compose(message, SENDER, recipients)
    with pytest.raises(ValueError, match=unusable) as rendering:
        channel("smtp://127.0.0.1")._render(message, recipients)
    assert str(rendering.value) == str(composing.value)


def test_smtps_means_implicit_tls() -> None:
    email = channel("smtps://mail.example.cn")
    assert (email.use_tls, email.port) == (True, 465)
    assert channel("smtp://mail.example.cn").port == 25


# ---- the drill's in-process sink ------------------------------------------------------------


async def test_smtp_sink_records_messages() -> None:
    async with SmtpSink() as sink:
        assert sink.url.startswith("smtp://127.0.0.1:")
        async with channel(sink.url) as email:
            await email.send(make_message("d-1", recipients=(CENTRE, DEPUTY)))
            await email.send(make_message("d-2", level=3, title="暴雨黄色预警"))

    assert [(m.recipients, m.subject) for m in sink.messages] == [
        ((CENTRE, DEPUTY), f"【红色预警】{TITLE}"),
        ((CENTRE,), "【黄色预警】暴雨黄色预警"),
    ]
    assert sink.messages[0].mail_from == SENDER
    assert sink.messages[1].message["X-Delivery-Id"] == "d-2"


async def test_smtp_sink_closes_with_pooled_client_connections() -> None:
    sink = SmtpSink()
    with pytest.raises(RuntimeError, match="not running"):
        _ = sink.url
    async with sink:
        email = channel(sink.url)
        await email.send(make_message())
    # The sink closed the channel's pooled connection; the channel reopens, finds no server.
    with pytest.raises(TransientDeliveryError):
        await email.send(make_message("d-2"))
    await email.__aexit__(None, None, None)
    assert len(sink.messages) == 1
