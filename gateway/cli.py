"""The `gateway` command (also `python -m gateway`).

Exit codes: 0 success, 1 the operation failed (a lost delivery, a broken ledger, a refused
warning), 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from gateway import __version__
from gateway.app import build_app
from gateway.clients import token_env, warn_tokenless
from gateway.config import load_settings
from gateway.coverage import coverage_deadline, coverage_report
from gateway.exceptions import ConfigError, LedgerCorrupt, StoreUnavailable
from gateway.ledger import verify
from gateway.store import is_postgres, open_store
from gateway.townships import Registry
from gateway.web.keys import BOOK

log = logging.getLogger("gateway")

EXIT_FAILED = 1
EXIT_CONFIG = 2
SEND_TIMEOUT = ClientTimeout(total=30)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP gateway")
    serve.add_argument("--config", type=Path, help="config directory (default: ./config)")
    serve.add_argument("--listen", help="HOST:PORT (overrides GATEWAY_LISTEN and gateway.yaml)")

    drill = sub.add_parser("drill", help="run a sample red warning through the whole flow")
    drill.add_argument("--config", type=Path, help="config directory (default: ./config)")
    drill.add_argument("--json", action="store_true", help="print one JSON summary")

    send = sub.add_parser("send", help="POST a warning file (JSON) to a running gateway")
    send.add_argument("file", type=Path)
    send.add_argument("--url", help="gateway base URL (default: from GATEWAY_LISTEN/config)")
    send.add_argument("--client", default="platform", help="client whose token to use")
    send.add_argument("--config", type=Path)

    coverage = sub.add_parser("coverage", help="print a warning's township coverage")
    coverage.add_argument("warning_id")
    coverage.add_argument("--config", type=Path)
    coverage.add_argument("--json", action="store_true", help="print the API's JSON answer")

    ledger = sub.add_parser("ledger", help="ledger tools")
    lsub = ledger.add_subparsers(dest="ledger_command", required=True)
    lverify = lsub.add_parser("verify", help="check the ledger's hash chain")
    lverify.add_argument("--config", type=Path)

    db = sub.add_parser("db", help="store tools")
    dsub = db.add_subparsers(dest="db_command", required=True)
    dupgrade = dsub.add_parser("upgrade", help="create or migrate the store's schema")
    dupgrade.add_argument("--config", type=Path)

    partners = sub.add_parser("partners", help="media partner tools")
    psub = partners.add_subparsers(dest="partners_command", required=True)
    penable = psub.add_parser("enable", help="lift a partner's disable (after its HTTP 410)")
    penable.add_argument("partner_id")
    penable.add_argument("--config", type=Path)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The drill prints its own report; its logs would only bury it.
    default_level = "WARNING" if args.command == "drill" else "INFO"
    logging.basicConfig(
        level=os.environ.get("GATEWAY_LOG_LEVEL", default_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "drill":
            from gateway.drill.run import run_drill

            return run_drill(args.config, as_json=args.json)
        if args.command == "send":
            return asyncio.run(_send(args))
        if args.command == "coverage":
            return asyncio.run(_coverage(args))
        if args.command == "partners":
            return asyncio.run(_partners_enable(args))
        if args.command == "db":
            return asyncio.run(_db_upgrade(args))
        return asyncio.run(_ledger_verify(args))
    except ConfigError as exc:
        print(f"gateway: config error: {exc.file}: {exc.key}: {exc.reason}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreUnavailable as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `gateway coverage ID | head`: the reader has enough
        sys.stderr.close()
        return 0


GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Freeze the long-lived config objects and collect less often: a fan-out allocates many
    short-lived objects per delivery, and default thresholds spent about half the CPU of a
    large fan-out in the collector (bench/fanout.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, listen=args.listen)
    app = build_app(settings)
    warn_tokenless(settings.clients)
    for endpoint_id in app[BOOK].without_secret():
        log.warning(
            "webhook endpoint %s has no secret (its secret_env is unset): its deliveries will fail",
            endpoint_id,
        )
    tune_gc()
    log.info("serving on %s:%d, config %s", settings.host, settings.port, settings.config_dir)
    web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None)
    return 0


async def _send(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    try:
        body = args.file.read_bytes()
    except OSError as exc:
        print(f"gateway send: {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    token = os.environ.get(token_env(args.client))
    if not token:
        print(f"gateway send: set {token_env(args.client)}", file=sys.stderr)
        return EXIT_CONFIG
    url = (args.url or f"http://{settings.host}:{settings.port}").rstrip("/") + "/v1/warnings"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with (
        ClientSession(timeout=SEND_TIMEOUT) as http,
        http.post(url, data=body, headers=headers) as resp,
    ):
        text = await resp.text()
        print(f"{resp.status} {text}")
        return 0 if resp.status in (200, 202) else EXIT_FAILED


async def _ledger_verify(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    async with open_store(settings.store_url) as store:
        try:
            count = await verify(store.ledger())
        except LedgerCorrupt as exc:
            print(f"ledger broken at entry {exc.seq}: {exc.reason}", file=sys.stderr)
            return EXIT_FAILED
    print(f"ledger ok: {count} entries verified")
    return 0


async def _db_upgrade(args: argparse.Namespace) -> int:
    """Create or migrate the schema; a no-op on a database that is up to date."""
    settings = load_settings(args.config)
    if not is_postgres(settings.store_url):
        async with open_store(settings.store_url):  # SQLite creates its schema on open
            pass
        print("sqlite store: schema is created and migrated when the store opens; nothing to do")
        return 0
    from gateway.store.pg_schema import upgrade_url

    applied, latest = await upgrade_url(settings.store_url)
    if applied:
        print(f"schema upgraded to version {latest} (applied {', '.join(map(str, applied))})")
    else:
        print(f"schema already at version {latest}; nothing to do")
    return 0


async def _partners_enable(args: argparse.Namespace) -> int:
    """Lift the disable of a partner that answered 410; running gateways see it within
    seconds (they read the disabled endpoints again every few seconds)."""
    settings = load_settings(args.config)
    async with open_store(settings.store_url) as store:
        was = await store.enable_endpoint(args.partner_id)
    if not was:
        print(f"partner {args.partner_id} was not disabled", file=sys.stderr)
        return EXIT_FAILED
    print(f"partner {args.partner_id} enabled")
    return 0


async def _coverage(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    registry = Registry.load(settings.townships_path)
    async with open_store(settings.store_url) as store:
        stored = await store.get_warning(args.warning_id)
        if stored is None:
            print(f"gateway coverage: no warning {args.warning_id}", file=sys.stderr)
            return EXIT_FAILED
        rows = await store.coverage_for(args.warning_id)
    deadline = coverage_deadline(stored, settings.coverage.deadline_map())
    report = coverage_report(stored, rows, registry, deadline)
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print_coverage(report, registry)
    return 0


def print_coverage(report: dict[str, Any], registry: Registry) -> None:
    """The coverage report as a table, district by district."""
    c = report["counts"]
    print(
        f"warning {report['warning_id']}: {c['covered']}/{c['townships']} townships covered "
        f"({report['covered_share']:.1%}), {c['blind_spots']} blind spot(s), "
        f"{c['escalated']} escalated; deadline {report['deadline_at']}"
    )
    by_district: dict[str, list[dict[str, Any]]] = {}
    for t in report["townships"]:
        by_district.setdefault(t["district"], []).append(t)
    for district, items in by_district.items():
        done = sum(1 for t in items if t["status"] == "covered")
        print(f"\n{registry.name(district)} ({district}): {done}/{len(items)} covered")
        for t in items:
            by = t.get("covered_by") or {}
            how = by.get("means") or " ".join(
                str(by[k]) for k in ("channel", "endpoint") if k in by
            )
            flags = ("blind spot " if t["blind_spot"] else "") + (
                f"escalated {t['escalated_at'][11:19]}" if t.get("escalated_at") else ""
            )
            at = t.get("covered_at", "")[11:19]
            print(f"  {t['township']} {t['name']:<12} {t['status']:<8} {at:<8} {how:<28} {flags}")
