"""The GET /v1/stats answer (art. 17/27 figures, defined in gateway/reports/stats.py).

`load_report` renders what the store's aggregates give (`Store.stats`): totals, by_district,
by_channel, and the latest LISTED warnings of the range in full (`warnings`, oldest first;
`warnings_omitted` counts the earlier ones), so an answer stays small whatever the range holds.
`aggregate` is the reference aggregation of per-warning figures (`warning_figures`) that the
tests hold the store's answer equal to.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.reports.stats import (
    ChannelFigures,
    DistrictFigures,
    WarningFigures,
)
from gateway.reports.stats_query import StatsQuery
from gateway.store import Store
from gateway.store.tallies import TIME_FIGURES, Spread, StatsFigures, Tally, WarningTally
from gateway.townships import Registry

LISTED = 100
"""Warnings listed one by one in an answer: the latest of the range."""
_EMPTY: dict[str, Any] = {"count": 0, "median": None, "p90": None, "max": None}


async def load_report(store: Store, query: StatsQuery, names: Registry | None) -> dict[str, Any]:
    """The GET /v1/stats answer to `query`."""
    figures = await store.stats(query.start, query.end, query.district, LISTED)
    return stats_report(query, figures, names)


def stats_report(
    query: StatsQuery, figures: StatsFigures, names: Registry | None = None
) -> dict[str, Any]:
    """The GET /v1/stats answer from the store's figures."""
    by_district = {
        code: {"name": names.name(code) if names else code, **_tally_json(t)}
        for code, t in sorted(figures.by_district.items())
    }
    return {
        "from": query.start.isoformat(),
        "to": query.end.isoformat(),
        "district": query.district,
        "totals": _tally_json(figures.totals),
        "by_district": by_district,
        "by_channel": {
            name: _tally_json(t, coverage=False, escalation_deliveries=True)
            for name, t in sorted(figures.by_channel.items())
        },
        "warnings": [_warning(w).as_json() for w in figures.warnings],
        "warnings_omitted": figures.totals.warnings - len(figures.warnings),
    }


def tally_json(
    t: Tally,
    times: Mapping[str, dict[str, Any]],
    *,
    coverage: bool = True,
    escalation_deliveries: bool = False,
) -> dict[str, Any]:
    """The JSON of a total, a district or a channel; `times` summarised per TIME_FIGURES."""
    out: dict[str, Any] = {
        "warnings": t.warnings,
        **t.counts_json(),
    }
    if escalation_deliveries:
        out["escalation_deliveries"] = t.escalation_deliveries
    else:
        out["escalations"] = t.escalations
    for key in TIME_FIGURES:
        if coverage or key != "full_coverage_s":
            out[key] = times.get(key, _EMPTY)
    return out


def _tally_json(t: Tally, **kw: bool) -> dict[str, Any]:
    return tally_json(t, {k: spread_summary(s) for k, s in t.times.items()}, **kw)


def seconds(us: int) -> float:
    """Microseconds as the seconds of a figure (`stats._seconds`: rounded to milliseconds)."""
    return round(us / 1_000_000, 3)


def _maybe(us: int | None) -> float | None:
    return None if us is None else seconds(us)


def spread_summary(s: Spread) -> dict[str, Any]:
    """`summary` of the values a Spread stands for."""
    if not s.count:
        return dict(_EMPTY)
    median = (seconds(s.mid_low) + seconds(s.mid_high)) / 2
    return {
        "count": s.count,
        "median": round(median, 3),
        "p90": seconds(s.p90),
        "max": seconds(s.max),
    }


def _warning(w: WarningTally) -> WarningFigures:
    channels = {
        name: ChannelFigures(
            **c.counts(),
            escalation_deliveries=c.escalation_deliveries,
            first_delivery_s=_maybe(c.first_delivery_us),
            last_delivery_s=_maybe(c.last_delivery_us),
        )
        for name, c in w.channels.items()
    }
    return WarningFigures(
        warning_id=w.warning_id,
        received_at=w.received_at,
        level=w.level,
        hazard=w.hazard,
        districts=w.districts,
        msg_type=w.msg_type,
        **w.counts(),
        escalations=w.escalations,
        first_delivery_s=_maybe(w.first_delivery_us),
        last_delivery_s=_maybe(w.last_delivery_us),
        full_coverage_s=_maybe(w.full_coverage_us),
        channels=channels,
    )


# -- the reference aggregation --------------------------------------------------------------------


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
class _Sums(Tally):
    """A Tally with the values of its time figures, for the reference aggregation."""

    values: dict[str, list[float | None]] = field(
        default_factory=lambda: {k: [] for k in TIME_FIGURES}
    )

    def as_json(
        self, *, coverage: bool = True, escalation_deliveries: bool = False
    ) -> dict[str, Any]:
        times = {k: summary(v) for k, v in self.values.items()}
        return tally_json(
            self, times, coverage=coverage, escalation_deliveries=escalation_deliveries
        )


def _add_warning(s: _Sums, w: WarningFigures) -> None:
    s.warnings += 1
    s.add(w)
    s.values["first_delivery_s"].append(w.first_delivery_s)
    s.values["last_delivery_s"].append(w.last_delivery_s)


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
        totals.values["full_coverage_s"].append(w.full_coverage_s)
        for code in w.districts:
            if district is not None and code != district:
                continue
            d = districts.setdefault(code, _Sums())
            _add_warning(d, w)
            own = w.by_district.get(code, DistrictFigures())
            d.escalations += own.escalations
            d.values["full_coverage_s"].append(own.full_coverage_s)
        for name, c in w.channels.items():
            s = channels.setdefault(name, _Sums())
            s.warnings += c.planned > 0
            s.add(c)
            s.escalation_deliveries += c.escalation_deliveries
            if c.planned:
                s.values["first_delivery_s"].append(c.first_delivery_s)
                s.values["last_delivery_s"].append(c.last_delivery_s)
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
