"""SMS: a provider interface, the stub and generic HTTP providers, and segmenting.

The channel hands one message for one SMS group (`Endpoint.recipients` are phone numbers) to a
provider and returns `delivered=False` when the provider will call back with receipts (POST
/v1/receipts, parsed and ordered per delivery in `gateway.channels.sms_receipts`). The stub
provider has no callbacks, so what it accepts counts as delivered.

Text is always sent as UCS-2 (Chinese needs it): 70 UTF-16 code units fit one SMS, longer text
goes out as concatenated parts of at most 67 units each. Phone numbers and message text are never
logged.
"""

from __future__ import annotations

import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import aiohttp
from pydantic import Field
from yarl import URL

from gateway.channels.base import Channel, Message, Outcome, PerWarning, parse_retry_after
from gateway.channels.sms_receipts import RECEIPT_SOURCE
from gateway.channels.spec import (
    BuildContext,
    ChannelOptions,
    ChannelSpec,
    EndpointFields,
    OptionError,
    Target,
    TownshipEndpoints,
)
from gateway.exceptions import (
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from gateway.service import Service
from gateway.values import Notice

log = logging.getLogger("gateway.channels.sms")

SINGLE_SEGMENT_UNITS = 70
CONCAT_SEGMENT_UNITS = 67
DEFAULT_TIMEOUT = 10.0
MAX_ANSWER_BYTES = 64 * 1024
SEGMENT_CACHE = 64
"""Warnings whose SMS parts a channel keeps, oldest dropped first."""
DEFAULT_CONCURRENCY = 32
PHONE = re.compile(r"\+?\d{5,15}")
"""A phone number as endpoints.yaml gives it."""
_JSON = json.JSONEncoder(ensure_ascii=False)


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


class SmsProvider(Service, ABC):
    """An SMS provider: `submit` hands one message to it; `async with` opens and closes it.

    `submit` returns the provider's detail (its message ids, say; it goes into the ledger) and
    raises `TransientDeliveryError`/`PermanentDeliveryError`. `message_id` is the delivery's
    idempotency key: the same on every retry, so the provider can drop duplicates.
    `expects_receipts` says whether the provider calls back with delivery receipts.
    """

    expects_receipts: ClassVar[bool]

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

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def close(self) -> None:
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

    async def start(self) -> None:
        await self.provider.start()

    async def close(self) -> None:
        await self.provider.close()

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


class SmsOptions(ChannelOptions):
    """`channels.sms` in gateway.yaml."""

    provider: Literal["stub", "http"] = "stub"
    url: str | None = Field(default=None, pattern=r"^https?://")
    token_env: str | None = "GATEWAY_SMS_TOKEN"
    """The environment variable holding the provider's bearer token."""
    callback_url: str | None = None
    timeout_s: float = Field(default=DEFAULT_TIMEOUT, gt=0, le=600)


class SmsFields(EndpointFields):
    """An SMS group of endpoints.yaml: `phones`, and the `group` name the provider knows."""

    phones: list[str] = Field(default_factory=list)
    group: str | None = None


def _check(options: SmsOptions) -> None:
    if options.provider == "http" and not options.url:
        raise OptionError("url", "the http SMS provider needs a url")


def _target(entry: SmsFields, endpoint_id: str) -> Target:
    if not entry.phones or not all(PHONE.fullmatch(p) for p in entry.phones):
        raise OptionError("phones", "needs phone numbers (digits, +)")
    return Target(entry.group or endpoint_id, recipients=tuple(entry.phones))


def _build(options: SmsOptions, context: BuildContext) -> Channel:
    if options.provider == "http" and options.url:
        token = context.env.get(options.token_env) if options.token_env else None
        return SmsChannel(
            HttpProvider(
                options.url,
                token=token or None,
                timeout=options.timeout_s,
                callback_url=options.callback_url,
            )
        )
    return SmsChannel(StubProvider())


SPEC = ChannelSpec(
    name="sms",
    options=SmsOptions,
    build=_build,
    concurrency=DEFAULT_CONCURRENCY,
    check=_check,
    township=TownshipEndpoints(SmsFields, _target),
    receipt_sources=frozenset({RECEIPT_SOURCE}),
    start_order=2,
)
