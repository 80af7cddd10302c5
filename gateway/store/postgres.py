"""PostgreSQL store: the system of record that several gateway processes share.

Writes are group-committed as in the SQLite store: one writer task per process takes whatever
is queued and commits it as one transaction (gateway/store/pg_write.py, which also keeps the
one hash chain across processes). Each write is encoded and checked when it is submitted
(`Unstorable` to its caller alone); a batch that fails on its data is retried write by write.

Faults: a batch whose connection is lost (server stopped, backend terminated) is tried once
more on a fresh connection; if the COMMIT had been sent, the chain tells whether it landed, so
nothing is written twice. When the database cannot write, awaited writes raise
`StoreUnavailable` (503) and `record_soon` outcomes are kept and retried with backoff until
they commit. One transaction per batch: a failure never leaves half a batch. Reads and the
small writes outside the chain run on other connections of the same pool.

The schema must be at pg_schema.LATEST (`gateway db upgrade`); opening refuses otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.exceptions import StoreUnavailable
from gateway.ledger import LedgerEntry, timestamp
from gateway.store import pg_schema, pg_stats_read
from gateway.store.base import CommitListener, CoverageRow, DeliveryRecord, StoredWarning
from gateway.store.pg_rows import (
    COVERAGE_COLUMNS,
    DELIVERY_COLUMNS,
    LEDGER_COLUMNS,
    WARNING_COLUMNS,
)
from gateway.store.pg_schema import CONNECT_TIMEOUT_S, masked
from gateway.store.pg_writer import GroupCommit, environmental
from gateway.store.records import ledger_pages, to_coverage, to_delivery, to_entry, to_warning
from gateway.store.rows import Write, prepare
from gateway.store.tallies import StatsFigures
from gateway.store.write_queue import WriteQueue
from gateway.text import printable

log = logging.getLogger("gateway.store")

POOL_SIZE = 8
POOL_TIMEOUT_S = 2.0
"""How long a caller waits for a pooled connection before the store counts as unavailable."""
RECONNECT_S = 2.0
"""How long the pool retries a lost connection (with its backoff) before the next caller's
demand starts afresh: a short bound keeps the backoff from outgrowing an outage."""


def pool(url: str, size: int = POOL_SIZE) -> AsyncConnectionPool[Any]:
    """A closed pool of autocommit connections to `url` (open it before use)."""
    return AsyncConnectionPool(
        url,
        min_size=1,
        max_size=size,
        open=False,
        timeout=POOL_TIMEOUT_S,
        reconnect_timeout=RECONNECT_S,
        kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
        check=AsyncConnectionPool.check_connection,
        name="gateway-store",
    )


class PostgresStore(WriteQueue):
    """The shared store; see the module docstring."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool = pool(url)
        self._commits = GroupCommit(self._pool)
        self._queue = self._commits.queue
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
            async with self._pool.connection() as conn:
                await pg_schema.check(conn, masked(self.url))
        except PoolTimeout as exc:
            await self._pool.close()
            raise StoreUnavailable(f"cannot connect to {masked(self.url)}: {exc}") from exc
        except BaseException:
            await self._pool.close()
            raise
        self._writer = asyncio.create_task(self._commits.run(), name="pg-writer")

    async def close(self) -> None:
        await self._stop_writer()
        await self._pool.close()

    # -- writes ------------------------------------------------------------------------------

    def on_commit(self, listener: CommitListener) -> None:
        self._commits.listeners.append(listener)

    def _batch_done(self) -> asyncio.Event:
        return self._commits.committed

    def _prepare(self, write: Write) -> Write:
        return prepare(write, nul_refused=True)

    # -- reads and small writes --------------------------------------------------------------

    async def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(sql, args)
                return list(await cur.fetchall())
        except Exception as exc:
            if environmental(exc):
                raise StoreUnavailable(f"the store cannot be read: {exc}") from exc
            raise

    async def _direct(self, sql: str, args: Sequence[Any]) -> int:
        """A small write outside the chain's group commit; the number of rows it touched."""
        self._check_open()
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(sql, args)
                return int(cur.rowcount)
        except Exception as exc:
            if environmental(exc):
                raise StoreUnavailable(f"the store cannot write: {exc}") from exc
            raise

    async def get_warning(self, warning_id: str) -> StoredWarning | None:
        sql = f"SELECT {WARNING_COLUMNS} FROM warnings WHERE id = %s"
        rows = await self._rows(sql, (warning_id,))
        return to_warning(rows[0]) if rows else None

    async def entries_for(self, warning_id: str) -> list[LedgerEntry]:
        sql = f"SELECT {LEDGER_COLUMNS} FROM ledger WHERE warning_id = %s ORDER BY seq"
        return [to_entry(r) for r in await self._rows(sql, (warning_id,))]

    async def ledger(self) -> AsyncIterator[LedgerEntry]:
        """Every entry in order, read page by page."""
        sql = f"SELECT {LEDGER_COLUMNS} FROM ledger WHERE seq > %s ORDER BY seq LIMIT %s"
        async for entry in ledger_pages(lambda after, n: self._rows(sql, (after, n))):
            yield entry

    async def unfinished(self) -> list[DeliveryRecord]:
        return await self._deliveries("state = 'pending' ORDER BY level, n", ())

    async def pending_keys(self) -> list[tuple[str, str, int]]:
        sql = "SELECT id, channel, level FROM deliveries WHERE state = 'pending'"
        return [(str(r[0]), str(r[1]), int(r[2])) for r in await self._rows(sql)]

    async def deliveries_by_id(self, ids: Sequence[str]) -> list[DeliveryRecord]:
        return await self._deliveries("id = ANY(%s)", (list(ids),)) if ids else []

    async def deployment(self) -> str:
        rows = await self._rows("SELECT current_database() || '.' || name FROM deployment")
        return str(rows[0][0])

    async def deliveries_for(self, warning_id: str) -> list[DeliveryRecord]:
        return await self._deliveries("warning_id = %s ORDER BY n", (warning_id,))

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        found = await self._deliveries("id = %s", (delivery_id,))
        return found[0] if found else None

    async def _deliveries(self, where: str, args: Sequence[Any]) -> list[DeliveryRecord]:
        sql = f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE {where}"
        return [to_delivery(r) for r in await self._rows(sql, args)]

    async def coverage_for(self, warning_id: str) -> list[CoverageRow]:
        sql = (
            f"SELECT {COVERAGE_COLUMNS} FROM coverage WHERE warning_id = %s "
            'ORDER BY township COLLATE "C"'
        )
        return [to_coverage(r) for r in await self._rows(sql, (warning_id,))]

    async def delivery_counts(self, warning_id: str) -> list[tuple[str | None, str, str, int]]:
        sql = (
            "SELECT purpose, channel, state, count(*) FROM deliveries WHERE warning_id = %s "
            "GROUP BY purpose, channel, state"
        )
        return [(r[0], r[1], r[2], int(r[3])) for r in await self._rows(sql, (warning_id,))]

    async def warnings_received(self, start: datetime, end: datetime) -> list[StoredWarning]:
        lo, hi = timestamp(start.astimezone(UTC)), timestamp(end.astimezone(UTC))
        sql = (
            f"SELECT {WARNING_COLUMNS} FROM warnings WHERE received_at >= %s "
            'AND received_at < %s ORDER BY received_at COLLATE "C"'
        )
        return [to_warning(r) for r in await self._rows(sql, (lo, hi))]

    async def stats(
        self, start: datetime, end: datetime, district: str | None, listed: int
    ) -> StatsFigures:
        lo, hi = timestamp(start.astimezone(UTC)), timestamp(end.astimezone(UTC))
        try:
            async with self._pool.connection() as conn:
                return await pg_stats_read.read(conn, lo, hi, district, listed)
        except Exception as exc:
            if environmental(exc):
                raise StoreUnavailable(f"the store cannot be read: {exc}") from exc
            raise

    async def unexpired_warnings(self, now: datetime) -> list[StoredWarning]:
        sql = (
            f"SELECT {WARNING_COLUMNS} FROM warnings WHERE expires_at::timestamptz > %s "
            'ORDER BY received_at COLLATE "C"'
        )
        return [to_warning(r) for r in await self._rows(sql, (now,))]

    async def active_warnings(self) -> list[StoredWarning]:
        sql = f"SELECT {WARNING_COLUMNS} FROM warnings WHERE state = 'active'"
        return [to_warning(r) for r in await self._rows(sql)]

    async def active_warning_ids(self) -> set[str]:
        return {
            str(r[0]) for r in await self._rows("SELECT id FROM warnings WHERE state = 'active'")
        }

    async def ping(self) -> None:
        self._check_open()
        stamp = timestamp(datetime.now(UTC))
        await self._direct(
            "INSERT INTO probe VALUES (1, %s) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            (stamp,),
        )

    async def disable_endpoint(self, endpoint_id: str, reason: str, at: datetime) -> None:
        sql = (
            "INSERT INTO disabled_endpoints VALUES (%s, %s, %s) ON CONFLICT (endpoint_id) "
            "DO UPDATE SET reason = excluded.reason, at = excluded.at"
        )
        await self._direct(sql, (endpoint_id, printable(reason).replace("\x00", ""), timestamp(at)))

    async def enable_endpoint(self, endpoint_id: str) -> bool:
        sql = "DELETE FROM disabled_endpoints WHERE endpoint_id = %s"
        return await self._direct(sql, (endpoint_id,)) > 0

    async def disabled_endpoints(self) -> dict[str, str]:
        rows = await self._rows("SELECT endpoint_id, reason FROM disabled_endpoints")
        return {str(r[0]): str(r[1]) for r in rows}
