"""Headless Chromium (Debian's ``chromium`` and ``chromium-driver``, installed by
``scripts/install.sh``) driven with Selenium, for the verification page's tests.

The driver is started from the system's ``chromedriver`` by path, so Selenium never looks
for (or downloads) a browser of its own. The browser's performance log is on: every
request the page makes shows up in :func:`requests_made`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from services.ingest.verify_page import PAGE_PATH

__all__ = ["CHROMEDRIVER", "CHROMIUM", "PAGE_PATH", "chromium", "network_log", "page_verify", "requests_made",
           "serve_in_thread"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@contextmanager
def chromium(width: int = 1100, height: int = 1400) -> Iterator[webdriver.Chrome]:
    """A headless Chromium session; fails (never skips) when the browser is not installed."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    assert not missing, f"{missing} missing: run scripts/install.sh (Debian chromium, chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-default-apps",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.set_script_timeout(120)
        yield driver
    finally:
        driver.quit()


def network_log(driver: webdriver.Chrome) -> dict[str, str]:
    """Every URL the browser tried to request since the last call (the performance log
    drains), with what became of it: ``sent``, or ``blocked:<reason>`` (``blocked:csp``)
    when the browser refused it before it left."""
    sent: dict[str, str] = {}
    outcome: dict[str, str] = {}
    for entry in driver.get_log("performance"):  # type: ignore[no-untyped-call]
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            outcome[params["requestId"]] = f"blocked:{params['blockedReason']}"
    return {url: outcome.get(rid, "sent") for rid, url in sent.items()}


def requests_made(driver: webdriver.Chrome) -> list[str]:
    """The URLs requested since the last call that the browser did not block."""
    return [url for url, what in network_log(driver).items() if what == "sent"]


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def page_verify(driver: webdriver.Chrome, bundle: bytes, rekor_pem: bytes,
                entry_pem: bytes | None = None, payload: bytes | None = None,
                anchor_pem: bytes | None = None) -> dict[str, Any]:
    """Run the page's verifier (``window.ledgerVerify``) on ``bundle``; its result object."""
    result: dict[str, Any] = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.ledgerVerify.verifyBase64(arguments[0], arguments[1], arguments[2], arguments[3],"
        " arguments[4]).then(done, (e) => done({crashed: String(e)}));",
        _b64(bundle), rekor_pem.decode(), None if entry_pem is None else entry_pem.decode(),
        _b64(payload), None if anchor_pem is None else anchor_pem.decode())
    assert "crashed" not in result, result
    return result


@contextmanager
def serve_in_thread(app: web.Application) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 from a thread of its own (Selenium's calls block); its URL."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        box["url"] = f"http://127.0.0.1:{port}"
        box["stop"] = stop = asyncio.Event()
        box["loop"] = asyncio.get_running_loop()
        started.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(30), "the server did not start"
    try:
        yield str(box["url"])
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(30)


def file_url(path: Path = PAGE_PATH) -> str:
    return path.resolve().as_uri()
