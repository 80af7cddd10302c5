"""Ingest throughput: N warnings over keep-alive connections into `gateway serve` (durable store).

Starts the gateway as its own process (pinned to CPU 0 with taskset when available), with a fresh
SQLite store (WAL, synchronous=FULL), then posts N distinct valid warnings from C concurrent
keep-alive connections and reports accepted warnings per second and latency percentiles. Each
warning targets one township on the stub SMS channel, so the gateway also plans, dispatches and
records one delivery per warning while it ingests.

    python bench/ingest.py --warnings 20000 --connections 64

With `--store postgresql --gateways N` (bench/several.py) it starts a private PostgreSQL cluster
(fsync on) and redis-server, runs `gateway db upgrade` and starts N gateways with one config,
gateway i pinned to CPU i % 2, and spreads the POSTs round-robin over them (the one delivery of
each warning goes through the Redis Streams queue, to any gateway's stub). With one gateway the
client and the servers run on CPU 1; with two they are unpinned and share both cores with the
gateways.

    python bench/ingest.py --store postgresql --gateways 2
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
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import several

from gateway.config import REPO_CONFIG
from tests.processes import GatewayProcess

TOKEN = "bench-token-0123456789"


def body(i: int, now: datetime, prefix: str) -> dict[str, Any]:
    return {
        "id": f"{prefix}-{i}",
        "issuer": {
            "unit": "万州区气象局",
            "role": "区县（自治县）气象主管机构",
            "district": "500101",
        },
        "approval": {
            "approved_by": "值班领导",
            "approved_at": (now - timedelta(minutes=5)).isoformat(),
        },
        "category": "natural_disaster",
        "hazard": "暴雨",
        "level": 1 + i % 4,
        "title": "万州区气象局发布暴雨预警信号",
        "content": "预计未来3小时内万州区大部地区降雨量将达50毫米以上，请注意防范。" * 3,
        "sent_at": (now - timedelta(minutes=1)).isoformat(),
        "expires_at": (now + timedelta(hours=6)).isoformat(),
        # One township, stub SMS: each warning plans one delivery and one coverage row, so the
        # figure is ingest (validate, authorize, route, commit) plus a minimal fan-out.
        "area": {"townships": ["500101001"]},
        "channels": ["sms"],
    }


async def drive(
    urls: Sequence[str], n: int, connections: int, prefix: str
) -> tuple[float, list[float], int]:
    """POST `n` warnings, the i-th to urls[i % len(urls)]; (seconds, latencies, failures)."""
    now = datetime.now(UTC)
    bodies = [body(i, now, prefix) for i in range(n)]
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    for i, b in enumerate(bodies):
        queue.put_nowait((urls[i % len(urls)], b))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    conn = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=conn, headers=headers, timeout=timeout) as http:

        async def worker() -> None:
            nonlocal failures
            while not queue.empty():
                url, b = queue.get_nowait()
                t0 = time.perf_counter()
                async with http.post(url + "/v1/warnings", json=b) as resp:
                    await resp.read()
                    if resp.status != 202:
                        failures += 1
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return elapsed, latencies, failures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warnings", type=int, default=20_000)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--store", choices=several.STORES, default="sqlite")
    p.add_argument("--gateways", type=int, default=1, help="gateway processes (postgresql)")
    p.add_argument(
        "--pg-statements", action="store_true", help="print PostgreSQL's costliest statements"
    )
    args = p.parse_args()
    if args.gateways < 1 or (args.gateways > 1 and args.store != "postgresql"):
        raise SystemExit("--gateways: 1, or more with --store postgresql")
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    config = tmp / "config"
    shutil.copytree(REPO_CONFIG, config)
    (config / "gateway.yaml").write_text(
        "clients: {platform: {}}\n"
        "channels: {sms: {provider: stub}, email: {enabled: false}, mqtt: {enabled: false},"
        " webhook: {enabled: false}}\n",
        encoding="utf-8",
    )
    pinned = shutil.which("taskset") is not None and (os.cpu_count() or 1) > 1
    if pinned and args.gateways == 1:
        os.sched_setaffinity(0, {1})  # the client (and PostgreSQL, Redis) on CPU 1
    backend = several.Backend(args.store, tmp, statements=args.pg_statements)
    statements: list[str] = []
    gateways: list[GatewayProcess] = []
    try:
        env = {
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_TOKEN_PLATFORM": TOKEN,
            "GATEWAY_LOG_LEVEL": "WARNING",
            **backend.start(),
        }
        backend.upgrade(env)
        gateways, pinned = several.start_gateways(env, tmp, args.gateways)
        urls = [gw.url for gw in gateways]
        # Warm-up, then the measured run.
        asyncio.run(drive(urls, 500, args.connections, "warm"))
        load = several.load()
        procs = {f"gateway {i + 1}": gw.proc.pid for i, gw in enumerate(gateways) if gw.proc}
        procs |= backend.pids()
        before = {k: several.tree_cpu_seconds(pid) for k, pid in procs.items()}
        elapsed, lat, failures = asyncio.run(drive(urls, args.warnings, args.connections, "bench"))
        cpu = {k: several.tree_cpu_seconds(pid) - before[k] for k, pid in procs.items()}
        statements = backend.top_statements()
    finally:
        for problem in several.log_problems(gateways):
            print(problem, file=sys.stderr)
        for gw in gateways:
            gw.stop()
        backend.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    lat.sort()
    q = statistics.quantiles(lat, n=100)
    if args.store == "sqlite" and args.gateways == 1:
        print(
            f"warnings: {args.warnings}, connections: {args.connections}, "
            f"server pinned to one core: {pinned}"
        )
    else:
        print(
            f"warnings: {args.warnings}, connections: {args.connections}, store "
            f"{several.describe(args.store, args.gateways)} (POSTs round-robin), gateway i pinned "
            f"to CPU i % 2: {pinned}; client + servers "
            f"{'on CPU 1' if args.gateways == 1 else 'unpinned'}; load average {load}"
        )
    print(f"accepted/s: {args.warnings / elapsed:,.0f} ({failures} not accepted)")
    if args.store != "sqlite" or args.gateways != 1:
        each = ", ".join(f"{k} {1e6 * v / args.warnings:,.0f}" for k, v in cpu.items())
        print(f"CPU per warning (µs): {each}")
    if statements:
        print("PostgreSQL statements by total time (pg_stat_statements, warm-up included):")
        print("\n".join(statements))
    print(
        f"latency ms: p50 {q[49] * 1000:.2f}, p90 {q[89] * 1000:.2f}, "
        f"p99 {q[98] * 1000:.2f}, max {lat[-1] * 1000:.2f}"
    )


if __name__ == "__main__":
    main()
