"""The typed `web.AppKey`s of the app's resources, in one module that every route module imports.

Set by `gateway.app` at start; read by the route modules of `gateway.web` and the console. The
authenticator's key and the request's client are in `gateway.web.guard`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from aiohttp import web

from gateway.coverage import CoverageTracker
from gateway.dispatcher import Dispatcher
from gateway.endpoints import EndpointBook
from gateway.ingest import Ingest
from gateway.metrics import Metrics
from gateway.receipts import ReceiptDesk
from gateway.release_list import ReleaseList
from gateway.store import Store
from gateway.townships import Registry

STORE: web.AppKey[Store] = web.AppKey("store", Store)
INGEST = web.AppKey("ingest", Ingest)
METRICS = web.AppKey("metrics", Metrics)
MAX_BODY = web.AppKey("max_body", int)
BODY_TIMEOUT = web.AppKey("body_timeout", float)
REGISTRY = web.AppKey("registry", Registry)
BOOK = web.AppKey("book", EndpointBook)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
RECEIPTS = web.AppKey("receipts", ReceiptDesk)
TRACKER = web.AppKey("tracker", CoverageTracker)
RELEASE_LIST = web.AppKey("release_list", ReleaseList)
PUBLIC_METRICS = web.AppKey("public_metrics", bool)
CLOCK: web.AppKey[Callable[[], datetime]] = web.AppKey("clock")
"""The gateway's injected clock (UTC): what a request's "now" is."""
QUEUE_PING: web.AppKey[Callable[[], Awaitable[None]]] = web.AppKey("queue_ping")
"""Raises unless the shared queue (Redis) answers; set only with several gateways."""
