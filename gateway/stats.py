"""Dissemination figures: art. 17 (环节计时, 汇总发布相关的统计数据) and art. 27 (效能评估).

Per warning received in a time range, measured from its `received` moment:

- `first_delivery_s`: the first delivery of the warning that was delivered;
- `last_delivery_s`: the last delivery to end (delivered or failed), once every delivery has
  ended; null while any is still pending or sent without a receipt (`open`);
- `full_coverage_s`: when the last township of the area was covered (coverage rows'
  `covered_at`); null while any township is not covered (a blind spot counts until a manual
  means is confirmed);
- `success_rate` = delivered / planned deliveries, leaving out deliveries `stopped` because
  the warning was superseded, cancelled or expired first (art. 18: not a dissemination
  failure); `retries` = attempts beyond the first per delivery (ledger `attempt` entries);
  `failures` = deliveries that ended failed; `escalations` = `escalated` ledger entries (one
  per township escalated).

Escalation deliveries (to command centres, delivery id containing `/escalate-`) are not
deliveries of the warning: they count only as a channel's `escalation_deliveries`. Other
follow-up deliveries with a purpose (`clear` of retained MQTT messages) are left out.

A delivery ends with its `delivered`/`failed` ledger entry; one that ended through a receipt
(SMS report, board or partner ack) ends at its last `receipt` entry.

Aggregates: `totals`; `by_district` (a warning counts for every district of its area; its
delivery figures are the warning's, while full coverage and escalations are the district's own
townships'); `by_channel` (deliveries on that channel). Time figures are summarised as
count/median/p90/max seconds (p90 by nearest rank).

The computation is pure (`warning_figures`, `aggregate`, `parse_query`); `load_figures` is the
thin async loader. The store has no range query, so the loader walks the whole ledger for
`received` entries: O(ledger) per request, acceptable for now.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gateway.exceptions import FieldError, InvalidWarning
from gateway.ledger import LedgerEntry, Stage
from gateway.store import Store
from gateway.store.base import CoverageRow, DeliveryRecord, DeliveryState, StoredWarning
from gateway.townships import Registry

DEFAULT_RANGE = timedelta(days=7)
ESCALATION_MARK = "/escalate-"
_ENDED = (DeliveryState.DELIVERED, DeliveryState.FAILED)
STOPPED = "stopped"  # the warning ended (art. 18) before the delivery was made
TIME_FIGURES = ("first_delivery_s", "last_delivery_s", "full_coverage_s")


# -- query --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatsQuery:
    """The range [start, end) of received times, and an optional district code."""

    start: datetime
    end: datetime
    district: str | None = None


_SPACED_OFFSET = re.compile(r" (\d{2}:?\d{2})$")


def _parse_time(name: str, raw: str, errors: list[FieldError]) -> datetime | None:
    # An unencoded `+08:00` in a query string arrives as ` 08:00`; take it as meant.
    text = _SPACED_OFFSET.sub(r"+\1", raw.strip())
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        errors.append(FieldError(name, f"not an ISO 8601 time: {raw!r}"))
        return None
    if at.tzinfo is None or at.utcoffset() is None:
        errors.append(FieldError(name, "needs a UTC offset, e.g. 2026-07-01T00:00:00+08:00"))
        return None
    return at


def parse_query(query: Mapping[str, str], now: datetime, registry: Registry) -> StatsQuery:
    """The query of GET /v1/stats; raises InvalidWarning (`invalid_query`) with every field
    error. Defaults: `to` now, `from` seven days before `to`."""
    errors: list[FieldError] = []
    start = end = None
    if "from" in query:
        start = _parse_time("from", query["from"], errors)
    if "to" in query:
        end = _parse_time("to", query["to"], errors)
    district = query.get("district")
    if district is not None:
        if not re.fullmatch(r"\d{6}", district):
            errors.append(FieldError("district", "not a 6-digit district code"))
        elif district not in registry.districts:
            errors.append(FieldError("district", f"unknown district code {district}"))
    if not errors:
        end = end or now
        start = start or end - DEFAULT_RANGE
        if start >= end:
            errors.append(FieldError("from", "must be before to"))
    if errors:
        raise InvalidWarning(
            f"the query has {len(errors)} invalid parameter(s)", code="invalid_query", errors=errors
        )
    assert start is not None
    assert end is not None
    return StatsQuery(start, end, district)


# -- per warning ----------------------------------------------------------------------------------


@dataclass
class ChannelFigures:
    """One channel's part of one warning (or, summed, of many)."""

    planned: int = 0
    delivered: int = 0
    failures: int = 0
    open: int = 0
    stopped: int = 0
    retries: int = 0
    escalation_deliveries: int = 0
    first_delivery_s: float | None = None
    last_delivery_s: float | None = None


@dataclass
class DistrictFigures:
    """One district's townships in one warning's area."""

    townships: int = 0
    covered: int = 0
    full_coverage_s: float | None = None
    escalations: int = 0


@dataclass
class WarningFigures:
    warning_id: str
    received_at: datetime
    level: int
    hazard: str
    districts: list[str]
    msg_type: str = "alert"
    planned: int = 0
    delivered: int = 0
    failures: int = 0
    open: int = 0
    stopped: int = 0
    retries: int = 0
    escalations: int = 0
    first_delivery_s: float | None = None
    last_delivery_s: float | None = None
    full_coverage_s: float | None = None
    channels: dict[str, ChannelFigures] = field(default_factory=dict)
    by_district: dict[str, DistrictFigures] = field(default_factory=dict)

    @property
    def success_rate(self) -> float | None:
        return _rate(self.delivered, self.planned - self.stopped)

    def as_json(self) -> dict[str, Any]:
        return {
            "warning_id": self.warning_id,
            "received_at": self.received_at.isoformat(),
            "level": self.level,
            "hazard": self.hazard,
            "msg_type": self.msg_type,
            "districts": self.districts,
            "first_delivery_s": self.first_delivery_s,
            "last_delivery_s": self.last_delivery_s,
            "full_coverage_s": self.full_coverage_s,
            "deliveries": self.planned,
            "delivered": self.delivered,
            "failures": self.failures,
            "open": self.open,
            "stopped": self.stopped,
            "success_rate": self.success_rate,
            "retries": self.retries,
            "escalations": self.escalations,
            "channels": {
                name: {
                    "deliveries": c.planned,
                    "delivered": c.delivered,
                    "failures": c.failures,
                    "open": c.open,
                    "stopped": c.stopped,
                    "success_rate": _rate(c.delivered, c.planned - c.stopped),
                    "retries": c.retries,
                    "escalation_deliveries": c.escalation_deliveries,
                    "first_delivery_s": c.first_delivery_s,
                    "last_delivery_s": c.last_delivery_s,
                }
                for name, c in sorted(self.channels.items())
            },
        }


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _seconds(at: datetime, since: datetime) -> float:
    return round((at - since).total_seconds(), 3)


def is_escalation(d: DeliveryRecord) -> bool:
    """A delivery to a command centre about townships not reached (art. 20-21)."""
    return ESCALATION_MARK in d.id or bool(d.purpose and d.purpose.startswith("escalation:"))


def is_follow_up(d: DeliveryRecord) -> bool:
    """A delivery that is not the warning itself nor an escalation (e.g. `clear`)."""
    return bool(d.purpose) and not is_escalation(d)


def area_districts(stored: StoredWarning) -> list[str]:
    """The district codes a warning's area touches, in the order the area names them."""
    area = stored.warning.get("area", {})
    codes = [*area.get("districts", []), *(t[:6] for t in area.get("townships", []))]
    return list(dict.fromkeys(str(c) for c in codes))


@dataclass
class _Timeline:
    """What the ledger says about each delivery: attempts, when it ended, when delivered."""

    attempts: dict[str, int] = field(default_factory=dict)
    final_at: dict[str, datetime] = field(default_factory=dict)
    last_receipt_at: dict[str, datetime] = field(default_factory=dict)
    delivered_at: dict[str, datetime] = field(default_factory=dict)
    escalations: list[str] = field(default_factory=list)


def _timeline(entries: Iterable[LedgerEntry]) -> _Timeline:
    t = _Timeline()
    for e in entries:
        if e.stage == Stage.ESCALATED:
            t.escalations.append(str(e.data.get("township", "")))
            continue
        did = e.data.get("delivery_id")
        if not isinstance(did, str):
            continue
        at = datetime.fromisoformat(e.at)
        if e.stage == Stage.ATTEMPT:
            t.attempts[did] = t.attempts.get(did, 0) + 1
        elif e.stage in (Stage.DELIVERED, Stage.FAILED):
            t.final_at.setdefault(did, at)
            if e.stage == Stage.DELIVERED:
                t.delivered_at.setdefault(did, at)
        elif e.stage == Stage.RECEIPT:
            t.last_receipt_at[did] = at
    return t


def warning_figures(
    stored: StoredWarning,
    entries: Sequence[LedgerEntry],
    deliveries: Sequence[DeliveryRecord],
    coverage: Sequence[CoverageRow],
) -> WarningFigures:
    """The figures of one warning from its ledger entries, deliveries and coverage rows."""
    t0 = stored.received_at
    tl = _timeline(entries)
    out = WarningFigures(
        warning_id=stored.id,
        received_at=t0,
        level=int(stored.warning.get("level", 0)),
        hazard=str(stored.warning.get("hazard", "")),
        msg_type=str(stored.warning.get("msg_type", "alert")),
        districts=area_districts(stored),
    )
    firsts: dict[str, list[datetime]] = {}
    lasts: dict[str, list[datetime]] = {}
    for d in (d for d in deliveries if not is_follow_up(d)):
        _count_delivery(out.channels.setdefault(d.channel, ChannelFigures()), d, tl, firsts, lasts)
    for name, ch in out.channels.items():
        if firsts.get(name):
            ch.first_delivery_s = _seconds(min(firsts[name]), t0)
        if lasts.get(name) and ch.open == 0 and ch.planned:
            ch.last_delivery_s = _seconds(max(lasts[name]), t0)
        out.planned += ch.planned
        out.delivered += ch.delivered
        out.failures += ch.failures
        out.open += ch.open
        out.stopped += ch.stopped
        out.retries += ch.retries
    every_first = [at for ats in firsts.values() for at in ats]
    every_last = [at for ats in lasts.values() for at in ats]
    if every_first:
        out.first_delivery_s = _seconds(min(every_first), t0)
    if every_last and out.open == 0:
        out.last_delivery_s = _seconds(max(every_last), t0)
    out.escalations = len(tl.escalations)
    out.full_coverage_s = _full_coverage(coverage, t0)
    out.by_district = _district_figures(out.districts, coverage, tl.escalations, t0)
    return out


def _count_delivery(
    ch: ChannelFigures,
    d: DeliveryRecord,
    tl: _Timeline,
    firsts: dict[str, list[datetime]],
    lasts: dict[str, list[datetime]],
) -> None:
    """Add delivery `d` to its channel's counts; note when it was delivered and when it ended."""
    if is_escalation(d):
        ch.escalation_deliveries += 1
        return
    ch.planned += 1
    ch.retries += max(0, tl.attempts.get(d.id, 0) - 1)
    if d.state == STOPPED:
        ch.stopped += 1
        return
    if d.state not in _ENDED:
        ch.open += 1
        return
    ended = tl.final_at.get(d.id) or tl.last_receipt_at.get(d.id)
    if ended is not None:
        lasts.setdefault(d.channel, []).append(ended)
    if d.state == DeliveryState.DELIVERED:
        ch.delivered += 1
        reached = tl.delivered_at.get(d.id) or ended
        if reached is not None:
            firsts.setdefault(d.channel, []).append(reached)
    else:
        ch.failures += 1


def _district_figures(
    districts: Sequence[str],
    coverage: Sequence[CoverageRow],
    escalated: Sequence[str],
    t0: datetime,
) -> dict[str, DistrictFigures]:
    """Per district of the area: its townships' coverage and escalations."""
    out = {code: DistrictFigures() for code in districts}
    for code in {r.township[:6] for r in coverage}:
        rows = [r for r in coverage if r.township[:6] == code]
        out[code] = DistrictFigures(
            townships=len(rows),
            covered=sum(r.covered_at is not None for r in rows),
            full_coverage_s=_full_coverage(rows, t0),
        )
    for township in escalated:
        out.setdefault(township[:6], DistrictFigures()).escalations += 1
    return out


def _full_coverage(rows: Sequence[CoverageRow], t0: datetime) -> float | None:
    if not rows or any(r.covered_at is None for r in rows):
        return None
    return _seconds(max(datetime.fromisoformat(str(r.covered_at)) for r in rows), t0)


# -- aggregates -----------------------------------------------------------------------------------


def summary(values: Iterable[float | None]) -> dict[str, Any]:
    """count, median, p90 (nearest rank) and max of the values that are not None."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return {"count": 0, "median": None, "p90": None, "max": None}
    p90 = xs[max(0, math.ceil(0.9 * len(xs)) - 1)]
    return {
        "count": len(xs),
        "median": round(statistics.median(xs), 3),
        "p90": p90,
        "max": xs[-1],
    }


@dataclass
class _Sums:
    warnings: int = 0
    planned: int = 0
    delivered: int = 0
    failures: int = 0
    open: int = 0
    stopped: int = 0
    retries: int = 0
    escalations: int = 0
    escalation_deliveries: int = 0
    times: dict[str, list[float | None]] = field(
        default_factory=lambda: {k: [] for k in TIME_FIGURES}
    )

    def as_json(
        self, *, coverage: bool = True, escalation_deliveries: bool = False
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "warnings": self.warnings,
            "deliveries": self.planned,
            "delivered": self.delivered,
            "failures": self.failures,
            "open": self.open,
            "stopped": self.stopped,
            "success_rate": _rate(self.delivered, self.planned - self.stopped),
            "retries": self.retries,
        }
        if escalation_deliveries:
            out["escalation_deliveries"] = self.escalation_deliveries
        else:
            out["escalations"] = self.escalations
        for key in TIME_FIGURES:
            if coverage or key != "full_coverage_s":
                out[key] = summary(self.times[key])
        return out


def _add_warning(s: _Sums, w: WarningFigures) -> None:
    s.warnings += 1
    s.planned += w.planned
    s.delivered += w.delivered
    s.failures += w.failures
    s.open += w.open
    s.stopped += w.stopped
    s.retries += w.retries
    s.times["first_delivery_s"].append(w.first_delivery_s)
    s.times["last_delivery_s"].append(w.last_delivery_s)


def aggregate(
    figures: Sequence[WarningFigures],
    *,
    district: str | None = None,
    names: Registry | None = None,
) -> dict[str, Any]:
    """totals, by_district and by_channel over `figures`; with `district`, by_district has
    that district only."""
    totals = _Sums()
    districts: dict[str, _Sums] = {}
    channels: dict[str, _Sums] = {}
    for w in figures:
        _add_warning(totals, w)
        totals.escalations += w.escalations
        totals.times["full_coverage_s"].append(w.full_coverage_s)
        for code in w.districts:
            if district is not None and code != district:
                continue
            d = districts.setdefault(code, _Sums())
            _add_warning(d, w)
            own = w.by_district.get(code, DistrictFigures())
            d.escalations += own.escalations
            d.times["full_coverage_s"].append(own.full_coverage_s)
        for name, c in w.channels.items():
            s = channels.setdefault(name, _Sums())
            s.warnings += c.planned > 0
            s.planned += c.planned
            s.delivered += c.delivered
            s.failures += c.failures
            s.open += c.open
            s.stopped += c.stopped
            s.retries += c.retries
            s.escalation_deliveries += c.escalation_deliveries
            if c.planned:
                s.times["first_delivery_s"].append(c.first_delivery_s)
                s.times["last_delivery_s"].append(c.last_delivery_s)
    by_district: dict[str, Any] = {}
    for code, d in sorted(districts.items()):
        by_district[code] = {"name": names.name(code) if names else code, **d.as_json()}
    return {
        "totals": totals.as_json(),
        "by_district": by_district,
        "by_channel": {
            name: s.as_json(coverage=False, escalation_deliveries=True)
            for name, s in sorted(channels.items())
        },
    }


def stats_report(
    query: StatsQuery, figures: Sequence[WarningFigures], names: Registry | None = None
) -> dict[str, Any]:
    """The GET /v1/stats answer."""
    ordered = sorted(figures, key=lambda w: (w.received_at, w.warning_id))
    return {
        "from": query.start.isoformat(),
        "to": query.end.isoformat(),
        "district": query.district,
        **aggregate(ordered, district=query.district, names=names),
        "warnings": [w.as_json() for w in ordered],
    }


# -- loader ---------------------------------------------------------------------------------------


async def load_figures(store: Store, query: StatsQuery) -> list[WarningFigures]:
    """The figures of every accepted warning received in the query's range and area.

    Refused warnings are not stored and so not counted.
    """
    out: list[WarningFigures] = []
    for stored in await store.warnings_received(query.start, query.end):
        wid = stored.id
        if query.district is not None and query.district not in area_districts(stored):
            continue
        out.append(
            warning_figures(
                stored,
                await store.entries_for(wid),
                await store.deliveries_for(wid),
                await store.coverage_for(wid),
            )
        )
    return out
