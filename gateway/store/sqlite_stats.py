"""The SQLite store's dissemination aggregates, kept in the transactions that write the rows.

Four tables, one row per warning (`stats_warning`), per warning and channel (`stats_channel`),
per warning and district of its area (`stats_district`) and per delivery of the warning itself
that was attempted or ended (`stats_delivery`: attempts and when it ended and was reached).
Triggers on `deliveries` and `coverage` keep the counts as rows are inserted and change state,
so a conditional UPDATE (a final state is never overwritten, a township's first cover is kept)
counts exactly what it changed. What only the ledger knows (attempts, when a delivery ended,
escalations) the store adds from the entries of the same batch (`LedgerTally`): one UPSERT per
delivery and batch. Times are integer microseconds since the epoch; a figure is a difference
of two of them, so seconds come out exactly as gateway/reports/stats.py computes them from
datetimes.

A delivery's end is the first `delivered`/`failed` entry of the batch that finalised it, else
that batch's last `receipt`; it is set once. (The reference computation takes the first such
entry ever, else the last receipt ever: the two differ only for entries that arrive after the
delivery was final, e.g. a duplicate receipt.)

`create` makes the tables of a database written before they existed and fills them once from
its rows (`backfill`), in one transaction. gateway/store/sqlite_stats_read.py answers
`Store.stats` from these tables.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.ledger import LedgerDraft, Stage
from gateway.store.base import (
    StoredWarning,
    area_districts,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

TABLES = """
CREATE TABLE IF NOT EXISTS stats_warning (
    warning_id TEXT PRIMARY KEY,
    received_at TEXT NOT NULL,
    received_us INTEGER NOT NULL,
    level INTEGER NOT NULL,
    hazard TEXT NOT NULL,
    msg_type TEXT NOT NULL,
    districts TEXT NOT NULL,
    planned INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    open INTEGER NOT NULL DEFAULT 0,
    stopped INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    first_us INTEGER,
    last_us INTEGER,
    townships INTEGER NOT NULL DEFAULT 0,
    covered INTEGER NOT NULL DEFAULT 0,
    covered_us INTEGER,
    escalations INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS stats_warning_by_received ON stats_warning (received_at);
CREATE TABLE IF NOT EXISTS stats_district (
    warning_id TEXT NOT NULL,
    district TEXT NOT NULL,
    received_at TEXT NOT NULL,
    townships INTEGER NOT NULL DEFAULT 0,
    covered INTEGER NOT NULL DEFAULT 0,
    covered_us INTEGER,
    escalations INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (warning_id, district)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS stats_district_by_received ON stats_district (district, received_at);
CREATE TABLE IF NOT EXISTS stats_channel (
    warning_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    planned INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    open INTEGER NOT NULL DEFAULT 0,
    stopped INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    escalation_deliveries INTEGER NOT NULL DEFAULT 0,
    first_us INTEGER,
    last_us INTEGER,
    PRIMARY KEY (warning_id, channel)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stats_delivery (
    id TEXT PRIMARY KEY,
    warning_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    tries INTEGER NOT NULL,
    ended_us INTEGER,
    reached_us INTEGER
) WITHOUT ROWID;
"""

# The warning's own deliveries; escalations to command centres; the rest (clears) are neither.
_PLANNED = "coalesce({r}.purpose, '') = '' AND instr({r}.id, '/escalate-') = 0"
_ESCALATION = (
    "(instr({r}.id, '/escalate-') > 0 OR substr(coalesce({r}.purpose, ''), 1, 11) = 'escalation:')"
)
_STATES = {
    "delivered": "{r}.state = 'delivered'",
    "failures": "{r}.state = 'failed'",
    "stopped": "{r}.state = 'stopped'",
    "open": "{r}.state NOT IN ('delivered', 'failed', 'stopped')",
}


def _us(text: str) -> str:
    """SQL: microseconds since the epoch of a `ledger.timestamp` text (offset included)."""
    return (
        f"(CAST(strftime('%s', substr({text}, 1, 19) || substr({text}, 27)) AS INTEGER) * 1000000"
        f" + CAST(substr({text}, 21, 6) AS INTEGER))"
    )


def _later(col: str, value: str, fn: str) -> str:
    return f"{fn}(coalesce({col}, {value}), {value})"


def _both(sets: str, where_channel: str) -> str:
    """UPDATE statements applying `sets` to the channel row and to the warning row."""
    return (
        f"UPDATE stats_channel SET {sets} WHERE {where_channel};\n"
        f"UPDATE stats_warning SET {sets} WHERE warning_id = new.warning_id;"
    )


def _triggers() -> str:
    ch = "warning_id = new.warning_id AND channel = new.channel"
    planned_new = _PLANNED.format(r="new")
    counts = ", ".join(f"{c} = {c} + ({s.format(r='new')})" for c, s in _STATES.items())
    deltas = ", ".join(
        f"{c} = {c} + ({s.format(r='new')}) - ({s.format(r='old')})" for c, s in _STATES.items()
    )
    values = ", ".join(s.format(r="new") for s in _STATES.values())
    upsert_counts = ", ".join(f"{c} = {c} + excluded.{c}" for c in _STATES)

    def times(old: bool) -> str:
        unset = "old.{} IS NULL AND ".format if old else "".format
        retried = "max(0, old.tries - 1)" if old else "0"
        return (
            f"retries = retries + max(0, new.tries - 1) - {retried}, "
            f"first_us = CASE WHEN {unset('reached_us')}new.reached_us IS NOT NULL "
            f"THEN {_later('first_us', 'new.reached_us', 'min')} ELSE first_us END, "
            f"last_us = CASE WHEN {unset('ended_us')}new.ended_us IS NOT NULL "
            f"THEN {_later('last_us', 'new.ended_us', 'max')} ELSE last_us END"
        )

    town = "warning_id = new.warning_id AND district = substr(new.township, 1, 6)"
    cover = (
        f"covered = covered + 1, covered_us = {_later('covered_us', _us('new.covered_at'), 'max')}"
    )
    return f"""
CREATE TRIGGER IF NOT EXISTS stats_delivery_planned AFTER INSERT ON deliveries
WHEN {planned_new} BEGIN
INSERT INTO stats_channel (warning_id, channel, planned, {", ".join(_STATES)})
VALUES (new.warning_id, new.channel, 1, {values})
ON CONFLICT (warning_id, channel) DO UPDATE SET planned = planned + 1, {upsert_counts};
UPDATE stats_warning SET planned = planned + 1, {counts} WHERE warning_id = new.warning_id;
END;
CREATE TRIGGER IF NOT EXISTS stats_delivery_escalation AFTER INSERT ON deliveries
WHEN {_ESCALATION.format(r="new")} BEGIN
INSERT INTO stats_channel (warning_id, channel, escalation_deliveries)
VALUES (new.warning_id, new.channel, 1)
ON CONFLICT (warning_id, channel) DO UPDATE SET escalation_deliveries = escalation_deliveries + 1;
END;
CREATE TRIGGER IF NOT EXISTS stats_delivery_state AFTER UPDATE OF state ON deliveries
WHEN old.state IS NOT new.state AND {planned_new} BEGIN
{_both(deltas, ch)}
END;
CREATE TRIGGER IF NOT EXISTS stats_delivery_new AFTER INSERT ON stats_delivery BEGIN
{_both(times(old=False), ch)}
END;
CREATE TRIGGER IF NOT EXISTS stats_delivery_more AFTER UPDATE ON stats_delivery BEGIN
{_both(times(old=True), ch)}
END;
CREATE TRIGGER IF NOT EXISTS stats_coverage_row AFTER INSERT ON coverage BEGIN
UPDATE stats_warning SET townships = townships + 1 WHERE warning_id = new.warning_id;
UPDATE stats_district SET townships = townships + 1 WHERE {town};
END;
CREATE TRIGGER IF NOT EXISTS stats_coverage_cover AFTER UPDATE OF covered_at ON coverage
WHEN old.covered_at IS NULL AND new.covered_at IS NOT NULL BEGIN
UPDATE stats_warning SET {cover} WHERE warning_id = new.warning_id;
UPDATE stats_district SET {cover} WHERE {town};
END;
"""


SCHEMA = TABLES + _triggers()

INSERT_WARNING = "INSERT INTO stats_warning (warning_id, received_at, received_us, level, hazard, msg_type, districts) VALUES (?,?,?,?,?,?,?)"  # noqa: E501
INSERT_DISTRICT = "INSERT INTO stats_district (warning_id, district, received_at) VALUES (?,?,?)"
UPSERT_DELIVERY = f"""
INSERT INTO stats_delivery (id, warning_id, channel, tries, ended_us, reached_us)
SELECT id, warning_id, channel, ?2,
    CASE WHEN state IN ('delivered', 'failed') THEN ?3 END,
    CASE WHEN state = 'delivered' THEN ?4 END
FROM deliveries AS d WHERE id = ?1 AND {_PLANNED.format(r="d")}
ON CONFLICT (id) DO UPDATE SET tries = tries + excluded.tries,
    ended_us = coalesce(ended_us, excluded.ended_us),
    reached_us = coalesce(reached_us, excluded.reached_us)
"""
ESCALATED_WARNING = "UPDATE stats_warning SET escalations = escalations + 1 WHERE warning_id = ?"
ESCALATED_DISTRICT = (
    "UPDATE stats_district SET escalations = escalations + 1 WHERE warning_id = ? AND district = ?"
)


def micros(at: datetime) -> int:
    """Microseconds since the epoch, exactly."""
    return (at - _EPOCH) // _US


def warning_rows(
    w: StoredWarning, received_at: str
) -> tuple[tuple[object, ...], list[tuple[object, ...]]]:
    """The `stats_warning` row of a new warning and its `stats_district` rows."""
    doc = w.warning
    districts = area_districts(doc)
    row = (
        w.id,
        received_at,
        micros(w.received_at),
        int(doc.get("level", 0)),
        str(doc.get("hazard", "")),
        str(doc.get("msg_type", "alert")),
        json.dumps(districts),
    )
    return row, [(w.id, d, received_at) for d in districts]


class LedgerTally:
    """What a batch's ledger entries add to the aggregates: per delivery, its attempts and
    its end (`UPSERT_DELIVERY` rows); escalated townships."""

    def __init__(self) -> None:
        self._deliveries: dict[str, list[Any]] = {}  # id: [tries, end, final, reached]
        self.escalated: list[tuple[object, ...]] = []
        self.escalated_districts: list[tuple[object, ...]] = []

    def add(self, draft: LedgerDraft) -> None:
        stage = draft.stage
        if stage == Stage.ESCALATED:
            township = str(draft.data.get("township", ""))
            self.escalated.append((draft.warning_id,))
            self.escalated_districts.append((draft.warning_id, township[:6]))
            return
        if stage not in _DELIVERY_STAGES:
            return
        did = draft.data.get("delivery_id")
        if not isinstance(did, str):
            return
        d = self._deliveries.setdefault(did, [0, None, False, None])
        if stage == Stage.ATTEMPT:
            d[0] += 1
            return
        at = micros(draft.at)
        if stage == Stage.RECEIPT:
            if not d[2]:
                d[1] = at
            return
        if not d[2]:
            d[1], d[2] = at, True
        if stage == Stage.DELIVERED and d[3] is None:
            d[3] = at

    def statements(self) -> list[tuple[str, list[tuple[object, ...]]]]:
        """The aggregate updates of the tallied entries; after the batch's state changes (a
        delivery's end counts once it is final)."""
        out = [
            (UPSERT_DELIVERY, self.delivery_rows()),
            (ESCALATED_WARNING, self.escalated),
            (ESCALATED_DISTRICT, self.escalated_districts),
        ]
        return [(sql, params) for sql, params in out if params]

    def delivery_rows(self) -> list[tuple[object, ...]]:
        return [
            (did, tries, end, end if reached is None else reached)
            for did, (tries, end, _, reached) in self._deliveries.items()
        ]


_DELIVERY_STAGES = frozenset({Stage.ATTEMPT, Stage.DELIVERED, Stage.FAILED, Stage.RECEIPT})


# -- migration ------------------------------------------------------------------------------------


def create(conn: sqlite3.Connection) -> None:
    """Create the aggregate tables and triggers if missing, filling new tables from the rows
    already stored; one transaction (on the writer connection, outside a transaction)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'stats_warning'"
        ).fetchone()
        _script(conn, SCHEMA)
        if found is None:
            backfill(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _script(conn: sqlite3.Connection, script: str) -> None:
    """Run the statements of `script` inside the open transaction (executescript commits)."""
    for statement in _statements(script):
        conn.execute(statement)


def _statements(script: str) -> Iterable[str]:
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer
            buffer = ""


def backfill(conn: sqlite3.Connection) -> None:
    """Fill empty aggregate tables from the stored warnings, deliveries, coverage and ledger."""
    for wid, doc, received_at in conn.execute("SELECT id, warning, received_at FROM warnings"):
        stored = StoredWarning(
            wid, "", json.loads(doc), {}, "", datetime.fromisoformat(received_at), _EPOCH, {}
        )
        row, districts = warning_rows(stored, received_at)
        conn.execute(INSERT_WARNING, row)
        conn.executemany(INSERT_DISTRICT, districts)
    planned, escalation = _PLANNED.format(r="d"), _ESCALATION.format(r="d")
    state_sums = ", ".join(f"sum(({planned}) AND {s.format(r='d')})" for s in _STATES.values())
    conn.execute(
        f"INSERT INTO stats_channel (warning_id, channel, planned, {', '.join(_STATES)}, "
        f"escalation_deliveries) SELECT warning_id, channel, sum({planned}), {state_sums}, "
        f"sum({escalation}) FROM deliveries AS d WHERE ({planned}) OR {escalation} "
        "GROUP BY warning_id, channel"
    )
    cols = ", ".join(["planned", *_STATES])
    conn.execute(
        f"UPDATE stats_warning SET ({cols}) = (SELECT {', '.join(f'sum({c})' for c in cols.split(', '))} "  # noqa: E501
        "FROM stats_channel AS c WHERE c.warning_id = stats_warning.warning_id) "
        "WHERE warning_id IN (SELECT warning_id FROM stats_channel)"
    )
    coverage = f"SELECT count(*), count(covered_at), max({_us('covered_at')}) FROM coverage AS c"
    conn.execute(
        f"UPDATE stats_warning SET (townships, covered, covered_us) = ({coverage} "
        "WHERE c.warning_id = stats_warning.warning_id)"
    )
    conn.execute(
        f"UPDATE stats_district SET (townships, covered, covered_us) = ({coverage} "
        "WHERE c.warning_id = stats_district.warning_id "
        "AND substr(c.township, 1, 6) = stats_district.district)"
    )
    _backfill_ledger(conn)


def _backfill_ledger(conn: sqlite3.Connection) -> None:
    """Per delivery, as the reference computation reads the whole ledger: attempts, first
    final entry else last receipt, first `delivered` entry; and the escalations."""
    sql = (
        "SELECT warning_id, stage, at, data FROM ledger WHERE stage IN "
        "('attempt', 'delivered', 'failed', 'receipt', 'escalated') ORDER BY seq"
    )
    per: dict[str, list[Any]] = {}  # id: [tries, final, receipt, delivered]
    escalated: list[tuple[object, ...]] = []
    for wid, stage, at, data in conn.execute(sql):
        doc = json.loads(data)
        if stage == Stage.ESCALATED:
            escalated.append((wid, str(doc.get("township", ""))[:6]))
            continue
        did = doc.get("delivery_id")
        if not isinstance(did, str):
            continue
        d = per.setdefault(did, [0, None, None, None])
        if stage == Stage.ATTEMPT:
            d[0] += 1
            continue
        us = micros(datetime.fromisoformat(at))
        if stage == Stage.RECEIPT:
            d[2] = us
            continue
        d[1] = us if d[1] is None else d[1]
        if stage == Stage.DELIVERED and d[3] is None:
            d[3] = us
    rows = []
    for did, (tries, final, receipt, delivered) in per.items():
        end = final if final is not None else receipt
        rows.append((did, tries, end, end if delivered is None else delivered))
    conn.executemany(UPSERT_DELIVERY, rows)
    conn.executemany(ESCALATED_WARNING, [(wid,) for wid, _ in escalated])
    conn.executemany(ESCALATED_DISTRICT, escalated)
