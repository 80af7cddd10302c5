"""Every error of the API leaves as a JSON body `{code, message, errors?}` (`error_middleware`);
nothing internal leaks to the client."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from gateway.exceptions import BodyTimeout, ClientGone, RequestError
from gateway.web.guard import json_response

log = logging.getLogger("gateway.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as a JSON body; nothing internal leaks to the client. An HTTP
    exception's headers (Allow of a 405, Retry-After) are kept; a body timeout closes the
    connection; a client that left gets no answer."""
    try:
        return await handler(request)
    except BodyTimeout as exc:
        return await _answer_and_close(request, json_response(exc.body(), exc.status))
    except RequestError as exc:
        response = json_response(exc.body(), exc.status)
        response.headers.update(exc.headers())
        return response
    except ClientGone:
        return web.Response(status=400)  # unsendable: aiohttp drops it quietly
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        resp = json_response({"code": code, "message": exc.reason}, exc.status)
        resp.headers.extend((k, v) for k, v in exc.headers.items() if k not in _BODY_HEADERS)
        return resp
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response({"code": "internal_error", "message": "internal error"}, 500)


_BODY_HEADERS = frozenset({hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH})


async def _answer_and_close(request: web.Request, resp: web.Response) -> web.Response:
    """Send `resp`, then close the connection at once: the rest of a stalled body is not
    waited for (aiohttp would linger reading it)."""
    resp.force_close()
    await resp.prepare(request)
    await resp.write_eof()
    request.protocol.force_close()
    return resp
