"""Upgrading a database of the runbook's service, on the real stack.

A private PostgreSQL database is created with the runbook's exact DDL
(``tests/data/runbook_schema.sql``) and filled the way the runbook's service fills it: each
raw payload signed by the session's real OpenBao Transit Ed25519 key, the signature and
Vault's public key stored as Vault returned them, integer ids, ``''``/``0`` in the Rekor
columns (one row carries a Rekor reference the runbook wrote). Then ``migrate`` upgrades it
in place; ``import-legacy`` is interrupted after its first batch and resumed by the real
command; the real anchorer (sweeper, OpenBao P-256, the session's Rekor v1) anchors the
imported rows; ``ledger audit`` is clean; and a changed legacy row is named by the audit.
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
from pathlib import Path
from typing import Any

import pytest

from ledger.legacy import import_legacy, index_payloads
from ledger.legacy.command import vault_ed25519_keys
from services.anchorer import run_anchorer
from shared.db import Database, migrate
from shared.settings import Settings
from shared.statement import legacy_entry_id
from shared.vault import TransitSigner
from shared.vault_token import VaultToken
from tests.integration.test_anchorer import running
from tests.support.lanes import lane_topics
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUNBOOK_DDL = REPO / "tests" / "data" / "runbook_schema.sql"
VERIFIABLE, KEY_ONLY = 5, 2  # rows whose payload is supplied, rows whose payload is not
BAD = VERIFIABLE + KEY_ONLY + 1  # the runbook id of the row whose signature is not its own
RUNBOOK_REKOR = ("24296fb24b8ad77a1ad7edcd612f1e4a2c12b8b9b8c0a1f1e7b8d7a6c5b4a3f2e1d0c9b8", 42)


class Interrupted(Exception):
    pass


@dataclass
class Legacy:
    settings: Settings
    db: Database
    env: dict[str, str]
    payloads: Path

    async def cli(self, *args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ledger.cli", *args, cwd=REPO, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def count(self, where: str) -> int:
        return int(await self.db.fetchval(
            f"SELECT count(*) FROM ledger.entries WHERE {where}"))


async def _fill_like_the_runbook(db: Database, s: Settings, payloads: Path) -> None:
    """Rows as the runbook's service writes them: Vault signs the raw payload."""
    signer = TransitSigner(s, token=VaultToken.for_stage(s, "signer"))
    try:
        key = s.vault_transit_key
        for i in range(1, BAD + 1):
            payload = f"runbook document {i}\n".encode()
            signed = payload if i != BAD else b"some other document"
            sig = (await signer.sign(key, signed)).vault
            version = int(sig.split(":")[1][1:])
            raw = (await vault_ed25519_keys(s, key))[version]
            if i <= VERIFIABLE or i == BAD:
                (payloads / f"doc-{i}.bin").write_bytes(payload)
            rekor = RUNBOOK_REKOR if i == 2 else ("", 0)
            await db.execute(
                "INSERT INTO ledger.entries (subject, payload_hash, sig, pubkey, meta,"
                " rekor_log_id, rekor_index, anchored_at)"
                " VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7,"
                " CASE WHEN $6 = '' THEN NULL ELSE now() END)",
                f"acct-{i % 3}", hashlib.sha256(payload).hexdigest(), sig,
                base64.b64encode(raw).decode(), json.dumps({"n": i, "source": "runbook"}),
                *rekor,
            )
    finally:
        await signer.close()


@pytest.fixture
async def legacy(stack: Any, settings: Settings, tmp_path: Path) -> AsyncIterator[Legacy]:
    suffix = uuid.uuid4().hex[:10]
    dsn = stack.require("postgres").create_database(f"legacy_{suffix}")
    s = settings.model_copy(update={
        "database_dsn": dsn,
        "topic_append": f"l{suffix}.append",
        "topic_signed": f"l{suffix}.signed",
        "topic_anchored": f"l{suffix}.anchored",
        "signer_group": f"l{suffix}-signer",
        "anchorer_group": f"l{suffix}-anchorer",
        "anchor_batch_max": 4,
        "anchor_batch_ms": 200,
        "sweeper_interval_s": 0.5,
        "sweeper_age_s": 0.001,
        "shutdown_grace_s": 10.0,
    })
    await lane_topics(s, partitions=1)
    db = await Database.connect(s, min_size=1, max_size=2)
    await db.execute(RUNBOOK_DDL.read_text())
    payloads = tmp_path / "payloads"
    payloads.mkdir()
    await _fill_like_the_runbook(db, s, payloads)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "CRDB_"))}
    env.update({
        "CRDB_DSN": dsn,
        "VAULT_ADDR": s.vault_addr,
        "VAULT_TOKEN": s.vault_token.get_secret_value(),
        "VAULT_TRANSIT_KEY": s.vault_transit_key,
        "REKOR_SERVER_URL": s.rekor_server_url,
        "LEDGER_REKOR_PUBLIC_KEY": s.rekor_public_key,
        "PYTHONPATH": str(REPO),
    })
    if s.vault_cacert:
        env["VAULT_CACERT"] = s.vault_cacert
    try:
        yield Legacy(settings=s, db=db, env=env, payloads=payloads)
    finally:
        await db.close()


async def _check_upgraded(lg: Legacy) -> None:
    rows = await lg.db.fetch(
        "SELECT id, legacy_id, request_id, sig, key_version, rekor_log_id, rekor_index,"
        " anchored_at, legacy_rekor_log_id, legacy_rekor_index, legacy_anchored_at, batch_id"
        " FROM ledger.entries ORDER BY legacy_id")
    assert [r["legacy_id"] for r in rows] == list(range(1, BAD + 1))
    for r in rows:
        # the id PostgreSQL computed is the one Python computes
        assert r["id"] == legacy_entry_id(r["legacy_id"])
        assert r["request_id"] == f"runbook:{r['legacy_id']}"
        assert r["sig"].startswith(f"vault:v{r['key_version']}:")
        assert (r["rekor_log_id"], r["rekor_index"], r["anchored_at"], r["batch_id"]) == (
            None, None, None, None)
        kept = (r["legacy_rekor_log_id"], r["legacy_rekor_index"])
        assert kept == (RUNBOOK_REKOR if r["legacy_id"] == 2 else (None, None))
        assert (r["legacy_anchored_at"] is not None) == (r["legacy_id"] == 2)
    indexes = {r["indexname"] for r in await lg.db.fetch(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'ledger'"
        " AND tablename = 'entries'")}
    assert {"entries_rekor_log_id_idx", "entries_legacy_id_idx", "entries_batch_idx",
            "entries_pkey", "entries_request_id_key"} <= indexes


async def test_a_runbook_database_is_upgraded_imported_anchored_and_audited(
    legacy: Legacy,
) -> None:
    lg = legacy
    applied = await migrate(lg.db)
    assert applied[0] == 0 and applied[1:] == list(range(1, len(applied)))
    assert await migrate(lg.db) == []
    await _check_upgraded(lg)

    # the first run stops after its first batch (as a Ctrl-C between batches would)
    class StopAfterOneBatch:
        def start(self, pending: int) -> None:
            assert pending == BAD

        def advance(self, rows: int) -> None:
            raise Interrupted

    keys = await vault_ed25519_keys(lg.settings, lg.settings.vault_transit_key)
    with pytest.raises(Interrupted):
        await import_legacy(lg.db, vault_keys=keys, key_name=lg.settings.vault_transit_key,
                            payloads=index_payloads(lg.payloads), batch_size=3,
                            progress=StopAfterOneBatch())
    assert await lg.count("leaf_hash IS NOT NULL") == 3

    async with running(run_anchorer, lg.settings, "anchorer"):
        async def first_three_anchored() -> bool:
            return await lg.count("anchored_at IS NOT NULL") == 3

        await wait_for(first_three_anchored, within=120, what="the 3 imported rows anchored")
        # the sweeper that anchored them left the rows not yet imported alone
        assert await lg.count("batch_id IS NOT NULL") == 3
        assert await lg.count("leaf_hash IS NULL AND batch_id IS NULL") == BAD - 3

        code, out, err = await lg.cli("import-legacy", "--payloads", str(lg.payloads),
                                      "--batch-size", "3", "--json")
        assert code == 1, err  # one row failed a check
        report = json.loads(out)
        assert report["legacy_rows"] == BAD and report["already_imported"] == 3
        assert report["imported"] == BAD - 3 - 1
        assert report["signature_verified"] == VERIFIABLE - 3
        assert report["key_matched_signature_unchecked"] == KEY_ONLY
        assert report["failed_checks"] == report["left_out"] == 1
        assert report["failures"][0]["legacy_id"] == BAD
        assert "does not verify" in report["failures"][0]["problem"]
        assert "rows checked" in err  # progress, on stderr

        async def all_good_rows_anchored() -> bool:
            return await lg.count("anchored_at IS NOT NULL") == BAD - 1

        await wait_for(all_good_rows_anchored, within=120, what="every imported row anchored")

    # a second resumed run has nothing left to import, and still reports the bad row
    code, out, _ = await lg.cli("import-legacy", "--payloads", str(lg.payloads), "--json")
    again = json.loads(out)
    assert code == 1 and again["imported"] == 0 and again["already_imported"] == BAD - 1
    assert await lg.count(f"legacy_id = {BAD} AND batch_id IS NULL AND leaf_hash IS NULL") == 1
    # ids and signatures are the runbook's own
    assert await lg.count("sig NOT LIKE 'vault:v%'") == 0

    code, out, err = await lg.cli("audit", "--json")
    assert code == 0, out + err
    audit = json.loads(out)
    assert audit["entries_checked"] == BAD - 1 and audit["unanchored_entries"] == 1

    # a change to an anchored legacy row is found and named
    await lg.db.execute("UPDATE ledger.entries SET meta = '{\"n\": 99}' WHERE legacy_id = 4")
    code, out, _ = await lg.cli("audit")
    assert code == 1
    named = [line for line in out.splitlines() if str(legacy_entry_id(4)) in line]
    assert any("legacy_leaf" in line for line in named), out
    assert any(": root: " in line for line in out.splitlines()), out

    # --anchor-failing takes the row that failed its check as it is, and still reports it
    code, out, _ = await lg.cli("import-legacy", "--payloads", str(lg.payloads),
                                "--anchor-failing", "--json")
    forced = json.loads(out)
    assert code == 1 and forced["imported"] == 1 and forced["failed_checks"] == 1
    assert forced["left_out"] == 0
    assert await lg.count(f"legacy_id = {BAD} AND leaf_hash IS NOT NULL") == 1
