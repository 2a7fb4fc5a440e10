"""The verification page on bundles from the real stack (Rekor's own receipts, checkpoints and
log key): a batch of one entry and a large batch pass every step in headless Chromium, as
they do with ``ledger verify``; one byte changed fails both at the same step."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shared.bundle import STEPS, BundleVerificationError, verify_bundle
from shared.settings import Settings
from tests.integration.test_verification import (
    anchored_bundles,
    flip_one_byte,
    rekor_key_file,
    verification_lane,
)
from tests.support.browser import chromium, file_url, page_verify

pytestmark = [pytest.mark.integration, pytest.mark.browser]

#: entries appended before the anchorer starts, so that they are anchored together
LARGE = 300


@pytest.fixture
async def lane(stack: Any, settings: Settings, tmp_path: Path) -> AsyncIterator[Settings]:
    yield await verification_lane(stack, settings, tmp_path)


def _python_steps(bundle: bytes, rekor: bytes, payload: bytes) -> tuple[list[str], str | None]:
    try:
        report = verify_bundle(bundle, rekor_public_key_pem=rekor, payload=payload)
    except BundleVerificationError as exc:
        return [p.step for p in exc.passed], exc.step
    return [s.step for s in report.steps], None


def _both_verdicts(bundles: list[bytes], payloads: list[bytes], rekor: bytes
                   ) -> list[tuple[tuple[list[str], str | None], tuple[list[str], str | None]]]:
    """(ledger verify's, the page's) steps passed and failing step, for every bundle."""
    out = []
    with chromium() as driver:
        driver.get(file_url())
        for bundle, payload in zip(bundles, payloads, strict=True):
            result = page_verify(driver, bundle, rekor, None, payload)
            page = ([s["step"] for s in result["steps"] if s["status"] == "pass"], result["failed"])
            out.append((_python_steps(bundle, rekor, payload), page))
    return out


async def _check(s: Settings, tmp_path: Path, payloads: list[bytes]) -> list[dict[str, Any]]:
    bundles = await anchored_bundles(s, payloads, subject="invoice:42",
                                     meta={"source": "test_verify_page"}, limit_s=240)
    rekor = rekor_key_file(s, tmp_path).read_bytes()
    tampered = flip_one_byte(bundles[-1], b'"root":"')
    verdicts = await asyncio.to_thread(
        _both_verdicts, [*bundles, tampered], [*payloads, payloads[-1]], rekor)
    every_step = [step for step in STEPS if step != "entry_key"]
    for n, (python, page) in enumerate(verdicts[:-1]):
        assert python == (every_step, None), (n, python)
        assert page == python, n
    python, page = verdicts[-1]
    assert python[1] == "audit_path" and page == python
    return [json.loads(b) for b in bundles]


@pytest.mark.timeout(600)
async def test_a_batch_of_one_entry_passes_in_the_page(lane: Settings, tmp_path: Path) -> None:
    (doc,) = await _check(lane, tmp_path, [b"the only document in its batch\n"])
    assert doc["batch"]["size"] == 1 and doc["audit_path"] == []


@pytest.mark.timeout(900)
async def test_every_entry_of_a_large_batch_passes_in_the_page(lane: Settings, tmp_path: Path) -> None:
    docs = await _check(lane, tmp_path, [f"document {n}\n".encode() for n in range(LARGE)])
    sizes = {d["batch"]["batch_id"]: d["batch"]["size"] for d in docs}
    assert sum(sizes.values()) == LARGE
    assert max(sizes.values()) >= 100, sizes  # deep audit paths: 7 hashes and more
    assert max(len(d["audit_path"]) for d in docs) >= 7
