"""GET /v1/stats: art. 17 (做好预警信息发布的全程留痕、预警回执和环节计时，及时汇总发布相关的统计
数据) and art. 27 (对…预警信息发布、传播、响应等情况进行效能评估).

Per warning: time from received to first delivery, to last delivery and to full coverage,
success rate, retries, failures, escalations; aggregated per district and per channel.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from gateway.drill.samples import red_rainstorm_wanzhou
from gateway.ledger import LedgerEntry
from gateway.reports.stats import warning_figures
from gateway.reports.stats_answer import aggregate, summary
from gateway.store.base import CoverageRow, DeliveryRecord, StoredWarning
from tests.conftest import GatewayClient
from tests.fanout import WANZHOU_COVERED, post_warning, settled
from tests.helpers import auth, warning_body
from tests.test_filing import reports_client

YUZHONG, WANZHOU = "500103", "500101"


async def stats(api: GatewayClient, **params: str) -> dict[str, Any]:
    resp = await api.get("/v1/stats", params=params, headers=auth())
    assert resp.status == 200, await resp.text()
    doc: dict[str, Any] = await resp.json()
    return doc


async def two_settled_warnings(api: GatewayClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """The red 暴雨 sample for 万州区 (3 blind spots) and a yellow one for 渝中区."""
    wanzhou = red_rainstorm_wanzhou(datetime.now(UTC), "stats-wanzhou")
    yuzhong = warning_body()
    for body in (wanzhou, yuzhong):
        await post_warning(api, body)
    for body in (wanzhou, yuzhong):
        await settled(api, body["id"])
    return wanzhou, yuzhong


def assert_sane_times(figures: dict[str, Any]) -> None:
    first, last = figures["first_delivery_s"], figures["last_delivery_s"]
    assert first is not None
    assert last is not None
    assert 0 <= first <= last < 30


@pytest.fixture
async def api(tmp_path: Path, aiohttp_client: AiohttpClient) -> GatewayClient:
    return await reports_client(aiohttp_client, tmp_path)


async def test_figures_of_two_settled_warnings(api: GatewayClient) -> None:
    wanzhou, yuzhong = await two_settled_warnings(api)
    doc = await stats(api)

    # Default range: the last seven days.
    start, end = datetime.fromisoformat(doc["from"]), datetime.fromisoformat(doc["to"])
    assert end - start == timedelta(days=7)
    assert abs(end - datetime.now(UTC)) < timedelta(minutes=1)
    assert doc["district"] is None

    per_warning = {w["warning_id"]: w for w in doc["warnings"]}
    assert list(per_warning) == [wanzhou["id"], yuzhong["id"]]  # by received time
    w, y = per_warning[wanzhou["id"]], per_warning[yuzhong["id"]]
    for figures in (w, y):
        assert_sane_times(figures)
        assert figures["success_rate"] == 1.0  # the stub SMS provider delivers at once
        assert figures["failures"] == 0
        assert figures["retries"] == 0
        assert figures["open"] == 0
    assert w["deliveries"] == WANZHOU_COVERED  # one SMS group per township with endpoints
    assert y["deliveries"] == 11
    # 渝中区 is fully covered; 万州区's three blind spots never are, and were escalated.
    assert y["full_coverage_s"] is not None
    assert y["last_delivery_s"] - 1 <= y["full_coverage_s"] <= y["last_delivery_s"] + 1
    assert w["full_coverage_s"] is None
    assert w["escalations"] == 3
    assert y["escalations"] == 0
    assert w["channels"]["sms"]["escalation_deliveries"] > 0

    totals = doc["totals"]
    assert totals["warnings"] == 2
    assert totals["deliveries"] == WANZHOU_COVERED + 11
    assert totals["delivered"] == totals["deliveries"]
    assert totals["success_rate"] == 1.0
    assert totals["escalations"] == 3
    assert totals["first_delivery_s"]["count"] == 2
    assert totals["full_coverage_s"]["count"] == 1
    first, last = totals["first_delivery_s"], totals["last_delivery_s"]
    assert first["median"] <= first["p90"] <= first["max"]
    assert first["max"] <= last["max"]

    # Per channel: only SMS runs; escalations to command centres are counted apart.
    assert list(doc["by_channel"]) == ["sms"]
    sms = doc["by_channel"]["sms"]
    assert sms["warnings"] == 2
    assert sms["deliveries"] == WANZHOU_COVERED + 11
    assert sms["success_rate"] == 1.0
    assert sms["escalation_deliveries"] == w["channels"]["sms"]["escalation_deliveries"]
    assert sms["last_delivery_s"]["count"] == 2

    # Per district of the warnings' areas.
    assert sorted(doc["by_district"]) == [WANZHOU, YUZHONG]
    wz, yz = doc["by_district"][WANZHOU], doc["by_district"][YUZHONG]
    assert (wz["name"], yz["name"]) == ("万州区", "渝中区")
    assert (wz["warnings"], yz["warnings"]) == (1, 1)
    assert (wz["escalations"], yz["escalations"]) == (3, 0)
    assert wz["full_coverage_s"]["count"] == 0
    assert yz["full_coverage_s"]["max"] == y["full_coverage_s"]
    assert wz["deliveries"] == WANZHOU_COVERED


async def test_district_filter(api: GatewayClient) -> None:
    wanzhou, yuzhong = await two_settled_warnings(api)
    doc = await stats(api, district=YUZHONG)
    assert doc["district"] == YUZHONG
    assert [w["warning_id"] for w in doc["warnings"]] == [yuzhong["id"]]
    assert list(doc["by_district"]) == [YUZHONG]
    assert doc["totals"]["warnings"] == 1
    assert doc["totals"]["deliveries"] == 11
    doc = await stats(api, district=WANZHOU)
    assert [w["warning_id"] for w in doc["warnings"]] == [wanzhou["id"]]
    # A district none of the warnings touches.
    doc = await stats(api, district="500104")
    assert doc["totals"]["warnings"] == 0


async def test_range_is_half_open_on_received_time(api: GatewayClient) -> None:
    before = datetime.now(UTC)
    _, yuzhong = await two_settled_warnings(api)
    after = datetime.now(UTC)
    doc = await stats(api, **{"from": before.isoformat(), "to": after.isoformat()})
    assert doc["totals"]["warnings"] == 2
    received = datetime.fromisoformat(doc["warnings"][1]["received_at"])
    doc = await stats(api, **{"from": before.isoformat(), "to": received.isoformat()})
    assert doc["totals"]["warnings"] == 1  # `to` is exclusive
    doc = await stats(api, **{"from": received.isoformat(), "to": after.isoformat()})
    assert [w["warning_id"] for w in doc["warnings"]] == [yuzhong["id"]]


async def test_empty_range_has_zero_counts(api: GatewayClient) -> None:
    await two_settled_warnings(api)
    doc = await stats(
        api, **{"from": "2020-01-01T00:00:00+08:00", "to": "2020-01-08T00:00:00+08:00"}
    )
    assert doc["totals"]["warnings"] == 0
    assert doc["totals"]["deliveries"] == 0
    assert doc["totals"]["success_rate"] is None
    assert doc["totals"]["first_delivery_s"] == {
        "count": 0,
        "median": None,
        "p90": None,
        "max": None,
    }
    assert doc["by_district"] == {}
    assert doc["by_channel"] == {}
    assert doc["warnings"] == []
    assert doc["from"] == "2020-01-01T00:00:00+08:00"


async def test_unencoded_plus_in_offset_is_understood(api: GatewayClient) -> None:
    # `+08:00` typed into a URL arrives as ` 08:00` (a form-encoded space).
    resp = await api.get(
        "/v1/stats?from=2020-01-01T00:00:00+08:00&to=2020-01-02T00:00:00+08:00", headers=auth()
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["to"] == "2020-01-02T00:00:00+08:00"


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        pytest.param({"from": "yesterday"}, {"from"}, id="from-not-a-time"),
        pytest.param({"to": "2026-13-01T00:00:00+08:00"}, {"to"}, id="to-bad-month"),
        pytest.param({"from": "2026-07-01T00:00:00"}, {"from"}, id="from-without-offset"),
        pytest.param(
            {"from": "2026-07-02T00:00:00+08:00", "to": "2026-07-01T00:00:00+08:00"},
            {"from"},
            id="from-after-to",
        ),
        pytest.param({"district": "50010"}, {"district"}, id="district-not-6-digits"),
        pytest.param({"district": "500100"}, {"district"}, id="district-unknown"),
        pytest.param({"district": "500101001"}, {"district"}, id="district-is-a-township"),
        pytest.param(
            {"from": "x", "to": "y", "district": "999999"},
            {"from", "to", "district"},
            id="every-error-at-once",
        ),
    ],
)
async def test_bad_query_is_400_with_field_errors(
    api: GatewayClient, params: dict[str, str], fields: set[str]
) -> None:
    resp = await api.get("/v1/stats", params=params, headers=auth())
    assert resp.status == 400
    answer = await resp.json()
    assert answer["code"] == "invalid_query"
    assert answer["message"]
    assert {e["field"] for e in answer["errors"]} == fields
    assert all(e["reason"] for e in answer["errors"])


# -- the pure computation ----------------------------------------------------------------------

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


def _stored(warning_id: str = "w1", districts: list[str] | None = None) -> StoredWarning:
    return StoredWarning(
        id=warning_id,
        body_hash="",
        warning={"level": 2, "hazard": "暴雨", "area": {"districts": districts or [YUZHONG]}},
        answer={},
        state="active",
        received_at=T0,
        expires_at=T0 + timedelta(hours=6),
        authorization={},
    )


def _entry(stage: str, seconds: float, **data: Any) -> LedgerEntry:
    at = (T0 + timedelta(seconds=seconds)).isoformat()
    return LedgerEntry(0, "w1", stage, at, data, "", "")


def _delivery(endpoint: str, channel: str, state: str, **kw: Any) -> DeliveryRecord:
    return DeliveryRecord(f"w1/{endpoint}", "w1", endpoint, channel, 2, state, **kw)


def test_retries_failures_receipts_and_escalations_from_the_ledger() -> None:
    deliveries = [
        _delivery("a", "sms", "delivered"),  # delivered at 2 s after two retries
        _delivery("b", "sms", "failed"),  # failed at 9 s
        _delivery("c", "mqtt", "delivered"),  # sent at 1 s, acknowledged (receipt) at 4 s
        DeliveryRecord(
            "w1/escalate-deadline/centre",
            "w1",
            "centre",
            "email",
            2,
            "delivered",
            purpose="escalation:500103001",
        ),
    ]
    entries = [
        _entry("received", 0),
        _entry("attempt", 0.5, delivery_id="w1/a"),
        _entry("attempt", 1.0, delivery_id="w1/a"),
        _entry("attempt", 1.5, delivery_id="w1/a"),
        _entry("delivered", 2.0, delivery_id="w1/a"),
        _entry("attempt", 0.5, delivery_id="w1/b"),
        _entry("failed", 9.0, delivery_id="w1/b"),
        _entry("attempt", 0.5, delivery_id="w1/c"),
        _entry("sent", 1.0, delivery_id="w1/c"),
        _entry("receipt", 4.0, delivery_id="w1/c", status="delivered"),
        _entry("escalated", 300.0, township="500103001"),
        _entry("attempt", 301.0, delivery_id="w1/escalate-deadline/centre"),
        _entry("delivered", 302.0, delivery_id="w1/escalate-deadline/centre"),
    ]
    coverage = [
        CoverageRow("w1", "500103001", covered_at=(T0 + timedelta(seconds=400)).isoformat()),
        CoverageRow("w1", "500103002", covered_at=(T0 + timedelta(seconds=2)).isoformat()),
    ]
    w = warning_figures(_stored(), entries, deliveries, coverage)
    assert (w.planned, w.delivered, w.failures, w.open, w.retries) == (3, 2, 1, 0, 2)
    assert w.success_rate == round(2 / 3, 4)
    assert w.first_delivery_s == 2.0
    assert w.last_delivery_s == 9.0  # escalation deliveries do not count
    assert w.full_coverage_s == 400.0
    assert w.escalations == 1
    assert w.channels["mqtt"].first_delivery_s == 4.0  # delivered through its receipt
    assert w.channels["email"].escalation_deliveries == 1
    assert w.channels["email"].planned == 0
    assert w.by_district[YUZHONG].escalations == 1

    agg = aggregate([w])
    assert agg["by_channel"]["sms"]["retries"] == 2
    assert agg["by_channel"]["sms"]["failures"] == 1
    assert agg["by_channel"]["sms"]["success_rate"] == 0.5
    assert agg["by_channel"]["email"]["warnings"] == 0
    assert agg["by_district"][YUZHONG]["full_coverage_s"]["max"] == 400.0


def test_open_deliveries_and_uncovered_townships_leave_times_null() -> None:
    deliveries = [_delivery("a", "sms", "delivered"), _delivery("b", "sms", "sent")]
    entries = [
        _entry("delivered", 3.0, delivery_id="w1/a"),
        _entry("sent", 3.0, delivery_id="w1/b"),
    ]
    coverage = [CoverageRow("w1", "500103001"), CoverageRow("w1", "500103002", blind_spot=True)]
    w = warning_figures(_stored(), entries, deliveries, coverage)
    assert w.first_delivery_s == 3.0
    assert w.last_delivery_s is None
    assert w.full_coverage_s is None
    assert w.open == 1
    assert w.success_rate == 0.5


def test_stopped_deliveries_end_without_counting_against_success_and_clears_are_left_out() -> None:
    # art. 18: a cancelled or superseded warning stops its pending deliveries; the retained
    # MQTT messages are cleared by `clear` deliveries, which are not the warning's.
    deliveries = [
        _delivery("a", "sms", "delivered"),
        _delivery("b", "sms", "stopped"),
        _delivery("c", "mqtt", "delivered"),
        DeliveryRecord("w1/clear/c", "w1", "c", "mqtt", 2, "pending", purpose="clear"),
    ]
    entries = [
        _entry("delivered", 1.0, delivery_id="w1/a"),
        _entry("delivered", 2.0, delivery_id="w1/c"),
        _entry("cancelled", 5.0),
        _entry("attempt", 6.0, delivery_id="w1/clear/c"),
    ]
    w = warning_figures(_stored(), entries, deliveries, [])
    assert (w.planned, w.delivered, w.stopped, w.open, w.retries) == (3, 2, 1, 0, 0)
    assert w.success_rate == 1.0
    assert w.last_delivery_s == 2.0
    assert w.channels["mqtt"].planned == 1
    assert w.channels["mqtt"].escalation_deliveries == 0
    assert aggregate([w])["totals"]["stopped"] == 1


def test_summary_median_p90_max() -> None:
    assert summary([]) == {"count": 0, "median": None, "p90": None, "max": None}
    assert summary([None, 4.0]) == {"count": 1, "median": 4.0, "p90": 4.0, "max": 4.0}
    values = [float(x) for x in range(1, 11)]  # 1..10
    assert summary(reversed(values)) == {"count": 10, "median": 5.5, "p90": 9.0, "max": 10.0}


def test_a_warning_counts_for_every_district_of_its_area() -> None:
    w = warning_figures(_stored(districts=[YUZHONG, WANZHOU]), [], [], [])
    agg = aggregate([w])
    assert sorted(agg["by_district"]) == [WANZHOU, YUZHONG]
    assert aggregate([w], district=WANZHOU)["by_district"].keys() == {WANZHOU}
