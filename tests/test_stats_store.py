"""GET /v1/stats from the store's aggregates: bounded ranges, the same figures as the reference
computation over the raw rows, across a restart, and after migrating an older database."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from gateway.reports.stats import warning_figures
from gateway.reports.stats_answer import LISTED, aggregate
from gateway.reports.stats_query import StatsQuery
from gateway.store.base import area_districts
from gateway.web.keys import REGISTRY, STORE
from tests.conftest import GatewayClient
from tests.fanout import post_warning, settled
from tests.helpers import auth, warning_body
from tests.test_filing import reports_client
from tests.test_stats import WANZHOU, YUZHONG, two_settled_warnings


async def stats(api: GatewayClient, **params: str) -> dict[str, Any]:
    resp = await api.get("/v1/stats", params=params, headers=auth())
    assert resp.status == 200, await resp.text()
    doc: dict[str, Any] = await resp.json()
    return doc


async def with_reference(
    api: GatewayClient, **params: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The answer, and the answer as the reference computation gives it from every row of
    every warning of the range the gateway took (defaults filled in)."""
    app = api.app
    assert app is not None
    store, names = app[STORE], app[REGISTRY]
    doc = await stats(api, **params)
    query = StatsQuery(
        datetime.fromisoformat(doc["from"]), datetime.fromisoformat(doc["to"]), doc["district"]
    )
    figures = []
    for stored in await store.warnings_received(query.start, query.end):
        if query.district is None or query.district in area_districts(stored.warning):
            wid = stored.id
            entries, deliveries = await store.entries_for(wid), await store.deliveries_for(wid)
            coverage = await store.coverage_for(wid)
            figures.append(warning_figures(stored, entries, deliveries, coverage))
    ordered = sorted(figures, key=lambda w: (w.received_at, w.warning_id))
    listed = ordered[-LISTED:]
    return doc, {
        "from": doc["from"],
        "to": doc["to"],
        "district": doc["district"],
        **aggregate(ordered, district=query.district, names=names),
        "warnings": [w.as_json() for w in listed],
        "warnings_omitted": len(ordered) - len(listed),
    }


def window(start: datetime, end: datetime) -> dict[str, str]:
    return {"from": start.isoformat(), "to": end.isoformat()}


@pytest.fixture
async def api(tmp_path: Path, aiohttp_client: AiohttpClient) -> GatewayClient:
    return await reports_client(aiohttp_client, tmp_path)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        pytest.param(
            {"from": "2025-06-30T00:00:00+08:00", "to": "2026-07-02T00:00:00+08:00"},
            "from",
            id="367-days",
        ),
        pytest.param(
            {"from": "2026-07-01T00:00:00+08:00", "to": "2026-07-01T00:00:00+08:00"},
            "from",
            id="from-equals-to",
        ),
        pytest.param(
            {"from": "2026-07-01T00:00:01+08:00", "to": "2026-06-30T16:00:00+00:00"},
            "from",
            id="from-after-to-other-offset",
        ),
        pytest.param({"to": "9999-12-31T23:59:59-12:00"}, "to", id="9999-with-minus-12"),
        pytest.param(
            {"from": "0001-01-01T00:00:00+14:00", "to": "0001-01-05T00:00:00+00:00"},
            "from",
            id="0001-with-plus-14",
        ),
        pytest.param({"to": "0001-01-03T00:00:00+00:00"}, "to", id="default-from-before-year-1"),
        pytest.param({"to": "2026-07-01T00:00:00"}, "to", id="no-offset"),
        pytest.param({"from": "\U0001f4a5 2026"}, "from", id="garbage"),
    ],
)
async def test_a_range_that_is_too_long_or_not_representable_is_400(
    api: GatewayClient, params: dict[str, str], field: str
) -> None:
    resp = await api.get("/v1/stats", params=params, headers=auth())
    assert resp.status == 400, await resp.text()
    answer = await resp.json()
    assert answer["code"] == "invalid_query"
    assert [e["field"] for e in answer["errors"]] == [field]


async def test_366_days_and_the_extreme_years_are_answered(api: GatewayClient) -> None:
    await stats(api, **{"from": "2025-07-01T00:00:00+08:00", "to": "2026-07-02T00:00:00+08:00"})
    await stats(api, **{"from": "9999-12-25T00:00:00+00:00", "to": "9999-12-31T23:59:59+00:00"})
    await stats(api, **{"from": "0001-01-01T00:00:00+00:00", "to": "0001-01-02T00:00:00-12:00"})


async def test_the_aggregates_give_the_reference_figures(api: GatewayClient) -> None:
    before = datetime.now(UTC)
    await two_settled_warnings(api)
    # A warning cancelled at once stops what it had not delivered yet (art. 18).
    body = warning_body(area={"districts": [YUZHONG, WANZHOU]})
    await post_warning(api, body)
    cancel = warning_body(msg_type="cancel", references=body["id"])
    cancel["area"] = body["area"]
    await post_warning(api, cancel)
    for wid in (body["id"], cancel["id"]):
        await settled(api, wid)
    for params in (
        {},
        {"district": YUZHONG},
        {"district": WANZHOU},
        window(before, datetime.now(UTC) + timedelta(seconds=1)),
    ):
        answer, expected = await still_reference(api, **params)
        assert answer == expected


async def still_reference(
    api: GatewayClient, **params: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`with_reference` once the answer is the same before and after the rows are read: a send
    under way when the cancel came still records what it became (and its cover) after the
    deliveries are settled."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        answer, expected = await with_reference(api, **params)
        again = await stats(api, **params)
        if _figures(answer) == _figures(again):
            return answer, expected
        assert asyncio.get_running_loop().time() < deadline, "the figures kept changing"
        await asyncio.sleep(0.05)


def _figures(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in ("from", "to")}  # "to" defaults to now


async def _reopened(
    aiohttp_client: AiohttpClient, tmp_path: Path, api: GatewayClient
) -> GatewayClient:
    await api.close()
    shutil.rmtree(tmp_path / "config")  # written again by the fixture
    return await reports_client(aiohttp_client, tmp_path)


def _drop_aggregates(db: Path) -> int:
    """Make `db` what the store before the aggregates wrote; the number of objects dropped."""
    with sqlite3.connect(db) as conn:
        found = conn.execute(
            "SELECT type, name FROM sqlite_master WHERE name LIKE 'stats\\_%' ESCAPE '\\' "
            "AND type IN ('table', 'trigger')"
        ).fetchall()
        for kind, name in found:
            conn.execute(f"DROP {kind} IF EXISTS {name}")
    return len(found)


@pytest.mark.sqlite_only  # drops the aggregates from the SQLite file to test its migration
async def test_the_figures_survive_a_restart_and_a_migration(
    api: GatewayClient, tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    before = datetime.now(UTC)
    await two_settled_warnings(api)
    params = window(before, datetime.now(UTC) + timedelta(seconds=1))
    first = await stats(api, **params)
    assert first["totals"]["warnings"] == 2
    assert first["totals"]["delivered"] > 0

    api = await _reopened(aiohttp_client, tmp_path, api)
    assert await stats(api, **params) == first

    await api.close()
    assert _drop_aggregates(tmp_path / "g.db") >= 4
    api = await _reopened(aiohttp_client, tmp_path, api)  # the migration fills them again
    answer, expected = await with_reference(api, **params)
    assert answer == first
    assert answer == expected
    # ...and keeps them from there on.
    body = warning_body()
    await post_warning(api, body)
    await settled(api, body["id"])
    params = window(before, datetime.now(UTC) + timedelta(seconds=1))
    after, expected = await with_reference(api, **params)
    assert after["totals"]["warnings"] == 3
    assert after == expected
