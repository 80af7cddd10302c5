"""The receipt ledger: append-only entries, each holding the hash of the one before (art. 17, 28).

An entry's hash is SHA-256 over the previous hash and the entry's canonical JSON
(seq, warning_id, stage, at, data), so editing, removing or reordering any stored entry breaks
the chain at that entry; `verify` names the first entry that does not check out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from gateway.exceptions import LedgerCorrupt

GENESIS = "0" * 64


class Stage(StrEnum):
    RECEIVED = "received"
    REJECTED = "rejected"
    AUTHORIZED = "authorized"
    PLANNED = "planned"
    QUEUED = "queued"
    ATTEMPT = "attempt"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    RECEIPT = "receipt"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    ESCALATED = "escalated"


@dataclass(frozen=True)
class LedgerDraft:
    """An entry about to be appended; the store gives it its place in the chain."""

    warning_id: str
    stage: Stage
    at: datetime
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    warning_id: str
    stage: str
    at: str
    data: dict[str, Any]
    prev_hash: str
    hash: str

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "warning_id": self.warning_id,
            "stage": self.stage,
            "at": self.at,
            "data": self.data,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: object) -> str:
    """One JSON spelling per value: sorted keys, no spaces, UTF-8 kept."""
    # One encoder for every call: json.dumps with options builds a new one each time.
    return _CANONICAL.encode(value)


def timestamp(at: datetime) -> str:
    """ISO 8601 with offset and microseconds, as stored and hashed."""
    return at.isoformat(timespec="microseconds")


def entry_hash(
    prev_hash: str,
    seq: int,
    warning_id: str,
    stage: str,
    at: str,
    data: dict[str, Any],
    data_json: str | None = None,
) -> str:
    """SHA-256 of `prev_hash` and the entry's canonical JSON. `data_json`, when given, must be
    `canonical_json(data)`; it saves encoding the data twice on the hot path."""
    if data_json is None:
        data_json = canonical_json(data)
    # canonical_json of {"seq", "warning_id", "stage", "at", "data"}, keys in sorted order.
    body = (
        f'{{"at":{_quoted(at)},"data":{data_json},"seq":{seq},'
        f'"stage":{_quoted(stage)},"warning_id":{_quoted(warning_id)}}}'
    )
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def _quoted(text: str) -> str:
    """`canonical_json(text)`, without the encoder for the usual text that needs no escape."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return canonical_json(text)


def chain(prev_hash: str, seq: int, draft: LedgerDraft) -> LedgerEntry:
    """`draft` as the entry numbered `seq` following the entry whose hash is `prev_hash`."""
    at = timestamp(draft.at)
    digest = entry_hash(prev_hash, seq, draft.warning_id, draft.stage.value, at, draft.data)
    return LedgerEntry(seq, draft.warning_id, draft.stage.value, at, draft.data, prev_hash, digest)


async def verify(entries: AsyncIterable[LedgerEntry]) -> int:
    """The number of entries, all checked; raises LedgerCorrupt at the first bad one."""
    prev, expected_seq, count = GENESIS, 1, 0
    async for e in entries:
        if e.seq != expected_seq:
            raise LedgerCorrupt(expected_seq, f"missing; the next stored entry is {e.seq}")
        if e.prev_hash != prev:
            raise LedgerCorrupt(e.seq, "prev_hash does not match the previous entry's hash")
        if entry_hash(prev, e.seq, e.warning_id, e.stage, e.at, e.data) != e.hash:
            raise LedgerCorrupt(e.seq, "content does not match its hash (edited)")
        prev, expected_seq, count = e.hash, expected_seq + 1, count + 1
    return count
