"""Fixtures: a config directory with test clients, and the gateway app on a real loopback server."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from gateway.app import build_app
from gateway.config import REPO_CONFIG, Settings, load_settings
from tests.helpers import REPO_CONFIG_GATEWAY_YAML, TOKENS

GatewayClient = TestClient[web.Request, web.Application]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """The shipped config with test clients: platform, wanzhou (500101 only), duty (art. 26)."""
    out = tmp_path / "config"
    shutil.copytree(REPO_CONFIG, out)
    (out / "gateway.yaml").write_text(REPO_CONFIG_GATEWAY_YAML, encoding="utf-8")
    return out


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    out = {f"GATEWAY_TOKEN_{name.upper()}": token for name, token in TOKENS.items()}
    out["GATEWAY_STORE"] = f"sqlite:///{tmp_path}/gateway.db"
    return out


@pytest.fixture
def settings(config_dir: Path, env: dict[str, str]) -> Settings:
    return load_settings(config_dir, env)


MakeClient = Callable[[Settings], Awaitable[GatewayClient]]


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient) -> MakeClient:
    async def make(settings: Settings) -> GatewayClient:
        return await aiohttp_client(build_app(settings))

    return make


@pytest.fixture
async def api(settings: Settings, make_client: MakeClient) -> GatewayClient:
    """A test client of the gateway served on a loopback port, with an empty store."""
    return await make_client(settings)
