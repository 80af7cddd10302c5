"""Take-over after a SIGKILL: how long the survivor needs to finish a dead gateway's work.

Two `gateway serve` processes on a private PostgreSQL (fsync on) and redis-server, gateway 1 on
CPU 0 and gateway 2 on CPU 1 (the sinks and servers unpinned), the fan-out bench's config and
sinks (bench/fanout.py: MQTT on Mosquitto, webhooks and SMS over HTTP, email over SMTP, all in
this process; `--smtp-delay-s` slows each email down). One red warning for every township of the
layout is POSTed to gateway 1, which is SIGKILLed once `--kill-at` of its deliveries are at the
sinks (after its 202). Gateway 2 sends what is still queued at once; what gateway 1 had claimed
(read from the Redis stream, not yet acked) it takes over once those claims have been idle for
`claim_idle_s` (gateway.yaml `redis.claim_idle_s`, default 15 s; its take-over loop looks every
claim_idle_s / 3).

It reports the time from the SIGKILL to the last delivery at the sinks, when gateway 2 began
taking over (its log) and how many deliveries it took over, and checks that nothing was lost:
every delivery id at its sink, nothing pending or failed in the store, every delivery recorded
`delivered` once in the ledger, `gateway ledger verify`. A delivery gateway 1 sent but had not
recorded is sent again (at least once): those show as duplicates at the sinks, reported, not a
failure. Exit status 1 when anything was lost.

    python bench/takeover.py                              # 14,000 deliveries, claim_idle_s 15
    python bench/takeover.py --claim-idle-s 3 --sweep-s 1
    python bench/takeover.py --smoke --claim-idle-s 3
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import fanout
import several

from gateway.config import DEFAULT_CLAIM_IDLE_S, DEFAULT_SWEEP_S
from tests.processes import run_gateway

POLL_S = 0.002
TAKE_OVER = re.compile(r"^(\S+ \S+) WARNING gateway\.coord: taking over (\d+) deliveries")


@dataclass
class Takeover:
    deliveries: int
    seen_at_kill: int
    killed_after_202_s: float
    last_after_kill_s: float | None
    taken_over: int
    take_over_after_kill_s: float | None
    seen_before_take_over: int | None
    duplicates: int
    lost: dict[str, int]
    store_counts: dict[str, dict[str, int]]
    delivered_twice: int
    ledger: str
    timeline: list[tuple[float, int]] = field(default_factory=list)
    """(seconds after the kill, deliveries at the sinks)."""


def taken_over(log: str, killed_at: float) -> tuple[int, float | None]:
    """(deliveries taken over, seconds from the kill to the first take-over) from a log."""
    count, first = 0, None
    for line in log.splitlines():
        m = TAKE_OVER.match(line)
        if m:
            count += int(m.group(2))
            # asctime is local time: astimezone() reads it so.
            stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").astimezone()
            at = stamp.timestamp()
            first = at - killed_at if first is None else first
    return count, first


async def delivered_twice(api: fanout.Api, warning_id: str) -> int:
    """Deliveries the ledger records `delivered` more than once."""
    url = f"{api.base}/v1/warnings/{warning_id}/receipts"
    async with api.http.get(url, headers=api.auth) as r:
        doc: dict[str, Any] = await r.json()
    got = Counter(e["data"]["delivery_id"] for e in doc["entries"] if e["stage"] == "delivered")
    return sum(1 for n in got.values() if n > 1)


def seen(sinks: fanout.Sinks) -> int:
    return sum(len(t.seen) for t in sinks.tallies.values())


async def kill_and_finish(
    r: fanout.Rig, layout: fanout.Layout, opts: fanout.Options, kill_at: float
) -> Takeover:
    sinks = r.sinks
    timeout = aiohttp.ClientTimeout(total=opts.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        one, two = (fanout.Api(http, gw.url) for gw in r.gateways)
        await fanout.warm_up(one, sinks, layout, opts.timeout)
        wid = f"takeover-{secrets.token_hex(4)}"
        expected = layout.expected()
        total = sum(expected.values())
        sinks.begin(wid, expected)
        _, t202, answer = await one.post_warning(
            fanout.red_warning(wid, {"districts": [*layout.districts]})
        )
        deadline = time.monotonic() + opts.timeout
        while seen(sinks) < kill_at * total:
            if time.monotonic() > deadline:
                raise SystemExit(f"not {kill_at:.0%} at the sinks within {opts.timeout:g} s")
            await asyncio.sleep(POLL_S)
        proc = r.gateways[0].proc
        assert proc is not None
        proc.kill()
        killed, killed_wall, at_kill = time.monotonic(), time.time(), seen(sinks)
        timeline = [(0.0, at_kill)]
        done = asyncio.create_task(sinks.wait(opts.timeout))
        while not done.done():
            await asyncio.sleep(0.05)
            timeline.append((time.monotonic() - killed, seen(sinks)))
        await asyncio.to_thread(proc.wait)
        last = max((t.last or 0.0) for t in sinks.tallies.values())
        counts, _ = await two.settle(wid, opts.timeout, fanout.unfinished_free)
        twice = await delivered_twice(two, wid)
    n, first = taken_over(r.gateways[1].output(), killed_wall)
    before = None if first is None else max(s for t, s in timeline if t <= first)
    verify = run_gateway("ledger", "verify", env=r.env, cwd=r.cwd)
    return Takeover(
        deliveries=int(answer["deliveries"]),
        seen_at_kill=at_kill,
        killed_after_202_s=killed - t202,
        last_after_kill_s=last - killed if last > killed else None,
        taken_over=n,
        take_over_after_kill_s=first,
        seen_before_take_over=before,
        duplicates=sum(t.duplicates for t in sinks.tallies.values()),
        lost={c: t.expected - len(t.seen) for c, t in sinks.tallies.items() if t.expected},
        store_counts=counts,
        delivered_twice=twice,
        ledger=(verify.stdout or verify.stderr).strip().splitlines()[-1]
        if (verify.stdout or verify.stderr).strip()
        else f"exit {verify.returncode}",
        timeline=timeline,
    )


def problems(t: Takeover) -> list[str]:
    out = [f"{c}: {n} never at the sink" for c, n in t.lost.items() if n]
    for c, counts in t.store_counts.items():
        if counts.get("pending", 0) or counts.get("failed", 0):
            out.append(f"{c}: pending {counts.get('pending', 0)}, failed {counts.get('failed', 0)}")
    if t.delivered_twice:
        out.append(f"{t.delivered_twice} deliveries recorded delivered twice")
    if not t.ledger.startswith("ledger ok"):
        out.append(f"ledger verify: {t.ledger}")
    return out


def report(t: Takeover, opts: fanout.Options, smtp_delay_s: float, argv: list[str]) -> None:
    claim = opts.claim_idle_s or DEFAULT_CLAIM_IDLE_S
    print(f"machine: {fanout.machine()}")
    print(f"code: {fanout.code_state()}")
    print(f"command: python bench/takeover.py {' '.join(argv)}".rstrip())
    print(
        f"two gateways on postgresql+redis (gateway 1 on CPU 0, gateway 2 on CPU 1, sinks and "
        f"servers unpinned); claim_idle_s {claim:g}, sweep_s {opts.sweep_s or DEFAULT_SWEEP_S:g};"
        f" SMTP sink delay {smtp_delay_s:g} s; load average {several.load()}"
    )
    print(
        f"{t.deliveries:,} deliveries; gateway 1 (POSTed to) SIGKILLed "
        f"{1000 * t.killed_after_202_s:,.0f} ms after its 202 with {t.seen_at_kill:,} "
        f"({100 * t.seen_at_kill / t.deliveries:.0f}%) at the sinks"
    )
    took = "-" if t.last_after_kill_s is None else f"{t.last_after_kill_s:.2f} s"
    over = (
        "no take-over logged"
        if t.take_over_after_kill_s is None
        else f"gateway 2 began taking over {t.take_over_after_kill_s:.2f} s after the kill, "
        f"{t.seen_before_take_over:,} at the sinks by then"
    )
    print(
        f"last delivery at the sinks {took} after the SIGKILL; {over}; "
        f"{t.taken_over:,} deliveries taken over"
    )
    print(
        f"lost: {sum(t.lost.values())} ("
        + ", ".join(f"{c} {n}" for c, n in t.lost.items())
        + f"); sent again "
        f"(duplicates at the sinks): {t.duplicates}; recorded delivered twice: "
        f"{t.delivered_twice}; store: "
        + "; ".join(
            f"{c} " + " ".join(f"{k}={v}" for k, v in n.items() if k != "planned" and v)
            for c, n in t.store_counts.items()
        )
        + f"; {t.ledger}"
    )


async def run(a: argparse.Namespace, argv: list[str]) -> None:
    base = fanout.parse_args(["--smoke"] if a.smoke else [])
    opts = replace(
        base,
        store="postgresql",
        gateways=2,
        claim_idle_s=a.claim_idle_s,
        sweep_s=a.sweep_s,
        bare=False,
        sms_receipts=False,
        timeout=a.timeout,
    )
    layout = fanout.make_layout(opts)
    with fanout.workdir() as tmp:
        async with fanout.rig(opts, layout, tmp, a.smtp_delay_s) as r:
            result = await kill_and_finish(r, layout, opts, a.kill_at)
    report(result, opts, a.smtp_delay_s, argv)
    if problems(result):
        print("NOT OK: " + "; ".join(problems(result)))
        raise SystemExit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="the fan-out bench's --smoke layout")
    p.add_argument("--kill-at", type=float, default=0.2, help="share at the sinks at the kill")
    p.add_argument("--claim-idle-s", type=float, help="gateway.yaml redis.claim_idle_s")
    p.add_argument("--sweep-s", type=float, help="gateway.yaml redis.sweep_s")
    p.add_argument("--smtp-delay-s", type=float, default=0.0, help="each email at the sink")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per phase")
    argv = sys.argv[1:]
    asyncio.run(run(p.parse_args(argv), argv))


if __name__ == "__main__":
    main()
