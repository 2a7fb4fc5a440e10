"""``ledger audit`` on the real stack: every tampering with the database is found.

A private database is filled the way production fills it: append requests go to Kafka, the
real signer (OpenBao Ed25519) and anchorer (OpenBao P-256, the session's real Rekor v1) run
in this event loop and anchor the entries in several small batches; two more entries are
signed while no anchorer runs, so they stay unanchored. Then ``ledger audit`` runs as a
subprocess (``python -m ledger.cli audit``) with the database, Rekor URL and pinned Rekor key
in its environment: exit 0. Then, one at a time, each tampering a database administrator
could do is applied with plain SQL, the audit must exit 1 naming the batch and the entry,
and the tables are restored from a copy taken before.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from services.anchorer import run_anchorer
from services.signer.app import run_signer
from shared.db import Database, migrate
from shared.kafka import make_producer
from shared.merkle import MerkleTree
from shared.messages import AppendRequest
from shared.records import ENTRY_COLUMNS, EntryRecord
from shared.settings import Settings
from shared.statement import content_sha256, entry_id_for, manifest_bytes, statement_bytes
from tests.integration.test_anchorer import running
from tests.support.lanes import lane_topics
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ANCHORED = 10
UNANCHORED = 2


@dataclass
class Ledger:
    settings: Settings
    db: Database
    env: dict[str, str]
    batches: list[dict[str, Any]]  # id, size, rekor_uuid; biggest first

    async def audit(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ledger.cli", "audit", *args,
            cwd=REPO, env=env or self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def restore(self) -> None:
        async def tx(t: Any) -> None:
            await t.execute("DELETE FROM ledger.entries")
            await t.execute("DELETE FROM ledger.batches")
            await t.execute("INSERT INTO ledger.batches SELECT * FROM ledger.audit_copy_batches")
            await t.execute("INSERT INTO ledger.entries SELECT * FROM ledger.audit_copy_entries")

        await self.db.transaction(tx)

    async def members(self, batch_id: uuid.UUID) -> list[EntryRecord]:
        rows = await self.db.fetch(
            f"SELECT {ENTRY_COLUMNS} FROM ledger.entries WHERE batch_id = $1"
            " ORDER BY leaf_index", batch_id)
        return [EntryRecord.from_row(r) for r in rows]


async def _publish(s: Settings, tag: str, n: int) -> list[str]:
    producer = await make_producer(s, client_id=f"audit-{tag}")
    now = datetime.now(UTC)
    requests = [
        AppendRequest(request_id=f"{tag}-{i}", subject=f"acct-{i % 3}",
                      payload_sha256=hashlib.sha256(f"{tag}/{i}".encode()).hexdigest(),
                      meta={"n": i, "tag": tag, "ok": True}, submitted_at=now)
        for i in range(n)
    ]
    try:
        await producer.send_many((s.topic_append, r.subject, r.to_bytes(), None)
                                 for r in requests)
    finally:
        await producer.close()
    return [r.request_id for r in requests]


@pytest.fixture
async def ledger(stack: Any, settings: Settings) -> AsyncIterator[Ledger]:
    suffix = uuid.uuid4().hex[:10]
    dsn = stack.require("postgres").create_database(f"audit_{suffix}")
    s = settings.model_copy(update={
        "database_dsn": dsn,
        "topic_append": f"a{suffix}.append",
        "topic_signed": f"a{suffix}.signed",
        "topic_anchored": f"a{suffix}.anchored",
        "signer_group": f"a{suffix}-signer",
        "anchorer_group": f"a{suffix}-anchorer",
        "anchor_batch_max": 3,
        "anchor_batch_ms": 200,
        "sweeper_interval_s": 3600.0,
        "sweeper_age_s": 3600.0,
        "shutdown_grace_s": 10.0,
    })
    await lane_topics(s, partitions=2)
    db = await Database.connect(s, min_size=1, max_size=2)
    await migrate(db)

    async def count(sql: str) -> int:
        return int(await db.fetchval(sql))

    async with running(run_signer, s, "signer"):
        async with running(run_anchorer, s, "anchorer"):
            await _publish(s, f"{suffix}-a", ANCHORED)

            async def all_anchored() -> bool:
                return await count("SELECT count(*) FROM ledger.entries"
                                   " WHERE anchored_at IS NOT NULL") == ANCHORED

            await wait_for(all_anchored, within=180, what=f"{ANCHORED} anchored entries")
        await _publish(s, f"{suffix}-u", UNANCHORED)

        async def all_signed() -> bool:
            return await count("SELECT count(*) FROM ledger.entries") == ANCHORED + UNANCHORED

        await wait_for(all_signed, within=120, what="the unanchored entries")

    await db.execute("CREATE TABLE ledger.audit_copy_entries AS SELECT * FROM ledger.entries")
    await db.execute("CREATE TABLE ledger.audit_copy_batches AS SELECT * FROM ledger.batches")
    batches = [dict(r) for r in await db.fetch(
        "SELECT id, size, rekor_uuid FROM ledger.batches WHERE state = 'anchored'"
        " ORDER BY size DESC, id")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "CRDB_"))}
    env.update({
        "CRDB_DSN": dsn,
        "REKOR_SERVER_URL": s.rekor_server_url,
        "LEDGER_REKOR_PUBLIC_KEY": s.rekor_public_key,
        "PYTHONPATH": str(REPO),
    })
    try:
        yield Ledger(settings=s, db=db, env=env, batches=batches)
    finally:
        await db.close()


def problem_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("\u2717 ")]


def forged_row(batch_id: uuid.UUID, leaf_index: int, key_version: int) -> dict[str, Any]:
    """A self-consistent row signed with a key made here, claiming an anchored batch."""
    key = ed25519.Ed25519PrivateKey.generate()
    request_id = f"forged-{uuid.uuid4().hex[:8]}"
    meta = {"forged": True}
    payload = hashlib.sha256(b"forged").hexdigest()
    submitted = datetime.now(UTC)
    statement = statement_bytes(request_id=request_id, subject="acct-0", payload_sha256=payload,
                                meta=meta, submitted_at=submitted)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return {
        "id": entry_id_for(request_id), "request_id": request_id, "subject": "acct-0",
        "payload_hash": payload, "meta": json.dumps(meta), "submitted_at": submitted,
        "statement": statement,
        "sig": f"vault:v{key_version}:{base64.b64encode(key.sign(statement)).decode()}",
        "pubkey": pem, "key_version": key_version,
        "content_sha256": content_sha256(subject="acct-0", payload_sha256=payload, meta=meta),
        "batch_id": batch_id, "leaf_index": leaf_index,
    }


async def insert_forged(lg: Ledger, batch_id: uuid.UUID, leaf_index: int) -> uuid.UUID:
    ref = await lg.db.fetchrow(
        "SELECT key_version, rekor_log_id, rekor_index, anchored_at FROM ledger.entries"
        " WHERE batch_id = $1 LIMIT 1", batch_id)
    assert ref is not None
    row = forged_row(batch_id, leaf_index, ref["key_version"])
    await lg.db.execute(
        "INSERT INTO ledger.entries (id, request_id, subject, payload_hash, meta, submitted_at,"
        " statement, sig, pubkey, key_name, key_version, content_sha256, batch_id, leaf_index,"
        " rekor_log_id, rekor_index, anchored_at)"
        " VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, 'ledger-ed25519', $10, $11, $12,"
        " $13, $14, $15, $16)",
        row["id"], row["request_id"], row["subject"], row["payload_hash"], row["meta"],
        row["submitted_at"], row["statement"], row["sig"], row["pubkey"], row["key_version"],
        row["content_sha256"], batch_id, leaf_index, ref["rekor_log_id"], ref["rekor_index"],
        ref["anchored_at"])
    forged_id: uuid.UUID = row["id"]
    return forged_id


@pytest.mark.timeout(900)
async def test_ledger_audit_finds_every_tampering(ledger: Ledger) -> None:
    lg = ledger
    assert len(lg.batches) >= 3, lg.batches
    target = lg.batches[0]
    batch_id: uuid.UUID = target["id"]
    assert target["size"] >= 2, target
    members = await lg.members(batch_id)

    # --- untouched: clean, offline and online, text and JSON --------------------------------
    code, out, err = await lg.audit("--online", "--chunk-size", "2")
    assert code == 0, out + err
    assert problem_lines(out) == []
    assert f"batches checked: {len(lg.batches)} anchored" in out
    assert f"entries checked: {ANCHORED} anchored" in out
    assert f"unanchored entries: {UNANCHORED}" in out and "NOT tamper-evident" in out
    assert "AUDIT CLEAN" in out
    assert "audit:" in err  # progress lines on stderr when it is not a TTY

    code, out, _ = await lg.audit("--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["clean"] is True and report["problems"] == []
    assert report["batches_checked"] == len(lg.batches)
    assert report["entries_checked"] == ANCHORED
    assert report["unanchored_entries"] == UNANCHORED

    code, out, _ = await lg.audit("--batch", str(batch_id))
    assert code == 0, out
    assert "batches checked: 1 anchored" in out

    # --- no pinned Rekor key: refuses to run (exit 2) ---------------------------------------
    no_key = {k: v for k, v in lg.env.items() if k != "LEDGER_REKOR_PUBLIC_KEY"}
    code, out, err = await lg.audit(env=no_key)
    assert code == 2, out + err
    assert "no pinned Rekor public key" in err and "--rekor-key" in err

    # --- a changed row: UPDATE one member's meta -------------------------------------------
    victim = members[1]
    await lg.db.execute("UPDATE ledger.entries SET meta = $2::jsonb WHERE id = $1",
                        victim.id, json.dumps({**victim.meta, "ok": False}))
    code, out, _ = await lg.audit()
    assert code == 1, out
    lines = problem_lines(out)
    assert lines and all(f"entry {victim.id}" in line for line in lines), lines
    assert any(f"batch {batch_id}" in line and "statement_fields" in line and "meta" in line
               for line in lines), lines
    assert "AUDIT FAILED" in out
    await lg.restore()

    # --- a removed row: DELETE one member -----------------------------------------------------
    gone = members[1]
    await lg.db.execute("DELETE FROM ledger.entries WHERE id = $1", gone.id)
    code, out, _ = await lg.audit()
    assert code == 1, out
    lines = problem_lines(out)
    assert any(f"batch {batch_id}" in line and f"no row for leaf index {gone.leaf_index}" in line
               for line in lines), lines
    assert any(f"{target['size'] - 1} rows claim this batch" in line for line in lines), lines
    await lg.restore()

    # --- an inserted row: a forged, validly self-signed row claiming the next leaf index -----
    forged = await insert_forged(lg, batch_id, target["size"])
    code, out, _ = await lg.audit()
    assert code == 1, out
    lines = problem_lines(out)
    named = [line for line in lines if f"entry {forged}" in line]
    assert any("outside the batch" in line and f"batch {batch_id}" in line for line in named), \
        lines
    assert any("entry_key" in line for line in named), lines  # not the ledger's key
    assert not any(": root:" in line for line in lines), lines  # the genuine rows are intact
    await lg.restore()

    # --- an inserted row claiming a leaf index that is taken -----------------------------------
    forged = await insert_forged(lg, batch_id, 0)
    code, out, _ = await lg.audit()
    assert code == 1, out
    lines = problem_lines(out)
    assert any(str(forged) in line and "leaf index 0" in line and "membership" in line
               for line in lines), lines
    await lg.restore()

    # --- a row pointing at another Rekor entry -------------------------------------------------
    await lg.db.execute("UPDATE ledger.entries SET rekor_index = rekor_index + 1 WHERE id = $1",
                        members[0].id)
    code, out, _ = await lg.audit()
    assert code == 1, out
    assert any(f"entry {members[0].id}" in line and "anchor_reference" in line
               for line in problem_lines(out)), out
    await lg.restore()

    # --- a batch row removed: its members claim a batch that does not exist -------------------
    await lg.db.execute("DELETE FROM ledger.batches WHERE id = $1", batch_id)
    code, out, _ = await lg.audit()
    assert code == 1, out
    lines = problem_lines(out)
    for m in members:
        assert any(f"entry {m.id}" in line and "orphan" in line for line in lines), lines
    await lg.restore()

    # --- a row rewritten and re-signed, the root and manifest rewritten consistently ----------
    forger = ed25519.Ed25519PrivateKey.generate()
    old = members[0]
    new_meta = {**old.meta, "ok": "rewritten"}
    statement = statement_bytes(request_id=old.request_id, subject=old.subject,
                                payload_sha256=old.payload_hash, meta=new_meta,
                                submitted_at=old.submitted_at)
    sig = f"vault:v{old.key_version}:{base64.b64encode(forger.sign(statement)).decode()}"
    pem = forger.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    await lg.db.execute(
        "UPDATE ledger.entries SET meta = $2::jsonb, statement = $3, sig = $4, pubkey = $5,"
        " content_sha256 = $6 WHERE id = $1",
        old.id, json.dumps(new_meta), statement, sig, pem.decode(),
        content_sha256(subject=old.subject, payload_sha256=old.payload_hash, meta=new_meta))
    rewritten = await lg.members(batch_id)
    root = MerkleTree.from_data(m.leaf() for m in rewritten).root.hex()
    created_at = await lg.db.fetchval("SELECT created_at FROM ledger.batches WHERE id = $1",
                                      batch_id)
    manifest = manifest_bytes(batch_id=batch_id, size=target["size"], root_hex=root,
                              created_at=created_at)
    await lg.db.execute(
        "UPDATE ledger.batches SET root_hash = $2, manifest = $3, manifest_sha256 = $4"
        " WHERE id = $1", batch_id, root, manifest, hashlib.sha256(manifest).hexdigest())
    code, out, _ = await lg.audit()
    assert code == 1, out
    lines = problem_lines(out)
    assert any(f"batch {batch_id}" in line and "anchor_signature" in line for line in lines), \
        lines
    assert any(f"batch {batch_id}" in line and "receipt:" in line for line in lines), lines
    assert not any(": root:" in line for line in lines), lines  # rows and root agree...
    assert any(f"entry {old.id}" in line and "entry_key" in line for line in lines), lines
    await lg.restore()

    # --- the stored receipt body rewritten: offline and, with --online, by Rekor itself -------
    receipt = json.loads(await lg.db.fetchval(
        "SELECT receipt::text FROM ledger.batches WHERE id = $1", batch_id))
    body = json.loads(base64.b64decode(receipt["body"]))
    body["spec"]["data"]["hash"]["value"] = "ab" * 32
    receipt["body"] = base64.b64encode(
        json.dumps(body, separators=(",", ":")).encode()).decode()
    await lg.db.execute("UPDATE ledger.batches SET receipt = $2::jsonb WHERE id = $1",
                        batch_id, json.dumps(receipt))
    code, out, _ = await lg.audit()
    assert code == 1, out
    lines = problem_lines(out)
    assert any(f"batch {batch_id}" in line and "receipt:" in line for line in lines), lines
    assert not any("rekor_online" in line for line in lines), lines
    code, out, _ = await lg.audit("--online")
    assert code == 1, out
    online = [line for line in problem_lines(out) if "rekor_online" in line]
    assert any(f"batch {batch_id}" in line and "body" in line for line in online), out
    await lg.restore()

    # --- restored: clean again ---------------------------------------------------------------
    code, out, _ = await lg.audit("--online")
    assert code == 0, out
