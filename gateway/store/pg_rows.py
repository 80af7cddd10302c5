"""Rows of the PostgreSQL store read back as the store protocol's records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from gateway.ledger import LedgerEntry
from gateway.store.base import CoverageRow, DeliveryRecord, StoredWarning

WARNING_COLUMNS = "id, body_hash, warning, answer, state, received_at, expires_at, auth"
DELIVERY_COLUMNS = (
    "id, warning_id, endpoint_id, channel, level, state, attempts, detail, receipt, purpose"
)
LEDGER_COLUMNS = "seq, warning_id, stage, at, data, prev_hash, hash"
COVERAGE_COLUMNS = "warning_id, township, blind_spot, covered_at, covered_by, escalated_at"


def to_warning(row: Sequence[Any]) -> StoredWarning:
    return StoredWarning(
        id=row[0],
        body_hash=row[1],
        warning=json.loads(row[2]),
        answer=json.loads(row[3]),
        state=row[4],
        received_at=datetime.fromisoformat(row[5]),
        expires_at=datetime.fromisoformat(row[6]),
        authorization=json.loads(row[7]),
    )


def to_delivery(row: Sequence[Any]) -> DeliveryRecord:
    return DeliveryRecord(
        id=row[0],
        warning_id=row[1],
        endpoint_id=row[2],
        channel=row[3],
        level=row[4],
        state=row[5],
        attempts=row[6],
        detail=json.loads(row[7]),
        receipt=json.loads(row[8]) if row[8] else None,
        purpose=row[9],
    )


def to_entry(row: Sequence[Any]) -> LedgerEntry:
    return LedgerEntry(int(row[0]), row[1], row[2], row[3], json.loads(row[4]), row[5], row[6])


def to_coverage(r: Sequence[Any]) -> CoverageRow:
    return CoverageRow(r[0], r[1], bool(r[2]), r[3], json.loads(r[4]) if r[4] else None, r[5])
