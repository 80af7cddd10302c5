"""POST /v1/warnings over HTTP: auth, validation, idempotency, durability (design.md contract)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.config import Settings
from tests.conftest import GatewayClient, MakeClient
from tests.helpers import auth, iso, warning_body


async def post(api: GatewayClient, body: Any, client: str = "platform") -> tuple[int, Any]:
    resp = await api.post("/v1/warnings", json=body, headers=auth(client))
    return resp.status, await resp.json()


async def test_accepts_a_valid_warning_with_202(api: GatewayClient) -> None:
    body = warning_body()
    status, answer = await post(api, body)
    assert status == 202, answer
    # 渝中区's 11 townships each have an SMS group; only the stub SMS channel is enabled here.
    assert answer == {"id": body["id"], "status": "active", "deliveries": 11, "blind_spots": []}
    resp = await api.get(f"/v1/warnings/{body['id']}", headers=auth())
    state = await resp.json()
    assert resp.status == 200
    assert state["status"] == "active"
    assert state["warning"]["hazard"] == "暴雨"
    assert state["authorization"]["annex1_row"] == 10


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"Authorization": "Bearer wrong-token"}, id="wrong-token"),
        pytest.param({"Authorization": "Basic dG9rOng="}, id="wrong-scheme"),
        pytest.param({"Authorization": "Bearer "}, id="empty-token"),
    ],
)
async def test_rejects_missing_or_wrong_token_with_401(
    api: GatewayClient, headers: dict[str, str]
) -> None:
    body = warning_body()
    resp = await api.post("/v1/warnings", json=body, headers=headers)
    assert resp.status == 401
    assert (await resp.json())["code"] == "unauthenticated"
    assert (await api.get(f"/v1/warnings/{body['id']}", headers=auth())).status == 404


async def test_reports_every_field_error_in_one_400(api: GatewayClient) -> None:
    now = datetime.now(UTC)
    body = warning_body(
        id="bad id!",
        level=7,
        title="",
        sent_at="2026-11-24T10:00:00",  # no offset
        expires_at=iso(now - timedelta(hours=1)),
        area={"districts": ["999999"], "townships": ["500101999"]},
        category="weather",
        content=None,
        surprise=1,
    )
    status, answer = await post(api, body)
    assert status == 400
    assert answer["code"] == "invalid_body"
    fields = {e["field"]: e["reason"] for e in answer["errors"]}
    assert set(fields) >= {
        "id",
        "level",
        "title",
        "sent_at",
        "expires_at",
        "area.districts",
        "area.townships",
        "category",
        "content",
        "surprise",
    }
    assert fields["content"] == "required"
    assert fields["surprise"] == "unknown field"
    assert "future" in fields["expires_at"]
    assert "999999" in fields["area.districts"]
    assert "500101999" in fields["area.townships"]


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        pytest.param({"expires_at": "tomorrow"}, "expires_at", "datetime", id="not-iso"),
        pytest.param({"expires_at": 1893456000}, "expires_at", "", id="unix-number"),
        pytest.param({"level": "1"}, "level", "integer", id="level-as-string"),
        pytest.param({"level": 0}, "level", "greater", id="level-0"),
        pytest.param({"title": "标" * 201}, "title", "at most 200", id="title-too-long"),
        pytest.param({"content": "文" * 4001}, "content", "at most 4000", id="content-too-long"),
        pytest.param({"id": "x" * 129}, "id", "at most 128", id="id-too-long"),
        pytest.param({"area": {}}, "area", "at least one", id="empty-area"),
        pytest.param(
            {"area": {"districts": ["5001"]}}, "area.districts", "not a valid", id="short"
        ),
        pytest.param({"audience": "everyone"}, "audience", "", id="bad-audience"),
        pytest.param({"channels": ["fax"]}, "channels[0]", "", id="bad-channel"),
        pytest.param({"msg_type": "update"}, "(body)", "references", id="update-no-ref"),
        pytest.param({"issuer": {"unit": "x"}}, "issuer.role", "required", id="issuer-no-role"),
    ],
)
async def test_rejects_bad_fields_with_400(
    api: GatewayClient, changes: dict[str, Any], field: str, reason: str
) -> None:
    status, answer = await post(api, warning_body(**changes))
    assert status == 400, answer
    fields = {e["field"]: e["reason"] for e in answer["errors"]}
    assert field in fields, fields
    assert reason in fields[field]


async def test_expires_at_must_follow_sent_at(api: GatewayClient) -> None:
    now = datetime.now(UTC)
    body = warning_body(
        # Both ahead of now, sent_at inside the 5-minute window (ingest.sent_window_s.future).
        sent_at=iso(now + timedelta(minutes=4)),
        expires_at=iso(now + timedelta(minutes=2)),
    )
    status, answer = await post(api, body)
    assert status == 400
    assert any("after sent_at" in e["reason"] for e in answer["errors"])


async def test_accepts_12_digit_cpeas_codes_normalised(api: GatewayClient) -> None:
    body = warning_body(area={"districts": ["500103000000"], "townships": ["500101001000"]})
    status, answer = await post(api, body)
    assert status == 202, answer
    stored = await (await api.get(f"/v1/warnings/{body['id']}", headers=auth())).json()
    assert stored["warning"]["area"] == {"districts": ["500103"], "townships": ["500101001"]}


@pytest.mark.parametrize(
    ("raw", "ctype", "status", "code"),
    [
        pytest.param(b"{not json", "application/json", 400, "invalid_body", id="broken-json"),
        pytest.param(b"[1, 2]", "application/json", 400, "invalid_body", id="not-object"),
        pytest.param(b"\xff\xfe", "application/json", 400, "invalid_body", id="not-utf8"),
        pytest.param(b"[" * 50000, "application/json", 400, "invalid_body", id="deep-nesting"),
        pytest.param(
            b"id=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type", id="form"
        ),
    ],
)
async def test_rejects_malformed_bodies(
    api: GatewayClient, raw: bytes, ctype: str, status: int, code: str
) -> None:
    resp = await api.post("/v1/warnings", data=raw, headers={**auth(), "Content-Type": ctype})
    assert resp.status == status
    assert (await resp.json())["code"] == code


async def test_rejects_a_body_over_the_size_limit_with_413(
    api: GatewayClient, settings: Settings
) -> None:
    body = warning_body(reason="因" * settings.max_body_bytes)
    status, answer = await post(api, body)
    assert status == 413
    assert answer["code"] == "payload_too_large"
    assert (await api.get(f"/v1/warnings/{body['id']}", headers=auth())).status == 404


async def test_same_id_same_body_answers_200_with_the_first_answer(api: GatewayClient) -> None:
    body = warning_body()
    first = await post(api, body)
    reordered = dict(reversed(list(body.items())))  # key order does not make another body
    again = await post(api, reordered)
    assert first[0] == 202
    assert again == (200, first[1])
    receipts = await (await api.get(f"/v1/warnings/{body['id']}/receipts", headers=auth())).json()
    stages = [e["stage"] for e in receipts["entries"]]
    assert stages[:3] == ["received", "authorized", "planned"]
    assert stages.count("received") == 1


async def test_same_id_other_body_answers_409(api: GatewayClient) -> None:
    body = warning_body()
    assert (await post(api, body))[0] == 202
    status, answer = await post(api, {**body, "title": "另一个标题"})
    assert status == 409
    assert answer["code"] == "id_conflict"
    stored = await (await api.get(f"/v1/warnings/{body['id']}", headers=auth())).json()
    assert stored["warning"]["title"] == body["title"]


async def test_concurrent_repeats_store_one_warning(api: GatewayClient) -> None:
    body = warning_body()
    results = await asyncio.gather(*(post(api, body) for _ in range(20)))
    statuses = sorted(s for s, _ in results)
    assert statuses.count(202) == 1
    assert statuses.count(200) == 19
    receipts = await (await api.get(f"/v1/warnings/{body['id']}/receipts", headers=auth())).json()
    stages = [e["stage"] for e in receipts["entries"]]
    assert stages[:3] == ["received", "authorized", "planned"]
    assert stages.count("received") == 1


async def test_an_accepted_warning_survives_a_restart(
    settings: Settings, make_client: MakeClient
) -> None:
    body = warning_body()
    first = await make_client(settings)
    assert (await post(first, body))[0] == 202
    await first.close()
    second = await make_client(settings)
    resp = await second.get(f"/v1/warnings/{body['id']}", headers=auth())
    assert resp.status == 200
    assert (await resp.json())["warning"]["title"] == body["title"]
    assert await post(second, body) == (
        200,
        {"id": body["id"], "status": "active", "deliveries": 11, "blind_spots": []},
    )


async def test_expired_warning_reports_expired(api: GatewayClient) -> None:
    body = warning_body(expires_at=iso(datetime.now(UTC) + timedelta(seconds=1)))
    assert (await post(api, body))[0] == 202
    await asyncio.sleep(1.2)
    state = await (await api.get(f"/v1/warnings/{body['id']}", headers=auth())).json()
    assert state["status"] == "expired"


async def test_unknown_warning_is_404(api: GatewayClient) -> None:
    for path in ("/v1/warnings/nope", "/v1/warnings/nope/receipts"):
        resp = await api.get(path, headers=auth())
        assert resp.status == 404
        assert (await resp.json())["code"] == "not_found"


async def test_update_of_unknown_reference_is_404(api: GatewayClient) -> None:
    status, answer = await post(api, warning_body(msg_type="update", references="no-such-id"))
    assert status == 404
    assert answer["code"] == "unknown_reference"
