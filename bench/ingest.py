"""Ingest throughput: N warnings over keep-alive connections into `gateway serve` (durable store).

Starts the gateway as its own process (pinned to CPU 0 with taskset when available), with a fresh
SQLite store (WAL, synchronous=FULL), then posts N distinct valid warnings from C concurrent
keep-alive connections and reports accepted warnings per second and latency percentiles. Each
warning targets one township on the stub SMS channel, so the gateway also plans, dispatches and
records one delivery per warning while it ingests.

    python bench/ingest.py --warnings 20000 --connections 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
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


async def drive(url: str, n: int, connections: int, prefix: str) -> tuple[float, list[float], int]:
    now = datetime.now(UTC)
    bodies = [body(i, now, prefix) for i in range(n)]
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    conn = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, connector=conn, headers=headers, timeout=timeout) as http:

        async def worker() -> None:
            nonlocal failures
            while not queue.empty():
                b = queue.get_nowait()
                t0 = time.perf_counter()
                async with http.post("/v1/warnings", json=b) as resp:
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
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    config = tmp / "config"
    shutil.copytree(REPO_CONFIG, config)
    (config / "gateway.yaml").write_text(
        "clients: {platform: {}}\n"
        "channels: {sms: {provider: stub}, email: {enabled: false}, mqtt: {enabled: false},"
        " webhook: {enabled: false}}\n",
        encoding="utf-8",
    )
    env = {
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_TOKEN_PLATFORM": TOKEN,
        "GATEWAY_STORE": f"sqlite:///{tmp}/bench.db",
        "GATEWAY_LOG_LEVEL": "WARNING",
    }
    gw = GatewayProcess(env, tmp)
    pinned = shutil.which("taskset") is not None and (os.cpu_count() or 1) > 1
    gw.start()
    try:
        if pinned and gw.proc is not None:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", "0", str(gw.proc.pid)],
                check=True,
                capture_output=True,
            )
            os.sched_setaffinity(0, {1})
        # Warm-up, then the measured run.
        asyncio.run(drive(gw.url, 500, args.connections, "warm"))
        elapsed, lat, failures = asyncio.run(
            drive(gw.url, args.warnings, args.connections, "bench")
        )
    finally:
        gw.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    lat.sort()
    q = statistics.quantiles(lat, n=100)
    print(
        f"warnings: {args.warnings}, connections: {args.connections}, "
        f"server pinned to one core: {pinned}"
    )
    print(f"accepted/s: {args.warnings / elapsed:,.0f} ({failures} not accepted)")
    print(
        f"latency ms: p50 {q[49] * 1000:.2f}, p90 {q[89] * 1000:.2f}, "
        f"p99 {q[98] * 1000:.2f}, max {lat[-1] * 1000:.2f}"
    )


if __name__ == "__main__":
    main()
