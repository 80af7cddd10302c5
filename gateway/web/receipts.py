"""The receipt routes: POST /v1/receipts (a delivery report, an ack or a manual confirmation,
each from its source only) and GET /v1/warnings/{id}/receipts (a warning's ledger timeline)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aiohttp import web

from gateway.clients import Scope
from gateway.exceptions import NotFound
from gateway.ingest import utc_now
from gateway.ledger import LedgerEntry
from gateway.masking import mask
from gateway.receipts import ManualConfirmation, parse_receipt
from gateway.web.body import read_body
from gateway.web.guard import CLIENT, json_response, read_response, requires
from gateway.web.keys import RECEIPTS, REGISTRY, STORE

log = logging.getLogger("gateway.api")

MAX_RECEIPT_BODY = 16 * 1024


@requires(None)
async def post_receipt(request: web.Request) -> web.Response:
    """A receipt from its source only (design.md "Trust"); the scope depends on its kind."""
    app = request.app
    client = request[CLIENT]
    raw = await read_body(request, MAX_RECEIPT_BODY)
    receipt = parse_receipt(raw, utc_now())
    if isinstance(receipt, ManualConfirmation):
        data = await app[RECEIPTS].manual(receipt, app[REGISTRY], client)
        log.info("manual confirmation for %s by client %s", receipt.warning_id, client.name)
        return json_response({"status": "recorded", **mask(data)}, 202)
    outcome = await app[RECEIPTS].report(receipt, client)
    return json_response(outcome.answer(), 202)


@requires(Scope.READ)
async def get_receipts(request: web.Request) -> web.Response:
    wid = request.match_info["id"]
    entries = await request.app[STORE].entries_for(wid)
    if not entries:
        raise NotFound(f"no ledger entries for {wid}")
    return read_response(receipts_timeline(wid, entries))


def receipts_timeline(wid: str, entries: Sequence[LedgerEntry]) -> dict[str, Any]:
    """The GET /v1/warnings/{id}/receipts answer (unmasked): each entry with the milliseconds
    since the first, and when each stage was first reached; `entries` is not empty."""
    start = datetime.fromisoformat(entries[0].at)
    out: list[dict[str, Any]] = []
    for e in entries:
        item = e.as_json()
        item["elapsed_ms"] = round((datetime.fromisoformat(e.at) - start).total_seconds() * 1000, 3)
        out.append(item)
    stages: dict[str, float] = {}
    for item in out:
        stages.setdefault(item["stage"], item["elapsed_ms"])
    return {"warning_id": wid, "entries": out, "stage_elapsed_ms": stages}
