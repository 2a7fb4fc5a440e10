"""Backups and restore on the real stack: an older backup loses batches, the ledger finds and
restores them from its retained ``ledger.anchored`` events.

A private database and lane are filled by the real signer and anchorer (OpenBao, the
session's Rekor v1); two entries are signed but not yet batched when ``pg_dump`` backs the
database up; they and more entries are then anchored; the older backup is restored with ``pg_restore``. The offline audit cannot tell
(the backup is consistent); ``ledger audit --online --events-topic`` names exactly the
batches the backup lacks and exits 1. ``ledger restore`` refuses them against a Rekor key
that is not the log's, writing nothing, then restores them verified against the pinned one;
the rows that survived unbatched are attached to their batch; a second run restores nothing
more; the final audit is clean and every entry is there exactly once, every batch complete.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.local.postgres import PG_BIN
from ledger.anchored_events import read_lost_batches
from services.anchorer import run_anchorer
from services.signer.app import run_signer
from shared.db import Database, migrate
from shared.kafka import make_producer
from shared.messages import AppendRequest
from shared.settings import Settings
from tests.integration.test_anchorer import running
from tests.support.lanes import lane_topics
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
OLD, MID, NEW = 6, 2, 7
_LOST_RE = re.compile(r"^\u2717 batch ([0-9a-f-]{36}) entry -: lost_batch: Rekor holds it")


@dataclass
class Lane:
    settings: Settings
    dsn: str
    env: dict[str, str]

    async def ledger(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ledger.cli", *args, cwd=REPO, env=env or self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 300)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    async def audit(self) -> tuple[int, str]:
        return await self.ledger("audit", "--online", "--events-topic",
                                 self.settings.topic_anchored)


async def _publish(s: Settings, tag: str, n: int) -> None:
    producer = await make_producer(s, client_id=f"backup-{tag}")
    now = datetime.now(UTC)
    try:
        await producer.send_many(
            (s.topic_append, r.subject, r.to_bytes(), None) for r in (
                AppendRequest(request_id=f"{tag}-{i}", subject=f"acct-{i % 3}",
                              payload_sha256=hashlib.sha256(f"{tag}/{i}".encode()).hexdigest(),
                              meta={"n": i, "tag": tag}, submitted_at=now)
                for i in range(n)))
    finally:
        await producer.close()


async def _count(dsn_settings: Settings, sql: str) -> int:
    db = await Database.connect(dsn_settings, min_size=1, max_size=1)
    try:
        return int(await db.fetchval(sql))
    finally:
        await db.close()


def _pg(tool: str, *args: str) -> None:
    done = subprocess.run([str(PG_BIN / tool), *args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"{tool}: {done.stderr[-2000:]}"


@pytest.fixture
async def lane(stack: Any, settings: Settings) -> AsyncIterator[Lane]:
    suffix = uuid.uuid4().hex[:10]
    dsn = stack.require("postgres").create_database(f"backup_{suffix}")
    s = settings.model_copy(update={
        "database_dsn": dsn,
        "topic_append": f"b{suffix}.append",
        "topic_signed": f"b{suffix}.signed",
        "topic_anchored": f"b{suffix}.anchored",
        "signer_group": f"b{suffix}-signer",
        "anchorer_group": f"b{suffix}-anchorer",
        "anchor_batch_max": 3,
        "anchor_batch_ms": 200,
        "sweeper_interval_s": 3600.0,
        "sweeper_age_s": 3600.0,
        "shutdown_grace_s": 10.0,
    })
    await lane_topics(s, partitions=2)
    db = await Database.connect(s, min_size=1, max_size=1)
    try:
        await migrate(db)
    finally:
        await db.close()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LEDGER_", "CRDB_", "KAFKA_", "VAULT_", "REKOR_"))}
    env.update(s.environment())
    env["PYTHONPATH"] = str(REPO)
    yield Lane(settings=s, dsn=dsn, env=env)


async def _has(s: Settings, sql: str, n: int) -> bool:
    return await _count(s, sql) == n


async def _anchored(s: Settings, n: int) -> None:
    async def done() -> bool:
        return await _count(s, "SELECT count(*) FROM ledger.entries"
                               " WHERE anchored_at IS NOT NULL") == n

    await wait_for(done, within=180, what=f"{n} anchored entries")


async def _batch_ids(s: Settings) -> set[uuid.UUID]:
    db = await Database.connect(s, min_size=1, max_size=1)
    try:
        return {r["id"] for r in await db.fetch("SELECT id FROM ledger.batches")}
    finally:
        await db.close()


async def _events_hold(s: Settings, n: int) -> bool:
    async def absent(_: uuid.UUID) -> bool:
        return False

    scan = await read_lost_batches(s, s.topic_anchored, present=absent, timeout_s=60)
    return sum(len(b.events) for b in scan.lost.values()) >= n


def _wrong_log_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.mark.timeout(900)
async def test_lost_batches_are_found_and_restored_from_events(
    lane: Lane, tmp_path: Path
) -> None:
    s = lane.settings
    backup = tmp_path / "ledger.dump"
    async with running(run_signer, s, "signer"):
        async with running(run_anchorer, s, "anchorer"):
            await _publish(s, "old", OLD)
            await _anchored(s, OLD)
        # signed, not yet batched when the backup is taken: the backup has them unbatched
        await _publish(s, "mid", MID)
        await wait_for(lambda: _has(s, "SELECT count(*) FROM ledger.entries", OLD + MID),
                       within=120, what="the entries signed before the backup")
        kept = await _batch_ids(s)
        _pg("pg_dump", "--format=custom", f"--file={backup}", f"--dbname={lane.dsn}")
        async with running(run_anchorer, s, "anchorer"):
            await _publish(s, "new", NEW)
            await _anchored(s, OLD + MID + NEW)
            await wait_for(lambda: _events_hold(s, OLD + MID + NEW), within=120, every=1.0,
                           what="every entry's ledger.anchored event")
    lost = await _batch_ids(s) - kept
    assert kept and lost, (kept, lost)

    # the older backup comes back: the batches anchored since are gone from the database
    _pg("pg_restore", "--clean", "--if-exists", "--single-transaction", "--no-owner",
        f"--dbname={lane.dsn}", str(backup))
    assert await _batch_ids(s) == kept
    assert await _count(s, "SELECT count(*) FROM ledger.entries WHERE batch_id IS NULL") == MID
    code, out = await lane.ledger("audit")
    assert code == 0, out  # consistent in itself: only the log and the events know better
    assert f"unanchored entries: {MID}" in out, out

    code, out = await lane.audit()
    assert code == 1, out
    named = {uuid.UUID(m.group(1)) for line in out.splitlines() if (m := _LOST_RE.match(line))}
    assert named == lost, out
    problems = [line for line in out.splitlines() if line.startswith("\u2717 ")]
    assert len(problems) == len(lost), out
    assert f"lost batches: {len(lost)} (searched the" in out and "AUDIT FAILED" in out

    # events checked against a key that is not the log's: refused, nothing written
    wrong = _wrong_log_key(tmp_path / "other-log.pem")
    code, out = await lane.ledger("restore", "--from-topic", s.topic_anchored,
                                  "--rekor-key", str(wrong))
    assert code == 1, out
    assert out.count("NOT restored") == len(lost) and "does not verify" in out, out
    assert await _batch_ids(s) == kept

    code, out = await lane.ledger("restore", "--from-topic", s.topic_anchored)
    assert code == 0, out
    assert {uuid.UUID(b) for b in re.findall(r"\u2713 restored batch ([0-9a-f-]{36})", out)} \
        == lost, out
    assert "RESTORE DONE" in out

    code, out = await lane.ledger("restore", "--from-topic", s.topic_anchored)
    assert code == 0, out
    assert "batches the database lacks: 0" in out and "restored batch" not in out, out

    code, out = await lane.audit()
    assert code == 0, out
    assert "lost batches: 0" in out and "AUDIT CLEAN" in out
    assert f"entries checked: {OLD + MID + NEW} anchored" in out, out
    assert await _batch_ids(s) == kept | lost
    total = OLD + MID + NEW
    assert await _count(s, "SELECT count(*) FROM ledger.entries") == total
    assert await _count(s, "SELECT count(DISTINCT request_id) FROM ledger.entries") == total
    assert await _count(s, "SELECT count(*) FROM ledger.entries WHERE batch_id IS NULL"
                           " OR anchored_at IS NULL") == 0  # the unbatched rows were attached
    assert await _count(
        s, "SELECT count(*) FROM ledger.batches b WHERE b.size <> (SELECT count(*) FROM"
           " ledger.entries e WHERE e.batch_id = b.id)") == 0
