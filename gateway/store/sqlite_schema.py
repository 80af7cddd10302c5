"""The tables of the SQLite store and the pragmas of its connections (its rows are decoded
in gateway/store/records.py).

Created if missing when a store opens (`CREATE TABLE IF NOT EXISTS`); the aggregates' tables and
triggers are in `gateway.store.sqlite_stats`.
"""

from __future__ import annotations

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
