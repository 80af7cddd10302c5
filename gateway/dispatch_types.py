"""What the dispatcher runs on: each channel with its flow control and retry policy
(`ChannelRuntime`), and the queue it may share with other processes (`Relay`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.channels.base import Channel
from gateway.flow import DEFAULT_PER_ENDPOINT
from gateway.policies.rate import Pacer
from gateway.policies.retry import RetryPolicy
from gateway.store.base import DeliveryRecord


@dataclass
class ChannelRuntime:
    """A channel with its flow control and retry policy."""

    channel: Channel
    concurrency: int
    retry: RetryPolicy
    rate: Pacer | None = None
    per_endpoint: int = DEFAULT_PER_ENDPOINT
    """Sends to one endpoint in flight at most, so a hanging one holds few workers."""
    start_order: int = 10
    """Among one warning's deliveries, lower channels are queued first (ChannelSpec)."""
    clears: bool = False
    """`Channel.clear` withdraws what it sent when the warning ends (ChannelSpec)."""
    leads: bool = False
    """Its deliveries of a level go out before other channels take theirs (ChannelSpec)."""

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.per_endpoint < 1:
            raise ValueError("concurrency and per_endpoint must be at least 1")


class Relay(Protocol):
    """A delivery queue shared with other processes (gateway/coord): what `dispatch` queues
    goes there, and what this process claims from it comes back through `take`."""

    async def publish(self, records: Sequence[DeliveryRecord]) -> None:
        """Queue durable `records` for whichever process claims them first."""
        ...

    def ended(self, delivery_id: str) -> None:
        """This process is done with `delivery_id`: its outcome is durable, or it stopped."""
        ...

    async def stop_everywhere(self, warning_id: str) -> None:
        """Have every other process stop `warning_id`'s deliveries; returns once they did
        (or could not be reached in time)."""
        ...
