"""Offline verification on the real stack: HTTP append → signer → anchorer → Rekor → proof.

Ingest, the signer and the anchorer run in this event loop with their real wiring, against
the session's Kafka, PostgreSQL, OpenBao and Rekor, on a private database and private topics.
The proof is fetched over HTTP (``GET /entries/{id}/proof``) and checked with ``ledger verify``
(the CLI's ``main``) against the stack's Rekor key file and the payload: exit 0; one byte
changed in the bundle or in the payload: exit 1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ledger.cli import main
from services.anchorer import run_anchorer
from shared.db import Database, migrate
from shared.kafka import Record, make_consumer
from shared.messages import AnchoredEntry
from shared.settings import Settings
from shared.tracing import trace_id_of
from tests.integration.test_anchorer import running
from tests.integration.test_ingest import ingest_running, signer_running
from tests.support.lanes import new_prefix, private_lane

pytestmark = pytest.mark.integration

CLIENT_TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
async def lane(stack: Any, settings: Settings, tmp_path: Path) -> AsyncIterator[Settings]:
    yield await verification_lane(stack, settings, tmp_path)


async def verification_lane(stack: Any, settings: Settings, tmp_path: Path) -> Settings:
    """Settings on a private database and private topics, for one test's pipeline."""
    prefix = new_prefix("v")
    dsn = stack.require("postgres").create_database(f"verify_{prefix}")
    s = await private_lane(
        settings, prefix, 2,
        database_dsn=dsn,
        http_port=0,
        tokens_file=str(tmp_path / "tokens.jsonl"),
        append_wait_ms=30_000,
        anchor_batch_ms=200,
        sweeper_interval_s=3600.0,
        sweeper_age_s=3600.0,
        shutdown_grace_s=10.0,
    )
    db = await Database.connect(s, min_size=1, max_size=2)
    try:
        await migrate(db)
    finally:
        await db.close()
    return s


async def anchored_event(s: Settings, entry_id: uuid.UUID, *, limit_s: float) -> Record:
    """The ``ledger.anchored`` record of ``entry_id``, read from the topic as it arrives."""
    consumer = await make_consumer(s, group_id=f"reader-{uuid.uuid4().hex[:8]}",
                                   topics=[s.topic_anchored], client_id="test-verify-reader")
    try:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    value: bytes = r.value or b""
                    if AnchoredEntry.model_validate_json(value).entry.entry_id == entry_id:
                        return r
        raise AssertionError(f"no ledger.anchored event for {entry_id} within {limit_s:.0f}s")
    finally:
        await consumer.close()


async def anchored_bundles(
    s: Settings, payloads: list[bytes], *, subject: str, meta: dict[str, Any],
    limit_s: float = 120,
) -> list[bytes]:
    """Append every payload over HTTP (signed before the anchorer starts, so that they
    can share a batch), anchor them with the real services, and return their proof bundles
    as ``GET /entries/{id}/proof`` serves them."""
    async with ingest_running(s) as api, signer_running(s):
        entry_ids = []
        for n, payload in enumerate(payloads):
            status, entry, _ = await api.append(
                {"subject": subject, "payload": base64.b64encode(payload).decode(),
                 "meta": meta, "request_id": f"{s.topic_append.split('.')[0]}-{n}"})
            assert status == 201, entry
            entry_ids.append(uuid.UUID(entry["id"]))
        async with running(run_anchorer, s, "anchorer"):
            for entry_id in entry_ids:
                await anchored_event(s, entry_id, limit_s=limit_s)
        bundles = []
        headers = {"Authorization": f"Bearer {api.reader}"}
        for entry_id in entry_ids:
            async with api.session.get(f"{api.url}/entries/{entry_id}/proof",
                                       headers=headers) as r:
                assert r.status == 200, await r.text()
                bundles.append(await r.read())
        return bundles


def rekor_key_file(settings: Settings, directory: Path) -> Path:
    """The stack's Rekor log key (REKOR_PUBLIC_KEY / LEDGER_REKOR_PUBLIC_KEY) as a file."""
    value = settings.rekor_public_key
    assert value, "the stack exports no Rekor public key"
    if "-----BEGIN" not in value:
        return Path(value)
    path = directory / "rekor.pem"
    path.write_text(value)
    return path


def flip_one_byte(raw: bytes, after: bytes) -> bytes:
    """``raw`` with the byte right after the first ``after`` changed (hex digit stays hex)."""
    at = raw.index(after) + len(after)
    replacement = b"1" if raw[at : at + 1] != b"1" else b"2"
    return raw[:at] + replacement + raw[at + 1 :]


@pytest.mark.timeout(300)
async def test_an_appended_entry_is_proven_offline_with_ledger_verify(
    lane: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = lane
    payload = b"invoice 2026-0042, total 1234.56 EUR\n"
    request_id = f"{s.topic_append.split('.')[0]}-proof-1"
    async with ingest_running(s) as api, signer_running(s):
        status, entry, _ = await api.append(
            {"subject": "invoice:42", "payload": base64.b64encode(payload).decode(),
             "meta": {"source": "test_verification"}, "request_id": request_id},
            traceparent=CLIENT_TRACE)
        assert status == 201, entry
        entry_id = uuid.UUID(entry["id"])
        assert entry["payload_hash"] == hashlib.sha256(payload).hexdigest()

        # signed and stored, no anchorer yet: the proof does not exist
        status, pending = await api.get(f"/entries/{entry_id}/proof")
        assert status == 409, pending
        assert pending["error"] == "not_anchored" and pending["status"] == "pending"
        assert pending["id"] == str(entry_id) and pending["batch_id"] is None

        status, unknown = await api.get(f"/entries/{uuid.uuid4()}/proof")
        assert status == 404, unknown

        async with running(run_anchorer, s, "anchorer"):
            record = await anchored_event(s, entry_id, limit_s=120)
            event = record.value or b""
        # the client's trace continues through ledger.append and ledger.signed to here
        assert trace_id_of(record.headers) == CLIENT_TRACE.split("-")[1]

        headers = {"Authorization": f"Bearer {api.reader}"}
        async with api.session.get(f"{api.url}/entries/{entry_id}/proof", headers=headers) as r:
            assert r.status == 200, await r.text()
            assert r.content_type == "application/json"
            bundle = await r.read()
    # the proof is the entry's ledger.anchored event, byte for byte
    assert bundle == event

    bundle_file = tmp_path / "bundle.json"
    payload_file = tmp_path / "payload.bin"
    bundle_file.write_bytes(bundle)
    payload_file.write_bytes(payload)
    key = rekor_key_file(s, tmp_path)

    def verify(bundle_path: Path, payload_path: Path) -> tuple[int, str]:
        code = main(["verify", str(bundle_path), "--rekor-key", str(key),
                     "--payload", str(payload_path)])
        return code, capsys.readouterr().out

    code, out = verify(bundle_file, payload_file)
    assert code == 0, out
    assert "\u2717" not in out
    assert f"VERIFIED: entry {entry_id}" in out
    assert "\u2713 receipt" in out and "\u2713 payload" in out
    # the real log's uuid is the 16-hex tree id and the leaf hash; no signature covers the
    # tree id, nor anchored_at: neither is printed
    doc = json.loads(bundle)
    assert re.fullmatch(r"[0-9a-f]{80}", doc["receipt"]["uuid"]), doc["receipt"]["uuid"]
    assert doc["receipt"]["uuid"][:16] not in out
    assert doc["receipt"]["uuid"][16:] in out
    assert doc["anchored_at"] not in out and doc["entry"]["created_at"] not in out

    # one byte of the batch root changed in the bundle
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(flip_one_byte(bundle, b'"root":"'))
    code, out = verify(tampered, payload_file)
    assert code == 1, out
    assert "\u2717 audit_path" in out and "NOT VERIFIED" in out

    # one byte of the payload changed
    other_payload = tmp_path / "other.bin"
    other_payload.write_bytes(flip_one_byte(payload, b"total "))
    code, out = verify(bundle_file, other_payload)
    assert code == 1, out
    assert "\u2717 payload" in out
