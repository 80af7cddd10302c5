"""The tables of the SQLite store, the pragmas of its connections, and its rows decoded.

Created if missing when a store opens (`CREATE TABLE IF NOT EXISTS`); the aggregates' tables and
triggers are in `gateway.store.sqlite_stats`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiosqlite

from gateway.ledger import LedgerEntry
from gateway.store.base import DeliveryRecord, StoredWarning

BUSY_TIMEOUT_MS = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS warnings (
    id TEXT PRIMARY KEY,
    body_hash TEXT NOT NULL,
    warning TEXT NOT NULL,
    answer TEXT NOT NULL,
    state TEXT NOT NULL,
    received_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    authorization TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY,
    warning_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    at TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_by_warning ON ledger (warning_id, seq);
CREATE INDEX IF NOT EXISTS warnings_by_received ON warnings (received_at);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    warning_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    level INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    detail TEXT NOT NULL,
    receipt TEXT,
    purpose TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_by_warning ON deliveries (warning_id);
CREATE INDEX IF NOT EXISTS deliveries_by_state ON deliveries (state);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS disabled_endpoints (
    endpoint_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS coverage (
    warning_id TEXT NOT NULL,
    township TEXT NOT NULL,
    blind_spot INTEGER NOT NULL,
    covered_at TEXT,
    covered_by TEXT,
    escalated_at TEXT,
    PRIMARY KEY (warning_id, township)
) WITHOUT ROWID;
"""

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
)
WARNING_COLUMNS = "id, body_hash, warning, answer, state, received_at, expires_at, authorization"


def to_warning(row: Sequence[Any]) -> StoredWarning:
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


def to_delivery(row: aiosqlite.Row) -> DeliveryRecord:
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


def to_entry(row: aiosqlite.Row) -> LedgerEntry:
    return LedgerEntry(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], row[6])
