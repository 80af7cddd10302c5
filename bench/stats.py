"""GET /v1/stats with N warnings stored: latency and server CPU per call, alone and 4 at once.

Fills a fresh SQLite store through the store API (`accept`, then `record` of every delivery's
attempt and outcome and of the townships covered, so the aggregates are kept exactly as in
service), with the warnings' received times spread evenly over the last `--days` days, each
warning on four channels (one delivery each, some failed, some retried) and one or two
districts. Then starts `gateway serve` on that store as its own process and measures the
default range (7 days), a 366-day range, each with and without `district`: `--calls` calls one
after the other, then `--calls` rounds of 4 concurrent calls. CPU is the server process's
user+system time (from /proc) divided by the calls made.

    python bench/stats.py --warnings 100000 --calls 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.config import REPO_CONFIG
from gateway.ledger import LedgerDraft, Stage
from gateway.store.base import (
    Cover,
    CoverageRow,
    DeliveryRecord,
    DeliveryState,
    DeliveryUpdate,
    StoredWarning,
)
from gateway.store.sqlite import SqliteStore
from tests.processes import GatewayProcess

TOKEN = "bench-token-0123456789"
DISTRICTS = ("500101", "500103", "500102", "500104", "500105", "500106")
CHANNELS = ("sms", "email", "mqtt", "webhook")
CHUNK = 256


def _warning(i: int, received: datetime) -> tuple[StoredWarning, list[str]]:
    districts = [DISTRICTS[i % len(DISTRICTS)]]
    if i % 3 == 0:
        districts.append(DISTRICTS[(i + 1) % len(DISTRICTS)])
    doc = {"id": f"b-{i}", "level": 1 + i % 4, "hazard": "暴雨", "area": {"districts": districts}}
    stored = StoredWarning(
        f"b-{i}", "", doc, {}, "expired", received, received + timedelta(hours=6), {}
    )
    return stored, districts


async def _fill_one(store: SqliteStore, i: int, received: datetime) -> None:
    stored, districts = _warning(i, received)
    wid = stored.id
    deliveries = [DeliveryRecord(f"{wid}/{ch}", wid, f"ep-{ch}", ch, 2) for ch in CHANNELS]
    coverage = [CoverageRow(wid, f"{d}001") for d in districts]
    received_entry = LedgerDraft(wid, Stage.RECEIVED, received, {})
    await store.accept(stored, [received_entry], deliveries, coverage)
    updates, entries = [], []
    for k, d in enumerate(deliveries):
        tries = 2 if (i + k) % 5 == 0 else 1
        at = received + timedelta(seconds=1 + k + (i % 7), microseconds=i % 997)
        failed = d.channel == "webhook" and i % 17 == 0
        for n in range(1, tries + 1):
            data = {"delivery_id": d.id, "channel": d.channel, "attempt": n}
            entries.append(LedgerDraft(wid, Stage.ATTEMPT, at - timedelta(milliseconds=5), data))
        stage = Stage.FAILED if failed else Stage.DELIVERED
        entries.append(LedgerDraft(wid, stage, at, {"delivery_id": d.id, "channel": d.channel}))
        state = DeliveryState.FAILED if failed else DeliveryState.DELIVERED
        updates.append(DeliveryUpdate(d.id, state, tries))
    covers = [
        Cover(wid, row.township, received + timedelta(seconds=2 + n), {"channel": "sms"})
        for n, row in enumerate(coverage)
        if (i + n) % 11  # some townships stay uncovered
    ]
    await store.record(updates, entries, covers)


async def fill(db: Path, n: int, days: int) -> float:
    """Store `n` warnings received over the last `days` days; the seconds it took."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    span = timedelta(days=days)
    async with SqliteStore(db) as store:
        for lo in range(0, n, CHUNK):
            await asyncio.gather(
                *(
                    _fill_one(store, i, now - span + span * (i / n))
                    for i in range(lo, min(n, lo + CHUNK))
                )
            )
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    url: str, pid: int, params: dict[str, str], calls: int, concurrent: int
) -> tuple[list[float], float, int]:
    """Latencies (s), server CPU seconds per call, and the warnings the answer counted."""
    latencies: list[float] = []
    counted = 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(url, headers=headers, timeout=timeout) as http:

        async def one() -> None:
            nonlocal counted
            t0 = time.perf_counter()
            async with http.get("/v1/stats", params=params) as resp:
                doc = await resp.json()
                assert resp.status == 200, doc
            latencies.append(time.perf_counter() - t0)
            counted = doc["totals"]["warnings"]

        await one()  # warm-up, not counted
        latencies.clear()
        cpu0 = cpu_seconds(pid)
        for _ in range(calls):
            await asyncio.gather(*(one() for _ in range(concurrent)))
        cpu = (cpu_seconds(pid) - cpu0) / (calls * concurrent)
    return latencies, cpu, counted


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warnings", type=int, default=100_000)
    p.add_argument("--days", type=int, default=400, help="received times spread over these")
    p.add_argument("--calls", type=int, default=20)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-stats-"))
    config = tmp / "config"
    shutil.copytree(REPO_CONFIG, config)
    (config / "gateway.yaml").write_text(
        "clients: {platform: {}}\n"
        "channels: {sms: {provider: stub}, email: {enabled: false}, mqtt: {enabled: false},"
        " webhook: {enabled: false}}\n",
        encoding="utf-8",
    )
    filled = asyncio.run(fill(tmp / "bench.db", args.warnings, args.days))
    size = (tmp / "bench.db").stat().st_size / 1e6
    print(
        f"filled {args.warnings} warnings over {args.days} days in {filled:.0f} s ({size:.0f} MB)"
    )
    env = {
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_TOKEN_PLATFORM": TOKEN,
        "GATEWAY_STORE": f"sqlite:///{tmp}/bench.db",
        "GATEWAY_LOG_LEVEL": "WARNING",
    }
    gw = GatewayProcess(env, tmp).start()
    assert gw.proc is not None
    now = datetime.now(UTC)
    year = {"from": (now - timedelta(days=366)).isoformat(), "to": now.isoformat()}
    scenarios = {
        "default 7 days": {},
        "default 7 days, district": {"district": DISTRICTS[0]},
        "366 days": year,
        "366 days, district": {**year, "district": DISTRICTS[0]},
    }
    try:
        print(
            f"{'range':26} {'calls':>9} {'in range':>8} {'p50 ms':>8} {'max ms':>8} {'CPU ms':>7}"
        )
        for concurrent in (1, 4):
            for name, params in scenarios.items():
                lat, cpu, counted = asyncio.run(
                    measure(gw.url, gw.proc.pid, params, args.calls, concurrent)
                )
                calls = f"{args.calls}x{concurrent}"
                print(
                    f"{name:26} {calls:>9} {counted:>8} {statistics.median(lat) * 1000:>8.1f} "
                    f"{max(lat) * 1000:>8.1f} {cpu * 1000:>7.1f}"
                )
    finally:
        gw.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
