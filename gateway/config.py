"""Settings from config/gateway.yaml and the environment overrides of design.md.

Precedence: command-line flag, then environment, then gateway.yaml, then the defaults below.
Every problem is a ConfigError naming file (or variable), key and reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from gateway.clients import Client, with_tokens
from gateway.exceptions import ConfigError
from gateway.yamlfile import load_yaml, parse_model

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_STORE = "sqlite:///var/gateway.db"
DEFAULT_MAX_BODY_BYTES = 64 * 1024
REPO_CONFIG = Path(__file__).resolve().parent.parent / "config"


class _ClientFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    districts: list[str] = Field(default=[], description="6-digit district codes")
    temporary_release: bool = False


class _IngestFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024, le=16 * 1024 * 1024)


class _GatewayFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    listen: str = DEFAULT_LISTEN
    store: str = DEFAULT_STORE
    mqtt_url: str | None = None
    smtp_url: str | None = None
    ingest: _IngestFile = _IngestFile()
    clients: dict[str, _ClientFile] = {}


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs to start, validated."""

    config_dir: Path
    host: str
    port: int
    store_url: str
    max_body_bytes: int
    clients: tuple[Client, ...]
    mqtt_url: str | None
    smtp_url: str | None

    @property
    def release_list_path(self) -> Path:
        return self.config_dir / "release_list.yaml"

    @property
    def townships_path(self) -> Path:
        return self.config_dir / "townships.yaml"


def default_config_dir() -> Path:
    """`./config` when it exists, else the config/ shipped beside the package."""
    here = Path("config")
    return here if (here / "gateway.yaml").exists() else REPO_CONFIG


def parse_listen(value: str, source: str, key: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:8080`) → (host, port)."""
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(source, key, f"{value!r} is not HOST:PORT")
    return host, int(port)


def check_store_url(value: str, source: str, key: str) -> str:
    """Accepts `sqlite:///relative.db` and `sqlite:////absolute.db`."""
    if not value.startswith("sqlite:///") or len(value) == len("sqlite:///"):
        raise ConfigError(
            source, key, f"{value!r}: expected sqlite:///relative.db or sqlite:////absolute.db"
        )
    return value


def check_url(value: str, scheme: str, source: str, key: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in (scheme, scheme + "s") or not parts.hostname:
        raise ConfigError(source, key, f"{value!r} is not {scheme}://host:port")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ConfigError(source, key, f"{value!r} has a bad port") from exc
    return value


def load_settings(
    config_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    listen: str | None = None,
) -> Settings:
    """Settings for a config directory (or GATEWAY_CONFIG, or the default) and environment."""
    env = os.environ if env is None else env
    if config_dir is None:
        config_dir = Path(env["GATEWAY_CONFIG"]) if env.get("GATEWAY_CONFIG") else None
    config_dir = config_dir or default_config_dir()
    if not config_dir.is_dir():
        raise ConfigError(str(config_dir), "(directory)", "no such config directory")
    path = config_dir / "gateway.yaml"
    raw = load_yaml(path) if path.exists() else {}
    data = parse_model(path, raw, _GatewayFile)
    for name, c in data.clients.items():
        for i, d in enumerate(c.districts):
            if not (len(d) == 6 and d.isdigit()):
                raise ConfigError(str(path), f"clients.{name}.districts[{i}]", "not a 6-digit code")

    host, port = parse_listen(data.listen, str(path), "listen")
    if env.get("GATEWAY_LISTEN"):
        host, port = parse_listen(env["GATEWAY_LISTEN"], "environment", "GATEWAY_LISTEN")
    if listen:
        host, port = parse_listen(listen, "command line", "--listen")

    store = check_store_url(data.store, str(path), "store")
    if env.get("GATEWAY_STORE"):
        store = check_store_url(env["GATEWAY_STORE"], "environment", "GATEWAY_STORE")

    urls: dict[str, str | None] = {}
    for key, var, scheme, value in (
        ("mqtt_url", "GATEWAY_MQTT_URL", "mqtt", data.mqtt_url),
        ("smtp_url", "GATEWAY_SMTP_URL", "smtp", data.smtp_url),
    ):
        if env.get(var):
            urls[key] = check_url(env[var], scheme, "environment", var)
        else:
            urls[key] = check_url(value, scheme, str(path), key) if value else None

    clients = with_tokens(
        (
            Client(n, None, frozenset(c.districts), c.temporary_release)
            for n, c in data.clients.items()
        ),
        env,
    )
    return Settings(
        config_dir=config_dir,
        host=host,
        port=port,
        store_url=store,
        max_body_bytes=data.ingest.max_body_bytes,
        clients=tuple(clients),
        mqtt_url=urls["mqtt_url"],
        smtp_url=urls["smtp_url"],
    )
