"""The tallies of `Store.stats` from the rows of the SQL stores' stats queries
(gateway/store/sqlite_stats_read.py, pg_stats_read.py): both dialects give the same columns
in the same order, and these build the same figures from them."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from gateway.store.tallies import COUNTS, ChannelTally, Spread, StatsFigures, Tally, WarningTally

Query = Callable[[str], Awaitable[list[Any]]]
"""The rows of one statement of a read, run with that read's arguments."""


async def figures(
    query: Query,
    sums: Sequence[tuple[str, str]],
    spreads: str,
    listed: str,
    values: Callable[[Any], list[int]],
    channels_of: Callable[[list[str]], Awaitable[list[Any]]],
) -> StatsFigures:
    """`Store.stats` from a dialect's statements: `sums` gives (kind, statement) of the `tally`
    rows of the totals ("t"), districts ("d") and channels ("c"); `spreads` the rows (kind,
    group, figure, the values that `values` turns into a sorted list); `listed` the
    `warning_tally` rows, newest first; `channels_of` the rows of those warnings' channels."""
    tallies: dict[str, dict[str, Tally]] = {"t": {}, "d": {}, "c": {}}
    for kind, sql in sums:
        for r in await query(sql):
            tallies[kind][r[0]] = tally(r[1:10])
    for kind, grp, fig, xs in await query(spreads):
        tallies[kind][grp].times[fig] = spread(values(xs))
    found = list(reversed(await query(listed)))
    channels: dict[str, dict[str, ChannelTally]] = {r[0]: {} for r in found}
    for r in await channels_of([r[0] for r in found]) if found else ():
        channels[r[0]][r[1]] = channel_tally(r[2:])
    listed_tallies = [warning_tally(r, channels[r[0]]) for r in found]
    return StatsFigures(tallies["t"][""], tallies["d"], tallies["c"], listed_tallies)


def spread(xs: list[int]) -> Spread:
    """The order statistics of sorted values."""
    n = len(xs)
    return Spread(n, xs[(n - 1) // 2], xs[n // 2], xs[(9 * n + 9) // 10 - 1], xs[-1])


def tally(r: Sequence[Any]) -> Tally:
    """From (warnings, the six COUNTS, escalations, escalation deliveries); NULL counts as 0."""
    n = [int(v or 0) for v in r]
    return Tally(
        warnings=n[0],
        **_counts(n[1:7]),
        escalations=n[7],
        escalation_deliveries=n[8],
    )


def channel_tally(r: Sequence[Any]) -> ChannelTally:
    """From (the six COUNTS, escalation deliveries, first and last delivery µs)."""
    return ChannelTally(
        **_counts(r[0:6]),
        escalation_deliveries=int(r[6]),
        first_delivery_us=_int(r[7]),
        last_delivery_us=_int(r[8]),
    )


def warning_tally(r: Sequence[Any], channels: dict[str, ChannelTally]) -> WarningTally:
    """From (warning_id, received_at, level, hazard, msg_type, districts JSON, the six COUNTS,
    escalations, first delivery, last delivery and full coverage µs)."""
    return WarningTally(
        warning_id=r[0],
        received_at=datetime.fromisoformat(r[1]),
        level=r[2],
        hazard=r[3],
        msg_type=r[4],
        districts=json.loads(r[5]),
        **_counts(r[6:12]),
        escalations=int(r[12]),
        first_delivery_us=_int(r[13]),
        last_delivery_us=_int(r[14]),
        full_coverage_us=_int(r[15]),
        channels=channels,
    )


def _counts(values: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(COUNTS, map(int, values), strict=True))


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
