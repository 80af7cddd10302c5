"""Email to township/district command centres over SMTP (aiosmtplib), on reused connections.

One `send` is one message to every address of the endpoint (`recipients`, else `target`), so a
recipient group gets one message. Connections are pooled: up to `pool_size` stay open between
sends (reuse roughly doubles throughput); a connection that fails in any way is dropped and a new
one is opened by the next send. The `Message-ID` is derived from `delivery_id`, so every attempt
of one delivery carries the same id and a mailbox can drop duplicates.

Rendering: what depends only on the warning (subject, body, the warning's headers) is flattened
once per warning and SMTP session kind and kept in a small LRU cache; a send only adds its own
headers (To, Date, Message-ID, X-Delivery-Id) and hands the bytes to `sendmail`, producing the
same bytes `compose` + aiosmtplib's `send_message` would (`gateway.channels.email_render`).

Errors: a 5xx reply, every recipient refused with 5xx, or a session the settings cannot make
work (AUTH or STARTTLS not offered) is `PermanentDeliveryError`; 4xx replies, disconnections,
refused connections and timeouts are `TransientDeliveryError`.
Some recipients refused while others accepted is a delivery, with the refused ones in `detail`.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import logging
import ssl
from collections import OrderedDict
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiosmtplib
from pydantic import Field

from gateway.channels.base import Channel, Message, Outcome
from gateway.channels.email_render import TEMPLATE_CACHE, Mail, Template, compose, template_key
from gateway.channels.spec import (
    BuildContext,
    ChannelOptions,
    ChannelSpec,
    EndpointFields,
    OptionError,
    Target,
    TownshipEndpoints,
    check_url_option,
)
from gateway.exceptions import DeliveryError, PermanentDeliveryError, TransientDeliveryError

log = logging.getLogger("gateway.channels.email")

DEFAULT_TIMEOUT = 30.0
"""Seconds for connecting and for each SMTP command."""
DEFAULT_POOL = 4
"""Connections kept open, and so sends in flight at once."""
DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
DEFAULT_URL = "smtp://127.0.0.1:25"
DEFAULT_SENDER = "重庆市突发事件预警信息发布中心 <warnings@example.org>"
DEFAULT_CONCURRENCY = 8
REPLY_CHARS = 200
"""Longest server reply text kept in an Outcome or error."""
_SMTPUTF8_MISSING = (
    "An address containing non-ASCII characters was provided, but "
    "SMTPUTF8 is not supported by this server"
)


def _short(text: str) -> str:
    return text if len(text) <= REPLY_CHARS else text[: REPLY_CHARS - 1] + "…"


def delivery_error(exc: Exception) -> DeliveryError:
    """The typed error for an aiosmtplib (or socket) failure."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = {r.recipient: f"{r.code} {_short(r.message)}" for r in exc.recipients}
        reason = f"all recipients refused: {refused}"
        if all(400 <= r.code < 500 for r in exc.recipients):
            return TransientDeliveryError(reason)
        return PermanentDeliveryError(reason)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        reason = f"SMTP {exc.code} {_short(exc.message)}"
        if exc.code >= 500:
            return PermanentDeliveryError(reason)
        return TransientDeliveryError(reason)
    if isinstance(exc, TimeoutError):
        return TransientDeliveryError(f"SMTP timeout: {exc}")
    if isinstance(exc, OSError):  # refused, reset, disconnected (aiosmtplib's are ConnectionErrors)
        return TransientDeliveryError(f"SMTP connection failed: {type(exc).__name__}: {exc}")
    # What is left is a session the settings cannot make work, e.g. AUTH not offered.
    return PermanentDeliveryError(f"SMTP session failed: {exc}")


class EmailChannel(Channel):
    """Sends warnings as email through one SMTP server (`smtp://host:port`, `smtps://` = TLS).

    `starttls` upgrades plain connections (required then); `use_tls` (or `smtps://`) speaks TLS
    from the start; `tls_context` replaces the system's CA trust (a private mail server's CA).
    `username`/`password` log in after connecting; the password is never
    logged. `timeout` bounds connecting and each SMTP command. At most `pool_size` sends run at
    once, each on its own connection; idle connections stay open until `__aexit__`.
    """

    name: ClassVar[str] = "email"
    shared_transport: ClassVar[bool] = True

    def __init__(
        self,
        url: str,
        *,
        sender: str,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        use_tls: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        pool_size: int = DEFAULT_POOL,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"email channel: {url!r} is not smtp://host:port or smtps://...")
        if pool_size < 1:
            raise ValueError("email channel: pool_size must be at least 1")
        self.host = parts.hostname
        self.port = parts.port or DEFAULT_PORTS[parts.scheme]
        self.sender = sender
        # The envelope needs the bare address; the From header keeps the display name.
        self.envelope_sender = email.utils.parseaddr(sender)[1] or sender
        self.use_tls = use_tls or parts.scheme == "smtps"
        if self.use_tls and starttls:
            raise ValueError("email channel: starttls and implicit TLS (smtps) exclude each other")
        self.starttls = starttls
        self.timeout = timeout
        self.pool_size = pool_size
        self.tls_context = tls_context
        self._username = username
        self._password = password
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[aiosmtplib.SMTP] = []
        self._open: set[aiosmtplib.SMTP] = set()
        self._sender_ascii = self.envelope_sender.isascii()
        self._templates: OrderedDict[tuple[object, ...], Template] = OrderedDict()

    def __repr__(self) -> str:
        return f"EmailChannel(smtp{'s' if self.use_tls else ''}://{self.host}:{self.port})"

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(smtp) for smtp in idle))
        for smtp in list(self._open):  # still in use by a cancelled or running send
            self._drop(smtp)

    async def send(self, message: Message) -> Outcome:
        endpoint = message.endpoint
        recipients = endpoint.recipients or ((endpoint.target,) if endpoint.target else ())
        if not recipients:
            raise PermanentDeliveryError(f"endpoint {endpoint.id} has no email address")
        try:
            mail = self._render(message, recipients)
        except ValueError as exc:
            raise PermanentDeliveryError(f"cannot address the email: {exc}") from exc
        async with self._slots:
            try:
                refused, reply = await self._transact(mail, recipients)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                error = delivery_error(exc)
                log.info(
                    "email %s to %s failed: %s", message.delivery_id, endpoint.id, error.reason
                )
                raise error from exc
            except ValueError as exc:  # an address aiosmtplib will not put in the envelope
                raise PermanentDeliveryError(f"cannot address the email: {exc}") from exc
        detail: dict[str, Any] = {
            "reply": _short(reply),
            "accepted": len(recipients) - len(refused),
        }
        if refused:
            detail["refused"] = {a: f"{r.code} {_short(r.message)}" for a, r in refused.items()}
        log.debug("email %s to %s: %s", message.delivery_id, endpoint.id, detail)
        return Outcome(delivered=True, detail=detail)

    def _render(self, message: Message, recipients: tuple[str, ...]) -> Mail:
        """The email of one delivery; raises ValueError exactly as `compose` would."""
        try:
            key = template_key(message.notice)
            template = self._templates.get(key)
            if template is None:
                template = Template(message.notice, self.sender)
                self._templates[key] = template
                if len(self._templates) > TEMPLATE_CACHE:
                    self._templates.popitem(last=False)
            else:
                self._templates.move_to_end(key)
            utf8 = not (self._sender_ascii and all(r.isascii() for r in recipients))
            return Mail(template, recipients, message.delivery_id, utf8)
        except ValueError:
            # The same error, in the same order of checks, as composing it whole.
            compose(message, self.sender, recipients)
            raise

    async def _transact(
        self, mail: Mail, recipients: tuple[str, ...]
    ) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
        smtp, reused = await self._checkout()
        try:
            return await self._send_on(smtp, mail, recipients)
        except aiosmtplib.SMTPServerDisconnected:
            if not reused:
                raise
            # An idle connection the server closed (restart, idle timeout) whose EOF we had not
            # seen yet: one more try on a fresh connection, as the retry policy would do anyway.
            log.info("idle SMTP connection to %s:%s was closed; reconnecting", self.host, self.port)
        return await self._send_on(await self._connect(), mail, recipients)

    async def _send_on(
        self, smtp: aiosmtplib.SMTP, mail: Mail, recipients: tuple[str, ...]
    ) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
        try:
            # What aiosmtplib's send_message does, with the message already rendered.
            if smtp.is_ehlo_or_helo_needed:
                try:
                    await smtp.ehlo()
                except aiosmtplib.SMTPHeloError:
                    if not smtp.is_connected:
                        raise
                    await smtp.helo()
            options = []
            if mail.utf8:
                if not smtp.supports_extension("smtputf8"):
                    raise aiosmtplib.SMTPNotSupported(_SMTPUTF8_MISSING)
                options.append("SMTPUTF8")
            if smtp.supports_extension("8BITMIME"):
                options.append("BODY=8BITMIME")
                cte_type = "8bit"
            else:
                cte_type = "7bit"
            result = await smtp.sendmail(
                self.envelope_sender,
                list(recipients),
                mail.flatten(cte_type),
                mail_options=options,
            )
        except BaseException:
            # After any error (even a clean reply) the session state is not worth trusting.
            self._drop(smtp)
            raise
        self._idle.append(smtp)
        return result

    async def _checkout(self) -> tuple[aiosmtplib.SMTP, bool]:
        while self._idle:
            smtp = self._idle.pop()
            if smtp.is_connected:
                return smtp, True
            self._drop(smtp)
        return await self._connect(), False

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            username=self._username,
            password=self._password,
            use_tls=self.use_tls,
            start_tls=self.starttls,
            tls_context=self.tls_context,
            timeout=self.timeout,
        )
        self._open.add(smtp)
        try:
            await smtp.connect()
        except BaseException:
            self._drop(smtp)
            raise
        log.debug("opened SMTP connection to %s:%s", self.host, self.port)
        return smtp

    def _drop(self, smtp: aiosmtplib.SMTP) -> None:
        self._open.discard(smtp)
        smtp.close()

    async def _quit(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            log.debug("SMTP QUIT failed: %s", exc)
        finally:
            self._drop(smtp)


class EmailOptions(ChannelOptions):
    """`channels.email` in gateway.yaml; GATEWAY_SMTP_URL overrides `url`."""

    url: str = DEFAULT_URL
    sender: str = DEFAULT_SENDER
    username: str | None = None
    password_env: str | None = "GATEWAY_SMTP_PASSWORD"
    """The environment variable holding the SMTP password."""
    starttls: bool = False
    timeout_s: float = Field(default=DEFAULT_TIMEOUT, gt=0, le=600)
    pool_size: int = Field(default=DEFAULT_POOL, ge=1, le=100)


class EmailFields(EndpointFields):
    """A mailing list of endpoints.yaml: `to`, its addresses."""

    to: list[str] = Field(default_factory=list)


def _check(options: EmailOptions) -> None:
    check_url_option(options.url, "smtp")


def _target(entry: EmailFields, endpoint_id: str) -> Target:
    if not entry.to or not all("@" in a for a in entry.to):
        raise OptionError("to", "needs email addresses")
    return Target(entry.to[0], recipients=tuple(entry.to))


def _build(options: EmailOptions, context: BuildContext) -> Channel:
    password = context.env.get(options.password_env) if options.password_env else None
    return EmailChannel(
        options.url,
        sender=options.sender,
        username=options.username,
        password=password or None,
        starttls=options.starttls,
        use_tls=options.url.startswith("smtps://"),
        timeout=options.timeout_s,
        pool_size=options.pool_size,
    )


SPEC = ChannelSpec(
    name="email",
    options=EmailOptions,
    build=_build,
    concurrency=DEFAULT_CONCURRENCY,
    env={"url": "GATEWAY_SMTP_URL"},
    check=_check,
    township=TownshipEndpoints(EmailFields, _target),
    start_order=3,
)
