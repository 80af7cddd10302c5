"""`Store.stats` for the PostgreSQL store: gateway/store/sqlite_stats_read.py's queries over the
same aggregate tables (gateway/store/pg_migrations.py), in PostgreSQL's dialect. The order
statistics come back as one sorted array per group."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from gateway.store.stats_rows import figures
from gateway.store.tallies import TIME_FIGURES, StatsFigures

_SUMMED = ("planned", "delivered", "failures", '"open"', "stopped", "retries")
_SUMS = ", ".join(f"coalesce(sum({{t}}.{c}), 0)" for c in _SUMMED)
_FIRST, _LAST, _FULL = TIME_FIGURES
_SPREADS = f"""
v (kind, grp, fig, x) AS (
    SELECT 't', '', '{_FIRST}', first_us - received_us FROM w WHERE first_us IS NOT NULL
    UNION ALL SELECT 't', '', '{_LAST}', last_us - received_us FROM w
        WHERE "open" = 0 AND last_us IS NOT NULL
    UNION ALL SELECT 't', '', '{_FULL}', covered_us - received_us FROM w
        WHERE townships > 0 AND covered = townships
    UNION ALL SELECT 'd', d.district, '{_FIRST}', w.first_us - w.received_us FROM {{wd}}
        WHERE w.first_us IS NOT NULL
    UNION ALL SELECT 'd', d.district, '{_LAST}', w.last_us - w.received_us FROM {{wd}}
        WHERE w."open" = 0 AND w.last_us IS NOT NULL
    UNION ALL SELECT 'd', d.district, '{_FULL}', d.covered_us - w.received_us FROM {{wd}}
        WHERE d.townships > 0 AND d.covered = d.townships
    UNION ALL SELECT 'c', c.channel, '{_FIRST}', c.first_us - w.received_us FROM {{wc}}
        WHERE c.planned > 0 AND c.first_us IS NOT NULL
    UNION ALL SELECT 'c', c.channel, '{_LAST}', c.last_us - w.received_us FROM {{wc}}
        WHERE c.planned > 0 AND c."open" = 0 AND c.last_us IS NOT NULL
)
SELECT kind, grp, fig, array_agg(x ORDER BY x) FROM v GROUP BY kind, grp, fig
"""
_LISTED = """
SELECT warning_id, received_at, level, hazard, msg_type, districts,
    planned, delivered, failures, "open", stopped, retries, escalations,
    first_us - received_us,
    CASE WHEN "open" = 0 THEN last_us - received_us END,
    CASE WHEN townships > 0 AND covered = townships THEN covered_us - received_us END
FROM w ORDER BY received_at COLLATE "C" DESC, warning_id COLLATE "C" DESC LIMIT %(n)s
"""
_CHANNELS = """
SELECT c.warning_id, c.channel, c.planned, c.delivered, c.failures, c."open", c.stopped,
    c.retries, c.escalation_deliveries, c.first_us - s.received_us,
    CASE WHEN c."open" = 0 AND c.planned > 0 THEN c.last_us - s.received_us END
FROM stats_channel AS c JOIN stats_warning AS s USING (warning_id)
WHERE c.warning_id = ANY(%s) ORDER BY c.channel COLLATE "C"
"""


async def read(
    conn: AsyncConnection[Any], lo: str, hi: str, district: str | None, listed: int
) -> StatsFigures:
    """`Store.stats` over the UTC received-at texts [lo, hi)."""
    args: dict[str, object] = {"lo": lo, "hi": hi, "d": district, "n": listed}
    if district is None:
        inrange = "SELECT * FROM stats_warning WHERE received_at >= %(lo)s AND received_at < %(hi)s"
    else:
        inrange = (
            "SELECT s.* FROM stats_district AS x JOIN stats_warning AS s USING (warning_id) "
            "WHERE x.district = %(d)s AND x.received_at >= %(lo)s AND x.received_at < %(hi)s"
        )
    own = "" if district is None else " AND d.district = %(d)s"
    wd = f"w JOIN stats_district AS d ON d.warning_id = w.warning_id{own}"
    wc = "w JOIN stats_channel AS c ON c.warning_id = w.warning_id"
    w = f"WITH w AS ({inrange}) "
    sums = (
        ("t", f"SELECT '', count(*), {_SUMS.format(t='w')}, sum(w.escalations), 0 FROM w"),
        (
            "d",
            f"SELECT d.district, count(*), {_SUMS.format(t='w')}, sum(d.escalations), 0 "
            f"FROM {wd} GROUP BY d.district",
        ),
        (
            "c",
            f"SELECT c.channel, count(*) FILTER (WHERE c.planned > 0), {_SUMS.format(t='c')}, "
            f"0, sum(c.escalation_deliveries) FROM {wc} GROUP BY c.channel",
        ),
    )

    async def query(sql: str) -> list[Any]:
        return await _rows(conn, w + sql, args)

    spreads = "," + _SPREADS.format(wd=wd, wc=wc)

    async def channels_of(ids: list[str]) -> list[Any]:
        return await _rows(conn, _CHANNELS, (ids,))

    return await figures(query, sums, spreads, _LISTED, _values, channels_of)


async def _rows(conn: AsyncConnection[Any], sql: str, params: Any) -> list[Any]:
    cur = await conn.execute(sql, params)
    return list(await cur.fetchall())


def _values(xs: list[Any]) -> list[int]:
    return [int(x) for x in xs]  # sorted by array_agg
