"""A delivery on its way through the dispatcher: its `Job`, its purposes and its deadline.

A delivery record's `purpose` is empty for the warning itself, `CLEAR` to remove what a channel
keeps for an ended warning (an MQTT retained message), `EXPIRED` for a partner's
`warning.expired` notice. Both are sent after their warning ended (`AFTER_END`) and go on for
`CLEAR_GRACE_S` after its expiry; any other delivery gives up at the expiry.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.channels.base import Channel, Outcome
from gateway.store import Store
from gateway.store.base import DeliveryRecord, StoredWarning
from gateway.values import Endpoint, Notice

CLEAR = "clear"
EXPIRED = "expired"
"""Purpose of a partner's `warning.expired` notice, sent once a warning it got has expired."""
AFTER_END = frozenset({CLEAR, EXPIRED})
"""Purposes of deliveries sent after their warning ended: never stopped by it."""
CLEAR_GRACE_S = 3600.0
_CLEAR_GRACE = timedelta(seconds=CLEAR_GRACE_S)
_NO_GRACE = timedelta(0)


@dataclass(eq=False, slots=True)
class Job:
    """A delivery on its way: what to send, to whom, and the attempts made so far (counted
    across restarts, so a restart grants no fresh set of attempts). Slotted: a fan-out has one
    per delivery."""

    notice: Notice
    rec: DeliveryRecord
    endpoint: Endpoint | None
    attempts: int
    stopped: bool = False
    halted: asyncio.Future[None] | None = None
    """Set by `stop` when it interrupts the job's send; resolved once the worker let go."""
    trial: bool = False
    """This attempt is the one trial of its endpoint's half-open circuit."""


def deadline(job: Job) -> datetime:
    """When `job` gives up: the warning's expiry; a clear or an expiry notice goes on for an hour
    after it."""
    grace = _CLEAR_GRACE if job.rec.purpose in AFTER_END else _NO_GRACE
    return job.notice.expires_at + grace


async def clear(channel: Channel, endpoint: Endpoint, warning_id: str) -> Outcome:
    """Remove what `channel` keeps for the warning at `endpoint` (an MQTT retained message)."""
    await channel.clear(endpoint, warning_id)
    return Outcome(delivered=True, detail={"cleared": True})


async def notice_of(store: Store, stored: StoredWarning) -> Notice:
    """The notice of a stored warning, with the sent_at of the warning it references."""
    ref = stored.warning.get("references")
    referenced = await store.get_warning(ref) if ref else None
    return Notice.from_document(
        stored.warning,
        referenced_sent_at=referenced.warning["sent_at"] if referenced is not None else None,
    )
