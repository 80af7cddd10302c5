"""A private `redis-server` for the tests, in its own process on a free loopback port, so a test
can kill it and start it again (on the same port, with nothing kept: no RDB, no AOF, as a Redis
restarted without persistence). A test that needs Redis and cannot start it fails; it never
skips.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import redis

from tests.processes import free_port, stop_process, wait_ready

_dbs = itertools.count(1)
DATABASES = 256


class RedisServer:
    """`redis-server` on 127.0.0.1:`port`; `restart` keeps the port and loses every key."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (Debian package redis-server)"
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="gw-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        self._log = (self.dir / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--databases",
                str(DATABASES),
                "--dir",
                str(self.dir),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_ready(self.proc, self.ping, "redis-server", self.log)
        return self

    def ping(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: what Redis held in memory is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        stop_process(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's Redis; tests share it through databases of their own (`redis_url`)."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.destroy()


def fresh_db(server: RedisServer) -> str:
    """The URL of a database of `server`, emptied (the databases are reused in turn)."""
    db = next(_dbs) % DATABASES
    redis.Redis(port=server.port, db=db).flushdb()
    return server.url(db)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """An empty database of the session's Redis."""
    return fresh_db(redis_server)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, one it may kill and restart."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.destroy()
