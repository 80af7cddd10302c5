"""The aiohttp application: configuration loaded up front; store, channels and dispatcher
opened in `cleanup_ctx` (and closed in reverse order)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any

from aiohttp import web

from gateway.book_cache import load_book
from gateway.channel_registry import build_channels, receipt_channels
from gateway.channels import mqtt
from gateway.channels.base import Channel
from gateway.clients import Authenticator
from gateway.config import HttpSettings, Settings
from gateway.console import HUB, add_console, share_console
from gateway.coord.control import Control
from gateway.coord.coordinator import Coordinator
from gateway.coord.rate import SharedRate
from gateway.coord.relay import SharedQueue
from gateway.coord.streams import Streams
from gateway.coord.sweeper import Sweeper
from gateway.coverage import CoverageTracker
from gateway.dispatcher import ChannelRuntime, Dispatcher
from gateway.endpoints import EndpointBook
from gateway.exceptions import ConfigError
from gateway.ingest import Clock, Ingest, utc_now
from gateway.lifecycle import Lifecycle
from gateway.metrics import Metrics
from gateway.policies.authority import AuthorityPolicy
from gateway.policies.breaker import CircuitBreaker
from gateway.policies.rate import Pacer, RateLimiter
from gateway.receipts import ReceiptDesk
from gateway.reconcile import Reconciler
from gateway.redis_link import RedisLink
from gateway.release_list import ReleaseList
from gateway.store import open_store
from gateway.townships import Registry
from gateway.web.errors import error_middleware
from gateway.web.guard import AUTH
from gateway.web.keys import (
    BODY_TIMEOUT,
    BOOK,
    CLOCK,
    DISPATCHER,
    INGEST,
    MAX_BODY,
    METRICS,
    PUBLIC_METRICS,
    QUEUE_PING,
    RECEIPTS,
    REGISTRY,
    RELEASE_LIST,
    STORE,
    TRACKER,
)
from gateway.web.routes import add_routes

Sleep = Callable[[float], Awaitable[None]]


def build_app(
    settings: Settings,
    *,
    clock: Clock = utc_now,
    sleep: Sleep = asyncio.sleep,
    channels: Mapping[str, Channel] | None = None,
    book: EndpointBook | None = None,
) -> web.Application:
    """The gateway's web application; raises ConfigError before anything starts.

    `channels` replaces the configured channels (tests, drill): each must be a registered
    channel, whose settings it runs with; `book` replaces the endpoint book.
    """
    registry = Registry.load(settings.townships_path)
    release_list = ReleaseList.load(settings.release_list_path)
    authority = AuthorityPolicy(release_list, registry)
    if book is None:
        book = load_book(
            settings.endpoints_path,
            settings.townships_path,
            registry,
            settings.env,
            settings.cache_dir,
            settings.registry,
        )
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=settings.max_body_bytes + 1,
        handler_args=server_options(settings.http),
    )
    _check_partners(settings, book)
    unknown = sorted(set(channels or ()) - set(settings.registry))
    if unknown:
        raise ConfigError("(code)", "channels", f"not registered: {', '.join(unknown)}")
    app[METRICS] = Metrics()
    app[AUTH] = Authenticator(settings.clients)
    app[PUBLIC_METRICS] = settings.metrics.public
    app[MAX_BODY] = settings.max_body_bytes
    app[BODY_TIMEOUT] = settings.http.body_timeout_s
    app[REGISTRY] = registry
    app[CLOCK] = clock
    app[RELEASE_LIST] = release_list
    app[BOOK] = book
    add_console(app, clock)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            store = await stack.enter_async_context(open_store(settings.store_url))
            app[STORE] = store
            link = None
            if settings.redis.url is not None:  # one of several gateways
                deployment = await store.deployment()
                link = await stack.enter_async_context(RedisLink(settings.redis.url, deployment))
                app[QUEUE_PING] = link.ping
                await stack.enter_async_context(share_console(app, link, clock))
            store.on_commit(app[HUB].publish_entries)
            store.on_commit(app[METRICS].observe)
            for w in await store.active_warnings():
                app[METRICS].track(w.id, w.received_at)
            desk = ReceiptDesk(store, clock, book, registry, receipt_channels(settings.registry))
            app[RECEIPTS] = desk
            built = channels
            if built is None:
                built = build_channels(
                    settings.registry,
                    settings.enabled_channels(),
                    book.by_id.values(),
                    desk.sink,
                    settings.env,
                    shared=link is not None,
                )
            runtimes = {}
            for name, channel in built.items():
                await stack.enter_async_context(channel)
                cs, spec = settings.channels[name], settings.registry[name]
                runtimes[name] = ChannelRuntime(
                    channel=channel,
                    concurrency=cs.concurrency,
                    retry=cs.retry.policy(),
                    rate=_pacer(link, name, cs.rate_per_s),
                    per_endpoint=cs.per_endpoint,
                    start_order=spec.start_order,
                    clears=spec.capabilities.clears,
                    leads=spec.leads,
                )
            breaker = CircuitBreaker(settings.breaker.failures, settings.breaker.cooldown_s)
            dispatcher = Dispatcher(
                store, book, runtimes, breaker, clock=clock, sleep=sleep, registry=registry
            )
            app[DISPATCHER] = dispatcher
            if link is not None:
                control = Control(link, settings.redis.claim_idle_s)
                streams = Streams(link, runtimes)
                queue = SharedQueue(
                    streams, control, store, dispatcher, claim_idle_s=settings.redis.claim_idle_s
                )
                dispatcher.attach(queue)
                await stack.enter_async_context(control)
                await stack.enter_async_context(queue)  # exits after the dispatcher's workers
            tracker = CoverageTracker(
                store,
                book,
                registry,
                settings.coverage.deadline_map(),
                clock=clock,
                dispatch=dispatcher.dispatch,
                channels=list(runtimes),
                sleep=sleep,
            )
            app[TRACKER] = tracker
            lifecycle = Lifecycle(store, dispatcher, clock=clock, sleep=sleep)
            app[INGEST] = Ingest(
                store,
                registry,
                authority,
                app[METRICS],
                book=book,
                channels=list(runtimes),
                dispatch=dispatcher.dispatch,
                tracker=tracker,
                lifecycle=lifecycle,
                clock=clock,
                limits=settings.limits,
            )
            await stack.enter_async_context(dispatcher)
            if "mqtt" in runtimes:
                reconciler = Reconciler(
                    store,
                    runtimes["mqtt"].channel,
                    book,
                    clock=clock,
                    retired=dispatcher.retired,
                    interval_s=mqtt.SPEC.options_of(settings.channels["mqtt"]).reconcile_s,
                )
                await stack.enter_async_context(reconciler)
            await stack.enter_async_context(tracker)
            await stack.enter_async_context(lifecycle)
            if link is not None:
                sweep_s = settings.redis.sweep_s
                await stack.enter_async_context(
                    Coordinator(
                        control, store, dispatcher, breaker, lifecycle, tracker, sweep_s=sweep_s
                    )
                )
                sweeper = Sweeper(
                    streams,
                    store,
                    control,
                    sweep_s=sweep_s,
                    claim_idle_s=settings.redis.claim_idle_s,
                )
                await stack.enter_async_context(sweeper)
            yield

    app.cleanup_ctx.append(lifecycle)
    add_routes(app)
    return app


def _pacer(link: RedisLink | None, channel: str, rate_per_s: float) -> Pacer | None:
    """A channel's rate limit: shared by the gateways of a deployment (Redis), or its own."""
    if rate_per_s <= 0:
        return None
    return SharedRate(link, channel, rate_per_s) if link else RateLimiter(rate_per_s)


def server_options(http: HttpSettings) -> dict[str, Any]:
    """aiohttp's per-connection options (`handler_args`; they win over `web.run_app`'s).

    aiohttp's keep-alive timer also runs from the moment a connection opens until its first
    request head is complete, so `keepalive_timeout` is the header timeout: a slowloris client
    (a head never finished) or an idle kept-alive connection is closed after it. Bodies are
    not decompressed, so a Content-Encoding reaches `read_body`, which answers 415 as JSON
    (aiohttp would answer brotli with a plain-text 400, and inflate gzip past the size check).
    """
    return {"keepalive_timeout": http.header_timeout_s, "auto_decompress": False}


def _check_partners(settings: Settings, book: EndpointBook) -> None:
    """Every client's `partners` names a webhook partner of endpoints.yaml."""
    for client in settings.clients:
        for pid in sorted(client.partners):
            endpoint = book.by_id.get(pid)
            if endpoint is None or endpoint.channel != "webhook":
                raise ConfigError(
                    str(settings.config_dir / "gateway.yaml"),
                    f"clients.{client.name}.partners",
                    f"{pid} is not a partner in endpoints.yaml",
                )
