"""What a channel module declares about itself, so that adding a channel is adding one module.

A channel module ends with one `ChannelSpec`: its name, its own settings (the keys of
`channels.<name>` in gateway.yaml beside the common `enabled`, `concurrency`, `rate_per_s`,
`per_endpoint` and `retry`), how its township endpoints are read from endpoints.yaml, what it
can do, and how its adapter is built. `gateway.channel_registry.CHANNELS` registers the specs;
config, the endpoint book and the app read them from there and know no channel by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from gateway.channels.base import Channel, ReceiptSink
from gateway.urls import url_problem
from gateway.values import Endpoint

DEFAULT_CONCURRENCY = 16
"""Deliveries of one channel in flight, unless its spec says otherwise."""


class ChannelOptions(BaseModel):
    """Base of a channel's own settings: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EndpointFields(BaseModel):
    """Base of the keys a channel reads from one township entry of endpoints.yaml, beside the
    common `id`, `channel`, `audiences` and `levels`. Give list fields `Field(default_factory=
    list)`: pydantic deep-copies a mutable default for each of 100,000 entries."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OptionError(ValueError):
    """A channel setting (or endpoint entry) that cannot be used: `key` below its own section,
    `reason` for the operator. Config turns it into a ConfigError naming file and key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class Target:
    """Where one township endpoint sends: `Endpoint.target`, `recipients`, `devices`."""

    target: str
    recipients: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Capabilities:
    """What a channel can do, beyond `send`."""

    clears: bool = False
    """`Channel.clear` withdraws what `send` left at an endpoint (a retained message)."""
    max_body: int | None = None
    """Bytes one message may carry on this transport; None: no bound of its own."""


@dataclass(frozen=True)
class BuildContext:
    """What an adapter is built with besides its settings."""

    endpoints: Sequence[Endpoint]
    """The endpoint book's endpoints of this channel."""
    receipts: ReceiptSink
    env: Mapping[str, str]
    """The environment: secrets are read from the variables the settings name, never from
    the file."""
    shared: bool
    """One of several gateways (Redis is set): work the far side hands back is shared."""


Opts = TypeVar("Opts", bound=ChannelOptions)
F = TypeVar("F", bound=EndpointFields)


@dataclass(frozen=True, eq=False)
class ChannelSpec(Generic[Opts]):
    """One channel, as the gateway knows it (compared and hashed by identity)."""

    name: str
    options: type[Opts]
    build: Callable[[Opts, BuildContext], Channel]
    capabilities: Capabilities = Capabilities()
    concurrency: int = DEFAULT_CONCURRENCY
    """The default of `channels.<name>.concurrency`."""
    audiences: frozenset[str] = frozenset({"public", "responsible_persons"})
    """Whom its endpoints reach when endpoints.yaml does not say."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Setting → environment variable that overrides it (`url` → GATEWAY_MQTT_URL)."""
    check: Callable[[Opts], None] | None = None
    """Checks across settings, after the environment was applied; raises OptionError."""
    township: TownshipEndpoints[Any] | None = None
    """How endpoints.yaml's township entries of this channel are read; None: it has none
    (webhooks serve partners, which are read from `partners`)."""
    receipt_sources: frozenset[str] = frozenset()
    """The `Receipt.source`s that may report on its deliveries; any other is refused."""
    start_order: int = 10
    """Among the channels of one warning, lower starts first."""
    leads: bool = False
    """Its deliveries of a level go out before other channels take theirs: it reaches
    everyone in an area at once (boards and loudspeakers)."""

    @property
    def receipts(self) -> bool:
        """A delivery may be confirmed after `send` returned (a provider callback, a board ack)."""
        return bool(self.receipt_sources)

    def options_of(self, settings: ChannelOptions) -> Opts:
        """`settings` (validated for this channel) as its own options type."""
        if not isinstance(settings, self.options):
            raise TypeError(f"{type(settings).__name__} are not {self.name} settings")
        return settings

    def build_from(self, settings: ChannelOptions, context: BuildContext) -> Channel:
        """The adapter for `settings`, not yet entered."""
        return self.build(self.options_of(settings), context)


@dataclass(frozen=True)
class TownshipEndpoints(Generic[F]):
    """A channel's township entries: the keys they may carry (`fields`) and how an entry
    becomes a `Target` (raising OptionError naming the key, e.g. `phones`)."""

    fields: type[F]
    target: Callable[[F, str], Target]
    """(the entry, its endpoint id) → Target. The entry is validated with every channel's
    fields at once (its model subclasses each `fields`), so it is an `F`."""

    def read(self, entry: EndpointFields, endpoint_id: str) -> Target:
        if not isinstance(entry, self.fields):
            raise TypeError(f"{type(entry).__name__} lacks {self.fields.__name__}")
        return self.target(entry, endpoint_id)


def check_url_option(url: str, scheme: str) -> None:
    """OptionError on `url` unless it is a `scheme://host:port` URL (password never shown)."""
    problem = url_problem(url, scheme)
    if problem is not None:
        raise OptionError("url", problem)
