"""An in-process MQTT broker (amqtt) on a free loopback port, for `gateway drill`.

amqtt speaks MQTT 3.1.1 only: connect `MqttChannel(..., protocol="3.1.1")` to it. Retained
messages live in memory and go when the broker stops.
"""

from __future__ import annotations

import logging
from typing import Any

from amqtt.broker import Broker  # type: ignore[import-untyped]

from gateway.service import Service

log = logging.getLogger("gateway.sinks.mqtt_broker")

HOST = "127.0.0.1"
QUIET_LOGGERS = ("amqtt", "transitions")
"""amqtt logs every connection and state change at INFO; the drill's output is ours."""


class EmbeddedBroker(Service):
    """`async with EmbeddedBroker() as broker:` serves MQTT on `broker.url` until exit."""

    def __init__(self, host: str = HOST, port: int = 0) -> None:
        self.host = host
        self.port = port
        self._broker: Any = None

    @property
    def url(self) -> str:
        """`mqtt://host:port`; valid once entered."""
        if self._broker is None:
            raise RuntimeError("EmbeddedBroker is not running")
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        # Explicit bind (amqtt's default is 0.0.0.0:1883) and only the anonymous-auth plugin:
        # the default set adds $SYS publishing and packet logging the drill does not want.
        broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                "plugins": {
                    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
                },
            }
        )
        await broker.start()
        # amqtt has no public accessor for the bound address of a port-0 listener.
        server = broker._servers["default"].instance
        self.port = int(server.sockets[0].getsockname()[1])
        self._broker = broker
        log.debug("embedded MQTT broker listening on %s:%s", self.host, self.port)

    async def close(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()
