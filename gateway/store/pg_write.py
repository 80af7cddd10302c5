"""One group commit of the PostgreSQL store: a batch of writes as one transaction that extends
the one hash chain of every process sharing the database.

The chain is serialised by the database, not by a process: a batch first locks the one row of
`ledger_head` (SELECT ... FOR UPDATE), so batches of all processes commit one at a time; it
numbers its entries from that row's seq and chains them from its hash, and moves the row to
its last entry before it commits. The same lock makes `accept`'s "is this id taken" check
exact across processes. A batch without a warning or an entry does not lock.

A commit costs round trips more than rows: the statements that run per outcome take whole
columns as arrays (`unnest`), one statement per batch, and all of a batch's statements go in
one pipeline. Several updates of one delivery (or covers of one township) in a batch are
folded first to what applying them in order gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection, AsyncCursor

from gateway.ledger import LedgerDraft
from gateway.store.base import DeliveryState
from gateway.store.pg_rows import WARNING_COLUMNS
from gateway.store.records import to_warning
from gateway.store.rows import Known, Needs, Rows, Write, WriteResult
from gateway.store.sqlite_stats import LedgerTally

_SQL: dict[str, str] = {
    "warnings": (
        "INSERT INTO warnings (id, body_hash, warning, answer, state, received_at, expires_at,"
        " auth) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    ),
    "stats_warnings": (
        "INSERT INTO stats_warning (warning_id, received_at, received_us, level, hazard,"
        " msg_type, districts) VALUES (%s, %s, %s, %s, %s, %s, %s)"
    ),
    "stats_districts": (
        "INSERT INTO stats_district (warning_id, district, received_at) VALUES (%s, %s, %s)"
    ),
    "deliveries": (
        "INSERT INTO deliveries (id, warning_id, endpoint_id, channel, level, state, attempts,"
        " detail, purpose) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
    ),
    "coverage": "INSERT INTO coverage (warning_id, township, blind_spot) VALUES (%s, %s, %s)",
    "covers": (
        "UPDATE coverage SET covered_at = %s, covered_by = %s "
        "WHERE warning_id = %s AND township = %s AND covered_at IS NULL"
    ),
    "escalated": (
        "UPDATE coverage SET escalated_at = %s "
        "WHERE warning_id = %s AND township = %s AND escalated_at IS NULL"
    ),
    # A final delivery keeps its state; its receipt record still takes the report.
    "receipts": (
        "UPDATE deliveries SET state = CASE WHEN state IN ('pending', 'sent') THEN %s "
        "ELSE state END, receipt = %s WHERE id = %s"
    ),
    "retired": "UPDATE warnings SET state = %s WHERE id = %s AND state = 'active'",
    "stopped": (
        "UPDATE deliveries SET state = 'stopped' WHERE warning_id = %s "
        "AND state = 'pending' AND coalesce(purpose, '') NOT IN ('clear', 'expired')"
    ),
    "ledger": "INSERT INTO ledger VALUES (%s, %s, %s, %s, %s, %s, %s)",
}
_ORDER = (
    *("warnings", "stats_warnings", "stats_districts", "deliveries", "coverage", "covers"),
    *("escalated", "updates", "receipts", "retired", "stopped", "ledger"),
)
UPSERT_DELIVERY = "stats_delivery"
ESCALATED_WARNING = "UPDATE stats_warning SET escalations = escalations + 1 WHERE warning_id = %s"
ESCALATED_DISTRICT = (
    "UPDATE stats_district SET escalations = escalations + 1 "
    "WHERE warning_id = %s AND district = %s"
)


@dataclass
class Attempt:
    """One try of a batch: its results and where it leaves the chain; `committing` once the
    COMMIT was sent (a failure after that leaves it unknown whether the batch landed)."""

    results: list[WriteResult] = field(default_factory=list)
    entries_of: list[Sequence[LedgerDraft]] = field(default_factory=list)
    """The ledger entries each write committed (none for a write that found it came late)."""
    seq: int = 0
    hash: str = ""
    entries: int = 0
    committing: bool = False


# The statements a batch runs most (per outcome) take whole columns as arrays: one statement
# per batch instead of one per row, which is most of a commit's cost in PostgreSQL.
_BULK: dict[str, str] = {
    "deliveries": (
        "INSERT INTO deliveries (id, warning_id, endpoint_id, channel, level, state, attempts,"
        " detail, purpose) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
        " %s::int[], %s::text[], %s::int[], %s::text[], %s::text[])"
    ),
    "updates": (
        "UPDATE deliveries AS d SET state = u.state, attempts = u.attempts, detail = u.detail "
        "FROM unnest(%s::text[], %s::int[], %s::text[], %s::text[]) AS u (state, attempts, "
        "detail, id) WHERE d.id = u.id AND (d.state IN ('pending', 'sent') "
        "OR d.state = 'stopped' AND u.state IN ('sent', 'delivered'))"
    ),
    "covers": (
        "UPDATE coverage AS c SET covered_at = u.at, covered_by = u.by "
        "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS u (at, by, wid, town) "
        "WHERE c.warning_id = u.wid AND c.township = u.town AND c.covered_at IS NULL"
    ),
    "ledger": (
        "INSERT INTO ledger SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[],"
        " %s::text[], %s::text[], %s::text[], %s::text[])"
    ),
    UPSERT_DELIVERY: """
INSERT INTO stats_delivery AS s (id, warning_id, channel, tries, ended_us, reached_us)
SELECT d.id, d.warning_id, d.channel, u.tries,
    CASE WHEN d.state IN ('delivered', 'failed') THEN u.ended END,
    CASE WHEN d.state = 'delivered' THEN u.reached END
FROM unnest(%s::int[], %s::bigint[], %s::bigint[], %s::text[]) AS u (tries, ended, reached, id)
JOIN deliveries AS d ON d.id = u.id WHERE stats_planned(d.id, d.purpose)
ON CONFLICT (id) DO UPDATE SET tries = s.tries + excluded.tries,
    ended_us = coalesce(s.ended_us, excluded.ended_us),
    reached_us = coalesce(s.reached_us, excluded.reached_us)
""",
}
_FINAL = frozenset(DeliveryState.FINAL)


def folded_updates(rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
    """(state, attempts, detail, id) rows with one per id, as applying them in order would
    leave it: a later update does not replace a final one (an UPDATE ... FROM applies one
    row per target, so the order of several would be lost)."""
    out: dict[object, Sequence[Any]] = {}
    for row in rows:
        prior = out.get(row[3])
        if prior is None or prior[0] not in _FINAL:
            out[row[3]] = row
    return list(out.values())


def first_covers(rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
    """(at, by, warning_id, township) rows, the first per township: the first cover wins."""
    out: dict[tuple[object, object], Sequence[Any]] = {}
    for row in rows:
        out.setdefault((row[2], row[3]), row)
    return list(out.values())


def statements(rows: Rows, tally: LedgerTally) -> list[tuple[str, Sequence[Sequence[Any]]]]:
    """The batch's statements in the SQLite store's order, aggregates of entries last; a
    statement of _BULK comes with one row of columns (arrays)."""
    folds = {"updates": folded_updates, "covers": first_covers}
    out: list[tuple[str, Sequence[Sequence[Any]]]] = []
    for name in _ORDER:
        params: Sequence[Sequence[Any]] = getattr(rows, name)
        if name in folds:
            params = folds[name](params)
        out.append((_BULK[name] if name in _BULK else _SQL[name], params))
    out += [
        (_BULK[UPSERT_DELIVERY], [(*r[1:], r[0]) for r in tally.delivery_rows()]),
        (ESCALATED_WARNING, tally.escalated),
        (ESCALATED_DISTRICT, tally.escalated_districts),
    ]
    return [(sql, params) for sql, params in out if params]


_BULK_SQL = frozenset(_BULK.values())


async def run(conn: AsyncConnection[Any], batch: Sequence[Write], attempt: Attempt) -> None:
    """Write `batch` as one transaction on `conn` (in autocommit mode), filling `attempt`."""
    chained = any(w.warning is not None or w.entries for w in batch)
    async with conn.transaction():
        cur = conn.cursor()
        seq, prev = 0, ""
        if chained:
            await cur.execute("SELECT seq, hash FROM ledger_head WHERE id = 1 FOR UPDATE")
            head = await cur.fetchone()
            assert head is not None, "ledger_head is missing its row"
            seq, prev = int(head[0]), str(head[1])
        need = Needs.of(batch)
        known = await read_known(cur, need) if need else Known()
        rows = Rows()
        added = [rows.add(w, known) for w in batch]
        attempt.results = [result for result, _ in added]
        attempt.entries_of = [entries for _, entries in added]
        tally = LedgerTally()
        seq, prev = rows.chain(batch, added, (seq, prev), tally)
        async with conn.pipeline():  # one round trip for the batch's statements
            # Every statement of a batch looks rows up by key; the planner cannot see into
            # unnest, and the statistics of a table a fan-out has just filled are stale, so it
            # would scan a whole table per batch.
            await cur.execute("SET LOCAL enable_seqscan = off")
            for sql, params in statements(rows, tally):
                if sql in _BULK_SQL:
                    await cur.execute(sql, [list(col) for col in zip(*params, strict=True)])
                else:
                    await cur.executemany(sql, params)
            if rows.ledger:
                await cur.execute(
                    "UPDATE ledger_head SET seq = %s, hash = %s WHERE id = 1", (seq, prev)
                )
        attempt.seq, attempt.hash, attempt.entries = seq, prev, len(rows.ledger)
        attempt.committing = True


async def read_known(cur: AsyncCursor[Any], need: Needs) -> Known:
    """What a batch depends on (`Known`), read under the ledger_head lock: every process's
    writes of these rows are serialised by it, so what is read cannot change before COMMIT."""
    known = Known()
    if need.warnings:
        await cur.execute(
            f"SELECT {WARNING_COLUMNS} FROM warnings WHERE id = ANY(%s)", (need.warnings,)
        )
        known.warnings.update((row[0], to_warning(row)) for row in await cur.fetchall())
    if need.states:
        await cur.execute("SELECT id, state FROM warnings WHERE id = ANY(%s)", (need.states,))
        known.states.update((row[0], row[1]) for row in await cur.fetchall())
    if need.townships:
        await cur.execute(
            "SELECT c.warning_id, c.township FROM coverage AS c JOIN unnest(%s::text[], "
            "%s::text[]) AS u (wid, town) ON c.warning_id = u.wid AND c.township = u.town "
            "WHERE c.escalated_at IS NOT NULL",
            ([w for w, _ in need.townships], [t for _, t in need.townships]),
        )
        known.escalated.update((row[0], row[1]) for row in await cur.fetchall())
    if need.delivery_ids:
        await cur.execute("SELECT id FROM deliveries WHERE id = ANY(%s)", (need.delivery_ids,))
        known.delivery_ids.update(row[0] for row in await cur.fetchall())
    return known


async def landed(conn: AsyncConnection[Any], attempt: Attempt) -> bool:
    """Whether a batch whose COMMIT went unanswered committed: its last entry is in the chain
    (the hash covers everything before it, so no other batch can have written that row)."""
    if not attempt.entries:
        return False
    cur = await conn.execute("SELECT hash FROM ledger WHERE seq = %s", (attempt.seq,))
    row = await cur.fetchone()
    return row is not None and row[0] == attempt.hash
