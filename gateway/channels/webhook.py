"""Webhooks to media partners, signed per the Standard Webhooks spec.

One JSON POST per delivery to `endpoint.target`, body
`{"type": "warning.<msg_type>", "timestamp": ISO-8601 UTC, "data": <the warning document plus
"colour" and "delivery_id">}` in UTF-8; `format: cap` partners get the same JSON shape with
`"data": {"format": "cap", "cap": <the CAP 1.2 XML as a string>, "delivery_id"}`, so the stock
verifier's default call (it parses the body as JSON) succeeds for them too. The headers are
the ones a stock `standardwebhooks` verifier expects: `webhook-id` (the delivery id, the same on
every retry so partners can drop duplicates), `webhook-timestamp` (integer UTC seconds) and
`webhook-signature` (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one per secret when
`endpoint.secret` holds several space-separated `whsec_` secrets during a key rotation).

Answers map onto the channel contract: 2xx delivered; 410 `EndpointGone`; 408, 425, 429 (with
`Retry-After`), 5xx, timeouts and connection errors `TransientDeliveryError`; any other answer
`PermanentDeliveryError`. `Retry-After` (seconds or an HTTP-date) is passed on for 429 and
503. Redirects are not followed: a POST would turn into a bodiless GET.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import ClassVar

import aiohttp
from pydantic import Field

from gateway import __version__
from gateway.cap.profile import DEFAULT_CAP_SENDER
from gateway.cap.write import document_to_cap
from gateway.channels.base import Channel, Message, Outcome, PerWarning, parse_retry_after
from gateway.channels.spec import BuildContext, ChannelOptions, ChannelSpec
from gateway.exceptions import EndpointGone, PermanentDeliveryError, TransientDeliveryError
from gateway.values import Notice

log = logging.getLogger("gateway.channels.webhook")

DEFAULT_TIMEOUT = 5.0
"""Seconds for one whole request (connect, send, answer) when the endpoint sets none."""
DEFAULT_CONCURRENCY = 64
USER_AGENT = f"chongqing-warning-gateway/{__version__}"
MAX_DETAIL_BYTES = 200
"""At most this much of a partner's answer is read, and only to explain a failure."""
SECRET_PREFIX = "whsec_"
ACK_SOURCE = "partner-ack"
"""The `Receipt.source` of a partner's ack (POST /v1/receipts)."""
TRANSIENT_STATUSES = frozenset({408, 425, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})
"""Answers whose `Retry-After` is honoured (RFC 9110 defines it for these)."""
BODY_CACHE = 64
"""Warnings whose JSON document part a channel keeps, oldest dropped first."""
KEYS_CACHE = 4096
"""Endpoint secrets whose decoded keys are kept (one entry per partner endpoint)."""
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@functools.lru_cache(maxsize=KEYS_CACHE)
def signing_keys(secret: str | None, endpoint_id: str) -> tuple[bytes, ...]:
    """The HMAC keys of a (space-separated) `whsec_<base64>` secret string.

    Raises PermanentDeliveryError naming the endpoint (never the secret) when a secret is
    missing, lacks the prefix or is not base64.
    """
    parts = (secret or "").split()
    if not parts:
        raise PermanentDeliveryError(f"webhook endpoint {endpoint_id!r} has no secret")
    keys = []
    for n, part in enumerate(parts, 1):
        encoded = part.removeprefix(SECRET_PREFIX)
        try:
            # Unpadded base64 is accepted, as the standardwebhooks libraries do.
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not part.startswith(SECRET_PREFIX) or not key:
            raise PermanentDeliveryError(
                f"webhook endpoint {endpoint_id!r}: secret {n} of {len(parts)} is not "
                f"{SECRET_PREFIX}<base64>"
            )
        keys.append(key)
    return tuple(keys)


def sign(keys: Sequence[bytes], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,<base64>` per key, space-separated."""
    content = b"%s.%d.%s" % (webhook_id.encode(), timestamp, body)
    return " ".join(
        "v1," + base64.b64encode(hmac.digest(key, content, "sha256")).decode() for key in keys
    )


class WebhookChannel(Channel):
    """Signed JSON webhooks; one aiohttp session for the channel's lifetime (`async with`)."""

    name: ClassVar[str] = "webhook"

    def __init__(
        self,
        *,
        default_timeout: float = DEFAULT_TIMEOUT,
        user_agent: str = USER_AGENT,
        cap_sender: str = DEFAULT_CAP_SENDER,
    ) -> None:
        self.cap_sender = cap_sender
        self.default_timeout = default_timeout
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._data_heads: PerWarning[bytes] = PerWarning(BODY_CACHE)
        self._caps: PerWarning[bytes] = PerWarning(BODY_CACHE)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.default_timeout)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def build_request(self, message: Message, now: datetime) -> tuple[bytes, dict[str, str]]:
        """The exact body bytes and headers `send` posts for `message` at `now`.

        Raises PermanentDeliveryError for a format this channel cannot produce or a bad secret.
        """
        endpoint = message.endpoint
        if endpoint.format not in ("json", "cap"):
            raise PermanentDeliveryError(
                f"webhook endpoint {endpoint.id!r}: unknown format {endpoint.format!r}"
            )
        keys = signing_keys(endpoint.secret, endpoint.id)
        notice = message.notice
        if endpoint.format == "cap":
            body = self._cap_body(notice, message.delivery_id, now)
        else:
            body = self._json_body(notice, message.delivery_id, now)
        timestamp = math.floor(now.timestamp())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": self.user_agent,
            "Idempotency-Key": message.delivery_id,
            "webhook-id": message.delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(keys, message.delivery_id, timestamp, body),
        }
        return body, headers

    def _json_body(self, notice: Notice, delivery_id: str, now: datetime) -> bytes:
        """`{"type", "timestamp", "data": {**document, "colour", "delivery_id"}}` as compact
        UTF-8 JSON; the document part is encoded once per warning, not once per partner."""
        head = self._data_heads.get(notice, _data_head)
        return self._envelope(notice, now, head + _JSON.encode(delivery_id).encode() + b"}")

    def _cap_body(self, notice: Notice, delivery_id: str, now: datetime) -> bytes:
        """`{"type", "timestamp", "data": {"format": "cap", "cap": <CAP 1.2 XML>,
        "delivery_id"}}`: the CAP message inside the Standard Webhooks JSON payload shape, so a
        stock verifier's default call (which parses the body as JSON) accepts it."""
        xml = self._caps.get(notice, self._render_cap).decode()
        data = {"format": "cap", "cap": xml, "delivery_id": delivery_id}
        return self._envelope(notice, now, _JSON.encode(data).encode())

    def _render_cap(self, notice: Notice) -> bytes:
        return document_to_cap(
            notice.document, sender=self.cap_sender, referenced_sent_at=notice.referenced_sent_at
        )

    @staticmethod
    def _envelope(notice: Notice, now: datetime, data: bytes) -> bytes:
        kind = _JSON.encode(f"warning.{notice.msg_type}")
        stamp = _JSON.encode(now.astimezone(UTC).isoformat())
        return b"".join((f'{{"type":{kind},"timestamp":{stamp},"data":'.encode(), data, b"}"))

    async def send(self, message: Message) -> Outcome:
        """POST the signed notice; see the module docstring for how answers map to errors."""
        if self._session is None:
            raise RuntimeError("WebhookChannel is used outside `async with`")
        endpoint = message.endpoint
        body, headers = self.build_request(message, datetime.now(UTC))
        timeout = endpoint.timeout if endpoint.timeout is not None else self.default_timeout
        where = f"webhook endpoint {endpoint.id!r}"
        try:
            async with self._session.post(
                endpoint.target,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                if 200 <= status < 300:
                    log.debug("%s delivered %s: %s", where, message.delivery_id, status)
                    return Outcome(delivered=True, detail={"status": status})
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                snippet = await _read_snippet(resp)
        except aiohttp.InvalidURL as exc:
            raise PermanentDeliveryError(f"{where}: invalid URL") from exc
        except TimeoutError as exc:  # aiohttp's timeouts subclass it too
            raise TransientDeliveryError(f"{where}: no answer within {timeout:g} s") from exc
        except aiohttp.ClientError as exc:
            raise TransientDeliveryError(f"{where}: {type(exc).__name__}: {exc}") from exc
        log.info("%s answered %s to %s", where, status, message.delivery_id)
        reason = f"{where} answered HTTP {status}" + (f": {snippet}" if snippet else "")
        if status == 410:
            raise EndpointGone(reason)
        if status in TRANSIENT_STATUSES or status >= 500:
            raise TransientDeliveryError(
                reason, retry_after=retry_after if status in RETRY_AFTER_STATUSES else None
            )
        raise PermanentDeliveryError(reason)


def _data_head(notice: Notice) -> bytes:
    """`{**document, "colour", "delivery_id":` as compact JSON, the delivery id to follow."""
    data = {**notice.document, "colour": notice.colour}
    data.pop("delivery_id", None)  # never a warning field: the delivery's own id goes last
    return _JSON.encode(data)[:-1].encode() + b',"delivery_id":'


async def _read_snippet(resp: aiohttp.ClientResponse) -> str:
    """At most MAX_DETAIL_BYTES of the answer as text; the rest is never read."""
    try:
        raw = await resp.content.read(MAX_DETAIL_BYTES)
    except (aiohttp.ClientError, TimeoutError):
        return ""
    return " ".join(raw.decode("utf-8", errors="replace").split())


class WebhookOptions(ChannelOptions):
    """`channels.webhook` in gateway.yaml (a partner's own `timeout_s` wins)."""

    timeout_s: float = Field(default=DEFAULT_TIMEOUT, gt=0, le=600)


def _build(options: WebhookOptions, context: BuildContext) -> Channel:
    return WebhookChannel(default_timeout=options.timeout_s)


SPEC = ChannelSpec(
    name="webhook",
    options=WebhookOptions,
    build=_build,
    concurrency=DEFAULT_CONCURRENCY,
    audiences=frozenset({"public"}),
    receipt_sources=frozenset({ACK_SOURCE}),
    start_order=1,
)
