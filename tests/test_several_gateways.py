"""Several `gateway serve` processes on one PostgreSQL and one Redis (design.md "Storage and
several processes"; issue 11), each a real process on loopback with real servers that the
test kills and restarts: a private PostgreSQL cluster, a private redis-server, Mosquitto and a
slow SMTP server.

- one gateway SIGKILLed mid fan-out: the other sends every email (duplicates only with the
  same Message-ID) once the dead one's claims are idle for claim_idle_s;
- a cancel posted to B while A sends: nothing is sent after its 202, retained topics are
  cleared, each clear once;
- Redis restarted without persistence mid fan-out: every email still arrives (the sweeper);
- PostgreSQL stopped 10 s mid fan-out: POST answers 503 meanwhile, nothing acknowledged is
  lost, everything is delivered once it is back, the ledger verifies;
- one city-wide warning on two gateways: each township escalated once, each delivery
  recorded once, one hash chain.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import REPO_CONFIG
from gateway.townships import Registry
from tests.fanout import fanout_config
from tests.helpers import token_env, warning_body
from tests.mqtt_broker import Mosquitto
from tests.processes import GatewayProcess, run_gateway
from tests.redis_server import RedisServer
from tests.smtp_server import SmtpServer, SmtpServerFactory
from tests.store_servers import PgCluster
from tests.test_faults import PREFIX, retained
from tests.test_store_faults import http

pytestmark = pytest.mark.slow  # real servers killed and restarted: `-m "not slow"` skips them

CLAIM_IDLE_S = 3.0
COORDINATION = f"redis: {{claim_idle_s: {CLAIM_IDLE_S}, sweep_s: 1}}"
WANZHOU_AND_YUZHONG = {"districts": ["500101", "500103"]}
SLOW_SMTP_S = 0.4


@pytest.fixture
def start_gateways(tmp_path: Path) -> Iterator[Callable[..., list[GatewayProcess]]]:
    """Starts `n` gateways with one environment; all stopped at teardown."""
    started: list[GatewayProcess] = []

    def start(env: dict[str, str], n: int = 2) -> list[GatewayProcess]:
        gateways = [GatewayProcess(env, tmp_path).start(timeout=60) for _ in range(n)]
        started.extend(gateways)
        return gateways

    yield start
    for gw in started:
        gw.stop()


def gateway_env(config: Path, store: str, redis_url: str) -> dict[str, str]:
    return {
        **token_env(),
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_STORE": store,
        "GATEWAY_REDIS_URL": redis_url,
    }


def wait_for(predicate: Callable[[], Any], what: str, within: float) -> float:
    """Poll `predicate` until true; the seconds it took."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < within, f"not within {within}s: {what}"
        time.sleep(0.1)
    return time.monotonic() - started


def state(gw: GatewayProcess, wid: str) -> dict[str, Any]:
    status, _, doc = http(f"{gw.url}/v1/warnings/{wid}")
    assert status == 200, doc
    result: dict[str, Any] = doc
    return result


def settled(gw: GatewayProcess, wid: str, channel: str) -> bool:
    counts = state(gw, wid)["channels"].get(channel, {})
    return bool(counts) and counts.get("pending", 0) == 0 and counts.get("sent", 0) == 0


def entries(gw: GatewayProcess, wid: str) -> list[dict[str, Any]]:
    status, _, doc = http(f"{gw.url}/v1/warnings/{wid}/receipts")
    assert status == 200, doc
    found: list[dict[str, Any]] = doc["entries"]
    return found


def mailed(smtp: SmtpServer) -> dict[str, set[str]]:
    """X-Delivery-Id → the Message-IDs of the messages the server accepted for it."""
    out: dict[str, set[str]] = defaultdict(set)
    for m in smtp.messages():
        out[str(m.message["X-Delivery-Id"])].add(str(m.message["Message-ID"]))
    return out


def arrivals(smtp: SmtpServer) -> list[tuple[float, str]]:
    """(when stored, X-Delivery-Id) of each message the server accepted."""
    paths = sorted(smtp.maildir.glob("msg-*.json"))
    return [
        (path.stat().st_mtime, str(m.message["X-Delivery-Id"]))
        for path, m in zip(paths, smtp.messages(), strict=True)
    ]


def delivered_once(gw: GatewayProcess, wid: str, channel: str) -> set[str]:
    """The ids of `channel`'s deliveries of `wid` recorded delivered; each exactly once."""
    got = Counter(
        e["data"]["delivery_id"]
        for e in entries(gw, wid)
        if e["stage"] == "delivered" and e["data"].get("channel") == channel
    )
    assert set(got.values()) <= {1}, [d for d, n in got.items() if n > 1]
    return set(got)


def verify_ledger(env: dict[str, str], cwd: Path) -> None:
    done = run_gateway("ledger", "verify", env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ledger ok: ")


def test_a_gateway_killed_mid_fan_out_leaves_nothing_undelivered(
    tmp_path: Path,
    pg_url: str,
    redis_url: str,
    smtp_server_factory: SmtpServerFactory,
    start_gateways: Callable[..., list[GatewayProcess]],
) -> None:
    smtp = smtp_server_factory(delay_s=SLOW_SMTP_S)
    config = fanout_config(tmp_path, smtp_url=smtp.url, extra=COORDINATION)
    env = gateway_env(config, pg_url, redis_url)
    a, b = start_gateways(env)
    body = warning_body(area=WANZHOU_AND_YUZHONG, channels=["email"])
    status, _, answer = http(a.url + "/v1/warnings", body)
    assert status == 202, answer
    wait_for(lambda: len(smtp.messages()) >= 4, "the fan-out under way", 30)
    a.kill()
    assert not settled(b, body["id"], "email")  # A died with work left
    took = wait_for(lambda: settled(b, body["id"], "email"), "B finishing", CLAIM_IDLE_S + 60)
    print(f"survivor finished {took:.1f}s after the SIGKILL")
    delivered = delivered_once(b, body["id"], "email")
    assert len([d for d in delivered if "/escalate-" not in d]) == answer["deliveries"]
    mail = mailed(smtp)
    assert delivered <= set(mail)  # every email arrived
    assert all(len(ids) == 1 for ids in mail.values())  # a duplicate has the same Message-ID
    verify_ledger(env, tmp_path)


def test_a_cancel_on_b_stops_what_a_sends_and_clears_once(
    tmp_path: Path,
    pg_url: str,
    redis_url: str,
    mosquitto: Mosquitto,
    smtp_server_factory: SmtpServerFactory,
    start_gateways: Callable[..., list[GatewayProcess]],
) -> None:
    smtp = smtp_server_factory(delay_s=SLOW_SMTP_S)
    config = fanout_config(tmp_path, smtp_url=smtp.url, mqtt_url=mosquitto.url, extra=COORDINATION)
    env = gateway_env(config, pg_url, redis_url)
    a, b = start_gateways(env)
    body = warning_body(area=WANZHOU_AND_YUZHONG, channels=["email", "mqtt"])
    status, _, answer = http(a.url + "/v1/warnings", body)
    assert status == 202, answer
    wait_for(lambda: len(smtp.messages()) >= 2, "emails under way", 30)
    wait_for(lambda: settled(a, body["id"], "mqtt"), "boards reached", 30)
    cancel = warning_body(
        msg_type="cancel", references=body["id"], area=body["area"], channels=["email", "mqtt"]
    )
    posted = time.time()
    status, _, done = http(b.url + "/v1/warnings", cancel)
    answered = time.time()
    assert status == 202, done
    time.sleep(3 * SLOW_SMTP_S + 1)  # a send that went on would have reached the server
    stored = sorted(t for t, delivery in arrivals(smtp) if delivery.startswith(body["id"] + "/"))
    late = [t - answered for t in stored if t > answered]
    assert late == []  # (the cancel's own emails go on, of course)
    print(
        f"cancel answered in {1000 * (answered - posted):.0f} ms; last email stored "
        f"{1000 * (answered - stored[-1]):.0f} ms before the 202"
    )
    assert state(a, body["id"])["status"] == "cancelled"
    wait_for(lambda: settled(b, body["id"], "mqtt"), "clears sent", 30)
    clears = [
        e["data"]["delivery_id"]
        for e in entries(a, body["id"])
        if e["stage"] == "delivered" and "/clear/" in e["data"].get("delivery_id", "")
    ]
    assert clears  # the boards' retained messages were cleared...
    assert len(clears) == len(set(clears))  # ...each once
    shown = asyncio.run(retained(mosquitto.url, within=1.0))
    assert not [t for t in shown if t.endswith("/" + body["id"]) and shown[t]]
    assert PREFIX  # the topics looked at are the configured prefix's


def test_redis_restarted_without_persistence_mid_fan_out_loses_no_email(
    tmp_path: Path,
    pg_url: str,
    own_redis: RedisServer,
    smtp_server_factory: SmtpServerFactory,
    start_gateways: Callable[..., list[GatewayProcess]],
) -> None:
    smtp = smtp_server_factory(delay_s=SLOW_SMTP_S)
    config = fanout_config(tmp_path, smtp_url=smtp.url, extra=COORDINATION)
    env = gateway_env(config, pg_url, own_redis.url())
    a, b = start_gateways(env)
    body = warning_body(area=WANZHOU_AND_YUZHONG, channels=["email"])
    status, _, answer = http(a.url + "/v1/warnings", body)
    assert status == 202, answer
    wait_for(lambda: len(smtp.messages()) >= 4, "the fan-out under way", 30)
    own_redis.restart()  # the queue, the claims and the live set are gone
    wait_for(lambda: settled(b, body["id"], "email"), "every email sent", 120)
    delivered = delivered_once(a, body["id"], "email")
    assert len([d for d in delivered if "/escalate-" not in d]) == answer["deliveries"]
    mail = mailed(smtp)
    assert delivered <= set(mail)
    assert all(len(ids) == 1 for ids in mail.values())
    verify_ledger(env, tmp_path)


def test_postgresql_stopped_ten_seconds_mid_fan_out(
    tmp_path: Path,
    own_pg_cluster: PgCluster,
    redis_url: str,
    smtp_server_factory: SmtpServerFactory,
    start_gateways: Callable[..., list[GatewayProcess]],
) -> None:
    smtp = smtp_server_factory(delay_s=SLOW_SMTP_S)
    config = fanout_config(tmp_path, smtp_url=smtp.url, extra=COORDINATION)
    env = gateway_env(config, own_pg_cluster.url("gw"), redis_url)
    a, b = start_gateways(env)
    body = warning_body(area=WANZHOU_AND_YUZHONG, channels=["email"])
    status, _, answer = http(a.url + "/v1/warnings", body)
    assert status == 202, answer
    wait_for(lambda: len(smtp.messages()) >= 2, "the fan-out under way", 30)
    own_pg_cluster.stop("immediate")
    down_at = time.monotonic()
    refused = []
    for gw in (a, b):
        during = warning_body(area={"districts": ["500103"]}, channels=["email"])
        status, headers, doc = http(gw.url + "/v1/warnings", during)
        refused.append((status, doc.get("code"), "Retry-After" in headers))
    assert refused == [(503, "store_unavailable", True)] * 2
    time.sleep(max(0.0, 10 - (time.monotonic() - down_at)))
    own_pg_cluster.start()
    wait_for(lambda: settled(b, body["id"], "email"), "the fan-out finished", 120)
    delivered = delivered_once(b, body["id"], "email")
    assert len([d for d in delivered if "/escalate-" not in d]) == answer["deliveries"]
    assert delivered <= set(mailed(smtp))
    verify_ledger(env, tmp_path)


def test_a_city_wide_warning_on_two_gateways_is_escalated_once_per_township(
    tmp_path: Path,
    pg_url: str,
    redis_url: str,
    smtp_server_factory: SmtpServerFactory,
    start_gateways: Callable[..., list[GatewayProcess]],
) -> None:
    """Art. 20-21: every township not reached by its deadline is escalated, once, whichever
    gateway's timer fires first; the emails are refused until the deadline has passed."""
    smtp = smtp_server_factory(fail_until_healed=True)
    extra = f"{COORDINATION}\ncoverage: {{deadlines_s: {{3: 4}}}}"
    config = fanout_config(tmp_path, smtp_url=smtp.url, extra=extra)
    env = gateway_env(config, pg_url, redis_url)
    a, b = start_gateways(env)
    city = sorted(Registry.load(REPO_CONFIG / "townships.yaml").districts)
    body = warning_body(area={"districts": city}, channels=["email"])
    status, _, answer = http(a.url + "/v1/warnings", body)
    assert status == 202, answer

    def all_escalated() -> bool:
        _, _, doc = http(f"{b.url}/v1/warnings/{body['id']}/coverage")
        return bool(doc["counts"]["escalated"] == doc["counts"]["townships"])

    wait_for(all_escalated, "every township escalated", 60)
    time.sleep(2)  # both gateways' deadline timers have fired
    smtp.heal()
    wait_for(lambda: settled(a, body["id"], "email"), "every email sent", 120)
    escalated = Counter(
        e["data"]["township"] for e in entries(a, body["id"]) if e["stage"] == "escalated"
    )
    _, _, coverage = http(f"{a.url}/v1/warnings/{body['id']}/coverage")
    assert set(escalated) == {t["township"] for t in coverage["townships"]}
    assert set(escalated.values()) == {1}
    delivered_once(a, body["id"], "email")
    verify_ledger(env, tmp_path)
