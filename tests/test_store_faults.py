"""The store's disk fills up under a running gateway (design.md "Delivery under faults",
"HTTP contract": a store that cannot write answers 503 `store_unavailable` with Retry-After,
never 500 and never a 202 for something not stored; /healthz is 503 meanwhile).

The store lives on a real tmpfs of its own (mounted by the test; the suite runs as root), filled
to the last byte by a filler file; removing the filler gives the space back.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TOKENS, warning_body
from tests.processes import GatewayProcess, run_gateway

pytestmark = pytest.mark.slow  # real servers killed and restarted: `-m "not slow"` skips them

TMPFS_SIZE = "8m"


def http(url: str, body: object | None = None) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {TOKENS['platform']}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of TMPFS_SIZE mounted for this test alone."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"cannot mount a tmpfs (the suite runs as root): {done.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill `disk` to the last byte; the filler file to remove to give the space back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


@pytest.mark.sqlite_only  # the SQLite file on a disk that fills up
def test_full_disk_answers_503_loses_nothing_and_recovers(
    small_disk: Path, config_dir: Path, env: dict[str, str], tmp_path: Path
) -> None:
    db = small_disk / "gateway.db"
    gw_env = {**env, "GATEWAY_CONFIG": str(config_dir), "GATEWAY_STORE": f"sqlite:///{db}"}
    gw = GatewayProcess(gw_env, tmp_path).start()
    try:
        first = warning_body(area={"districts": ["500101"]})
        status, _, answer = http(gw.url + "/v1/warnings", first)
        assert status == 202, answer
        filler = fill(small_disk)

        answers: dict[str, int] = {}
        refused = 0
        for _ in range(40):  # enough rows to outgrow what the WAL already holds
            body = warning_body(area={"districts": ["500101"]})
            status, headers, answer = http(gw.url + "/v1/warnings", body)
            assert status in (202, 503), (status, answer)
            answers[body["id"]] = status
            if status == 503:
                refused += 1
                assert answer["code"] == "store_unavailable"
                assert int(headers["Retry-After"]) > 0
        assert refused > 0, "the full disk was never noticed"
        status, headers, health = http(gw.url + "/healthz")
        assert (status, health["status"]) == (503, "unavailable")

        filler.unlink()  # the space comes back
        status, _, health = http(gw.url + "/healthz")
        assert status == 200, health
        late = warning_body(area={"districts": ["500101"]})
        assert http(gw.url + "/v1/warnings", late)[0] == 202
        answers[late["id"]] = 202
        answers[first["id"]] = 202

        for wid, status in answers.items():
            got = http(gw.url + f"/v1/warnings/{wid}")[0]
            if status == 503:
                assert got == 404, f"{wid} was answered 503 but stored"
                continue
            assert got == 200, f"{wid} was answered 202 but not stored"
        wait_all_delivered(gw, [w for w, s in answers.items() if s == 202])
    finally:
        gw.stop()
    verify = run_gateway("ledger", "verify", env=gw_env, cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr


def wait_all_delivered(gw: GatewayProcess, ids: list[str], timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    left = list(ids)
    while left and time.monotonic() < deadline:
        state = http(gw.url + f"/v1/warnings/{left[0]}")[2]
        sms = state["channels"]["sms"]
        if sms["pending"] == 0 and sms["delivered"] == sms["planned"]:
            left.pop(0)
        else:
            time.sleep(0.1)
    assert not left, f"not delivered after the disk recovered: {left[:3]}"


@pytest.mark.sqlite_only  # the SQLite file on a disk that fills up
def test_outcomes_that_arrive_while_the_disk_is_full_are_kept_until_they_commit(
    small_disk: Path, config_dir: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """design.md: "no delivery is forgotten in memory before its outcome is committed"."""
    from tests.sms_provider import SmsProviderProcess

    provider = SmsProviderProcess(tmp_path / "sms.jsonl")  # down when the warning arrives
    gateway_yaml = config_dir / "gateway.yaml"
    gateway_yaml.write_text(
        gateway_yaml.read_text().replace(
            "sms: {provider: stub}",
            f"sms: {{provider: http, url: '{provider.url}', "
            "retry: {initial_s: 0.05, max_s: 0.2, jitter_s: 0}}",
        )
    )
    db = small_disk / "gateway.db"
    gw_env = {**env, "GATEWAY_CONFIG": str(config_dir), "GATEWAY_STORE": f"sqlite:///{db}"}
    gw = GatewayProcess(gw_env, tmp_path).start()
    try:
        body = warning_body(area={"districts": ["500101"]}, channels=["sms"])
        status, _, answer = http(gw.url + "/v1/warnings", body)
        assert status == 202, answer
        planned = answer["deliveries"]
        filler = fill(small_disk)
        provider.start()  # the sends now succeed; their outcomes cannot be written
        wait_for(lambda: len(provider.requests()) >= planned, "every SMS handed to the provider")
        assert http(gw.url + "/healthz")[0] == 503
        filler.unlink()
        wait_for(lambda: open_deliveries(gw, body["id"]) == 0, "outcomes written after recovery")
        state = http(gw.url + f"/v1/warnings/{body['id']}")[2]
        assert state["channels"]["sms"]["sent"] == planned
    finally:
        gw.stop()
        provider.stop()
    verify = run_gateway("ledger", "verify", env=gw_env, cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr


def open_deliveries(gw: GatewayProcess, wid: str) -> int:
    state = http(gw.url + f"/v1/warnings/{wid}")[2]
    return int(state["channels"]["sms"]["pending"])


def wait_for(predicate: Any, what: str, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_blind_spot_escalation_survives_a_crash_right_after_the_commit(
    config_dir: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """design.md: everything decided at ingest (blind-spot escalations included) is committed
    with the warning, so a crash right after the commit loses none of it; each escalation
    happens once (art. 20: blind spots are escalated at once)."""
    from tests.sms_provider import SmsProviderProcess

    provider = SmsProviderProcess(tmp_path / "sms.jsonl")  # down: nothing can go out yet
    gateway_yaml = config_dir / "gateway.yaml"
    gateway_yaml.write_text(
        gateway_yaml.read_text().replace(
            "sms: {provider: stub}",
            f"sms: {{provider: http, url: '{provider.url}', "
            "retry: {initial_s: 0.05, max_s: 0.2, jitter_s: 0}}",
        )
    )
    gw_env = {**env, "GATEWAY_CONFIG": str(config_dir)}
    gw = GatewayProcess(gw_env, tmp_path).start()
    body = warning_body(
        area={"townships": ["500101239", "500101001"]},  # 恒合土家族乡 is a sample blind spot
        issuer={"unit": "重庆市气象台", "role": "重庆气象局"},
        channels=["sms"],
    )
    try:
        status, _, answer = http(gw.url + "/v1/warnings", body)
        assert status == 202, answer
        assert answer["blind_spots"] == ["500101239"]
        gw.kill()  # SIGKILL: the follow-up of the 202 never runs to its end
        provider.start()
        gw.start()
        wait_for(lambda: open_deliveries(gw, body["id"]) == 0, "the warning's SMS after restart")

        def escalations_sent() -> list[str]:
            return [r["headers"].get("idempotency-key", "") for r in provider.requests()]

        wait_for(
            lambda: any("/escalate-blind_spot/" in k for k in escalations_sent()),
            "the blind spot's escalation after restart",
        )
        state = http(gw.url + f"/v1/warnings/{body['id']}")[2]
        assert sum(c["delivered"] + c["sent"] for c in state["escalations"].values()) >= 1
        entries = http(gw.url + f"/v1/warnings/{body['id']}/receipts")[2]["entries"]
        escalated = [e for e in entries if e["stage"] == "escalated"]
        assert [e["data"]["township"] for e in escalated] == ["500101239"]  # once
        keys = [k for k in escalations_sent() if "/escalate-" in k]
        assert len(keys) == len(set(keys)) == state["escalations"]["sms"]["planned"]
    finally:
        gw.stop()
        provider.stop()
