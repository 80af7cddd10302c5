"""The endpoint book: config/endpoints.yaml loaded into `gateway.values.Endpoint`s.

Township endpoints serve one township; partners (webhooks) serve districts or the whole city.
Webhook secrets come from the environment variable each partner names, never from the file.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from gateway.channel_registry import CHANNELS, Registry
from gateway.channels.sms import PHONE
from gateway.channels.spec import ChannelSpec, EndpointFields, OptionError
from gateway.exceptions import ConfigError
from gateway.model import Audience
from gateway.townships import Registry as TownshipRegistry
from gateway.values import Endpoint
from gateway.yamlfile import collector_paused, load_model, load_yaml

log = logging.getLogger("gateway.endpoints")

H = TypeVar("H", bound=Hashable)

ENDPOINT_ID = r"^[A-Za-z0-9._-]{1,100}$"


class _Common(EndpointFields):
    id: str = Field(pattern=ENDPOINT_ID)
    audiences: list[Audience] | None = Field(default=None, min_length=1)
    levels: list[int] | None = Field(default=None, min_length=1)


class _TownshipEntry(_Common):
    """A township entry: the common keys, `channel`, and (in the model `_Models` builds) the
    fields of every channel that has township endpoints."""

    channel: str


class _Partner(_Common):
    name: str
    url: str = Field(pattern=r"^https?://")
    secret_env: str | None = Field(default=None, pattern=r"^[A-Z][A-Z0-9_]*$")
    timeout_s: float | None = Field(default=None, gt=0, le=120)
    districts: list[str] | Literal["all"] = "all"
    format: Literal["json", "cap"] = "json"


class _Centre(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    email: list[str] = []
    phones: list[str] = []


class _FileBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    townships: dict[str, list[_TownshipEntry]] = {}
    partners: list[_Partner] = []
    command_centres: dict[str, _Centre] = {}


@dataclass(frozen=True)
class _Models:
    """The models of endpoints.yaml for one registry of channels."""

    entry: type[_TownshipEntry]
    items: TypeAdapter[list[_TownshipEntry]]
    whole: type[_FileBase]

    @staticmethod
    @functools.cache
    def of(specs: tuple[ChannelSpec[Any], ...]) -> _Models:
        # The common keys first (the channel last among them) keep the errors in file order.
        township = sorted((s for s in specs if s.township), key=lambda s: s.start_order)
        channel: Any = Literal[tuple(s.name for s in township)]
        own = tuple(s.township.fields for s in township if s.township)
        entry = cast(
            type[_TownshipEntry],
            create_model(
                "_TownshipEndpoint", __base__=(*own, _TownshipEntry), channel=(channel, ...)
            ),
        )
        whole = cast(
            type[_FileBase],
            create_model(
                "_EndpointsFile",
                __base__=_FileBase,
                townships=(dict[str, list[entry]], {}),  # type: ignore[valid-type]
            ),
        )
        return _Models(entry, TypeAdapter(list[entry]), whole)  # type: ignore[valid-type]


def _models(registry: Registry) -> _Models:
    return _Models.of(tuple(registry.values()))


class EndpointBook:
    """Endpoints by id and by township; immutable after loading."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self.by_id: dict[str, Endpoint] = {}
        self.by_township: dict[str, list[Endpoint]] = {}
        self.centres: dict[str, list[Endpoint]] = {}
        with collector_paused():
            for e in endpoints:
                self.by_id[e.id] = e
                if e.escalation_for is not None:
                    self.centres.setdefault(e.escalation_for, []).append(e)
                    continue
                for t in e.townships:
                    self.by_township.setdefault(t, []).append(e)
            self._order = {eid: i for i, eid in enumerate(self.by_id)}

    def serving(self, townships: Iterable[str]) -> list[Endpoint]:
        """Every endpoint serving any of `townships`, each once, in config order."""
        seen: dict[str, Endpoint] = {}
        for t in townships:
            for e in self.by_township.get(t, ()):
                seen.setdefault(e.id, e)
        return sorted(seen.values(), key=lambda e: self._order[e.id])

    def centres_for(self, township: str) -> list[Endpoint]:
        """The command-centre contacts to escalate a township to: its own, then its district's."""
        return [*self.centres.get(township, ()), *self.centres.get(township[:6], ())]

    def replace_endpoints(self, changes: Mapping[str, Endpoint]) -> EndpointBook:
        """A book with some endpoints swapped (the drill points partners at its own sinks)."""
        return EndpointBook(changes.get(e.id, e) for e in self.by_id.values())

    @classmethod
    def load(
        cls,
        path: Path,
        registry: TownshipRegistry,
        env: Mapping[str, str],
        channels: Registry = CHANNELS,
    ) -> EndpointBook:
        """The book of endpoints.yaml, secrets read from `env`; a bad file is a ConfigError."""
        return cls(with_secrets(read_endpoints(path, registry, channels), env))

    def without_secret(self) -> list[str]:
        """Ids of webhook endpoints whose secret is not set (their deliveries will fail)."""
        return [e.id for e in self.by_id.values() if e.channel == "webhook" and not e.secret]


def read_endpoints(
    path: Path, registry: TownshipRegistry, channels: Registry = CHANNELS
) -> list[Endpoint]:
    """The validated endpoints of endpoints.yaml in config order, without their secrets
    (`with_secrets`); equal values share one object (a city has 100,000 endpoints).

    Townships are validated one at a time and their parsed YAML dropped as they go, so the
    models of the whole file are never alive at once (they took more memory than the book).
    On any error the whole file is validated at once, as it always was, so that the
    ConfigError is the one it always was: the first validation error of the file (with the
    count of the others), else the first other problem.
    """
    models = _models(channels)
    with collector_paused():
        data = load_yaml(path)
        try:
            return _by_township(path, registry, data, models, channels)
        except (ConfigError, ValidationError, _Unexpected):
            pass
        # `data` is used up by now: parsed again.
        whole = load_model(path, models.whole)
        return _read(path, registry, whole.townships.items(), whole, channels)


class _Unexpected(Exception):
    """A file whose shape the township-by-township reading leaves to the whole-file one."""


_TOP_KEYS = frozenset(_FileBase.model_fields)


def _by_township(
    path: Path, registry: TownshipRegistry, data: object, models: _Models, channels: Registry
) -> list[Endpoint]:
    data = {} if data is None else data
    if not isinstance(data, dict) or not data.keys() <= _TOP_KEYS:
        raise _Unexpected
    townships = data.pop("townships", {})
    if not isinstance(townships, dict):
        raise _Unexpected

    def validated() -> Iterator[tuple[str, list[_TownshipEntry]]]:
        for code in list(townships):
            if type(code) is not str:
                raise _Unexpected
            yield code, models.items.validate_python(townships.pop(code))

    return _read(path, registry, validated(), _FileBase.model_validate(data), channels)


def _read(
    path: Path,
    registry: TownshipRegistry,
    townships: Iterable[tuple[str, list[_TownshipEntry]]],
    data: _FileBase,
    channels: Registry,
) -> list[Endpoint]:
    """The endpoints of validated townships, then partners and command centres of `data`."""
    share = Shared()
    endpoints: list[Endpoint] = []
    for code, items in townships:
        if code not in registry.townships:
            raise ConfigError(str(path), f"townships.{code}", "unknown township code")
        code = sys.intern(code)
        for i, item in enumerate(items):
            key = f"townships.{code}[{i}]"
            spec = channels[item.channel]
            endpoints.append(_township_endpoint(path, key, code, item, spec, share))
    webhook = channels.get("webhook")
    for i, p in enumerate(data.partners):
        if webhook is None:
            raise ConfigError(str(path), f"partners[{i}]", "no webhook channel is registered")
        endpoints.append(_partner(path, f"partners[{i}]", p, registry, webhook, share))
    for code, centre in data.command_centres.items():
        if not registry.known(code):
            raise ConfigError(str(path), f"command_centres.{code}", "unknown area code")
        endpoints.extend(_centre(path, f"command_centres.{code}", code, centre))
    seen: set[str] = set()
    for e in endpoints:
        if e.id in seen:
            raise ConfigError(str(path), e.id, "duplicate endpoint id")
        seen.add(e.id)
    return endpoints


def with_secrets(endpoints: Iterable[Endpoint], env: Mapping[str, str]) -> list[Endpoint]:
    """`endpoints` with each webhook's secret read from its `secret_env` in `env`."""
    return [
        replace(e, secret=env.get(e.secret_env) or None) if e.secret_env else e for e in endpoints
    ]


class Shared:
    """One object for each distinct value: the townships tuple of one township, a set of
    levels, a channel name are each kept once, not once per endpoint."""

    def __init__(self) -> None:
        self._seen: dict[object, object] = {}

    def __call__(self, value: H) -> H:
        kept = self._seen.setdefault(value, value)
        assert type(kept) is type(value)
        return kept


def _levels(path: Path, key: str, levels: list[int] | None) -> frozenset[int]:
    if levels is None:
        return frozenset({1, 2, 3, 4})
    if not set(levels) <= {1, 2, 3, 4}:
        raise ConfigError(str(path), f"{key}.levels", "levels are 1-4")
    return frozenset(levels)


def _audiences(spec: ChannelSpec[Any], audiences: list[Audience] | None) -> frozenset[str]:
    return frozenset(a.value for a in audiences) if audiences else spec.audiences


def _township_endpoint(
    path: Path, key: str, code: str, item: _TownshipEntry, spec: ChannelSpec[Any], share: Shared
) -> Endpoint:
    assert spec.township is not None  # the entry model admits only such channels
    try:
        where = spec.township.read(item, item.id)
    except OptionError as exc:
        raise ConfigError(str(path), f"{key}.{exc.key}", exc.reason) from exc
    return Endpoint(
        id=item.id,
        channel=share(item.channel),
        townships=share((code,)),
        target=where.target,
        recipients=where.recipients,
        devices=where.devices,
        audiences=share(_audiences(spec, item.audiences)),
        levels=share(_levels(path, key, item.levels)),
    )


def _partner(
    path: Path,
    key: str,
    p: _Partner,
    registry: TownshipRegistry,
    webhook: ChannelSpec[Any],
    share: Shared,
) -> Endpoint:
    if p.districts == "all":
        townships = tuple(registry.townships)
    else:
        unknown = [d for d in p.districts if d not in registry.districts]
        if unknown:
            raise ConfigError(str(path), f"{key}.districts", f"unknown: {', '.join(unknown)}")
        townships = tuple(registry.expand(p.districts))
    return Endpoint(
        id=p.id,
        channel=webhook.name,
        townships=share(townships),
        target=p.url,
        secret_env=p.secret_env,
        timeout=p.timeout_s,
        audiences=_audiences(webhook, p.audiences),
        levels=_levels(path, key, p.levels),
        format=p.format,
        covers_townships=False,
    )


def _centre(path: Path, key: str, code: str, c: _Centre) -> list[Endpoint]:
    """A command centre's contacts as escalation-only endpoints (email, SMS)."""
    out: list[Endpoint] = []
    if c.email:
        if any("@" not in a for a in c.email):
            raise ConfigError(str(path), f"{key}.email", "needs email addresses")
        out.append(
            Endpoint(
                id=f"centre-{code}-email",
                channel="email",
                townships=(),
                target=c.name,
                recipients=tuple(c.email),
                escalation_for=code,
            )
        )
    if c.phones:
        if any(not PHONE.fullmatch(p) for p in c.phones):
            raise ConfigError(str(path), f"{key}.phones", "needs phone numbers (digits, +)")
        out.append(
            Endpoint(
                id=f"centre-{code}-sms",
                channel="sms",
                townships=(),
                target=c.name,
                recipients=tuple(c.phones),
                escalation_for=code,
            )
        )
    if not out:
        raise ConfigError(str(path), key, "a command centre needs email or phones")
    return out
