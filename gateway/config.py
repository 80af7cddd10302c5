"""Settings from config/gateway.yaml and the environment overrides of design.md.

Precedence: command-line flag, then environment, then gateway.yaml, then the defaults below.
Every problem is a ConfigError naming file (or variable), key and reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from gateway.clients import DEFAULT_SCOPES, Client, Scope, with_tokens
from gateway.exceptions import ConfigError
from gateway.flow import DEFAULT_PER_ENDPOINT, DEFAULT_RECONCILE_S
from gateway.model import (
    DEFAULT_MAX_VALIDITY_DAYS,
    DEFAULT_SENT_FUTURE_S,
    DEFAULT_SENT_PAST_S,
    Limits,
)
from gateway.policies.retry import (
    DEFAULT_ATTEMPTS,
    DEFAULT_INITIAL_S,
    DEFAULT_JITTER_S,
    DEFAULT_MAX_S,
    RetryPolicy,
)
from gateway.yamlfile import load_yaml, parse_model

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_STORE = "sqlite:///var/gateway.db"
DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_BODY_TIMEOUT_S = 10.0
"""Seconds a request body may take to arrive in full; later it is answered 408."""
DEFAULT_HEADER_TIMEOUT_S = 10.0
"""Seconds a connection may stay without a complete request head (new or kept alive)."""
REPO_CONFIG = Path(__file__).resolve().parent.parent / "config"
CHANNEL_NAMES = ("sms", "email", "mqtt", "webhook")
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


class RetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    attempts: int = Field(default=DEFAULT_ATTEMPTS, ge=1, le=100)
    initial_s: float = Field(default=DEFAULT_INITIAL_S, gt=0, le=3600)
    max_s: float = Field(default=DEFAULT_MAX_S, gt=0, le=86400)
    jitter_s: float = Field(default=DEFAULT_JITTER_S, ge=0, le=3600)

    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.attempts, self.initial_s, self.max_s, self.jitter_s)


class _ChannelCommon(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    concurrency: int = Field(default=16, ge=1, le=10_000)
    rate_per_s: float = Field(default=0, ge=0, description="0 = unlimited")
    per_endpoint: int = Field(default=DEFAULT_PER_ENDPOINT, ge=1, le=10_000)
    retry: RetrySettings = RetrySettings()


class MqttSettings(_ChannelCommon):
    url: str = "mqtt://127.0.0.1:1883"
    prefix: str = Field(default="cq/warnings", pattern=r"^[^#+]+[^/#+]$")
    protocol: Literal["5", "3.1.1"] = "5"
    concurrency: int = Field(default=64, ge=1, le=10_000)
    reconcile_s: float = Field(default=DEFAULT_RECONCILE_S, ge=1, le=86400)


class EmailSettings(_ChannelCommon):
    url: str = "smtp://127.0.0.1:25"
    sender: str = "重庆市突发事件预警信息发布中心 <warnings@example.org>"
    username: str | None = None
    password_env: str | None = "GATEWAY_SMTP_PASSWORD"
    starttls: bool = False
    timeout_s: float = Field(default=30, gt=0, le=600)
    pool_size: int = Field(default=4, ge=1, le=100)
    concurrency: int = Field(default=8, ge=1, le=1000)


class SmsSettings(_ChannelCommon):
    provider: Literal["stub", "http"] = "stub"
    url: str | None = Field(default=None, pattern=r"^https?://")
    token_env: str | None = "GATEWAY_SMS_TOKEN"
    callback_url: str | None = None
    timeout_s: float = Field(default=10, gt=0, le=600)
    concurrency: int = Field(default=32, ge=1, le=10_000)


class WebhookSettings(_ChannelCommon):
    timeout_s: float = Field(default=5, gt=0, le=600)
    concurrency: int = Field(default=64, ge=1, le=10_000)


class ChannelsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sms: SmsSettings = SmsSettings()
    email: EmailSettings = EmailSettings()
    mqtt: MqttSettings = MqttSettings()
    webhook: WebhookSettings = WebhookSettings()

    def enabled(self) -> list[str]:
        return [n for n in CHANNEL_NAMES if getattr(self, n).enabled]


class BreakerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    failures: int = Field(default=5, ge=1, le=1000)
    cooldown_s: float = Field(default=30, gt=0, le=3600)


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
    channels: ChannelsSettings = ChannelsSettings()
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
    channels: ChannelsSettings
    breaker: BreakerSettings
    coverage: CoverageSettings
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    limits: Limits = field(default_factory=Limits)
    """The time window of a new warning (`ingest.sent_window_s`, `ingest.max_validity_days`)."""
    http: HttpSettings = field(default_factory=HttpSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    """Set (with a url) exactly when the store is PostgreSQL."""
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    """The environment the settings were read from; webhook secrets are looked up in it."""

    @property
    def mqtt_url(self) -> str:
        return self.channels.mqtt.url

    @property
    def smtp_url(self) -> str:
        return self.channels.email.url

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
            source, key, f"{_masked(value)!r}: expected postgresql://user@host:port/db"
        )
    if not value.startswith("sqlite:///") or len(value) == len("sqlite:///"):
        raise ConfigError(
            source,
            key,
            f"{value!r}: expected sqlite:///relative.db, sqlite:////absolute.db "
            "or postgresql://user@host:port/db",
        )
    return value


def _masked(url: str) -> str:
    """`url` with a password in it replaced by ***."""
    head, at, host = url.rpartition("@")
    if not at or ":" not in head.partition("://")[2]:
        return url
    scheme, _, user = head.partition("://")
    return f"{scheme}://{user.partition(':')[0]}:***@{host}"


def check_url(value: str, scheme: str, source: str, key: str) -> str:
    parts = urlsplit(value)
    shown = _masked(value)
    if parts.scheme not in (scheme, scheme + "s") or not parts.hostname:
        raise ConfigError(source, key, f"{shown!r} is not {scheme}://host:port")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ConfigError(source, key, f"{shown!r} has a bad port") from exc
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
    host, port = parse_listen(data.listen, str(path), "listen")
    if env.get("GATEWAY_LISTEN"):
        host, port = parse_listen(env["GATEWAY_LISTEN"], "environment", "GATEWAY_LISTEN")
    if listen:
        host, port = parse_listen(listen, "command line", "--listen")

    store = check_store_url(data.store, str(path), "store")
    if env.get("GATEWAY_STORE"):
        store = check_store_url(env["GATEWAY_STORE"], "environment", "GATEWAY_STORE")

    redis = _redis(path, data.redis, store, env)
    channels = data.channels
    mqtt_url = check_url(channels.mqtt.url, "mqtt", str(path), "channels.mqtt.url")
    smtp_url = check_url(channels.email.url, "smtp", str(path), "channels.email.url")
    if env.get("GATEWAY_MQTT_URL"):
        mqtt_url = check_url(env["GATEWAY_MQTT_URL"], "mqtt", "environment", "GATEWAY_MQTT_URL")
    if env.get("GATEWAY_SMTP_URL"):
        smtp_url = check_url(env["GATEWAY_SMTP_URL"], "smtp", "environment", "GATEWAY_SMTP_URL")
    channels = channels.model_copy(
        update={
            "mqtt": channels.mqtt.model_copy(update={"url": mqtt_url}),
            "email": channels.email.model_copy(update={"url": smtp_url}),
        }
    )
    if channels.sms.provider == "http" and not channels.sms.url:
        raise ConfigError(str(path), "channels.sms.url", "the http SMS provider needs a url")
    secrets = {
        name: env[var]
        for name, var in (
            ("smtp_password", channels.email.password_env),
            ("sms_token", channels.sms.token_env),
        )
        if var and env.get(var)
    }

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
        secrets=secrets,
        env=dict(env),
    )
