"""What an email of the email channel says, and the bytes it is sent as.

`compose` builds one delivery's `EmailMessage` (subject, body, the warning's headers, To, Date,
Message-ID derived from `delivery_id`). A channel does the same faster: what depends only on the
warning is flattened once per warning and SMTP session kind (`Template`, kept in a small LRU
cache); a delivery only adds its own headers (`Mail`), producing the same bytes `compose` +
aiosmtplib's `send_message` would. The transport is `gateway.channels.email`.
"""

from __future__ import annotations

import email.policy
import email.utils
import functools
import hashlib
import io
import re
from datetime import datetime, timedelta, timezone
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from gateway.channels.base import Message
from gateway.values import Notice

MESSAGE_ID_DOMAIN = "warning-gateway"
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


def template_key(notice: Notice) -> tuple[object, ...]:
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


class Template:
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


class Mail:
    """One delivery's email: the warning's template and this delivery's headers."""

    def __init__(
        self, template: Template, recipients: tuple[str, ...], delivery_id: str, utf8: bool
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
