"""The channels the gateway knows: each channel module's `SPEC`, registered here once.

Adding a channel is writing its module in gateway/channels/ (adapter, settings, endpoint
fields, `SPEC`; see README "Adding a channel") and naming it in `CHANNELS`. Nothing else names
a channel: config validates `channels.<name>` with the spec's settings, the endpoint book reads
township entries with its fields, the app builds it. A deployment or a test may pass its own
registry (`register(*specs)`) to `load_settings`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.channels import email, mqtt, sms, webhook
from gateway.channels.base import Channel, ReceiptSink
from gateway.channels.spec import BuildContext, ChannelOptions, ChannelSpec
from gateway.values import Endpoint

Registry = Mapping[str, ChannelSpec[Any]]
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def register(*specs: ChannelSpec[Any]) -> dict[str, ChannelSpec[Any]]:
    """The registry of `specs`, in this order; ValueError for a bad or taken name, or township
    fields that two channels declare differently (one entry model holds them all)."""
    registry: dict[str, ChannelSpec[Any]] = {}
    fields: dict[str, tuple[str, object]] = {}
    for spec in specs:
        if not _NAME.fullmatch(spec.name):
            raise ValueError(f"channel name {spec.name!r}: lowercase letters, digits, _")
        if spec.name in registry:
            raise ValueError(f"channel {spec.name!r} registered twice")
        registry[spec.name] = spec
        if spec.township is None:
            continue
        for key, info in spec.township.fields.model_fields.items():
            seen = fields.setdefault(key, (spec.name, info.annotation))
            if seen[1] != info.annotation:
                raise ValueError(f"{spec.name} and {seen[0]} declare endpoint field {key!r} apart")
    return registry


CHANNELS = register(sms.SPEC, email.SPEC, mqtt.SPEC, webhook.SPEC)


def receipt_channels(registry: Registry) -> dict[str, str]:
    """Receipt source → the one channel whose deliveries it may report on."""
    return {source: s.name for s in registry.values() for source in s.receipt_sources}


def build_channels(
    registry: Registry,
    settings: Mapping[str, ChannelOptions],
    endpoints: Iterable[Endpoint],
    receipts: ReceiptSink,
    env: Mapping[str, str],
    *,
    shared: bool,
) -> dict[str, Channel]:
    """The adapters of the channels in `settings` (the enabled ones), not yet entered."""
    mine: dict[str, list[Endpoint]] = {name: [] for name in settings}
    for e in endpoints:
        if e.channel in mine:
            mine[e.channel].append(e)
    return {
        name: registry[name].build_from(options, BuildContext(mine[name], receipts, env, shared))
        for name, options in settings.items()
    }
