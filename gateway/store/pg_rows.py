"""The columns the PostgreSQL store reads, in the order gateway/store/records.py decodes."""

from __future__ import annotations

WARNING_COLUMNS = "id, body_hash, warning, answer, state, received_at, expires_at, auth"
DELIVERY_COLUMNS = (
    "id, warning_id, endpoint_id, channel, level, state, attempts, detail, receipt, purpose"
)
LEDGER_COLUMNS = "seq, warning_id, stage, at, data, prev_hash, hash"
COVERAGE_COLUMNS = "warning_id, township, blind_spot, covered_at, covered_by, escalated_at"
