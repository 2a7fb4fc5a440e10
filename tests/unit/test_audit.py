"""ledger.audit: the pure checking core, on rows built here with keys generated here.

A batch is made the way the anchorer makes it (``plan_batch``, a P-256 anchor signature over
the manifest digest, a hashedrekord in the synthetic Rekor log of test_verify), then each
kind of tampering an administrator could do to the rows is applied and must be found, naming
the batch and the entry.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import subprocess
import sys
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from ledger.audit import (
    BatchChecker,
    BatchColumns,
    EntryChecker,
    Problem,
    check_batch_record,
    check_online_entry,
    resolve_log_key,
)
from services.anchorer.building import plan_batch
from shared.errors import ConfigError
from shared.merkle import MerkleTree
from shared.records import BatchRecord, EntryRecord
from shared.statement import content_sha256, entry_id_for, manifest_bytes, statement_bytes
from shared.verify import LogKey, RekorReceipt, load_log_key
from tests.support.fake_rekor import FakeLog
from tests.support.fake_rekor import hashedrekord as _hashedrekord
from tests.unit.test_bundle import _pem

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
SIZE = 5


class Ledger:
    """One anchored batch of SIZE rows and an unbatched row, as the database would hold them."""

    def __init__(self) -> None:
        self.entry_key = ed25519.Ed25519PrivateKey.generate()
        self.anchor_key = ec.generate_private_key(ec.SECP256R1())
        self.log = FakeLog(ec.generate_private_key(ec.SECP256R1()))
        self.log_key: LogKey = load_log_key(_pem(self.log.priv))
        rows = [self.row(f"req-{i}", meta={"n": i, "ok": True}) for i in range(SIZE)]
        plan = plan_batch(rows, batch_id=uuid.uuid4(), created_at=T0)
        self.anchor_pem = _pem(self.anchor_key)
        anchor_sig = self.anchor_key.sign(plan.manifest_sha256, ec.ECDSA(Prehashed(hashes.SHA256())))
        response = self.log.add(_hashedrekord(plan.manifest_sha256.hex(), anchor_sig, self.anchor_pem))
        self.receipt = RekorReceipt.from_v1_response(response)
        anchored_at = T0 + timedelta(seconds=3)
        self.batch = BatchRecord(
            id=plan.batch_id, created_at=T0, state="anchored", size=plan.size,
            root_hash=plan.root_hex, manifest=plan.manifest,
            manifest_sha256=plan.manifest_sha256.hex(), anchor_sig=anchor_sig,
            anchor_key_version=1, anchor_pubkey=self.anchor_pem.decode(),
            receipt=self.receipt, anchored_at=anchored_at,
        )
        self.columns = BatchColumns(self.receipt.uuid, self.receipt.log_index,
                                    self.receipt.log_id, self.receipt.integrated_time)
        self.members = [
            replace(m, batch_id=plan.batch_id, leaf_index=i, anchored_at=anchored_at)
            for i, m in enumerate(plan.members)
        ]

    def row(self, request_id: str, *, meta: dict[str, Any], key: Any = None,
            version: int = 1) -> EntryRecord:
        key = key or self.entry_key
        payload = hashlib.sha256(request_id.encode()).hexdigest()
        submitted = T0 - timedelta(seconds=10)
        statement = statement_bytes(request_id=request_id, subject="acct-1",
                                    payload_sha256=payload, meta=meta, submitted_at=submitted)
        sig = base64.b64encode(key.sign(statement)).decode()
        return EntryRecord(
            id=entry_id_for(request_id), request_id=request_id, subject="acct-1",
            payload_hash=payload, meta=meta, submitted_at=submitted, created_at=T0,
            statement=statement, sig=f"vault:v{version}:{sig}", key_name="ledger-ed25519",
            key_version=version, pubkey=_pem(key).decode(),
        )

    def audit_members(self, members: list[EntryRecord], batch: BatchRecord | None = None,
                      refs: dict[uuid.UUID, tuple[str | None, int | None]] | None = None,
                      ) -> list[Problem]:
        """What the driver does for one batch: entry checks, then the members in leaf order."""
        batch = batch or self.batch
        entries = EntryChecker()
        checker = BatchChecker(batch, anchored=True)
        problems = check_batch_record(batch, self.log_key, self.columns)
        ordered = sorted(members, key=lambda m: (m.leaf_index if m.leaf_index is not None
                                                 else -1, str(m.id)))
        for m in ordered:
            problems += entries.check(m, content_hash=content_sha256(
                subject=m.subject, payload_sha256=m.payload_hash, meta=m.meta))
            ref = (refs or {}).get(m.id, (self.receipt.uuid, self.receipt.log_index))
            checker.add(m, rekor_log_id=ref[0], rekor_index=ref[1])
        return problems + checker.finish() + entries.finish()


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()


def checks(problems: list[Problem]) -> set[str]:
    return {p.check for p in problems}


# --- the clean case and the tree --------------------------------------------------------------


def test_a_genuine_batch_has_no_problems(ledger: Ledger) -> None:
    assert ledger.audit_members(ledger.members) == []


def test_members_fed_in_any_chunking_give_the_same_result(ledger: Ledger) -> None:
    # the driver feeds rows page by page; the checker keeps no per-page state
    checker = BatchChecker(ledger.batch, anchored=True)
    for m in ledger.members:
        checker.add(m, rekor_log_id=ledger.receipt.uuid, rekor_index=ledger.receipt.log_index)
    assert checker.finish() == [] and checker.rows == SIZE


# --- changed rows -----------------------------------------------------------------------------


def test_a_changed_meta_column_is_named(ledger: Ledger) -> None:
    members = list(ledger.members)
    changed = replace(members[2], meta={"n": 2, "ok": False})
    members[2] = changed
    problems = ledger.audit_members(members)
    assert checks(problems) == {"statement_fields"}
    assert all(p.entry_id == changed.id and p.batch_id == ledger.batch.id for p in problems)
    assert any("column meta" in p.detail for p in problems)
    # the stored content hash (of the original meta) no longer matches either
    original = ledger.members[2]
    stored_hash = content_sha256(subject=original.subject, payload_sha256=original.payload_hash,
                                 meta=original.meta)
    assert "content_hash" in checks(EntryChecker().check(changed, content_hash=stored_hash))


@pytest.mark.parametrize("column", ["request_id", "subject", "payload_hash", "submitted_at"])
def test_every_signed_column_is_compared(ledger: Ledger, column: str) -> None:
    value: Any = {"request_id": "req-x", "subject": "acct-9", "payload_hash": "0" * 64,
                  "submitted_at": T0}[column]
    row = replace(ledger.members[1], **{column: value})
    problems = EntryChecker().check(row)
    assert "statement_fields" in checks(problems)
    assert all(p.entry_id == row.id for p in problems)


def test_a_row_rewritten_and_resigned_with_another_key_breaks_the_root(ledger: Ledger) -> None:
    # the admin rewrites meta AND the statement, signs with their own key, stores its pubkey:
    # the row is self-consistent, but its leaf is not the anchored one
    members = list(ledger.members)
    forger = ed25519.Ed25519PrivateKey.generate()
    fake = ledger.row("req-3", meta={"n": 3, "ok": False}, key=forger)
    members[3] = replace(fake, batch_id=ledger.batch.id, leaf_index=3,
                         anchored_at=members[3].anchored_at)
    problems = ledger.audit_members(members)
    assert "root" in checks(problems)
    root = next(p for p in problems if p.check == "root")
    assert root.batch_id == ledger.batch.id and "changed" in root.detail
    # and the other key claiming the ledger key's version is named, with the entry
    key_problems = [p for p in problems if p.check == "entry_key"]
    assert [p.entry_id for p in key_problems] == [fake.id]


def test_a_bad_signature_is_named(ledger: Ledger) -> None:
    row = ledger.members[0]
    raw = bytearray(base64.b64decode(row.sig.split(":")[2]))
    raw[0] ^= 1
    bad = replace(row, sig=f"vault:v1:{base64.b64encode(bytes(raw)).decode()}")
    problems = EntryChecker().check(bad)
    assert checks(problems) == {"signature"} and problems[0].entry_id == row.id
    assert checks(EntryChecker().check(replace(row, sig="vault:v2:" + row.sig.split(":")[2])))\
        == {"signature"}
    assert checks(EntryChecker().check(replace(row, sig="nonsense"))) == {"signature"}
    assert checks(EntryChecker().check(replace(row, pubkey=ledger.anchor_pem.decode()))) == {
        "signature"}


def test_a_changed_id_is_named(ledger: Ledger) -> None:
    row = replace(ledger.members[0], id=uuid.uuid4())
    assert "entry_id" in checks(EntryChecker().check(row))


def test_a_statement_that_is_not_the_canonical_statement(ledger: Ledger) -> None:
    row = ledger.members[0]
    extra = json.loads(row.statement) | {"extra": 1}
    problems = EntryChecker().check(replace(row, statement=json.dumps(extra).encode()))
    assert "statement" in checks(problems)


# --- removed and inserted rows -----------------------------------------------------------------


def test_a_removed_member_is_found(ledger: Ledger) -> None:
    members = [m for m in ledger.members if m.leaf_index != 2]
    problems = ledger.audit_members(members)
    assert checks(problems) == {"membership"}
    details = " | ".join(p.detail for p in problems)
    assert "no row for leaf index 2" in details and "4 rows claim this batch" in details
    assert all(p.batch_id == ledger.batch.id for p in problems)


def test_a_removed_last_member_is_found(ledger: Ledger) -> None:
    problems = ledger.audit_members(ledger.members[:-1])
    assert any(f"no row for leaf index {SIZE - 1}" in p.detail for p in problems)


def test_a_row_inserted_after_the_last_leaf_is_named(ledger: Ledger) -> None:
    forged = replace(ledger.row("forged", meta={"x": 1}), batch_id=ledger.batch.id,
                     leaf_index=SIZE, anchored_at=ledger.members[0].anchored_at)
    problems = ledger.audit_members([*ledger.members, forged])
    named = [p for p in problems if p.entry_id == forged.id]
    assert named and all(p.check == "membership" for p in named)
    assert "outside the batch" in named[0].detail
    assert "root" not in checks(problems)  # the genuine rows still give the anchored root


def test_a_row_inserted_at_a_taken_leaf_index_is_named_as_the_inserted_one(
    ledger: Ledger,
) -> None:
    genuine = ledger.members[1]
    # pick a request id whose entry id sorts after the genuine one, and one before
    for forged_id in ("forged-a", "forged-b", "forged-c", "forged-d"):
        forged = replace(ledger.row(forged_id, meta={}), batch_id=ledger.batch.id,
                         leaf_index=1, anchored_at=genuine.anchored_at)
        problems = ledger.audit_members([*ledger.members, forged])
        dup = [p for p in problems if p.check == "membership" and "claimed" in p.detail]
        assert len(dup) == 1
        assert str(forged.id) in dup[0].line()
        if str(forged.id) > str(genuine.id):
            assert dup[0].entry_id == forged.id and "this row was inserted" in dup[0].detail
        assert any(f"{SIZE + 1} rows claim" in p.detail for p in problems)


def test_a_row_without_leaf_index_claiming_the_batch(ledger: Ledger) -> None:
    checker = BatchChecker(ledger.batch, anchored=True)
    for m in ledger.members:
        checker.add(m, rekor_log_id=ledger.receipt.uuid, rekor_index=ledger.receipt.log_index)
    stray = replace(ledger.members[0], id=uuid.uuid4(), leaf_index=None)
    checker.add_unindexed(stray)
    problems = checker.finish()
    assert {p.entry_id for p in problems} >= {stray.id}


def test_members_naming_another_rekor_entry(ledger: Ledger) -> None:
    target = ledger.members[4]
    problems = ledger.audit_members(ledger.members, refs={target.id: ("ab" * 32, 7)})
    assert checks(problems) == {"anchor_reference"}
    assert problems[0].entry_id == target.id


def test_members_of_a_pending_batch_must_not_look_anchored(ledger: Ledger) -> None:
    pending = replace(ledger.batch, state="pending", receipt=None, anchored_at=None)
    assert check_batch_record(pending, ledger.log_key) == []
    checker = BatchChecker(pending, anchored=False)
    for m in ledger.members:
        checker.add(replace(m, anchored_at=None))
    assert checker.finish() == []
    checker = BatchChecker(pending, anchored=False)
    for m in ledger.members:
        checker.add(m)  # anchored_at set
    assert {p.check for p in checker.finish()} == {"anchor_reference"}


# --- the batch row -----------------------------------------------------------------------------


def test_root_and_manifest_rewritten_consistently_fail_the_anchor_signature(
    ledger: Ledger,
) -> None:
    # the admin changes a row, recomputes the root, rewrites the manifest and its digest
    members = list(ledger.members)
    forger = ed25519.Ed25519PrivateKey.generate()
    members[0] = replace(ledger.row("req-0", meta={"n": 0, "ok": "rewritten"}, key=forger),
                         batch_id=ledger.batch.id, leaf_index=0,
                         anchored_at=members[0].anchored_at)
    root = MerkleTree.from_data(m.leaf() for m in members).root.hex()
    manifest = manifest_bytes(batch_id=ledger.batch.id, size=SIZE, root_hex=root,
                              created_at=T0)
    batch = replace(ledger.batch, root_hash=root, manifest=manifest,
                    manifest_sha256=hashlib.sha256(manifest).hexdigest())
    problems = ledger.audit_members(members, batch=batch)
    assert {"anchor_signature", "receipt"} <= checks(problems)
    assert "root" not in checks(problems)  # consistent with the rewritten rows...
    receipt = next(p for p in problems if p.check == "receipt")
    assert "body" in receipt.detail  # ...but Rekor holds the original digest


def test_root_changed_alone_is_caught_by_the_manifest(ledger: Ledger) -> None:
    batch = replace(ledger.batch, root_hash="00" * 32)
    problems = check_batch_record(batch, ledger.log_key, ledger.columns)
    assert checks(problems) == {"manifest"}


def test_manifest_digest_changed(ledger: Ledger) -> None:
    batch = replace(ledger.batch, manifest_sha256="00" * 32)
    assert checks(check_batch_record(batch, ledger.log_key)) == {"manifest_digest"}


def test_a_rewritten_receipt_body_is_caught_offline(ledger: Ledger) -> None:
    body = json.loads(base64.b64decode(ledger.receipt.body))
    body["spec"]["data"]["hash"]["value"] = "11" * 32
    receipt = ledger.receipt.model_copy(update={"body": base64.b64encode(
        json.dumps(body).encode()).decode()})
    problems = check_batch_record(replace(ledger.batch, receipt=receipt), ledger.log_key)
    assert checks(problems) == {"receipt"}
    assert "uuid" in problems[0].detail


def test_receipt_columns_must_match_the_receipt(ledger: Ledger) -> None:
    columns = replace(ledger.columns, rekor_log_index=1)
    problems = check_batch_record(ledger.batch, ledger.log_key, columns)
    assert checks(problems) == {"receipt_columns"}


def test_another_rekor_key_fails_the_receipt(ledger: Ledger) -> None:
    other = load_log_key(_pem(ec.generate_private_key(ec.SECP256R1())))
    problems = check_batch_record(ledger.batch, other)
    assert checks(problems) == {"receipt"} and "log_id" in problems[0].detail


def test_anchored_batch_without_receipt(ledger: Ledger) -> None:
    problems = check_batch_record(replace(ledger.batch, receipt=None), ledger.log_key)
    assert checks(problems) == {"receipt"}


# --- online ------------------------------------------------------------------------------------


def test_online_entry_that_matches(ledger: Ledger) -> None:
    assert check_online_entry(ledger.batch, ledger.receipt.to_v1_response(), ledger.log_key) == []


def test_online_entry_differs_from_a_rewritten_stored_receipt(ledger: Ledger) -> None:
    # the stored receipt was rewritten (here: another integration time); Rekor still serves
    # the original, so the comparison names the field
    stored = ledger.receipt.model_copy(update={"integrated_time": 1})
    batch = replace(ledger.batch, receipt=stored)
    problems = check_online_entry(batch, ledger.receipt.to_v1_response(), ledger.log_key)
    assert checks(problems) == {"rekor_online"}
    assert "integratedTime" in problems[0].detail


def test_online_entry_for_another_manifest(ledger: Ledger) -> None:
    other = ledger.log.add(_hashedrekord("22" * 32, b"sig", ledger.anchor_pem))
    problems = check_online_entry(ledger.batch, other, ledger.log_key)
    assert "rekor_online" in checks(problems)
    assert any("does not hold" in p.detail for p in problems)


# --- the key and the output --------------------------------------------------------------------


class _NoPins:
    async def pinned_log_key(self, rekor_url: str) -> str | None:
        return None


async def test_no_pinned_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--rekor-key"):
        await resolve_log_key(_NoPins(), rekor_key_file=None, configured="",
                              rekor_url="http://127.0.0.1:1")


async def test_the_key_file_wins(ledger: Ledger, tmp_path: Any) -> None:
    path = tmp_path / "rekor.pem"
    path.write_bytes(_pem(ledger.log.priv))
    key, source = await resolve_log_key(_NoPins(), rekor_key_file=str(path), configured="",
                                        rekor_url="http://127.0.0.1:1")
    assert key.log_id == ledger.log_key.log_id and "--rekor-key" in source
    with pytest.raises(ConfigError):
        await resolve_log_key(_NoPins(), rekor_key_file=str(tmp_path / "missing.pem"),
                              configured="", rekor_url="http://127.0.0.1:1")


def test_a_problem_line_names_batch_entry_and_leaf() -> None:
    b, e = uuid.uuid4(), uuid.uuid4()
    line = Problem("root", "differs", b, e, 3).line()
    assert f"batch {b}" in line and f"entry {e}" in line and "leaf 3" in line
    assert "root: differs" in line
    assert Problem("x", "y").line().startswith("\u2717 batch - entry -")


# --- what the auditor may depend on ------------------------------------------------------------

REPO = Path(__file__).parents[2]


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("tree", ["shared", "ledger/audit"])
def test_neither_shared_nor_the_auditor_imports_a_service(tree: str) -> None:
    forbidden = ("services", "deploy", "ledger") if tree == "shared" else ("services", "deploy")
    files = sorted((REPO / tree).rglob("*.py"))
    assert files
    found = {
        f"{path.relative_to(REPO)}: {name}"
        for path in files
        for name in _imports(path)
        if name.split(".")[0] in forbidden
    }
    assert not found, sorted(found)


def test_the_audit_checks_import_nothing_that_talks_to_a_network() -> None:
    code = (
        "import sys, ledger.audit.entries, ledger.audit.batches, ledger.audit.report\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "{'aiohttp', 'aiokafka', 'asyncpg', 'hvac', 'requests', 'httpx', 'urllib3', 'services'} "
        "or m in {'shared.rekor', 'shared.settings', 'shared.vault', 'shared.db', 'shared.kafka'}]"
        "\nassert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
