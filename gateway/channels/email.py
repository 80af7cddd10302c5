"""Email to township/district command centres over SMTP (aiosmtplib), on reused connections.

One `send` is one message to every address of the endpoint (`recipients`, else `target`), so a
recipient group gets one message. Connections are pooled: up to `pool_size` stay open between
sends (reuse roughly doubles throughput); a connection that fails in any way is dropped and a new
one is opened by the next send. The `Message-ID` is derived from `delivery_id`, so every attempt
of one delivery carries the same id and a mailbox can drop duplicates.

Rendering: what depends only on the warning (subject, body, the warning's headers) is flattened
once per warning and SMTP session kind and kept in a small LRU cache; a send only adds its own
headers (To, Date, Message-ID, X-Delivery-Id) and hands the bytes to `sendmail`, producing the
same bytes `compose` + aiosmtplib's `send_message` would.

Errors: a 5xx reply, every recipient refused with 5xx, or a session the settings cannot make
work (AUTH or STARTTLS not offered) is `PermanentDeliveryError`; 4xx replies, disconnections,
refused connections and timeouts are `TransientDeliveryError`.
Some recipients refused while others accepted is a delivery, with the refused ones in `detail`.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import functools
import hashlib
import io
import logging
import re
import ssl
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.utils import format_datetime
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiosmtplib

from gateway.channels.base import Channel, Message, Outcome
from gateway.exceptions import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from gateway.values import Notice

log = logging.getLogger("gateway.channels.email")

DEFAULT_TIMEOUT = 30.0
"""Seconds for connecting and for each SMTP command."""
DEFAULT_POOL = 4
"""Connections kept open, and so sends in flight at once."""
DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
MESSAGE_ID_DOMAIN = "warning-gateway"
REPLY_CHARS = 200
"""Longest server reply text kept in an Outcome or error."""
BEIJING = timezone(timedelta(hours=8), "北京时间")
MSG_TYPE_NAMES = {"alert": "发布", "update": "更新", "cancel": "解除"}
TEMPLATE_CACHE = 64
"""Warnings whose rendered email a channel keeps (least recently used dropped first)."""

_HEADERS = email.policy.default
"""The policy of `EmailMessage()`: parses and checks header values as `compose` does."""
_POLICIES = {
    (utf8, cte_type): (email.policy.SMTPUTF8 if utf8 else email.policy.SMTP).clone(
        cte_type=cte_type
    )
    for utf8 in (False, True)
    for cte_type in ("8bit", "7bit")
}
"""What aiosmtplib's `send_message` flattens with: SMTPUTF8 for non-ASCII addresses, 7bit when
the server has no 8BITMIME."""
_SMTPUTF8_MISSING = (
    "An address containing non-ASCII characters was provided, but "
    "SMTPUTF8 is not supported by this server"
)
_FIRST_SHARED = ("subject", "from")
_SECOND_SHARED = ("x-warning-id", "x-warning-level")
# Values whose header line is known without the header parser (`To: a@b.cn, c@d.cn`): plain
# dot-atom addresses and short tokens; anything else goes through the parser and its checks.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)
_PLAIN_TOKEN = re.compile(r"[A-Za-z0-9._:/-]{1,60}")


def message_id(delivery_id: str) -> str:
    """The `Message-ID` of every attempt of one delivery."""
    digest = hashlib.sha256(delivery_id.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@{MESSAGE_ID_DOMAIN}>"


def subject(notice: Notice) -> str:
    """`【红色预警】title` for an alert: level colour first, as command centres triage by it.
    An update or cancel says so first (art. 18): `【更新】红色预警 title`, `【解除】…`."""
    if notice.msg_type in ("update", "cancel"):
        return f"【{MSG_TYPE_NAMES[notice.msg_type]}】{notice.colour}预警 {notice.title}"
    return f"【{notice.colour}预警】{notice.title}"


def _when(dt: datetime) -> str:
    return dt.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M") + "（北京时间）"


def body(notice: Notice) -> str:
    """The plain-text body: title, content, measures, contact, issuer, times."""
    lines = [notice.title, "", notice.content, ""]
    if notice.measures:
        lines += ["防御措施：" + notice.measures, ""]
    kind = MSG_TYPE_NAMES.get(notice.msg_type, notice.msg_type)
    lines.append(f"预警级别：{notice.colour}（{notice.level}级）　类型：{kind}")
    if notice.area_description:
        lines.append("影响区域：" + notice.area_description)
    lines.append("发布单位：" + notice.issuer_unit)
    if notice.contact_phone:
        lines.append("咨询电话：" + notice.contact_phone)
    lines += [
        "发布时间：" + _when(notice.sent_at),
        "有效期至：" + _when(notice.expires_at),
        "预警编号：" + notice.id,
        "",
        "其他渠道无法覆盖的地方，请落实鸣锣、吹哨、入户等人工通知，并回报确认。",
    ]
    return "\n".join(lines) + "\n"


def compose(message: Message, sender: str, recipients: tuple[str, ...]) -> EmailMessage:
    """The email for one delivery; raises ValueError on an address it cannot use."""
    notice = message.notice
    mail = EmailMessage()
    mail["Subject"] = subject(notice)
    mail["From"] = sender
    mail["To"] = ", ".join(recipients)
    mail["Date"] = format_datetime(datetime.now(BEIJING))
    mail["Message-ID"] = message_id(message.delivery_id)
    mail["X-Warning-Id"] = notice.id
    mail["X-Warning-Level"] = str(notice.level)
    mail["X-Delivery-Id"] = message.delivery_id
    # RFC 3834: keeps vacation responders from answering a warning.
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(body(notice))
    if mail["To"].defects:
        raise ValueError(f"bad recipient address in {recipients!r}")
    return mail


def _template_key(notice: Notice) -> tuple[object, ...]:
    """Every field `subject` and `body` (and the warning's headers) use."""
    return (
        notice.id,
        notice.msg_type,
        notice.level,
        notice.title,
        notice.content,
        notice.measures,
        notice.contact_phone,
        notice.area_description,
        notice.issuer_unit,
        notice.sent_at,
        notice.expires_at,
    )


def _header_fields(head: bytes) -> list[bytes]:
    """A flattened header block split into its fields, continuation lines kept, CRLF each."""
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields


class _Template:
    """A warning's email without the per-delivery headers, flattened once per SMTP policy.

    Per policy it keeps three pieces: Subject + From, X-Warning-Id + X-Warning-Level, and
    Auto-Submitted + the MIME headers + the blank line + the encoded body; a delivery's
    To/Date/Message-ID go between the first two and X-Delivery-Id between the last two, the
    order `compose` sets them in.
    """

    def __init__(self, notice: Notice, sender: str) -> None:
        mail = EmailMessage()
        mail["Subject"] = subject(notice)
        mail["From"] = sender
        mail["X-Warning-Id"] = notice.id
        mail["X-Warning-Level"] = str(notice.level)
        # RFC 3834: keeps vacation responders from answering a warning.
        mail["Auto-Submitted"] = "auto-generated"
        mail.set_content(body(notice))
        self._mail = mail
        self._pieces: dict[tuple[bool, str], tuple[bytes, bytes, bytes]] = {}

    def pieces(self, kind: tuple[bool, str]) -> tuple[bytes, bytes, bytes]:
        """The three pieces for `_POLICIES[kind]`."""
        pieces = self._pieces.get(kind)
        if pieces is None:
            with io.BytesIO() as out:
                BytesGenerator(out, policy=_POLICIES[kind]).flatten(self._mail)
                flat = out.getvalue()
            head, _, rest = flat.partition(b"\r\n\r\n")
            fields = _header_fields(head)
            names = tuple(f.split(b":", 1)[0].decode("ascii").lower() for f in fields[:4])
            if names != _FIRST_SHARED + _SECOND_SHARED:  # pragma: no cover - stdlib changed
                raise RuntimeError(f"unexpected email header order {names}")
            pieces = (
                b"".join(fields[:2]),
                b"".join(fields[2:4]),
                b"".join(fields[4:]) + b"\r\n" + rest,
            )
            self._pieces[kind] = pieces
        return pieces


class _Mail:
    """One delivery's email: the warning's template and this delivery's headers."""

    def __init__(
        self, template: _Template, recipients: tuple[str, ...], delivery_id: str, utf8: bool
    ) -> None:
        self.template = template
        self.utf8 = utf8
        to = ", ".join(recipients)
        self._to: bytes | None = None
        self._to_header: Any = None
        if len(to) <= 70 and all(_PLAIN_ADDRESS.fullmatch(r) for r in recipients):
            self._to = f"To: {to}\r\n".encode("ascii")
        else:
            self._to_header = _HEADERS.header_store_parse("To", to)[1]
            if self._to_header.defects:
                raise ValueError(f"bad recipient address in {recipients!r}")
        self._date = format_datetime(datetime.now(BEIJING))
        self._message_id = f"Message-ID: {message_id(delivery_id)}\r\n".encode("ascii")
        self._delivery: bytes | None = None
        self._delivery_header: Any = None
        if _PLAIN_TOKEN.fullmatch(delivery_id):
            self._delivery = f"X-Delivery-Id: {delivery_id}\r\n".encode("ascii")
        else:
            self._delivery_header = _HEADERS.header_store_parse("X-Delivery-Id", delivery_id)[1]

    def flatten(self, cte_type: str) -> bytes:
        """The bytes `send_message` would send for this email in such a session."""
        kind = (self.utf8, cte_type)
        policy = _POLICIES[kind]
        first, second, rest = self.template.pieces(kind)
        to = self._to or policy.fold_binary("To", self._to_header)
        delivery = self._delivery or policy.fold_binary("X-Delivery-Id", self._delivery_header)
        date = _date_line(kind, self._date)
        return b"".join((first, to, date, self._message_id, second, delivery, rest))


@functools.lru_cache(maxsize=4)
def _date_line(kind: tuple[bool, str], value: str) -> bytes:
    """The Date line (kept: it changes once a second)."""
    return _POLICIES[kind].fold_binary(*_HEADERS.header_store_parse("Date", value))


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
        self._templates: OrderedDict[tuple[object, ...], _Template] = OrderedDict()

    def __repr__(self) -> str:
        return f"EmailChannel(smtp{'s' if self.use_tls else ''}://{self.host}:{self.port})"

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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

    def _render(self, message: Message, recipients: tuple[str, ...]) -> _Mail:
        """The email of one delivery; raises ValueError exactly as `compose` would."""
        try:
            key = _template_key(message.notice)
            template = self._templates.get(key)
            if template is None:
                template = _Template(message.notice, self.sender)
                self._templates[key] = template
                if len(self._templates) > TEMPLATE_CACHE:
                    self._templates.popitem(last=False)
            else:
                self._templates.move_to_end(key)
            utf8 = not (self._sender_ascii and all(r.isascii() for r in recipients))
            return _Mail(template, recipients, message.delivery_id, utf8)
        except ValueError:
            # The same error, in the same order of checks, as composing it whole.
            compose(message, self.sender, recipients)
            raise

    async def _transact(
        self, mail: _Mail, recipients: tuple[str, ...]
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
        self, smtp: aiosmtplib.SMTP, mail: _Mail, recipients: tuple[str, ...]
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
