"""The SQLite store's dissemination aggregates, kept in the transactions that write the rows.

Four tables, one row per warning (`stats_warning`), per warning and channel (`stats_channel`),
per warning and district of its area (`stats_district`) and per delivery of the warning itself
that was attempted or ended (`stats_delivery`: attempts and when it ended and was reached).
Triggers on `deliveries` and `coverage` keep the counts as rows are inserted and change state,
so a conditional UPDATE (a final state is never overwritten, a township's first cover is kept)
counts exactly what it changed. What only the ledger knows (attempts, when a delivery ended,
escalations) the store adds from the entries of the same batch (`LedgerTally`): one UPSERT per
delivery and batch. Times are integer microseconds since the epoch; a figure is a difference
of two of them, so seconds come out exactly as gateway/stats.py computes them from datetimes.

A delivery's end is the first `delivered`/`failed` entry of the batch that finalised it, else
that batch's last `receipt`; it is set once. (The reference computation takes the first such
entry ever, else the last receipt ever: the two differ only for entries that arrive after the
delivery was final, e.g. a duplicate receipt.)

`create` makes the tables of a database written before they existed and fills them once from
its rows (`backfill`), in one transaction; `read` answers `Store.stats` with a handful of
indexed queries over the warnings in range.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiosqlite

from gateway.ledger import LedgerDraft, Stage
from gateway.store.base import (
    TIME_FIGURES,
    ChannelTally,
    Spread,
    StatsFigures,
    StoredWarning,
    Tally,
    WarningTally,
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


# -- reads ----------------------------------------------------------------------------------------

_SUMMED = ("planned", "delivered", "failures", "open", "stopped", "retries")
_SUMS = ", ".join(f"coalesce(sum({{t}}.{c}), 0)" for c in _SUMMED)
_FIRST, _LAST, _FULL = TIME_FIGURES
_SPREADS = f"""
v (kind, grp, fig, x) AS (
    SELECT 't', '', '{_FIRST}', first_us - received_us FROM w WHERE first_us IS NOT NULL
    UNION ALL SELECT 't', '', '{_LAST}', last_us - received_us FROM w
        WHERE open = 0 AND last_us IS NOT NULL
    UNION ALL SELECT 't', '', '{_FULL}', covered_us - received_us FROM w
        WHERE townships > 0 AND covered = townships
    UNION ALL SELECT 'd', d.district, '{_FIRST}', w.first_us - w.received_us FROM {{wd}}
        WHERE w.first_us IS NOT NULL
    UNION ALL SELECT 'd', d.district, '{_LAST}', w.last_us - w.received_us FROM {{wd}}
        WHERE w.open = 0 AND w.last_us IS NOT NULL
    UNION ALL SELECT 'd', d.district, '{_FULL}', d.covered_us - w.received_us FROM {{wd}}
        WHERE d.townships > 0 AND d.covered = d.townships
    UNION ALL SELECT 'c', c.channel, '{_FIRST}', c.first_us - w.received_us FROM {{wc}}
        WHERE c.planned > 0 AND c.first_us IS NOT NULL
    UNION ALL SELECT 'c', c.channel, '{_LAST}', c.last_us - w.received_us FROM {{wc}}
        WHERE c.planned > 0 AND c.open = 0 AND c.last_us IS NOT NULL
),
r AS (
    SELECT kind, grp, fig, x, count(*) OVER (PARTITION BY kind, grp, fig) AS n,
        row_number() OVER (PARTITION BY kind, grp, fig ORDER BY x) AS rn
    FROM v
)
SELECT kind, grp, fig, n, rn, x FROM r
WHERE rn = (n + 1) / 2 OR rn = (n + 2) / 2 OR rn = (9 * n + 9) / 10 OR rn = n
"""
_LISTED = """
SELECT warning_id, received_at, level, hazard, msg_type, districts,
    planned, delivered, failures, open, stopped, retries, escalations,
    first_us - received_us,
    CASE WHEN open = 0 THEN last_us - received_us END,
    CASE WHEN townships > 0 AND covered = townships THEN covered_us - received_us END
FROM w ORDER BY received_at DESC, warning_id DESC LIMIT :n
"""
_CHANNELS = """
SELECT c.warning_id, c.channel, c.planned, c.delivered, c.failures, c.open, c.stopped,
    c.retries, c.escalation_deliveries, c.first_us - s.received_us,
    CASE WHEN c.open = 0 AND c.planned > 0 THEN c.last_us - s.received_us END
FROM stats_channel AS c JOIN stats_warning AS s USING (warning_id)
WHERE c.warning_id IN ({marks}) ORDER BY c.channel
"""


async def read(
    conn: aiosqlite.Connection, lo: str, hi: str, district: str | None, listed: int
) -> StatsFigures:
    """`Store.stats` over the UTC received-at texts [lo, hi)."""
    args: dict[str, object] = {"lo": lo, "hi": hi, "d": district, "n": listed}
    if district is None:
        inrange = "SELECT * FROM stats_warning WHERE received_at >= :lo AND received_at < :hi"
    else:
        inrange = (
            "SELECT s.* FROM stats_district AS x JOIN stats_warning AS s USING (warning_id) "
            "WHERE x.district = :d AND x.received_at >= :lo AND x.received_at < :hi"
        )
    own = "" if district is None else " AND d.district = :d"
    wd = f"w JOIN stats_district AS d ON d.warning_id = w.warning_id{own}"
    wc = "w JOIN stats_channel AS c ON c.warning_id = w.warning_id"
    w = f"WITH w AS ({inrange}) "
    tallies: dict[str, dict[str, Tally]] = {"t": {}, "d": {}, "c": {}}
    for kind, sql in (
        ("t", f"SELECT '', count(*), {_SUMS.format(t='w')}, sum(w.escalations), 0 FROM w"),
        (
            "d",
            f"SELECT d.district, count(*), {_SUMS.format(t='w')}, sum(d.escalations), 0 "
            f"FROM {wd} GROUP BY d.district",
        ),
        (
            "c",
            f"SELECT c.channel, sum(c.planned > 0), {_SUMS.format(t='c')}, 0, "
            f"sum(c.escalation_deliveries) FROM {wc} GROUP BY c.channel",
        ),
    ):
        for r in await _rows(conn, w + sql, args):
            tallies[kind][r[0]] = _tally([int(v or 0) for v in r[1:10]])
    ranks: dict[tuple[str, str, str], dict[int, int]] = {}
    spreads = w + "," + _SPREADS.format(wd=wd, wc=wc)
    for kind, grp, fig, count, rn, x in await _rows(conn, spreads, args):
        ranks.setdefault((kind, grp, fig), {0: count})[rn] = x
    for (kind, grp, fig), at in ranks.items():
        n = at[0]
        spread = Spread(n, at[(n + 1) // 2], at[(n + 2) // 2], at[(9 * n + 9) // 10], at[n])
        tallies[kind][grp].times[fig] = spread
    found = list(reversed(await _rows(conn, w + _LISTED, args)))
    return StatsFigures(tallies["t"][""], tallies["d"], tallies["c"], await _listed(conn, found))


def _tally(n: list[int]) -> Tally:
    warnings, planned, delivered, failures, open_, stopped, retries, esc, esc_deliveries = n
    return Tally(
        warnings=warnings,
        planned=planned,
        delivered=delivered,
        failures=failures,
        open=open_,
        stopped=stopped,
        retries=retries,
        escalations=esc,
        escalation_deliveries=esc_deliveries,
    )


async def _rows(conn: aiosqlite.Connection, sql: str, params: Any) -> list[Any]:
    async with conn.execute(sql, params) as cur:
        return list(await cur.fetchall())


async def _listed(conn: aiosqlite.Connection, found: list[Any]) -> list[WarningTally]:
    """The warnings of `found` (`_LISTED` rows) with their channels."""
    channels: dict[str, dict[str, ChannelTally]] = {r[0]: {} for r in found}
    if found:
        sql = _CHANNELS.format(marks=",".join("?" * len(found)))
        for r in await _rows(conn, sql, [r[0] for r in found]):
            channels[r[0]][r[1]] = ChannelTally(*r[2:])
    out = []
    for r in found:
        planned, delivered, failures, open_, stopped, retries, escalations = r[6:13]
        out.append(
            WarningTally(
                warning_id=r[0],
                received_at=datetime.fromisoformat(r[1]),
                level=r[2],
                hazard=r[3],
                msg_type=r[4],
                districts=json.loads(r[5]),
                planned=planned,
                delivered=delivered,
                failures=failures,
                open=open_,
                stopped=stopped,
                retries=retries,
                escalations=escalations,
                first_delivery_us=r[13],
                last_delivery_us=r[14],
                full_coverage_us=r[15],
                channels=channels[r[0]],
            )
        )
    return out
