"""The state of the in-memory store (gateway/store/memory.py): dicts that hold what the SQLite
store's tables hold, and `Tables.apply`, which applies one `Write` as SQLite's statements do
(gateway/store/rows.py), only one write at a time and in queue order.

What goes in is copied through JSON, as the other stores encode it, so a record read back is
what SQLite would give (lists for tuples, text keys, states as plain str) and the caller's dicts
stay its own.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from gateway.ledger import LedgerDraft, LedgerEntry, Stage, timestamp
from gateway.store.base import (
    Cover,
    CoverageRow,
    DeliveryRecord,
    DeliveryState,
    DeliveryUpdate,
    StoredWarning,
    WarningState,
    area_districts,
)
from gateway.store.rows import Write, WriteResult

_J = TypeVar("_J")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

_UNFINISHED = (DeliveryState.PENDING, DeliveryState.SENT)
_LEFT = (DeliveryState.SENT, DeliveryState.DELIVERED)
"""What an attempt under way may still record over `stopped` (DeliveryState)."""
_NOT_STOPPED = ("clear", "expired")
"""Purposes of the follow-ups a retirement stores and must not stop."""


def copied(value: _J) -> _J:
    """`value` as the stores give it back: encoded to JSON and decoded."""
    decoded: _J = json.loads(json.dumps(value, ensure_ascii=False))
    return decoded


def planned(d: DeliveryRecord) -> bool:
    """A delivery of the warning itself (not an escalation, not a follow-up such as a clear)."""
    return not d.purpose and "/escalate-" not in d.id


def is_escalation(d: DeliveryRecord) -> bool:
    return "/escalate-" in d.id or (d.purpose or "").startswith("escalation:")


@dataclass
class Reach:
    """What the ledger tells of one planned delivery (SQLite's `stats_delivery`): attempts,
    when it ended (set once, when it is final) and when it was delivered (set once)."""

    tries: int = 0
    ended_us: int | None = None
    reached_us: int | None = None


@dataclass
class Tables:
    """Warnings, deliveries, coverage, ledger and disabled endpoints; dicts keep insertion
    order, which stands for SQLite's rowid order."""

    warnings: dict[str, StoredWarning] = field(default_factory=dict)
    deliveries: dict[str, DeliveryRecord] = field(default_factory=dict)
    deliveries_of: dict[str, list[str]] = field(default_factory=dict)
    coverage: dict[str, dict[str, CoverageRow]] = field(default_factory=dict)
    ledger: list[LedgerEntry] = field(default_factory=list)
    entries_of: dict[str, list[LedgerEntry]] = field(default_factory=dict)
    disabled: dict[str, str] = field(default_factory=dict)
    reach: dict[str, Reach] = field(default_factory=dict)
    escalations: Counter[str] = field(default_factory=Counter)
    district_escalations: Counter[tuple[str, str]] = field(default_factory=Counter)

    def apply(self, w: Write) -> tuple[WriteResult, Sequence[LedgerDraft]]:
        """Apply `w` whole or not at all; its result and the ledger entries to chain with it.
        An accept of a taken id, a retire of a warning not active, an escalation of townships
        all escalated write nothing. ValueError (nothing written) when a row it inserts
        exists (SQLite: an IntegrityError)."""
        result: WriteResult = None
        if w.warning is not None:
            prior = self.warnings.get(w.warning.id)
            if prior is not None:
                return (prior, False), ()
            result = (w.warning, True)
        elif w.retire is not None:
            prior = self.warnings.get(w.retire[0])
            if prior is not None and prior.state != WarningState.ACTIVE:
                return False, ()
            result = True
        elif w.escalated is not None:
            return self._escalate(w)
        self._check_new(w.deliveries, w.coverage)
        if w.warning is not None:
            self._add_warning(w.warning, w.coverage)
        self._add_deliveries(w.deliveries)
        self._cover(w.covers)
        if w.escalated is not None:
            self._mark_escalated(*w.escalated)
        for u in w.updates:
            self._update(u)
        if w.retire is not None:
            self._retire(*w.retire)
        return result, w.entries

    def _escalate(self, w: Write) -> tuple[WriteResult, Sequence[LedgerDraft]]:
        """The part of escalation `w` that no earlier write did (see `Store.escalate`)."""
        assert w.escalated is not None
        wid, townships, at = w.escalated
        rows = self.coverage.get(wid, {})
        fresh = [t for t in townships if t not in rows or rows[t].escalated_at is None]
        if not fresh:
            return [], ()
        stored = [d for d in w.deliveries if d.id not in self.deliveries]
        self._check_new(stored, ())
        taken = set(townships) - set(fresh)
        self._add_deliveries(stored)
        self._mark_escalated(wid, fresh, at)
        return stored, [e for e in w.entries if e.data.get("township") not in taken]

    def _check_new(self, deliveries: Sequence[DeliveryRecord], rows: Sequence[CoverageRow]) -> None:
        ids = [d.id for d in deliveries]
        if len(set(ids)) != len(ids) or any(i in self.deliveries for i in ids):
            raise ValueError("a delivery id is taken")
        keys = [(c.warning_id, c.township) for c in rows]
        if len(set(keys)) != len(keys) or any(t in self.coverage.get(k, {}) for k, t in keys):
            raise ValueError("a coverage row exists")

    def _add_warning(self, w: StoredWarning, rows: Sequence[CoverageRow]) -> None:
        self.warnings[w.id] = replace(
            w,
            state=str(w.state),
            warning=copied(w.warning),
            answer=copied(w.answer),
            received_at=w.received_at.astimezone(UTC),
            authorization=copied(w.authorization),
        )
        for c in rows:
            self.coverage.setdefault(c.warning_id, {})[c.township] = CoverageRow(
                c.warning_id, c.township, bool(c.blind_spot)
            )

    def _add_deliveries(self, deliveries: Sequence[DeliveryRecord]) -> None:
        for d in deliveries:
            self.deliveries[d.id] = replace(
                d, state=str(d.state), detail=copied(d.detail), receipt=None
            )
            self.deliveries_of.setdefault(d.warning_id, []).append(d.id)

    def _cover(self, covers: Sequence[Cover]) -> None:
        for c in covers:
            row = self.coverage.get(c.warning_id, {}).get(c.township)
            if row is not None and row.covered_at is None:  # the first cover is kept
                at, by = timestamp(c.at), copied(c.by)
                self.coverage[c.warning_id][c.township] = replace(row, covered_at=at, covered_by=by)

    def _mark_escalated(self, wid: str, townships: Sequence[str], at: str) -> None:
        rows = self.coverage.get(wid, {})
        for t in townships:
            if t in rows and rows[t].escalated_at is None:
                rows[t] = replace(rows[t], escalated_at=at)

    def _update(self, u: DeliveryUpdate) -> None:
        d = self.deliveries.get(u.id)
        if d is None:
            return
        if u.receipt is not None:
            # A final delivery keeps its state; its receipt record still takes the report.
            state = str(u.state) if d.state in _UNFINISHED else d.state
            self.deliveries[u.id] = replace(d, state=state, receipt=copied(u.receipt))
        elif d.state in _UNFINISHED or (d.state == DeliveryState.STOPPED and u.state in _LEFT):
            detail = copied(u.detail)
            self.deliveries[u.id] = replace(
                d, state=str(u.state), attempts=u.attempts, detail=detail
            )

    def _retire(self, wid: str, state: str) -> None:
        prior = self.warnings.get(wid)
        if prior is not None and prior.state == WarningState.ACTIVE:
            self.warnings[wid] = replace(prior, state=str(state))
        for did in self.deliveries_of.get(wid, []):
            d = self.deliveries[did]
            if d.state == DeliveryState.PENDING and (d.purpose or "") not in _NOT_STOPPED:
                self.deliveries[did] = replace(d, state=str(DeliveryState.STOPPED))

    def chain(self, entry: LedgerEntry) -> None:
        self.ledger.append(entry)
        self.entries_of.setdefault(entry.warning_id, []).append(entry)

    def tally(self, committed: Sequence[LedgerDraft]) -> None:
        """What one commit's entries add to the figures, once its state changes are applied:
        per planned delivery its attempts, its end (the commit's first `delivered`/`failed`
        entry, else its last `receipt`; kept once the delivery is final) and when it was
        delivered; the escalated townships (gateway/store/sqlite_stats.py, `LedgerTally`)."""
        seen: dict[str, list[Any]] = {}  # id: [tries, end, final, reached]
        for e in committed:
            if e.stage == Stage.ESCALATED:
                self._escalated(e.warning_id, str(e.data.get("township", "")))
                continue
            did = e.data.get("delivery_id")
            if e.stage not in _DELIVERY_STAGES or not isinstance(did, str):
                continue
            d = seen.setdefault(did, [0, None, False, None])
            at = micros(e.at)
            if e.stage == Stage.ATTEMPT:
                d[0] += 1
            elif e.stage == Stage.RECEIPT:
                d[1] = d[1] if d[2] else at
            else:
                d[1], d[2] = (d[1], True) if d[2] else (at, True)
                if e.stage == Stage.DELIVERED and d[3] is None:
                    d[3] = at
        for did, (tries, end, _, reached) in seen.items():
            self._reached(did, tries, end, end if reached is None else reached)

    def _escalated(self, wid: str, township: str) -> None:
        warning = self.warnings.get(wid)
        if warning is None:
            return
        self.escalations[wid] += 1
        if township[:6] in area_districts(warning.warning):
            self.district_escalations[wid, township[:6]] += 1

    def _reached(self, did: str, tries: int, end: int | None, reached: int | None) -> None:
        d = self.deliveries.get(did)
        if d is None or not planned(d):
            return
        r = self.reach.setdefault(did, Reach())
        r.tries += tries
        if r.ended_us is None and d.state in (DeliveryState.DELIVERED, DeliveryState.FAILED):
            r.ended_us = end
        if r.reached_us is None and d.state == DeliveryState.DELIVERED:
            r.reached_us = reached


_DELIVERY_STAGES = frozenset({Stage.ATTEMPT, Stage.DELIVERED, Stage.FAILED, Stage.RECEIPT})


def micros(at: datetime) -> int:
    """Microseconds since the epoch, exactly."""
    return (at - _EPOCH) // _US
