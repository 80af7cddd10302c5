"""The store and the processes of a bench run: SQLite in one process, or several `gateway serve`
processes on a private PostgreSQL cluster and redis-server (issue 11), and `--compare`, the driver
that runs bench/fanout.py in the three configurations and prints one table.

`Backend` starts the servers a store needs (none for SQLite; for PostgreSQL a cluster of its own
by initdb/pg_ctl as `postgres`, with fsync on, and a redis-server without persistence, both as
tests/store_servers.py and tests/redis_server.py start them), gives the environment the gateways
need and runs `gateway db upgrade`. `start_gateways` starts N gateways with one environment and
pins gateway i to CPU i % 2. CPU time comes from /proc (utime + stime); a server's includes its
children's (PostgreSQL's backends).

    python bench/fanout.py --compare               # sqlite x1, postgresql x1, postgresql x2
    python bench/fanout.py --compare --smoke --rounds 3
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.processes import GatewayProcess, run_gateway
from tests.redis_server import RedisServer
from tests.store_servers import PgCluster

STORES = ("sqlite", "postgresql")
DATABASE = "gw"
CPUS = 2
"""The benches assume two cores: gateway i is pinned to CPU i % CPUS."""
UPGRADE_TIMEOUT_S = 120.0
LOG_PROBLEMS = ("Traceback", " ERROR ", "CRITICAL")
LOG_EXPECTED = ("no command centre configured",)
"""Errors the bench's layout causes by design (townships without a command centre)."""
COMPARE_CONFIGS = (("sqlite", 1), ("postgresql", 1), ("postgresql", 2))


def describe(store: str, gateways: int) -> str:
    """`sqlite x1`, `postgresql+redis x2`."""
    return f"{'postgresql+redis' if store == 'postgresql' else store} x{gateways}"


# ---- CPU time from /proc -------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
            out.setdefault(ppid, []).append(int(entry.name))
    return out


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid`, its live descendants and the children it reaped (a
    backend that exited between two readings moves from the one to the other)."""
    tick = os.sysconf("SC_CLK_TCK")
    kids = _children()
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            f = _stat(p)
        except OSError:
            continue
        total += int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if p == pid else 0)
        todo += kids.get(p, [])
    return total / tick


# ---- the store and the gateways ------------------------------------------------------------


@dataclass
class Backend:
    """The store of a run; `start` gives the gateways' environment (a blocking call)."""

    store: str
    workdir: Path
    statements: bool = False
    """Load pg_stat_statements (for `top_statements`)."""
    pg: PgCluster | None = None
    redis: RedisServer | None = None

    def start(self) -> dict[str, str]:
        if self.store == "sqlite":
            return {"GATEWAY_STORE": f"sqlite:///{self.workdir}/gateway.db"}
        if self.store != "postgresql":
            raise SystemExit(f"--store: one of {', '.join(STORES)}")
        # fsync on: as durable as the SQLite store (synchronous=FULL) it is compared with.
        self.pg = PgCluster(fsync=True).init().start()
        if self.statements:
            self.pg.admin("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            self.pg.stop()
            self.pg.start()
        self.pg.create_database(DATABASE, template=None)
        if self.statements:
            with psycopg.connect(self.pg.url(DATABASE), autocommit=True) as conn:
                conn.execute(b"CREATE EXTENSION pg_stat_statements")
        self.redis = RedisServer().start()
        return {"GATEWAY_STORE": self.pg.url(DATABASE), "GATEWAY_REDIS_URL": self.redis.url()}

    def upgrade(self, env: Mapping[str, str], *args: str) -> None:
        """`gateway db upgrade` (PostgreSQL only: SQLite creates its schema on open)."""
        if self.store != "postgresql":
            return
        done = run_gateway(
            "db", "upgrade", *args, env=env, cwd=self.workdir, timeout=UPGRADE_TIMEOUT_S
        )
        if done.returncode != 0:
            raise SystemExit(f"gateway db upgrade failed: {done.stdout}{done.stderr}")

    def top_statements(self, n: int = 12) -> list[str]:
        """The `n` statements that took the most time (pg_stat_statements), one line each."""
        if self.pg is None or not self.statements:
            return []
        sql = (
            "SELECT calls, rows, total_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'),"
            " 110) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT %s"
        )
        with psycopg.connect(self.pg.url(DATABASE), autocommit=True) as conn:
            found = conn.execute(sql.encode(), (n,)).fetchall()
        return [
            f"{ms:>9,.0f} ms {calls:>7,} calls {rows:>8,} rows  {query}"
            for calls, rows, ms, query in found
        ]

    def pids(self) -> dict[str, int]:
        """The servers' root processes: PostgreSQL's postmaster, redis-server."""
        out = {}
        if self.pg is not None:
            out["postgresql"] = int((self.pg.data / "postmaster.pid").read_text().split()[0])
        if self.redis is not None and self.redis.proc is not None:
            out["redis"] = self.redis.proc.pid
        return out

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.destroy()
        if self.pg is not None:
            self.pg.destroy()


def start_gateways(
    env: Mapping[str, str], cwd: Path, n: int, *args: str
) -> tuple[list[GatewayProcess], bool]:
    """`n` gateways with one environment, gateway i pinned to CPU i % 2 (all its threads, by
    taskset -a); (the gateways, whether they are pinned). Blocking."""
    gateways: list[GatewayProcess] = []
    try:
        for _ in range(n):
            gateways.append(GatewayProcess(env, cwd, *args))
            gateways[-1].start(timeout=60)
    except BaseException:
        for gw in gateways:
            gw.stop()
        raise
    pinned = all(pin(gw, i % CPUS) for i, gw in enumerate(gateways))
    return gateways, pinned


def pin(gw: GatewayProcess, cpu: int) -> bool:
    if gw.proc is None or (os.cpu_count() or 1) < CPUS:
        return False
    cmd = ["taskset", "-a", "-p", "-c", str(cpu), str(gw.proc.pid)]
    try:
        subprocess.run(cmd, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


def log_problems(gateways: Sequence[GatewayProcess], most: int = 40) -> list[str]:
    """Tracebacks and errors in the gateways' logs (the first `most` lines of each)."""
    out = []
    for i, gw in enumerate(gateways, 1):
        lines = gw.output().splitlines()
        hits = [
            n
            for n, line in enumerate(lines)
            if any(p in line for p in LOG_PROBLEMS) and not any(e in line for e in LOG_EXPECTED)
        ]
        if hits:
            out.append(f"gateway {i} log ({gw.log}):")
            out += lines[hits[0] : hits[0] + most]
    return out


def load() -> str:
    """The load averages (1, 5, 15 minutes) from /proc/loadavg."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---- --compare -----------------------------------------------------------------------------


@dataclass
class Figures:
    """One fan-out run's figures, from its --json-out document."""

    config: str
    ok: bool
    deliveries: int
    last_s: float
    """From the 202 to the last delivery at the sinks."""
    post_to_202_s: float
    cpu: dict[str, float]
    """CPU seconds from just before the POST until every sink was complete."""
    load: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.deliveries / self.last_s

    @property
    def end_to_end(self) -> float:
        """Deliveries per second from the POST to the last delivery (ingest included)."""
        return self.deliveries / (self.post_to_202_s + self.last_s)

    def us(self, *names: str) -> float:
        """µs of CPU per delivery of the processes whose names start with one of `names`."""
        sec = sum(v for k, v in self.cpu.items() if k.startswith(names) and "busy" not in k)
        return 1e6 * sec / self.deliveries


def figures(config: str, doc: Mapping[str, Any], ok: bool) -> Figures:
    run = doc["gateway"]
    total = sum(int(c["expected"]) for c in run["channels"].values())
    return Figures(
        config,
        ok,
        total,
        float(run["window_s"]),
        float(run["post_to_202_s"]),
        dict(run["cpu_whole"]),
    )


def _passthrough(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--compare" or a.startswith("--rounds="):
            continue
        elif a == "--rounds":
            skip = True
        elif a.startswith(("--store", "--gateways", "--json-out")):
            raise SystemExit(f"--compare chooses {a.split('=')[0]} itself")
        else:
            out.append(a)
    return out


def compare(script: Path, argv: Sequence[str], rounds: int) -> None:
    """Run `script` (bench/fanout.py) in each of COMPARE_CONFIGS, `rounds` times interleaved,
    each in its own process without the bare loops; print each report, then one table of the
    medians (by last delivery). Exit 1 if a run lost or duplicated anything."""
    base = _passthrough(argv)
    print(f"load average at the start: {load()}", flush=True)
    runs: dict[str, list[Figures]] = {describe(s, n): [] for s, n in COMPARE_CONFIGS}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        for r in range(rounds):
            for store, n in COMPARE_CONFIGS:
                config = describe(store, n)
                out = Path(tmp) / f"{store}-{n}-{r}.json"
                cmd = [sys.executable, str(script), *base, "--no-bare"]
                cmd += ["--store", store, "--gateways", str(n), "--json-out", str(out)]
                print(f"\n==== round {r + 1}/{rounds}: {config} (load {load()})", flush=True)
                done = subprocess.run(cmd, check=False)
                if not out.exists():
                    raise SystemExit(f"{config}: the run wrote no figures (exit {done.returncode})")
                fig = figures(config, json.loads(out.read_text()), done.returncode == 0)
                fig.load = load()
                runs[config].append(fig)
    print(f"\nload average at the end: {load()}")
    print_table(runs)
    if not all(f.ok for figs in runs.values() for f in figs):
        print("NOT OK: a run lost, duplicated or failed to verify something (see its report)")
        raise SystemExit(1)


def _median(figs: Sequence[Figures]) -> Figures:
    return sorted(figs, key=lambda f: f.last_s)[(len(figs) - 1) // 2]  # even: the faster


def print_table(runs: Mapping[str, Sequence[Figures]]) -> None:
    """One row per configuration (its median run by last delivery), and the scaling."""
    print(
        "gateway CPU: all gateway processes, utime+stime from /proc/PID/stat, from just before "
        "the POST until the last delivery at the sinks, per delivery; PostgreSQL (postmaster "
        "and backends) and Redis likewise; sinks = this process's sinks + Mosquitto. 202 s: "
        "POST -> 202; last s: 202 -> last delivery (median run; range over the rounds); "
        "deliv/s: deliveries / last s; e2e/s: deliveries / (202 s + last s)"
    )
    head = (
        f"{'config':<22}{'runs':>5}{'202 s':>7}{'last s':>8}{'range s':>13}{'deliv/s':>9}"
        f"{'e2e/s':>7}"
        f"{'gw µs':>8}{'pg µs':>7}{'redis µs':>9}{'sinks µs':>9}  ok"
    )
    print(head)
    for config, figs in runs.items():
        if not figs:
            continue
        m = _median(figs)
        span = f"{min(f.last_s for f in figs):.2f}-{max(f.last_s for f in figs):.2f}"
        print(
            f"{config:<22}{len(figs):>5}{m.post_to_202_s:>7.2f}{m.last_s:>8.2f}{span:>13}"
            f"{m.rate:>9,.0f}{m.end_to_end:>7,.0f}"
            f"{m.us('gateway'):>8.0f}{m.us('postgresql'):>7.0f}{m.us('redis'):>9.0f}"
            f"{m.us('sinks', 'mosquitto'):>9.0f}  {all(f.ok for f in figs)}"
        )
    one, two = (runs.get(describe("postgresql", n), []) for n in (1, 2))
    if one and two:
        each = ", ".join(f"{b.rate / a.rate:.2f}" for a, b in zip(one, two, strict=False))
        e2e = ", ".join(
            f"{b.end_to_end / a.end_to_end:.2f}" for a, b in zip(one, two, strict=False)
        )
        scaling = _median(two).rate / _median(one).rate
        scaling_e2e = _median(two).end_to_end / _median(one).end_to_end
        print(
            f"scaling rate(postgresql+redis x2) / rate(postgresql+redis x1): {scaling:.2f} "
            f"(target >= 1.6; per round: {each}); end to end {scaling_e2e:.2f} (per round: "
            f"{e2e}). With two gateways on two cores the sinks, Mosquitto, PostgreSQL and "
            "Redis share the cores with them, so this is a lower bound."
        )
