"""Fixtures: a config directory with test clients, and the gateway app on a real loopback server."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from gateway.app import build_app
from gateway.config import REPO_CONFIG, Settings, load_settings
from tests import store_switch
from tests.helpers import REPO_CONFIG_GATEWAY_YAML, token_env
from tests.mqtt_broker import mosquitto_fixture
from tests.redis_server import RedisServer, fresh_db, own_redis, redis_server, redis_url
from tests.sms_provider import sms_provider
from tests.smtp_server import fixture_smtp_server, fixture_smtp_server_factory
from tests.store_servers import PgCluster, fresh_database, own_pg_cluster, pg_cluster, pg_url
from tests.webhook_receiver import fixture_webhook_receivers

# Real servers, each in its own process on a free loopback port (see their modules).
__all__ = [
    "fixture_smtp_server",
    "fixture_smtp_server_factory",
    "fixture_webhook_receivers",
    "mosquitto_fixture",
    "own_pg_cluster",
    "own_redis",
    "pg_cluster",
    "pg_url",
    "redis_server",
    "redis_url",
    "sms_provider",
]

GatewayClient = TestClient[web.Request, web.Application]


@pytest.fixture(autouse=True)
def switched_store(request: pytest.FixtureRequest) -> Iterator[None]:
    """With GATEWAY_TEST_STORE=postgresql, this test's gateways use PostgreSQL and Redis
    (tests/store_switch.py), dropped after it; a no-op otherwise."""
    if not store_switch.POSTGRESQL or request.node.get_closest_marker("sqlite_only"):
        yield
        return
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    redis: RedisServer = request.getfixturevalue("redis_server")
    switch = store_switch.StoreSwitch(lambda: fresh_database(cluster), lambda: fresh_db(redis))
    store_switch.current = switch
    try:
        yield
    finally:
        store_switch.current = None
        for pg, _ in switch.pairs.values():  # a thousand copies of the template would be 8 GB
            cluster.drop_database(pg)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """The shipped config with test clients: platform, wanzhou (500101 only), duty (art. 26)."""
    out = tmp_path / "config"
    shutil.copytree(REPO_CONFIG, out)
    (out / "gateway.yaml").write_text(REPO_CONFIG_GATEWAY_YAML, encoding="utf-8")
    return out


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    out = token_env()
    out["GATEWAY_STORE"] = f"sqlite:///{tmp_path}/gateway.db"
    return out


@pytest.fixture
def settings(config_dir: Path, env: dict[str, str]) -> Settings:
    return load_settings(config_dir, env)


class MakeClient(Protocol):
    def __call__(self, settings: Settings, **build: Any) -> Awaitable[GatewayClient]: ...


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient) -> MakeClient:
    """Serve `build_app(settings, **build)` on a loopback port, on the test's store
    (tests/store_switch.py); returns its test client."""

    async def make(settings: Settings, **build: Any) -> GatewayClient:
        return await aiohttp_client(build_app(store_switch.settings_for(settings), **build))

    return make


@pytest.fixture
async def api(settings: Settings, make_client: MakeClient) -> GatewayClient:
    """A test client of the gateway served on a loopback port, with an empty store."""
    return await make_client(settings)
