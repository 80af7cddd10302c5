"""SQLite store (WAL) with group commit.

One writer task commits whatever is queued as one transaction (`synchronous=FULL`: durable on
commit), so concurrent ingests and delivery outcomes share one fsync. The writer alone extends
the hash chain, which keeps the ledger strictly ordered. The write connection lives on a thread
of its own, and a batch's statements and commit run there in one call: the event loop hands a
batch over once instead of once per statement. Reads use a second connection (aiosqlite,
`sqlite_read.py`) and so never see a transaction that has not committed. The aggregates
GET /v1/stats reads are kept by the same transactions (gateway/store/sqlite_stats.py); the
tables are in `sqlite_schema.py`.

Isolation: a write's rows and ledger data are encoded and checked when it is submitted, before
it joins a batch, so one that cannot be stored is refused alone (`Unstorable` to its caller);
a batch that still fails at commit is retried write by write, so only the failing write fails.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import aiosqlite

from gateway.exceptions import StoreUnavailable
from gateway.ledger import GENESIS, timestamp
from gateway.store import sqlite_stats
from gateway.store.base import (
    CommitListener,
)
from gateway.store.records import to_warning
from gateway.store.rows import Known, Needs, Rows, Write, WriteResult
from gateway.store.sqlite_read import SqliteReads
from gateway.store.sqlite_schema import PRAGMAS, SCHEMA, WARNING_COLUMNS
from gateway.store.write_queue import Kept, WriteQueue, notify, resolve, take_batch
from gateway.text import printable

log = logging.getLogger("gateway.store")
_T = TypeVar("_T")


def _environmental(exc: BaseException) -> bool:
    """Whether `exc` is the store failing (disk full, I/O error, locked), not the data."""
    return isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError)


class SqliteStore(WriteQueue, SqliteReads):
    """The embedded store; see the module docstring for how writes are batched."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: asyncio.Queue[Write | None] = asyncio.Queue()
        self._kept = Kept()
        self._writer: asyncio.Task[None] | None = None
        self._committed = asyncio.Event()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._w: sqlite3.Connection | None = None
        self._r: aiosqlite.Connection | None = None
        self._seq = 0
        self._hash = GENESIS
        self._listeners: list[CommitListener] = []

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._in_thread(self._open_writer)
        self._r = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in PRAGMAS:
            await self._r.execute(pragma)
        self._writer = asyncio.create_task(self._write_loop(), name="sqlite-writer")

    async def close(self) -> None:
        await self._stop_writer()
        if self._r is not None:
            await self._r.close()
        if self._w is not None:
            await self._in_thread(self._w.close)
        self._thread.shutdown()

    async def _in_thread(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def _open_writer(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in PRAGMAS:
            conn.execute(pragma)
        conn.executescript(SCHEMA)
        sqlite_stats.create(conn)
        last = conn.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
        if last is not None:
            self._seq, self._hash = int(last[0]), str(last[1])
        self._w = conn

    # -- writes ------------------------------------------------------------------------------

    def on_commit(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def _batch_done(self) -> asyncio.Event:
        return self._committed

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            batch, stopping = await take_batch(self._queue, self._kept.wait(loop.time()))
            if self._kept.due(loop.time(), stopping):
                batch = self._kept.first(batch)
            if batch:
                await self._commit_each(batch) if len(batch) > 1 else await self._commit_alone(
                    batch[0]
                )
            self._committed.set()

    async def _commit_each(self, batch: list[Write]) -> None:
        """Commit `batch` as one transaction; if that fails, each write in a transaction of its
        own, so that only the write that fails fails (its caller learns of it)."""
        try:
            results = await self._commit(batch)
        except Exception as exc:
            if _environmental(exc):  # the store itself fails: so would every write alone
                for w in batch:
                    self._failed(w, exc)
                return
            log.warning("a store batch of %d writes failed; retrying them one by one", len(batch))
            for w in batch:
                await self._commit_alone(w)
            return
        self._kept.healthy()
        for w, r in zip(batch, results, strict=True):
            resolve(w, r)

    async def _commit_alone(self, w: Write) -> None:
        try:
            (result,) = await self._commit([w])
        except Exception as exc:  # the caller learns of it; the writer carries on
            self._failed(w, exc)
            return
        self._kept.healthy()
        resolve(w, result)

    def _failed(self, w: Write, exc: Exception) -> None:
        self._kept.failed(w, exc, _environmental(exc))

    async def _commit(self, batch: list[Write]) -> list[WriteResult]:
        """Write `batch` as one transaction; each write's result. The rows and the hash chain
        are made here, on the event loop: on the writer thread that Python work would hold the
        GIL in long stretches and delay the loop's I/O; the SQL there releases it."""
        need = Needs.of(batch)
        known = await self._in_thread(functools.partial(self._known, need)) if need else Known()
        rows = Rows()
        added = [rows.add(w, known) for w in batch]
        results = [result for result, _ in added]
        seq, prev = self._seq, self._hash
        tally = sqlite_stats.LedgerTally()
        seq, prev = rows.chain(batch, added, (seq, prev), tally)
        statements = [*rows.statements(), *tally.statements()]
        await self._in_thread(functools.partial(self._execute, statements))
        self._seq, self._hash = seq, prev
        notify(self._listeners, [e for _, entries in added for e in entries])
        return results

    def _known(self, need: Needs) -> Known:
        """What a batch depends on in the database (`Known`; on the writer thread)."""
        assert self._w is not None
        known = Known()
        if need.warnings:
            marks = ",".join("?" * len(need.warnings))
            sql = f"SELECT {WARNING_COLUMNS} FROM warnings WHERE id IN ({marks})"
            known.warnings.update(
                (r[0], to_warning(r)) for r in self._w.execute(sql, need.warnings)
            )
        if need.states:
            marks = ",".join("?" * len(need.states))
            sql = f"SELECT id, state FROM warnings WHERE id IN ({marks})"
            known.states.update((r[0], r[1]) for r in self._w.execute(sql, need.states))
        for wid, township in need.townships:
            sql = "SELECT 1 FROM coverage WHERE warning_id = ? AND township = ? AND escalated_at"
            if self._w.execute(f"{sql} IS NOT NULL", (wid, township)).fetchone():
                known.escalated.add((wid, township))
        if need.delivery_ids:
            marks = ",".join("?" * len(need.delivery_ids))
            sql = f"SELECT id FROM deliveries WHERE id IN ({marks})"
            known.delivery_ids.update(r[0] for r in self._w.execute(sql, need.delivery_ids))
        return known

    def _execute(self, statements: list[tuple[str, list[tuple[object, ...]]]]) -> None:
        """Run `statements` as one transaction (on the writer thread)."""
        conn = self._w
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                conn.executemany(sql, params)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back already (disk full)
                conn.execute("ROLLBACK")
            raise

    async def ping(self) -> None:
        assert self._r is not None
        async with self._r.execute("SELECT 1") as cur:
            await cur.fetchone()
        self._check_open()
        try:
            await self._in_thread(self._probe)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the store cannot write: {exc}") from exc

    async def disable_endpoint(self, endpoint_id: str, reason: str, at: datetime) -> None:
        sql = "INSERT OR REPLACE INTO disabled_endpoints VALUES (?, ?, ?)"
        await self._direct([(sql, [(endpoint_id, printable(reason), timestamp(at))])])

    async def enable_endpoint(self, endpoint_id: str) -> bool:
        was = endpoint_id in await self.disabled_endpoints()
        sql = "DELETE FROM disabled_endpoints WHERE endpoint_id = ?"
        await self._direct([(sql, [(endpoint_id,)])])
        return was

    async def _direct(self, statements: list[tuple[str, list[tuple[object, ...]]]]) -> None:
        """A small write outside the ledger's group commit, on the writer thread."""
        self._check_open()
        try:
            await self._in_thread(functools.partial(self._execute, statements))
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the store cannot write: {exc}") from exc

    def _probe(self) -> None:
        """One durable write (on the writer thread): what /healthz reports."""
        stamp = timestamp(datetime.now(UTC))
        self._execute([("INSERT OR REPLACE INTO probe VALUES (1, ?)", [(stamp,)])])
