"""The HTTP edge against hostile or broken clients, over real sockets (design.md "HTTP contract"):
slow bodies (408, connection closed), slow headers (closed), clients that leave mid-body (one log
line, nothing stored), 405 with Allow, Content-Encoding (415 as JSON)."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GatewayClient
from tests.helpers import REPO_CONFIG_GATEWAY_YAML, TOKENS, auth, warning_body
from tests.processes import GatewayProcess

TIMEOUT_S = 1.0
"""http.body_timeout_s and http.header_timeout_s of these tests."""
SLACK_S = 2.5
"""How much later than a timeout the server's answer or close may come on a busy machine."""


@pytest.fixture
def config_dir(config_dir: Path) -> Path:
    gateway_yaml = config_dir / "gateway.yaml"
    gateway_yaml.write_text(
        REPO_CONFIG_GATEWAY_YAML
        + f"http: {{body_timeout_s: {TIMEOUT_S}, header_timeout_s: {TIMEOUT_S}}}\n",
        encoding="utf-8",
    )
    return config_dir


@pytest.fixture
def served(config_dir: Path, env: dict[str, str], tmp_path: Path) -> Iterator[GatewayProcess]:
    """`gateway serve` in its own process, logging to `served.log`."""
    gw = GatewayProcess({**env, "GATEWAY_CONFIG": str(config_dir)}, tmp_path).start()
    yield gw
    gw.stop()


def head(body_len: int, extra: str = "") -> bytes:
    return (
        "POST /v1/warnings HTTP/1.1\r\nHost: gateway\r\n"
        f"Authorization: Bearer {TOKENS['platform']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {body_len}\r\n{extra}\r\n"
    ).encode()


async def read_until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it closes the connection; fails after `within` s."""
    return await asyncio.wait_for(reader.read(), within)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head_part, _, body = raw.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
    return status, headers, body


async def test_stalled_body_gets_408_and_the_connection_is_closed(api: GatewayClient) -> None:
    body = json.dumps(warning_body()).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    started = time.monotonic()
    try:
        writer.write(head(len(body)) + body[: len(body) // 2])
        await writer.drain()
        raw = await read_until_closed(reader, TIMEOUT_S + SLACK_S)
        elapsed = time.monotonic() - started
    finally:
        writer.close()
    status, headers, answer = parse_response(raw)
    assert status == 408
    assert headers["content-type"].startswith("application/json")
    assert json.loads(answer)["code"] == "body_timeout"
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + SLACK_S
    # The half-sent warning was not stored; the next request is served as usual.
    wid = json.loads(body)["id"]
    resp = await api.get(f"/v1/warnings/{wid}", headers=auth())
    assert resp.status == 404
    resp = await api.post("/v1/warnings", json=warning_body(), headers=auth())
    assert resp.status == 202, await resp.text()


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param([], id="nothing-sent"),
        pytest.param([b"POST /v1/warnings HTTP/1.1\r\n"] + [b"X-Slow: 1\r\n"] * 40, id="slowloris"),
    ],
)
def test_a_connection_without_a_complete_head_is_closed(
    served: GatewayProcess, sent: list[bytes]
) -> None:
    async def run() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        started = time.monotonic()
        try:
            for piece in sent:  # a header line every 0.1 s: 4 s of headers if never cut off
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.1)
                if reader.at_eof():
                    break
            await read_until_closed(reader, TIMEOUT_S + SLACK_S)
        except ConnectionError:
            pass  # the server closed it while we were still writing
        finally:
            writer.close()
        return time.monotonic() - started

    elapsed = asyncio.run(run())
    assert elapsed < TIMEOUT_S + SLACK_S
    assert served.proc is not None
    assert served.proc.poll() is None


def test_a_client_leaving_mid_body_is_one_log_line(served: GatewayProcess) -> None:
    body = json.dumps(warning_body()).encode()
    wid = json.loads(body)["id"]

    async def run() -> None:
        _reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(head(len(body)) + body[: len(body) // 2])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()
        await writer.wait_closed()

    asyncio.run(run())
    time.sleep(0.3)
    status, _ = _http(served, "GET", f"/v1/warnings/{wid}")
    assert status == 404  # nothing was written
    status, answer = _http(served, "POST", "/v1/warnings", warning_body())
    assert status == 202, answer
    log = served.output()
    assert "Traceback" not in log
    assert " 500 " not in log
    assert "unhandled" not in log.lower()
    left = [line for line in log.splitlines() if "left after" in line]
    assert len(left) == 1, log
    assert re.search(r"(INFO|WARNING) gateway\.api: POST /v1/warnings: client", left[0])


def _http(gw: GatewayProcess, method: str, path: str, body: object = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(gw.url + path, data=data, method=method, headers=auth())
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_every_405_carries_allow_with_the_routes_methods(api: GatewayClient) -> None:
    checked = 0
    for resource in api.app.router.resources():
        allowed = {route.method for route in resource}
        if "*" in allowed:
            continue
        path = resource.canonical.replace("{id}", "w-1")
        for method in ("DELETE", "PATCH", "PUT", "POST", "GET"):
            if method in allowed:
                continue
            resp = await api.request(method, path, headers=auth())
            assert resp.status == 405, (method, path)
            assert set(resp.headers["Allow"].split(",")) == allowed, (method, path)
            assert (await resp.json())["code"] == "method_not_allowed"
            checked += 1
    assert checked >= 4 * 10  # every route of the contract, four wrong methods each


def _compressed(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "deflate":
        return zlib.compress(data)
    return data  # br, unknown codings: the bytes do not matter, the header is refused


@pytest.mark.parametrize(
    "encoding", ["br", "gzip", "deflate", "x-unknown", "gzip, identity", "GZIP"]
)
@pytest.mark.parametrize("route", ["/v1/warnings", "/v1/receipts"])
async def test_a_content_encoding_is_415_json(
    api: GatewayClient, encoding: str, route: str
) -> None:
    doc = warning_body()
    raw = _compressed(encoding.split(",")[0].lower(), json.dumps(doc).encode())
    resp = await api.post(
        route,
        data=raw,
        headers={**auth(), "Content-Type": "application/json", "Content-Encoding": encoding},
    )
    assert resp.status == 415
    answer = await resp.json()
    assert answer["code"] == "unsupported_encoding"
    assert "identity" in answer["message"]
    resp = await api.get(f"/v1/warnings/{doc['id']}", headers=auth())
    assert resp.status == 404


async def test_identity_encoding_is_accepted(api: GatewayClient) -> None:
    resp = await api.post(
        "/v1/warnings",
        json=warning_body(),
        headers={**auth(), "Content-Encoding": "identity"},
    )
    assert resp.status == 202, await resp.text()


async def test_broken_chunked_framing_mid_body_is_a_json_error(api: GatewayClient) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    try:
        writer.write(
            b"POST /v1/warnings HTTP/1.1\r\nHost: gateway\r\n"
            + f"Authorization: Bearer {TOKENS['platform']}\r\n".encode()
            + b'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n'
        )
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(b"ZZ\r\nnot a chunk\r\n0\r\n\r\n")
        await writer.drain()
        raw = await read_until_closed(reader, TIMEOUT_S + SLACK_S)
    finally:
        writer.close()
    status, headers, answer = parse_response(raw)
    assert 400 <= status < 500
    assert headers["content-type"].startswith("application/json")
    assert "code" in json.loads(answer)


def test_http_timeouts_are_validated(config_dir: Path, env: dict[str, str]) -> None:
    from gateway.config import load_settings
    from gateway.exceptions import ConfigError

    (config_dir / "gateway.yaml").write_text(
        REPO_CONFIG_GATEWAY_YAML + "http: {body_timeout_s: 0}\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(config_dir, env)
    assert "http.body_timeout_s" in str(exc.value)
