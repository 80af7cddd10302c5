"""The query of GET /v1/stats: a range [from, to) of received times and an optional district.

Both ends are ISO 8601 times with a UTC offset that UTC can represent (`9999-12-31T23:59:59-12:00`
is past the last representable instant, `0001-01-01T00:00:00+14:00` before the first); the
range is at most MAX_RANGE long, so one call reads at most a year of aggregates. Every problem
is a field error of one 400 `invalid_query`, never an exception further in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.exceptions import FieldError, InvalidWarning
from gateway.townships import Registry

DEFAULT_RANGE = timedelta(days=7)
MAX_RANGE = timedelta(days=366)
_SPACED_OFFSET = re.compile(r" (\d{2}:?\d{2})$")


@dataclass(frozen=True)
class StatsQuery:
    """The range [start, end) of received times, and an optional district code."""

    start: datetime
    end: datetime
    district: str | None = None


def _parse_time(name: str, raw: str, errors: list[FieldError]) -> datetime | None:
    # An unencoded `+08:00` in a query string arrives as ` 08:00`; take it as meant.
    text = _SPACED_OFFSET.sub(r"+\1", raw.strip())
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        errors.append(FieldError(name, f"not an ISO 8601 time: {raw!r}"))
        return None
    if at.tzinfo is None or at.utcoffset() is None:
        errors.append(FieldError(name, "needs a UTC offset, e.g. 2026-07-01T00:00:00+08:00"))
        return None
    try:
        at.astimezone(UTC)
    except OverflowError:
        errors.append(FieldError(name, f"{raw!r} is outside the years 1 to 9999 in UTC"))
        return None
    return at


def _range(start: datetime | None, end: datetime, errors: list[FieldError]) -> datetime | None:
    """`start` (default: DEFAULT_RANGE before `end`) once the range is checked."""
    if start is None:
        try:
            start = end - DEFAULT_RANGE
            start.astimezone(UTC)
        except OverflowError:
            errors.append(
                FieldError("to", "too early: the default from, 7 days before, is not a time")
            )
            return None
    if start >= end:
        errors.append(FieldError("from", "must be before to"))
    elif end - start > MAX_RANGE:
        errors.append(FieldError("from", f"the range may span at most {MAX_RANGE.days} days"))
    return start


def parse_query(query: Mapping[str, str], now: datetime, registry: Registry) -> StatsQuery:
    """The query of GET /v1/stats; raises InvalidWarning (`invalid_query`) with every field
    error. Defaults: `to` now, `from` seven days before `to`."""
    errors: list[FieldError] = []
    start = end = None
    if "from" in query:
        start = _parse_time("from", query["from"], errors)
    if "to" in query:
        end = _parse_time("to", query["to"], errors)
    district = query.get("district")
    if district is not None:
        if not re.fullmatch(r"\d{6}", district):
            errors.append(FieldError("district", "not a 6-digit district code"))
        elif district not in registry.districts:
            errors.append(FieldError("district", f"unknown district code {district}"))
    if not errors:
        end = end or now
        start = _range(start, end, errors)
    if errors:
        raise InvalidWarning(
            f"the query has {len(errors)} invalid parameter(s)", code="invalid_query", errors=errors
        )
    assert start is not None
    assert end is not None
    return StatsQuery(start, end, district)
