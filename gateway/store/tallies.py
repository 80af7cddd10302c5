"""The figures `Store.stats` answers with, as the stores' aggregates hold them: counts of
deliveries (`Counts`, one type for every figure of deliveries), sums (`Tally`), one warning's
(`WarningTally`) and its channels' (`ChannelTally`), and order statistics of times (`Spread`).
Times are integer microseconds since each warning was received."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

TIME_FIGURES = ("first_delivery_s", "last_delivery_s", "full_coverage_s")


@dataclass(frozen=True)
class Spread:
    """Order statistics of one time figure over many warnings, in microseconds since each
    warning was received: the count, the two middle values (equal for an odd count), the
    90th percentile by nearest rank (the value at rank ceil(0.9 * count)) and the maximum."""

    count: int = 0
    mid_low: int = 0
    mid_high: int = 0
    p90: int = 0
    max: int = 0


@dataclass(kw_only=True)
class Counts:
    """What some planned deliveries reached (a warning's, one channel's, summed over warnings):
    `delivered`, `failures`, `open` (pending, or sent without a receipt), `stopped` because the
    warning ended first (art. 18), and `retries` (attempts beyond the first). Every stats
    figure of deliveries holds these; their JSON is `counts_json`."""

    planned: int = 0
    delivered: int = 0
    failures: int = 0
    open: int = 0
    stopped: int = 0
    retries: int = 0

    @property
    def success_rate(self) -> float | None:
        """delivered / planned, the stopped ones left out; None when that leaves none."""
        return rate(self.delivered, self.planned - self.stopped)

    def counts(self) -> dict[str, Any]:
        """The six counts by name, to build another kind of Counts from."""
        return {name: getattr(self, name) for name in COUNTS}

    def add(self, other: Counts) -> None:
        """Add `other`'s six counts to these."""
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def counts_json(self) -> dict[str, Any]:
        """The counts' part of a figure's JSON, success_rate included."""
        return {
            "deliveries": self.planned,
            "delivered": self.delivered,
            "failures": self.failures,
            "open": self.open,
            "stopped": self.stopped,
            "success_rate": self.success_rate,
            "retries": self.retries,
        }


COUNTS = ("planned", "delivered", "failures", "open", "stopped", "retries")


def rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@dataclass
class Tally(Counts):
    """Sums over warnings (totals, a district) or over one channel's deliveries, and a `Spread`
    per name of TIME_FIGURES that applies (absent: no value)."""

    warnings: int = 0
    escalations: int = 0
    escalation_deliveries: int = 0
    times: dict[str, Spread] = field(default_factory=dict)


@dataclass
class ChannelTally(Counts):
    """One channel's deliveries of one warning; times in microseconds since it was received
    (`last_delivery_us` is None while one of them is open)."""

    escalation_deliveries: int = 0
    first_delivery_us: int | None = None
    last_delivery_us: int | None = None


@dataclass
class WarningTally(Counts):
    """One warning's figures as the aggregates hold them (see gateway/reports/stats.py)."""

    warning_id: str
    received_at: datetime
    level: int
    hazard: str
    msg_type: str
    districts: list[str]
    escalations: int = 0
    first_delivery_us: int | None = None
    last_delivery_us: int | None = None
    full_coverage_us: int | None = None
    channels: dict[str, ChannelTally] = field(default_factory=dict)


@dataclass(frozen=True)
class StatsFigures:
    """The answer of `Store.stats`: `totals`, `by_district` (a warning counts for each district
    of its area; coverage and escalations are the district's own), `by_channel`, and the
    latest warnings of the range in full, oldest first."""

    totals: Tally
    by_district: dict[str, Tally]
    by_channel: dict[str, Tally]
    warnings: list[WarningTally]
