"""A media partner's webhook receiver, run as its own process so tests can stop and restart it.

    python -m tests.webhook_receiver --port P --secret whsec_... --script '500,200' --log FILE

Every request to any path is verified with the stock `standardwebhooks` library, answered with
the next status of the script (the last one repeats forever) and logged as one JSON line
`{webhook_id, verified, status, body, error, headers}` before the answer goes out. Script items:
an HTTP status (an error status carries `Retry-After: --retry-after` unless that is empty), or
`hang`, which sleeps `--hang-s` seconds (past any client timeout) before answering 200. While
`--down-until` FILE does not exist, every request is answered 503 instead, and the script does
not advance (a partner down until the test calls `WebhookReceiver.heal`).
GET /healthz answers 200 and is not logged.

`WebhookReceiver` starts the process on a free loopback port and reads its log; the
`webhook_receivers` fixture makes receivers and stops them after the test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TypedDict

import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from tests.processes import free_port, http_ok, logged_lines, stop_process, wait_ready

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
DEFAULT_HANG_S = 30.0
LOGGED_HEADERS = ("content-type", "user-agent", "idempotency-key", "webhook-signature")


class LoggedRequest(TypedDict):
    """One line of the receiver's log."""

    webhook_id: str | None
    verified: bool
    status: int | str
    body: str
    error: str | None
    headers: dict[str, str]


# --- the receiver process -------------------------------------------------------------------


class _Script:
    def __init__(self, items: list[str]) -> None:
        self.items = items
        self.count = 0

    def next(self) -> str:
        item = self.items[min(self.count, len(self.items) - 1)]
        self.count += 1
        return item


def _append_line(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


def _build_app(args: argparse.Namespace) -> web.Application:
    webhook = Webhook(args.secret)
    script = _Script([s.strip() for s in args.script.split(",") if s.strip()] or ["200"])
    log_path = Path(args.log)
    padding = "x" * args.reply_bytes

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def receive(request: web.Request) -> web.Response:
        raw = await request.read()
        headers = dict(request.headers)
        error: str | None = None
        try:
            webhook.verify(raw, headers)  # the stock default call: verifies, parses JSON
        except (WebhookVerificationError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        down = args.down_until is not None and not await asyncio.to_thread(
            os.path.exists, args.down_until
        )
        item = "503" if down else script.next()
        entry = {
            "webhook_id": request.headers.get("webhook-id"),
            "verified": error is None,
            "status": item if item == "hang" else int(item),
            "body": raw.decode("utf-8", errors="replace"),
            "error": error,
            "headers": {k: request.headers[k] for k in LOGGED_HEADERS if k in request.headers},
        }
        await asyncio.to_thread(_append_line, log_path, json.dumps(entry, ensure_ascii=False))
        await asyncio.sleep(args.delay_s)
        if item == "hang":
            await asyncio.sleep(args.hang_s)
            return web.Response(text="late")
        status = int(item)
        out_headers = (
            {"Retry-After": args.retry_after} if status >= 400 and args.retry_after else {}
        )
        return web.Response(status=status, text=f"status {status} {padding}", headers=out_headers)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", receive)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.webhook_receiver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True, help="whsec_... secret to verify with")
    parser.add_argument("--script", default="200", help="statuses in order, e.g. 500,200,hang")
    parser.add_argument("--delay-s", type=float, default=0.0, help="wait before every answer")
    parser.add_argument("--hang-s", type=float, default=DEFAULT_HANG_S)
    parser.add_argument(
        "--retry-after", default="7", help="Retry-After of error answers ('' = none)"
    )
    parser.add_argument("--reply-bytes", type=int, default=0, help="pad every answer's body")
    parser.add_argument("--down-until", help="answer 503 until this file exists")
    parser.add_argument("--log", required=True, help="JSON lines file, appended to")
    args = parser.parse_args(argv)
    web.run_app(
        _build_app(args), host="127.0.0.1", port=args.port, print=None, shutdown_timeout=0.1
    )


# --- the test side --------------------------------------------------------------------------


class WebhookReceiver:
    """The receiver process on a fixed free port; `restart` keeps port and log (script anew)."""

    def __init__(
        self,
        workdir: Path,
        *,
        secret: str,
        script: str = "200",
        delay_s: float = 0.0,
        hang_s: float = DEFAULT_HANG_S,
        retry_after: str = "7",
        reply_bytes: int = 0,
        down_until_healed: bool = False,
    ) -> None:
        self.port = free_port()
        self.log = workdir / f"webhook-receiver-{self.port}.jsonl"
        self.healed = workdir / f"webhook-receiver-{self.port}.healed"
        self.output = workdir / f"webhook-receiver-{self.port}.out"
        self.args = [
            *("--port", str(self.port), "--secret", secret, "--script", script),
            *("--delay-s", str(delay_s), "--hang-s", str(hang_s)),
            *("--retry-after", retry_after, "--reply-bytes", str(reply_bytes)),
            *("--log", str(self.log)),
        ]
        if down_until_healed:
            self.args += ["--down-until", str(self.healed)]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/warnings"

    def start(self) -> WebhookReceiver:
        """Start the process and wait until it answers; raise RuntimeError if it does not."""
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.webhook_receiver", *self.args],
                cwd=Path(__file__).resolve().parent.parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{self.port}/healthz"
        wait_ready(self.proc, lambda: http_ok(url), "webhook receiver", self._out, START_TIMEOUT)
        return self

    def stop(self) -> None:
        stop_process(self.proc, STOP_TIMEOUT)

    def heal(self) -> None:
        """End a `down_until_healed` spell: the script answers from now on."""
        self.healed.touch()

    def restart(self) -> WebhookReceiver:
        self.stop()
        return self.start()

    def requests(self) -> list[LoggedRequest]:
        """Every request logged so far, in order of arrival (across restarts)."""
        return [json.loads(line) for line in logged_lines(self.log)]

    def _out(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""


class MakeReceiver(Protocol):
    def __call__(
        self,
        *,
        secret: str,
        script: str = ...,
        delay_s: float = ...,
        hang_s: float = ...,
        retry_after: str = ...,
        reply_bytes: int = ...,
        down_until_healed: bool = ...,
    ) -> WebhookReceiver: ...


@pytest.fixture(name="webhook_receivers")
def fixture_webhook_receivers(tmp_path: Path) -> Iterator[MakeReceiver]:
    """A factory of started receivers (keyword arguments as `WebhookReceiver`); all stop after."""
    started: list[WebhookReceiver] = []

    def make(**kwargs: Any) -> WebhookReceiver:
        receiver = WebhookReceiver(tmp_path, **kwargs)
        started.append(receiver)
        return receiver.start()

    yield make
    for receiver in started:
        receiver.stop()


if __name__ == "__main__":
    main()
