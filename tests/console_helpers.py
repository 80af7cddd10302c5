"""Console test helpers: sign in over HTTP and keep the session cookie by hand."""

from __future__ import annotations

import re
from http.cookies import SimpleCookie

from gateway.console.sessions import COOKIE
from tests.conftest import GatewayClient
from tests.helpers import TOKENS

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def sign_in(api: GatewayClient, who: str = "reader") -> tuple[dict[str, str], str]:
    """(headers carrying the session cookie, the session's CSRF token)."""
    api.session.cookie_jar.clear()
    resp = await api.post("/console/sign-in", data={"token": TOKENS[who]}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    morsel = SimpleCookie(resp.headers["Set-Cookie"])[COOKIE]
    api.session.cookie_jar.clear()
    headers = {"Cookie": f"{COOKIE}={morsel.value}"}
    page = await api.get("/console", headers=headers)
    found = _CSRF.search(await page.text())
    assert found is not None
    return headers, found.group(1)
