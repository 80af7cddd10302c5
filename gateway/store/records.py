"""The SQL stores' rows read back as the store protocol's records: the same columns, in the
same order, in SQLite and PostgreSQL (each store's `*_COLUMNS`, or the table's order)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from gateway.ledger import LedgerEntry
from gateway.store.base import CoverageRow, DeliveryRecord, StoredWarning

Row = Sequence[Any] | sqlite3.Row

LEDGER_PAGE = 1000
"""Ledger entries read at a time by `Store.ledger`."""


def to_warning(row: Row) -> StoredWarning:
    return StoredWarning(
        id=row[0],
        body_hash=row[1],
        warning=json.loads(row[2]),
        answer=json.loads(row[3]),
        state=row[4],
        received_at=datetime.fromisoformat(row[5]),
        expires_at=datetime.fromisoformat(row[6]),
        authorization=json.loads(row[7]),
    )


def to_delivery(row: Row) -> DeliveryRecord:
    return DeliveryRecord(
        id=row[0],
        warning_id=row[1],
        endpoint_id=row[2],
        channel=row[3],
        level=row[4],
        state=row[5],
        attempts=row[6],
        detail=json.loads(row[7]),
        receipt=json.loads(row[8]) if row[8] else None,
        purpose=row[9],
    )


def to_entry(row: Row) -> LedgerEntry:
    return LedgerEntry(int(row[0]), row[1], row[2], row[3], json.loads(row[4]), row[5], row[6])


def to_coverage(r: Row) -> CoverageRow:
    return CoverageRow(r[0], r[1], bool(r[2]), r[3], json.loads(r[4]) if r[4] else None, r[5])


async def ledger_pages(
    page: Callable[[int, int], Awaitable[Sequence[Row]]],
) -> AsyncIterator[LedgerEntry]:
    """Every ledger entry in order, read through `page(after, n)`: the ledger rows of seq
    above `after`, in order, at most n (LEDGER_PAGE)."""
    after = 0
    while True:
        rows = await page(after, LEDGER_PAGE)
        for row in rows:
            yield to_entry(row)
        if len(rows) < LEDGER_PAGE:
            return
        after = int(rows[-1][0])
