"""The store the suite's gateways use: SQLite (the default), or, with
`GATEWAY_TEST_STORE=postgresql`, the session's private PostgreSQL cluster and Redis
(tests/store_servers.py, tests/redis_server.py), so the same tests check both stores.

Tests name SQLite stores as they always have (`sqlite:///{tmp_path}/gateway.db`); with the
switch on, each SQLite URL a test names stands for one fresh PostgreSQL database (a copy of the
upgraded template) with a fresh Redis database of its own, the same pair every time the test
names that URL again, so a gateway restarted on "the same file" finds the same store. The apps
(`make_client`), the processes (`GatewayProcess`, `run_gateway`) and the tests that open a store
themselves (`store_url`, `store_at`) ask here. A test that is about SQLite itself (its file, its
disk) carries the `sqlite_only` marker; `scripts/test` deselects those in the PostgreSQL run.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg

from gateway.config import Settings
from gateway.store import Store, open_store

STORES = ("sqlite", "postgresql")
STORE = os.environ.get("GATEWAY_TEST_STORE", "sqlite")
assert STORE in STORES, f"GATEWAY_TEST_STORE={STORE!r}: expected one of {STORES}"
POSTGRESQL = STORE == "postgresql"


class StoreSwitch:
    """One test's SQLite URLs → (PostgreSQL URL, Redis URL), each made on first use."""

    def __init__(self, new_store: Callable[[], str], new_redis: Callable[[], str]) -> None:
        self.new_store = new_store
        self.new_redis = new_redis
        self.pairs: dict[str, tuple[str, str]] = {}

    def pair(self, sqlite_url: str) -> tuple[str, str]:
        if sqlite_url not in self.pairs:
            self.pairs[sqlite_url] = (self.new_store(), self.new_redis())
        return self.pairs[sqlite_url]


current: StoreSwitch | None = None
"""The running test's switch (set by conftest's autouse fixture); None for SQLite."""


def _switched(url: str) -> tuple[str, str] | None:
    if current is None or not url.startswith("sqlite:///"):
        return None
    return current.pair(url)


def store_url(url: str) -> str:
    """The store a test that named `url` uses."""
    pair = _switched(url)
    return url if pair is None else pair[0]


def settings_for(settings: Settings) -> Settings:
    """`settings` on the test's store (and its Redis, with PostgreSQL)."""
    pair = _switched(settings.store_url)
    if pair is None:
        return settings
    pg, redis = pair
    return dataclasses.replace(
        settings, store_url=pg, redis=settings.redis.model_copy(update={"url": redis})
    )


def env_for(env: Mapping[str, str]) -> dict[str, str]:
    """A process's environment `env` on the test's store: GATEWAY_STORE (when it names SQLite)
    and GATEWAY_REDIS_URL replaced."""
    out = dict(env)
    pair = _switched(env.get("GATEWAY_STORE", ""))
    if pair is not None:
        out["GATEWAY_STORE"], out["GATEWAY_REDIS_URL"] = pair
    return out


def execute(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run `sql` on the store at `url` behind the gateway's back, as someone with access to the
    database could (tests of what `gateway ledger verify` detects); its rows."""
    if url.startswith("sqlite:///"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db, db:
            return db.execute(sql).fetchall()
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql.encode())
        return cur.fetchall() if cur.description else []


def store_at(path: Path) -> Store:
    """`open_store` of the SQLite file `path`, or of the test's PostgreSQL store standing in for
    it; enter it with `async with`."""
    return open_store(store_url(f"sqlite:///{path}"))
