"""An in-process SMTP server for `gateway drill`: accepts every message and records it.

    async with SmtpSink() as sink:
        channel = EmailChannel(sink.url, sender=...)
        ...
        sink.messages  # [ReceivedMail(mail_from, recipients, subject, message), ...]

It runs aiosmtpd's `SMTP` protocol on `loop.create_server(..., "127.0.0.1", 0)` and reads the
bound port (aiosmtpd's `Controller(port=0)` does not work). A message is recorded before the
250 reply, so once the channel's `send` returns it is in `messages`.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.service import Service

log = logging.getLogger("gateway.sinks.smtp")

HOST = "127.0.0.1"
SERVER_HOSTNAME = "warning-gateway-drill"
IDLE_TIMEOUT = 300.0
"""Seconds aiosmtpd keeps an idle client connection open."""


@dataclass(frozen=True)
class ReceivedMail:
    """One accepted message: envelope sender and recipients, decoded subject, parsed message."""

    mail_from: str
    recipients: tuple[str, ...]
    subject: str
    message: EmailMessage


class _Recorder:
    """aiosmtpd handler: parse and keep each message."""

    def __init__(self, messages: list[ReceivedMail]) -> None:
        self.messages = messages
        self.parser = BytesParser(policy=default)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        parsed = self.parser.parsebytes(envelope.original_content or b"")
        assert isinstance(parsed, EmailMessage)  # policy.default parses to EmailMessage
        mail = ReceivedMail(
            mail_from=envelope.mail_from or "",
            recipients=tuple(envelope.rcpt_tos),
            subject=str(parsed.get("Subject", "")),
            message=parsed,
        )
        self.messages.append(mail)
        log.debug("sink accepted a message for %d recipient(s)", len(mail.recipients))
        return "250 2.0.0 OK"


class SmtpSink(Service):
    """Accepts SMTP on a free loopback port while entered; `url` is `smtp://127.0.0.1:PORT`."""

    def __init__(self, host: str = HOST) -> None:
        self.host = host
        self.port = 0
        self.messages: list[ReceivedMail] = []
        self._server: asyncio.Server | None = None
        self._connections: weakref.WeakSet[SMTP] = weakref.WeakSet()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("SmtpSink is not running: use `async with SmtpSink() as sink`")
        return f"smtp://{self.host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        handler = _Recorder(self.messages)

        def protocol() -> SMTP:
            smtp = SMTP(handler, hostname=SERVER_HOSTNAME, timeout=IDLE_TIMEOUT, loop=loop)
            self._connections.add(smtp)
            return smtp

        self._server = await loop.create_server(protocol, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("SMTP sink listening on %s", self.url)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Clients may still hold pooled connections open; close them so no session task lingers.
        for smtp in list(self._connections):
            if smtp.transport is not None:
                smtp.transport.close()
        await server.wait_closed()
