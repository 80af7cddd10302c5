"""The SMS provider's delivery reports: POST /v1/receipts callbacks parsed, and the status of a
delivery sent as several parts (`SmsStatus`).

A callback is validated like any request body (every field error named); one delivery's parts
report separately and `SmsStatus` keeps the latest status of each, the worse one on a tie.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gateway.exceptions import (
    FieldError,
    InvalidWarning,
)
from gateway.text import in_utc, unicode_errors
from gateway.values import Receipt

RECEIPT_SOURCE = "sms-callback"
RECEIPT_STATUSES = ("delivered", "undelivered", "failed")
FAILURE_STATUSES = frozenset({"undelivered", "failed"})
MAX_MESSAGE_ID_CHARS = 256
MAX_PHONE_CHARS = 32
MAX_ERROR_CHARS = 500

# On equal provider timestamps the worse status wins, so the result never depends on the order
# in which callbacks arrive.
_STATUS_RANK = {"delivered": 0, "undelivered": 1, "failed": 2}


def _optional_str(doc: Mapping[str, Any], key: str, limit: int, errors: list[FieldError]) -> None:
    value = doc.get(key)
    if value is None:
        return
    if not isinstance(value, str) or not value:
        errors.append(FieldError(key, "must be a non-empty string"))
    elif len(value) > limit:
        errors.append(FieldError(key, f"longer than {limit} characters"))


def _parse_at(value: object, errors: list[FieldError]) -> datetime | None:
    if not isinstance(value, str):
        errors.append(FieldError("at", "required, an ISO 8601 timestamp with offset"))
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        errors.append(FieldError("at", "not an ISO 8601 timestamp"))
        return None
    if at.tzinfo is None or at.utcoffset() is None:
        errors.append(FieldError("at", "needs a UTC offset"))
        return None
    try:
        return in_utc(at)
    except ValueError as exc:
        errors.append(FieldError("at", str(exc)))
        return None


def _check_callback(doc: Mapping[str, Any]) -> tuple[list[FieldError], datetime | None]:
    errors: list[FieldError] = []
    message_id = doc.get("message_id")
    if not isinstance(message_id, str) or not message_id:
        errors.append(FieldError("message_id", "required, a non-empty string"))
    elif len(message_id) > MAX_MESSAGE_ID_CHARS:
        errors.append(FieldError("message_id", f"longer than {MAX_MESSAGE_ID_CHARS} characters"))
    if doc.get("status") not in RECEIPT_STATUSES:
        errors.append(FieldError("status", f"required, one of {', '.join(RECEIPT_STATUSES)}"))
    at = _parse_at(doc.get("at"), errors)
    _optional_str(doc, "phone", MAX_PHONE_CHARS, errors)
    part = doc.get("part")
    if part is not None and (isinstance(part, bool) or not isinstance(part, int) or part < 1):
        errors.append(FieldError("part", "must be an integer >= 1"))
    error = doc.get("error")
    if error is not None and not isinstance(error, str):
        errors.append(FieldError("error", "must be a string"))
    return errors, at


def parse_callback(doc: object) -> Receipt:
    """A provider's delivery callback as a Receipt; InvalidWarning (400) naming every bad field.

    Body: `{message_id, status: delivered|undelivered|failed, at: ISO 8601 with offset, phone?,
    part? (>= 1), error?}`; unknown keys are ignored, a long `error` text is truncated.
    """
    if not isinstance(doc, Mapping):
        raise InvalidWarning(
            "an SMS callback must be a JSON object",
            code="invalid_receipt",
            errors=[FieldError("(body)", "must be a JSON object")],
        )
    errors = unicode_errors(doc)
    if errors:
        raise InvalidWarning("invalid SMS callback", code="invalid_receipt", errors=errors)
    errors, at = _check_callback(doc)
    if errors or at is None:
        raise InvalidWarning("invalid SMS callback", code="invalid_receipt", errors=errors)
    error = doc.get("error")
    return Receipt(
        status=doc["status"],
        at=at,
        source=RECEIPT_SOURCE,
        delivery_id=doc["message_id"],
        detail={
            "phone": doc.get("phone"),
            "part": doc.get("part"),
            "error": error[:MAX_ERROR_CHARS] if error is not None else None,
        },
    )


class SmsStatus:
    """The receipt book of one SMS delivery; orders callbacks by the provider's timestamp.

    Per (phone, part) it keeps the status with the latest provider timestamp (a receipt without
    phone or part stands for the whole message). Overall the delivery is `failed` while any
    part's latest status is a failure (a success of another part never hides it), `delivered`
    when every part reported so far was delivered, and None before any receipt.
    """

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], tuple[str, datetime]] = {}
        self._overall: str | None = None

    @property
    def overall(self) -> str | None:
        return self._overall

    def apply(self, receipt: Receipt) -> str | None:
        """Record one receipt; return the new overall status if it changed, else None."""
        if receipt.status not in RECEIPT_STATUSES:
            raise ValueError(f"unknown SMS receipt status {receipt.status!r}")
        if receipt.at.tzinfo is None:
            raise ValueError("an SMS receipt needs a timestamp with offset")
        key = (receipt.detail.get("phone") or "", receipt.detail.get("part") or 0)
        self._record(key, receipt.status, receipt.at)
        overall = self._compute()
        if overall == self._overall:
            return None
        self._overall = overall
        return overall

    def _record(self, key: tuple[str, int], status: str, at: datetime) -> None:
        current = self._parts.get(key)
        if current is None or (at, _STATUS_RANK[status]) > (current[1], _STATUS_RANK[current[0]]):
            self._parts[key] = (status, at)

    def _compute(self) -> str | None:
        if not self._parts:
            return None
        if any(status in FAILURE_STATUSES for status, _ in self._parts.values()):
            return "failed"
        return "delivered"

    def to_json(self) -> dict[str, Any]:
        """A JSON-able document; `from_json` reads it back."""
        return {
            "overall": self._overall,
            "parts": [
                {
                    "phone": phone or None,
                    "part": part or None,
                    "status": status,
                    "at": at.isoformat(),
                }
                for (phone, part), (status, at) in sorted(self._parts.items())
            ],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SmsStatus:
        """Read back `to_json`; ValueError when the document is not one."""
        book = cls()
        parts = doc.get("parts")
        if not isinstance(parts, list):
            raise ValueError("SmsStatus document needs a list 'parts'")
        for entry in parts:
            try:
                phone, part = entry["phone"] or "", entry["part"] or 0
                status, at = entry["status"], datetime.fromisoformat(entry["at"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"bad SmsStatus part entry: {exc}") from exc
            if status not in RECEIPT_STATUSES or at.tzinfo is None:
                raise ValueError("bad SmsStatus part entry: status or timestamp")
            if not isinstance(phone, str) or not isinstance(part, int):
                raise ValueError("bad SmsStatus part entry: phone or part")
            book._record((phone, part), status, at)
        book._overall = book._compute()
        return book
