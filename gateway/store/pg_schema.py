"""The PostgreSQL store's schema as versioned migrations, applied by `gateway db upgrade`.

`schema_version` holds one row per applied migration. `upgrade` applies the missing ones in
order, each with its row, in one transaction under an advisory lock (two upgraders at once:
the second waits, then finds nothing to do); running it again is a no-op. `check` is what a
store does when it opens: it refuses a database that is not at `LATEST` (a `ConfigError`
telling to run `gateway db upgrade`) rather than guess at a schema.

The tables are those of the SQLite store (gateway/store/sqlite.py, sqlite_stats.py) with two
additions: `ledger_head`, the one row that serialises the hash chain across processes (each
batch locks it with SELECT ... FOR UPDATE), and an identity column `n` on deliveries for
insertion order. Times and JSON are kept as the exact texts the SQLite store keeps, so both
answer the same. The aggregate triggers are sqlite_stats.py's, in PL/pgSQL.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from psycopg import AsyncConnection, OperationalError
from psycopg.errors import UndefinedTable

from gateway.exceptions import ConfigError, StoreUnavailable
from gateway.ledger import GENESIS

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
_V1_TRIGGERS = """
CREATE FUNCTION stats_planned(id TEXT, purpose TEXT) RETURNS BOOLEAN
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(purpose, '') = '' AND strpos(id, '/escalate-') = 0
$$;
CREATE FUNCTION stats_escalation(id TEXT, purpose TEXT) RETURNS BOOLEAN
LANGUAGE sql IMMUTABLE AS $$
    SELECT strpos(id, '/escalate-') > 0 OR left(coalesce(purpose, ''), 11) = 'escalation:'
$$;
CREATE FUNCTION stats_micros(at TEXT) RETURNS BIGINT LANGUAGE sql STABLE AS $$
    SELECT (extract(epoch FROM at::timestamptz) * 1000000)::BIGINT
$$;

CREATE FUNCTION stats_delivery_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    dl INTEGER := (NEW.state = 'delivered')::INTEGER;
    fl INTEGER := (NEW.state = 'failed')::INTEGER;
    st INTEGER := (NEW.state = 'stopped')::INTEGER;
    op INTEGER := (NEW.state NOT IN ('delivered', 'failed', 'stopped'))::INTEGER;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        dl := dl - (OLD.state = 'delivered')::INTEGER;
        fl := fl - (OLD.state = 'failed')::INTEGER;
        st := st - (OLD.state = 'stopped')::INTEGER;
        op := op - (OLD.state NOT IN ('delivered', 'failed', 'stopped'))::INTEGER;
        UPDATE stats_channel SET delivered = delivered + dl, failures = failures + fl,
            "open" = "open" + op, stopped = stopped + st
        WHERE warning_id = NEW.warning_id AND channel = NEW.channel;
        UPDATE stats_warning SET delivered = delivered + dl, failures = failures + fl,
            "open" = "open" + op, stopped = stopped + st
        WHERE warning_id = NEW.warning_id;
    ELSIF stats_planned(NEW.id, NEW.purpose) THEN
        INSERT INTO stats_channel AS c
            (warning_id, channel, planned, delivered, failures, "open", stopped)
        VALUES (NEW.warning_id, NEW.channel, 1, dl, fl, op, st)
        ON CONFLICT (warning_id, channel) DO UPDATE SET planned = c.planned + 1,
            delivered = c.delivered + dl, failures = c.failures + fl,
            "open" = c."open" + op, stopped = c.stopped + st;
        UPDATE stats_warning SET planned = planned + 1, delivered = delivered + dl,
            failures = failures + fl, "open" = "open" + op, stopped = stopped + st
        WHERE warning_id = NEW.warning_id;
    ELSIF stats_escalation(NEW.id, NEW.purpose) THEN
        INSERT INTO stats_channel AS c (warning_id, channel, escalation_deliveries)
        VALUES (NEW.warning_id, NEW.channel, 1)
        ON CONFLICT (warning_id, channel) DO UPDATE
        SET escalation_deliveries = c.escalation_deliveries + 1;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER stats_delivery_insert AFTER INSERT ON deliveries
FOR EACH ROW EXECUTE FUNCTION stats_delivery_row();
CREATE TRIGGER stats_delivery_state AFTER UPDATE OF state ON deliveries
FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state AND stats_planned(NEW.id, NEW.purpose))
EXECUTE FUNCTION stats_delivery_row();

CREATE FUNCTION stats_delivery_times() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    retried INTEGER := greatest(0, NEW.tries - 1);
    reached BIGINT := NEW.reached_us;
    ended BIGINT := NEW.ended_us;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        retried := retried - greatest(0, OLD.tries - 1);
        IF OLD.reached_us IS NOT NULL THEN reached := NULL; END IF;
        IF OLD.ended_us IS NOT NULL THEN ended := NULL; END IF;
    END IF;
    UPDATE stats_channel SET retries = retries + retried,
        first_us = CASE WHEN reached IS NOT NULL THEN least(first_us, reached) ELSE first_us END,
        last_us = CASE WHEN ended IS NOT NULL THEN greatest(last_us, ended) ELSE last_us END
    WHERE warning_id = NEW.warning_id AND channel = NEW.channel;
    UPDATE stats_warning SET retries = retries + retried,
        first_us = CASE WHEN reached IS NOT NULL THEN least(first_us, reached) ELSE first_us END,
        last_us = CASE WHEN ended IS NOT NULL THEN greatest(last_us, ended) ELSE last_us END
    WHERE warning_id = NEW.warning_id;
    RETURN NULL;
END $$;
CREATE TRIGGER stats_delivery_times AFTER INSERT OR UPDATE ON stats_delivery
FOR EACH ROW EXECUTE FUNCTION stats_delivery_times();

CREATE FUNCTION stats_coverage_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    at BIGINT;
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE stats_warning SET townships = townships + 1 WHERE warning_id = NEW.warning_id;
        UPDATE stats_district SET townships = townships + 1
        WHERE warning_id = NEW.warning_id AND district = left(NEW.township, 6);
    ELSE
        at := stats_micros(NEW.covered_at);
        UPDATE stats_warning SET covered = covered + 1, covered_us = greatest(covered_us, at)
        WHERE warning_id = NEW.warning_id;
        UPDATE stats_district SET covered = covered + 1, covered_us = greatest(covered_us, at)
        WHERE warning_id = NEW.warning_id AND district = left(NEW.township, 6);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER stats_coverage_insert AFTER INSERT ON coverage
FOR EACH ROW EXECUTE FUNCTION stats_coverage_row();
CREATE TRIGGER stats_coverage_cover AFTER UPDATE OF covered_at ON coverage
FOR EACH ROW WHEN (OLD.covered_at IS NULL AND NEW.covered_at IS NOT NULL)
EXECUTE FUNCTION stats_coverage_row();
"""

_V2_DEPLOYMENT = """
CREATE TABLE deployment (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL
);
INSERT INTO deployment VALUES (1, md5(random()::text || clock_timestamp()::text));
"""
"""The identity of a deployment: gateways on this database coordinate under it in Redis."""

# The aggregates as statement-level triggers over transition tables: a batch's statement of
# 14,000 deliveries updates a warning's row once, not 14,000 times (row triggers updated the
# same row once per delivery, and each update walked the row's growing chain of versions in
# that transaction: quadratic in the fan-out). Transition tables take no column list and one
# event each, hence a trigger per event that filters what changed. The functions scan again:
# a batch turns sequential scans off for its statements (pg_write.run), and the transition
# tables and temporary tables here have no index to use instead.
_V3_STATEMENT_TRIGGERS = """
DROP TRIGGER stats_delivery_insert ON deliveries;
DROP TRIGGER stats_delivery_state ON deliveries;
DROP TRIGGER stats_delivery_times ON stats_delivery;
DROP TRIGGER stats_coverage_insert ON coverage;
DROP TRIGGER stats_coverage_cover ON coverage;
DROP FUNCTION stats_delivery_row();
DROP FUNCTION stats_delivery_times();
DROP FUNCTION stats_coverage_row();

CREATE FUNCTION stats_deliveries_inserted() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = on AS $$
BEGIN
    INSERT INTO stats_channel AS c
        (warning_id, channel, planned, delivered, failures, "open", stopped,
         escalation_deliveries)
    SELECT warning_id, channel,
        count(*) FILTER (WHERE planned),
        count(*) FILTER (WHERE planned AND state = 'delivered'),
        count(*) FILTER (WHERE planned AND state = 'failed'),
        count(*) FILTER (WHERE planned AND state NOT IN ('delivered', 'failed', 'stopped')),
        count(*) FILTER (WHERE planned AND state = 'stopped'),
        count(*) FILTER (WHERE NOT planned AND escalation)
    FROM (
        SELECT warning_id, channel, state, stats_planned(id, purpose) AS planned,
            stats_escalation(id, purpose) AS escalation
        FROM new_rows
    ) AS n
    WHERE planned OR escalation
    GROUP BY warning_id, channel
    ON CONFLICT (warning_id, channel) DO UPDATE SET planned = c.planned + excluded.planned,
        delivered = c.delivered + excluded.delivered,
        failures = c.failures + excluded.failures, "open" = c."open" + excluded."open",
        stopped = c.stopped + excluded.stopped,
        escalation_deliveries = c.escalation_deliveries + excluded.escalation_deliveries;
    UPDATE stats_warning AS w SET planned = w.planned + n.planned,
        delivered = w.delivered + n.dl, failures = w.failures + n.fl,
        "open" = w."open" + n.op, stopped = w.stopped + n.st
    FROM (
        SELECT warning_id, count(*) AS planned,
            count(*) FILTER (WHERE state = 'delivered') AS dl,
            count(*) FILTER (WHERE state = 'failed') AS fl,
            count(*) FILTER (WHERE state NOT IN ('delivered', 'failed', 'stopped')) AS op,
            count(*) FILTER (WHERE state = 'stopped') AS st
        FROM new_rows WHERE stats_planned(id, purpose) GROUP BY warning_id
    ) AS n
    WHERE w.warning_id = n.warning_id;
    RETURN NULL;
END $$;
CREATE TRIGGER stats_deliveries_insert AFTER INSERT ON deliveries
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION stats_deliveries_inserted();

CREATE FUNCTION stats_deliveries_moved() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = on AS $$
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS stats_moved (
        warning_id TEXT, channel TEXT, dl BIGINT, fl BIGINT, op BIGINT, st BIGINT
    ) ON COMMIT DROP;
    DELETE FROM stats_moved;
    INSERT INTO stats_moved
    SELECT n.warning_id, n.channel,
        sum((n.state = 'delivered')::INTEGER - (o.state = 'delivered')::INTEGER),
        sum((n.state = 'failed')::INTEGER - (o.state = 'failed')::INTEGER),
        sum((n.state NOT IN ('delivered', 'failed', 'stopped'))::INTEGER
            - (o.state NOT IN ('delivered', 'failed', 'stopped'))::INTEGER),
        sum((n.state = 'stopped')::INTEGER - (o.state = 'stopped')::INTEGER)
    FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
    WHERE o.state IS DISTINCT FROM n.state AND stats_planned(n.id, n.purpose)
    GROUP BY n.warning_id, n.channel;
    UPDATE stats_channel AS c SET delivered = c.delivered + m.dl,
        failures = c.failures + m.fl, "open" = c."open" + m.op, stopped = c.stopped + m.st
    FROM stats_moved AS m WHERE c.warning_id = m.warning_id AND c.channel = m.channel;
    UPDATE stats_warning AS w SET delivered = w.delivered + m.dl,
        failures = w.failures + m.fl, "open" = w."open" + m.op, stopped = w.stopped + m.st
    FROM (
        SELECT warning_id, sum(dl) AS dl, sum(fl) AS fl, sum(op) AS op, sum(st) AS st
        FROM stats_moved GROUP BY warning_id
    ) AS m
    WHERE w.warning_id = m.warning_id;
    RETURN NULL;
END $$;
CREATE TRIGGER stats_deliveries_moved AFTER UPDATE ON deliveries
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION stats_deliveries_moved();

CREATE FUNCTION stats_times_apply() RETURNS void LANGUAGE plpgsql
SET enable_seqscan = on AS $$
BEGIN
    UPDATE stats_channel AS c SET retries = c.retries + t.retried,
        first_us = least(c.first_us, t.reached), last_us = greatest(c.last_us, t.ended)
    FROM (
        SELECT warning_id, channel, sum(retried) AS retried, min(reached) AS reached,
            max(ended) AS ended
        FROM stats_times GROUP BY warning_id, channel
    ) AS t
    WHERE c.warning_id = t.warning_id AND c.channel = t.channel;
    UPDATE stats_warning AS w SET retries = w.retries + t.retried,
        first_us = least(w.first_us, t.reached), last_us = greatest(w.last_us, t.ended)
    FROM (
        SELECT warning_id, sum(retried) AS retried, min(reached) AS reached,
            max(ended) AS ended
        FROM stats_times GROUP BY warning_id
    ) AS t
    WHERE w.warning_id = t.warning_id;
END $$;

CREATE FUNCTION stats_times_inserted() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = on AS $$
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS stats_times (
        warning_id TEXT, channel TEXT, retried BIGINT, reached BIGINT, ended BIGINT
    ) ON COMMIT DROP;
    DELETE FROM stats_times;
    INSERT INTO stats_times
    SELECT warning_id, channel, greatest(0, tries - 1), reached_us, ended_us FROM new_rows;
    PERFORM stats_times_apply();
    RETURN NULL;
END $$;

CREATE FUNCTION stats_times_updated() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = on AS $$
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS stats_times (
        warning_id TEXT, channel TEXT, retried BIGINT, reached BIGINT, ended BIGINT
    ) ON COMMIT DROP;
    DELETE FROM stats_times;
    INSERT INTO stats_times
    SELECT n.warning_id, n.channel, greatest(0, n.tries - 1) - greatest(0, o.tries - 1),
        CASE WHEN o.reached_us IS NULL THEN n.reached_us END,
        CASE WHEN o.ended_us IS NULL THEN n.ended_us END
    FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id;
    PERFORM stats_times_apply();
    RETURN NULL;
END $$;
CREATE TRIGGER stats_times_insert AFTER INSERT ON stats_delivery
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION stats_times_inserted();
CREATE TRIGGER stats_times_update AFTER UPDATE ON stats_delivery
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION stats_times_updated();

CREATE FUNCTION stats_coverage_inserted() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = on AS $$
BEGIN
    UPDATE stats_warning AS w SET townships = w.townships + n.count
    FROM (SELECT warning_id, count(*) FROM new_rows GROUP BY warning_id) AS n
    WHERE w.warning_id = n.warning_id;
    UPDATE stats_district AS d SET townships = d.townships + n.count
    FROM (
        SELECT warning_id, left(township, 6) AS district, count(*)
        FROM new_rows GROUP BY 1, 2
    ) AS n
    WHERE d.warning_id = n.warning_id AND d.district = n.district;
    RETURN NULL;
END $$;
CREATE TRIGGER stats_coverage_insert AFTER INSERT ON coverage
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION stats_coverage_inserted();

CREATE FUNCTION stats_coverage_covered() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = on AS $$
BEGIN
    UPDATE stats_warning AS w SET covered = w.covered + n.count,
        covered_us = greatest(w.covered_us, n.at)
    FROM (
        SELECT n.warning_id, count(*), max(stats_micros(n.covered_at)) AS at
        FROM new_rows AS n JOIN old_rows AS o
            ON o.warning_id = n.warning_id AND o.township = n.township
        WHERE o.covered_at IS NULL AND n.covered_at IS NOT NULL
        GROUP BY n.warning_id
    ) AS n
    WHERE w.warning_id = n.warning_id;
    UPDATE stats_district AS d SET covered = d.covered + n.count,
        covered_us = greatest(d.covered_us, n.at)
    FROM (
        SELECT n.warning_id, left(n.township, 6) AS district, count(*),
            max(stats_micros(n.covered_at)) AS at
        FROM new_rows AS n JOIN old_rows AS o
            ON o.warning_id = n.warning_id AND o.township = n.township
        WHERE o.covered_at IS NULL AND n.covered_at IS NOT NULL
        GROUP BY 1, 2
    ) AS n
    WHERE d.warning_id = n.warning_id AND d.district = n.district;
    RETURN NULL;
END $$;
CREATE TRIGGER stats_coverage_cover AFTER UPDATE ON coverage
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION stats_coverage_covered();
"""

MIGRATIONS: Final[tuple[tuple[int, str, str], ...]] = (
    (1, "tables of the SQLite store, ledger_head, aggregate triggers", _V1_TABLES + _V1_TRIGGERS),
    (2, "the deployment's identity (its namespace in Redis)", _V2_DEPLOYMENT),
    (3, "aggregates by statement, not by row", _V3_STATEMENT_TRIGGERS),
)
"""(version, what it does, SQL), in order; append, never edit one that shipped."""
LATEST: Final = MIGRATIONS[-1][0]

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
