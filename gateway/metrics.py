"""Prometheus metrics, one registry per application so several apps can live in one process."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram


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
