"""Rows of the runbook's service: the legacy leaf, the upgrade migration's SQL, the import's
checks, and how the audit and the anchorer treat such rows. Pure: no network."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ledger.audit.entries import EntryChecker
from ledger.legacy import check_row, raw_public_key
from services.anchorer.building import refusal
from services.ingest.store import EntryView
from shared.db import MIGRATIONS_DIR, RUNBOOK_UPGRADE, load_migrations
from shared.merkle import leaf_hash
from shared.records import EntryRecord
from shared.statement import (
    LEGACY_ID_NAMESPACE,
    LEGACY_LEAF_PREFIX,
    entry_id_for,
    leaf_bytes,
    legacy_entry_id,
    legacy_leaf_bytes,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
RUNBOOK_DDL = (REPO / "tests" / "data" / "runbook_schema.sql").read_text()
UPGRADE = RUNBOOK_UPGRADE.read_text()
KEY = ed25519.Ed25519PrivateKey.generate()
RAW_KEY = KEY.public_key().public_bytes_raw()
PAYLOAD = b"a document the runbook's client sent\n"


def legacy_row(legacy_id: int = 7, **changes: Any) -> EntryRecord:
    """A row as the upgrade migration and ``import-legacy`` leave it."""
    sig = f"vault:v1:{base64.b64encode(KEY.sign(PAYLOAD)).decode()}"
    row = EntryRecord(
        id=legacy_entry_id(legacy_id), request_id=f"runbook:{legacy_id}", subject="acct-1",
        payload_hash=hashlib.sha256(PAYLOAD).hexdigest(), meta={"n": 1},
        submitted_at=datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        created_at=datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC), statement=b"", sig=sig,
        key_name="ledger-ed25519", key_version=1,
        pubkey=base64.b64encode(RAW_KEY).decode(), content_sha256="", legacy_id=legacy_id,
    )
    row = dataclasses.replace(row, stored_leaf_hash=row.content_leaf_hash())
    return dataclasses.replace(row, **changes)


# --- the legacy leaf -------------------------------------------------------------------------


def test_legacy_leaves_can_never_pass_for_ordinary_leaves() -> None:
    row = legacy_row()
    legacy = row.leaf()
    ordinary = leaf_bytes(entry_id=row.id, statement=row.statement, signature=row.sig,
                          key_name=row.key_name, key_version=row.key_version)
    assert legacy.startswith(LEGACY_LEAF_PREFIX) and not LEGACY_LEAF_PREFIX.startswith(b"{")
    assert ordinary.startswith(b"{")  # every ordinary leaf is a canonical JSON object
    assert legacy != ordinary
    assert dataclasses.replace(row, legacy_id=None).leaf() == ordinary


@pytest.mark.parametrize("change", [
    {"legacy_id": 8}, {"subject": "acct-2"}, {"payload_hash": "0" * 64}, {"meta": {"n": 2}},
    {"created_at": datetime(2025, 1, 2, 3, 4, 5, 7, tzinfo=UTC)},
    {"sig": "vault:v1:" + base64.b64encode(bytes(64)).decode()},
    {"pubkey": base64.b64encode(bytes(32)).decode()}, {"key_name": "other"},
    {"id": uuid.UUID(int=1)},
])
def test_every_column_the_runbook_wrote_is_in_the_legacy_leaf(change: dict[str, Any]) -> None:
    row = legacy_row()
    assert leaf_hash(dataclasses.replace(row, **change).leaf()) != leaf_hash(row.leaf())


def test_the_legacy_leaf_carries_large_cockroachdb_ids_exactly() -> None:
    big = 2**62 + 1  # unique_rowid() values exceed 2**53
    leaf = legacy_row(big).leaf()
    assert f'"legacy_id":"{big}"'.encode() in leaf
    assert legacy_row(big).leaf() != legacy_row(big + 1).leaf()
    assert leaf == legacy_leaf_bytes(
        entry_id=legacy_entry_id(big), legacy_id=big, subject="acct-1",
        payload_sha256=hashlib.sha256(PAYLOAD).hexdigest(), meta={"n": 1},
        created_at=datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC), signature=legacy_row(big).sig,
        public_key=base64.b64encode(RAW_KEY).decode(), key_name="ledger-ed25519")


def test_legacy_ids_are_uuid3_and_never_an_ordinary_entry_id() -> None:
    assert legacy_entry_id(5) == uuid.uuid3(LEGACY_ID_NAMESPACE, "5")
    assert legacy_entry_id(5).version == 3 and entry_id_for("runbook:5").version == 5
    assert legacy_entry_id(5) != legacy_entry_id(6)


# --- the migration's SQL ---------------------------------------------------------------------


def _sql_uuid(legacy_id: int) -> uuid.UUID:
    """What the upgrade's UPDATE computes, step by step, with SQL's 1-based positions."""
    ns_hex = re.search(r"decode\('([0-9a-f]{32})', 'hex'\)", UPGRADE)
    assert ns_hex is not None
    h = hashlib.md5(bytes.fromhex(ns_hex.group(1)) + str(legacy_id).encode()).hexdigest()
    h = h[:12] + "3" + h[13:]  # overlay ... PLACING '3' FROM 13 FOR 1
    variant = "89ab"[("0123456789abcdef".index(h[16])) % 4]  # strpos(...) - 1, % 4, + 1
    return uuid.UUID(h[:16] + variant + h[17:])  # overlay ... FROM 17 FOR 1


@pytest.mark.parametrize("legacy_id", [1, 2, 9, 10, 12345, 2**53 + 1, 2**63 - 1])
def test_the_upgrades_id_expression_is_uuid3_of_the_runbook_id(legacy_id: int) -> None:
    assert _sql_uuid(legacy_id) == legacy_entry_id(legacy_id)


def _columns(create_table: str) -> set[str]:
    body = create_table[create_table.index("(") + 1 : create_table.index("\n);")]
    return {line.split()[0] for line in body.splitlines() if line.strip()}


def test_the_upgrade_gives_the_runbook_table_every_column_of_the_ledgers() -> None:
    first = load_migrations()[0].sql
    ledger_cols = _columns(first[first.index("CREATE TABLE IF NOT EXISTS ledger.entries"):])
    runbook_cols = _columns(RUNBOOK_DDL[RUNBOOK_DDL.index("CREATE TABLE"):])
    assert runbook_cols == {"id", "subject", "payload_hash", "sig", "pubkey", "meta",
                            "rekor_log_id", "rekor_index", "created_at", "anchored_at"}
    added = set(re.findall(r"ADD COLUMN (?:IF NOT EXISTS )?(\w+)", UPGRADE))
    assert ledger_cols - runbook_cols <= added
    # every NOT NULL column of the ledger's table is filled for the runbook's rows
    for column in ("request_id", "key_version", "statement", "submitted_at", "content_sha256"):
        assert re.search(rf"\b{column} = ", UPGRADE), column
        assert f"ALTER COLUMN {column} SET NOT NULL" in UPGRADE, column


def test_the_runbooks_rekor_index_and_the_legacy_columns_exist_after_every_path() -> None:
    assert "entries_rekor_log_id_idx ON ledger.entries (rekor_log_id)" in RUNBOOK_DDL
    later = "\n".join(m.sql for m in load_migrations())
    assert "CREATE INDEX IF NOT EXISTS entries_rekor_log_id_idx" in later
    assert "DROP INDEX" not in UPGRADE.upper()
    for column in ("legacy_id", "legacy_rekor_log_id", "legacy_rekor_index",
                   "legacy_anchored_at"):
        assert f"ADD COLUMN IF NOT EXISTS {column} " in later, column
    # the upgrade is not one of the numbered migrations: it runs before 0001, or never
    assert RUNBOOK_UPGRADE.parent != MIGRATIONS_DIR
    assert all(m.name != "runbook_upgrade" for m in load_migrations())


# --- the import's checks ---------------------------------------------------------------------


def test_a_row_is_verified_over_its_payload_or_only_its_key_is_checked() -> None:
    row = legacy_row()
    assert check_row(row, {1: RAW_KEY}, "ledger-ed25519", PAYLOAD).outcome == "verified"
    only_key = check_row(row, {1: RAW_KEY}, "ledger-ed25519", None)
    assert only_key.outcome == "key_only" and "not checked" in only_key.detail


@pytest.mark.parametrize(("row_changes", "keys", "payload", "reason"), [
    ({}, {1: RAW_KEY}, b"another document", "does not verify"),
    ({}, {2: RAW_KEY}, PAYLOAD, "has no version 1"),
    ({}, {1: bytes(32)}, PAYLOAD, "public key is not"),
    ({"sig": "not-a-vault-signature"}, {1: RAW_KEY}, PAYLOAD, "malformed"),
])
def test_a_row_that_does_not_check_fails(
    row_changes: dict[str, Any], keys: dict[int, bytes], payload: bytes, reason: str,
) -> None:
    result = check_row(legacy_row(**row_changes), keys, "ledger-ed25519", payload)
    assert result.outcome == "failed" and reason in result.detail


def test_the_runbooks_public_key_is_read_as_vault_base64_or_pem() -> None:
    pem = KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert raw_public_key(pem) == raw_public_key(base64.b64encode(RAW_KEY).decode()) == RAW_KEY
    assert raw_public_key("bm90IGEga2V5") is None and raw_public_key("%%%") is None


# --- the audit and the anchorer --------------------------------------------------------------


def test_the_audit_names_a_changed_legacy_row_and_passes_an_unchanged_one() -> None:
    checker = EntryChecker()
    assert checker.check(legacy_row(), content_hash="") == []
    changed = checker.check(legacy_row(meta={"n": 2}), content_hash="")
    assert [p.check for p in changed] == ["legacy_leaf"]
    moved = checker.check(legacy_row(id=uuid.UUID(int=3)), content_hash="")
    assert "entry_id" in [p.check for p in moved]


def test_the_anchorer_takes_an_imported_legacy_row_and_refuses_a_changed_one() -> None:
    assert refusal(legacy_row()) is None
    changed = refusal(legacy_row(subject="acct-9"))
    assert changed is not None and changed.reason == "leaf"
    not_imported = refusal(legacy_row(stored_leaf_hash=None))
    assert not_imported is not None and not_imported.reason == "leaf"


# --- the API ---------------------------------------------------------------------------------


def test_the_api_shows_a_legacy_rows_integer_id_as_its_document_describes() -> None:
    from tests.unit.test_ingest_openapi_agreement import _validator  # noqa: PLC0415

    entry = _validator({"$ref": "#/components/schemas/Entry"})
    legacy = EntryView.from_record(legacy_row(12)).to_json()
    assert legacy["legacy_id"] == 12 and legacy["request_id"] == "runbook:12"
    entry.validate(legacy)
    ordinary = EntryView.from_record(dataclasses.replace(legacy_row(), legacy_id=None))
    assert "legacy_id" not in ordinary.to_json()
    entry.validate(ordinary.to_json())
    # the document's schema would refuse a wrong type: the check above can fail
    assert not entry.is_valid({**legacy, "legacy_id": "12"})
