"""What each delivery attempt leaves in the store and the ledger.

`Outcomes` turns an attempt's end into the delivery's new state and its ledger entries, handed to
the store's next group commit (`record_soon`): a delivered or sent attempt (with the townships it
covers first), a failed attempt that will be retried, a delivery failed for good. The entries'
shapes are the ledger format; the dispatcher decides which one applies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from gateway.channels.base import Outcome
from gateway.exceptions import DeliveryError, TransientDeliveryError
from gateway.ledger import LedgerDraft, Stage
from gateway.store import Store
from gateway.store.base import Cover, DeliveryRecord, DeliveryState, DeliveryUpdate
from gateway.values import Endpoint

Clock = Callable[[], datetime]


class Outcomes:
    """Records the outcomes of the deliveries of one dispatcher."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._covered: dict[str, set[str]] = {}  # by warning: townships already recorded
        self.on_durable: Callable[[str], None] | None = None
        """Told the id of each delivery whose end (delivered, sent, failed) is durable."""

    def _then(self, rec: DeliveryRecord) -> Callable[[], None] | None:
        hook = self.on_durable
        return None if hook is None else functools.partial(hook, rec.id)

    def forget(self, warning_id: str) -> None:
        """The warning was stopped: drop what is kept of it."""
        self._covered.pop(warning_id, None)

    def delivered(
        self, rec: DeliveryRecord, endpoint: Endpoint, n: int, started: datetime, outcome: Outcome
    ) -> None:
        """Attempt `n` of `rec` to `endpoint`, begun at `started`, delivered or handed over;
        the townships it covers first."""
        state = DeliveryState.DELIVERED if outcome.delivered else DeliveryState.SENT
        stage = Stage.DELIVERED if outcome.delivered else Stage.SENT
        detail = dict(outcome.detail)
        now = self.clock()
        covers = []
        if outcome.delivered and endpoint.covers_townships and not rec.purpose:
            # A township's first cover is the one kept: later ones need not be written.
            seen = self._covered.setdefault(rec.warning_id, set())
            by = {"channel": rec.channel, "endpoint": endpoint.id}
            for t in endpoint.townships:
                if t not in seen:
                    seen.add(t)
                    covers.append(Cover(rec.warning_id, t, now, by))
        self.store.record_soon(
            # When the send began (the attempt entry has it too): an earlier receipt is refused.
            [DeliveryUpdate(rec.id, state, n, {**detail, "sent_at": started.isoformat()})],
            [
                LedgerDraft(rec.warning_id, Stage.ATTEMPT, started, _entry(rec, endpoint, n)),
                LedgerDraft(rec.warning_id, stage, now, _entry(rec, endpoint, n, detail)),
            ],
            covers,
            then=self._then(rec),
        )

    def failed_attempt(
        self,
        rec: DeliveryRecord,
        endpoint: Endpoint,
        n: int,
        started: datetime,
        error: DeliveryError,
    ) -> None:
        """Attempt `n` of `rec` failed with `error`; the delivery stays pending."""
        data = _entry(rec, endpoint, n)
        data["error"] = error.reason
        data["transient"] = isinstance(error, TransientDeliveryError)
        draft = LedgerDraft(rec.warning_id, Stage.ATTEMPT, started, data)
        # The attempt count is stored so a restart does not grant a fresh set of attempts.
        detail = {"last_error": error.reason}
        update = DeliveryUpdate(rec.id, DeliveryState.PENDING, n, detail)
        self.store.record_soon([update], [draft])

    def final(self, rec: DeliveryRecord, attempts: int, reason: str, kind: str = "") -> None:
        """`rec` failed for good after `attempts`; `kind` (permanent, expired) when known."""
        data: dict[str, Any] = {
            "delivery_id": rec.id,
            "channel": rec.channel,
            "endpoint": rec.endpoint_id,
            "attempts": attempts,
            "reason": reason,
        }
        if kind:
            data["error"] = kind
        self.store.record_soon(
            [DeliveryUpdate(rec.id, DeliveryState.FAILED, attempts, {"reason": reason})],
            [LedgerDraft(rec.warning_id, Stage.FAILED, self.clock(), data)],
            then=self._then(rec),
        )


def _entry(
    rec: DeliveryRecord, endpoint: Endpoint, n: int, detail: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "delivery_id": rec.id,
        "channel": rec.channel,
        "endpoint": endpoint.id,
        "attempt": n,
    }
    if detail:
        data["detail"] = dict(detail)
    return data
