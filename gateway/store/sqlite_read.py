"""The reads of the SQLite store, on its read connection (aiosqlite).

A second connection from the writer's: in WAL mode it never sees a transaction that has not
committed. `SqliteStore` opens it as `_r` and inherits these methods of the `Store` protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import aiosqlite

from gateway.ledger import LedgerEntry, timestamp
from gateway.store import sqlite_stats_read
from gateway.store.base import CoverageRow, DeliveryRecord, StoredWarning
from gateway.store.records import ledger_pages, to_coverage, to_delivery, to_entry, to_warning
from gateway.store.sqlite_schema import WARNING_COLUMNS
from gateway.store.tallies import StatsFigures

_IDS_PER_QUERY = 500
"""Bound parameters per query, well below SQLite's limit."""


class SqliteReads:
    """The read half of `SqliteStore`."""

    _r: aiosqlite.Connection | None

    async def get_warning(self, warning_id: str) -> StoredWarning | None:
        assert self._r is not None
        sql = f"SELECT {WARNING_COLUMNS} FROM warnings WHERE id = ?"
        async with self._r.execute(sql, (warning_id,)) as cur:
            row = await cur.fetchone()
        return to_warning(row) if row is not None else None

    async def entries_for(self, warning_id: str) -> list[LedgerEntry]:
        assert self._r is not None
        sql = "SELECT * FROM ledger WHERE warning_id = ? ORDER BY seq"
        async with self._r.execute(sql, (warning_id,)) as cur:
            return [to_entry(row) async for row in cur]

    async def ledger(self) -> AsyncIterator[LedgerEntry]:
        """Every entry in order, read page by page."""
        r = self._r
        assert r is not None

        async def page(after: int, n: int) -> list[aiosqlite.Row]:
            sql = "SELECT * FROM ledger WHERE seq > ? ORDER BY seq LIMIT ?"
            async with r.execute(sql, (after, n)) as cur:
                return list(await cur.fetchall())

        async for entry in ledger_pages(page):
            yield entry

    async def unfinished(self) -> list[DeliveryRecord]:
        return await self._deliveries("state = 'pending' ORDER BY level, rowid", ())

    async def pending_keys(self) -> list[tuple[str, str, int]]:
        assert self._r is not None
        sql = "SELECT id, channel, level FROM deliveries WHERE state = 'pending'"
        async with self._r.execute(sql) as cur:
            return [(str(r[0]), str(r[1]), int(r[2])) for r in await cur.fetchall()]

    async def deliveries_by_id(self, ids: Sequence[str]) -> list[DeliveryRecord]:
        out: list[DeliveryRecord] = []
        for at in range(0, len(ids), _IDS_PER_QUERY):
            chunk = tuple(ids[at : at + _IDS_PER_QUERY])
            marks = ",".join("?" * len(chunk))
            out += await self._deliveries(f"id IN ({marks})", chunk)
        return out

    async def deployment(self) -> str:
        return "sqlite"

    async def deliveries_for(self, warning_id: str) -> list[DeliveryRecord]:
        return await self._deliveries("warning_id = ? ORDER BY rowid", (warning_id,))

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        found = await self._deliveries("id = ?", (delivery_id,))
        return found[0] if found else None

    async def _deliveries(self, where: str, args: tuple[object, ...]) -> list[DeliveryRecord]:
        assert self._r is not None
        async with self._r.execute(f"SELECT * FROM deliveries WHERE {where}", args) as cur:
            return [to_delivery(row) for row in await cur.fetchall()]

    async def coverage_for(self, warning_id: str) -> list[CoverageRow]:
        assert self._r is not None
        sql = "SELECT * FROM coverage WHERE warning_id = ? ORDER BY township"
        async with self._r.execute(sql, (warning_id,)) as cur:
            rows = await cur.fetchall()
        return [to_coverage(r) for r in rows]

    async def delivery_counts(self, warning_id: str) -> list[tuple[str | None, str, str, int]]:
        assert self._r is not None
        sql = (
            "SELECT purpose, channel, state, count(*) FROM deliveries WHERE warning_id = ? "
            "GROUP BY purpose, channel, state"
        )
        async with self._r.execute(sql, (warning_id,)) as cur:
            return [(r[0], r[1], r[2], int(r[3])) for r in await cur.fetchall()]

    async def warnings_received(self, start: datetime, end: datetime) -> list[StoredWarning]:
        assert self._r is not None
        # received_at is always stored in UTC with one format, so text order is time order.
        lo, hi = timestamp(start.astimezone(UTC)), timestamp(end.astimezone(UTC))
        sql = (
            f"SELECT {WARNING_COLUMNS} FROM warnings "
            "WHERE received_at >= ? AND received_at < ? ORDER BY received_at"
        )
        async with self._r.execute(sql, (lo, hi)) as cur:
            return [to_warning(r) for r in await cur.fetchall()]

    async def stats(
        self, start: datetime, end: datetime, district: str | None, listed: int
    ) -> StatsFigures:
        assert self._r is not None
        lo, hi = timestamp(start.astimezone(UTC)), timestamp(end.astimezone(UTC))
        return await sqlite_stats_read.read(self._r, lo, hi, district, listed)

    async def unexpired_warnings(self, now: datetime) -> list[StoredWarning]:
        assert self._r is not None
        # expires_at keeps its sender's offset; julianday() compares it as a time.
        sql = (
            f"SELECT {WARNING_COLUMNS} FROM warnings "
            "WHERE julianday(expires_at) > julianday(?) ORDER BY received_at"
        )
        async with self._r.execute(sql, (timestamp(now.astimezone(UTC)),)) as cur:
            return [to_warning(r) for r in await cur.fetchall()]

    async def active_warnings(self) -> list[StoredWarning]:
        assert self._r is not None
        sql = f"SELECT {WARNING_COLUMNS} FROM warnings WHERE state = 'active'"
        async with self._r.execute(sql) as cur:
            return [to_warning(r) for r in await cur.fetchall()]

    async def active_warning_ids(self) -> set[str]:
        assert self._r is not None
        async with self._r.execute("SELECT id FROM warnings WHERE state = 'active'") as cur:
            return {str(r[0]) for r in await cur.fetchall()}

    async def disabled_endpoints(self) -> dict[str, str]:
        assert self._r is not None
        async with self._r.execute("SELECT endpoint_id, reason FROM disabled_endpoints") as cur:
            return {str(r[0]): str(r[1]) for r in await cur.fetchall()}
