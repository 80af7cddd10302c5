"""The rows of one store write, encoded and checked before the write joins a group commit.

A group commit writes many requests' rows in one transaction: one row that SQLite or UTF-8
cannot take (a lone surrogate, an integer beyond 64 bits) would roll back every other request
with it. `prepare` encodes one `Write` into its own `Rows` (and its ledger data as hashed) and
`check_rows` looks for such a value, so that write alone is refused (`Unstorable`) before it is
queued; `scrubbed` escapes what is not valid Unicode in an outcome that must not be lost over
a diagnostic text. The writer merges prepared rows into one batch with `Rows.add`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC

from gateway.exceptions import FieldError, Unstorable
from gateway.ledger import LedgerDraft, canonical_json, timestamp
from gateway.store import sqlite_stats
from gateway.store.base import Cover, CoverageRow, DeliveryRecord, DeliveryUpdate, StoredWarning
from gateway.text import printable, scrub, valid_unicode

# One encoder for every row: json.dumps with an option builds a new one each call.
_to_json = json.JSONEncoder(ensure_ascii=False).encode
_INT64 = (-(2**63), 2**63 - 1)


@dataclass
class Write:
    """One caller's write: applied whole, in the group commit it joins."""

    entries: Sequence[LedgerDraft]
    warning: StoredWarning | None = None
    deliveries: Sequence[DeliveryRecord] = ()
    updates: Sequence[DeliveryUpdate] = ()
    coverage: Sequence[CoverageRow] = ()
    covers: Sequence[Cover] = ()
    escalated: tuple[str, Sequence[str], str] | None = None
    retire: tuple[str, str] | None = None
    done: asyncio.Future[tuple[StoredWarning, bool] | None] | None = None
    """Resolved once the write is durable; None when no one waits (`record_soon`)."""
    rows: Rows | None = None
    """The write's own rows, encoded and checked by `prepare` before it joins a batch."""
    data_json: list[str] = field(default_factory=list)
    """canonical_json of each entry's data, as hashed and stored."""


@dataclass
class Rows:
    """The rows one group commit writes."""

    warnings: list[tuple[object, ...]] = field(default_factory=list)
    deliveries: list[tuple[object, ...]] = field(default_factory=list)
    updates: list[tuple[object, ...]] = field(default_factory=list)
    receipts: list[tuple[object, ...]] = field(default_factory=list)
    coverage: list[tuple[object, ...]] = field(default_factory=list)
    covers: list[tuple[object, ...]] = field(default_factory=list)
    escalated: list[tuple[object, ...]] = field(default_factory=list)
    retired: list[tuple[object, ...]] = field(default_factory=list)
    stopped: list[tuple[object, ...]] = field(default_factory=list)
    ledger: list[tuple[object, ...]] = field(default_factory=list)
    stats_warnings: list[tuple[object, ...]] = field(default_factory=list)
    stats_districts: list[tuple[object, ...]] = field(default_factory=list)

    def add(self, w: Write, known: dict[str, StoredWarning]) -> tuple[StoredWarning, bool] | None:
        """Queue the rows of `w`; its result, (stored, False) when the id is taken."""
        result: tuple[StoredWarning, bool] | None = None
        if w.warning is not None:
            prior = known.get(w.warning.id)
            if prior is not None:
                return (prior, False)
            known[w.warning.id] = w.warning
            result = (w.warning, True)
        own = w.rows if w.rows is not None else Rows.of(w)
        for table, rows in own.tables():
            getattr(self, table).extend(rows)
        return result

    def tables(self) -> list[tuple[str, list[tuple[object, ...]]]]:
        """(name, rows) of every table but the ledger."""
        return [(f.name, getattr(self, f.name)) for f in fields(self) if f.name != "ledger"]

    @classmethod
    def of(cls, w: Write) -> Rows:
        """The rows of `w` alone (its warning's rows too, used only if the id is new)."""
        self = cls()
        if w.warning is not None:
            row = warning_row(w.warning)
            self.warnings.append(row)
            stats_row, districts = sqlite_stats.warning_rows(w.warning, row[5])
            self.stats_warnings.append(stats_row)
            self.stats_districts.extend(districts)
            self.coverage.extend((c.warning_id, c.township, int(c.blind_spot)) for c in w.coverage)
        self.deliveries.extend(delivery_row(d) for d in w.deliveries)
        self.covers.extend(
            (timestamp(c.at), _to_json(c.by), c.warning_id, c.township) for c in w.covers
        )
        if w.escalated is not None:
            wid, townships, at = w.escalated
            self.escalated.extend((at, wid, t) for t in townships)
        if w.retire is not None:
            self.retired.append((w.retire[1], w.retire[0]))
            self.stopped.append((w.retire[0],))
        for u in w.updates:
            if u.receipt is None:
                detail = _to_json(u.detail)
                self.updates.append((u.state, u.attempts, detail, u.id))
            else:
                self.receipts.append((u.state, _to_json(u.receipt), u.id))
        return self

    def statements(self) -> list[tuple[str, list[tuple[object, ...]]]]:
        # A final state (delivered, failed) is never overwritten.
        unfinished = "WHERE id = ? AND state IN ('pending', 'sent')"
        out = [
            ("INSERT INTO warnings VALUES (?,?,?,?,?,?,?,?)", self.warnings),
            (sqlite_stats.INSERT_WARNING, self.stats_warnings),
            (sqlite_stats.INSERT_DISTRICT, self.stats_districts),
            ("INSERT INTO deliveries VALUES (?,?,?,?,?,?,?,?,NULL,?)", self.deliveries),
            (
                "INSERT INTO coverage (warning_id, township, blind_spot) VALUES (?,?,?)",
                self.coverage,
            ),
            (
                "UPDATE coverage SET covered_at = ?, covered_by = ? "
                "WHERE warning_id = ? AND township = ? AND covered_at IS NULL",
                self.covers,
            ),
            (
                "UPDATE coverage SET escalated_at = ? "
                "WHERE warning_id = ? AND township = ? AND escalated_at IS NULL",
                self.escalated,
            ),
            (
                f"UPDATE deliveries SET state = ?, attempts = ?, detail = ? {unfinished}",
                self.updates,
            ),
            # A final delivery keeps its state; its receipt record still takes the report (which
            # reports were seen, so a repeat is applied once).
            (
                "UPDATE deliveries SET state = CASE WHEN state IN ('pending', 'sent') THEN ? "
                "ELSE state END, receipt = ? WHERE id = ?",
                self.receipts,
            ),
            ("UPDATE warnings SET state = ? WHERE id = ? AND state = 'active'", self.retired),
            (
                "UPDATE deliveries SET state = 'stopped' WHERE warning_id = ? "
                "AND state = 'pending' AND coalesce(purpose, '') NOT IN ('clear', 'expired')",
                self.stopped,
            ),
            ("INSERT INTO ledger VALUES (?,?,?,?,?,?,?)", self.ledger),
        ]
        return [(sql, params) for sql, params in out if params]


def prepare(w: Write) -> Write:
    """`w` with its rows and ledger data encoded; Unstorable, before `w` joins any batch, when
    something in it cannot be encoded or bound (so it fails alone)."""
    try:
        w.rows = Rows.of(w)
        w.data_json = [canonical_json(d.data) for d in w.entries]
        heads = [(d.warning_id, d.stage.value, timestamp(d.at)) for d in w.entries]
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        reason = printable(str(exc))
        raise Unstorable(
            f"cannot encode the write: {reason}", errors=[FieldError("(write)", reason)]
        ) from exc
    for table, rows in w.rows.tables():
        check_rows(table, rows)
    check_rows("ledger", heads)
    check_rows("ledger.data", [(data,) for data in w.data_json])
    return w


def scrubbed(w: Write) -> Write:
    """An outcome `w` with the text that is not valid Unicode escaped in its data."""
    return Write(
        [replace(d, warning_id=scrub(d.warning_id), data=scrub(d.data)) for d in w.entries],
        updates=[
            replace(u, id=scrub(u.id), detail=scrub(u.detail), receipt=scrub(u.receipt))
            for u in w.updates
        ],
        covers=[replace(c, warning_id=scrub(c.warning_id), by=scrub(c.by)) for c in w.covers],
    )


def ledger_data(w: Write) -> list[str]:
    """The stored (and hashed) text of each entry's data: one encoding per entry."""
    if len(w.data_json) != len(w.entries):
        w.data_json = [canonical_json(d.data) for d in w.entries]
    return w.data_json


def warning_row(w: StoredWarning) -> tuple[str, ...]:
    return (
        w.id,
        w.body_hash,
        _to_json(w.warning),
        _to_json(w.answer),
        w.state,
        timestamp(w.received_at.astimezone(UTC)),  # UTC: text order is time order
        timestamp(w.expires_at),
        _to_json(w.authorization),
    )


def delivery_row(d: DeliveryRecord) -> tuple[object, ...]:
    detail = _to_json(d.detail)
    return (
        d.id,
        d.warning_id,
        d.endpoint_id,
        d.channel,
        d.level,
        d.state,
        d.attempts,
        detail,
        d.purpose,
    )


def check_rows(table: str, rows: Iterable[Sequence[object]]) -> None:
    """Raise Unstorable for the first value of `rows` that SQLite cannot bind as given."""
    for row in rows:
        for i, value in enumerate(row):
            if isinstance(value, str) and not valid_unicode(value):
                reason = "holds text that is not valid Unicode"
            elif isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
                reason = "holds an integer beyond 64 bits"
            else:
                continue
            raise Unstorable(
                f"cannot store a {table} row: {reason}",
                errors=[FieldError(f"{table}[{i}]", reason)],
            )
