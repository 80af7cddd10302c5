"""Group-committed delivery outcomes per second: the SQLite store against the PostgreSQL store.

For each store, one warning with N planned deliveries is accepted, then N outcomes are handed to
`record_soon` as the dispatcher hands them (a state update and its attempt and delivered ledger
entries, hash-chained), waiting at `caught_up` when the store lags; the clock stops when the
store has closed (every outcome durable). Both are durable on commit: SQLite WAL with
synchronous=FULL on a file in a temp dir; PostgreSQL 15 from Debian, a private cluster with
fsync=on on the same disk, over loopback TCP. With --processes 2 the PostgreSQL run is two
store instances (two pools) writing into one chain concurrently, N each. It also prints how
long the `accept` of the N deliveries took (before a 202 the platform waits for it).

    python bench/store_writes.py [--deliveries 20000] [--processes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.ledger import LedgerDraft, Stage, verify
from gateway.store import Store, StoredWarning, open_store
from gateway.store.base import DeliveryRecord, DeliveryUpdate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.store_servers import PgCluster


async def outcomes(url: str, n: int, wid: str, accepted: list[float]) -> None:
    now = datetime.now(UTC)
    warning = StoredWarning(wid, "h", {"id": wid}, {}, "active", now, now + timedelta(hours=1), {})
    ds = [DeliveryRecord(f"{wid}/{i}", wid, f"e{i}", "sms", 1) for i in range(n)]
    async with open_store(url) as store:
        started = time.perf_counter()
        await store.accept(warning, [LedgerDraft(wid, Stage.RECEIVED, now)], ds)
        accepted.append(time.perf_counter() - started)
        for d in ds:
            entries = [
                LedgerDraft(wid, Stage.ATTEMPT, now, {"delivery_id": d.id}),
                LedgerDraft(wid, Stage.DELIVERED, now, {"delivery_id": d.id}),
            ]
            store.record_soon([DeliveryUpdate(d.id, "delivered", 1)], entries)
            if store.lagging():
                await store.caught_up()


async def count(url: str) -> int:
    store: Store
    async with open_store(url) as store:
        return await verify(store.ledger())


def run(label: str, url: str, n: int, processes: int) -> None:
    accepted: list[float] = []

    async def all_of_them() -> None:
        await asyncio.gather(*(outcomes(url, n, f"w{p}", accepted) for p in range(processes)))

    start = time.perf_counter()
    asyncio.run(all_of_them())
    took = time.perf_counter() - start
    entries = asyncio.run(count(url))
    total = n * processes
    print(
        f"{label:<28} {total:>7} outcomes in {took:6.2f} s: {total / took:8.0f} outcomes/s "
        f"({2 * total / took:8.0f} ledger entries/s); chain of {entries} verifies; "
        f"accept of {n} deliveries {max(accepted):.2f} s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--deliveries", type=int, default=20_000)
    p.add_argument("--processes", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run("sqlite (1 store)", f"sqlite:///{Path(tmp) / 'bench.db'}", args.deliveries, 1)
    cluster = PgCluster(fsync=True).init().start()
    try:
        run("postgresql (1 store)", cluster.upgraded_database("one"), args.deliveries, 1)
        if args.processes > 1:
            label = f"postgresql ({args.processes} stores)"
            url = cluster.upgraded_database("many")
            run(label, url, args.deliveries, args.processes)
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
