"""The PostgreSQL schema's migrations in order (`MIGRATIONS`), and the SQL of its tables.

The tables are those of the SQLite store (gateway/store/sqlite.py, sqlite_stats.py) with two
additions: `ledger_head`, the one row that serialises the hash chain across processes (each
batch locks it with SELECT ... FOR UPDATE), and an identity column `n` on deliveries for
insertion order. Times and JSON are kept as the exact texts the SQLite store keeps, so both
answer the same. The aggregate triggers (sqlite_stats.py's, in PL/pgSQL) are in pg_triggers.py;
`pg_schema` applies the migrations.
"""

from __future__ import annotations

from typing import Final

from gateway.ledger import GENESIS
from gateway.store.pg_triggers import V1_TRIGGERS, V3_STATEMENT_TRIGGERS

_V1_TABLES = f"""
CREATE TABLE warnings (
    id TEXT PRIMARY KEY,
    body_hash TEXT NOT NULL,
    warning TEXT NOT NULL,
    answer TEXT NOT NULL,
    state TEXT NOT NULL,
    received_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    auth TEXT NOT NULL
);
CREATE INDEX warnings_by_received ON warnings (received_at);
CREATE INDEX warnings_active ON warnings (state) WHERE state = 'active';
CREATE TABLE ledger (
    seq BIGINT PRIMARY KEY,
    warning_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    at TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX ledger_by_warning ON ledger (warning_id, seq);
CREATE TABLE ledger_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO ledger_head VALUES (1, 0, '{GENESIS}');
CREATE TABLE deliveries (
    n BIGINT GENERATED ALWAYS AS IDENTITY,
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
CREATE INDEX deliveries_by_warning ON deliveries (warning_id, n);
CREATE INDEX deliveries_pending ON deliveries (level, n) WHERE state = 'pending';
CREATE TABLE probe (id INTEGER PRIMARY KEY, at TEXT NOT NULL);
CREATE TABLE disabled_endpoints (
    endpoint_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE coverage (
    warning_id TEXT NOT NULL,
    township TEXT NOT NULL,
    blind_spot INTEGER NOT NULL,
    covered_at TEXT,
    covered_by TEXT,
    escalated_at TEXT,
    PRIMARY KEY (warning_id, township)
);
CREATE TABLE stats_warning (
    warning_id TEXT PRIMARY KEY,
    received_at TEXT NOT NULL,
    received_us BIGINT NOT NULL,
    level INTEGER NOT NULL,
    hazard TEXT NOT NULL,
    msg_type TEXT NOT NULL,
    districts TEXT NOT NULL,
    planned INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    "open" INTEGER NOT NULL DEFAULT 0,
    stopped INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    first_us BIGINT,
    last_us BIGINT,
    townships INTEGER NOT NULL DEFAULT 0,
    covered INTEGER NOT NULL DEFAULT 0,
    covered_us BIGINT,
    escalations INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX stats_warning_by_received ON stats_warning (received_at);
CREATE TABLE stats_district (
    warning_id TEXT NOT NULL,
    district TEXT NOT NULL,
    received_at TEXT NOT NULL,
    townships INTEGER NOT NULL DEFAULT 0,
    covered INTEGER NOT NULL DEFAULT 0,
    covered_us BIGINT,
    escalations INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (warning_id, district)
);
CREATE INDEX stats_district_by_received ON stats_district (district, received_at);
CREATE TABLE stats_channel (
    warning_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    planned INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    "open" INTEGER NOT NULL DEFAULT 0,
    stopped INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    escalation_deliveries INTEGER NOT NULL DEFAULT 0,
    first_us BIGINT,
    last_us BIGINT,
    PRIMARY KEY (warning_id, channel)
);
CREATE TABLE stats_delivery (
    id TEXT PRIMARY KEY,
    warning_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    tries INTEGER NOT NULL,
    ended_us BIGINT,
    reached_us BIGINT
);
"""

# A warning's own deliveries count as planned; escalations to command centres apart; clears
# are neither (sqlite_stats._PLANNED, _ESCALATION).

_V2_DEPLOYMENT = """
CREATE TABLE deployment (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL
);
INSERT INTO deployment VALUES (1, md5(random()::text || clock_timestamp()::text));
"""
"""The identity of a deployment: gateways on this database coordinate under it in Redis."""

MIGRATIONS: Final[tuple[tuple[int, str, str], ...]] = (
    (1, "tables of the SQLite store, ledger_head, aggregate triggers", _V1_TABLES + V1_TRIGGERS),
    (2, "the deployment's identity (its namespace in Redis)", _V2_DEPLOYMENT),
    (3, "aggregates by statement, not by row", V3_STATEMENT_TRIGGERS),
)
"""(version, what it does, SQL), in order; append, never edit one that shipped."""
