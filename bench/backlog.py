"""A red warning behind a blue backlog while one partner hangs: how soon is the red out?

What it measures (design.md "Delivery under faults": a slow or hanging endpoint holds at most
`per_endpoint` of its channel's workers; a red warning never waits behind a blue one).
`gateway serve` runs as its own process with a generated endpoints.yaml: K SMS groups for each
of the first N townships (stub SMS provider, so nothing but the gateway's own work counts) and
two city-wide media partners served by this process: one answers 200 at once, the other never
answers (its requests hang until the gateway's 30 s timeout). A blue warning for every township
queues N x K SMS deliveries (default 1,031 x 48 = 49,488) and both partners; right after its
202 a red warning for one district follows. The figures come from the red's own ledger
(GET /v1/warnings/{id}/receipts, `elapsed_ms` since its `received` entry): its first and last
delivery, the partner that hangs excepted (target: last within 1 s), and how long the blue
backlog took to drain.

    python bench/backlog.py
    python bench/backlog.py --townships 200 --groups 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import warning_body
from tests.processes import GatewayProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-backlog-token-0123456789"
SECRET = "whsec_" + "YmVuY2gtYmFja2xvZy1zZWNyZXQtMDEyMzQ1Njc4OQ=="


def serve_partners(port: int) -> threading.Thread:
    """/ok answers 200 at once, /hang never answers (the gateway's timeout ends it)."""

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response(text="late")

    def run() -> None:
        app = web.Application()
        app.router.add_post("/ok", ok)
        app.router.add_post("/hang", hang)
        web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=False)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def write_config(work: Path, townships: list[str], groups: int, hook: str) -> Path:
    out = work / "config"
    out.mkdir()
    for name in ("release_list.yaml", "townships.yaml"):
        (out / name).write_text((ROOT / "config" / name).read_text(encoding="utf-8"))
    (out / "gateway.yaml").write_text(
        "listen: 127.0.0.1:0\nclients:\n  platform: {}\nchannels:\n"
        "  sms: {provider: stub, concurrency: 32}\n"
        "  email: {enabled: false}\n  mqtt: {enabled: false}\n"
        "  webhook: {timeout_s: 30, concurrency: 64, per_endpoint: 4}\n",
        encoding="utf-8",
    )
    doc: dict[str, Any] = {
        "townships": {
            t: [
                {
                    "id": f"{t}-sms-{j:02d}",
                    "channel": "sms",
                    "group": f"{t} {j}",
                    "phones": [f"138{t[-4:]}{j:04d}"],
                }
                for j in range(groups)
            ]
            for t in townships
        },
        "partners": [
            {
                "id": "partner-ok",
                "name": "ok",
                "url": f"{hook}/ok",
                "secret_env": "BENCH_WHSEC",
                "districts": "all",
            },
            {
                "id": "partner-hang",
                "name": "hang",
                "url": f"{hook}/hang",
                "secret_env": "BENCH_WHSEC",
                "districts": "all",
            },
        ],
    }
    (out / "endpoints.yaml").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return out


def api(base: str, path: str, body: object | None = None) -> Any:
    data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method="POST" if data else "GET")
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--townships", type=int, default=1031)
    parser.add_argument("--groups", type=int, default=48, help="SMS groups per township")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    data: Any = yaml.safe_load((ROOT / "config" / "townships.yaml").read_text(encoding="utf-8"))
    codes = [str(t["code"]) for d in data["districts"] for t in d["townships"]][: args.townships]
    districts = list(dict.fromkeys(c[:6] for c in codes))
    port = free_port()
    serve_partners(port)
    with tempfile.TemporaryDirectory(prefix="bench-backlog-") as tmp:
        work = Path(tmp)
        config = write_config(work, codes, args.groups, f"http://127.0.0.1:{port}")
        env = {
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_STORE": f"sqlite:///{work}/gateway.db",
            "GATEWAY_TOKEN_PLATFORM": TOKEN,
            "BENCH_WHSEC": SECRET,
            "GATEWAY_LOG_LEVEL": "WARNING",
        }
        gw = GatewayProcess(env, work).start(timeout=180)  # 50,000 endpoints to load
        try:
            blue = warning_body(
                level=4, title="重庆市气象台发布暴雨蓝色预警信号", area={"districts": districts}
            )
            t0 = time.monotonic()
            blue_answer = api(gw.url, "/v1/warnings", blue)
            blue_202 = time.monotonic() - t0
            red = warning_body(
                level=1,
                title="重庆市气象台发布暴雨红色预警信号",
                area={"districts": [districts[-1]]},
            )
            red_answer = api(gw.url, "/v1/warnings", red)
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                sms = api(gw.url, f"/v1/warnings/{blue['id']}")["channels"]["sms"]
                if sms["pending"] == 0:
                    break
                time.sleep(0.2)
            drained = time.monotonic() - t0
            entries = api(gw.url, f"/v1/warnings/{red['id']}/receipts")["entries"]
        finally:
            gw.stop()
    done = [
        e["elapsed_ms"]
        for e in entries
        if e["stage"] == "delivered" and e["data"].get("endpoint") != "partner-hang"
    ]
    expected = red_answer["deliveries"] - 1
    print(f"machine: {platform.machine()}, Python {platform.python_version()}")
    print(
        f"blue: {blue_answer['deliveries']} deliveries, 202 after {blue_202:.2f}s, "
        f"drained {drained:.1f}s after its POST"
    )
    print(
        f"red: {expected} deliveries besides the hanging partner, {len(done)} delivered; "
        f"first {min(done) / 1000:.3f}s, last {max(done) / 1000:.3f}s after its receipt "
        "(target: last within 1 s)"
    )
    raise SystemExit(0 if len(done) == expected else 1)


if __name__ == "__main__":
    main()
