"""A fake SMS provider HTTP API that runs as its own process, so tests can stop and restart it.

    python -m tests.sms_provider --port P --log FILE --script '500,429:7,200'

Every POST (any path) is answered by the next entry of the script, and 200 once the script is
used up: `2xx` accepts with `{message_id, provider_ids, duplicate}` (`provider_ids` are the same
for the same Idempotency-Key); `429` or `429:S` answers 429 with `Retry-After: S` (default 1);
`hang` waits HANG_SECONDS before answering 200 (for client timeouts); any other status answers
`{"error": ...}` with that status. Each POST is appended to FILE as one JSON line
`{method, path, headers, body, status}` before it is answered. GET /healthz answers 200 and is
neither scripted nor logged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest
from aiohttp import web

from tests.processes import free_port, http_ok, logged_lines, stop_process, wait_ready

REPO_ROOT = Path(__file__).resolve().parent.parent
HANG_SECONDS = 30.0
DEFAULT_RETRY_AFTER = 1
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
PROBE_TIMEOUT = 1.0
SHUTDOWN_TIMEOUT = 0.2


@dataclass(frozen=True)
class Step:
    """One scripted answer: an HTTP status, Retry-After seconds for 429, or a hang."""

    status: int
    retry_after: int | None = None
    hang: bool = False


def parse_script(script: str) -> list[Step]:
    """`'500,429:7,hang,400'` as steps; ValueError on anything else."""
    steps: list[Step] = []
    for raw in script.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry == "hang":
            steps.append(Step(200, hang=True))
            continue
        code, _, seconds = entry.partition(":")
        status = int(code)
        if not 200 <= status <= 599:
            raise ValueError(f"not an HTTP status: {entry}")
        if seconds and status != 429:
            raise ValueError(f"only 429 takes a Retry-After: {entry}")
        retry_after = (int(seconds) if seconds else DEFAULT_RETRY_AFTER) if status == 429 else None
        steps.append(Step(status, retry_after))
    return steps


class FakeProvider:
    """The request handlers: answers per script, logs every POST as a JSON line."""

    def __init__(self, log: Path, steps: list[Step]) -> None:
        self.log = log
        self.steps = list(steps)
        self.ids: dict[str, list[str]] = {}

    def _next(self) -> Step:
        return self.steps.pop(0) if self.steps else Step(200)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def submit(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body: Any
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        step = self._next()
        entry = {
            "method": request.method,
            "path": request.path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body,
            "status": step.status,
            "hang": step.hang,
        }
        self._write(entry)
        if step.hang:
            await asyncio.sleep(HANG_SECONDS)
        if step.status == 429:
            return web.json_response(
                {"error": "rate limited"},
                status=429,
                headers={"Retry-After": str(step.retry_after)},
            )
        if not 200 <= step.status < 300:
            return web.json_response({"error": f"scripted {step.status}"}, status=step.status)
        return self._accept(request, body, step.status)

    def _write(self, entry: dict[str, Any]) -> None:
        # Written before answering, so a client that got its answer finds its line.
        with self.log.open("a", encoding="utf-8") as out:
            out.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def _accept(self, request: web.Request, body: Any, status: int) -> web.Response:
        if not isinstance(body, dict):
            return web.json_response({"error": "body is not a JSON object"}, status=400)
        # Without an Idempotency-Key every request is a new message.
        key = request.headers.get("Idempotency-Key") or f"anonymous-{len(self.ids)}"
        duplicate = key in self.ids
        if not duplicate:
            phones = body.get("phones") or []
            self.ids[key] = [f"p{len(self.ids) + 1}-{i}" for i in range(len(phones))]
        return web.json_response(
            {
                "message_id": body.get("message_id"),
                "provider_ids": self.ids[key],
                "duplicate": duplicate,
            },
            status=status,
        )


async def serve(port: int, log: Path, steps: list[Step]) -> None:
    """Serve on 127.0.0.1:`port` until SIGTERM or SIGINT."""
    fake = FakeProvider(log, steps)
    app = web.Application()
    app.router.add_get("/healthz", fake.healthz)
    app.router.add_post("/{tail:.*}", fake.submit)
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.sms_provider", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--script", default="")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.log, parse_script(args.script)))


class SmsProviderProcess:
    """The fake provider in its own process on a fixed free port; survives restarts.

    `start` waits until it answers /healthz; the log file is kept across restarts, so
    `requests()` returns every POST it ever received, oldest first.
    """

    def __init__(self, log: Path, script: str = "200") -> None:
        parse_script(script)
        self.port = free_port()
        self.log = log
        self.script = script
        self.output = log.with_suffix(".out")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/sms"

    def start(self) -> Self:
        cmd = [sys.executable, "-m", "tests.sms_provider", "--port", str(self.port)]
        cmd += ["--log", str(self.log), "--script", self.script]
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
        probe = f"http://127.0.0.1:{self.port}/healthz"
        wait_ready(
            self.proc,
            lambda: http_ok(probe, PROBE_TIMEOUT),
            "fake SMS provider",
            self._out,
            START_TIMEOUT,
        )
        return self

    def stop(self) -> None:
        stop_process(self.proc, STOP_TIMEOUT)

    def restart(self, script: str | None = None) -> Self:
        """Stop, then start on the same port with `script` (or the previous one) from its start."""
        self.stop()
        if script is not None:
            parse_script(script)
            self.script = script
        return self.start()

    def requests(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in logged_lines(self.log)]

    def _out(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""


@pytest.fixture
def sms_provider(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SmsProviderProcess]:
    """A running fake provider; its script is the indirect parameter, else '200'."""
    script: str = getattr(request, "param", "200")
    proc = SmsProviderProcess(tmp_path / "sms-provider.jsonl", script).start()
    try:
        yield proc
    finally:
        proc.stop()


if __name__ == "__main__":
    main()
