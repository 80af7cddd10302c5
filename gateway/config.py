"""Settings from config/gateway.yaml and the environment overrides of design.md.

Precedence: command-line flag, then environment, then gateway.yaml, then the defaults below.
Every problem is a ConfigError naming file (or variable), key and reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from gateway.channel_registry import CHANNELS, Registry
from gateway.channel_settings import ChannelCommon, channel_settings
from gateway.channels import email, mqtt
from gateway.clients import DEFAULT_SCOPES, Client, Scope, with_tokens
from gateway.exceptions import ConfigError
from gateway.model import (
    DEFAULT_MAX_VALIDITY_DAYS,
    DEFAULT_SENT_FUTURE_S,
    DEFAULT_SENT_PAST_S,
    Limits,
)
from gateway.urls import masked, url_problem
from gateway.yamlfile import load_yaml, parse_model

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_STORE = "sqlite:///var/gateway.db"
DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_BODY_TIMEOUT_S = 10.0
"""Seconds a request body may take to arrive in full; later it is answered 408."""
DEFAULT_HEADER_TIMEOUT_S = 10.0
"""Seconds a connection may stay without a complete request head (new or kept alive)."""
REPO_CONFIG = Path(__file__).resolve().parent.parent / "config"
DEFAULT_BREAKER_FAILURES = 5
"""Failures in a row that open an endpoint's circuit."""
DEFAULT_BREAKER_COOLDOWN_S = 30.0
"""Seconds an open circuit waits before one trial send."""
DEFAULT_DEADLINES_S = {1: 300.0, 2: 600.0, 3: 900.0, 4: 1800.0}
"""Coverage deadlines per level (1 red ... 4 blue), seconds after receipt."""


class _ClientFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    districts: list[str] = Field(default=[], description="6-digit district codes")
    temporary_release: bool = False
    scopes: list[Scope] = Field(default=sorted(DEFAULT_SCOPES), min_length=1)
    partners: list[str] = Field(default=[], description="partner ids (partner_acks)")


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    public: bool = False
    """Whether GET /metrics answers without a `read` token (a scraper on a private network)."""


class HttpSettings(BaseModel):
    """Bounds on slow clients (design.md "HTTP contract"): a body that has not arrived within
    `body_timeout_s` gets 408 and its connection is closed; a connection that has not sent a
    complete request head within `header_timeout_s` (slowloris, or idle keep-alive) is closed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    body_timeout_s: float = Field(default=DEFAULT_BODY_TIMEOUT_S, gt=0, le=600)
    header_timeout_s: float = Field(default=DEFAULT_HEADER_TIMEOUT_S, gt=0, le=3600)


class _SentWindow(BaseModel):
    """How far a new warning's sent_at may lie from the gateway's clock, in seconds."""

    model_config = ConfigDict(extra="forbid")
    past: float = Field(default=DEFAULT_SENT_PAST_S, gt=0, le=7 * 86400)
    future: float = Field(default=DEFAULT_SENT_FUTURE_S, ge=0, le=86400)


class _IngestFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024, le=16 * 1024 * 1024)
    sent_window_s: _SentWindow = _SentWindow()
    # 366 days keeps every expiry far inside what MQTT (2^32-1 s) and email dates can carry.
    max_validity_days: int = Field(default=DEFAULT_MAX_VALIDITY_DAYS, ge=1, le=366)

    def limits(self) -> Limits:
        return Limits(self.sent_window_s.past, self.sent_window_s.future, self.max_validity_days)


class BreakerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    failures: int = Field(default=DEFAULT_BREAKER_FAILURES, ge=1, le=1000)
    cooldown_s: float = Field(default=DEFAULT_BREAKER_COOLDOWN_S, gt=0, le=3600)


class CoverageSettings(BaseModel):
    """Per level (1 red ... 4 blue): seconds after receipt by which every township must be
    reached; later, uncovered townships are escalated to their command centres."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    deadlines_s: dict[Literal[1, 2, 3, 4], float] = Field(default={})

    def deadline_map(self) -> dict[int, float]:
        """Every level's deadline: the configured ones over the defaults."""
        return {**DEFAULT_DEADLINES_S, **{int(k): v for k, v in self.deadlines_s.items()}}


DEFAULT_CLAIM_IDLE_S = 15.0
DEFAULT_SWEEP_S = 5.0


class RedisSettings(BaseModel):
    """Coordination of several processes (design.md "Storage and several processes"): needed
    with a PostgreSQL store, unused with SQLite. A delivery claimed by a process that has not
    renewed its lease for `claim_idle_s` is taken over by another; every `sweep_s` one process
    queues again the pending deliveries that have no live queue entry (Redis lost them)."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(default=None, description="redis://host:port/db")
    claim_idle_s: float = Field(default=DEFAULT_CLAIM_IDLE_S, ge=1, le=3600)
    sweep_s: float = Field(default=DEFAULT_SWEEP_S, gt=0, le=3600)


class _GatewayFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    listen: str = DEFAULT_LISTEN
    store: str = DEFAULT_STORE
    ingest: _IngestFile = _IngestFile()
    clients: dict[str, _ClientFile] = {}
    channels: dict[str, Any] = Field(default={}, description="checked per channel")
    breaker: BreakerSettings = BreakerSettings()
    coverage: CoverageSettings = CoverageSettings()
    metrics: MetricsSettings = MetricsSettings()
    http: HttpSettings = HttpSettings()
    redis: RedisSettings = RedisSettings()


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs to start, validated."""

    config_dir: Path
    host: str
    port: int
    store_url: str
    max_body_bytes: int
    clients: tuple[Client, ...]
    channels: Mapping[str, ChannelCommon]
    """Every registered channel's settings, enabled or not."""
    breaker: BreakerSettings
    coverage: CoverageSettings
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    limits: Limits = field(default_factory=Limits)
    """The time window of a new warning (`ingest.sent_window_s`, `ingest.max_validity_days`)."""
    http: HttpSettings = field(default_factory=HttpSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    """Set (with a url) exactly when the store is PostgreSQL."""
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    """The environment the settings were read from; secrets (webhook, SMTP, SMS provider) are
    looked up in it by the variable names the settings give."""
    registry: Registry = field(default_factory=lambda: CHANNELS, repr=False)
    """The channels known (`gateway.channel_registry`)."""

    def enabled_channels(self) -> dict[str, ChannelCommon]:
        """The settings of the enabled channels, in registry order."""
        return {n: self.channels[n] for n in self.registry if self.channels[n].enabled}

    @property
    def mqtt_url(self) -> str:
        return mqtt.SPEC.options_of(self.channels["mqtt"]).url

    @property
    def smtp_url(self) -> str:
        return email.SPEC.options_of(self.channels["email"]).url

    @property
    def endpoints_path(self) -> Path:
        return self.config_file("endpoints.yaml")

    @property
    def cache_dir(self) -> Path | None:
        """Where files derived from the config are kept between starts (the endpoint book's
        cache): GATEWAY_CACHE_DIR, else `cache/` beside the SQLite database; None, no cache,
        for a PostgreSQL store without GATEWAY_CACHE_DIR."""
        if self.env.get("GATEWAY_CACHE_DIR"):
            return Path(self.env["GATEWAY_CACHE_DIR"])
        if self.store_url.startswith("sqlite:///"):
            return Path(self.store_url.removeprefix("sqlite:///")).parent / "cache"
        return None

    def config_file(self, name: str) -> Path:
        """`name` in the config directory, or the shipped default when the directory has none
        (a deployment may override only gateway.yaml and endpoints.yaml)."""
        own = self.config_dir / name
        return own if own.exists() else REPO_CONFIG / name

    @property
    def release_list_path(self) -> Path:
        return self.config_file("release_list.yaml")

    @property
    def townships_path(self) -> Path:
        return self.config_file("townships.yaml")


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
    """Accepts `sqlite:///relative.db`, `sqlite:////absolute.db` and
    `postgresql://user[:password]@host[:port]/database`."""
    if value.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            parts = parts._replace(netloc="")
        if parts.hostname and parts.path.strip("/") and "/" not in parts.path.strip("/"):
            return value
        raise ConfigError(
            source, key, f"{masked(value)!r}: expected postgresql://user@host:port/db"
        )
    if not value.startswith("sqlite:///") or len(value) == len("sqlite:///"):
        raise ConfigError(
            source,
            key,
            f"{value!r}: expected sqlite:///relative.db, sqlite:////absolute.db "
            "or postgresql://user@host:port/db",
        )
    return value


def check_url(value: str, scheme: str, source: str, key: str) -> str:
    """`value` when it is a `scheme://host:port` URL, else a ConfigError (no password shown)."""
    problem = url_problem(value, scheme)
    if problem is not None:
        raise ConfigError(source, key, problem)
    return value


def _redis(path: Path, redis: RedisSettings, store: str, env: Mapping[str, str]) -> RedisSettings:
    """`redis` with GATEWAY_REDIS_URL applied; a ConfigError when the store is PostgreSQL and
    no Redis is named (several processes on one database without it would each send every
    delivery), or when Redis is named for SQLite (one process: nothing to coordinate)."""
    url, source, key = redis.url, str(path), "redis.url"
    if env.get("GATEWAY_REDIS_URL"):
        url, source, key = env["GATEWAY_REDIS_URL"], "environment", "GATEWAY_REDIS_URL"
    if url is not None:
        url = check_url(url, "redis", source, key)
    postgres = store.startswith(("postgresql://", "postgres://"))
    if postgres and url is None:
        raise ConfigError(
            source,
            key,
            "a postgresql:// store needs Redis to coordinate the gateways that share it: "
            "set GATEWAY_REDIS_URL=redis://host:port/db (or redis.url in gateway.yaml)",
        )
    if not postgres and url is not None:
        raise ConfigError(
            source,
            key,
            "Redis coordinates several gateways on one PostgreSQL store; the SQLite store "
            "serves one process: unset it, or set GATEWAY_STORE=postgresql://...",
        )
    return redis.model_copy(update={"url": url})


def _clients(
    path: Path, clients: Mapping[str, _ClientFile], env: Mapping[str, str]
) -> list[Client]:
    """The API clients of gateway.yaml, checked, with their tokens from `env`."""
    for name, c in clients.items():
        for i, d in enumerate(c.districts):
            if not (len(d) == 6 and d.isdigit()):
                raise ConfigError(str(path), f"clients.{name}.districts[{i}]", "not a 6-digit code")
        if c.partners and Scope.PARTNER_ACKS not in c.scopes:
            raise ConfigError(str(path), f"clients.{name}.partners", "needs the partner_acks scope")
    return with_tokens(
        (
            Client(
                n,
                None,
                frozenset(c.districts),
                c.temporary_release,
                frozenset(c.scopes),
                frozenset(c.partners),
            )
            for n, c in clients.items()
        ),
        env,
    )


def load_settings(
    config_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    listen: str | None = None,
    registry: Registry = CHANNELS,
) -> Settings:
    """Settings for a config directory (or GATEWAY_CONFIG, or the default) and environment;
    `registry` names the channels known (a test may add its own)."""
    env = os.environ if env is None else env
    if config_dir is None:
        config_dir = Path(env["GATEWAY_CONFIG"]) if env.get("GATEWAY_CONFIG") else None
    config_dir = config_dir or default_config_dir()
    if not config_dir.is_dir():
        raise ConfigError(str(config_dir), "(directory)", "no such config directory")
    path = config_dir / "gateway.yaml"
    raw = load_yaml(path) if path.exists() else {}
    data = parse_model(path, raw, _GatewayFile)
    host, port = parse_listen(data.listen, str(path), "listen")
    if env.get("GATEWAY_LISTEN"):
        host, port = parse_listen(env["GATEWAY_LISTEN"], "environment", "GATEWAY_LISTEN")
    if listen:
        host, port = parse_listen(listen, "command line", "--listen")

    store = check_store_url(data.store, str(path), "store")
    if env.get("GATEWAY_STORE"):
        store = check_store_url(env["GATEWAY_STORE"], "environment", "GATEWAY_STORE")

    redis = _redis(path, data.redis, store, env)
    channels = channel_settings(path, data.channels, registry, env)
    clients = _clients(path, data.clients, env)
    return Settings(
        config_dir=config_dir,
        host=host,
        port=port,
        store_url=store,
        max_body_bytes=data.ingest.max_body_bytes,
        clients=tuple(clients),
        channels=channels,
        breaker=data.breaker,
        coverage=data.coverage,
        metrics=data.metrics,
        limits=data.ingest.limits(),
        http=data.http,
        redis=redis,
        env=dict(env),
        registry=registry,
    )
