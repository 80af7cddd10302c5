"""The gateway's own cost per delivery: a fan-out to the stub SMS provider, which does no I/O.

Builds the app in-process (pin it with `taskset -c 0` for a one-core figure) with 10 stub SMS
groups in each of 1,000 townships, posts one city-wide red warning and waits until all 10,000
deliveries are settled. What it measures is the dispatcher and store work per delivery (queue,
worker, state update, attempt and delivered ledger entries, coverage), which bounds every
channel's rate relative to a bare client loop.

It then measures the floor under that: the store alone recording the outcomes of as many
deliveries as the dispatcher does for a delivered SMS (a state update and the attempt and
delivered ledger entries, hash-chained, group-committed with fsync), with no dispatcher.

    taskset -c 0 python bench/dispatch_overhead.py
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestClient, TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.app import build_app
from gateway.cli import tune_gc
from gateway.config import REPO_CONFIG, load_settings
from gateway.ledger import LedgerDraft, Stage
from gateway.store import SqliteStore
from gateway.store.base import DeliveryRecord, DeliveryState, DeliveryUpdate

TOKEN = "bench-token"
POLL_S = 0.05


def make_config(tmp: Path, townships: int, groups: int) -> tuple[Path, list[str]]:
    config = tmp / "config"
    shutil.copytree(REPO_CONFIG, config)
    (config / "gateway.yaml").write_text(
        "clients: {platform: {}}\n"
        "channels: {sms: {provider: stub, concurrency: 32}, email: {enabled: false},"
        " mqtt: {enabled: false}, webhook: {enabled: false}}\n",
        encoding="utf-8",
    )
    registry = yaml.safe_load((config / "townships.yaml").read_text(encoding="utf-8"))
    codes = [t["code"] for d in registry["districts"] for t in d["townships"]][:townships]
    lines = ["townships:"]
    for code in codes:
        lines.append(f'  "{code}":')
        lines += [
            f'    - {{id: {code}-sms-{i}, channel: sms, phones: ["13800000000"]}}'
            for i in range(groups)
        ]
    (config / "endpoints.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config, codes


def warning(codes: list[str]) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": "overhead-1",
        "issuer": {"unit": "重庆市气象台", "role": "重庆气象局"},
        "approval": {
            "approved_by": "值班",
            "approved_at": (now - timedelta(minutes=5)).isoformat(),
        },
        "category": "natural_disaster",
        "hazard": "暴雨",
        "level": 1,
        "title": "暴雨红色预警信号",
        "content": "短时强降雨。",
        "sent_at": (now - timedelta(minutes=1)).isoformat(),
        "expires_at": (now + timedelta(hours=1)).isoformat(),
        "area": {"districts": sorted({c[:6] for c in codes})},
        "channels": ["sms"],
    }


async def run(townships: int, groups: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        config, codes = make_config(tmp, townships, groups)
        env = {"GATEWAY_TOKEN_PLATFORM": TOKEN, "GATEWAY_STORE": f"sqlite:///{tmp}/g.db"}
        app = build_app(load_settings(config, env))
        tune_gc()  # as `gateway serve` does
        async with TestClient(TestServer(app)) as client:
            body = warning(codes)
            started = time.perf_counter()
            resp = await client.post(
                "/v1/warnings", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
            )
            planned = (await resp.json())["deliveries"]
            accepted = time.perf_counter()
            while True:
                state = await (
                    await client.get(
                        f"/v1/warnings/{body['id']}", headers={"Authorization": f"Bearer {TOKEN}"}
                    )
                ).json()
                sms = state["channels"]["sms"]
                if sms["pending"] == 0:
                    break
                await asyncio.sleep(POLL_S)
            elapsed = time.perf_counter() - started
        print(
            f"{planned:,} stub deliveries settled in {elapsed:.2f} s: "
            f"{elapsed / planned * 1e6:.0f} µs per delivery (delivered {sms['delivered']:,}; "
            f"202 after {accepted - started:.2f} s: planned and stored, some delivered)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def store_floor(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        async with SqliteStore(tmp / "g.db") as store:
            records = [
                DeliveryRecord(f"floor-1/sms-{i}", "floor-1", f"sms-{i}", "sms", 1)
                for i in range(n)
            ]
            await store.append([LedgerDraft("floor-1", Stage.PLANNED, datetime.now(UTC))])
            for chunk in range(0, n, 1000):
                await store.escalate(
                    "floor-1", [], datetime.now(UTC), records[chunk : chunk + 1000], []
                )
            tune_gc()
            started = time.perf_counter()
            for rec in records:
                now = datetime.now(UTC)
                data = {"delivery_id": rec.id, "channel": "sms", "endpoint": rec.endpoint_id}
                detail = {"segments": 2, "phones": 3, "provider": {"provider": "stub"}}
                store.record_soon(
                    [DeliveryUpdate(rec.id, DeliveryState.DELIVERED, 1, detail)],
                    [
                        LedgerDraft(rec.warning_id, Stage.ATTEMPT, now, {**data, "attempt": 1}),
                        LedgerDraft(
                            rec.warning_id,
                            Stage.DELIVERED,
                            now,
                            {**data, "attempt": 1, "detail": detail},
                        ),
                    ],
                )
                if store.lagging():
                    await store.caught_up()
            # Writes commit in order: once this one is durable, all of them are.
            await store.append([LedgerDraft("floor-1", Stage.QUEUED, datetime.now(UTC))])
            elapsed = time.perf_counter() - started
        print(
            f"store alone: {n:,} delivery outcomes durable in {elapsed:.2f} s: "
            f"{elapsed / n * 1e6:.0f} µs per delivery"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--townships", type=int, default=1000)
    p.add_argument("--groups", type=int, default=10, help="stub SMS groups per township")
    args = p.parse_args()
    asyncio.run(run(args.townships, args.groups))
    asyncio.run(store_floor(args.townships * args.groups))


if __name__ == "__main__":
    main()
