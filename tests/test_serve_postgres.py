"""`gateway serve` on the PostgreSQL store (GATEWAY_STORE=postgresql://...): refused with a clear
error until `gateway db upgrade` (idempotent) has run, then the whole flow: a warning is
accepted, delivered (stub SMS), its state read, and `gateway ledger verify` passes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import warning_body
from tests.processes import GatewayProcess, gateway_cmd, run_gateway
from tests.store_servers import PgCluster
from tests.test_store_faults import http, wait_all_delivered

pytestmark = pytest.mark.slow  # real servers killed and restarted: `-m "not slow"` skips them


def test_serve_on_postgresql_after_db_upgrade(
    pg_cluster: PgCluster, redis_url: str, config_dir: Path, env: dict[str, str], tmp_path: Path
) -> None:
    url = pg_cluster.create_database("serve", template=None)
    gw_env = {
        **env,
        "GATEWAY_CONFIG": str(config_dir),
        "GATEWAY_STORE": url,
        "GATEWAY_REDIS_URL": redis_url,
    }
    gw = GatewayProcess(gw_env, tmp_path)
    refused = subprocess.run(
        gateway_cmd("serve"), env=gw.env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2, refused.stderr
    assert "run `gateway db upgrade`" in refused.stderr

    first = run_gateway("db", "upgrade", env=gw_env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "schema upgraded to version" in first.stdout
    again = run_gateway("db", "upgrade", env=gw_env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout

    gw.start()
    try:
        body = warning_body(area={"districts": ["500103"]}, channels=["sms"])
        status, _, answer = http(gw.url + "/v1/warnings", body)
        assert status == 202, answer
        assert answer["deliveries"] > 0
        assert http(gw.url + "/v1/warnings", body)[0] == 200  # the replay
        wait_all_delivered(gw, [body["id"]])
        status, _, state = http(gw.url + f"/v1/warnings/{body['id']}")
        assert (status, state["status"]) == (200, "active")
        assert state["channels"]["sms"]["delivered"] == answer["deliveries"]
        status, _, receipts = http(gw.url + f"/v1/warnings/{body['id']}/receipts")
        stages = [e["stage"] for e in receipts["entries"]]
        assert stages[:2] == ["received", "authorized"]
        assert "delivered" in stages
    finally:
        gw.stop()
    verify = run_gateway("ledger", "verify", env=gw_env, cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.startswith("ledger ok: ")
