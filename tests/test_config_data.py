"""The shipped data files (annex 1, the township registry) and settings from env."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.clients import Authenticator, Client
from gateway.config import REPO_CONFIG, check_store_url, load_settings
from gateway.exceptions import ConfigError, Unauthenticated
from gateway.release_list import Category, Government, ReleaseList
from gateway.townships import Registry, normalise


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(REPO_CONFIG / "townships.yaml")


@pytest.fixture(scope="module")
def release_list() -> ReleaseList:
    return ReleaseList.load(REPO_CONFIG / "release_list.yaml")


def test_registry_has_all_38_districts_and_1031_townships(registry: Registry) -> None:
    assert len(registry.districts) == 38
    assert len(registry.townships) == 1031
    assert registry.districts["500101"].name == "万州区"
    assert registry.districts["500103"].name == "渝中区"
    assert registry.townships["500101001"].name == "高笋塘街道"
    assert registry.townships["500103001"].name == "七星岗街道"
    assert len(registry.districts["500101"].townships) == 52
    assert len(registry.districts["500103"].townships) == 11
    assert all(t.code.startswith(t.district) for t in registry.townships.values())


def test_townships_file_names_source_and_vintage() -> None:
    head = (REPO_CONFIG / "townships.yaml").read_text(encoding="utf-8")[:400]
    assert "china-division 2.7.0" in head
    assert "2023" in head


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("500101", "500101"),
        ("500101001", "500101001"),
        ("500101000000", "500101"),  # CPEAS district
        ("500101001000", "500101001"),  # CPEAS township
        ("500101001001", None),  # a village: finer than the gateway serves
        ("5001", None),
        ("50010a", None),
    ],
)
def test_normalise_codes(code: str, expected: str | None) -> None:
    assert normalise(code) == expected


def test_district_expands_to_its_townships(registry: Registry) -> None:
    assert registry.expand(["500103"]) == sorted(registry.districts["500103"].townships)
    assert registry.expand(["500103", "500103001"]) == registry.expand(["500103"])


def test_release_list_transcribes_all_41_rows_of_annex_1(release_list: ReleaseList) -> None:
    assert [r.row for r in release_list.rows] == list(range(1, 42))
    categories = [r.category for r in release_list.rows]
    assert categories.count(Category.NATURAL_DISASTER) == 10
    assert categories.count(Category.ACCIDENT_DISASTER) == 24
    assert categories.count(Category.PUBLIC_HEALTH) == 7
    # 干旱 appears in two rows (water authorities and the weather service).
    assert [r.row for r in release_list.rows_for("干旱")] == [1, 10]
    # 突发群体性不明原因疾病事件 has three levels only.
    assert release_list.rows_for("突发群体性不明原因疾病事件")[0].levels == {1, 2, 3}
    row6 = release_list.rows_for("地质灾害临灾预报")[0]
    assert row6.city is None
    assert row6.district is not None
    assert row6.district.higher_approval[0].unit == "市规划自然资源局"
    assert row6.district.higher_approval[0].levels == {1, 2}
    row23 = release_list.rows_for("人员密集场所事故")[0]
    assert row23.cell(Government.CITY).levels == {1, 2}  # type: ignore[union-attr]
    assert row23.cell(Government.DISTRICT).levels == {3, 4}  # type: ignore[union-attr]
    assert all(r.city is not None or r.district is not None for r in release_list.rows)


def test_every_remark_of_annex_1_is_kept(release_list: ReleaseList) -> None:
    text = REPO_CONFIG.parent.parent / "shared/reference/warning-release-measures-2026.txt"
    remarks = {c.remark for r in release_list.rows for c in (r.city, r.district) if c and c.remark}
    assert "二级及以上地质灾害临灾预报报经市规划自然资源局批准后发布。" in remarks
    assert "一级预警信息报经工业和信息化部批准后发布，并报市政府备案。" in remarks
    if text.exists():  # the regulation sits beside the repo in the team's checkout
        source = text.read_text(encoding="utf-8")
        missing = [r for r in remarks if r.replace("\n", "") not in source]
        assert missing == []


def test_tokens_come_from_env_per_client(tmp_path: Path) -> None:
    settings = load_settings(REPO_CONFIG, {"GATEWAY_TOKEN_PLATFORM": "s3cret"})
    assert [c.name for c in settings.clients] == ["platform"]
    assert settings.clients[0].token == "s3cret"
    assert "s3cret" not in repr(settings)
    auth = Authenticator(settings.clients)
    assert auth.authenticate("Bearer s3cret").name == "platform"
    with pytest.raises(Unauthenticated):
        auth.authenticate("Bearer s3cre")


def test_a_client_without_token_cannot_authenticate() -> None:
    auth = Authenticator([Client("platform", None)])
    with pytest.raises(Unauthenticated):
        auth.authenticate("Bearer ")
    with pytest.raises(Unauthenticated):
        auth.authenticate("Bearer None")


def test_env_overrides_file(tmp_path: Path) -> None:
    env = {
        "GATEWAY_LISTEN": "0.0.0.0:9000",
        "GATEWAY_STORE": "sqlite:////tmp/x.db",
        "GATEWAY_MQTT_URL": "mqtt://127.0.0.1:1884",
        "GATEWAY_SMTP_URL": "smtp://127.0.0.1:2525",
    }
    s = load_settings(REPO_CONFIG, env)
    assert (s.host, s.port) == ("0.0.0.0", 9000)
    assert s.store_url == "sqlite:////tmp/x.db"
    assert s.mqtt_url == "mqtt://127.0.0.1:1884"
    assert s.smtp_url == "smtp://127.0.0.1:2525"
    via_env = load_settings(None, {"GATEWAY_CONFIG": str(REPO_CONFIG)})
    assert via_env.config_dir == REPO_CONFIG


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        pytest.param("sqlite:///var/g.db", True, id="sqlite-relative"),
        pytest.param("sqlite:////tmp/g.db", True, id="sqlite-absolute"),
        pytest.param("postgresql://gw@127.0.0.1:5432/gateway", True, id="postgresql"),
        pytest.param("postgresql://gw:pw@db.example.org/gateway", True, id="postgresql-password"),
        pytest.param("postgresql://gw@127.0.0.1:5432/", False, id="postgresql-no-database"),
        pytest.param("postgresql://gw@:5432/gateway", False, id="postgresql-no-host"),
        pytest.param("postgresql://gw:pw@h:99999/gateway", False, id="postgresql-bad-port"),
        pytest.param("mysql://gw@h/gateway", False, id="other-scheme"),
        pytest.param("sqlite:///", False, id="sqlite-no-path"),
    ],
)
def test_store_urls(url: str, ok: bool) -> None:
    if ok:
        assert check_store_url(url, "environment", "GATEWAY_STORE") == url
        return
    with pytest.raises(ConfigError) as info:
        check_store_url(url, "environment", "GATEWAY_STORE")
    assert "pw" not in info.value.reason  # a password is never echoed


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(
            {"GATEWAY_STORE": "postgresql://gw@127.0.0.1:5432/gw"},
            "needs Redis",
            id="postgresql-without-redis",
        ),
        pytest.param(
            {"GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/0"},
            "SQLite store serves one process",
            id="redis-with-sqlite",
        ),
        pytest.param(
            {
                "GATEWAY_STORE": "postgresql://gw@127.0.0.1:5432/gw",
                "GATEWAY_REDIS_URL": "http://:secret@127.0.0.1:6379/0",
            },
            "is not redis://host:port",
            id="redis-bad-scheme",
        ),
    ],
)
def test_redis_is_required_exactly_with_postgresql(env: dict[str, str], message: str) -> None:
    """design.md "Storage and several processes": with postgresql:// Redis coordinates the
    processes; its absence is a start-up error, as is Redis for the one-process SQLite store."""
    with pytest.raises(ConfigError) as info:
        load_settings(REPO_CONFIG, {**env, "GATEWAY_TOKEN_PLATFORM": "s3cret"})
    assert info.value.key.endswith(("GATEWAY_REDIS_URL", "redis.url"))
    assert message in info.value.reason
    assert "secret" not in str(info.value)  # a password is never echoed


def test_redis_url_and_claim_idle_from_the_environment() -> None:
    env = {
        "GATEWAY_STORE": "postgresql://gw@127.0.0.1:5432/gw",
        "GATEWAY_REDIS_URL": "redis://127.0.0.1:6390/3",
        "GATEWAY_TOKEN_PLATFORM": "s3cret",
    }
    s = load_settings(REPO_CONFIG, env)
    assert s.redis.url == "redis://127.0.0.1:6390/3"
    assert s.redis.claim_idle_s == 15.0  # issue 11's default
