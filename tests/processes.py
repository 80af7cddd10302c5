"""Starting the gateway (and later, servers it talks to) as real processes on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.store_switch import env_for

START_TIMEOUT = 20.0


def logged_lines(path: Path) -> list[str]:
    """The complete lines of a log another process appends to: a line it is still writing
    (no newline yet) is left for the next read."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [line for line in data[: data.rfind(b"\n") + 1].decode("utf-8").splitlines() if line]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


STOP_TIMEOUT = 10.0
POLL_S = 0.05


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when `url` answers 200 (a readiness probe)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def tcp_open(port: int, timeout: float = 1.0) -> bool:
    """True when 127.0.0.1:`port` accepts a connection (a readiness probe)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_ready(
    proc: subprocess.Popen[Any],
    ready: Callable[[], bool],
    what: str,
    output: Callable[[], str],
    timeout: float = START_TIMEOUT,
) -> None:
    """Poll `ready` until it holds; raise (after stopping `proc`) if `proc` exits or time runs
    out, quoting its output. A test whose server cannot start fails, it never skips."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}: {output()}")
        if ready():
            return
        time.sleep(POLL_S)
    stop_process(proc)
    raise RuntimeError(f"{what} did not become ready in {timeout:.0f}s: {output()}")


def gateway_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def run_gateway(
    *args: str, env: Mapping[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a one-shot gateway command to completion (on the test's store: tests/store_switch.py)."""
    return subprocess.run(
        gateway_cmd(*args),
        env={**os.environ, **env_for(env)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class GatewayProcess:
    """`gateway serve` in its own process (on the test's store: tests/store_switch.py); `start`
    waits until /healthz answers."""

    def __init__(self, env: Mapping[str, str], cwd: Path, *args: str) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env_for(env), "GATEWAY_LISTEN": f"127.0.0.1:{self.port}"}
        self.cwd = cwd
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.log = cwd / f"gateway-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT) -> GatewayProcess:
        """Start and wait until /healthz answers, for at most `timeout` seconds."""
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                gateway_cmd("serve", *self.args),
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        ready = self.url + "/healthz"
        wait_ready(self.proc, lambda: http_ok(ready), "gateway", self.output, timeout)
        return self

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        stop_process(self.proc)
