"""The `gateway` command as a user runs it: serve with env overrides, send, ledger verify, drill."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import store_switch
from tests.helpers import TOKENS, warning_body
from tests.processes import GatewayProcess, run_gateway


@pytest.fixture
def served(config_dir: Path, env: dict[str, str], tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = GatewayProcess({**env, "GATEWAY_CONFIG": str(config_dir)}, tmp_path).start()
    yield gw
    gw.stop()


def http_json(url: str, body: object | None = None, token: str | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_uses_env_overrides_and_keeps_warnings_across_restart(
    served: GatewayProcess, tmp_path: Path
) -> None:
    body = warning_body()
    status, answer = http_json(served.url + "/v1/warnings", body, TOKENS["platform"])
    assert status == 202, answer
    served.kill()  # a crash, not a clean shutdown
    # GATEWAY_STORE was honoured (with PostgreSQL, the store the env names is the test's)
    assert store_switch.POSTGRESQL or (tmp_path / "gateway.db").exists()
    served.start()
    status, state = http_json(served.url + f"/v1/warnings/{body['id']}", token=TOKENS["platform"])
    assert status == 200
    assert isinstance(state, dict)
    assert state["status"] == "active"


def test_healthz_metrics_and_openapi(served: GatewayProcess) -> None:
    status, health = http_json(served.url + "/healthz")
    assert isinstance(health, dict)
    assert (status, health["status"], health["store"]) == (200, "ok", "ok")
    assert health.get("redis", "ok") == "ok"  # told with several gateways (PostgreSQL)
    http_json(served.url + "/v1/warnings", warning_body(), TOKENS["platform"])
    req = urllib.request.Request(served.url + "/metrics")
    req.add_header("Authorization", f"Bearer {TOKENS['platform']}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    assert 'gateway_warnings_total{outcome="accepted"} 1.0' in text
    status, doc = http_json(served.url + "/openapi.json")
    assert status == 200
    assert isinstance(doc, dict)
    assert "/v1/warnings" in doc["paths"]


def test_send_reports_a_missing_file_and_token(tmp_path: Path, env: dict[str, str]) -> None:
    missing = run_gateway("send", str(tmp_path / "nope.json"), env=env, cwd=tmp_path)
    assert missing.returncode == 2
    assert "nope.json" in missing.stderr
    file = tmp_path / "w.json"
    file.write_text("{}", encoding="utf-8")
    no_token = run_gateway("send", str(file), "--client", "stranger", env=env, cwd=tmp_path)
    assert no_token.returncode == 2
    assert "GATEWAY_TOKEN_STRANGER" in no_token.stderr


def test_send_posts_a_file(served: GatewayProcess, tmp_path: Path, env: dict[str, str]) -> None:
    file = tmp_path / "w.json"
    body = warning_body()
    file.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    result = run_gateway("send", str(file), "--url", served.url, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("202 ")
    again = run_gateway("send", str(file), "--url", served.url, env=env, cwd=tmp_path)
    assert again.stdout.startswith("200 ")
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    refused = run_gateway("send", str(bad), "--url", served.url, env=env, cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stdout.startswith("400 ")


def test_ledger_verify_passes_then_names_the_first_edited_entry(
    served: GatewayProcess, config_dir: Path, env: dict[str, str], tmp_path: Path
) -> None:
    for _ in range(3):
        http_json(served.url + "/v1/warnings", warning_body(), TOKENS["platform"])
    served.stop()
    cli_env = {**env, "GATEWAY_CONFIG": str(config_dir)}
    ok = run_gateway("ledger", "verify", env=cli_env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    store = store_switch.store_url(env["GATEWAY_STORE"])
    [(count,)] = store_switch.execute(store, "SELECT count(*) FROM ledger")
    assert f"{count} entries" in ok.stdout

    store_switch.execute(store, """UPDATE ledger SET data = '{"client":"forged"}' WHERE seq = 3""")
    broken = run_gateway("ledger", "verify", env=cli_env, cwd=tmp_path)
    assert broken.returncode == 1
    assert "entry 3" in broken.stderr


def test_ledger_verify_detects_a_removed_entry(
    served: GatewayProcess, config_dir: Path, env: dict[str, str], tmp_path: Path
) -> None:
    for _ in range(2):
        http_json(served.url + "/v1/warnings", warning_body(), TOKENS["platform"])
    served.stop()
    store_switch.execute(
        store_switch.store_url(env["GATEWAY_STORE"]), "DELETE FROM ledger WHERE seq = 2"
    )
    result = run_gateway(
        "ledger", "verify", env={**env, "GATEWAY_CONFIG": str(config_dir)}, cwd=tmp_path
    )
    assert result.returncode == 1
    assert "entry 2" in result.stderr


@pytest.mark.parametrize(
    ("file", "content", "env_extra", "expect"),
    [
        pytest.param(
            "gateway.yaml", "listen: [1, 2\n", {}, "gateway.yaml: (syntax)", id="yaml-syntax"
        ),
        pytest.param(
            "gateway.yaml", "listen: nowhere\n", {}, "gateway.yaml: listen:", id="bad-listen"
        ),
        pytest.param(
            "gateway.yaml",
            "colour: red\n",
            {},
            "gateway.yaml: colour: Extra inputs",
            id="unknown-key",
        ),
        pytest.param(
            "gateway.yaml",
            "clients: {platform: {districts: [abc]}}\n",
            {},
            "clients.platform.districts[0]",
            id="bad-district",
        ),
        pytest.param(
            "gateway.yaml", "store: postgres://x\n", {}, "gateway.yaml: store:", id="bad-store"
        ),
        pytest.param(
            "release_list.yaml", "rows: []\n", {}, "release_list.yaml: source", id="release-list"
        ),
        pytest.param(
            "townships.yaml",
            "source: x\ndistricts: [{code: '5001', name: a, townships: []}]\n",
            {},
            "townships.yaml: districts[0].code",
            id="townships",
        ),
        pytest.param(
            "endpoints.yaml",
            'townships: {"500199999": [{id: x, channel: sms, phones: ["13800000000"]}]}\n',
            {},
            "endpoints.yaml: townships.500199999: unknown township code",
            id="endpoints-unknown-township",
        ),
        pytest.param(
            "endpoints.yaml",
            'townships: {"500103001": [{id: x, channel: sms, phones: []}]}\n',
            {},
            "endpoints.yaml: townships.500103001[0].phones",
            id="endpoints-sms-without-phones",
        ),
        pytest.param(
            "endpoints.yaml",
            'townships: {"500103001": [{id: x, channel: mqtt, kind: display},'
            " {id: x, channel: mqtt, kind: broadcast}]}\n",
            {},
            "endpoints.yaml: x: duplicate endpoint id",
            id="endpoints-duplicate-id",
        ),
        pytest.param(
            "endpoints.yaml",
            "partners: [{id: p, name: p, url: 'ftp://x'}]\n",
            {},
            "endpoints.yaml: partners[0].url",
            id="endpoints-partner-url",
        ),
        pytest.param(
            "gateway.yaml",
            "channels: {sms: {provider: http}}\n",
            {},
            "gateway.yaml: channels.sms.url: the http SMS provider needs a url",
            id="sms-http-without-url",
        ),
        pytest.param(
            "gateway.yaml",
            "coverage: {deadlines_s: {5: 10}}\n",
            {},
            "gateway.yaml: coverage.deadlines_s",
            id="deadline-level-5",
        ),
        pytest.param(
            None,
            None,
            {"GATEWAY_LISTEN": "host-without-port"},
            "environment: GATEWAY_LISTEN",
            id="env-listen",
        ),
        pytest.param(
            None,
            None,
            {"GATEWAY_STORE": "mysql://db"},
            "environment: GATEWAY_STORE",
            id="env-store",
        ),
        pytest.param(
            None,
            None,
            {"GATEWAY_MQTT_URL": "http://broker"},
            "environment: GATEWAY_MQTT_URL",
            id="env-mqtt",
        ),
        pytest.param(
            None,
            None,
            {"GATEWAY_SMTP_URL": "smtp://"},
            "environment: GATEWAY_SMTP_URL",
            id="env-smtp",
        ),
    ],
)
def test_bad_config_exits_2_naming_file_key_and_reason(
    config_dir: Path,
    env: dict[str, str],
    tmp_path: Path,
    file: str | None,
    content: str | None,
    env_extra: dict[str, str],
    expect: str,
) -> None:
    if file is not None and content is not None:
        (config_dir / file).write_text(content, encoding="utf-8")
    result = run_gateway(
        "serve", "--config", str(config_dir), env={**env, **env_extra}, cwd=tmp_path, timeout=30
    )
    assert result.returncode == 2, result.stderr
    assert "config error" in result.stderr
    assert expect in result.stderr


def test_serve_listen_flag_beats_env(config_dir: Path, env: dict[str, str], tmp_path: Path) -> None:
    gw = GatewayProcess({**env, "GATEWAY_CONFIG": str(config_dir)}, tmp_path)
    flag_port = gw.port
    gw.env["GATEWAY_LISTEN"] = "127.0.0.1:1"  # would fail to bind if used
    gw.args = ("--listen", f"127.0.0.1:{flag_port}")
    gw.start()
    try:
        assert http_json(gw.url + "/healthz")[0] == 200
    finally:
        gw.stop()


def test_drill_json_reports_no_loss(tmp_path: Path) -> None:
    result = run_gateway("drill", "--json", env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["lost"] == 0
    assert summary["ledger_ok"] is True
    assert summary["warning_id"].startswith("drill-")
    assert set(summary) == {"warning_id", "channels", "lost", "ledger_ok"}
    # The sample: 49 万州区 townships with endpoints (2 MQTT, SMS, email) and 2 partners.
    assert summary["channels"] == {
        "mqtt": {"planned": 98, "delivered": 98, "failed": 0},
        "sms": {"planned": 49, "delivered": 49, "failed": 0},
        "email": {"planned": 49, "delivered": 49, "failed": 0},
        "webhook": {"planned": 2, "delivered": 2, "failed": 0},
    }


def test_drill_prints_channels_townships_and_blind_spots(tmp_path: Path) -> None:
    result = run_gateway("drill", env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "townships reached: 49" in result.stdout
    assert "恒合土家族乡 (500101239)" in result.stdout
    assert "lost: 0" in result.stdout


def test_a_config_dir_with_only_gateway_yaml_uses_the_shipped_data(
    env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "mine"
    config.mkdir()
    (config / "gateway.yaml").write_text(
        "clients: {platform: {}}\n"
        "channels: {email: {enabled: false}, mqtt: {enabled: false}, webhook: {enabled: false}}\n",
        encoding="utf-8",
    )
    gw = GatewayProcess({**env, "GATEWAY_CONFIG": str(config)}, tmp_path).start()
    try:
        status, answer = http_json(gw.url + "/v1/warnings", warning_body(), TOKENS["platform"])
        assert status == 202, answer
    finally:
        gw.stop()
