"""The OpenAPI document in the repo matches the routes the app serves."""

from __future__ import annotations

import re

from gateway.app import build_app
from gateway.config import Settings
from gateway.web.service import openapi_document
from tests.conftest import GatewayClient

METHODS = {"get", "post", "put", "patch", "delete"}


def test_openapi_lists_exactly_the_served_routes(settings: Settings) -> None:
    app = build_app(settings)
    served = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path is None and "prefix" in info:  # a static directory
            path = info["prefix"] + "/{filename}"
        served.add((route.method.lower(), re.sub(r"\{(\w+)[^}]*\}", r"{\1}", str(path))))
    doc = openapi_document()
    documented = {
        (method, path) for path, ops in doc["paths"].items() for method in ops if method in METHODS
    }
    assert served == documented


async def test_served_openapi_is_the_repo_file(api: GatewayClient) -> None:
    resp = await api.get("/openapi.json")
    assert resp.status == 200
    assert await resp.json() == openapi_document()
