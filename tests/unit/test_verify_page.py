"""``GET /verify``: the page is served to anyone, with a policy that allows it no request, and
the page itself neither names a place to send anything nor shares code with the Python
verifier. (What the page does is tested in a browser: test_verify_page_browser.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.ingest import IngestDeps, build_app
from services.ingest.auth import TokenStore, create_token
from services.ingest.verify_page import (
    PAGE_PATH,
    content_security_policy,
    header_policy,
    meta_policy,
)
from services.ingest.waiter import FutureRegistry
from shared.bundle import STEPS
from shared.settings import Settings
from shared.telemetry import Metrics

pytestmark = pytest.mark.unit

HTML = PAGE_PATH.read_text(encoding="utf-8")
SCRIPT = re.search(r"<script>(.*?)</script>", HTML, re.DOTALL).group(1)  # type: ignore[union-attr]


class _Nothing:
    async def send(self, *a, **k):
        raise AssertionError("the page must not touch a dependency")


def _app(tmp_path: Path):
    tokens = tmp_path / "tokens.jsonl"
    create_token(str(tokens), "reader", ["read"])
    deps = IngestDeps(publisher=_Nothing(), store=_Nothing(), waiter=FutureRegistry(),  # type: ignore[arg-type]
                      metrics=Metrics(), tokens=TokenStore(tokens))
    return build_app(Settings(auth_disabled=False, tokens_file=str(tokens)), deps)


async def test_the_page_is_served_without_a_token_with_a_policy_that_allows_no_request(tmp_path):
    async with TestClient(TestServer(_app(tmp_path))) as client:
        protected = await client.get("/entries")
        assert protected.status == 401  # authentication is on...
        r = await client.get("/verify")  # ...and the page needs none
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        assert await r.read() == PAGE_PATH.read_bytes()
        policy = r.headers["Content-Security-Policy"]
        assert policy == header_policy(HTML)
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["frame-ancestors"] == "'none'"
        assert directives["form-action"] == "'none'"
        assert "connect-src" not in directives  # default-src 'none' covers every fetch
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert (await client.post("/verify")).status == 405


def test_the_meta_policy_is_the_one_the_page_needs():
    """The <meta> holds when the page is opened from disk; its hashes must be current
    (refresh them with ``python -m services.ingest.verify_page``)."""
    assert meta_policy(HTML) == content_security_policy(HTML)
    assert "'unsafe-inline'" not in HTML and "'unsafe-eval'" not in HTML
    assert len(re.findall(r"<script", HTML)) == 1  # one inline script, no src=
    assert not re.search(r"\s(src|href)=\"(?!data:)", HTML)  # nothing loaded from elsewhere


def test_the_script_names_no_way_out():
    """Defence in depth behind the policy: no API that sends anything, no URL, no eval."""
    for word in ("fetch(", "XMLHttpRequest", "WebSocket", "EventSource", "sendBeacon",
                 "importScripts", "Worker(", "eval(", "Function(", "http:", "https:",
                 "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "window.open"):
        assert word not in SCRIPT, word


def test_the_page_runs_the_steps_of_ledger_verify_in_order():
    declared = re.search(r"const STEPS = \[(.*?)\];", SCRIPT, re.DOTALL).group(1)  # type: ignore[union-attr]
    assert re.findall(r'"(\w+)"', declared) == list(STEPS)
    table = re.findall(r'^  \["(\w+)", async', SCRIPT, re.MULTILINE)
    assert table == list(STEPS[1:])  # the bundle step runs first, then the table in order


def test_the_docs_show_the_page_passing_and_failing():
    docs = Path(__file__).resolve().parents[2] / "docs"
    for name in ("verify-page-passed.png", "verify-page-failed.png"):
        data = (docs / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, name
        for page in (docs / "verification.md", docs.parent / "README.md"):
            assert name in page.read_text(), (name, page)
