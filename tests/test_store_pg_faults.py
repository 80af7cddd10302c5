"""The PostgreSQL store under faults (design.md, "Delivery under faults"; issue 11: a connection
lost mid-transaction is retried or answered 503, never half-written). The server is really
stopped (`pg_ctl stop -m immediate`, no shutdown checkpoint) and started again on the same
port; backends are really terminated (pg_terminate_backend) while they wait inside a
transaction."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from gateway.exceptions import StoreUnavailable
from gateway.ledger import Stage, verify
from gateway.store import Store, open_store
from gateway.store.base import DeliveryUpdate
from tests.store_servers import PgCluster
from tests.test_store_contract import delivery, entry, stored

pytestmark = pytest.mark.slow  # real servers killed and restarted: `-m "not slow"` skips them

INGESTS = 220
PACE_S = 0.04
DOWN_S = 6.0
"""Longer than a caller waits for a connection, twice (the store tries a batch twice)."""
PER_WARNING = 5
OUTCOMES = 300


async def _lock_waiters(admin: psycopg.AsyncConnection[Any], other_than: set[int]) -> list[int]:
    cur = await admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = "
        "current_database()"
    )
    return [int(r[0]) for r in await cur.fetchall() if int(r[0]) not in other_than]


async def _next_waiter(admin: psycopg.AsyncConnection[Any], seen: set[int]) -> int:
    """The pid of a backend (not in `seen`) that waits for the ledger_head lock."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = await _lock_waiters(admin, seen)
        if found:
            seen.add(found[0])
            return found[0]
        await asyncio.sleep(0.02)
    raise AssertionError("no store transaction came to wait for the lock")


async def _kill_waiters(url: str, store: Store, kills: int) -> list[BaseException | None]:
    """Hold ledger_head locked while `store` appends, killing its waiting backend `kills`
    times, then let go; what the append and a record_soon beside it gave."""
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as admin,
        await psycopg.AsyncConnection.connect(url) as blocker,
    ):
        await blocker.execute("SELECT 1 FROM ledger_head FOR UPDATE")
        seen: set[int] = {blocker.info.backend_pid}
        append = asyncio.create_task(store.append([entry("killed", Stage.RECEIVED)]))
        for _ in range(kills):
            pid = await _next_waiter(admin, seen)
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        if kills < 2:
            await _next_waiter(admin, seen)  # the second try waits for the lock in its turn
        await blocker.rollback()
    results = await asyncio.gather(append, return_exceptions=True)
    return [r if isinstance(r, BaseException) else None for r in results]


async def test_a_backend_killed_mid_transaction_is_retried_once(pg_url: str) -> None:
    async with open_store(pg_url) as s:
        assert await _kill_waiters(pg_url, s, kills=1) == [None]
        assert [e.warning_id for e in await s.entries_for("killed")] == ["killed"]
        assert await verify(s.ledger()) == 1


async def test_a_backend_killed_twice_is_answered_store_unavailable(pg_url: str) -> None:
    async with open_store(pg_url) as s:
        (result,) = await _kill_waiters(pg_url, s, kills=2)
        assert isinstance(result, StoreUnavailable)
        assert await s.entries_for("killed") == []  # nothing half-written
        await s.append([entry("after", Stage.RECEIVED)])  # and the store goes on
        assert await verify(s.ledger()) == 1


async def test_postgresql_stopped_mid_writes_loses_nothing_acknowledged(
    own_pg_cluster: PgCluster,
) -> None:
    """Ingests (awaited, each a warning with its deliveries and entries) and delivery outcomes
    (record_soon) run while the server stops at once and comes back on the same port: ingests
    fail with StoreUnavailable meanwhile, and an ingest is all there or not there at all; every
    outcome handed to record_soon is committed once it returns; the chain verifies."""
    url = own_pg_cluster.url("gw")
    targets = [delivery("base", n) for n in range(OUTCOMES)]
    answers: dict[str, bool | None] = {}
    async with open_store(url) as s:
        await s.accept(stored("base"), [entry("base", Stage.RECEIVED)], targets)

        async def ingest(i: int) -> None:
            wid = f"in{i}"
            ds = [delivery(wid, n) for n in range(PER_WARNING)]
            drafts = [entry(wid, Stage.RECEIVED), entry(wid, Stage.PLANNED, n=PER_WARNING)]
            try:
                answers[wid] = (await s.accept(stored(wid), drafts, ds))[1]
            except StoreUnavailable:
                answers[wid] = None

        tasks = []
        down_at = 30
        up_at = down_at + int(DOWN_S / PACE_S)
        assert up_at < INGESTS
        for i in range(INGESTS):
            if i == down_at:
                await asyncio.to_thread(own_pg_cluster.stop, "immediate")
            if i == up_at:
                await asyncio.to_thread(own_pg_cluster.start)
            tasks.append(asyncio.create_task(ingest(i)))
            for d in targets[i * OUTCOMES // INGESTS : (i + 1) * OUTCOMES // INGESTS]:
                done = entry("base", Stage.DELIVERED, delivery_id=d.id)
                s.record_soon([DeliveryUpdate(d.id, "delivered", 1)], [done])
            await asyncio.sleep(PACE_S)
        await asyncio.gather(*tasks)
        up = time.monotonic()
        deadline = up + 60
        while time.monotonic() < deadline:  # the kept outcomes commit once it is back
            if len(await s.entries_for("base")) == OUTCOMES + 1:
                break
            await asyncio.sleep(0.2)
    refused = [w for w, ok in answers.items() if ok is None]
    assert refused, "no ingest met the stopped server"
    assert len(refused) < INGESTS
    async with open_store(url) as s:
        for wid, ok in answers.items():
            stored_warning = await s.get_warning(wid)
            deliveries, entries = await s.deliveries_for(wid), await s.entries_for(wid)
            if ok:
                assert stored_warning is not None
            if stored_warning is None:
                assert (deliveries, entries) == ([], []), wid
            else:
                assert (len(deliveries), len(entries)) == (PER_WARNING, 2), wid
        outcomes = [e for e in await s.entries_for("base") if e.stage == "delivered"]
        assert sorted(e.data["delivery_id"] for e in outcomes) == sorted(d.id for d in targets)
        assert {d.state for d in await s.deliveries_for("base")} == {"delivered"}
        assert await verify(s.ledger()) > OUTCOMES


async def test_a_store_opened_while_postgresql_is_down_is_unavailable(
    own_pg_cluster: PgCluster,
) -> None:
    own_pg_cluster.stop("immediate")
    with pytest.raises(StoreUnavailable, match="cannot connect"):
        async with open_store(own_pg_cluster.url("gw")):
            pass
