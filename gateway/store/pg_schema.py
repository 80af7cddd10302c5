"""The PostgreSQL store's schema as versioned migrations, applied by `gateway db upgrade`.

`schema_version` holds one row per applied migration. `upgrade` applies the missing ones in
order, each with its row, in one transaction under an advisory lock (two upgraders at once:
the second waits, then finds nothing to do); running it again is a no-op. `check` is what a
store does when it opens: it refuses a database that is not at `LATEST` (a `ConfigError`
telling to run `gateway db upgrade`) rather than guess at a schema.

The migrations are `pg_migrations.MIGRATIONS` (the tables in pg_migrations.py, the aggregate
triggers in pg_triggers.py).
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from psycopg import AsyncConnection, OperationalError
from psycopg.errors import UndefinedTable

from gateway.exceptions import ConfigError, StoreUnavailable
from gateway.store.pg_migrations import MIGRATIONS

CONNECT_TIMEOUT_S = 5
"""For one new connection, and for the pool to open."""


def masked(url: str) -> str:
    """`url` without its password, fit for a log or an error."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


UPGRADE_LOCK: Final = 0x6761_7465_7761_7901
"""pg_advisory_xact_lock key of `upgrade` ("gateway" + 1)."""

LATEST: Final = MIGRATIONS[-1][0]
"""The version of the last migration: the one a store opens at."""

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


async def current_version(conn: AsyncConnection[Any]) -> int:
    """The highest applied migration; 0 for a database never upgraded."""
    try:
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
    except UndefinedTable:
        await conn.rollback()
        return 0
    row = await cur.fetchone()
    assert row is not None
    return int(str(row[0]))


async def upgrade(conn: AsyncConnection[Any]) -> list[int]:
    """Apply the missing migrations in one transaction; the versions applied (none: already
    at LATEST). `conn` must not be in a transaction."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (UPGRADE_LOCK,))
        await conn.execute(_VERSION_TABLE)
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
        row = await cur.fetchone()
        assert row is not None
        at = int(str(row[0]))
        applied = []
        for version, name, script in MIGRATIONS:
            if version <= at:
                continue
            await conn.execute(script)
            await conn.execute(
                "INSERT INTO schema_version (version, name) VALUES (%s, %s)", (version, name)
            )
            applied.append(version)
    return applied


async def check(conn: AsyncConnection[Any], where: str) -> None:
    """ConfigError unless the database is at LATEST; `where` names it (no password)."""
    version = await current_version(conn)
    if version == LATEST:
        return
    if version > LATEST:
        reason = f"schema version {version} is newer than this gateway's ({LATEST}): upgrade it"
    else:
        reason = f"schema version {version}, this gateway needs {LATEST}: run `gateway db upgrade`"
    raise ConfigError(where, "store", reason)


async def upgrade_url(url: str) -> tuple[list[int], int]:
    """`upgrade` the database at `url`: (versions applied, LATEST)."""
    try:
        conn = await AsyncConnection.connect(
            url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        )
    except OperationalError as exc:
        raise StoreUnavailable(f"cannot connect to {masked(url)}: {exc}") from exc
    async with conn:
        return await upgrade(conn), LATEST
