"""A request body read within limits: its size, its encoding, the time it takes to arrive."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import hdrs, web

from gateway.config import DEFAULT_BODY_TIMEOUT_S
from gateway.exceptions import (
    BodyTimeout,
    ClientGone,
    InvalidWarning,
    PayloadTooLarge,
    UnsupportedMedia,
)
from gateway.web.keys import BODY_TIMEOUT

log = logging.getLogger("gateway.api")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, or PayloadTooLarge past `limit` bytes (declared or actual).

    Also UnsupportedMedia (`unsupported_encoding`) for a Content-Encoding other than identity,
    BodyTimeout when the body has not arrived within the app's BODY_TIMEOUT, InvalidWarning for
    a body aiohttp cannot frame, ClientGone (logged in one line) when the client left mid-body.
    """
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMedia(
            f"Content-Encoding {encoding} is not accepted; send the body unencoded (identity)",
            code="unsupported_encoding",
        )
    too_large = PayloadTooLarge(f"the body is larger than {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    timeout = request.app.get(BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT_S)
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError as exc:
        raise BodyTimeout(f"the body did not arrive within {timeout:g} s") from exc
    except (ConnectionError, web.RequestPayloadError) as exc:
        if request.transport is None or request.transport.is_closing():
            log.info(
                "%s %s: client %s left after %d body bytes: %s",
                request.method,
                request.path,
                request.remote,
                size,
                exc,
            )
            raise ClientGone(str(exc)) from exc
        raise InvalidWarning(f"the body cannot be read: {exc}", code="malformed_body") from exc
    return b"".join(chunks)
