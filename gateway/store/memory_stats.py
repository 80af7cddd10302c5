"""`Store.stats` for the in-memory store, summed when asked from its rows (memory_tables.py).

The other stores keep running aggregates in the transactions that write (sqlite_stats.py,
pg_triggers.py) so that a read costs O(warnings in range). This store sums the same inputs at
read time instead: the current states of the range's deliveries, their `Reach` (what the
ledger told at each commit), the coverage rows and the escalation counts. A second reading
that shares no code with the triggers, so the contract suite holds the two equal; the cost
is O(deliveries in range), fine for what only tests use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from gateway.store.base import DeliveryState, StoredWarning, area_districts
from gateway.store.memory_tables import Tables, is_escalation, micros, planned
from gateway.store.tallies import (
    TIME_FIGURES,
    ChannelTally,
    Counts,
    Spread,
    StatsFigures,
    Tally,
    WarningTally,
)

_FIRST, _LAST, _FULL = TIME_FIGURES


@dataclass
class _Counts(Counts):
    """One warning's planned deliveries (or one channel's of them) and what they reached."""

    escalation_deliveries: int = 0
    first_us: int | None = None
    last_us: int | None = None

    def last_if_closed(self) -> int | None:
        return self.last_us if self.open == 0 else None


@dataclass
class _Area:
    """Coverage of some townships: how many, how many covered, when the last one was."""

    townships: int = 0
    covered: int = 0
    covered_us: int | None = None

    def full_us(self) -> int | None:
        return self.covered_us if self.townships and self.covered == self.townships else None


@dataclass
class _Warning:
    stored: StoredWarning
    received_us: int
    districts: list[str]
    counts: _Counts = field(default_factory=_Counts)
    channels: dict[str, _Counts] = field(default_factory=dict)
    area: _Area = field(default_factory=_Area)
    district_areas: dict[str, _Area] = field(default_factory=dict)
    escalations: int = 0


class _Sums:
    """One tally being summed, with the values of its time figures."""

    def __init__(self) -> None:
        self.tally = Tally()
        self.values: dict[str, list[int]] = {}

    def add(self, c: _Counts, escalations: int, warnings: int = 1) -> None:
        t = self.tally
        t.warnings += warnings
        t.add(c)
        t.escalations += escalations
        t.escalation_deliveries += c.escalation_deliveries

    def times(self, w: _Warning, first: int | None, last: int | None, full: int | None) -> None:
        for name, at_us in ((_FIRST, first), (_LAST, last), (_FULL, full)):
            if at_us is not None:
                self.values.setdefault(name, []).append(at_us - w.received_us)

    def done(self) -> Tally:
        self.tally.times = {name: _spread(sorted(xs)) for name, xs in self.values.items()}
        return self.tally


def figures(
    t: Tables, start: datetime, end: datetime, district: str | None, listed: int
) -> StatsFigures:
    """The figures of the warnings received in [start, end), as `Store.stats` states them."""
    found = [
        _summed(t, w)
        for w in sorted(t.warnings.values(), key=lambda w: (w.received_at, w.id))
        if start <= w.received_at < end
        and (district is None or district in area_districts(w.warning))
    ]
    totals, by_district, by_channel = _Sums(), dict[str, _Sums](), dict[str, _Sums]()
    for w in found:
        c = w.counts
        totals.add(c, w.escalations)
        totals.times(w, c.first_us, c.last_if_closed(), w.area.full_us())
        for d, area in w.district_areas.items():
            if district is None or d == district:
                sums = by_district.setdefault(d, _Sums())
                sums.add(c, t.district_escalations[w.stored.id, d])
                sums.times(w, c.first_us, c.last_if_closed(), area.full_us())
        for name, ch in w.channels.items():
            sums = by_channel.setdefault(name, _Sums())
            sums.add(ch, 0, warnings=int(ch.planned > 0))
            if ch.planned > 0:
                sums.times(w, ch.first_us, ch.last_if_closed(), None)
    shown = found[max(0, len(found) - listed) :] if listed >= 0 else found
    return StatsFigures(
        totals.done(),
        {d: s.done() for d, s in by_district.items()},
        {name: s.done() for name, s in by_channel.items()},
        [_listed(w) for w in shown],
    )


def _summed(t: Tables, stored: StoredWarning) -> _Warning:
    w = _Warning(stored, micros(stored.received_at), area_districts(stored.warning))
    w.escalations = t.escalations[stored.id]
    for did in t.deliveries_of.get(stored.id, []):
        d = t.deliveries[did]
        if is_escalation(d):
            w.channels.setdefault(d.channel, _Counts()).escalation_deliveries += 1
        if not planned(d):
            continue
        reach = t.reach.get(did)
        for c in (w.counts, w.channels.setdefault(d.channel, _Counts())):
            c.planned += 1
            c.delivered += d.state == DeliveryState.DELIVERED
            c.failures += d.state == DeliveryState.FAILED
            c.stopped += d.state == DeliveryState.STOPPED
            c.open += d.state not in DeliveryState.FINAL
            if reach is not None:
                c.retries += max(0, reach.tries - 1)
                c.first_us = _least(c.first_us, reach.reached_us)
                c.last_us = _most(c.last_us, reach.ended_us)
    w.district_areas = {d: _Area() for d in w.districts}
    for township, row in t.coverage.get(stored.id, {}).items():
        covered = None if row.covered_at is None else micros(datetime.fromisoformat(row.covered_at))
        for area in (w.area, w.district_areas.get(township[:6])):
            if area is not None:
                area.townships += 1
                area.covered += covered is not None
                area.covered_us = _most(area.covered_us, covered)
    return w


def _least(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _most(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _spread(xs: list[int]) -> Spread:
    """Order statistics of sorted values: middle two, p90 by nearest rank, maximum."""
    n = len(xs)
    return Spread(n, xs[(n - 1) // 2], xs[n // 2], xs[-(-9 * n // 10) - 1], xs[-1])


def _since(at_us: int | None, w: _Warning) -> int | None:
    return None if at_us is None else at_us - w.received_us


def _listed(w: _Warning) -> WarningTally:
    doc, c = w.stored.warning, w.counts
    return WarningTally(
        warning_id=w.stored.id,
        received_at=w.stored.received_at,
        level=int(doc.get("level", 0)),
        hazard=str(doc.get("hazard", "")),
        msg_type=str(doc.get("msg_type", "alert")),
        districts=w.districts,
        **c.counts(),
        escalations=w.escalations,
        first_delivery_us=_since(c.first_us, w),
        last_delivery_us=_since(c.last_if_closed(), w),
        full_coverage_us=_since(w.area.full_us(), w),
        channels={
            name: ChannelTally(
                **ch.counts(),
                escalation_deliveries=ch.escalation_deliveries,
                first_delivery_us=_since(ch.first_us, w),
                last_delivery_us=_since(ch.last_if_closed() if ch.planned else None, w),
            )
            for name, ch in sorted(w.channels.items())
        },
    )
