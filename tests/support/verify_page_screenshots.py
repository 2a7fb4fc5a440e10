"""Screenshots of the verification page for the docs: a passing and a failing verification of
the corpus bundle (tests/data/malformed_bundles), taken in headless Chromium::

    python -m tests.support.verify_page_screenshots     # rewrites docs/verify-page-*.png
"""

from __future__ import annotations

import base64
import sys
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.browser import chromium, file_url
from tests.support.malformed_bundles import CORPUS_DIR

DOCS = Path(__file__).resolve().parents[2] / "docs"
SHOTS = {"verify-page-passed.png": b"", "verify-page-failed.png": b"(a different document)\n"}


def _shot(driver: webdriver.Chrome, payload: Path, out: Path) -> None:
    driver.get(file_url())
    driver.find_element(By.ID, "bundle-file").send_keys(str(CORPUS_DIR / "valid.json"))
    driver.find_element(By.ID, "rekor-key").send_keys((CORPUS_DIR / "rekor.pem").read_text())
    driver.find_element(By.ID, "entry-key").send_keys((CORPUS_DIR / "entry.pem").read_text())
    driver.find_element(By.ID, "payload-file").send_keys(str(payload))
    driver.find_element(By.ID, "verify").click()
    summary = driver.find_element(By.ID, "summary")
    WebDriverWait(driver, 60).until(lambda d: "VERIFIED" in summary.text)
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": 1100, "height": height, "scale": 1}})
    out.write_bytes(base64.b64decode(shot["data"]))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, chromium() as driver:
        for name, extra in SHOTS.items():
            payload = Path(tmp) / "invoice.txt"
            payload.write_bytes((CORPUS_DIR / "payload.bin").read_bytes() + extra)
            _shot(driver, payload, DOCS / name)
            print(f"wrote {DOCS / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
