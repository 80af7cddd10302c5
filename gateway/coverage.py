"""Township coverage (art. 20-21): is every township of a warning's area reached?

A township is covered when a delivery to a township-level endpoint serving it is delivered or
acknowledged, or when a manual means (鸣锣, 吹哨, 敲门入户, 广播车...) is confirmed on
POST /v1/receipts. Townships with no endpoint on the warning's channels are blind spots: listed
in the 202 answer and escalated at once. At the level's deadline every township still not
covered is escalated to its township and district command centres (email/SMS, durable
deliveries like any other), with a ledger entry `escalated`; it stays listed until covered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from gateway.endpoints import EndpointBook
from gateway.ledger import LedgerDraft, Stage
from gateway.service import Service
from gateway.store import Store
from gateway.store.base import CoverageRow, DeliveryRecord, StoredWarning
from gateway.timers import Sleep, Timers
from gateway.townships import Registry
from gateway.values import Endpoint, Notice

log = logging.getLogger("gateway.coverage")

Clock = Callable[[], datetime]
Dispatch = Callable[[Notice, Sequence[DeliveryRecord]], Awaitable[None]]


def coverage_deadline(stored: StoredWarning, deadlines_s: Mapping[int, float]) -> datetime:
    """When every township of `stored` must be reached: receipt plus its level's deadline."""
    return stored.received_at + timedelta(seconds=deadlines_s[int(stored.warning["level"])])


def escalation_notice(notice: Notice, townships: Sequence[str], names: Registry) -> Notice:
    """The message a command centre gets about townships not reached by `notice`."""
    listed = "、".join(f"{names.name(t)}（{t}）" for t in townships)
    content = (
        f"以下乡镇（街道）未确认收到{notice.colour}预警「{notice.title}」：{listed}。"
        "请立即组织鸣锣吹哨、敲门入户等方式传播，并在平台确认（POST /v1/receipts）。"
        f"预警内容：{notice.content}"
    )
    return Notice(
        id=notice.id,
        msg_type=notice.msg_type,
        level=notice.level,
        hazard=notice.hazard,
        title=f"【未覆盖】{notice.title}",
        content=content,
        issuer_unit=notice.issuer_unit,
        sent_at=notice.sent_at,
        expires_at=notice.expires_at,
        contact_phone=notice.contact_phone,
        document=notice.document,
    )


class CoverageTracker(Service):
    """Escalates blind spots at once and uncovered townships at their deadline.

    An async context manager: entering schedules the deadline check of every active warning
    (so deadlines survive restarts), exiting cancels the timers.
    """

    def __init__(
        self,
        store: Store,
        book: EndpointBook,
        registry: Registry,
        deadlines_s: Mapping[int, float],
        *,
        clock: Clock,
        dispatch: Dispatch,
        channels: Collection[str] | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.store = store
        self.channels = channels
        self.book = book
        self.registry = registry
        self.deadlines_s = deadlines_s
        self.clock = clock
        self.dispatch = dispatch
        self._timers = Timers("coverage", clock=clock, sleep=sleep)
        self._checked: set[str] = set()  # deadline checks done (a watch again is a no-op)

    async def start(self) -> None:
        now = self.clock()
        for w in await self.store.active_warnings():
            if w.expires_at > now:
                self.watch(w)

    async def close(self) -> None:
        await self._timers.close()

    def deadline(self, stored: StoredWarning) -> datetime:
        return coverage_deadline(stored, self.deadlines_s)

    def watch(self, stored: StoredWarning) -> None:
        """Schedule the deadline check of an accepted warning."""
        if stored.id not in self._checked:
            self._timers.at(stored.id, self.deadline(stored), lambda: self._at_deadline(stored))

    async def _at_deadline(self, stored: StoredWarning) -> None:
        if self.clock() >= stored.expires_at:
            return
        try:
            rows = await self.store.coverage_for(stored.id)
            late = [r.township for r in rows if r.covered_at is None and r.escalated_at is None]
            if late:
                await self.escalate(stored, late, reason="deadline")
            self._checked.add(stored.id)
        except Exception:
            log.exception("coverage deadline check of %s failed", stored.id)

    def _centres(self, township: str) -> list[Endpoint]:
        """The township's centre contacts on channels this gateway runs."""
        centres = self.book.centres_for(township)
        if self.channels is None:
            return centres
        return [e for e in centres if e.channel in self.channels]

    async def escalate(self, stored: StoredWarning, townships: Sequence[str], reason: str) -> None:
        """Escalate `townships` of `stored` to their command centres, durably, and dispatch."""
        notice = Notice.from_document(stored.warning)
        now = self.clock()
        deliveries, entries = self.plan(stored.id, notice.level, townships, reason, now)
        # Another process may have escalated some first: only what this call stored goes.
        stored_now = await self.store.escalate(stored.id, townships, now, deliveries, entries)
        await self.dispatch(notice, stored_now)

    def plan(
        self, warning_id: str, level: int, townships: Sequence[str], reason: str, now: datetime
    ) -> tuple[list[DeliveryRecord], list[LedgerDraft]]:
        """The escalation deliveries (one per command centre) and `escalated` entries (one per
        township) of `townships`; ids are stable, so an escalation happens once."""
        by_centre: dict[str, list[str]] = {}
        unreachable: list[str] = []
        for t in townships:
            centres = self._centres(t)
            if not centres:
                unreachable.append(t)
            for e in centres:
                by_centre.setdefault(e.id, []).append(t)
        deliveries = [
            DeliveryRecord(
                id=f"{warning_id}/escalate-{reason}/{eid}",
                warning_id=warning_id,
                endpoint_id=eid,
                channel=self.book.by_id[eid].channel,
                level=level,
                purpose="escalation:" + ",".join(ts),
            )
            for eid, ts in by_centre.items()
        ]
        entries = [
            LedgerDraft(
                warning_id,
                Stage.ESCALATED,
                now,
                {
                    "township": t,
                    "reason": reason,
                    "to": [e.id for e in self._centres(t)],
                },
            )
            for t in townships
        ]
        if unreachable:
            log.error(
                "warning %s: no command centre configured for %s",
                warning_id,
                ", ".join(unreachable),
            )
        return deliveries, entries


def coverage_report(
    stored: StoredWarning, rows: Sequence[CoverageRow], registry: Registry, deadline: datetime
) -> dict[str, Any]:
    """The GET /v1/warnings/{id}/coverage answer."""
    townships = []
    covered = blind = escalated = 0
    for r in rows:
        covered += r.covered_at is not None
        blind += r.blind_spot
        escalated += r.escalated_at is not None
        item: dict[str, Any] = {
            "township": r.township,
            "name": registry.name(r.township),
            "district": r.township[:6],
            "status": "covered" if r.covered_at else "pending",
            "blind_spot": r.blind_spot,
        }
        if r.covered_at:
            item |= {"covered_at": r.covered_at, "covered_by": r.covered_by}
        if r.escalated_at:
            item["escalated_at"] = r.escalated_at
        townships.append(item)
    total = len(rows)
    return {
        "warning_id": stored.id,
        "deadline_at": deadline.isoformat(),
        "counts": {
            "townships": total,
            "covered": covered,
            "pending": total - covered,
            "blind_spots": blind,
            "escalated": escalated,
        },
        "covered_share": round(covered / total, 4) if total else 1.0,
        "townships": townships,
    }
