"""A broker crash erases the boards; how long until they show the current warning again?

What it measures (design.md "Delivery under faults": retained messages are desired state).
`gateway serve` runs as its own process with MQTT as its only channel, on a generated
endpoints.yaml with a display board and a loudspeaker for each of the first N townships of
config/townships.yaml (N = 1,031: every township of Chongqing, 2,062 retained topics), and a
fresh durable SQLite store. One city-level red 暴雨 warning for their districts is posted and
delivered (every topic retained, PUBACKed). Then Mosquitto (its own process, `persistence false`)
is SIGKILLed, so its retained store is gone, and restarted on the same port after `--down`
seconds. From the moment the broker accepts connections again, a fresh subscriber to
`{prefix}/#` counts the distinct topics of the warning it sees (retained on subscribe or
republished live) until all are back: that time is the figure (target: within 2 s).

    python bench/recovery.py                    # 1,031 townships, 3 rounds
    python bench/recovery.py --townships 100 --rounds 1

Exit status 1 when a round does not restore every topic within `--timeout`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fanout import CHANNELS, Mosquitto, Options, make_layout, red_warning, write_config

from tests.processes import GatewayProcess

TOKEN = "bench-recovery-token-0123456789"
PREFIX = "cq/warnings"


def options(townships: int) -> Options:
    return Options(
        townships=townships,
        sms_per_township=0,
        partners=0,
        city_partner_every=10,
        mqtt_concurrency=64,
        webhook_concurrency=1,
        sms_concurrency=1,
        email_concurrency=1,
        email_pool=1,
        receipt_concurrency=1,
        sms_receipts=False,
        warmup=False,
        bare=False,
        bare_repeat=1,
        timeout=60,
        profile=None,
        json_out=None,
        channels=tuple(c for c in CHANNELS if c == "mqtt"),
    )


def api(base: str, path: str, body: object | None = None) -> tuple[int, Any]:
    data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method="POST" if data else "GET")
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, json.loads(resp.read())


def wait_delivered(base: str, warning_id: str, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mqtt = api(base, f"/v1/warnings/{warning_id}")[1]["channels"]["mqtt"]
        if mqtt["delivered"] >= expected:
            return
        time.sleep(0.1)
    raise SystemExit(f"the warning was not delivered within {timeout}s")


async def topics_back(port: int, warning_id: str, expected: int, within: float) -> float | None:
    """Seconds until a fresh subscriber has seen all `expected` topics of the warning."""
    started = time.monotonic()
    seen: set[str] = set()
    while True:  # the broker may refuse the first connections while it starts
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="bench-recovery") as client:
                await client.subscribe(f"{PREFIX}/#", qos=1)
                async with asyncio.timeout(within):
                    async for msg in client.messages:
                        topic = str(msg.topic)
                        if topic.endswith("/" + warning_id) and msg.payload:
                            seen.add(topic)
                            if len(seen) >= expected:
                                return time.monotonic() - started
        except aiomqtt.MqttError:
            if time.monotonic() - started > within:
                return None
            await asyncio.sleep(0.05)
        except TimeoutError:
            return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--townships", type=int, default=1031)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--down", type=float, default=3.0, help="seconds the broker is down")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    opts = options(args.townships)
    layout = make_layout(opts)
    expected = layout.expected()["mqtt"]
    figures: list[float] = []
    failed = 0
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work)
        broker.start()
        urls = {
            "mqtt": broker.url,
            "sms": "http://127.0.0.1:9",
            "smtp": "smtp://127.0.0.1:9",
            "hook": "http://127.0.0.1:9",
        }
        config = write_config(work, opts, layout, urls)
        env = {
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_STORE": f"sqlite:///{work}/gateway.db",
            "GATEWAY_TOKEN_PLATFORM": TOKEN,
            "GATEWAY_LOG_LEVEL": "WARNING",
        }
        gateway = GatewayProcess(env, work).start()
        try:
            warning = red_warning(
                f"bench-recovery-{time.time():.0f}", {"districts": list(layout.districts)}
            )
            status, answer = api(gateway.url, "/v1/warnings", warning)
            assert status == 202, answer
            wait_delivered(gateway.url, warning["id"], expected, args.timeout)
            for r in range(args.rounds):
                assert broker.proc is not None
                broker.proc.kill()  # SIGKILL: the retained store is lost
                broker.proc.wait(timeout=10)
                time.sleep(args.down)
                broker.start()  # same config, same port; returns once it accepts connections
                took = asyncio.run(topics_back(broker.port, warning["id"], expected, args.timeout))
                if took is None:
                    failed += 1
                    print(f"round {r + 1}: NOT all {expected} topics back within {args.timeout}s")
                else:
                    figures.append(took)
                    print(
                        f"round {r + 1}: all {expected} topics retained again "
                        f"{took:.2f}s after the broker's return"
                    )
        finally:
            gateway.stop()
            broker.stop()
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}")
    if figures:
        print(
            f"restored: median {statistics.median(figures):.2f}s, max {max(figures):.2f}s "
            f"over {len(figures)} rounds ({expected} topics; target 2 s)"
        )
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
