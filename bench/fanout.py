"""Fan-out of ONE red warning to every channel, end to end, against loopback sinks.

What it measures. `gateway serve` runs as its own process pinned to CPU 0 (taskset -a), with a
generated config dir (gateway.yaml, endpoints.yaml) and a fresh durable SQLite store in a temp
dir. One city-level red (level 1) 暴雨 warning by 重庆气象局, whose area is the districts of the
first N townships of config/townships.yaml, fans out to
  - MQTT: 2 endpoints per township (display, broadcast) = 2N retained QoS-1 topics on Mosquitto;
  - webhooks: P partners, each serving one of those districts (every 10th the whole city), so each
    gets exactly one delivery, signed with its own whsec_ secret (env BENCH_WHSEC_NNNN);
  - SMS: K SMS groups per township through the `http` provider;
  - email: one endpoint per township over SMTP.
The sinks run in this process on CPU 1: one aiohttp app (the webhook receiver, answering 200
without verifying, and the SMS provider), an aiosmtpd `SMTP` server on loop.create_server, and an
aiomqtt subscriber to `#` on Mosquitto (its own process, also on CPU 1). Each sink stamps every
distinct delivery with time.monotonic() (CLOCK_MONOTONIC, comparable across processes); the POST
goes from a small child process, so the 202 is stamped when it arrives, not when this busy event
loop gets to it. A small warning (one township) warms the gateway up first.

Per channel it prints the time from the 202 to the first and the last delivery seen at its sink,
the rate (deliveries / (last - 202)), and the ratio to a bare client loop against the same sinks:
aiomqtt QoS-1 retained publishes (same client limits as the gateway), aiohttp POSTs (webhook, SMS)
and aiosmtplib on `--email-pool` reused connections, at the gateway's concurrency, without the
gateway (no store, ledger, routing, signing or MIME composing). The loops run in a child process
pinned to CPU 0 while the gateway idles, each channel alone ("bare") and then all four at once
("mixed": the same work the gateway does on its one core); each is the median of
`--bare-repeat` tries. It then checks that nothing is lost: GET /v1/warnings/{id} per-channel
counts with nothing pending or failed (SMS is `sent` until the provider's callbacks, which it
then posts to POST /v1/receipts, timing them, until SMS is all `delivered`); no retries; no
duplicates; a fresh subscriber finds every topic retained; a sample of webhooks verifies with
`standardwebhooks`. It reports the gateway's peak RSS (VmHWM), the CPU the gateway, sinks and
Mosquitto used, and how busy CPU 0 and 1 were, so that other work on the machine shows.
Exit status 1 when anything was lost, duplicated, unverified or not retained.

Targets: every MQTT topic at the subscriber within 1 s of the 202; every channel at least 0.8 of
its bare loop.

Mosquitto runs with `max_queued_messages 0` and `max_inflight_messages 0` (no limit on the
subscriber's queue or on QoS-1 messages in flight to it; with the defaults, 1,000 and 20, a
subscriber that falls behind loses messages or throttles the count) and `persistence false`.
Only the channel settings of the generated gateway.yaml are tuned (the flags below).

    python bench/fanout.py                          # full size: 14,000 deliveries
    python bench/fanout.py --smoke                  # 20 townships, 2 SMS groups, 20 partners
    python bench/fanout.py --sms-concurrency 16     # tune a channel
    python bench/fanout.py --channels mqtt --no-bare   # one channel (diagnosis)
    python bench/fanout.py --profile /tmp/prof      # py-spy the gateway (slows it down)

Several gateways (issue 11; bench/several.py): `--store postgresql` starts a private PostgreSQL
cluster (fsync on) and redis-server (no persistence), runs `gateway db upgrade`, then starts
`--gateways N` gateways with the same config and POSTs to the first; every delivery goes through
the Redis Streams queue, and any gateway's workers send it. Gateway i is pinned to CPU i % 2;
with N >= 2 the sinks, Mosquitto, PostgreSQL and Redis are left unpinned and share both cores
with the gateways (with N = 1 they run on CPU 1, as above). The CPU line adds PostgreSQL (the
postmaster and its backends) and Redis. `--compare` runs sqlite x1, postgresql x1 and
postgresql x2 (without the bare loops), each in its own process, and prints one table: the last
delivery after the 202, deliveries/s, gateway CPU per delivery (utime + stime of every gateway
process from just before the POST until the last delivery) and the scaling from one
PostgreSQL gateway to two. Sinks sharing the cores make that scaling a lower bound.

    python bench/fanout.py --store postgresql --gateways 2
    python bench/fanout.py --compare --rounds 3     # the three configurations, one table
    python bench/fanout.py --store postgresql --pg-statements   # where PostgreSQL spends
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiomqtt
import aiosmtplib
import yaml
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from standardwebhooks import Webhook, WebhookVerificationError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import several

from gateway.channels.email_render import body as email_body
from gateway.channels.email_render import subject as email_subject
from gateway.channels.sms import segments, sms_text
from gateway.clients import token_env
from gateway.values import Notice
from tests.helpers import warning_body
from tests.processes import GatewayProcess, free_port

SELF = Path(__file__).resolve()
ROOT = SELF.parent.parent
CHANNELS = ("mqtt", "webhook", "sms", "email")
TOKEN = "bench-fanout-token-0123456789"
SMS_PROVIDER = "sms-provider"
SMS_PROVIDER_TOKEN = "bench-sms-provider-token-0123456789"
MQTT_PREFIX = "cq/warnings"
SENDER = "重庆市突发事件预警信息发布中心 <warnings@example.org>"
SMS_ANSWER = b'{"provider_ids": ["bench"], "duplicate": false}'
GATEWAY_CPU = 0
SINK_CPU = 1
MQTT_TARGET_S = 1.0
RATIO_TARGET = 0.8
MAX_SAMPLES = 50
POLL_S = 0.25
MIN_WINDOW_S = 0.001
CONTENT = (
    "预计未来3小时内我市大部地区将出现50毫米以上强降雨，局地可达100毫米以上，"
    "请注意防范山洪、地质灾害和城市内涝，减少外出，远离危险区域。"
)


# ---- options and the generated configuration ---------------------------------------------------


@dataclass(frozen=True)
class Options:
    townships: int
    sms_per_township: int
    partners: int
    city_partner_every: int
    mqtt_concurrency: int
    webhook_concurrency: int
    sms_concurrency: int
    email_concurrency: int
    email_pool: int
    receipt_concurrency: int
    sms_receipts: bool
    warmup: bool
    bare: bool
    bare_repeat: int
    timeout: float
    profile: Path | None
    json_out: Path | None
    channels: tuple[str, ...] = CHANNELS
    store: str = "sqlite"
    gateways: int = 1
    claim_idle_s: float | None = None
    """gateway.yaml `redis.claim_idle_s` (None: the gateway's default)."""
    sweep_s: float | None = None
    pg_statements: bool = False

    @property
    def default_layout(self) -> bool:
        """One gateway on SQLite: the original bench, its output unchanged."""
        return self.store == "sqlite" and self.gateways == 1


@dataclass(frozen=True)
class Layout:
    """Which townships, districts and partners the run uses, and what each sink must see."""

    townships: tuple[str, ...]
    districts: tuple[str, ...]
    sms_per_township: int
    partners: tuple[tuple[str, str], ...]
    """(partner id, district code or "all")."""
    secrets: Mapping[str, str]
    """partner id -> whsec_ secret."""

    channels: tuple[str, ...] = CHANNELS
    """The channels enabled in the gateway."""

    def expected(self, townships: Sequence[str] | None = None) -> dict[str, int]:
        """Deliveries per enabled channel of a warning for `townships` (default: all)."""
        area = self.townships if townships is None else townships
        districts = {t[:6] for t in area}
        counts = {
            "mqtt": 2 * len(area),
            "webhook": sum(1 for _, d in self.partners if d == "all" or d in districts),
            "sms": self.sms_per_township * len(area),
            "email": len(area),
        }
        return {c: n for c, n in counts.items() if c in self.channels}

    def sms_delivery_ids(self, warning_id: str) -> list[str]:
        return [
            f"{warning_id}/{t}-sms-{j:02d}"
            for t in self.townships
            for j in range(self.sms_per_township)
        ]


def make_layout(opts: Options) -> Layout:
    data: Any = yaml.safe_load((ROOT / "config" / "townships.yaml").read_text(encoding="utf-8"))
    codes = [str(t["code"]) for d in data["districts"] for t in d["townships"]]
    if opts.townships > len(codes):
        raise SystemExit(f"--townships: config/townships.yaml has only {len(codes)}")
    townships = tuple(codes[: opts.townships])
    districts = tuple(dict.fromkeys(t[:6] for t in townships))
    partners = tuple(
        (
            f"partner-{i:04d}",
            "all" if (i + 1) % opts.city_partner_every == 0 else districts[i % len(districts)],
        )
        for i in range(opts.partners)
    )
    keys = {
        pid: "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode() for pid, _ in partners
    }
    return Layout(townships, districts, opts.sms_per_township, partners, keys, opts.channels)


def secret_env(partner_id: str) -> str:
    return "BENCH_WHSEC_" + partner_id.removeprefix("partner-")


def endpoints_doc(layout: Layout, hook_url: str) -> dict[str, Any]:
    townships: dict[str, list[dict[str, Any]]] = {}
    for t in layout.townships:
        items: list[dict[str, Any]] = [
            {"id": f"{t}-display", "channel": "mqtt", "kind": "display"},
            {"id": f"{t}-broadcast", "channel": "mqtt", "kind": "broadcast"},
        ]
        items += [
            {
                "id": f"{t}-sms-{j:02d}",
                "channel": "sms",
                "group": f"{t} 应急责任人 {j}",
                "phones": [f"138{t[-4:]}{j:04d}", f"139{t[-4:]}{j:04d}"],
            }
            for j in range(layout.sms_per_township)
        ]
        items.append({"id": f"{t}-email", "channel": "email", "to": [f"command-{t}@example.org"]})
        townships[t] = items
    partners = [
        {
            "id": pid,
            "name": f"媒体伙伴 {pid}",
            "url": f"{hook_url}/{pid}",
            "secret_env": secret_env(pid),
            "districts": "all" if district == "all" else [district],
        }
        for pid, district in layout.partners
    ]
    return {"townships": townships, "partners": partners}


def gateway_yaml(opts: Options, sms_url: str, smtp_url: str, mqtt_url: str) -> str:
    """The gateway.yaml of the run; the channel settings are the only tuning done."""
    body = {
        "sms": f"provider: http, url: '{sms_url}', timeout_s: 30,"
        f" concurrency: {opts.sms_concurrency}",
        "email": f"url: '{smtp_url}', timeout_s: 30, concurrency: {opts.email_concurrency},"
        f" pool_size: {opts.email_pool}",
        "mqtt": f"url: '{mqtt_url}', concurrency: {opts.mqtt_concurrency}",
        "webhook": f"timeout_s: 30, concurrency: {opts.webhook_concurrency}",
    }
    lines = [
        "listen: 127.0.0.1:0",
        "clients:",
        "  platform: {}",
        f"  {SMS_PROVIDER}: {{scopes: [sms_callbacks]}}",
        "channels:",
    ]
    for name, settings in body.items():
        lines.append(
            f"  {name}: {{{settings}}}"
            if name in opts.channels
            else f"  {name}: {{enabled: false}}"
        )
    coordination = {"claim_idle_s": opts.claim_idle_s, "sweep_s": opts.sweep_s}
    if any(v is not None for v in coordination.values()):
        items = ", ".join(f"{k}: {v}" for k, v in coordination.items() if v is not None)
        lines.append(f"redis: {{{items}}}")
    return "\n".join([*lines, ""])


def write_config(dest: Path, opts: Options, layout: Layout, urls: Mapping[str, str]) -> Path:
    out = dest / "config"
    out.mkdir()
    for name in ("release_list.yaml", "townships.yaml"):
        shutil.copy(ROOT / "config" / name, out / name)
    text = gateway_yaml(opts, urls["sms"], urls["smtp"], urls["mqtt"])
    (out / "gateway.yaml").write_text(text, encoding="utf-8")
    doc = endpoints_doc(layout, urls["hook"])
    # JSON is YAML; one line per endpoint keeps the file readable.
    (out / "endpoints.yaml").write_text(json.dumps(doc, ensure_ascii=False, indent=1))
    return out


def red_warning(warning_id: str, area: Mapping[str, list[str]]) -> dict[str, Any]:
    return warning_body(
        id=warning_id,
        level=1,
        title="重庆市气象台发布暴雨红色预警信号",
        content=CONTENT,
        area=dict(area),
    )


# ---- Mosquitto -------------------------------------------------------------------------------


class Mosquitto:
    """`mosquitto -c FILE` on a free loopback port (see the module docstring for the config)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 0\n"
            "max_inflight_messages 0\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n",
            encoding="utf-8",
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start and wait until the port accepts connections (blocking)."""
        binary = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
        if binary is None:
            raise SystemExit("mosquitto not found (apt-get install mosquitto)")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        for _ in range(200):
            if self.proc.poll() is not None:
                raise SystemExit(f"mosquitto exited: {self.log.read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                time.sleep(0.05)
                continue
            return
        raise SystemExit("mosquitto did not listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


# ---- the sinks --------------------------------------------------------------------------------


@dataclass
class Tally:
    """Distinct arrivals at one sink whose key contains the current phase's token."""

    token: str = "\0"
    expected: int = 0
    seen: set[str] = field(default_factory=set)
    duplicates: int = 0
    stray: int = 0
    first: float | None = None
    last: float | None = None
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def begin(self, token: str, expected: int) -> None:
        self.token, self.expected = token, expected
        self.seen = set()
        self.duplicates = self.stray = 0
        self.first = self.last = None
        self.complete = asyncio.Event()
        if expected == 0:
            self.complete.set()

    def hit(self, key: str) -> None:
        now = time.monotonic()
        if self.token not in key:
            self.stray += 1
            return
        if key in self.seen:
            self.duplicates += 1
            return
        self.seen.add(key)
        if self.first is None:
            self.first = now
        self.last = now
        if len(self.seen) >= self.expected:
            self.complete.set()


@dataclass(frozen=True)
class WebhookSample:
    partner: str
    body: bytes
    headers: dict[str, str]


class _SmtpCounter:
    """aiosmtpd handler: stamp each message by its X-Delivery-Id header, answer 250."""

    def __init__(self, tally: Tally, delay_s: float = 0.0) -> None:
        self.tally = tally
        self.delay_s = delay_s

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # a slow server (bench/takeover.py)
        raw = envelope.original_content or b""
        start = raw.find(b"X-Delivery-Id: ")
        key = ""
        if start >= 0:
            start += len(b"X-Delivery-Id: ")
            key = raw[start : raw.find(b"\n", start)].strip().decode()
        self.tally.hit(key)
        return "250 2.0.0 OK"


class Sinks:
    """The far side of every channel, in this process."""

    def __init__(self, mqtt_port: int, smtp_delay_s: float = 0.0) -> None:
        self.mqtt_port = mqtt_port
        self.smtp_delay_s = smtp_delay_s
        self.tallies = {c: Tally() for c in CHANNELS}
        self.samples: list[WebhookSample] = []
        self.sample_every = 0
        self.http_port = free_port()
        self.smtp_port = free_port()
        self._runner: web.AppRunner | None = None
        self._smtp: asyncio.Server | None = None
        self._subscriber: asyncio.Task[None] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def smtp_url(self) -> str:
        return f"smtp://127.0.0.1:{self.smtp_port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook/{partner}", self._webhook)
        app.router.add_post("/sms", self._sms)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.http_port, backlog=1024).start()
        loop = asyncio.get_running_loop()
        handler = _SmtpCounter(self.tallies["email"], self.smtp_delay_s)
        self._smtp = await loop.create_server(
            lambda: SMTP(handler, hostname="bench-sink", enable_SMTPUTF8=True, loop=loop),
            "127.0.0.1",
            self.smtp_port,
        )
        ready = asyncio.Event()
        self._subscriber = asyncio.create_task(self._subscribe(ready))
        await asyncio.wait_for(ready.wait(), 10)

    async def close(self) -> None:
        if self._subscriber is not None:
            self._subscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._subscriber
        if self._smtp is not None:
            self._smtp.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def begin(self, token: str, expected: Mapping[str, int], sample_every: int = 0) -> None:
        for channel, tally in self.tallies.items():
            tally.begin(token, expected.get(channel, 0))
        self.samples = []
        self.sample_every = sample_every

    async def wait(self, within: float) -> bool:
        """True when every sink saw all it expects within `within` seconds."""
        waits = [t.complete.wait() for t in self.tallies.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), within)
        except TimeoutError:
            return False
        return True

    async def _webhook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        tally = self.tallies["webhook"]
        key = request.headers.get("webhook-id", "")
        tally.hit(key)
        if (
            self.sample_every
            and tally.token in key
            and (len(tally.seen) - 1) % self.sample_every == 0
            and len(self.samples) < MAX_SAMPLES
        ):
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.samples.append(WebhookSample(request.match_info["partner"], raw, headers))
        return web.Response()

    async def _sms(self, request: web.Request) -> web.Response:
        await request.read()
        self.tallies["sms"].hit(request.headers.get("Idempotency-Key", ""))
        return web.Response(body=SMS_ANSWER, content_type="application/json")

    async def _subscribe(self, ready: asyncio.Event) -> None:
        tally = self.tallies["mqtt"]
        client = aiomqtt.Client("127.0.0.1", self.mqtt_port, identifier="bench-fanout-counter")
        async with client:
            await client.subscribe("#", qos=1)
            ready.set()
            async for message in client.messages:
                tally.hit(message.topic.value)


# ---- process figures from /proc -----------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class CpuWatch:
    """CPU seconds of some processes, and of CPUs 0 and 1 (anyone's), between start and stop.

    Others' work on the machine (a test suite, say) shows as `cpuN busy` above what the
    processes measured here used.
    """

    pids: Mapping[str, int]
    trees: Mapping[str, int] = field(default_factory=dict)
    """Servers counted with their children (PostgreSQL's backends)."""
    begun: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)

    def _now(self) -> dict[str, float]:
        procs = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        procs |= {name: several.tree_cpu_seconds(pid) for name, pid in self.trees.items()}
        return {**procs, **cpus_busy(), "wall": time.monotonic()}

    def start(self) -> None:
        self.begun = self._now()

    def stop(self) -> dict[str, float]:
        self.used = {name: sec - self.begun[name] for name, sec in self._now().items()}
        return self.used


def cpus_busy() -> dict[str, float]:
    """Busy seconds (user, nice, system, irq, softirq, steal) of CPUs 0 and 1 since boot."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name in (f"cpu{GATEWAY_CPU}", f"cpu{SINK_CPU}"):
            v = [int(x) for x in values]
            out[f"{name} busy"] = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf(
                "SC_CLK_TCK"
            )
    return out


def code_state() -> str:
    """The commit, and how many files under gateway/ differ from it (others edit them)."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return f"{sha}" + (f" + {len(dirty)} uncommitted file(s) under gateway/" if dirty else "")


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}"
    )


# ---- the gateway run --------------------------------------------------------------------------


@dataclass
class ChannelResult:
    expected: int
    at_sink: int
    duplicates: int
    stray: int
    first_s: float | None
    last_s: float | None

    @property
    def rate(self) -> float | None:
        if self.last_s is None or self.last_s <= 0 or self.at_sink < self.expected:
            return None
        return self.expected / self.last_s


@dataclass
class GatewayRun:
    warning_id: str
    post_to_202_s: float
    deliveries: int
    channels: dict[str, ChannelResult]
    complete: bool
    settled_s: float | None
    store_counts: dict[str, dict[str, int]]
    retried: int
    cpu: dict[str, float]
    """CPU seconds from the 202 until every sink is complete; `wall` is that span."""
    ingest_cpu_s: float
    window_s: float
    vm_hwm_kib_before: int
    vm_hwm_kib: int
    receipts: dict[str, Any] = field(default_factory=dict)
    webhook_verified: int = 0
    webhook_sampled: int = 0
    webhook_errors: list[str] = field(default_factory=list)
    retained: int = 0
    """Retained messages of the warning a fresh subscriber gets from the broker afterwards."""
    cpu_whole: dict[str, float] = field(default_factory=dict)
    """CPU seconds from just before the POST until every sink is complete (--compare)."""


def results(sinks: Sinks, origin: float) -> dict[str, ChannelResult]:
    out = {}
    for channel, t in sinks.tallies.items():
        out[channel] = ChannelResult(
            expected=t.expected,
            at_sink=len(t.seen),
            duplicates=t.duplicates,
            stray=t.stray,
            first_s=None if t.first is None else t.first - origin,
            last_s=None if t.last is None else t.last - origin,
        )
    return out


class Api:
    """The gateway's HTTP API as the platform (and the SMS provider's callbacks) use it."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.auth = {"Authorization": f"Bearer {TOKEN}"}
        self.provider_auth = {"Authorization": f"Bearer {SMS_PROVIDER_TOKEN}"}
        self._children: set[asyncio.Task[int]] = set()

    async def post_warning(
        self, body: Mapping[str, Any], before: Callable[[], object] | None = None
    ) -> tuple[float, float, dict[str, Any]]:
        """(sent at, 202 at, answer) in time.monotonic(); `before` is called once the child is
        connected, just before it sends.

        The POST goes from a child process: in this process the answer would wait behind the
        sinks' work on the same event loop, and the 202 would be stamped late.
        """
        child = await asyncio.create_subprocess_exec(
            *[sys.executable, str(SELF), "--post-worker", self.base],
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdin is not None
        assert child.stdout is not None
        await child.stdout.readline()  # connected
        if before is not None:
            before()
        child.stdin.write(json.dumps(body, ensure_ascii=False).encode() + b"\n")
        await child.stdin.drain()
        out = json.loads(await child.stdout.readline())
        # Reaped meanwhile: on a busy machine its exit takes long, and the caller times from now.
        reap = asyncio.create_task(child.wait())
        self._children.add(reap)
        reap.add_done_callback(self._children.discard)
        if out["status"] != 202:
            raise SystemExit(f"POST /v1/warnings answered {out['status']}: {out['answer']}")
        return float(out["sent"]), float(out["at"]), out["answer"]

    async def counts(self, warning_id: str) -> dict[str, dict[str, int]]:
        async with self.http.get(f"{self.base}/v1/warnings/{warning_id}", headers=self.auth) as r:
            state: dict[str, Any] = await r.json()
        counts: dict[str, dict[str, int]] = state["channels"]
        return counts

    async def settle(
        self, warning_id: str, within: float, done: Callable[[Mapping[str, int]], bool]
    ) -> tuple[dict[str, dict[str, int]], bool]:
        """The per-channel counts once `done` holds for every channel (or after `within` s)."""
        deadline = time.monotonic() + within
        while True:
            counts = await self.counts(warning_id)
            ok = all(done(c) for c in counts.values())
            if ok or time.monotonic() > deadline:
                return counts, ok
            await asyncio.sleep(POLL_S)

    async def retried(self, warning_id: str) -> int:
        url = f"{self.base}/v1/warnings/{warning_id}/deliveries"
        async with self.http.get(url, headers=self.auth) as r:
            doc: dict[str, Any] = await r.json()
        return sum(1 for d in doc["deliveries"] if d["attempts"] != 1)

    async def sms_receipts(self, ids: Sequence[str], concurrency: int) -> tuple[float, int]:
        """POST a `delivered` callback per SMS delivery; (seconds, non-202 answers)."""
        failures = 0
        queue = iter(ids)

        async def worker() -> None:
            nonlocal failures
            for did in queue:
                at = datetime.now(UTC).isoformat()
                body = json.dumps({"message_id": did, "status": "delivered", "at": at})
                url = f"{self.base}/v1/receipts"
                headers = {**self.provider_auth, "Content-Type": "application/json"}
                async with self.http.post(url, data=body, headers=headers) as r:
                    await r.read()
                    failures += r.status != 202

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - started, failures


def unfinished_free(c: Mapping[str, int]) -> bool:
    return c.get("pending", 0) == 0


def all_delivered(c: Mapping[str, int]) -> bool:
    return c.get("delivered", 0) == c.get("planned", -1)


async def count_retained(port: int, warning_id: str, expected: int) -> int:
    """How many of the warning's topics hold a retained message (a new subscriber's view)."""
    seen: set[str] = set()
    client = aiomqtt.Client("127.0.0.1", port, identifier=f"bench-retained-{warning_id}")
    async with client:
        await client.subscribe(f"{MQTT_PREFIX}/+/+/+/{warning_id}", qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                async for message in client.messages:
                    if message.retain:
                        seen.add(message.topic.value)
                    if len(seen) >= expected:
                        break
    return len(seen)


def verify_samples(sinks: Sinks, layout: Layout, warning_id: str) -> tuple[int, list[str]]:
    verified, errors = 0, []
    for s in sinks.samples:
        try:
            doc = Webhook(layout.secrets[s.partner]).verify(s.body, s.headers)
            if doc["data"]["id"] != warning_id or doc["data"]["level"] != 1:
                raise ValueError(f"unexpected payload {doc['data'].get('id')}")
        except (WebhookVerificationError, ValueError, KeyError) as exc:
            errors.append(f"{s.partner}: {type(exc).__name__}: {exc}")
        else:
            verified += 1
    return verified, errors


async def warm_up(api: Api, sinks: Sinks, layout: Layout, within: float) -> None:
    """A small warning (one township) first: connections open, first-call costs paid."""
    wid = f"warm-{secrets.token_hex(4)}"
    first = [layout.townships[0]]
    sinks.begin(wid, layout.expected(first))
    await api.post_warning(red_warning(wid, {"townships": first}))
    if not await sinks.wait(within):
        raise SystemExit(f"warm-up incomplete: {results(sinks, 0.0)}")
    await api.settle(wid, within, unfinished_free)


@dataclass
class Profiler:
    """`py-spy record` on the gateway from just before the POST until the last sink is complete
    (collapsed stacks of the thread holding the GIL, 1000 Hz: its CPU, not its waits; sampling
    pauses the gateway, so a profiled run is slower)."""

    out: Path | None
    proc: asyncio.subprocess.Process | None = None

    async def start(self, pid: int) -> None:
        if self.out is None:
            return
        spy = shutil.which("py-spy")
        if spy is None:
            raise SystemExit("--profile needs py-spy (pip install py-spy)")
        self.out.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            *[spy, "record", "--pid", str(pid), "--rate", "1000", "--gil", "--format", "raw"],
            *["--output", str(self.out / "gateway.collapsed.txt")],
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.sleep(1.0)  # py-spy attaches

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            await asyncio.wait_for(self.proc.wait(), 30)


async def fan_out(
    api: Api, sinks: Sinks, layout: Layout, opts: Options, watch: CpuWatch
) -> GatewayRun:
    """The measured warning; `watch` names the gateway POSTed to `gateway`."""
    gw_pid = watch.pids["gateway"]
    whole = CpuWatch(watch.pids, watch.trees)
    wid = f"fanout-{secrets.token_hex(4)}"
    expected = layout.expected()
    sinks.begin(wid, expected, sample_every=max(1, expected.get("webhook", 0) // MAX_SAMPLES))
    profiler = Profiler(opts.profile)
    await profiler.start(gw_pid)
    hwm_before = status_kib(gw_pid, "VmHWM")
    cpu_before = cpu_seconds(gw_pid)
    sent, t202, answer = await api.post_warning(
        red_warning(wid, {"districts": [*layout.districts]}), before=whole.start
    )
    watch.start()
    complete = await sinks.wait(opts.timeout)
    # At least 1 ms: in a tiny run everything may arrive before the 202 does.
    window = max(MIN_WINDOW_S, max((t.last or t202) for t in sinks.tallies.values()) - t202)
    cpu = watch.stop()
    cpu_whole = whole.stop()
    ingest_cpu = watch.begun["gateway"] - cpu_before
    await profiler.stop()
    channels = results(sinks, t202)
    counts, settled = await api.settle(wid, opts.timeout, unfinished_free)
    run = GatewayRun(
        warning_id=wid,
        post_to_202_s=t202 - sent,
        deliveries=int(answer["deliveries"]),
        channels=channels,
        complete=complete,
        settled_s=time.monotonic() - t202 if settled else None,
        store_counts=counts,
        retried=await api.retried(wid),
        cpu=cpu,
        ingest_cpu_s=ingest_cpu,
        window_s=window,
        vm_hwm_kib_before=hwm_before,
        vm_hwm_kib=status_kib(gw_pid, "VmHWM"),
        cpu_whole=cpu_whole,
    )
    run.webhook_sampled = len(sinks.samples)
    run.webhook_verified, run.webhook_errors = verify_samples(sinks, layout, wid)
    if "mqtt" in opts.channels:
        run.retained = await count_retained(sinks.mqtt_port, wid, expected["mqtt"])
    if opts.sms_receipts and "sms" in opts.channels:
        took, failures = await api.sms_receipts(
            layout.sms_delivery_ids(wid), opts.receipt_concurrency
        )
        counts, ok = await api.settle(wid, opts.timeout, all_delivered)
        run.store_counts = counts
        run.receipts = {"seconds": took, "non_202": failures, "all_delivered": ok}
        run.vm_hwm_kib = status_kib(gw_pid, "VmHWM")
    return run


# ---- the bare client loops (a child process pinned to the gateway's core) ----------------------


@dataclass(frozen=True)
class BareSpec:
    token: str
    channels: tuple[str, ...]
    counts: dict[str, int]
    concurrency: dict[str, int]
    email_pool: int
    mqtt_port: int
    http_url: str
    smtp_port: int
    warning: dict[str, Any]


def _mqtt_properties(expires_at: datetime) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = max(1, int((expires_at - datetime.now(UTC)).total_seconds()))
    props.PayloadFormatIndicator = 1
    props.ContentType = "application/json"
    return props


async def _workers(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> int:
    """Run `one(i)` for i in range(n) on `concurrency` workers; the number that raised."""
    items = iter(range(n))
    errors = 0

    async def worker() -> None:
        nonlocal errors
        for i in items:
            try:
                await one(i)
            except Exception:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return errors


async def bare_mqtt(spec: BareSpec, client: aiomqtt.Client) -> int:
    notice = Notice.from_document(spec.warning)
    props = _mqtt_properties(notice.expires_at)
    doc = {
        "id": notice.id,
        "level": notice.level,
        "colour": notice.colour,
        "hazard": notice.hazard,
        "title": notice.title,
        "content": notice.content,
        "issuer_unit": notice.issuer_unit,
        "sent_at": notice.sent_at.isoformat(),
        "expires_at": notice.expires_at.isoformat(),
    }

    async def one(i: int) -> None:
        payload = json.dumps({**doc, "delivery_id": f"{spec.token}/{i}"}, ensure_ascii=False)
        topic = f"bench/{spec.token}/{i}"
        await client.publish(topic, payload.encode(), qos=1, retain=True, properties=props)

    return await _workers(spec.counts["mqtt"], spec.concurrency["mqtt"], one)


async def bare_webhook(spec: BareSpec, http: aiohttp.ClientSession) -> int:
    async def one(i: int) -> None:
        did = f"{spec.token}/{i}"
        payload = {"type": "warning.alert", "data": {**spec.warning, "delivery_id": did}}
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "webhook-id": did}
        async with http.post(f"{spec.http_url}/hook/bare", data=body, headers=headers) as r:
            if r.status != 200:
                raise RuntimeError(r.status)

    return await _workers(spec.counts["webhook"], spec.concurrency["webhook"], one)


async def bare_sms(spec: BareSpec, http: aiohttp.ClientSession) -> int:
    parts = segments(sms_text(Notice.from_document(spec.warning)))

    async def one(i: int) -> None:
        did = f"{spec.token}/{i}"
        doc = {"message_id": did, "phones": ["13800000000", "13900000000"], "parts": parts}
        body = json.dumps({**doc, "segments": len(parts)}, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": did}
        async with http.post(f"{spec.http_url}/sms", data=body, headers=headers) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(r.status)

    return await _workers(spec.counts["sms"], spec.concurrency["sms"], one)


def _mail_template(spec: BareSpec) -> bytes:
    notice = Notice.from_document(spec.warning)
    mail = EmailMessage()
    mail["Subject"] = email_subject(notice)
    mail["From"] = SENDER
    mail["To"] = "command@example.org"
    mail["Message-ID"] = "<BENCHIDX@bench>"
    mail["X-Delivery-Id"] = "BENCHIDX"
    mail.set_content(email_body(notice))
    return mail.as_bytes()


async def bare_email(spec: BareSpec) -> int:
    template = _mail_template(spec)
    items = iter(range(spec.counts["email"]))
    errors = 0

    async def connection() -> None:
        nonlocal errors
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=spec.smtp_port, timeout=30)
        await smtp.connect()
        for i in items:
            raw = template.replace(b"BENCHIDX", f"{spec.token}/{i}".encode())
            try:
                await smtp.sendmail("warnings@example.org", ["command@example.org"], raw)
            except aiosmtplib.SMTPException:
                errors += 1
        await smtp.quit()

    await asyncio.gather(*(connection() for _ in range(spec.email_pool)))
    return errors


async def bare_main(spec: BareSpec) -> dict[str, Any]:
    """Run the loops of `spec.channels` at once; when each started and ended (monotonic)."""
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        )
        client = aiomqtt.Client(
            "127.0.0.1",
            spec.mqtt_port,
            protocol=aiomqtt.ProtocolVersion.V5,
            max_inflight_messages=20,
            max_concurrent_outgoing_calls=100,
        )
        client.pending_calls_threshold = 100
        await stack.enter_async_context(client)
        loops: dict[str, Callable[[], Awaitable[int]]] = {
            "mqtt": lambda: bare_mqtt(spec, client),
            "webhook": lambda: bare_webhook(spec, http),
            "sms": lambda: bare_sms(spec, http),
            "email": lambda: bare_email(spec),
        }
        ended: dict[str, float] = {}

        async def timed(name: str) -> int:
            errors = await loops[name]()
            ended[name] = time.monotonic()
            return errors

        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # "go", once the parent took its snapshot
        cpu0 = time.process_time()
        t0 = time.monotonic()
        errors = await asyncio.gather(*(timed(name) for name in spec.channels))
        cpu = time.process_time() - cpu0
    return {
        "t0": t0,
        "ended": ended,
        "errors": dict(zip(spec.channels, errors, strict=True)),
        "cpu_s": cpu,
    }


def post_worker(base: str) -> None:
    """The child of `Api.post_warning`: connect, say so, POST the body read from stdin."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=600)
    conn.connect()
    print("connected", flush=True)
    body = sys.stdin.buffer.readline()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    sent = time.monotonic()
    conn.request("POST", "/v1/warnings", body=body, headers=headers)
    resp = conn.getresponse()
    at = time.monotonic()
    answer = json.loads(resp.read())
    print(json.dumps({"sent": sent, "at": at, "status": resp.status, "answer": answer}))


def bare_worker(raw: str) -> None:
    """The child: pin to the gateway's core, run the loops, print the result as JSON."""
    with contextlib.suppress(OSError, ValueError):
        os.sched_setaffinity(0, {GATEWAY_CPU})
    doc = json.loads(raw)
    doc["channels"] = tuple(doc["channels"])
    spec = BareSpec(**doc)
    print(json.dumps(asyncio.run(bare_main(spec))))


@dataclass
class BareRun:
    mode: str
    channels: dict[str, ChannelResult]
    errors: dict[str, int]
    child_cpu_s: float
    cpu: dict[str, float]
    window_s: float


async def run_bare(
    sinks: Sinks, spec: BareSpec, mode: str, watch: CpuWatch, within: float
) -> BareRun:
    sinks.begin(spec.token, {c: spec.counts[c] for c in spec.channels})
    child = await asyncio.create_subprocess_exec(
        *[sys.executable, str(SELF), "--bare-worker", json.dumps(asdict(spec), default=str)],
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    assert child.stdin is not None
    await asyncio.wait_for(child.stdout.readline(), within)  # connected, about to start
    watch.start()
    child.stdin.write(b"go\n")
    await child.stdin.drain()
    await sinks.wait(within)
    cpu = watch.stop()
    out = await asyncio.wait_for(child.stdout.read(), within)
    if await child.wait() != 0:
        raise SystemExit(f"bare loop ({mode}) exited {child.returncode}")
    doc = json.loads(out)
    t0 = float(doc["t0"])
    last = max((t.last or t0) for t in sinks.tallies.values())
    channels = {c: r for c, r in results(sinks, t0).items() if c in spec.channels}
    window = max(MIN_WINDOW_S, last - t0)
    return BareRun(mode, channels, doc["errors"], float(doc["cpu_s"]), cpu, window)


async def bare_runs(
    sinks: Sinks, layout: Layout, opts: Options, watch: CpuWatch, mqtt_port: int
) -> list[BareRun]:
    expected = layout.expected()
    concurrency = {
        "mqtt": opts.mqtt_concurrency,
        "webhook": opts.webhook_concurrency,
        "sms": opts.sms_concurrency,
        "email": opts.email_pool,
    }
    warning = red_warning("bare-warning", {"districts": [*layout.districts]})
    warning["expires_at"] = (datetime.now(UTC) + timedelta(hours=6)).isoformat()
    runs = []
    plans: list[tuple[str, tuple[str, ...]]] = [(c, (c,)) for c in opts.channels]
    if len(opts.channels) > 1:
        plans.append(("mixed", opts.channels))
    for mode, channels in plans:
        tries = []
        for _ in range(opts.bare_repeat):
            spec = BareSpec(
                token=f"bare-{mode}-{secrets.token_hex(3)}",
                channels=channels,
                counts=expected,
                concurrency=concurrency,
                email_pool=opts.email_pool,
                mqtt_port=mqtt_port,
                http_url=sinks.http_url,
                smtp_port=sinks.smtp_port,
                warning=warning,
            )
            tries.append(await run_bare(sinks, spec, mode, watch, opts.timeout))
        tries.sort(key=lambda r: r.window_s)
        runs.append(tries[len(tries) // 2])  # the median try
    return runs


# ---- the report -------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f}"


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def bare_rates(runs: Sequence[BareRun]) -> tuple[dict[str, float | None], dict[str, float | None]]:
    alone = {r.mode: r.channels[r.mode].rate for r in runs if r.mode in CHANNELS}
    mixed_runs = [r for r in runs if r.mode == "mixed"]
    mixed = {c: res.rate for c, res in mixed_runs[0].channels.items()} if mixed_runs else {}
    return alone, mixed


def enabled(run: GatewayRun) -> list[str]:
    return [c for c in CHANNELS if run.channels[c].expected]


def verdicts(run: GatewayRun, runs: Sequence[BareRun]) -> list[str]:
    alone, mixed = bare_rates(runs)
    mqtt_last = run.channels["mqtt"].last_s
    lines = []
    if run.channels["mqtt"].expected:
        met = mqtt_last is not None and mqtt_last <= MQTT_TARGET_S
        lines.append(
            f"MQTT all {run.channels['mqtt'].expected:,} topics within {MQTT_TARGET_S:g} s of "
            f"the 202: {'MET' if met else 'MISSED'} ({_ms(mqtt_last)} ms)"
        )
    for name, base in (("alone", alone), ("mixed", mixed)):
        if not base:
            continue
        missed = [
            c
            for c in enabled(run)
            if (r := run.channels[c].rate) is None
            or (b := base.get(c)) is None
            or r / b < RATIO_TARGET
        ]
        lines.append(
            f"every channel >= {RATIO_TARGET} of its bare loop ({name}): "
            + ("MET" if not missed else "MISSED by " + ", ".join(missed))
        )
    return lines


def print_report(
    opts: Options, run: GatewayRun, runs: Sequence[BareRun], pinned: bool, argv: Sequence[str]
) -> None:
    alone, mixed = bare_rates(runs)
    print(f"machine: {machine()}")
    print(f"code: {code_state()}")
    print(f"command: python bench/fanout.py {' '.join(argv)}".rstrip())
    config = (
        f"config: mqtt concurrency {opts.mqtt_concurrency}, webhook {opts.webhook_concurrency}, "
        f"sms {opts.sms_concurrency}, email {opts.email_concurrency} (pool {opts.email_pool})"
    )
    if opts.default_layout:
        print(
            f"gateway pinned to CPU {GATEWAY_CPU}, sinks + Mosquitto on CPU {SINK_CPU}: {pinned}; "
            + config
        )
    else:
        print(f"{placement(opts)}: {pinned}; {config}; load average {several.load()}")
    print(
        f"warning {run.warning_id}: {run.deliveries:,} deliveries, POST -> 202 "
        f"{_ms(run.post_to_202_s)} ms; all at the sinks: {run.complete}"
    )
    head = (
        f"{'channel':<8}{'expected':>9}{'at sink':>9}{'dup':>5}{'first ms':>10}{'last ms':>9}"
        f"{'rate/s':>9}{'bare/s':>9}{'ratio':>7}{'mixed/s':>9}{'ratio':>7}  store"
    )
    print(head)
    for c in enabled(run):
        r = run.channels[c]
        store = run.store_counts.get(c, {})
        state = " ".join(f"{k}={v}" for k, v in store.items() if k != "planned" and v)
        print(
            f"{c:<8}{r.expected:>9,}{r.at_sink:>9,}{r.duplicates:>5}{_ms(r.first_s):>10}"
            f"{_ms(r.last_s):>9}{_rate(r.rate):>9}{_rate(alone.get(c)):>9}"
            f"{_ratio(r.rate, alone.get(c)):>7}{_rate(mixed.get(c)):>9}"
            f"{_ratio(r.rate, mixed.get(c)):>7}  {state}"
        )
    total = sum(r.expected for r in run.channels.values())
    mixed_run = [b for b in runs if b.mode == "mixed"]
    mixed_total = total / mixed_run[0].window_s if mixed_run else None
    print(
        f"{'all':<8}{total:>9,}{sum(r.at_sink for r in run.channels.values()):>9,}"
        f"{'':>5}{'':>10}{_ms(run.window_s):>9}{_rate(total / run.window_s):>9}{'':>16}"
        f"{_rate(mixed_total):>9}{_ratio(total / run.window_s, mixed_total):>7}"
    )
    _print_details(run, runs)
    if not opts.default_layout:
        print(per_delivery(run))
    for line in verdicts(run, runs):
        print(line)


def per_delivery(run: GatewayRun) -> str:
    """CPU µs per delivery of each process, from just before the POST to the last delivery."""
    cpu = run.cpu_whole
    total = sum(r.expected for r in run.channels.values()) or 1
    wall = max(cpu["wall"], MIN_WINDOW_S)
    busy = sum(v for k, v in cpu.items() if k.endswith(" busy"))
    procs = sum(v for k, v in cpu.items() if k != "wall" and not k.endswith(" busy"))
    each = ", ".join(
        f"{k} {1e6 * v / total:.0f}" for k, v in cpu.items() if k != "wall" and "busy" not in k
    )
    gateways = sum(v for k, v in cpu.items() if k.startswith("gateway"))
    return (
        f"CPU per delivery (µs) from just before the POST to the last delivery "
        f"({_ms(cpu['wall'])} ms): {each}; all gateways {1e6 * gateways / total:.0f}; "
        f"CPU0+1 busy {100 * busy / wall:.0f}% of 200% (others {100 * (busy - procs) / wall:.0f}%)"
    )


def placement(opts: Options) -> str:
    """Where the processes of a run are (several gateways: see the module docstring)."""
    what = f"store {several.describe(opts.store, opts.gateways)}, POST to gateway 1"
    servers = "Mosquitto" + (", PostgreSQL, Redis" if opts.store == "postgresql" else "")
    if opts.gateways == 1:
        return f"{what}; gateway pinned to CPU {GATEWAY_CPU}, sinks + {servers} on CPU {SINK_CPU}"
    cpus = ", ".join(f"gateway {i + 1} on CPU {i % several.CPUS}" for i in range(opts.gateways))
    return (
        f"{what}; {cpus}; sinks + {servers} unpinned, sharing the cores with the gateways "
        "(so the scaling over one gateway is a lower bound)"
    )


def _cpu_use(cpu: Mapping[str, float], main: str) -> str:
    """`gateway 98%, sinks 12%, ...; CPU0 busy 99% (others 1%)` over cpu["wall"]."""
    wall = max(cpu["wall"], MIN_WINDOW_S)
    procs = ", ".join(
        f"{k} {100 * v / wall:.0f}%" for k, v in cpu.items() if k != "wall" and "busy" not in k
    )
    gw_busy = cpu.get(f"cpu{GATEWAY_CPU} busy", 0.0)
    others = max(0.0, gw_busy - cpu.get(main, 0.0))
    return (
        f"{procs}; CPU{GATEWAY_CPU} busy {100 * gw_busy / wall:.0f}% (others "
        f"{100 * others / wall:.0f}%), CPU{SINK_CPU} busy "
        f"{100 * cpu.get(f'cpu{SINK_CPU} busy', 0.0) / wall:.0f}%"
    )


def _print_details(run: GatewayRun, runs: Sequence[BareRun]) -> None:
    print(
        f"CPU from the 202 until all sinks were complete ({_ms(run.cpu['wall'])} ms): "
        f"{_cpu_use(run.cpu, 'gateway')}; ingest (POST -> 202): gateway "
        f"{run.ingest_cpu_s:.2f} s ({100 * run.ingest_cpu_s / run.post_to_202_s:.0f}%)"
    )
    print(
        f"store settled (nothing pending) {_ms(run.settled_s)} ms after the 202; deliveries "
        f"retried: {run.retried}; gateway VmHWM {run.vm_hwm_kib_before / 1024:.0f} MiB before "
        f"the warning, {run.vm_hwm_kib / 1024:.0f} MiB peak"
    )
    if run.receipts:
        n = run.channels["sms"].expected
        print(
            f"SMS callbacks: {n:,} POST /v1/receipts in {run.receipts['seconds']:.2f} s "
            f"({n / run.receipts['seconds']:,.0f}/s), non-202 {run.receipts['non_202']}, "
            f"all SMS delivered: {run.receipts['all_delivered']}"
        )
    print(
        f"webhooks verified with standardwebhooks: {run.webhook_verified}/{run.webhook_sampled}"
        + (f" errors: {run.webhook_errors[:3]}" if run.webhook_errors else "")
        + f"; retained MQTT topics on the broker afterwards: {run.retained:,}"
    )
    for b in runs:
        errs = sum(b.errors.values())
        cpu = {**b.cpu, "bare loop": b.child_cpu_s}
        print(
            f"bare {b.mode:<8} {_ms(b.window_s):>7} ms, errors {errs}; CPU "
            f"{_cpu_use(cpu, 'bare loop')}"
        )


# ---- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--townships", type=int, default=1000)
    p.add_argument("--sms-per-township", type=int, default=10)
    p.add_argument("--partners", type=int, default=1000, help="webhook partners")
    p.add_argument("--city-partner-every", type=int, default=10, help="every Nth serves all")
    p.add_argument("--mqtt-concurrency", type=int, default=64)
    p.add_argument("--webhook-concurrency", type=int, default=64)
    p.add_argument("--sms-concurrency", type=int, default=32)
    p.add_argument("--email-concurrency", type=int, default=8)
    p.add_argument("--email-pool", type=int, default=4, help="SMTP connections (bare loop too)")
    p.add_argument("--receipt-concurrency", type=int, default=32)
    p.add_argument("--sms-receipts", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--bare", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--bare-repeat", type=int, default=3, help="tries per bare loop (median)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per phase")
    p.add_argument("--profile", type=Path, help="py-spy record the gateway into this dir")
    p.add_argument("--json-out", type=Path, help="write the figures as JSON")
    p.add_argument("--smoke", action="store_true", help="20 townships, 2 SMS each, 20 partners")
    p.add_argument(
        "--channels", default=",".join(CHANNELS), help="enabled channels (diagnosis), e.g. mqtt"
    )
    p.add_argument("--store", choices=several.STORES, default="sqlite")
    p.add_argument("--gateways", type=int, default=1, help="gateway processes (postgresql)")
    p.add_argument(
        "--compare", action="store_true", help="sqlite x1, postgresql x1 and x2: one table"
    )
    p.add_argument("--rounds", type=int, default=1, help="--compare: rounds (median)")
    p.add_argument(
        "--pg-statements", action="store_true", help="print PostgreSQL's costliest statements"
    )
    p.add_argument("--bare-worker", help=argparse.SUPPRESS)
    p.add_argument("--post-worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.bare_worker:
        bare_worker(a.bare_worker)
        raise SystemExit(0)
    if a.post_worker:
        post_worker(a.post_worker)
        raise SystemExit(0)
    if a.compare:
        several.compare(SELF, argv, a.rounds)
        raise SystemExit(0)
    if a.gateways < 1 or (a.gateways > 1 and a.store != "postgresql"):
        raise SystemExit("--gateways: 1, or more with --store postgresql")
    if a.smoke:
        a.townships, a.sms_per_township, a.partners = 20, 2, 20
    return Options(
        a.townships,
        a.sms_per_township,
        a.partners,
        a.city_partner_every,
        a.mqtt_concurrency,
        a.webhook_concurrency,
        a.sms_concurrency,
        a.email_concurrency,
        a.email_pool,
        a.receipt_concurrency,
        a.sms_receipts,
        a.warmup,
        a.bare,
        a.bare_repeat,
        a.timeout,
        a.profile,
        a.json_out,
        tuple(c for c in CHANNELS if c in a.channels.split(",")),
        a.store,
        a.gateways,
        pg_statements=a.pg_statements,
    )


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Rig:
    """What a run starts: Mosquitto, the sinks, the store (and its servers), the gateways."""

    broker: Mosquitto
    sinks: Sinks
    backend: several.Backend
    gateways: list[GatewayProcess]
    pinned: bool
    env: dict[str, str]
    """The gateways' environment (for one-shot commands: `gateway ledger verify`)."""
    cwd: Path

    def pid(self, i: int) -> int:
        proc = self.gateways[i].proc
        assert proc is not None
        return proc.pid

    def watch(self) -> CpuWatch:
        """The gateways (the first is `gateway`, the one POSTed to), sinks and servers."""
        assert self.broker.proc is not None
        gateways = {
            "gateway" if i == 0 else f"gateway {i + 1}": self.pid(i)
            for i in range(len(self.gateways))
        }
        mosquitto = self.broker.proc.pid
        return CpuWatch(
            {**gateways, "sinks": os.getpid(), "mosquitto": mosquitto}, self.backend.pids()
        )


def gateway_env(layout: Layout, broker: Mosquitto, sinks: Sinks) -> dict[str, str]:
    """The environment of every gateway (the store's variables aside)."""
    return {
        "GATEWAY_TOKEN_PLATFORM": TOKEN,
        token_env(SMS_PROVIDER): SMS_PROVIDER_TOKEN,
        "GATEWAY_LOG_LEVEL": "WARNING",
        # The gateway runs from the temp dir: make this checkout importable there.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "GATEWAY_MQTT_URL": broker.url,
        "GATEWAY_SMTP_URL": sinks.smtp_url,
        **{secret_env(pid): key for pid, key in layout.secrets.items()},
    }


@contextlib.asynccontextmanager
async def rig(
    opts: Options, layout: Layout, tmp: Path, smtp_delay_s: float = 0.0
) -> AsyncIterator[Rig]:
    """Start Mosquitto, the sinks, the store and `opts.gateways` gateways; stop them all."""
    broker = Mosquitto(tmp)
    await asyncio.to_thread(broker.start)
    sinks = Sinks(broker.port, smtp_delay_s)
    backend = several.Backend(opts.store, tmp, statements=opts.pg_statements)
    gateways: list[GatewayProcess] = []
    try:
        await sinks.start()
        urls = {
            "sms": sinks.http_url + "/sms",
            "smtp": sinks.smtp_url,
            "mqtt": broker.url,
            "hook": sinks.http_url + "/hook",
        }
        config = write_config(tmp, opts, layout, urls)
        env = gateway_env(layout, broker, sinks) | await asyncio.to_thread(backend.start)
        await asyncio.to_thread(backend.upgrade, env, "--config", str(config))
        gateways, pinned = await asyncio.to_thread(
            several.start_gateways, env, tmp, opts.gateways, "--config", str(config)
        )
        env["GATEWAY_CONFIG"] = str(config)
        yield Rig(broker, sinks, backend, gateways, pinned, env, tmp)
    finally:
        for problem in several.log_problems(gateways):
            print(problem, file=sys.stderr)
        for gw in gateways:
            await asyncio.to_thread(gw.stop)
        await sinks.close()
        broker.stop()
        await asyncio.to_thread(backend.stop)


async def run(opts: Options, argv: Sequence[str]) -> None:
    layout = make_layout(opts)
    with workdir() as tmp:
        async with rig(opts, layout, tmp) as r:
            pinned, sinks = r.pinned, r.sinks
            watch = r.watch()
            timeout = aiohttp.ClientTimeout(total=opts.timeout)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                api = Api(http, r.gateways[0].url)
                if opts.warmup:
                    await warm_up(api, sinks, layout, opts.timeout)
                gw_run = await fan_out(api, sinks, layout, opts, watch)
            statements = await asyncio.to_thread(r.backend.top_statements)
            assert r.broker.proc is not None
            bare_watch = CpuWatch({"sinks": os.getpid(), "mosquitto": r.broker.proc.pid})
            bare = (
                await bare_runs(sinks, layout, opts, bare_watch, r.broker.port) if opts.bare else []
            )
    print_report(opts, gw_run, bare, pinned, argv)
    if statements:
        print("PostgreSQL statements by total time (pg_stat_statements, warm-up included):")
        print("\n".join(statements))
    if opts.json_out is not None:
        doc = {
            "gateway": asdict(gw_run),
            "bare": [asdict(b) for b in bare],
            "machine": machine(),
            "code": code_state(),
            "options": asdict(opts),
        }
        opts.json_out.write_text(json.dumps(doc, indent=1, default=str))
    if problems(gw_run):
        print("NOT OK: " + "; ".join(problems(gw_run)))
        raise SystemExit(1)


def problems(run: GatewayRun) -> list[str]:
    """What makes the run fail (exit 1): anything lost, duplicated, unverified or not retained."""
    out = []
    if not run.complete:
        out.append("a sink did not get every delivery in time")
    for c, counts in run.store_counts.items():
        if counts.get("pending", 0) or counts.get("failed", 0):
            out.append(f"{c}: pending {counts.get('pending', 0)}, failed {counts.get('failed', 0)}")
    if any(r.duplicates for r in run.channels.values()):
        out.append("duplicates at a sink")
    if run.webhook_errors:
        out.append(f"{len(run.webhook_errors)} webhook(s) failed verification")
    if run.retained != run.channels["mqtt"].expected:
        out.append(f"{run.retained} retained MQTT topics of {run.channels['mqtt'].expected}")
    if run.receipts and not run.receipts["all_delivered"]:
        out.append("SMS not all delivered after the callbacks")
    return out


def main() -> None:
    argv = sys.argv[1:]
    opts = parse_args(argv)
    # With several gateways the sinks share both cores with them (see the module docstring).
    if (os.cpu_count() or 1) > 1 and opts.gateways == 1:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {SINK_CPU})
    asyncio.run(run(opts, argv))


if __name__ == "__main__":
    main()
