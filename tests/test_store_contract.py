"""The Store protocol (gateway/store/base.py), one suite run against every store: SQLite and
PostgreSQL (design.md, "Storage and several processes") and the in-memory store
(gateway/store/memory.py). Durable stores only (`durable_url`): what a store reopened on the
same database finds. PostgreSQL-only: several store instances (as several processes would)
appending to one database form one chain; the schema is versioned and a database that is not
upgraded is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.exceptions import ConfigError, Unstorable
from gateway.ledger import LedgerDraft, Stage, verify
from gateway.store import MEMORY_URL, Store, StoredWarning, open_store, pg_schema
from gateway.store.base import Cover, CoverageRow, DeliveryRecord, DeliveryUpdate
from gateway.store.tallies import StatsFigures
from tests.store_servers import PgCluster

NOW = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
T1, T2 = "500103001", "500103002"


def stored(wid: str, *, expires: timedelta = timedelta(hours=1), **doc: Any) -> StoredWarning:
    body = {"id": wid, "level": 2, "hazard": "暴雨", "area": {"townships": [T1, T2]}, **doc}
    return StoredWarning(wid, "h", body, {"id": wid}, "active", NOW, NOW + expires, {"by": "x"})


def delivery(wid: str, n: int, channel: str = "sms", level: int = 2, **kw: Any) -> DeliveryRecord:
    return DeliveryRecord(f"{wid}/{channel}/{n}", wid, f"e{n}", channel, level, **kw)


def entry(wid: str, stage: Stage, at: datetime = NOW, **data: Any) -> LedgerDraft:
    return LedgerDraft(wid, stage, at, data)


def _url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return MEMORY_URL
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request, tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store that a second `open_store` of the same URL finds again."""
    return _url(request, tmp_path)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with open_store(store_url) as s:
        yield s


async def test_accept_stores_once_and_a_taken_id_is_answered_with_the_first(store: Store) -> None:
    first = stored("w1")
    got, created = await store.accept(first, [entry("w1", Stage.RECEIVED)], [delivery("w1", 1)])
    assert (got, created) == (first, True)
    other = stored("w1", title="another body")
    got, created = await store.accept(other, [entry("w1", Stage.RECEIVED)], [delivery("w1", 2)])
    assert (got, created) == (first, False)
    assert [d.id for d in await store.deliveries_for("w1")] == ["w1/sms/1"]
    assert len(await store.entries_for("w1")) == 1  # nothing of the replay written
    racing = await asyncio.gather(*(store.accept(stored("w2"), []) for _ in range(10)))
    assert sorted(c for _, c in racing) == [False] * 9 + [True]
    assert await store.get_warning("w2") == stored("w2")
    assert await store.get_warning("nope") is None


async def test_a_final_state_is_never_overwritten(store: Store) -> None:
    ds = [delivery("w", n, level=lvl) for n, lvl in ((1, 3), (2, 1), (3, 2))]
    await store.accept(stored("w"), [], ds)
    assert [d.level for d in await store.unfinished()] == [1, 2, 3]
    await store.record([DeliveryUpdate(ds[0].id, "sent", 1, {"m": 1})], [])
    await store.record([DeliveryUpdate(ds[0].id, "delivered", 1, {"m": 2})], [])
    await store.record([DeliveryUpdate(ds[0].id, "failed", 2, {"m": 3})], [])
    got = await store.get_delivery(ds[0].id)
    assert got is not None
    assert (got.state, got.attempts, got.detail) == ("delivered", 1, {"m": 2})
    assert [d.id for d in await store.unfinished()] == [ds[1].id, ds[2].id]
    counts = await store.delivery_counts("w")
    assert sorted(counts) == [(None, "sms", "delivered", 1), (None, "sms", "pending", 2)]


async def test_writes_queued_together_apply_in_order(store: Store) -> None:
    """Outcomes of one delivery and covers of one township that share a group commit."""
    ds = [delivery("w", n) for n in range(3)]
    await store.accept(stored("w"), [], ds, [CoverageRow("w", T1)])
    later = NOW + timedelta(seconds=1)
    for state in ("sent", "delivered", "failed"):
        store.record_soon([DeliveryUpdate(ds[0].id, state, 1, {"s": state})], [])
    for state in ("sent", "sent"):
        store.record_soon([DeliveryUpdate(ds[1].id, state, 2, {"s": state})], [])
    store.record_soon([], [], [Cover("w", T1, NOW, {"n": 1})])
    store.record_soon([], [], [Cover("w", T1, later, {"n": 2})])
    await store.record([DeliveryUpdate(ds[2].id, "failed", 1)], [])  # after them all
    got = {d.id: (d.state, d.detail) for d in await store.deliveries_for("w")}
    assert got == {
        ds[0].id: ("delivered", {"s": "delivered"}),
        ds[1].id: ("sent", {"s": "sent"}),
        ds[2].id: ("failed", {}),
    }
    (row,) = await store.coverage_for("w")
    assert row.covered_by == {"n": 1}


async def test_a_receipt_of_a_final_delivery_is_kept_without_changing_its_state(
    store: Store,
) -> None:
    d = delivery("w", 1)
    await store.accept(stored("w"), [], [d])
    await store.record([DeliveryUpdate(d.id, "failed", 3, {"why": "x"})], [])
    receipt = {"reports": ["r1"]}
    await store.record([DeliveryUpdate(d.id, "delivered", receipt=receipt)], [])
    got = await store.get_delivery(d.id)
    assert got is not None
    assert (got.state, got.receipt, got.detail) == ("failed", receipt, {"why": "x"})
    other = delivery("w", 2)
    await store.accept(stored("w-2"), [], [other])
    await store.record([DeliveryUpdate(other.id, "delivered", receipt={"reports": ["a"]})], [])
    got = await store.get_delivery(other.id)
    assert got is not None
    assert got.state == "delivered"


async def test_the_first_cover_wins_and_a_township_is_escalated_once(store: Store) -> None:
    rows = [CoverageRow("w", T1), CoverageRow("w", T2, blind_spot=True)]
    await store.accept(stored("w"), [], [], rows)
    later = NOW + timedelta(minutes=1)
    await store.record([], [], [Cover("w", T1, NOW, {"channel": "sms"})])
    await store.record([], [], [Cover("w", T1, later, {"means": "鸣锣"})])
    esc = DeliveryRecord("w/escalate-1", "w", "c1", "email", 2, purpose=f"escalation:{T2}")
    await store.escalate("w", [T2], NOW, [esc], [entry("w", Stage.ESCALATED, township=T2)])
    await store.escalate("w", [T2], later, [], [])
    got = await store.coverage_for("w")
    assert [(r.township, r.blind_spot, r.covered_by, r.escalated_at) for r in got] == [
        (T1, False, {"channel": "sms"}, None),
        (T2, True, None, NOW.isoformat(timespec="microseconds")),
    ]
    assert got[0].covered_at == NOW.isoformat(timespec="microseconds")
    assert (await store.deliveries_for("w"))[0].escalation_of == [T2]


async def test_retire_stops_pending_deliveries_but_not_its_clears(store: Store) -> None:
    pending, sent = delivery("w", 1), delivery("w", 2)
    await store.accept(stored("w"), [], [pending, sent])
    await store.record([DeliveryUpdate(sent.id, "sent", 1)], [])
    clear = DeliveryRecord("w/clear/1", "w", "b1", "mqtt", 2, purpose="clear")
    expired = DeliveryRecord("w/expired/1", "w", "p1", "webhook", 2, purpose="expired")
    await store.retire("w", "cancelled", [entry("w", Stage.CANCELLED)], [clear, expired])
    await store.retire("w", "expired", [])  # retired once: the state stays
    warning = await store.get_warning("w")
    assert warning is not None
    assert warning.state == "cancelled"
    states = {d.id: d.state for d in await store.deliveries_for("w")}
    assert states == {pending.id: "stopped", sent.id: "sent", clear.id: "pending",
                      expired.id: "pending"}  # fmt: skip
    assert await store.active_warnings() == []
    assert await store.active_warning_ids() == set()
    # accept can retire the warning the new one replaces, in its own transaction
    await store.accept(stored("a"), [])
    await store.accept(stored("b"), [], retire=("a", "superseded"))
    assert [w.id for w in await store.active_warnings()] == ["b"]
    assert await store.active_warning_ids() == {"b"}


async def test_an_attempt_under_way_when_its_warning_ended_is_recorded_as_it_left(
    store: Store,
) -> None:
    """Art. 18: a cancel stops what was not sent yet; a message already on its way left, so
    its delivery says so, like its ledger entries do (the figures agree with the rows)."""
    ds = [delivery("w", n) for n in range(4)]
    await store.accept(stored("w"), [], ds)
    await store.retire("w", "cancelled", [entry("w", Stage.CANCELLED)])
    await store.record([DeliveryUpdate(ds[0].id, "delivered", 1, {"m": 1})], [])
    store.record_soon([DeliveryUpdate(ds[1].id, "sent", 1)], [])
    await store.record([DeliveryUpdate(ds[2].id, "pending", 1, {"last_error": "x"})], [])
    await store.record([DeliveryUpdate(ds[3].id, "failed", 1)], [])
    got = {d.id: (d.state, d.attempts) for d in await store.deliveries_for("w")}
    assert got == {
        ds[0].id: ("delivered", 1),
        ds[1].id: ("sent", 1),
        ds[2].id: ("stopped", 0),  # a failed attempt does not bring it back
        ds[3].id: ("stopped", 0),
    }
    figures = await store.stats(NOW - timedelta(hours=1), NOW + timedelta(hours=1), None, 10)
    assert (figures.totals.delivered, figures.totals.stopped, figures.totals.open) == (1, 2, 1)


async def test_a_retire_or_an_escalation_that_comes_second_writes_nothing(store: Store) -> None:
    """design.md "Storage and several processes": each expiry and each township escalation
    happens once, whichever process sees it first; the second writer is told and writes no
    entry and no delivery (its clears would otherwise be sent twice)."""
    await store.accept(stored("w"), [], [], [CoverageRow("w", T1), CoverageRow("w", T2)])
    clear = DeliveryRecord("w/clear/1", "w", "b1", "mqtt", 2, purpose="clear")
    expiring = [store.retire("w", "expired", [entry("w", Stage.EXPIRED)], [clear]) for _ in "ab"]
    assert sorted(await asyncio.gather(*expiring)) == [False, True]
    assert [e.stage for e in await store.entries_for("w")] == [Stage.EXPIRED]
    assert [d.id for d in await store.deliveries_for("w")] == [clear.id]

    def escalation(townships: list[str]) -> tuple[list[DeliveryRecord], list[LedgerDraft]]:
        purpose = "escalation:" + ",".join(townships)
        ds = [DeliveryRecord("w/escalate-deadline/c1", "w", "c1", "email", 2, purpose=purpose)]
        return ds, [entry("w", Stage.ESCALATED, township=t) for t in townships]

    both = [store.escalate("w", [T1, T2], NOW, *escalation([T1, T2])) for _ in "ab"]
    stored_by = await asyncio.gather(*both)
    assert sorted(len(d) for d in stored_by) == [0, 1]
    assert await store.escalate("w", [T2], NOW, *escalation([T2])) == []
    escalated = [e.data["township"] for e in await store.entries_for("w") if e.data]
    assert sorted(escalated) == [T1, T2]
    assert all(r.escalated_at for r in await store.coverage_for("w"))
    assert await verify(store.ledger()) == 3


async def test_deliveries_by_id_pending_keys_and_durable_follow_ups(store: Store) -> None:
    ds = [delivery("w", n, level=n) for n in (1, 2, 3)]
    await store.accept(stored("w"), [], ds)
    await store.record([DeliveryUpdate(ds[0].id, "delivered", 1)], [])
    got = await store.deliveries_by_id([ds[0].id, ds[2].id, "missing"])
    assert sorted((d.id, d.state) for d in got) == [(ds[0].id, "delivered"), (ds[2].id, "pending")]
    assert await store.deliveries_by_id([]) == []
    assert sorted(await store.pending_keys()) == [(ds[1].id, "sms", 2), (ds[2].id, "sms", 3)]
    durable = asyncio.Event()
    store.record_soon([DeliveryUpdate(ds[1].id, "delivered", 1)], [], then=durable.set)
    await asyncio.wait_for(durable.wait(), 10)
    assert sorted(await store.pending_keys()) == [(ds[2].id, "sms", 3)]
    assert await store.deployment() == await store.deployment() != ""


async def test_record_soon_outcomes_are_durable_across_close(durable_url: str) -> None:
    count = 600
    async with open_store(durable_url) as s:
        await s.accept(stored("w"), [], [delivery("w", 1)])
        for i in range(count):
            s.record_soon([], [entry("w", Stage.ATTEMPT, i=i)])
        s.record_soon([DeliveryUpdate("w/sms/1", "delivered", 1)], [])
        assert s.lagging()
        await asyncio.wait_for(s.caught_up(), 30)
        assert not s.lagging()
    async with open_store(durable_url) as s:  # closing wrote what was still queued
        assert [e.data["i"] for e in await s.entries_for("w")] == list(range(count))
        got = await s.get_delivery("w/sms/1")
        assert got is not None
        assert got.state == "delivered"
        assert await verify(s.ledger()) == count


async def test_concurrent_appends_form_one_chain_that_verifies(durable_url: str) -> None:
    async with open_store(durable_url) as s:
        await asyncio.gather(*(s.append([entry(f"w{i}", Stage.RECEIVED, n=i)]) for i in range(200)))
        assert await verify(s.ledger()) == 200
    async with open_store(durable_url) as s:  # the chain continues after a reopen
        await s.append([entry("w", Stage.RECEIVED)])
        entries = [e async for e in s.ledger()]
        assert await verify(s.ledger()) == 201
        assert [e.seq for e in entries] == list(range(1, 202))


async def test_a_backlog_of_record_soon_lags_then_catches_up_in_order(store: Store) -> None:
    """What the durable tests above check of one open store, for every store."""
    count = 600
    await store.accept(stored("w"), [], [delivery("w", 1)])
    for i in range(count):
        store.record_soon([], [entry("w", Stage.ATTEMPT, i=i)])
    store.record_soon([DeliveryUpdate("w/sms/1", "delivered", 1)], [])
    assert store.lagging()
    await asyncio.wait_for(store.caught_up(), 30)
    assert not store.lagging()
    await store.append([entry("w", Stage.RECEIVED)])  # queued after them all
    assert [e.data.get("i") for e in await store.entries_for("w")] == [*range(count), None]
    got = await store.get_delivery("w/sms/1")
    assert got is not None
    assert got.state == "delivered"
    await asyncio.gather(*(store.append([entry(f"w{i}", Stage.RECEIVED)]) for i in range(200)))
    assert await verify(store.ledger()) == count + 1 + 200


async def test_an_endpoint_stays_disabled_until_enabled(store: Store) -> None:
    await store.disable_endpoint("partner-1", "HTTP 410 Gone", NOW)
    await store.disable_endpoint("partner-1", "HTTP 410 again", NOW)
    assert await store.disabled_endpoints() == {"partner-1": "HTTP 410 again"}
    assert await store.enable_endpoint("partner-1")
    assert not await store.enable_endpoint("partner-1")
    assert await store.disabled_endpoints() == {}


async def test_commit_listeners_are_told_of_each_commit_and_one_failing_is_ignored(
    store: Store,
) -> None:
    told: list[list[Stage]] = []

    def listener(entries: Sequence[LedgerDraft]) -> None:
        told.append([e.stage for e in entries])

    def failing(entries: Sequence[LedgerDraft]) -> None:
        raise RuntimeError("an observer that fails")

    store.on_commit(failing)
    store.on_commit(listener)
    await store.accept(stored("w"), [entry("w", Stage.RECEIVED)])
    await store.accept(stored("w"), [entry("w", Stage.RECEIVED)])  # a replay commits nothing
    await store.record([], [entry("w", Stage.ATTEMPT), entry("w", Stage.SENT)])
    assert told == [[Stage.RECEIVED], [Stage.ATTEMPT, Stage.SENT]]
    assert len(await store.entries_for("w")) == 3


async def test_a_write_that_cannot_be_stored_is_refused_alone(store: Store) -> None:
    good = [store.append([entry(f"w{i}", Stage.RECEIVED)]) for i in range(20)]
    bad = store.append([entry("w", Stage.RECEIPT, phone="\ud800")])
    results = await asyncio.gather(*good[:10], bad, *good[10:], return_exceptions=True)
    assert isinstance(results[10], Unstorable)
    assert [r for r in results if isinstance(r, BaseException)] == [results[10]]
    assert await verify(store.ledger()) == 20


async def test_unexpired_warnings_whatever_their_state(store: Store) -> None:
    await store.accept(stored("old", expires=timedelta(minutes=5)), [])
    await store.accept(stored("live"), [])
    await store.accept(stored("gone"), [])
    await store.retire("gone", "cancelled", [])
    got = await store.unexpired_warnings(NOW + timedelta(minutes=10))
    assert sorted(w.id for w in got) == ["gone", "live"]
    got = await store.unexpired_warnings(NOW + timedelta(hours=2))
    assert got == []
    later = await store.warnings_received(NOW - timedelta(seconds=1), NOW + timedelta(seconds=1))
    assert sorted(w.id for w in later) == ["gone", "live", "old"]


async def test_disabled_endpoints_stay_until_enabled(durable_url: str) -> None:
    async with open_store(durable_url) as s:
        await s.disable_endpoint("partner-1", "HTTP 410 Gone", NOW)
        await s.disable_endpoint("partner-1", "HTTP 410 again", NOW)
        await s.disable_endpoint("partner-2", "HTTP 410", NOW)
    async with open_store(durable_url) as s:
        assert await s.disabled_endpoints() == {
            "partner-1": "HTTP 410 again",
            "partner-2": "HTTP 410",
        }
        assert await s.enable_endpoint("partner-1")
        assert not await s.enable_endpoint("partner-1")
        assert await s.disabled_endpoints() == {"partner-2": "HTTP 410"}


async def test_ping_probes_a_write(store: Store) -> None:
    await store.ping()
    await store.ping()


async def scenario(store: Store) -> None:
    """The same writes for every store: two warnings with deliveries on two channels,
    attempts, outcomes, receipts, covers and an escalation."""
    for k, wid in enumerate(("s1", "s2")):
        t0 = NOW + timedelta(minutes=k)
        ds = [delivery(wid, n, ch) for n in range(3) for ch in ("sms", "email")]
        rows = [CoverageRow(wid, T1), CoverageRow(wid, T2)]
        await store.accept(stored(wid), [entry(wid, Stage.RECEIVED, t0)], ds, rows)
        for n, d in enumerate(ds):
            at = t0 + timedelta(seconds=n + 1)
            tries = [entry(wid, Stage.ATTEMPT, at, delivery_id=d.id) for _ in range(1 + n % 2)]
            state = "failed" if n == 5 else "delivered"
            done = entry(wid, Stage(state), at, delivery_id=d.id)
            covers = [Cover(wid, T1, at, {"channel": d.channel})] if state == "delivered" else []
            await store.record([DeliveryUpdate(d.id, state, len(tries))], [*tries, done], covers)
        rcpt = entry(wid, Stage.RECEIPT, t0 + timedelta(seconds=30), delivery_id=ds[5].id)
        await store.record([DeliveryUpdate(ds[5].id, "delivered", receipt={"r": 1})], [rcpt])
        if k == 0:
            await store.escalate(wid, [T2], t0, [], [entry(wid, Stage.ESCALATED, t0, township=T2)])
        else:
            await store.record([], [], [Cover(wid, T2, t0 + timedelta(seconds=40), {"m": 1})])


async def test_the_stores_give_the_same_figures_for_the_same_writes(
    tmp_path: Path, pg_url: str
) -> None:
    answers: list[list[StatsFigures]] = []
    for url in (f"sqlite:///{tmp_path}/s.db", pg_url, MEMORY_URL):
        async with open_store(url) as s:
            await scenario(s)
            start, end = NOW - timedelta(hours=1), NOW + timedelta(hours=1)
            answers.append([
                await s.stats(start, end, None, 10),
                await s.stats(start, end, "500103", 1),
                await s.stats(start, end, "500101", 10),
                await s.stats(end, end + timedelta(days=1), None, 10),
            ])  # fmt: skip
    sqlite, postgres, memory = answers
    assert sqlite[0].totals.delivered == 10
    assert sqlite[0].totals.escalations == 1
    assert sqlite[0].totals.times
    assert postgres == sqlite
    assert memory == sqlite


async def ends_scenario(store: Store) -> None:
    """Deliveries that fail before any is delivered, end by a receipt (and get another after),
    stop with their warning or leave while it is cancelled; an escalation delivery and a clear
    beside them."""
    ds = [delivery("e", n, ch) for n in range(3) for ch in ("sms", "webhook")]
    esc = DeliveryRecord("e/escalate-1", "e", "c1", "email", 2, purpose=f"escalation:{T2}")
    await store.accept(
        stored("e"), [entry("e", Stage.RECEIVED)], [*ds, esc], [CoverageRow("e", T1)]
    )
    for n, d in enumerate(ds[:4]):
        at = NOW + timedelta(seconds=n + 1)
        tries = [entry("e", Stage.ATTEMPT, at, delivery_id=d.id) for _ in range(n + 1)]
        await store.record([DeliveryUpdate(d.id, "sent", n + 1)], [*tries])
    early = entry("e", Stage.FAILED, NOW + timedelta(seconds=5), delivery_id=ds[3].id)
    await store.record([DeliveryUpdate(ds[3].id, "failed", 4)], [early])  # before any delivered
    for n, d in enumerate(ds[:2]):
        at = NOW + timedelta(seconds=10 + n)
        rcpt = entry("e", Stage.RECEIPT, at, delivery_id=d.id)
        await store.record([DeliveryUpdate(d.id, "delivered", receipt={"n": n})], [rcpt])
        again = entry("e", Stage.RECEIPT, at + timedelta(seconds=5), delivery_id=d.id)
        await store.record([DeliveryUpdate(d.id, "delivered", receipt={"n": n + 1})], [again])
    await store.record([], [], [Cover("e", T1, NOW + timedelta(seconds=12), {"m": 1})])
    clear = DeliveryRecord("e/clear/1", "e", "b1", "mqtt", 2, purpose="clear")
    await store.retire("e", "cancelled", [entry("e", Stage.CANCELLED)], [clear])
    left = entry("e", Stage.DELIVERED, NOW + timedelta(seconds=20), delivery_id=ds[2].id)
    await store.record([DeliveryUpdate(ds[2].id, "delivered", 3)], [left])
    failed = entry("e", Stage.FAILED, NOW + timedelta(seconds=21), delivery_id=ds[4].id)
    await store.record([DeliveryUpdate(ds[4].id, "failed", 1)], [failed])
    await store.record([DeliveryUpdate(esc.id, "delivered", 1)], [])


async def test_the_stores_agree_on_receipts_stops_and_follow_ups(
    tmp_path: Path, pg_url: str
) -> None:
    answers: list[list[StatsFigures]] = []
    for url in (f"sqlite:///{tmp_path}/s.db", pg_url, MEMORY_URL):
        async with open_store(url) as s:
            await ends_scenario(s)
            start, end = NOW - timedelta(hours=1), NOW + timedelta(hours=1)
            answers.append([
                await s.stats(start, end, None, 10),
                await s.stats(start, end, "500103", 0),
            ])  # fmt: skip
    sqlite, postgres, memory = answers
    totals = sqlite[0].totals
    assert (totals.delivered, totals.stopped, totals.failures, totals.retries) == (3, 2, 1, 6)
    assert sqlite[0].by_channel["email"].escalation_deliveries == 1
    assert postgres == sqlite
    assert memory == sqlite


# -- PostgreSQL only ----------------------------------------------------------------------------


async def test_two_stores_on_one_database_append_one_chain(pg_url: str) -> None:
    """Two pools, as two processes: concurrent group commits interleave in one chain."""
    async with open_store(pg_url) as a, open_store(pg_url) as b:

        async def burst(s: Store, name: str) -> None:
            for round_ in range(10):
                writes: list[Awaitable[object]] = [
                    s.append([entry(f"{name}{round_}-{i}", Stage.RECEIVED)]) for i in range(20)
                ]
                writes.append(s.accept(stored("shared"), [entry("shared", Stage.RECEIVED)]))
                for i in range(10):
                    s.record_soon([], [entry(name, Stage.ATTEMPT, i=i)])
                await asyncio.gather(*writes)

        await asyncio.gather(burst(a, "a"), burst(b, "b"))
    async with open_store(pg_url) as s:
        entries = [e async for e in s.ledger()]
        assert await verify(s.ledger()) == len(entries) == 2 * 10 * (20 + 10) + 1
        mixed = [e.warning_id[0] for e in entries if e.warning_id != "shared"]
        assert "ab" in "".join(mixed) or "ba" in "".join(mixed)  # they did interleave


async def test_upgrade_is_idempotent_and_an_old_schema_is_refused(
    pg_cluster: PgCluster,
) -> None:
    url = pg_cluster.create_database("fresh", template=None)
    with pytest.raises(ConfigError, match="run `gateway db upgrade`"):
        async with open_store(url):
            pass
    assert await pg_schema.upgrade_url(url) == ([1, 2, 3], pg_schema.LATEST)
    assert await pg_schema.upgrade_url(url) == ([], pg_schema.LATEST)
    async with open_store(url) as s:
        await s.ping()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("INSERT INTO schema_version (version, name) VALUES (99, 'future')")
    with pytest.raises(ConfigError, match="newer than this gateway"):
        async with open_store(url):
            pass


async def test_a_nul_character_is_refused_alone(pg_url: str) -> None:
    """PostgreSQL takes no NUL in a text (SQLite does): refused before the batch, not in it."""
    async with open_store(pg_url) as s:
        good = [s.append([entry(f"w{i}", Stage.RECEIVED)]) for i in range(10)]
        bad = s.accept(stored("w\x00"), [entry("w\x00", Stage.RECEIVED)])
        results = await asyncio.gather(bad, *good, return_exceptions=True)
        assert isinstance(results[0], Unstorable)
        assert not [r for r in results[1:] if isinstance(r, BaseException)]
        nul_data: Callable[[], Awaitable[None]] = lambda: s.append(  # noqa: E731
            [entry("w", Stage.RECEIPT, note="a\x00b")]
        )
        await nul_data()  # inside JSON a NUL is escaped, and stored
        assert await verify(s.ledger()) == 11
