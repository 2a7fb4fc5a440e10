"""The OpenAPI document kept in the repo matches the app's routes, validates, and is served."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from services.ingest import OPENAPI_PATH, IngestDeps, build_app
from services.ingest.waiter import FutureRegistry
from shared.settings import Settings
from shared.telemetry import Metrics

pytestmark = pytest.mark.unit

_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


class _Nothing:
    async def send(self, *a, **k):
        raise AssertionError("not used")


def _app() -> web.Application:
    deps = IngestDeps(publisher=_Nothing(), store=_Nothing(), waiter=FutureRegistry(),  # type: ignore[arg-type]
                      metrics=Metrics())
    return build_app(Settings(auth_disabled=True), deps)


def _routed(app: web.Application) -> dict[str, set[str]]:
    routes: dict[str, set[str]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert path, f"route without a path: {route!r}"
        if route.method == "*":
            continue
        routes.setdefault(path, set()).add(route.method.lower())
    return routes


def _documented(doc: dict[str, Any]) -> dict[str, set[str]]:
    return {path: {m for m in item if m in _METHODS} for path, item in doc["paths"].items()}


def test_the_document_validates_as_openapi_31():
    doc = json.loads(OPENAPI_PATH.read_text())
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_every_route_is_documented_and_every_documented_path_is_routed():
    routed = _routed(_app())
    documented = _documented(json.loads(OPENAPI_PATH.read_text()))
    assert set(routed) == set(documented), (
        f"routed only: {set(routed) - set(documented)}, "
        f"documented only: {set(documented) - set(routed)}"
    )
    for path, methods in routed.items():
        assert methods == documented[path], path


def test_documented_path_parameters_match_the_route_placeholders():
    doc = json.loads(OPENAPI_PATH.read_text())
    for path, item in doc["paths"].items():
        placeholders = {p.strip("{}") for p in path.split("/") if p.startswith("{")}
        for method in set(item) & _METHODS:
            declared = {p["name"] for p in item[method].get("parameters", []) if p["in"] == "path"}
            assert declared == placeholders, (path, method)


def test_protected_operations_declare_bearer_security_and_open_ones_none():
    doc = json.loads(OPENAPI_PATH.read_text())
    open_paths = {"/health", "/livez", "/readyz", "/metrics", "/openapi.json", "/verify"}
    for path, item in doc["paths"].items():
        for method in set(item) & _METHODS:
            security = item[method].get("security")
            if path in open_paths:
                assert security == [], path
            else:
                assert security and "bearerAuth" in security[0], path
                assert "401" in item[method]["responses"] and "403" in item[method]["responses"]


async def test_the_served_document_is_the_file_in_the_repo():
    async with TestClient(TestServer(_app())) as client:
        r = await client.get("/openapi.json")
        assert r.status == 200
        assert await r.json() == json.loads(OPENAPI_PATH.read_text())
