"""An in-process media partner for `gateway drill`: receives and verifies signed webhooks.

    async with WebhookSink(secret) as sink:
        endpoint = replace(endpoint, target=sink.url, secret=secret)
        ...
        sink.received  # [ReceivedWebhook(webhook_id, verified, data), ...]

Verification uses the stock `standardwebhooks` library, as a partner would; it is a drill and test
dependency, so when it is not installed the sink falls back to its own check of the same scheme
(HMAC-SHA256 over `id.timestamp.body`, `v1,` signatures, timestamps within 5 minutes). A request
that verifies is answered 200, one that does not 401 (the gateway then records a failure).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from aiohttp import web

from gateway.service import Service

log = logging.getLogger("gateway.sinks.webhook")

HOST = "127.0.0.1"
TOLERANCE_S = 300
"""The Standard Webhooks timestamp tolerance, as the reference libraries apply it."""

Verifier = Callable[[bytes, Mapping[str, str]], None]
"""Raises ValueError (or the library's error) when the request does not verify."""


class ReceivedWebhook(NamedTuple):
    """One request: its `webhook-id`, whether it verified, its parsed JSON body (None if not JSON).

    `data` is the whole envelope `{type, timestamp, data}` the channel sends.
    """

    webhook_id: str | None
    verified: bool
    data: Any


def new_secret() -> str:
    """A fresh random `whsec_` secret."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def library_verifier(secret: str) -> Verifier | None:
    """A verifier built on `standardwebhooks`, or None when that library is not installed."""
    try:
        from standardwebhooks import Webhook
    except ImportError:
        return None
    webhook = Webhook(secret)

    def verify(body: bytes, headers: Mapping[str, str]) -> None:
        webhook.verify(body, dict(headers))  # the default call, as a partner would make it

    return verify


def builtin_verifier(secret: str) -> Verifier:
    """The same scheme checked without the library (used only when it is missing)."""
    encoded = secret.removeprefix("whsec_")
    key = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
    if not key:
        raise ValueError("webhook secret may not be empty")

    def verify(body: bytes, headers: Mapping[str, str]) -> None:
        lower = {k.lower(): v for k, v in headers.items()}
        msg_id = lower.get("webhook-id")
        timestamp = lower.get("webhook-timestamp")
        signatures = lower.get("webhook-signature")
        if not (msg_id and timestamp and signatures):
            raise ValueError("missing required headers")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE_S:
            raise ValueError("timestamp missing or outside the tolerance")
        content = f"{msg_id}.{timestamp}.".encode() + body
        expected = hmac.new(key, content, hashlib.sha256).digest()
        for versioned in signatures.split(" "):
            version, _, encoded_sig = versioned.partition(",")
            try:
                candidate = base64.b64decode(encoded_sig, validate=True)
            except (binascii.Error, ValueError):
                continue
            if version == "v1" and hmac.compare_digest(expected, candidate):
                return
        raise ValueError("no matching signature")

    return verify


class WebhookSink(Service):
    """An aiohttp server on 127.0.0.1 (a free port) recording every webhook it receives."""

    def __init__(self, secret: str, *, prefer_library: bool = True) -> None:
        self.received: list[ReceivedWebhook] = []
        self._verify = (library_verifier(secret) if prefer_library else None) or builtin_verifier(
            secret
        )
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        """The URL to post to (only inside `async with`)."""
        if self._port is None:
            raise RuntimeError("WebhookSink is not running")
        return f"http://{HOST}:{self._port}/webhook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._receive)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._port = None

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            self._verify(body, request.headers)
            verified = True
        except Exception as exc:  # the library raises its own error types, and ValueError
            log.warning("webhook %s did not verify: %s", request.headers.get("webhook-id"), exc)
            verified = False
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        self.received.append(ReceivedWebhook(request.headers.get("webhook-id"), verified, data))
        return web.json_response({"verified": verified}, status=200 if verified else 401)
