"""An aiosmtpd SMTP server in its own process, for tests that stop and restart their server.

Run: `python -m tests.smtp_server --port P --maildir DIR [--fail-first N] [--fail-code 451]
[--fail-until FILE] [--reject-rcpt ADDR]... [--auth USER:PASSWORD] [--tls-cert PEM --tls-key PEM]
[--delay-s S]`.

Each accepted message is stored before the 250 reply as `DIR/msg-NNNNNN.json` (envelope sender,
recipients, the raw message in base64), written atomically. The first N DATA commands are
answered with `--fail-code` (451 temporary, 550 permanent), and so is every DATA command while
`--fail-until` FILE does not exist (a spell of refusals the test ends with `SmtpServer.heal`);
RCPT for a `--reject-rcpt` address is answered 550. `--delay-s` makes each RCPT take that long (a
slow server; before DATA, so a client that gives up meanwhile leaves nothing stored). Each
EHLO/HELO appends the client's address to `DIR/sessions.log`, so a test can count the
connections a client opened (distinct addresses: a second EHLO after STARTTLS is the same
connection; a readiness probe that never says EHLO is none).
`--auth` requires AUTH (PLAIN/LOGIN); `--tls-cert/--tls-key` offer STARTTLS.

`SmtpServer` drives that process from a test; the `smtp_server` fixture is a started one and
`smtp_server_factory` makes servers with options, all stopped at teardown.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.processes import free_port, logged_lines, stop_process, tcp_open, wait_ready

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.05
SESSIONS_LOG = "sessions.log"
HEALED = "healed"
SERVER_HOSTNAME = "test-smtp"
FAIL_TEXT = {4: "4.3.0 temporary failure, try again later", 5: "5.7.1 message rejected"}


# ---- the server process -------------------------------------------------------------------


class Handler:
    """aiosmtpd hooks: store, fail the first N DATA commands, refuse listed recipients."""

    def __init__(
        self,
        maildir: Path,
        fail_first: int,
        fail_code: int,
        reject_rcpt: Sequence[str],
        fail_until: Path | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.maildir = maildir
        self.delay_s = delay_s
        self.fail_left = fail_first
        self.fail_until = fail_until
        self.fail_code = fail_code
        self.reject = {a.lower() for a in reject_rcpt}
        self.stored = len(list(maildir.glob("msg-*.json")))

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        self._log_session(session)
        return responses

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        session.host_name = hostname
        self._log_session(session)
        return f"250 {SERVER_HOSTNAME}"

    def _log_session(self, session: Session) -> None:
        peer: Any = session.peer  # typed as str by aiosmtpd, really (host, port)
        host, port = peer[:2]
        with (self.maildir / SESSIONS_LOG).open("a", encoding="utf-8") as f:
            f.write(f"{host}:{port}\n")

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if address.lower() in self.reject:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.fail_left > 0:
            self.fail_left -= 1
            return f"{self.fail_code} {FAIL_TEXT[self.fail_code // 100]}"
        if self.fail_until is not None and not self.fail_until.exists():
            return f"{self.fail_code} {FAIL_TEXT[self.fail_code // 100]}"
        self.stored += 1
        name = f"msg-{self.stored:06d}"
        raw = envelope.original_content or b""
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "raw": base64.b64encode(raw).decode("ascii"),
        }
        tmp = self.maildir / f".{name}.tmp"
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, self.maildir / f"{name}.json")
        return f"250 2.0.0 OK queued as {name}"


def _authenticator(user: str, password: str) -> Any:
    def check(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535

    return check


async def serve(args: argparse.Namespace) -> None:
    fail_until = Path(args.fail_until) if args.fail_until else None
    handler = Handler(
        Path(args.maildir),
        args.fail_first,
        args.fail_code,
        args.reject_rcpt,
        fail_until,
        delay_s=args.delay_s,
    )
    tls: ssl.SSLContext | None = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    options: dict[str, Any] = {"hostname": SERVER_HOSTNAME, "tls_context": tls}
    if args.auth:
        user, _, password = args.auth.partition(":")
        options |= {
            "authenticator": _authenticator(user, password),
            "auth_required": True,
            "auth_require_tls": tls is not None,
        }
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, loop=loop, **options), "127.0.0.1", args.port
    )
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument(
        "--fail-code", type=int, default=451, choices=(421, 450, 451, 452, 550, 554)
    )
    parser.add_argument("--fail-until", help="refuse every DATA until this file exists")
    parser.add_argument("--reject-rcpt", action="append", default=[])
    parser.add_argument("--auth", help="USER:PASSWORD that AUTH must present")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--delay-s", type=float, default=0.0, help="each RCPT takes this long")
    args = parser.parse_args(argv)
    Path(args.maildir).mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args))


# ---- driving it from tests ----------------------------------------------------------------


@dataclass(frozen=True)
class StoredMessage:
    """One message the server accepted: its envelope and the parsed message."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    raw: bytes


class SmtpServer:
    """`python -m tests.smtp_server` on a free loopback port; `restart` keeps port and maildir."""

    def __init__(
        self,
        maildir: Path,
        *,
        fail_first: int = 0,
        fail_code: int = 451,
        fail_until_healed: bool = False,
        reject_rcpt: Sequence[str] = (),
        auth: str | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.port = free_port()
        self.maildir = maildir
        self.maildir.mkdir(parents=True, exist_ok=True)
        self.log = maildir.parent / f"{maildir.name}-server.log"
        self.args = [
            "--port", str(self.port),
            "--maildir", str(maildir),
            "--fail-first", str(fail_first),
            "--fail-code", str(fail_code),
        ]  # fmt: skip
        self.healed = maildir / HEALED
        if fail_until_healed:
            self.args += ["--fail-until", str(self.healed)]
        for addr in reject_rcpt:
            self.args += ["--reject-rcpt", addr]
        if auth:
            self.args += ["--auth", auth]
        if tls_cert and tls_key:
            self.args += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)]
        if delay_s:
            self.args += ["--delay-s", str(delay_s)]
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> SmtpServer:
        """Start the process; return once the port accepts connections, else raise."""
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.smtp_server", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
        wait_ready(
            self.proc, lambda: tcp_open(self.port), "SMTP server", self.output, START_TIMEOUT
        )
        return self

    def stop(self) -> None:
        stop_process(self.proc, STOP_TIMEOUT)

    def heal(self) -> None:
        """End a `fail_until_healed` spell: DATA is accepted from now on."""
        self.healed.touch()

    def restart(self) -> SmtpServer:
        self.stop()
        return self.start()

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def messages(self) -> list[StoredMessage]:
        """Every accepted message, in the order accepted."""
        parser = BytesParser(policy=default)
        out = []
        for path in sorted(self.maildir.glob("msg-*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            raw = base64.b64decode(record["raw"])
            parsed = parser.parsebytes(raw)
            assert isinstance(parsed, EmailMessage)
            out.append(StoredMessage(record["mail_from"], tuple(record["rcpt_tos"]), parsed, raw))
        return out

    def sessions(self) -> int:
        """How many client connections said EHLO/HELO (distinct client addresses)."""
        path = self.maildir / SESSIONS_LOG
        return len(set(logged_lines(path)))


class SmtpServerFactory(Protocol):
    def __call__(
        self,
        *,
        fail_first: int = 0,
        fail_code: int = 451,
        fail_until_healed: bool = False,
        reject_rcpt: Sequence[str] = (),
        auth: str | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        delay_s: float = 0.0,
    ) -> SmtpServer: ...


@pytest.fixture(name="smtp_server_factory")
def fixture_smtp_server_factory(tmp_path: Path) -> Iterator[SmtpServerFactory]:
    """Starts SMTP server processes with the given options; stops them all at teardown."""
    servers: list[SmtpServer] = []

    def make(
        *,
        fail_first: int = 0,
        fail_code: int = 451,
        fail_until_healed: bool = False,
        reject_rcpt: Sequence[str] = (),
        auth: str | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        delay_s: float = 0.0,
    ) -> SmtpServer:
        server = SmtpServer(
            tmp_path / f"mail-{len(servers)}",
            fail_first=fail_first,
            fail_code=fail_code,
            fail_until_healed=fail_until_healed,
            reject_rcpt=reject_rcpt,
            auth=auth,
            tls_cert=tls_cert,
            tls_key=tls_key,
            delay_s=delay_s,
        )
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(name="smtp_server")
def fixture_smtp_server(smtp_server_factory: SmtpServerFactory) -> SmtpServer:
    """A started SMTP server process that accepts everything."""
    return smtp_server_factory()


if __name__ == "__main__":
    main()
