"""A real Mosquitto broker in its own process on a free loopback port, and its fixture.

Use the fixture by importing it into a test module: `from tests.mqtt_broker import
mosquitto_fixture  # noqa: F401`, then ask for `mosquitto`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import free_port

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
MAX_QUEUED_MESSAGES = 10_000
"""Per-client QoS-1 queue: the default 1,000 silently drops messages for a slow subscriber;
tests stay below this bound."""
_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto")


class BrokerUnavailable(RuntimeError):
    """Mosquitto is not installed or did not start; the message says why."""


def mosquitto_binary() -> str:
    for candidate in _CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise BrokerUnavailable("mosquitto not found (apt-get install mosquitto)")


# CONNECT (MQTT 3.1.1, clean session, keepalive 60, client id "probe"), then DISCONNECT.
_PROBE_CONNECT = bytes.fromhex("101100044d5154540402003c000570726f6265")
_DISCONNECT = bytes.fromhex("e000")


def _answers_mqtt(port: int) -> bool:
    """True when an MQTT broker (not merely some listener) answers CONNECT with CONNACK."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(_PROBE_CONNECT)
            connack = sock.recv(4)
            sock.sendall(_DISCONNECT)
    except OSError:
        return False
    return connack[:1] == b"\x20"


class Mosquitto:
    """`mosquitto -c FILE` on 127.0.0.1:`port`; `restart` keeps the port. Not persistent by
    default: retained messages and sessions are lost on stop. `persistent=True` saves them at a
    clean `stop` (SIGTERM) and loads them on `start`, as a broker restarted for maintenance
    does; a `kill` (SIGKILL) loses what changed since the last save, as in a crash."""

    def __init__(self, workdir: Path, port: int | None = None, *, persistent: bool = False) -> None:
        self.port = port or free_port()
        self.config = workdir / f"mosquitto-{self.port}.conf"
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        persistence = "persistence false\n"
        if persistent:
            store = workdir / f"mosquitto-{self.port}-store"
            store.mkdir(exist_ok=True)
            # As root, Mosquitto would drop to its own user, who cannot write under tmp_path.
            persistence = f"persistence true\npersistence_location {store}/\nuser root\n"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            f"{persistence}"
            f"max_queued_messages {MAX_QUEUED_MESSAGES}\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
            "log_type notice\n",
            encoding="utf-8",
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        """Start and wait until the port accepts connections; BrokerUnavailable if not."""
        binary = mosquitto_binary()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerUnavailable(f"mosquitto exited {self.proc.returncode}: {self.output()}")
            if _answers_mqtt(self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerUnavailable(
            f"mosquitto did not listen on {self.port} in {START_TIMEOUT}s: {self.output()}"
        )

    def stop(self) -> None:
        """SIGTERM (SIGKILL after STOP_TIMEOUT) and wait for the process to exit."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as in a crash."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> Mosquitto:
        self.stop()
        return self.start()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture(name="mosquitto")
def mosquitto_fixture(tmp_path: Path) -> Iterator[Mosquitto]:
    """A started Mosquitto; the test fails (never skips) when it cannot start."""
    broker = Mosquitto(tmp_path)
    try:
        broker.start()
    except BrokerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()
