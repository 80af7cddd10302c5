"""Who is calling: the client behind a request's bearer token and the scope a route needs
(design.md "Trust: who may do what"), and JSON answers, masked for reads."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.clients import Authenticator, Client, Scope
from gateway.masking import mask

AUTH = web.AppKey("auth", Authenticator)
CLIENT = web.RequestKey("client", Client)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(body: object, status: int = 200) -> web.Response:
    """`body` as JSON, non-ASCII kept."""
    return web.Response(
        text=json.dumps(body, ensure_ascii=False),
        status=status,
        content_type="application/json",
    )


def read_response(body: object) -> web.Response:
    """A read's JSON answer with personal data masked (design.md "Trust")."""
    return json_response(mask(body))


def requires(scope: Scope | None) -> Callable[[Handler], Handler]:
    """The handler behind authentication (401) and, unless `scope` is None, that scope (403
    `scope_required`); the client is `request[CLIENT]`."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            client = request.app[AUTH].authenticate(request.headers.get("Authorization"))
            if scope is not None:
                client.require(scope)
            request[CLIENT] = client
            return await handler(request)

        return guarded

    return wrap
