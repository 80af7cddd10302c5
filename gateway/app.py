"""The aiohttp application: configuration loaded up front, the store opened in `cleanup_ctx`."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.api import AUTH, INGEST, MAX_BODY, METRICS, STORE, add_routes, error_middleware
from gateway.clients import Authenticator
from gateway.config import Settings
from gateway.ingest import Clock, Ingest, utc_now
from gateway.metrics import Metrics
from gateway.policies.authority import AuthorityPolicy
from gateway.release_list import ReleaseList
from gateway.store import open_store
from gateway.townships import Registry


def build_app(settings: Settings, *, clock: Clock = utc_now) -> web.Application:
    """The gateway's web application; raises ConfigError before anything starts."""
    registry = Registry.load(settings.townships_path)
    authority = AuthorityPolicy(ReleaseList.load(settings.release_list_path), registry)
    app = web.Application(
        middlewares=[error_middleware], client_max_size=settings.max_body_bytes + 1
    )
    app[METRICS] = Metrics()
    app[AUTH] = Authenticator(settings.clients)
    app[MAX_BODY] = settings.max_body_bytes

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_store(settings.store_url) as store:
            app[STORE] = store
            app[INGEST] = Ingest(store, registry, authority, app[METRICS], clock)
            yield

    app.cleanup_ctx.append(store_ctx)
    add_routes(app)
    return app
