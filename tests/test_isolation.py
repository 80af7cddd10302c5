"""No caller can hurt another (design.md, "Warning": one client's bad input never fails or
delays another client's request; "Delivery under faults": one bad item is isolated without
failing its batch). The SQLite store commits many requests' writes in one transaction, so a
write it cannot encode must be refused before it joins one, and a batch that fails anyway is
retried write by write. Art. 17 (全程留痕, 预警回执) and art. 28: the ledger keeps verifying."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.config import load_settings
from gateway.exceptions import Unstorable
from gateway.ledger import LedgerDraft, Stage, verify
from gateway.store import StoredWarning
from gateway.store.base import Cover, CoverageRow, DeliveryRecord, DeliveryUpdate
from gateway.web.keys import STORE
from tests.conftest import MakeClient
from tests.helpers import REPO_CONFIG_GATEWAY_YAML, auth, iso, warning_body
from tests.store_switch import store_at

LONE = "\ud800"
PROVIDER_TOKEN = "tok-provider-0123456789"
# The SMS provider's own client (give it `scopes: [sms_callbacks]` once clients have scopes).
_PROVIDER_YAML = REPO_CONFIG_GATEWAY_YAML.replace(
    "  duty: {temporary_release: true}\n",
    "  duty: {temporary_release: true}\n  provider: {}\n",
)
PROVIDER = {"Authorization": f"Bearer {PROVIDER_TOKEN}"}
WARNINGS = 40


def _poisoned(message_id: str, warning_id: str, n: int) -> dict[str, Any]:
    """The n-th poisoned receipt: a lone surrogate in one string a receipt can carry."""
    at = iso(datetime.now(UTC))
    sms = {"message_id": message_id, "status": "delivered", "at": at}
    shapes: list[dict[str, Any]] = [
        {**sms, "phone": f"1380000{LONE}"},
        {**sms, "error": f"boom{LONE}", "status": "failed"},
        {**sms, "message_id": f"{message_id}{LONE}"},
        {**sms, "status": f"delivered{LONE}"},
        {**sms, "detail": {"parts": [{"phone": LONE, "note": {"deep": [LONE]}}]}},
        {**sms, f"extra{LONE}": "x"},
        {**sms, "part": f"1{LONE}"},
        {**sms, "at": f"{at}{LONE}"},
        {"delivery_id": f"{message_id}{LONE}", "status": "delivered", "at": at},
        {"delivery_id": message_id, "at": at, "detail": {LONE: LONE}},
        {
            "warning_id": warning_id,
            "township": "500103001",
            "means": "鸣锣",
            "by": f"张三{LONE}",
            "at": at,
            "note": LONE,
        },
    ]
    return shapes[n % len(shapes)]


async def test_poisoned_receipts_fail_alone_while_another_clients_warnings_are_stored(
    config_dir: Path, env: dict[str, str], make_client: MakeClient
) -> None:
    """Found by a hostile tester: 40 SMS callbacks with a lone surrogate sent at once rolled
    back the shared group commit, so 23 of 40 valid warnings got 500 and outcomes stayed
    pending. Now every poisoned receipt is a 400 and every valid warning a stored 202."""
    (config_dir / "gateway.yaml").write_text(_PROVIDER_YAML, encoding="utf-8")
    env["GATEWAY_TOKEN_PROVIDER"] = PROVIDER_TOKEN
    api = await make_client(load_settings(config_dir, env))
    seed = warning_body()
    assert (await api.post("/v1/warnings", json=seed, headers=auth())).status == 202
    listing = await api.get(f"/v1/warnings/{seed['id']}/deliveries", headers=auth())
    sms_ids = [d["id"] for d in (await listing.json())["deliveries"] if d["channel"] == "sms"]
    assert sms_ids

    async def warn(body: dict[str, Any]) -> tuple[int, Any]:
        resp = await api.post("/v1/warnings", json=body, headers=auth())
        return resp.status, await resp.json()

    async def poison(n: int) -> tuple[int, Any]:
        receipt = _poisoned(sms_ids[n % len(sms_ids)], seed["id"], n)
        resp = await api.post("/v1/receipts", json=receipt, headers=PROVIDER)
        return resp.status, await resp.json()

    bodies = [warning_body() for _ in range(WARNINGS)]
    jobs = [
        job for i, b in enumerate(bodies) for job in (warn(b), poison(2 * i), poison(2 * i + 1))
    ]
    answers = await asyncio.gather(*jobs)
    warned, poisoned = answers[0::3], [a for i, a in enumerate(answers) if i % 3]
    assert [s for s, _ in warned] == [202] * WARNINGS, [a for s, a in warned if s != 202]
    assert {(s, a.get("code")) for s, a in poisoned} == {(400, "invalid_receipt")}, poisoned

    for body in bodies:
        resp = await api.get(f"/v1/warnings/{body['id']}", headers=auth())
        assert resp.status == 200
    store = api.app[STORE]
    assert await verify(store.ledger()) > 0
    # Every outcome of the valid warnings is committed: none left pending by a rolled-back batch.
    for _ in range(100):
        pending = [
            d for b in bodies for d in await store.deliveries_for(b["id"]) if d.state == "pending"
        ]
        if not pending:
            break
        await asyncio.sleep(0.1)
    assert not pending, f"{len(pending)} deliveries still pending"


NOW = datetime.now(UTC)


def _stored(wid: str, doc: dict[str, Any] | None = None) -> StoredWarning:
    return StoredWarning(
        wid, "h", doc or {"id": wid}, {"id": wid}, "active", NOW, NOW + timedelta(hours=1), {}
    )


POISONED_WRITES = [
    pytest.param(
        lambda s: s.append([LedgerDraft("w", Stage.RECEIPT, NOW, {"phone": LONE})]),
        id="ledger-data-value",
    ),
    pytest.param(
        lambda s: s.append([LedgerDraft("w", Stage.RECEIPT, NOW, {LONE: 1})]), id="ledger-data-key"
    ),
    pytest.param(
        lambda s: s.append(
            [LedgerDraft("w", Stage.RECEIPT, NOW, {"detail": {"a": [{"b": LONE}]}})]
        ),
        id="ledger-data-nested-detail",
    ),
    pytest.param(
        lambda s: s.append([LedgerDraft(LONE, Stage.RECEIPT, NOW)]), id="ledger-warning-id"
    ),
    pytest.param(
        lambda s: s.append([LedgerDraft("w", Stage.RECEIPT, NOW, {"x": object()})]),
        id="ledger-data-not-json",
    ),
    pytest.param(
        lambda s: s.record([DeliveryUpdate("d", "sent", 1, {"e": LONE})], []),
        id="delivery-update-detail",
    ),
    pytest.param(
        lambda s: s.record([DeliveryUpdate("d", "sent", 2**70)], []),
        id="delivery-update-attempts-beyond-64-bits",
    ),
    pytest.param(
        lambda s: s.record([DeliveryUpdate("d", "delivered", receipt={"p": LONE})], []),
        id="receipt-book",
    ),
    pytest.param(
        lambda s: s.record([], [], [Cover("w", "500103001", NOW, {"by": LONE})]), id="cover-by"
    ),
    pytest.param(lambda s: s.accept(_stored("w-bad", {"title": LONE}), []), id="warning-document"),
    pytest.param(
        lambda s: s.accept(
            _stored("w-bad2"), [], [DeliveryRecord(f"d{LONE}", "w-bad2", "e", "sms", 3)]
        ),
        id="delivery-row",
    ),
    pytest.param(
        lambda s: s.accept(_stored("w-bad3"), [], coverage=[CoverageRow("w-bad3", LONE)]),
        id="coverage-row",
    ),
]


@pytest.mark.parametrize("poisoned", POISONED_WRITES)
async def test_a_write_the_store_cannot_encode_fails_alone_in_its_batch(
    tmp_path: Path, poisoned: Any
) -> None:
    """Given to the store directly (no HTTP validation in front), the poisoned write is refused
    with Unstorable before it joins the group commit; the 60 writes queued around it commit and
    the chain verifies."""
    async with store_at(tmp_path / "s.db") as store:
        good = [
            store.append([LedgerDraft(f"w{i}", Stage.RECEIVED, NOW, {"n": i})]) for i in range(30)
        ]
        accepted = [store.accept(_stored(f"ok{i}"), []) for i in range(30)]
        results = await asyncio.gather(
            *good[:15], poisoned(store), *good[15:], *accepted, return_exceptions=True
        )
        assert isinstance(results[15], Unstorable), results[15]
        others = results[:15] + results[16:]
        assert not [r for r in others if isinstance(r, BaseException)], others
        assert await verify(store.ledger()) == 30
        assert all([await store.get_warning(f"ok{i}") for i in range(30)])


async def test_a_batch_that_fails_at_commit_is_retried_write_by_write(tmp_path: Path) -> None:
    """A write that passes the checks but fails in the database (here a delivery id already taken)
    fails alone: its batch is committed again one write per transaction."""
    async with store_at(tmp_path / "s.db") as store:
        taken = DeliveryRecord("d-taken", "w-first", "e", "sms", 3)
        await store.accept(_stored("w-first"), [], [taken])
        clash = store.accept(
            _stored("w-clash"), [], [DeliveryRecord("d-taken", "w-clash", "e", "sms", 3)]
        )
        good = [
            store.append([LedgerDraft(f"w{i}", Stage.RECEIVED, NOW, {"n": i})]) for i in range(20)
        ]
        results = await asyncio.gather(*good[:10], clash, *good[10:], return_exceptions=True)
        assert isinstance(results[10], sqlite3.IntegrityError | psycopg.IntegrityError), results[10]
        assert not [r for r in results[:10] + results[11:] if isinstance(r, BaseException)]
        assert await store.get_warning("w-clash") is None
        assert await verify(store.ledger()) == 20


async def test_an_outcome_with_bad_text_is_stored_escaped_not_lost(tmp_path: Path) -> None:
    """`record_soon` has no caller to refuse: a delivery outcome whose diagnostic text is not
    valid Unicode is stored with that text escaped, and the writes beside it are kept."""
    async with store_at(tmp_path / "s.db") as store:
        await store.accept(_stored("w"), [], [DeliveryRecord("d", "w", "e", "sms", 3)])
        store.record_soon(
            [DeliveryUpdate("d", "failed", 1, {"reason": f"smtp said {LONE}"})],
            [LedgerDraft("w", Stage.FAILED, NOW, {"reason": f"smtp said {LONE}"})],
        )
        store.record_soon([], [LedgerDraft("w", Stage.RECEIPT, NOW, {"n": 1})])
        await store.append([LedgerDraft("w", Stage.RECEIPT, NOW, {"n": 2})])  # after both
        entries = await store.entries_for("w")
        assert next(e.data.get("reason") for e in entries) == "smtp said \\ud800"
        assert len(entries) == 3
        delivery = await store.get_delivery("d")
        assert delivery is not None
        assert delivery.state == "failed"
        assert await verify(store.ledger()) == 3
