"""SMS: a provider interface, the stub and generic HTTP providers, segmenting and receipts.

The channel hands one message for one SMS group (`Endpoint.recipients` are phone numbers) to a
provider and returns `delivered=False` when the provider will call back with receipts (POST
/v1/receipts, parsed by `parse_callback` and ordered per delivery by `SmsStatus`). The stub
provider has no callbacks, so what it accepts counts as delivered.

Text is always sent as UCS-2 (Chinese needs it): 70 UTF-16 code units fit one SMS, longer text
goes out as concatenated parts of at most 67 units each. Phone numbers and message text are never
logged.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, Self

import aiohttp
from yarl import URL

from gateway.channels.base import Channel, Message, Outcome, PerWarning, parse_retry_after
from gateway.exceptions import (
    DeliveryError,
    FieldError,
    InvalidWarning,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from gateway.text import in_utc, unicode_errors
from gateway.values import Notice, Receipt

log = logging.getLogger("gateway.channels.sms")

SINGLE_SEGMENT_UNITS = 70
CONCAT_SEGMENT_UNITS = 67
DEFAULT_TIMEOUT = 10.0
MAX_ANSWER_BYTES = 64 * 1024
RECEIPT_SOURCE = "sms-callback"
RECEIPT_STATUSES = ("delivered", "undelivered", "failed")
FAILURE_STATUSES = frozenset({"undelivered", "failed"})
MAX_MESSAGE_ID_CHARS = 256
SEGMENT_CACHE = 64
"""Warnings whose SMS parts a channel keeps, oldest dropped first."""
_JSON = json.JSONEncoder(ensure_ascii=False)
MAX_PHONE_CHARS = 32
MAX_ERROR_CHARS = 500

# On equal provider timestamps the worse status wins, so the result never depends on the order
# in which callbacks arrive.
_STATUS_RANK = {"delivered": 0, "undelivered": 1, "failed": 2}


def utf16_units(text: str) -> int:
    """The length of `text` in UTF-16 code units (a character outside the BMP counts 2)."""
    return sum(2 if ord(ch) > 0xFFFF else 1 for ch in text)


def segments(text: str) -> list[str]:
    """Split `text` into UCS-2 SMS parts; their concatenation is `text`.

    At most 70 UTF-16 code units is one part; longer text is split into parts of at most 67 units
    each, never between the two halves of a surrogate pair. Raises ValueError on empty text.
    """
    if not text:
        raise ValueError("an SMS needs text")
    if utf16_units(text) <= SINGLE_SEGMENT_UNITS:
        return [text]
    parts: list[str] = []
    start = used = 0
    for i, ch in enumerate(text):
        width = 2 if ord(ch) > 0xFFFF else 1
        if used + width > CONCAT_SEGMENT_UNITS:
            parts.append(text[start:i])
            start, used = i, 0
        used += width
    parts.append(text[start:])
    return parts


def _sms_parts(notice: Notice) -> tuple[str, ...]:
    return tuple(segments(sms_text(notice)))


def sms_text(notice: Notice) -> str:
    """`【issuer】title：content`, plus the 咨询电话 when there is one; measures are left out."""
    text = f"【{notice.issuer_unit}】{notice.title}：{notice.content}"
    if notice.contact_phone:
        text += f" 咨询电话：{notice.contact_phone}"
    return text


class SmsProvider(ABC):
    """An SMS provider: `submit` hands one message to it; `async with` opens and closes it.

    `submit` returns the provider's detail (its message ids, say; it goes into the ledger) and
    raises `TransientDeliveryError`/`PermanentDeliveryError`. `message_id` is the delivery's
    idempotency key: the same on every retry, so the provider can drop duplicates.
    `expects_receipts` says whether the provider calls back with delivery receipts.
    """

    expects_receipts: ClassVar[bool]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    @abstractmethod
    async def submit(
        self, message_id: str, phones: Sequence[str], parts: Sequence[str]
    ) -> Mapping[str, Any]:
        """Submit `parts` (one concatenated SMS) to every phone."""


class StubProvider(SmsProvider):
    """The default provider: records accepted submissions in `.sent`, fails when told to.

    It has no callbacks, so what it accepts counts as delivered. A failed submission is not
    recorded.
    """

    expects_receipts: ClassVar[bool] = False

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []
        self._failures: list[DeliveryError] = []

    def fail_next(self, n: int, *, permanent: bool = False) -> None:
        """Make the next `n` submissions raise a Transient (or Permanent) delivery error."""
        if n < 0:
            raise ValueError("n must be >= 0")
        error: type[DeliveryError] = PermanentDeliveryError if permanent else TransientDeliveryError
        self._failures.extend(error("stub SMS provider told to fail") for _ in range(n))

    async def submit(
        self, message_id: str, phones: Sequence[str], parts: Sequence[str]
    ) -> Mapping[str, Any]:
        if self._failures:
            raise self._failures.pop(0)
        self.sent.append((message_id, tuple(phones), tuple(parts)))
        return {"provider": "stub", "submission": len(self.sent)}


class HttpProvider(SmsProvider):
    """A generic provider API: POST JSON to `url`, receipts come back to `callback_url`.

    Body `{message_id, phones, parts, segments, callback_url}`, headers `Idempotency-Key:
    <message_id>` and `Authorization: Bearer <token>` when a token is set. 2xx returns the
    provider's JSON object (at most MAX_ANSWER_BYTES read); 429 (with Retry-After), 408, 5xx,
    timeouts and connection errors raise TransientDeliveryError; any other answer raises
    PermanentDeliveryError. One aiohttp session per provider, opened by `async with`.
    """

    expects_receipts: ClassVar[bool] = True

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        callback_url: str | None = None,
    ) -> None:
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("the SMS provider URL must be an absolute http(s) URL")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.url = url
        self.timeout = timeout
        self.callback_url = callback_url
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._session: aiohttp.ClientSession | None = None
        self._tail: tuple[Sequence[str], bytes] | None = None

    def __repr__(self) -> str:
        # The URL's query or user info may carry a credential.
        safe = URL(self.url).with_user(None).with_query(None)
        return f"HttpProvider({str(safe)!r})"

    async def __aenter__(self) -> Self:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def submit(
        self, message_id: str, phones: Sequence[str], parts: Sequence[str]
    ) -> Mapping[str, Any]:
        if self._session is None:
            raise RuntimeError("HttpProvider used outside 'async with'")
        headers = {**self._headers, "Idempotency-Key": message_id}
        try:
            async with self._session.post(
                self.url,
                data=self._body(message_id, phones, parts),
                headers=headers,
                allow_redirects=False,
            ) as resp:
                return await self._answer(message_id, resp)
        except TimeoutError as exc:
            raise TransientDeliveryError(
                f"SMS provider did not answer within {self.timeout}s"
            ) from exc
        except aiohttp.ClientError as exc:
            # str(exc) may name the URL, and the URL may carry a credential.
            raise TransientDeliveryError(f"SMS provider unreachable: {type(exc).__name__}") from exc

    def _body(self, message_id: str, phones: Sequence[str], parts: Sequence[str]) -> bytes:
        """`json.dumps({message_id, phones, parts, segments, callback_url})`, UTF-8; the part
        after the phones is the same for every message of a warning and encoded once."""
        if self._tail is None or self._tail[0] is not parts:
            tail = {"parts": list(parts), "segments": len(parts), "callback_url": self.callback_url}
            self._tail = (parts, b", " + _JSON.encode(tail)[1:].encode())
        head = {"message_id": message_id, "phones": list(phones)}
        return _JSON.encode(head)[:-1].encode() + self._tail[1]

    async def _answer(self, message_id: str, resp: aiohttp.ClientResponse) -> Mapping[str, Any]:
        status = resp.status
        if 200 <= status < 300:
            raw = await _read_capped(resp, MAX_ANSWER_BYTES)
            answer = _json_object(raw)
            if answer is None:
                log.warning(
                    "SMS provider accepted %s but its answer is not a JSON object of at most %d"
                    " bytes",
                    message_id,
                    MAX_ANSWER_BYTES,
                )
                return {"http_status": status}
            return answer
        reason = f"SMS provider answered HTTP {status}"
        if status == 429 or status == 408 or status >= 500:
            raise TransientDeliveryError(
                reason, retry_after=parse_retry_after(resp.headers.get("Retry-After"))
            )
        raise PermanentDeliveryError(reason)


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None when it is longer than `limit` bytes."""
    if resp.content_length is not None:
        return await resp.read() if resp.content_length <= limit else None
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(16 * 1024):
        buf += chunk
        if len(buf) > limit:
            return None
    return bytes(buf)


def _json_object(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class SmsChannel(Channel):
    """Sends a notice's SMS text to an SMS group through a provider (the stub by default).

    Raises PermanentDeliveryError for a group without phone numbers. The outcome is delivered
    only when the provider has no callbacks; its detail is `{segments, phones, provider}`.
    """

    name: ClassVar[str] = "sms"
    shared_transport: ClassVar[bool] = True

    def __init__(self, provider: SmsProvider | None = None) -> None:
        self.provider = provider if provider is not None else StubProvider()
        self._parts: PerWarning[tuple[str, ...]] = PerWarning(SEGMENT_CACHE)

    async def __aenter__(self) -> Self:
        await self.provider.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.provider.__aexit__(exc_type, exc, tb)

    async def send(self, message: Message) -> Outcome:
        phones = message.endpoint.recipients
        if not phones:
            raise PermanentDeliveryError(f"SMS endpoint {message.endpoint.id} has no recipients")
        parts = self._parts.get(message.notice, _sms_parts)
        answer = await self.provider.submit(message.delivery_id, phones, parts)
        log.debug(
            "SMS %s submitted: %d segment(s) to %d phone(s) of %s",
            message.delivery_id,
            len(parts),
            len(phones),
            message.endpoint.id,
        )
        return Outcome(
            delivered=not self.provider.expects_receipts,
            detail={"segments": len(parts), "phones": len(phones), "provider": dict(answer)},
        )


def _optional_str(doc: Mapping[str, Any], key: str, limit: int, errors: list[FieldError]) -> None:
    value = doc.get(key)
    if value is None:
        return
    if not isinstance(value, str) or not value:
        errors.append(FieldError(key, "must be a non-empty string"))
    elif len(value) > limit:
        errors.append(FieldError(key, f"longer than {limit} characters"))


def _parse_at(value: object, errors: list[FieldError]) -> datetime | None:
    if not isinstance(value, str):
        errors.append(FieldError("at", "required, an ISO 8601 timestamp with offset"))
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        errors.append(FieldError("at", "not an ISO 8601 timestamp"))
        return None
    if at.tzinfo is None or at.utcoffset() is None:
        errors.append(FieldError("at", "needs a UTC offset"))
        return None
    try:
        return in_utc(at)
    except ValueError as exc:
        errors.append(FieldError("at", str(exc)))
        return None


def _check_callback(doc: Mapping[str, Any]) -> tuple[list[FieldError], datetime | None]:
    errors: list[FieldError] = []
    message_id = doc.get("message_id")
    if not isinstance(message_id, str) or not message_id:
        errors.append(FieldError("message_id", "required, a non-empty string"))
    elif len(message_id) > MAX_MESSAGE_ID_CHARS:
        errors.append(FieldError("message_id", f"longer than {MAX_MESSAGE_ID_CHARS} characters"))
    if doc.get("status") not in RECEIPT_STATUSES:
        errors.append(FieldError("status", f"required, one of {', '.join(RECEIPT_STATUSES)}"))
    at = _parse_at(doc.get("at"), errors)
    _optional_str(doc, "phone", MAX_PHONE_CHARS, errors)
    part = doc.get("part")
    if part is not None and (isinstance(part, bool) or not isinstance(part, int) or part < 1):
        errors.append(FieldError("part", "must be an integer >= 1"))
    error = doc.get("error")
    if error is not None and not isinstance(error, str):
        errors.append(FieldError("error", "must be a string"))
    return errors, at


def parse_callback(doc: object) -> Receipt:
    """A provider's delivery callback as a Receipt; InvalidWarning (400) naming every bad field.

    Body: `{message_id, status: delivered|undelivered|failed, at: ISO 8601 with offset, phone?,
    part? (>= 1), error?}`; unknown keys are ignored, a long `error` text is truncated.
    """
    if not isinstance(doc, Mapping):
        raise InvalidWarning(
            "an SMS callback must be a JSON object",
            code="invalid_receipt",
            errors=[FieldError("(body)", "must be a JSON object")],
        )
    errors = unicode_errors(doc)
    if errors:
        raise InvalidWarning("invalid SMS callback", code="invalid_receipt", errors=errors)
    errors, at = _check_callback(doc)
    if errors or at is None:
        raise InvalidWarning("invalid SMS callback", code="invalid_receipt", errors=errors)
    error = doc.get("error")
    return Receipt(
        status=doc["status"],
        at=at,
        source=RECEIPT_SOURCE,
        delivery_id=doc["message_id"],
        detail={
            "phone": doc.get("phone"),
            "part": doc.get("part"),
            "error": error[:MAX_ERROR_CHARS] if error is not None else None,
        },
    )


class SmsStatus:
    """The receipt book of one SMS delivery; orders callbacks by the provider's timestamp.

    Per (phone, part) it keeps the status with the latest provider timestamp (a receipt without
    phone or part stands for the whole message). Overall the delivery is `failed` while any
    part's latest status is a failure (a success of another part never hides it), `delivered`
    when every part reported so far was delivered, and None before any receipt.
    """

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], tuple[str, datetime]] = {}
        self._overall: str | None = None

    @property
    def overall(self) -> str | None:
        return self._overall

    def apply(self, receipt: Receipt) -> str | None:
        """Record one receipt; return the new overall status if it changed, else None."""
        if receipt.status not in RECEIPT_STATUSES:
            raise ValueError(f"unknown SMS receipt status {receipt.status!r}")
        if receipt.at.tzinfo is None:
            raise ValueError("an SMS receipt needs a timestamp with offset")
        key = (receipt.detail.get("phone") or "", receipt.detail.get("part") or 0)
        self._record(key, receipt.status, receipt.at)
        overall = self._compute()
        if overall == self._overall:
            return None
        self._overall = overall
        return overall

    def _record(self, key: tuple[str, int], status: str, at: datetime) -> None:
        current = self._parts.get(key)
        if current is None or (at, _STATUS_RANK[status]) > (current[1], _STATUS_RANK[current[0]]):
            self._parts[key] = (status, at)

    def _compute(self) -> str | None:
        if not self._parts:
            return None
        if any(status in FAILURE_STATUSES for status, _ in self._parts.values()):
            return "failed"
        return "delivered"

    def to_json(self) -> dict[str, Any]:
        """A JSON-able document; `from_json` reads it back."""
        return {
            "overall": self._overall,
            "parts": [
                {
                    "phone": phone or None,
                    "part": part or None,
                    "status": status,
                    "at": at.isoformat(),
                }
                for (phone, part), (status, at) in sorted(self._parts.items())
            ],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SmsStatus:
        """Read back `to_json`; ValueError when the document is not one."""
        book = cls()
        parts = doc.get("parts")
        if not isinstance(parts, list):
            raise ValueError("SmsStatus document needs a list 'parts'")
        for entry in parts:
            try:
                phone, part = entry["phone"] or "", entry["part"] or 0
                status, at = entry["status"], datetime.fromisoformat(entry["at"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"bad SmsStatus part entry: {exc}") from exc
            if status not in RECEIPT_STATUSES or at.tzinfo is None:
                raise ValueError("bad SmsStatus part entry: status or timestamp")
            if not isinstance(phone, str) or not isinstance(part, int):
                raise ValueError("bad SmsStatus part entry: phone or part")
            book._record((phone, part), status, at)
        book._overall = book._compute()
        return book
