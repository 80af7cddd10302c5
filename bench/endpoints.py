"""Memory and start-up against the number of configured endpoints.

For each N, a config directory with N SMS endpoints (responsible persons: one group of one
phone each, spread over all 1,031 townships, in the flow style of the shipped endpoints.yaml)
and the stub SMS provider. `gateway serve` runs as its own process: started cold (no endpoint
book cache, as on a fresh machine) and again warm (the cache the first start wrote), each timed
from the process's start to the first /healthz 200. Then one warning for the whole city to
responsible persons, which reaches every endpoint: the process's RSS is sampled every 50 ms
until every delivery has ended. RSS and peak (VmHWM) come from /proc/PID/status. Each kind of
start runs `--repeat` times (the cold ones each without the cache); the table gives the median
and the range.

    python bench/endpoints.py
    python bench/endpoints.py --counts 0,10000,50000,100000 --repeat 5

`--counts 0` is the floor: command centres only, what every start costs whatever the book.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.book_cache import FILE_NAME
from gateway.config import REPO_CONFIG
from tests.helpers import warning_body
from tests.processes import GatewayProcess

TOKEN = "bench-endpoints-token-0123456789"
MIB = 1024 * 1024
SAMPLE_S = 0.05


def townships() -> list[tuple[str, list[str]]]:
    """(district, its township codes) for all 38 districts."""
    data: Any = yaml.load(
        (REPO_CONFIG / "townships.yaml").read_text(encoding="utf-8"), Loader=yaml.CSafeLoader
    )
    return [(str(d["code"]), [str(t["code"]) for t in d["townships"]]) for d in data["districts"]]


def write_config(out: Path, count: int) -> Path:
    """A config directory whose endpoints.yaml holds `count` SMS endpoints."""
    out.mkdir()
    for name in ("release_list.yaml", "townships.yaml"):
        shutil.copy(REPO_CONFIG / name, out / name)
    (out / "gateway.yaml").write_text(
        "clients:\n  platform: {}\nchannels:\n  sms: {provider: stub}\n"
        "  email: {enabled: false}\n  mqtt: {enabled: false}\n  webhook: {enabled: false}\n",
        encoding="utf-8",
    )
    districts = townships()
    codes = [t for _, ts in districts for t in ts]
    per, extra = divmod(count, len(codes))
    lines = ["townships:" if count else "townships: {}"]
    for i, code in enumerate(codes):
        n = per + (1 if i < extra else 0)
        if n:
            lines.append(f'  "{code}":')
        lines += [
            f"    - {{id: {code}-rp-{j:04d}, channel: sms, group: 责任人{j}, "
            f'phones: ["138{code[-4:]}{j:04d}"], audiences: [responsible_persons]}}'
            for j in range(n)
        ]
    lines.append("command_centres:")
    lines += [f'  "{d}": {{name: 指挥中心{d}, phones: ["137{d[-6:]}00"]}}' for d, _ in districts]
    (out / "endpoints.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def cpu_s(pid: int) -> float:
    """CPU seconds (user and system) that `pid` has used: the start's own work, which the
    wall time shows only on an idle machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid`, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


def api(base: str, path: str, body: object | None = None) -> Any:
    data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method="POST" if data else "GET")
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=300) as resp:
        return json.loads(resp.read())


def start(env: dict[str, str], work: Path) -> tuple[GatewayProcess, float, float]:
    """A started gateway, the seconds to its first /healthz 200 and the CPU seconds it took."""
    gw = GatewayProcess(env, work)
    t0 = time.monotonic()
    gw.start(timeout=600)
    took = time.monotonic() - t0
    assert gw.proc is not None
    return gw, took, cpu_s(gw.proc.pid)


def fan_out(gw: GatewayProcess, count: int, timeout: float) -> dict[str, float]:
    """One city-wide warning to responsible persons; RSS sampled until it is delivered."""
    assert gw.proc is not None
    pid = gw.proc.pid
    peak = [status(pid)["VmRSS"]]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_S):
            peak[0] = max(peak[0], status(pid)["VmRSS"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    districts = [d for d, _ in townships()]
    body = warning_body(
        level=2,
        title="重庆市气象台发布暴雨橙色预警信号",
        area={"districts": districts},
        audience="responsible_persons",
        channels=["sms"],
    )
    t0 = time.monotonic()
    answer = api(gw.url, "/v1/warnings", body)
    accepted = time.monotonic() - t0
    if answer["deliveries"] != count:
        raise SystemExit(f"planned {answer['deliveries']} deliveries, expected {count}")
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        sms = api(gw.url, f"/v1/warnings/{body['id']}")["channels"]["sms"]
        if sms["pending"] == 0:
            break
        time.sleep(0.2)
    else:
        raise SystemExit(f"fan-out of {count} not done in {timeout:.0f}s: {sms}")
    drained = time.monotonic() - t0
    done.set()
    sampler.join()
    after = status(pid)
    return {
        "accepted_s": accepted,
        "drained_s": drained,
        "delivered": sms["delivered"],
        "peak": max(peak[0], after["VmRSS"]),
        "after": after["VmRSS"],
        "hwm": after["VmHWM"],
    }


def measure(count: int, timeout: float, repeat: int) -> dict[str, Any]:
    """Cold and warm starts, `repeat` of each, and one fan-out after the last warm start."""
    with tempfile.TemporaryDirectory(prefix="bench-endpoints-") as tmp:
        work = Path(tmp)
        config = write_config(work / "config", count)
        cache = work / "cache" / FILE_NAME
        env = {
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_STORE": f"sqlite:///{work}/gateway.db",
            "GATEWAY_TOKEN_PLATFORM": TOKEN,
            "GATEWAY_LOG_LEVEL": "WARNING",
        }
        row: dict[str, Any] = {"count": count}
        for kind in ("cold", "warm"):
            times, cpu = [], []
            for i in range(repeat):
                if kind == "cold":
                    cache.unlink(missing_ok=True)
                elif not cache.exists():
                    raise SystemExit("warm start, but the cold one left no cache")
                gw, took, used = start(env, work)
                times.append(took)
                cpu.append(used)
                try:
                    assert gw.proc is not None
                    row[kind] = {"times": times, "cpu": cpu, **status(gw.proc.pid)}
                    if kind == "warm" and i == repeat - 1 and count:
                        row["fanout"] = fan_out(gw, count, timeout)
                finally:
                    gw.stop()
        return row


def _times(times: list[float], cpu: list[float]) -> str:
    return (
        f"{statistics.median(times):.2f} s ({min(times):.2f}-{max(times):.2f}), "
        f"CPU {statistics.median(cpu):.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="10000,50000,100000", help="numbers of endpoints")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for a fan-out")
    parser.add_argument("--repeat", type=int, default=3, help="starts of each kind")
    args = parser.parse_args()
    rows = [measure(int(n), args.timeout, args.repeat) for n in args.counts.split(",")]
    print(f"machine: {platform.machine()}, Python {platform.python_version()}")
    print(f"start to /healthz 200: median of {args.repeat} (min-max), CPU seconds used by then")
    print(
        "| endpoints | cold start | its peak | RSS after | warm start | RSS after "
        "| fan-out peak RSS | RSS after | fan-out per delivery | 202 / all delivered |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cold, warm = r["cold"], r["warm"]
        line = (
            f"| {r['count']:,} | {_times(cold['times'], cold['cpu'])} "
            f"| {cold['VmHWM'] / MIB:.0f} MiB | {cold['VmRSS'] / MIB:.0f} MiB "
            f"| {_times(warm['times'], warm['cpu'])} | {warm['VmRSS'] / MIB:.0f} MiB "
        )
        fan = r.get("fanout")
        if fan is None:
            print(line + "| - | - | - | - |")
            continue
        per = (fan["peak"] - warm["VmRSS"]) / r["count"] / 1024
        print(
            line + f"| {fan['peak'] / MIB:.0f} MiB | {fan['after'] / MIB:.0f} MiB | {per:.1f} KiB "
            f"| {fan['accepted_s']:.2f} / {fan['drained_s']:.1f} s |"
        )


if __name__ == "__main__":
    main()
