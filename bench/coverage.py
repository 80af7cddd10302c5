"""Township coverage at city size: GET /coverage and the cost of one manual receipt.

`gateway serve` runs as its own process pinned to CPU 0 (taskset), on a generated config dir
(the shipped annex 1 and townships.yaml; an endpoints.yaml with K SMS groups per township, stub
SMS provider, so a delivery is `delivered` as soon as it is sent; no partners, no command
centres; coverage deadlines pushed to an hour so no deadline escalation runs) and a fresh
durable SQLite store (WAL, synchronous=FULL) in a temp dir. The client runs on CPU 1.

1. Coverage of a city-wide red 暴雨 warning by 重庆气象局 (all 38 districts = 1,031 townships,
   10 SMS groups each = 10,310 deliveries): the time from the 202 of POST /v1/warnings to the
   first GET /v1/warnings/{id}/coverage answer with counts.covered == 1031 (polling every
   --poll-ms), the same span on the server's clock (received_at to the last covered_at), then
   the latency of one GET /coverage of the complete warning (median/p90 of --gets sequential
   calls). Target: < 50 ms.
2. One manual confirmation (POST /v1/receipts `{warning_id, township, means: "鸣锣", by, at}`)
   against city-wide warnings sent on `channels: ["webhook"]` with the webhook channel off: no
   delivery at all, every township a blind spot, pending (escalated at once, to no one). WALL
   latency per request, sequential (one per township of one warning), then throughput and
   latency at --concurrency over the townships of --warnings-concurrent more warnings (both
   include the group commit's fsync), with the gateway's CPU seconds per receipt from /proc.
   Then, in this process (pinned to one core, after the gateway has stopped), the CPU cost of
   `ReceiptDesk.manual` against a SqliteStore on a real file: a batch of --batch confirmations
   run concurrently, CPU seconds of the whole process (event loop + aiosqlite threads + SQLite,
   fsync waits excluded) per update, and the cost of its parts. Target: < 1 ms CPU per update.

The machine may be shared: for each HTTP stretch the report splits CPU 0's time (from /proc) into
the gateway's CPU, other tasks on that core, interrupts and steal, so a wall figure inflated by a
neighbour shows as such. It also names the commit and how many files under gateway/ differ from
it: the gateway measured is the working tree.

    python bench/coverage.py            # full size (about 20 s)
    python bench/coverage.py --smoke    # 2 districts, a few seconds
    python bench/coverage.py --profile /tmp/prof   # py-spy the gateway in phases 1 and 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.channel_registry import CHANNELS, receipt_channels
from gateway.clients import Client
from gateway.config import REPO_CONFIG
from gateway.endpoints import EndpointBook
from gateway.ledger import LedgerDraft, Stage
from gateway.model import as_json_dict, parse_warning
from gateway.receipts import ManualConfirmation, ReceiptDesk, parse_receipt
from gateway.store.base import CoverageRow, StoredWarning
from gateway.store.sqlite import SqliteStore
from gateway.townships import Registry
from tests.processes import GatewayProcess

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-coverage-token-0123456789"
GATEWAY_CPU = 0
CLIENT_CPU = 1
GET_TARGET_MS = 50.0
RECEIPT_CPU_TARGET_MS = 1.0


@dataclass(frozen=True)
class Options:
    districts: int  # the first N districts of townships.yaml (38 = the whole city)
    groups: int  # SMS groups per township
    poll_ms: float
    gets: int
    warnings_concurrent: int
    concurrency: int
    batch: int
    rounds: int
    timeout: float
    profile: Path | None
    smoke: bool


# ---- config and bodies ------------------------------------------------------------------------


def load_registry() -> Registry:
    return Registry.load(REPO_CONFIG / "townships.yaml")


def endpoints_doc(registry: Registry, districts: Sequence[str], groups: int) -> dict[str, Any]:
    townships: dict[str, list[dict[str, Any]]] = {}
    for d in districts:
        for t in registry.districts[d].townships:
            townships[t] = [
                {
                    "id": f"{t}-sms-{k}",
                    "channel": "sms",
                    "group": f"{registry.name(t)}应急责任人{k}",
                    "phones": [f"138{t[-6:]}{k:02d}"],
                }
                for k in range(groups)
            ]
    return {"townships": townships}


GATEWAY_YAML = """\
listen: 127.0.0.1:0
clients:
  platform: {}
channels:
  sms: {provider: stub, concurrency: 32}
  email: {enabled: false}
  mqtt: {enabled: false}
  webhook: {enabled: false}
coverage: {deadlines_s: {1: 3600, 2: 3600, 3: 3600, 4: 3600}}
"""


def write_config(dest: Path, registry: Registry, districts: Sequence[str], groups: int) -> Path:
    out = dest / "config"
    out.mkdir()
    for name in ("release_list.yaml", "townships.yaml"):
        shutil.copy(REPO_CONFIG / name, out / name)
    (out / "gateway.yaml").write_text(GATEWAY_YAML, encoding="utf-8")
    doc = endpoints_doc(registry, districts, groups)
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=200)
    (out / "endpoints.yaml").write_text(text, encoding="utf-8")
    return out


def city_warning(
    warning_id: str, districts: Sequence[str], channels: list[str] | None = None
) -> dict[str, Any]:
    """A level-1 暴雨 warning by 重庆气象局 (city level) for `districts`."""
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "id": warning_id,
        "issuer": {"unit": "重庆市气象台", "role": "重庆气象局"},
        "approval": {
            "approved_by": "重庆气象局值班领导",
            "approved_at": (now - timedelta(minutes=5)).isoformat(),
            "ref": "渝气预〔2026〕99号",
        },
        "category": "natural_disaster",
        "hazard": "暴雨",
        "level": 1,
        "title": "重庆市气象台发布暴雨红色预警信号",
        "content": "预计未来3小时内全市大部地区降雨量将达100毫米以上，请注意防范山洪、地质灾害。",
        "contact_phone": "023-12121",
        "sent_at": (now - timedelta(minutes=1)).isoformat(),
        "expires_at": (now + timedelta(hours=6)).isoformat(),
        "area": {"districts": list(districts)},
    }
    if channels is not None:
        body["channels"] = channels
    return body


def manual(warning_id: str, township: str) -> dict[str, str]:
    return {
        "warning_id": warning_id,
        "township": township,
        "means": "鸣锣",
        "by": f"{township}网格员",
        "at": datetime.now(UTC).isoformat(),
    }


# ---- figures ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ticks(cpu: int) -> tuple[float, float, float]:
    """(user + system, irq + softirq, steal) seconds of one CPU since boot, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        parts = line.split()
        if parts[0] == f"cpu{cpu}":
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, parts[1:9])
            hz = os.sysconf("SC_CLK_TCK")
            return (user + nice + system) / hz, (irq + softirq) / hz, steal / hz
    return 0.0, 0.0, 0.0


@dataclass
class CoreWatch:
    """Over a stretch: wall seconds, the gateway's CPU seconds, and what else used its core:
    other tasks (other processes, kernel threads such as the ext4 journal), interrupts (loopback
    TCP is processed in softirq) and hypervisor steal. Others share this machine: a busy core
    makes the wall figures worse than the gateway's own CPU would."""

    pid: int
    wall_s: float = 0.0
    gateway_s: float = 0.0
    others_s: float = 0.0
    irq_s: float = 0.0
    steal_s: float = 0.0
    _begun: tuple[float, ...] = ()

    def start(self) -> CoreWatch:
        self._begun = (time.perf_counter(), cpu_seconds(self.pid), *cpu_ticks(GATEWAY_CPU))
        return self

    def stop(self) -> CoreWatch:
        t0, g0, b0, i0, s0 = self._begun
        busy, irq, steal = cpu_ticks(GATEWAY_CPU)
        self.wall_s = time.perf_counter() - t0
        self.gateway_s = cpu_seconds(self.pid) - g0
        self.others_s = max(0.0, busy - b0 - self.gateway_s)
        self.irq_s = irq - i0
        self.steal_s = steal - s0
        return self

    def note(self) -> str:
        return (
            f"of {self.wall_s:.2f} s wall: gateway {self.gateway_s:.2f} s, other tasks "
            f"{self.others_s:.2f} s, irq {self.irq_s:.2f} s, steal {self.steal_s:.2f} s"
        )


def quantile(xs: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of xs, nearest rank."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


@dataclass
class Latencies:
    seconds: list[float] = field(default_factory=list)

    def ms(self, q: float) -> float:
        return quantile(self.seconds, q) * 1000

    def summary(self) -> str:
        return f"{self.ms(0.5):.2f} / {self.ms(0.9):.2f} / {self.ms(0.99):.2f}"


@dataclass
class CoverageRun:
    districts: int = 0
    townships: int = 0
    deliveries: int = 0
    post_ms: float = 0.0
    complete_ms: float = 0.0
    server_ms: float = 0.0
    polls: int = 0
    poll_ms: Latencies = field(default_factory=Latencies)
    gets: Latencies = field(default_factory=Latencies)
    answer_bytes: int = 0
    core: CoreWatch | None = None


@dataclass
class ReceiptRun:
    sequential: Latencies = field(default_factory=Latencies)
    sequential_core: CoreWatch | None = None
    concurrent: Latencies = field(default_factory=Latencies)
    concurrent_n: int = 0
    concurrent_core: CoreWatch | None = None
    refused: int = 0
    covered_after: list[int] = field(default_factory=list)


@dataclass
class CpuRun:
    batch: int = 0
    process_cpu_ms: list[float] = field(default_factory=list)
    loop_cpu_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    parts_us: dict[str, float] = field(default_factory=dict)


# ---- the HTTP side ----------------------------------------------------------------------------


class Api:
    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.auth = {"Authorization": f"Bearer {TOKEN}"}

    async def post_warning(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self.http.post(self.base + "/v1/warnings", json=body, headers=self.auth) as r:
            answer: dict[str, Any] = await r.json()
            if r.status != 202:
                raise SystemExit(f"warning {body['id']} not accepted: {r.status} {answer}")
            return answer

    async def get_raw(self, path: str) -> bytes:
        async with self.http.get(self.base + path, headers=self.auth) as r:
            raw = await r.read()
            if r.status != 200:
                raise SystemExit(f"GET {path}: {r.status} {raw[:300]!r}")
            return raw

    async def get(self, path: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(await self.get_raw(path))
        return doc

    async def post_receipt(self, body: dict[str, str]) -> int:
        async with self.http.post(self.base + "/v1/receipts", json=body, headers=self.auth) as r:
            await r.read()
            return r.status


async def warm_up(api: Api, districts: Sequence[str], within: float) -> None:
    """A one-district warning to coverage, a few GETs and receipts: imports, caches, JIT-less
    first-call costs are paid before anything is measured."""
    wid = f"warm-{os.getpid()}"
    await api.post_warning(city_warning(wid, districts[:1]))
    deadline = time.monotonic() + within
    while (await api.get(f"/v1/warnings/{wid}/coverage"))["counts"]["pending"]:
        if time.monotonic() > deadline:
            raise SystemExit("warm-up warning never fully covered")
        await asyncio.sleep(0.02)
    rid = f"warm-receipts-{os.getpid()}"
    doc = await api.post_warning(city_warning(rid, districts[:1], ["webhook"]))
    for t in doc["blind_spots"][:20]:
        await api.post_receipt(manual(rid, t))
    for _ in range(5):
        await api.get_raw(f"/v1/warnings/{rid}/coverage")


async def coverage_phase(
    api: Api, districts: Sequence[str], opts: Options, pid: int, n_townships: int
) -> CoverageRun:
    run = CoverageRun(districts=len(districts), townships=n_townships)
    wid = f"city-{os.getpid()}-{int(time.time())}"
    core = CoreWatch(pid).start()
    t0 = time.perf_counter()
    answer = await api.post_warning(city_warning(wid, districts))
    t202 = time.perf_counter()
    run.post_ms = (t202 - t0) * 1000
    run.deliveries = int(answer["deliveries"])
    if answer["blind_spots"]:
        raise SystemExit(f"unexpected blind spots: {answer['blind_spots'][:5]}")
    deadline = t202 + opts.timeout
    while True:
        p0 = time.perf_counter()
        doc = await api.get(f"/v1/warnings/{wid}/coverage")
        p1 = time.perf_counter()
        run.polls += 1
        run.poll_ms.seconds.append(p1 - p0)
        if doc["counts"]["covered"] == n_townships:
            run.complete_ms = (p1 - t202) * 1000
            break
        if p1 > deadline:
            raise SystemExit(f"coverage incomplete after {opts.timeout}s: {doc['counts']}")
        await asyncio.sleep(opts.poll_ms / 1000)
    run.core = core.stop()
    state = await api.get(f"/v1/warnings/{wid}")
    received = datetime.fromisoformat(state["received_at"])
    last = max(datetime.fromisoformat(t["covered_at"]) for t in doc["townships"])
    run.server_ms = (last - received).total_seconds() * 1000
    for _ in range(opts.gets):
        g0 = time.perf_counter()
        raw = await api.get_raw(f"/v1/warnings/{wid}/coverage")
        run.gets.seconds.append(time.perf_counter() - g0)
        run.answer_bytes = len(raw)
    return run


async def receipts_phase(
    api: Api, districts: Sequence[str], opts: Options, pid: int, n_townships: int
) -> ReceiptRun:
    run = ReceiptRun()
    stamp = f"{os.getpid()}-{int(time.time())}"
    # Sequential: every township of one warning, one request at a time.
    seq_id = f"receipts-seq-{stamp}"
    doc = await api.post_warning(city_warning(seq_id, districts, ["webhook"]))
    if len(doc["blind_spots"]) != n_townships or doc["deliveries"] != 0:
        raise SystemExit(f"expected {n_townships} blind spots and no delivery: {doc}")
    core = CoreWatch(pid).start()
    for t in doc["blind_spots"]:
        t0 = time.perf_counter()
        status = await api.post_receipt(manual(seq_id, t))
        run.sequential.seconds.append(time.perf_counter() - t0)
        run.refused += status != 202
    run.sequential_core = core.stop()
    # Concurrent: the townships of several warnings, shuffled, over `concurrency` connections.
    ids = [f"receipts-conc-{stamp}-{i}" for i in range(opts.warnings_concurrent)]
    work: list[tuple[str, str]] = []
    for wid in ids:
        doc = await api.post_warning(city_warning(wid, districts, ["webhook"]))
        work.extend((wid, t) for t in doc["blind_spots"])
    random.Random(7).shuffle(work)
    queue = list(reversed(work))

    async def worker() -> None:
        while queue:
            wid, t = queue.pop()
            t0 = time.perf_counter()
            status = await api.post_receipt(manual(wid, t))
            run.concurrent.seconds.append(time.perf_counter() - t0)
            run.refused += status != 202

    core = CoreWatch(pid).start()
    await asyncio.gather(*(worker() for _ in range(opts.concurrency)))
    run.concurrent_core = core.stop()
    run.concurrent_n = len(work)
    for wid in [seq_id, *ids]:
        counts = (await api.get(f"/v1/warnings/{wid}/coverage"))["counts"]
        run.covered_after.append(int(counts["covered"]))
    return run


# ---- the in-process CPU cost --------------------------------------------------------------------


def stored_warning(wid: str, registry: Registry, districts: Sequence[str]) -> StoredWarning:
    """What the gateway stores for a warning sent on webhook only: every township a blind spot
    (listed in its answer, which get_warning reads back with it)."""
    now = datetime.now(UTC)
    raw = json.dumps(city_warning(wid, districts, ["webhook"]), ensure_ascii=False)
    w = parse_warning(raw, registry=registry, now=now)
    townships = registry.expand(districts)
    return StoredWarning(
        id=wid,
        body_hash="0" * 64,
        warning=as_json_dict(w),
        answer={"id": wid, "status": "active", "deliveries": 0, "blind_spots": townships},
        state="active",
        received_at=now,
        expires_at=w.expires_at,
        authorization={"bench": True},
    )


async def per_call_us(n: int, call: Callable[[], Awaitable[object]]) -> float:
    """Mean wall microseconds of `call` run `n` times one after another."""
    t0 = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - t0) / n * 1e6


async def manual_batches(
    store: SqliteStore, registry: Registry, districts: Sequence[str], opts: Options, run: CpuRun
) -> None:
    book = EndpointBook.load(REPO_CONFIG / "endpoints.yaml", registry, {})
    sources = receipt_channels(CHANNELS)
    desk = ReceiptDesk(store, lambda: datetime.now(UTC), book, registry, sources)
    confirmer = Client("bench")
    townships = registry.expand(districts)
    now = datetime.now(UTC)
    for r in range(opts.rounds + 1):  # round 0 is a warm-up
        wid = f"inproc-{r}"
        rows = [CoverageRow(wid, t, True) for t in townships]
        stored = stored_warning(wid, registry, districts)
        await store.accept(stored, [LedgerDraft(wid, Stage.RECEIVED, now)], (), rows)
        batch = [
            ManualConfirmation(
                warning_id=wid,
                township=townships[i % len(townships)],
                means="鸣锣",
                by="网格员",
                at=now,
            )
            for i in range(opts.batch)
        ]
        c0, l0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
        await asyncio.gather(*(desk.manual(c, registry, confirmer) for c in batch))
        c1, l1, w1 = time.process_time(), time.thread_time(), time.perf_counter()
        if r:
            run.process_cpu_ms.append((c1 - c0) * 1000 / opts.batch)
            run.loop_cpu_ms.append((l1 - l0) * 1000 / opts.batch)
            run.wall_ms.append((w1 - w0) * 1000 / opts.batch)


async def cpu_phase(
    tmp: Path, registry: Registry, districts: Sequence[str], opts: Options
) -> CpuRun:
    run = CpuRun(batch=opts.batch)
    async with SqliteStore(tmp / "inprocess.db") as store:
        await manual_batches(store, registry, districts, opts, run)
        # The parts of one manual(), each alone, one call after another.
        wid = "inproc-1"
        stored = await store.get_warning(wid)
        assert stored is not None
        area = stored.warning["area"]
        codes = [*area.get("districts", []), *area.get("townships", [])]
        body = json.dumps(manual(wid, registry.expand(codes)[0]), ensure_ascii=False).encode()
        columns = [json.dumps(x, ensure_ascii=False) for x in (stored.warning, stored.answer)]
        now = datetime.now(UTC)
        n = 1000

        async def parse() -> object:
            return parse_receipt(body, now)

        async def get_warning() -> object:
            return await store.get_warning(wid)

        async def loads() -> object:
            return [json.loads(c) for c in columns]

        async def expand() -> object:
            return registry.expand(codes)

        run.parts_us = {
            "parse_receipt(body) [HTTP only]": await per_call_us(n, parse),
            "store.get_warning (wall: thread hop, SELECT, decode)": await per_call_us(
                n, get_warning
            ),
            f"  json.loads of warning + answer ({sum(map(len, columns)):,} chars)": (
                await per_call_us(n, loads)
            ),
            f"registry.expand(area) ({len(codes)} codes → sorted list)": await per_call_us(
                n, expand
            ),
        }
    return run


# ---- report -------------------------------------------------------------------------------------


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"nproc {os.cpu_count()}, {model}, Linux {platform.release()}, "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}"
    )


def code_state() -> str:
    """The commit, and how many files under gateway/ differ from it (others edit them)."""
    try:
        git = ["git", "-C", str(ROOT)]
        sha = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "gateway"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return sha + (f" + {len(dirty)} uncommitted file(s) under gateway/" if dirty else "")


def fs_type(path: Path) -> str:
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            if str(path).startswith(mnt) and len(mnt) > len(best):
                best, kind = mnt, parts[2]
    return f"{kind} ({best})"


def verdict(value: float, target: float) -> str:
    return f"target < {target:g} ms: {'ok' if value < target else 'MISSED'}"


def table(opts: Options, cov: CoverageRun, rec: ReceiptRun, cpu: CpuRun) -> list[tuple[str, ...]]:
    assert cov.core is not None
    assert rec.sequential_core is not None
    assert rec.concurrent_core is not None
    n_seq = len(rec.sequential.seconds)
    seq, conc = rec.sequential_core, rec.concurrent_core
    get_p50 = cov.gets.ms(0.5)
    med_cpu = statistics.median(cpu.process_cpu_ms)
    rows: list[tuple[str, ...]] = [
        ("1. city-wide warning", "", ""),
        ("POST /v1/warnings → 202 (wall)", f"{cov.post_ms:.0f} ms", f"{cov.deliveries} deliveries"),
        (
            "202 → GET /coverage covered == all (wall)",
            f"{cov.complete_ms:,.0f} ms",
            f"{cov.polls} polls, {opts.poll_ms:g} ms apart (poll p50 {cov.poll_ms.ms(0.5):.1f} ms)",
        ),
        ("received_at → last covered_at (server clock)", f"{cov.server_ms:,.0f} ms", ""),
        (f"CPU {GATEWAY_CPU}, POST → complete", "", cov.core.note()),
        (
            f"GET /coverage once complete, {opts.gets} calls (wall)",
            cov.gets.summary() + " ms",
            f"p50/p90/p99, {cov.answer_bytes:,} B; {verdict(get_p50, GET_TARGET_MS)}",
        ),
        ("2. manual receipt (POST /v1/receipts)", "", ""),
        (
            f"sequential, {n_seq} requests (WALL, 1 commit+fsync each)",
            rec.sequential.summary() + " ms",
            f"p50/p90/p99; gateway CPU {seq.gateway_s * 1000 / n_seq:.2f} ms/receipt",
        ),
        (
            f"concurrency {opts.concurrency}, {rec.concurrent_n} requests (WALL)",
            rec.concurrent.summary() + " ms",
            f"p50/p90/p99; {rec.concurrent_n / conc.wall_s:,.0f} receipts/s; "
            f"gateway CPU {conc.gateway_s * 1000 / rec.concurrent_n:.2f} ms/receipt",
        ),
        (f"CPU {GATEWAY_CPU}, sequential", "", seq.note()),
        (f"CPU {GATEWAY_CPU}, concurrent", "", conc.note()),
        (
            f"ReceiptDesk.manual in-process, batch {cpu.batch}: CPU",
            f"{med_cpu:.3f} ms",
            f"per update, all threads, median of {len(cpu.process_cpu_ms)}; "
            f"{verdict(med_cpu, RECEIPT_CPU_TARGET_MS)}",
        ),
        (
            "  of which event-loop thread CPU",
            f"{statistics.median(cpu.loop_cpu_ms):.3f} ms",
            "per update (blocks every other request)",
        ),
        (
            "  wall (group commits incl. fsync)",
            f"{statistics.median(cpu.wall_ms):.3f} ms",
            "per update, amortised over the batch",
        ),
    ]
    rows += [
        (f"  part: {k}", f"{us / 1000:.3f} ms", "per call, alone") for k, us in cpu.parts_us.items()
    ]
    return rows


def print_report(
    opts: Options,
    cov: CoverageRun,
    rec: ReceiptRun,
    cpu: CpuRun,
    pinned: bool,
    store_fs: str,
) -> None:
    rows = table(opts, cov, rec, cpu)
    print(
        f"coverage bench: {cov.districts} districts, {cov.townships} townships, "
        f"{opts.groups} stub-SMS groups each; gateway pinned to CPU {GATEWAY_CPU}: {pinned}"
    )
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    print(f"code: {code_state()}; store: SQLite WAL synchronous=FULL on {store_fs}")
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for what, value, note in rows:
        if not value and not note:
            print(what)
        else:
            print(f"  {what:<{w0}}  {value:>{w1}}  {note}".rstrip())
    problems = []
    if rec.refused:
        problems.append(f"{rec.refused} receipts not answered 202")
    if any(c != cov.townships for c in rec.covered_after):
        problems.append(f"coverage after receipts: {rec.covered_after} (expected all)")
    for p in problems:
        print("PROBLEM:", p)
    if problems:
        raise SystemExit(1)


# ---- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="a tiny run: 2 districts, few calls")
    p.add_argument("--districts", type=int, default=38, help="first N districts (38 = city)")
    p.add_argument("--groups", type=int, default=10, help="SMS groups per township")
    p.add_argument("--poll-ms", type=float, default=10.0, help="sleep between coverage polls")
    p.add_argument("--gets", type=int, default=50, help="GET /coverage calls once complete")
    p.add_argument("--warnings-concurrent", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--batch", type=int, default=1000, help="in-process concurrent batch")
    p.add_argument("--rounds", type=int, default=5, help="in-process batches (median)")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--profile", type=Path, default=None, help="py-spy the gateway into DIR")
    a = p.parse_args(argv)
    if a.smoke:
        return Options(2, 2, a.poll_ms, 10, 1, 8, 100, 2, 30.0, a.profile, True)
    return Options(
        a.districts,
        a.groups,
        a.poll_ms,
        a.gets,
        a.warnings_concurrent,
        a.concurrency,
        a.batch,
        a.rounds,
        a.timeout,
        a.profile,
        False,
    )


def pin(pid: int, cpu: int) -> bool:
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return False
    subprocess.run(
        ["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, capture_output=True
    )
    return True


def set_affinity(cpu: int) -> None:
    if (os.cpu_count() or 1) > 1:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-coverage-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def profiled(out: Path | None, pid: int, name: str) -> Iterator[None]:
    """`py-spy record` on the gateway for the block (raw collapsed stacks, 100 Hz)."""
    if out is None:
        yield
        return
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    out.mkdir(parents=True, exist_ok=True)
    cmd = [spy, "record", "--pid", str(pid), "--rate", "100", "--format", "raw"]
    proc = subprocess.Popen(
        [*cmd, "--output", str(out / f"{name}.collapsed.txt")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)


async def http_phases(
    gw: GatewayProcess, districts: Sequence[str], opts: Options, n: int
) -> tuple[CoverageRun, ReceiptRun]:
    assert gw.proc is not None
    pid = gw.proc.pid
    timeout = aiohttp.ClientTimeout(total=opts.timeout)
    conn = aiohttp.TCPConnector(limit=max(opts.concurrency, 1))
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as http:
        api = Api(http, gw.url)
        await warm_up(api, districts, opts.timeout)
        with profiled(opts.profile, pid, "coverage"):
            cov = await coverage_phase(api, districts, opts, pid, n)
        with profiled(opts.profile, pid, "receipts"):
            rec = await receipts_phase(api, districts, opts, pid, n)
    return cov, rec


def main() -> None:
    opts = parse_args(sys.argv[1:])
    registry = load_registry()
    districts = list(registry.districts)[: opts.districts]
    n = len(registry.expand(districts))
    with workdir() as tmp:
        config = write_config(tmp, registry, districts, opts.groups)
        env = {
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_TOKEN_PLATFORM": TOKEN,
            "GATEWAY_STORE": f"sqlite:///{tmp}/gateway.db",
            "GATEWAY_LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        gw = GatewayProcess(env, tmp)
        gw.start()
        try:
            assert gw.proc is not None
            pinned = pin(gw.proc.pid, GATEWAY_CPU)
            set_affinity(CLIENT_CPU)
            cov, rec = asyncio.run(http_phases(gw, districts, opts, n))
        except BaseException:
            print(gw.output()[-3000:], file=sys.stderr)
            raise
        finally:
            gw.stop()
        # The in-process cost: one core, as the gateway has.
        set_affinity(GATEWAY_CPU)
        cpu = asyncio.run(cpu_phase(tmp, registry, districts, opts))
        store_fs = fs_type(tmp)
    print_report(opts, cov, rec, cpu, pinned, store_fs)


if __name__ == "__main__":
    main()
