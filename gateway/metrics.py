"""Prometheus metrics, one registry per application so several apps can live in one process.

Delivery figures come from the ledger entries of each committed transaction (`observe`, a
store commit listener): a counter step per entry, no query. Coverage share and queue depth are
read when /metrics is scraped (`refresh`), not per delivery.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.ledger import LedgerDraft, Stage
from gateway.policies.routing import delivery_id

DELIVERY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
"""Seconds from a warning's receipt (its 202) to a delivery: seconds matter, an hour is late."""
TRACKED_WARNINGS = 10_000
"""Receipt times kept to time deliveries; the oldest are forgotten first."""
_OUTCOMES = {Stage.SENT: "sent", Stage.DELIVERED: "delivered", Stage.FAILED: "failed"}
_RETIRED = {Stage.SUPERSEDED, Stage.CANCELLED, Stage.EXPIRED}


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.warnings = Counter(
            "gateway_warnings",
            "POST /v1/warnings by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.ingest_seconds = Histogram(
            "gateway_ingest_seconds",
            "Time from a warning's arrival to its answer",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.refusals = Counter(
            "gateway_refusals",
            "Authority refusals (annex 1, art. 15) by code",
            ["code"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "gateway_deliveries",
            "Send outcomes committed: sent (awaiting a receipt), delivered, failed (dead letter)",
            ["channel", "state"],
            registry=self.registry,
        )
        self.delivery_seconds = Histogram(
            "gateway_delivery_seconds",
            "Seconds from a warning's receipt (202) to the delivery of each of its messages",
            ["channel"],
            registry=self.registry,
            buckets=DELIVERY_BUCKETS,
        )
        self.coverage_share = Gauge(
            "gateway_coverage_share",
            "Share of the townships of active warnings that were reached, by level",
            ["level"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "gateway_queue_depth",
            "Deliveries queued for a worker, by channel",
            ["channel"],
            registry=self.registry,
        )
        self._received: dict[str, datetime] = {}
        # The labelled children, looked up once: `labels()` costs microseconds per call and
        # runs once or twice per delivery.
        self._counted: dict[tuple[str, str], Any] = {}
        self._timed: dict[str, Any] = {}

    def track(self, warning_id: str, received_at: datetime) -> None:
        """Time the deliveries of `warning_id` from `received_at` (warnings already active at
        start; new ones are tracked from their `received` entry)."""
        self._received[warning_id] = received_at
        if len(self._received) > TRACKED_WARNINGS:
            del self._received[next(iter(self._received))]

    def observe(self, entries: Sequence[LedgerDraft]) -> None:
        """A store commit listener: count the send outcomes among `entries`."""
        for e in entries:
            state = _OUTCOMES.get(e.stage)
            if state is not None:
                channel = str(e.data.get("channel", ""))
                counter = self._counted.get((channel, state))
                if counter is None:
                    counter = self._counted[channel, state] = self.deliveries.labels(channel, state)
                counter.inc()
                received = self._received.get(e.warning_id)
                if state == "delivered" and received is not None and _own(e):
                    seconds = (e.at - received).total_seconds()
                    timer = self._timed.get(channel)
                    if timer is None:
                        timer = self._timed[channel] = self.delivery_seconds.labels(channel)
                    timer.observe(max(0.0, seconds))
            elif e.stage == Stage.RECEIVED:
                self.track(e.warning_id, e.at)
            elif e.stage in _RETIRED:
                self._received.pop(e.warning_id, None)

    def refresh(self, coverage: Iterable[tuple[int, int, int]], queued: Mapping[str, int]) -> None:
        """Before a scrape: (level, townships, covered) per active warning; queue depths."""
        totals: dict[int, list[int]] = {}
        for level, townships, covered in coverage:
            t = totals.setdefault(level, [0, 0])
            t[0] += townships
            t[1] += covered
        self.coverage_share.clear()
        for level, (townships, covered) in sorted(totals.items()):
            self.coverage_share.labels(str(level)).set(covered / townships if townships else 1.0)
        for channel, n in queued.items():
            self.queue_depth.labels(channel).set(n)


def _own(e: LedgerDraft) -> bool:
    """Whether the entry is about the warning's own message (not an escalation or a clear)."""
    return e.data.get("delivery_id") == delivery_id(e.warning_id, str(e.data.get("endpoint")))
