"""The Store protocol: warnings, their idempotency record, the hash-chained ledger, and the
dissemination aggregates that GET /v1/stats reads (`StatsFigures`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum, nonmember
from typing import Any, Protocol, Self

from gateway.ledger import LedgerDraft, LedgerEntry
from gateway.store.tallies import StatsFigures


@dataclass(frozen=True)
class StoredWarning:
    """An accepted warning: its validated body, the hash of the body as received (for
    idempotency) and the answer given to the platform the first time."""

    id: str
    body_hash: str
    warning: dict[str, Any]
    answer: dict[str, Any]
    state: str
    received_at: datetime
    expires_at: datetime
    authorization: dict[str, Any]


class WarningState(StrEnum):
    """States of a warning (`warnings.state`). `active` until retired: `superseded` by an
    update, `cancelled` (a cancel is stored so, and so is the warning it cancels) or `expired`.
    Members are str: the values are what the stores hold, and rows read back compare equal."""

    ACTIVE = "active"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class DeliveryState(StrEnum):
    """States of a delivery. `pending` is unfinished (resumed after a restart); `sent` waits for
    a receipt; `delivered`, `failed` and `stopped` (its warning was superseded, cancelled or
    expired first) are final, but for one move: an attempt already under way when its warning
    ended still records `sent` or `delivered` over `stopped` (the message did leave, and the
    ledger says so). Members are str: the values are what the stores hold."""

    PENDING = "pending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    STOPPED = "stopped"
    FINAL = nonmember((DELIVERED, FAILED, STOPPED))


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One delivery of one warning to one endpoint; `id` is its idempotency key.

    Slotted: a city-wide fan-out holds one per endpoint (100,000) while it runs."""

    id: str
    warning_id: str
    endpoint_id: str
    channel: str
    level: int
    state: str = DeliveryState.PENDING
    attempts: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    receipt: dict[str, Any] | None = None
    purpose: str | None = None
    """None for the warning itself; `escalation:<township>,<township>...` for an escalation
    to a command centre about townships not reached (art. 20-21)."""

    @property
    def escalation_of(self) -> list[str]:
        """The townships an escalation delivery is about; empty for the warning itself."""
        if self.purpose and self.purpose.startswith("escalation:"):
            return self.purpose.removeprefix("escalation:").split(",")
        return []


@dataclass(frozen=True)
class CoverageRow:
    """Whether one township of a warning's area was reached (art. 20), and how."""

    warning_id: str
    township: str
    blind_spot: bool = False
    covered_at: str | None = None
    covered_by: dict[str, Any] | None = None
    escalated_at: str | None = None


@dataclass(frozen=True)
class Cover:
    """A township reached: by a delivered/acknowledged delivery or a manual means."""

    warning_id: str
    township: str
    at: datetime
    by: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeliveryUpdate:
    """A delivery's new state, written together with the ledger entries that explain it.

    A dispatcher update sets state, attempts and detail; a receipt update (`receipt` given) sets
    state and the receipt record only. Neither overwrites a final state; a receipt update of a
    final delivery still records its receipt (which reports were seen).
    """

    id: str
    state: str
    attempts: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    receipt: dict[str, Any] | None = None


def area_districts(warning: dict[str, Any]) -> list[str]:
    """The district codes a warning's area touches, in the order the area names them."""
    area = warning.get("area", {})
    codes = [*area.get("districts", []), *(t[:6] for t in area.get("townships", []))]
    return list(dict.fromkeys(str(c) for c in codes))


CommitListener = Callable[[Sequence[LedgerDraft]], None]
"""Told of the ledger entries of each transaction once it has committed (in commit order)."""


class Store(Protocol):
    """Durable state. Every write is durable when its coroutine returns.

    `accept` stores a warning, its planned deliveries and its ledger entries in one transaction
    unless a warning with that id exists; it returns the stored warning and whether it was new.
    Concurrent calls for one id store it once. `record` applies delivery updates, their
    ledger entries and the townships they covered in one transaction (a township's first cover
    is kept). `escalate` marks townships escalated and stores the escalation deliveries.
    `retire` moves an active warning to `state` (superseded, cancelled, expired), stops its
    pending deliveries and stores follow-up deliveries (clearing retained messages); `accept`
    can retire the warning a new one replaces in the same transaction.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def accept(
        self,
        warning: StoredWarning,
        entries: Sequence[LedgerDraft],
        deliveries: Sequence[DeliveryRecord] = (),
        coverage: Sequence[CoverageRow] = (),
        retire: tuple[str, str] | None = None,
        escalated: tuple[Sequence[str], datetime] | None = None,
    ) -> tuple[StoredWarning, bool]:
        """Store a new warning with everything decided at ingest, in one transaction: its
        ledger entries, deliveries (escalations of blind spots included), coverage rows, the
        retirement of the warning it replaces, and (townships, at) escalated at once.
        (stored, False) when the id was stored first by someone else; nothing written then."""
        ...

    async def retire(
        self,
        warning_id: str,
        state: str,
        entries: Sequence[LedgerDraft],
        deliveries: Sequence[DeliveryRecord] = (),
    ) -> bool:
        """Whether this call retired the warning: False (nothing written) when it was not
        active any more when the write committed (another process retired it first)."""
        ...

    async def append(self, entries: Sequence[LedgerDraft]) -> None: ...

    async def record(
        self,
        updates: Sequence[DeliveryUpdate],
        entries: Sequence[LedgerDraft],
        covers: Sequence[Cover] = (),
    ) -> None: ...

    def record_soon(
        self,
        updates: Sequence[DeliveryUpdate],
        entries: Sequence[LedgerDraft],
        covers: Sequence[Cover] = (),
        then: Callable[[], None] | None = None,
    ) -> None:
        """`record` without waiting: queued for the next commit, durable shortly after. For
        outcomes whose loss is harmless: a delivery not yet recorded stays pending and is
        sent again (same idempotency key) after a restart. A failed write is logged and kept
        until it commits. `then` is called once the write is durable (never if it is not)."""
        ...

    def lagging(self) -> bool:
        """Whether so many `record_soon` writes are queued that their producer should wait
        (`caught_up`): a slow disk must slow the dispatch, not let outcomes that are not yet
        durable, and so duplicates after a crash, pile up."""
        ...

    async def caught_up(self) -> None:
        """Return once the queued writes are down to a batch or so."""
        ...

    def on_commit(self, listener: CommitListener) -> None:
        """Call `listener` with the ledger entries of every transaction that commits from now
        on, after it is durable (so what a listener reads back is there); it must not block
        and what it raises is logged. Every write holds ledger entries, so the entries tell
        which warnings changed and how (the console's live updates, operators' metrics)."""
        ...

    async def escalate(
        self,
        warning_id: str,
        townships: Sequence[str],
        at: datetime,
        deliveries: Sequence[DeliveryRecord],
        entries: Sequence[LedgerDraft],
    ) -> list[DeliveryRecord]:
        """Mark `townships` escalated with their `escalated` entries and store the escalation
        `deliveries`, for the townships not escalated yet when the write commits (so each
        township is escalated once across processes): the deliveries stored (to dispatch),
        none when every township was escalated first. An entry whose data names a township
        (`township`) is kept with it; a delivery is stored unless its id is taken."""
        ...

    async def coverage_for(self, warning_id: str) -> list[CoverageRow]: ...

    async def delivery_counts(self, warning_id: str) -> list[tuple[str | None, str, str, int]]:
        """(purpose, channel, state, count) of a warning's deliveries."""
        ...

    async def warnings_received(self, start: datetime, end: datetime) -> list[StoredWarning]:
        """Accepted warnings received in [start, end), oldest first."""
        ...

    async def stats(
        self, start: datetime, end: datetime, district: str | None, listed: int
    ) -> StatsFigures:
        """The art. 17/27 figures of the warnings received in [start, end) (with `district`:
        only those whose area touches it), as defined in gateway/reports/stats.py, and the latest
        `listed` of them in full. Read from aggregates that the writes above keep in their
        own transactions (per warning, per warning and channel, per warning and district, per
        delivery), never by walking deliveries or the ledger: the cost grows with the number
        of warnings in the range only. An empty range gives zero counts and no spreads."""
        ...

    async def active_warnings(self) -> list[StoredWarning]:
        """Warnings in state `active`, including any whose expiry was not yet processed."""
        ...

    async def active_warning_ids(self) -> set[str]:
        """The ids of `active_warnings`, without reading the warnings: what a process that
        follows the others checks every few seconds."""
        ...

    async def unexpired_warnings(self, now: datetime) -> list[StoredWarning]:
        """Every warning, whatever its state, whose expires_at is after `now`: what retained
        MQTT messages should show (the active ones) or not show (the retired ones)."""
        ...

    async def unfinished(self) -> list[DeliveryRecord]: ...

    async def pending_keys(self) -> list[tuple[str, str, int]]:
        """(id, channel, level) of every pending delivery: what the sweeper checks against
        the shared queue."""
        ...

    async def deliveries_by_id(self, ids: Sequence[str]) -> list[DeliveryRecord]:
        """The deliveries of `ids` that exist, in no particular order."""
        ...

    async def deployment(self) -> str:
        """The identity of this store's database, the same for every process that shares it
        (the namespace of their coordination)."""
        ...

    async def deliveries_for(self, warning_id: str) -> list[DeliveryRecord]: ...

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None: ...

    async def get_warning(self, warning_id: str) -> StoredWarning | None: ...

    async def entries_for(self, warning_id: str) -> list[LedgerEntry]: ...

    def ledger(self) -> AsyncIterator[LedgerEntry]: ...

    async def disable_endpoint(self, endpoint_id: str, reason: str, at: datetime) -> None:
        """Keep `endpoint_id` disabled (a partner's 410) across restarts, until enabled."""
        ...

    async def enable_endpoint(self, endpoint_id: str) -> bool:
        """Lift a disable; whether `endpoint_id` was disabled."""
        ...

    async def disabled_endpoints(self) -> dict[str, str]:
        """Every disabled endpoint and why."""
        ...

    async def ping(self) -> None:
        """Raises unless the store can read and write now (a probe write, durable)."""
        ...
