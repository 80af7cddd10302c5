"""`gateway drill`: one sample red warning through the real HTTP API, in one process.

The gateway runs on a free loopback port with a throw-away store; the drill posts the sample
warning with a one-off token, then prints the answer, the ledger and whether its chain verifies.
Exits non-zero when the warning is not accepted or the ledger does not verify.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from gateway.app import build_app
from gateway.clients import Client
from gateway.config import load_settings
from gateway.exceptions import LedgerCorrupt
from gateway.ingest import utc_now
from gateway.ledger import verify
from gateway.samples import red_rainstorm_wanzhou
from gateway.store import open_store

DRILL_TIMEOUT = ClientTimeout(total=30)


def run_drill(config_dir: Path | None, *, as_json: bool) -> int:
    """Run the drill in a throw-away directory; the exit code of `gateway drill`."""
    with tempfile.TemporaryDirectory(prefix="gateway-drill-") as tmp:
        db = Path(tmp).resolve() / "drill.db"
        return asyncio.run(_drill(config_dir, db, as_json=as_json))


async def _drill(config_dir: Path | None, db: Path, *, as_json: bool) -> int:
    token = secrets.token_urlsafe(24)
    base = load_settings(config_dir, listen="127.0.0.1:0")
    settings = replace(
        base,
        store_url=f"sqlite:///{db}",
        clients=(Client("drill", token),),
    )
    app = build_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        summary = await _drive(f"http://127.0.0.1:{port}", token)
    finally:
        await runner.cleanup()
    async with open_store(settings.store_url) as store:
        try:
            await verify(store.ledger())
            summary["ledger_ok"] = True
        except LedgerCorrupt:
            summary["ledger_ok"] = False
    ok = summary["accepted"] and summary["ledger_ok"] and summary["lost"] == 0
    if as_json:
        out = {k: summary[k] for k in ("warning_id", "channels", "lost", "ledger_ok")}
        print(json.dumps(out, ensure_ascii=False))
    else:
        _print(summary)
    return 0 if ok else 1


async def _drive(base_url: str, token: str) -> dict[str, Any]:
    wid = f"drill-{utc_now():%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    warning = red_rainstorm_wanzhou(utc_now(), wid)
    headers = {"Authorization": f"Bearer {token}"}
    async with ClientSession(base_url, timeout=DRILL_TIMEOUT, headers=headers) as http:
        async with http.post("/v1/warnings", json=warning) as resp:
            answer = await resp.json()
            status = resp.status
        async with http.get(f"/v1/warnings/{wid}/receipts") as resp:
            receipts = await resp.json() if resp.status == 200 else {"entries": []}
        async with http.get(f"/v1/warnings/{wid}") as resp:
            state = await resp.json() if resp.status == 200 else {}
    return {
        "warning_id": wid,
        "title": warning["title"],
        "http_status": status,
        "answer": answer,
        "accepted": status == 202,
        "status": state.get("status"),
        "channels": state.get("channels", {}),
        "lost": 0,
        "ledger": receipts["entries"],
    }


def _print(s: dict[str, Any]) -> None:
    print(f"drill warning {s['warning_id']}: {s['title']}")
    print(
        f"  POST /v1/warnings -> {s['http_status']} {json.dumps(s['answer'], ensure_ascii=False)}"
    )
    print(f"  status: {s['status']}")
    print("  ledger:")
    for e in s["ledger"]:
        data = json.dumps(e["data"], ensure_ascii=False)
        print(f"    #{e['seq']} +{e['elapsed_ms']:.1f} ms {e['stage']:<10} {data}")
    print(f"  ledger chain: {'ok' if s['ledger_ok'] else 'BROKEN'}")
    print("  channels: none configured in this version (fan-out comes with the next release)")
    print(f"  lost: {s['lost']}")
