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

This module is the reference computation of these figures from a warning's ledger entries,
deliveries and coverage rows (`warning_figures`, `aggregate`): pure, and O(everything) per
warning. GET /v1/stats reads the same figures from aggregates the store keeps as deliveries
finish (`Store.stats`, gateway/reports/stats_answer.py); the tests hold the two equal, and the
SQLite store's migration fills its aggregates of an older database the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.ledger import LedgerEntry, Stage
from gateway.store.base import (
    CoverageRow,
    DeliveryRecord,
    DeliveryState,
    StoredWarning,
    area_districts,
)
from gateway.store.tallies import Counts

ESCALATION_MARK = "/escalate-"
_ENDED = (DeliveryState.DELIVERED, DeliveryState.FAILED)
STOPPED = "stopped"  # the warning ended (art. 18) before the delivery was made


# -- per warning ----------------------------------------------------------------------------------


@dataclass
class ChannelFigures(Counts):
    """One channel's part of one warning (or, summed, of many)."""

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
class WarningFigures(Counts):
    warning_id: str
    received_at: datetime
    level: int
    hazard: str
    districts: list[str]
    msg_type: str = "alert"
    escalations: int = 0
    first_delivery_s: float | None = None
    last_delivery_s: float | None = None
    full_coverage_s: float | None = None
    channels: dict[str, ChannelFigures] = field(default_factory=dict)
    by_district: dict[str, DistrictFigures] = field(default_factory=dict)

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
            **self.counts_json(),
            "escalations": self.escalations,
            "channels": {
                name: {
                    **c.counts_json(),
                    "escalation_deliveries": c.escalation_deliveries,
                    "first_delivery_s": c.first_delivery_s,
                    "last_delivery_s": c.last_delivery_s,
                }
                for name, c in sorted(self.channels.items())
            },
        }


def _seconds(at: datetime, since: datetime) -> float:
    return round((at - since).total_seconds(), 3)


def is_escalation(d: DeliveryRecord) -> bool:
    """A delivery to a command centre about townships not reached (art. 20-21)."""
    return ESCALATION_MARK in d.id or bool(d.purpose and d.purpose.startswith("escalation:"))


def is_follow_up(d: DeliveryRecord) -> bool:
    """A delivery that is not the warning itself nor an escalation (e.g. `clear`)."""
    return bool(d.purpose) and not is_escalation(d)


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
        districts=area_districts(stored.warning),
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
        out.add(ch)
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
