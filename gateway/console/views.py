"""What the console shows, assembled from the store with the API's own functions (the same
figures as GET /v1/warnings/{id}, .../receipts, .../coverage and .../filing), masked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.coverage import coverage_report
from gateway.masking import mask
from gateway.reports.filing import filing_form
from gateway.store import Store
from gateway.store.base import (
    DeliveryRecord,
    DeliveryState,
    StoredWarning,
    WarningState,
    area_districts,
)
from gateway.townships import Registry
from gateway.web.receipts import receipts_timeline
from gateway.web.warnings import warning_summary

RECENT = timedelta(days=3)
"""Retired warnings stay on the list this long after they were received."""
LIST_LIMIT = 100
TIMELINE_TAIL = 40
"""Latest ledger entries shown on a warning's page (a fan-out writes thousands)."""
STATES = tuple(WarningState)
LEVEL_NAMES = {1: "红色", 2: "橙色", 3: "黄色", 4: "蓝色"}


@dataclass(frozen=True)
class Filters:
    """The list's filters; None shows all."""

    state: str | None = None
    level: int | None = None
    district: str | None = None

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Filters:
        """Filters from a query string; a value that is not one of the choices is ignored."""
        state = query.get("state")
        level = query.get("level", "")
        district = query.get("district", "")
        return cls(
            state=state if state in STATES else None,
            level=int(level) if level in ("1", "2", "3", "4") else None,
            district=district if len(district) == 6 and district.isdigit() else None,
        )

    def admits(self, row: Mapping[str, Any]) -> bool:
        return (
            (self.state is None or row["status"] == self.state)
            and (self.level is None or row["level"] == self.level)
            and (self.district is None or self.district in row["districts"])
        )


async def warning_rows(
    store: Store, registry: Registry, now: datetime, filters: Filters
) -> list[dict[str, Any]]:
    """Active and recent warnings, newest first, each with its summary and area."""
    found = {w.id: w for w in await store.warnings_received(now - RECENT, now + timedelta(1))}
    for w in await store.active_warnings():
        found.setdefault(w.id, w)
    rows = []
    for w in sorted(found.values(), key=lambda w: w.received_at, reverse=True):
        row = warning_summary(w, await store.delivery_counts(w.id), now)
        row |= _overview(w, registry, now)
        if filters.admits(row):
            rows.append(mask(row))
        if len(rows) >= LIST_LIMIT:
            break
    return rows


def _overview(w: StoredWarning, registry: Registry, now: datetime) -> dict[str, Any]:
    doc = w.warning
    districts = area_districts(doc)
    area = doc.get("area", {})
    names = "、".join(registry.name(d) for d in districts)
    return {
        "title": doc.get("title", ""),
        "issuer_unit": doc.get("issuer", {}).get("unit", ""),
        "districts": districts,
        "area": area.get("description") or names,
        "age_s": max(0, int((now - w.received_at).total_seconds())),
        "references": doc.get("references"),
    }


async def warning_page(
    store: Store, registry: Registry, stored: StoredWarning, deadline: datetime, now: datetime
) -> dict[str, Any]:
    """Everything a warning's page shows, masked."""
    wid = stored.id
    deliveries = await store.deliveries_for(wid)
    entries = await store.entries_for(wid)
    coverage = coverage_report(stored, await store.coverage_for(wid), registry, deadline)
    page = warning_summary(stored, await store.delivery_counts(wid), now)
    page |= _overview(stored, registry, now)
    timeline = receipts_timeline(wid, entries) if entries else {"entries": []}
    page |= {
        "filing": filing_form(stored, deliveries, now=now),
        "dead_letters": dead_letters(deliveries),
        "coverage": coverage,
        "districts_coverage": by_district(coverage["townships"], registry),
        "stages": stage_table(timeline),
        "channel_times": channel_times(stored, timeline["entries"], deliveries),
        "full_coverage_s": full_coverage_s(stored, coverage),
        "timeline": timeline["entries"][-TIMELINE_TAIL:],
        "entries": len(timeline["entries"]),
        "successors": await successors(store, stored, now),
    }
    return dict(mask(page))


def dead_letters(deliveries: Sequence[DeliveryRecord]) -> list[dict[str, Any]]:
    """Failed deliveries with their last error."""
    return [
        {
            "id": d.id,
            "channel": d.channel,
            "endpoint": d.endpoint_id,
            "attempts": d.attempts,
            "error": d.detail.get("reason") or d.detail.get("last_error") or "",
        }
        for d in deliveries
        if d.state == DeliveryState.FAILED
    ]


def by_district(townships: Sequence[Mapping[str, Any]], registry: Registry) -> list[dict[str, Any]]:
    """The coverage report's townships grouped by district, in area order."""
    out: dict[str, dict[str, Any]] = {}
    for t in townships:
        d = out.setdefault(
            t["district"], {"code": t["district"], "name": registry.name(t["district"]), "rows": []}
        )
        d["rows"].append({**t, "cell": cell_state(t)})
    return list(out.values())


def cell_state(t: Mapping[str, Any]) -> str:
    """covered / escalated (not reached, escalated) / blind (no endpoint, not reached) / pending."""
    if t["status"] == "covered":
        return "covered"
    if t.get("escalated_at"):
        return "escalated"
    return "blind" if t["blind_spot"] else "pending"


def stage_table(timeline: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per stage: when first reached (ms after the first entry) and how many entries."""
    counts: dict[str, int] = {}
    for e in timeline["entries"]:
        counts[e["stage"]] = counts.get(e["stage"], 0) + 1
    firsts: Mapping[str, float] = timeline.get("stage_elapsed_ms", {})
    return [{"stage": s, "first_ms": ms, "count": counts[s]} for s, ms in firsts.items()]


def channel_times(
    stored: StoredWarning,
    entries: Sequence[Mapping[str, Any]],
    deliveries: Sequence[DeliveryRecord],
) -> dict[str, dict[str, float]]:
    """Per channel: seconds from receipt to the first and the last delivery of the warning's
    own messages (sent counts for channels that wait for a receipt)."""
    own = {d.id for d in deliveries if d.purpose is None}
    out: dict[str, dict[str, float]] = {}
    for e in entries:
        if e["stage"] not in ("delivered", "sent") or e["data"].get("delivery_id") not in own:
            continue
        s = (datetime.fromisoformat(e["at"]) - stored.received_at).total_seconds()
        t = out.setdefault(e["data"]["channel"], {"first_s": s, "last_s": s, "count": 0})
        t["first_s"], t["last_s"] = min(t["first_s"], s), max(t["last_s"], s)
        t["count"] += 1
    return out


def full_coverage_s(stored: StoredWarning, coverage: Mapping[str, Any]) -> float | None:
    """Seconds from receipt until every township was reached; None while one is not."""
    rows = coverage["townships"]
    if not rows or coverage["counts"]["pending"]:
        return None
    last = max(datetime.fromisoformat(t["covered_at"]) for t in rows)
    return (last - stored.received_at).total_seconds()


async def successors(store: Store, stored: StoredWarning, now: datetime) -> list[dict[str, Any]]:
    """The updates and cancels that replaced `stored`, one link after another."""
    later = await store.warnings_received(stored.received_at, now + timedelta(1))
    by_ref = {w.warning.get("references"): w for w in later}
    chain: list[dict[str, Any]] = []
    current = stored.id
    while current in by_ref and len(chain) < LIST_LIMIT:
        w = by_ref[current]
        chain.append(
            {"id": w.id, "msg_type": w.warning.get("msg_type"), "title": w.warning["title"]}
        )
        current = w.id
    return chain
