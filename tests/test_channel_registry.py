"""A channel is one module (issue 13): a throwaway pager channel, defined in this file alone and
registered beside the shipped four, takes its settings from gateway.yaml, its endpoints from
endpoints.yaml, closes blind spots (art. 20), confirms by receipt, and is cleared when its warning
is cancelled (art. 18), end to end through the HTTP API."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import Field

from gateway.channel_registry import CHANNELS, register
from gateway.channels.base import Channel, Message, Outcome, ReceiptSink
from gateway.channels.spec import (
    BuildContext,
    Capabilities,
    ChannelOptions,
    ChannelSpec,
    EndpointFields,
    OptionError,
    Target,
    TownshipEndpoints,
)
from gateway.config import load_settings
from gateway.exceptions import ConfigError
from gateway.values import Endpoint, Receipt
from tests.conftest import MakeClient
from tests.fanout import SAMPLE_BLIND_SPOTS, fanout_config, ledger, post_warning, settled
from tests.helpers import auth, token_env, warning_body

PAGER_SOURCE = "pager-ack"
PAGERS: dict[str, PagerChannel] = {}
"""The pager channels built, by their `inbox` setting: what the test looks into."""


class PagerOptions(ChannelOptions):
    inbox: str = Field(min_length=1)
    """The name the test finds this channel's pages under."""


class PagerFields(EndpointFields):
    pager: str | None = None


class PagerChannel(Channel):
    """Pages are handed over (`sent`); the pager's ack (a Receipt) makes them delivered."""

    name: ClassVar[str] = "pager"

    def __init__(self, receipts: ReceiptSink) -> None:
        self.receipts = receipts
        self.pages: list[Message] = []
        self.cleared: list[tuple[str, str]] = []

    async def send(self, message: Message) -> Outcome:
        self.pages.append(message)
        return Outcome(delivered=False, detail={"pager": message.endpoint.target})

    async def clear(self, endpoint: Endpoint, warning_id: str) -> None:
        self.cleared.append((endpoint.target, warning_id))

    async def ack(self, message: Message) -> None:
        await self.receipts(
            Receipt("delivered", datetime.now(UTC), PAGER_SOURCE, delivery_id=message.delivery_id)
        )


def _target(entry: PagerFields, endpoint_id: str) -> Target:
    if not entry.pager:
        raise OptionError("pager", "a pager endpoint needs its pager number")
    return Target(entry.pager)


def _build(options: PagerOptions, context: BuildContext) -> Channel:
    channel = PagerChannel(context.receipts)
    PAGERS[options.inbox] = channel
    return channel


PAGER = ChannelSpec(
    name="pager",
    options=PagerOptions,
    build=_build,
    capabilities=Capabilities(clears=True),
    township=TownshipEndpoints(PagerFields, _target),
    receipt_sources=frozenset({PAGER_SOURCE}),
)
WITH_PAGER = register(*CHANNELS.values(), PAGER)


def pager_config(tmp_path: Path, inbox: str, pagers: dict[str, str]) -> Path:
    """The shipped config with the pager enabled and an endpoint per township of `pagers`."""
    config = fanout_config(tmp_path, channels={"pager": f"{{inbox: {inbox}, concurrency: 2}}"})
    endpoints = config / "endpoints.yaml"
    lines = [
        f'  "{t}": [{{id: pager-{t}, channel: pager, pager: "{number}"}}]'
        for t, number in pagers.items()
    ]
    text = endpoints.read_text(encoding="utf-8").replace(
        "\ntownships:\n", "\ntownships:\n" + "\n".join(lines) + "\n", 1
    )
    endpoints.write_text(text, encoding="utf-8")
    return config


def env_for(tmp_path: Path) -> dict[str, str]:
    return {**token_env(), "GATEWAY_STORE": f"sqlite:///{tmp_path}/gateway.db"}


async def wait_for(check: Any, what: str, within: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"no {what} within {within}s"
        await asyncio.sleep(0.02)


async def test_a_registered_channel_is_reached_end_to_end(
    tmp_path: Path, make_client: MakeClient
) -> None:
    pagers = {t: f"PG-{t[-3:]}" for t in SAMPLE_BLIND_SPOTS}
    config = pager_config(tmp_path, "e2e", pagers)
    api = await make_client(load_settings(config, env_for(tmp_path), registry=WITH_PAGER))
    body = warning_body(area={"districts": ["500101"]})

    answer = await post_warning(api, body)
    assert answer["blind_spots"] == []  # art. 20: the pagers reach the townships nothing else did
    pager = PAGERS["e2e"]
    await wait_for(lambda: len(pager.pages) == len(pagers), "pages")
    assert sorted(m.endpoint.target for m in pager.pages) == sorted(pagers.values())
    assert {m.notice.id for m in pager.pages} == {body["id"]}
    state = await settled(api, body["id"], allow_sent=True)
    counts = state["channels"]["pager"]
    assert (counts["planned"], counts["sent"], counts["delivered"]) == (len(pagers), len(pagers), 0)

    for message in pager.pages:
        await pager.ack(message)
    state = await settled(api, body["id"])
    counts = state["channels"]["pager"]
    assert (counts["sent"], counts["delivered"]) == (0, len(pagers))
    coverage = await (await api.get(f"/v1/warnings/{body['id']}/coverage", headers=auth())).json()
    reached = {t["township"]: t for t in coverage["townships"]}
    for township in pagers:
        assert reached[township]["status"] == "covered", reached[township]
        assert f"pager-{township}" in str(reached[township]["covered_by"])
    stages = [e["stage"] for e in await ledger(api, body["id"])]
    assert stages.count("delivered") >= len(pagers)

    cancel = warning_body(msg_type="cancel", references=body["id"], area=body["area"])
    await post_warning(api, cancel)
    await wait_for(lambda: len(pager.cleared) == len(pagers), "clears")  # art. 18
    assert sorted(pager.cleared) == sorted((n, body["id"]) for n in pagers.values())


def test_a_channel_is_known_only_once_registered(tmp_path: Path) -> None:
    config = pager_config(tmp_path, "unregistered", {SAMPLE_BLIND_SPOTS[0]: "PG-1"})
    with pytest.raises(ConfigError) as info:
        load_settings(config, env_for(tmp_path))
    assert (info.value.key, info.value.reason) == (
        "channels.pager",
        "no such channel (known: sms, email, mqtt, webhook)",
    )


@pytest.mark.parametrize(
    ("pager", "key", "reason"),
    [
        pytest.param("{inbox: ''}", "channels.pager.inbox", "at least 1 character", id="own"),
        pytest.param(
            "{inbox: x, concurrency: 0}", "channels.pager.concurrency", "greater than", id="common"
        ),
        pytest.param(
            "{inbox: x, colour: red}", "channels.pager.colour", "Extra inputs", id="unknown"
        ),
        pytest.param("{}", "channels.pager.inbox", "Field required", id="missing"),
    ],
)
def test_a_registered_channels_settings_are_checked_naming_file_and_key(
    tmp_path: Path, pager: str, key: str, reason: str
) -> None:
    config = fanout_config(tmp_path, channels={"pager": pager})
    with pytest.raises(ConfigError) as info:
        load_settings(config, env_for(tmp_path), registry=WITH_PAGER)
    assert info.value.file == str(config / "gateway.yaml")
    assert info.value.key == key
    assert reason in info.value.reason


async def test_a_registered_channels_endpoints_are_checked_naming_file_and_key(
    tmp_path: Path, make_client: MakeClient
) -> None:
    config = pager_config(tmp_path, "bad", {SAMPLE_BLIND_SPOTS[0]: ""})
    with pytest.raises(ConfigError) as info:
        await make_client(load_settings(config, env_for(tmp_path), registry=WITH_PAGER))
    assert info.value.file == str(config / "endpoints.yaml")
    assert info.value.key == f"townships.{SAMPLE_BLIND_SPOTS[0]}[0].pager"
    assert info.value.reason == "a pager endpoint needs its pager number"


def test_names_and_endpoint_fields_are_registered_once() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register(*CHANNELS.values(), PAGER, PAGER)

    class Beeper(PagerFields):
        phones: int = 0  # the SMS channel's `phones` is a list of numbers

    clash = ChannelSpec(
        name="beeper",
        options=PagerOptions,
        build=_build,
        township=TownshipEndpoints(Beeper, _target),
    )
    with pytest.raises(ValueError, match="'phones'"):
        register(*CHANNELS.values(), clash)
    with pytest.raises(ValueError, match="lowercase"):
        register(ChannelSpec(name="Pager!", options=PagerOptions, build=_build))
