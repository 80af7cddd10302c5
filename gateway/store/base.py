"""The Store protocol: warnings, their idempotency record, and the hash-chained ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self

from gateway.ledger import LedgerDraft, LedgerEntry


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


class Store(Protocol):
    """Durable state. Every write is durable when its coroutine returns.

    `accept` stores a warning and its ledger entries in one transaction unless a warning with
    that id exists; it returns the stored warning and whether it was new. Concurrent calls for
    one id store it once.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def accept(
        self, warning: StoredWarning, entries: Sequence[LedgerDraft]
    ) -> tuple[StoredWarning, bool]: ...

    async def append(self, entries: Sequence[LedgerDraft]) -> None: ...

    async def get_warning(self, warning_id: str) -> StoredWarning | None: ...

    async def entries_for(self, warning_id: str) -> list[LedgerEntry]: ...

    def ledger(self) -> AsyncIterator[LedgerEntry]: ...

    async def ping(self) -> None: ...
