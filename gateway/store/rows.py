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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC

from gateway.exceptions import FieldError, Unstorable
from gateway.ledger import LedgerDraft, canonical_json, entry_hash, timestamp
from gateway.store import sqlite_stats
from gateway.store.base import (
    Cover,
    CoverageRow,
    DeliveryRecord,
    DeliveryUpdate,
    StoredWarning,
    WarningState,
)
from gateway.text import printable, scrub, valid_unicode

# One encoder for every row: json.dumps with an option builds a new one each call.
_to_json = json.JSONEncoder(ensure_ascii=False).encode
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Known:
    """What a batch reads under its lock before it applies its writes: the stored warnings
    among the ids it accepts, the state of those it retires, the townships of its
    escalations escalated already, the delivery ids of its escalations taken already."""

    warnings: dict[str, StoredWarning] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    escalated: set[tuple[str, str]] = field(default_factory=set)
    delivery_ids: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Needs:
    """The keys a batch must read (`Known`) before it applies."""

    warnings: list[str]
    states: list[str]
    townships: list[tuple[str, str]]
    delivery_ids: list[str]

    def __bool__(self) -> bool:
        return bool(self.warnings or self.states or self.townships or self.delivery_ids)

    @classmethod
    def of(cls, batch: Sequence[Write]) -> Needs:
        escalations = [w for w in batch if w.escalated is not None and w.warning is None]
        return cls(
            warnings=sorted({w.warning.id for w in batch if w.warning is not None}),
            states=sorted({w.retire[0] for w in batch if w.retire is not None}),
            townships=sorted(
                {(e[0], t) for w in escalations if (e := w.escalated) is not None for t in e[1]}
            ),
            delivery_ids=sorted({d.id for w in escalations for d in w.deliveries}),
        )


WriteResult = tuple[StoredWarning, bool] | bool | list[DeliveryRecord] | None
"""accept: (stored, new); retire: whether it retired; escalate: the deliveries stored."""


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
    done: asyncio.Future[WriteResult] | None = None
    """Resolved once the write is durable; None when no one waits (`record_soon`)."""
    then: Callable[[], None] | None = None
    """Called once the write is durable (`record_soon`)."""
    rows: Rows | None = None
    """The write's own rows, encoded and checked by `prepare` before it joins a batch."""
    data_json: list[str] = field(default_factory=list)
    """canonical_json of each entry's data, as hashed and stored."""


@dataclass(slots=True)
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

    def add(self, w: Write, known: Known) -> tuple[WriteResult, Sequence[LedgerDraft]]:
        """Queue the rows of `w` as `known` says they apply; its result and the ledger entries
        to write with it. An accept of a taken id, a retire of a warning not active, an
        escalation of townships all escalated write nothing (the same write by another
        process came first)."""
        result: WriteResult = None
        entries = w.entries
        if w.warning is not None:
            prior = known.warnings.get(w.warning.id)
            if prior is not None:
                return (prior, False), ()
            known.warnings[w.warning.id] = w.warning
            if w.retire is not None:
                known.states[w.retire[0]] = w.retire[1]
            result = (w.warning, True)
        elif w.retire is not None:
            wid, state = w.retire
            if known.states.get(wid, WarningState.ACTIVE) != WarningState.ACTIVE:
                return False, ()
            known.states[wid] = state
            result = True
        elif w.escalated is not None:
            return self._escalate(w, known)
        own = w.rows if w.rows is not None else Rows.of(w)
        for table, rows in own.tables():
            getattr(self, table).extend(rows)
        return result, entries

    def _escalate(self, w: Write, known: Known) -> tuple[WriteResult, Sequence[LedgerDraft]]:
        """The part of escalation `w` that no earlier write did (see `Store.escalate`)."""
        assert w.escalated is not None
        wid, townships, at = w.escalated
        fresh = [t for t in townships if (wid, t) not in known.escalated]
        if not fresh:
            return [], ()
        known.escalated.update((wid, t) for t in fresh)
        stored = [d for d in w.deliveries if d.id not in known.delivery_ids]
        known.delivery_ids.update(d.id for d in stored)
        taken = set(townships) - set(fresh)
        entries = [e for e in w.entries if e.data.get("township") not in taken]
        if len(fresh) == len(townships) and len(stored) == len(w.deliveries):
            own = w.rows if w.rows is not None else Rows.of(w)
        else:
            own = Rows.of(Write(entries, deliveries=stored, escalated=(wid, fresh, at)))
            w.data_json = []  # re-encoded for the entries kept (`ledger_data`)
            w.entries = entries
        for table, rows in own.tables():
            getattr(self, table).extend(rows)
        return stored, entries

    def tables(self) -> list[tuple[str, list[tuple[object, ...]]]]:
        """(name, rows) of every table but the ledger that has rows."""
        return [(name, rows) for name in _TABLES if (rows := getattr(self, name))]

    def chain(
        self,
        batch: Sequence[Write],
        added: Sequence[tuple[WriteResult, Sequence[LedgerDraft]]],
        head: tuple[int, str],
        tally: sqlite_stats.LedgerTally,
    ) -> tuple[int, str]:
        """Append the ledger rows of what `add` gave for `batch` (`added`), hash-chained after
        the ledger's `head` (seq, hash), counting each entry in `tally`; the new head."""
        seq, prev = head
        for w, (_, entries) in zip(batch, added, strict=True):
            for draft, data in zip(entries, ledger_data(w) if entries else (), strict=True):
                seq += 1
                at = timestamp(draft.at)
                stage = draft.stage.value
                digest = entry_hash(prev, seq, draft.warning_id, stage, at, draft.data, data)
                self.ledger.append((seq, draft.warning_id, stage, at, data, prev, digest))
                tally.add(draft)
                prev = digest
        return seq, prev

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
        # A final state is never overwritten, but for an attempt under way when its warning
        # was stopped: it left, so it is recorded as what it became (DeliveryState).
        unfinished = (
            "WHERE id = ?4 AND (state IN ('pending', 'sent') "
            "OR state = 'stopped' AND ?1 IN ('sent', 'delivered'))"
        )
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
                f"UPDATE deliveries SET state = ?1, attempts = ?2, detail = ?3 {unfinished}",
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


_TABLES = tuple(f.name for f in fields(Rows) if f.name != "ledger")


def prepare(w: Write, *, nul_refused: bool = False) -> Write:
    """`w` with its rows and ledger data encoded; Unstorable, before `w` joins any batch, when
    something in it cannot be encoded or bound (so it fails alone); with `nul_refused` also
    for a NUL character in a plain text column (PostgreSQL refuses it, SQLite takes it)."""
    try:
        w.rows = Rows.of(w)
        w.data_json = [canonical_json(d.data) for d in w.entries]
        # Of an entry's head only the warning id can be outside text: its stage and time
        # are the gateway's own ASCII.
        heads = [(d.warning_id,) for d in w.entries]
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        reason = printable(str(exc))
        raise Unstorable(
            f"cannot encode the write: {reason}", errors=[FieldError("(write)", reason)]
        ) from exc
    for table, rows in w.rows.tables():
        check_rows(table, rows, nul_refused=nul_refused)
    check_rows("ledger", heads, nul_refused=nul_refused)
    # JSON escapes a NUL (\u0000), so the data text never holds one.
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


def check_rows(table: str, rows: Iterable[Sequence[object]], *, nul_refused: bool = False) -> None:
    """Raise Unstorable for the first value of `rows` that the store cannot bind as given:
    text that is not valid Unicode, an integer beyond 64 bits, with `nul_refused` a NUL."""
    low, high = _INT64
    for row in rows:
        for value in row:
            # ASCII text and 64-bit ints pass here, without the per-value work of `_refusal`.
            if isinstance(value, str):
                if value.isascii() and not (nul_refused and "\x00" in value):
                    continue
            elif isinstance(value, int):
                if low <= value <= high:
                    continue
            else:
                continue
            _refusal(table, row, nul_refused)
            break


def _refusal(table: str, row: Sequence[object], nul_refused: bool) -> None:
    """Raise Unstorable naming the first value of `row` that cannot be bound, if any."""
    for i, value in enumerate(row):
        if isinstance(value, str) and not valid_unicode(value):
            reason = "holds text that is not valid Unicode"
        elif isinstance(value, str) and nul_refused and "\x00" in value:
            reason = "holds a NUL character"
        elif isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            reason = "holds an integer beyond 64 bits"
        else:
            continue
        raise Unstorable(
            f"cannot store a {table} row: {reason}",
            errors=[FieldError(f"{table}[{i}]", reason)],
        )
