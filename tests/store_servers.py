"""A private PostgreSQL cluster for the tests: Debian's postgresql binaries, started as its own
process (`initdb` + `pg_ctl`, as the `postgres` user: PostgreSQL refuses to run as root) on a
free loopback port. One cluster per session (`pg_cluster`) with a template database already
upgraded, so each test gets a fresh database by CREATE DATABASE ... TEMPLATE (`pg_url`) in
milliseconds. A test that needs PostgreSQL and cannot start it fails; it never skips.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.store import pg_schema
from tests.processes import free_port

TEMPLATE = "gw_template"
USER = "gw"
START_TIMEOUT_S = 30
_names = itertools.count(1)


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin directory."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    assert found, "PostgreSQL is not installed (Debian package postgresql; .ci/run installs it)"
    return Path(found[-1]).parent


class PgCluster:
    """One PostgreSQL cluster in a directory of its own, owned by `postgres`."""

    def __init__(self, *, fsync: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        # Tests stop the server, never the machine: the OS keeps what fsync would flush.
        self.fsync = fsync

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> None:
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(pg_bin() / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"{args[0]} failed: {done.stdout}{done.stderr}{self.log()}"

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text() if path.exists() else ""

    def init(self) -> PgCluster:
        shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", USER, "-E", "UTF8")
        return self

    def start(self) -> PgCluster:
        opts = (
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 "
            f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=200"
        )
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", opts, "-w", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.encode())

    def create_database(self, name: str, template: str | None = TEMPLATE) -> str:
        """A new database (a copy of `template`); its URL."""
        of = f" TEMPLATE {template}" if template else ""
        self.admin(f"CREATE DATABASE {name}{of}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database `url` names, closing what is still connected to it."""
        self.admin(f"DROP DATABASE IF EXISTS {url.rpartition('/')[2]} WITH (FORCE)")

    def upgraded_database(self, name: str) -> str:
        """A new empty database with the schema upgraded; its URL."""
        url = self.create_database(name, template=None)
        asyncio.run(pg_schema.upgrade_url(url))
        return url


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The session's cluster, with TEMPLATE upgraded to the latest schema."""
    cluster = PgCluster().init().start()
    try:
        cluster.upgraded_database(TEMPLATE)
        yield cluster
    finally:
        cluster.destroy()


def fresh_database(cluster: PgCluster) -> str:
    """A new database of `cluster`, a copy of its upgraded TEMPLATE; its URL."""
    return cluster.create_database(f"t{next(_names)}")


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh, upgraded database of the session's cluster."""
    return fresh_database(pg_cluster)


@pytest.fixture
def own_pg_cluster() -> Iterator[PgCluster]:
    """A cluster of this test's own (one it may stop and start), with database `gw` upgraded."""
    cluster = PgCluster().init().start()
    try:
        cluster.upgraded_database("gw")
        yield cluster
    finally:
        cluster.destroy()
