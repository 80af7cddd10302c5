"""The ledger's hash chain (art. 17 全程留痕, art. 28) and the store's group commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.exceptions import LedgerCorrupt
from gateway.ledger import GENESIS, LedgerDraft, LedgerEntry, Stage, chain, verify
from tests.store_switch import execute, store_at, store_url


async def _iter(entries: list[LedgerEntry]) -> AsyncIterator[LedgerEntry]:
    for e in entries:
        yield e


def _chain(n: int) -> list[LedgerEntry]:
    out: list[LedgerEntry] = []
    prev = GENESIS
    for i in range(1, n + 1):
        e = chain(prev, i, LedgerDraft(f"w{i}", Stage.RECEIVED, datetime.now(UTC), {"i": i}))
        out.append(e)
        prev = e.hash
    return out


async def test_an_intact_chain_verifies() -> None:
    assert await verify(_iter(_chain(5))) == 5


@pytest.mark.parametrize(
    ("tamper", "bad_seq"),
    [
        pytest.param(lambda es: es.__setitem__(2, replace(es[2], data={"i": 99})), 3, id="data"),
        pytest.param(
            lambda es: es.__setitem__(1, replace(es[1], stage="delivered")), 2, id="stage"
        ),
        pytest.param(
            lambda es: es.__setitem__(3, replace(es[3], at="2020-01-01T00:00:00+00:00")),
            4,
            id="time",
        ),
        pytest.param(lambda es: es.pop(2), 3, id="removed"),
        pytest.param(
            lambda es: es.__setitem__(0, replace(es[0], prev_hash="f" * 64)), 1, id="prev-hash"
        ),
    ],
)
async def test_tampering_names_the_first_bad_entry(tamper: object, bad_seq: int) -> None:
    entries = _chain(5)
    tamper(entries)  # type: ignore[operator]
    with pytest.raises(LedgerCorrupt) as info:
        await verify(_iter(entries))
    assert info.value.seq == bad_seq


async def test_rehashing_one_edited_entry_still_breaks_the_next() -> None:
    entries = _chain(4)
    forged = chain(entries[0].hash, 2, LedgerDraft("w2", Stage.REJECTED, datetime.now(UTC)))
    entries[1] = forged
    with pytest.raises(LedgerCorrupt) as info:
        await verify(_iter(entries))
    assert info.value.seq == 3


async def test_concurrent_appends_form_one_gapless_chain_that_survives_reopen(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    async with store_at(path) as store:
        drafts = [
            [LedgerDraft(f"w{i}", Stage.RECEIVED, datetime.now(UTC), {"n": i})] for i in range(300)
        ]
        await asyncio.gather(*(store.append(d) for d in drafts))
        assert await verify(store.ledger()) == 300
    async with store_at(path) as store:  # the chain continues after a reopen
        await store.append([LedgerDraft("w", Stage.RECEIVED, datetime.now(UTC))])
        assert await verify(store.ledger()) == 301
    rows = execute(
        store_url(f"sqlite:///{path}"), "SELECT count(*), min(seq), max(seq) FROM ledger"
    )
    assert rows == [(301, 1, 301)]


async def test_a_closed_store_refuses_writes(tmp_path: Path) -> None:
    store = store_at(tmp_path / "s.db")
    with pytest.raises(RuntimeError, match="not open"):
        await store.append([LedgerDraft("w", Stage.RECEIVED, datetime.now(UTC))])


@pytest.mark.parametrize(
    "data",
    [{}, {"a": "中文", "b": [1, 2.5, None, True]}, {"x": {"z": 1, "y": '"q\\n'}}],
)
def test_entry_hash_is_sha256_of_previous_hash_and_canonical_json(data: dict[str, object]) -> None:
    import hashlib

    from gateway.ledger import canonical_json, entry_hash

    at = "2026-11-24T00:00:00.000000+00:00"
    body = canonical_json(
        {"seq": 7, "warning_id": "w/1", "stage": "attempt", "at": at, "data": data}
    )
    expected = hashlib.sha256(f"{GENESIS}\n{body}".encode()).hexdigest()
    assert entry_hash(GENESIS, 7, "w/1", "attempt", at, data) == expected
    assert entry_hash(GENESIS, 7, "w/1", "attempt", at, data, canonical_json(data)) == expected


@pytest.mark.parametrize(
    "text", ["w/1", "中文-预警", 'a"b', "a\\b", "tab\there", "nl\n", "\x00", "\x7f", "\u2028", "é"]
)
def test_entry_hash_quotes_every_text_as_canonical_json(text: str) -> None:
    # The hash skips the JSON encoder for text that needs no escaping; it must not matter.
    import hashlib

    from gateway.ledger import canonical_json, entry_hash

    body = canonical_json({"seq": 1, "warning_id": text, "stage": text, "at": text, "data": {}})
    expected = hashlib.sha256(f"{GENESIS}\n{body}".encode()).hexdigest()
    assert entry_hash(GENESIS, 1, text, text, text, {}) == expected


async def test_record_soon_writes_are_durable_and_a_backlog_makes_producers_wait(
    tmp_path: Path,
) -> None:
    from gateway.store.write_queue import MAX_BACKLOG

    path = tmp_path / "s.db"
    count = MAX_BACKLOG + 10
    async with store_at(path) as store:
        for i in range(count):  # faster than any disk: the writer has not run yet
            store.record_soon([], [LedgerDraft("w", Stage.ATTEMPT, datetime.now(UTC), {"i": i})])
        assert store.lagging()
        await asyncio.wait_for(store.caught_up(), 30)
        assert not store.lagging()
    async with store_at(path) as store:  # closing wrote what was still queued
        assert await verify(store.ledger()) == count
        assert [e.data["i"] for e in await store.entries_for("w")] == list(range(count))
