"""Leaves, trees, manifests and ledger.anchored events of the anchorer — pure, no network."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.anchorer.building import order_for_claim, plan_batch
from shared.anchored import anchored_events, receipt_info
from shared.errors import VerificationError
from shared.merkle import leaf_hash, verify_inclusion
from shared.messages import AnchoredEntry
from shared.records import BatchRecord, EntryRecord
from shared.statement import leaf_bytes, statement_bytes
from shared.verify import RekorReceipt

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def _entry(i: int, created: datetime | None = None) -> EntryRecord:
    request_id = f"req-{i}"
    submitted = T0 + timedelta(seconds=i)
    statement = statement_bytes(
        request_id=request_id,
        subject=f"subj-{i % 3}",
        payload_sha256=hashlib.sha256(str(i).encode()).hexdigest(),
        meta={"i": i},
        submitted_at=submitted,
    )
    return EntryRecord(
        id=uuid.uuid5(uuid.NAMESPACE_URL, request_id),
        request_id=request_id,
        subject=f"subj-{i % 3}",
        payload_hash=hashlib.sha256(str(i).encode()).hexdigest(),
        meta={"i": i},
        submitted_at=submitted,
        created_at=created or (T0 + timedelta(milliseconds=i)),
        statement=statement,
        sig=f"vault:v1:{base64.b64encode(bytes([i % 256]) * 64).decode()}",
        key_name="ledger-ed25519",
        key_version=1,
        pubkey="-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n",
    )


def _naive_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, transcribed literally (independent of shared.merkle)."""
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _naive_root(leaves[:k]) + _naive_root(leaves[k:])).digest()


def test_leaf_is_the_statement_leaf_of_the_row_values() -> None:
    e = _entry(7)
    assert e.leaf() == leaf_bytes(
        entry_id=e.id, statement=e.statement, signature=e.sig, key_name="ledger-ed25519",
        key_version=1,
    )
    doc = json.loads(e.leaf())
    assert doc["statement_sha256"] == hashlib.sha256(e.statement).hexdigest()
    assert doc["entry_id"] == str(e.id)


def test_claim_order_is_created_at_then_id_whatever_the_input_order() -> None:
    same_time = T0
    rows = [_entry(i, created=same_time if i < 4 else None) for i in range(10)]
    shuffled = rows[:]
    random.Random(4).shuffle(shuffled)
    ordered = order_for_claim(shuffled + shuffled[:3])  # replays are collapsed
    assert len(ordered) == 10
    keys = [(r.created_at, r.id) for r in ordered]
    assert keys == sorted(keys)
    assert order_for_claim(rows) == ordered


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 100])
def test_plan_root_and_manifest(n: int) -> None:
    rows = [_entry(i) for i in range(n)]
    batch_id = uuid.uuid4()
    plan = plan_batch(list(reversed(rows)), batch_id=batch_id, created_at=T0)
    assert [m.id for m in plan.members] == [r.id for r in rows]
    assert plan.root_hex == _naive_root([r.leaf() for r in rows]).hex()
    if n == 1:  # N=1: the root is the single leaf's hash
        assert plan.root_hex == leaf_hash(rows[0].leaf()).hex()
    manifest = json.loads(plan.manifest)
    assert manifest == {
        "v": 1,
        "type": "signed-ledger/batch",
        "batch_id": str(batch_id),
        "size": n,
        "tree": "rfc6962-sha256",
        "root": plan.root_hex,
        "created_at": "2026-01-02T03:04:05.123456Z",
    }
    assert plan.manifest_sha256 == hashlib.sha256(plan.manifest).digest()


def test_plan_needs_an_entry() -> None:
    with pytest.raises(ValueError, match="at least one"):
        plan_batch([], batch_id=uuid.uuid4(), created_at=T0)


def _receipt() -> RekorReceipt:
    return RekorReceipt(
        uuid="ab" * 40,
        log_index=42,
        tree_index=41,
        log_id="cd" * 32,
        integrated_time=1_700_000_000,
        body=base64.b64encode(b"{}").decode(),
        signed_entry_timestamp=base64.b64encode(b"set").decode(),
        inclusion_hashes=("ee" * 32,),
        root_hash="ff" * 32,
        tree_size=50,
        checkpoint="origin\n50\nAAAA\n\n\u2014 origin AAAAAAA=\n",
    )


def _anchored(rows: list[EntryRecord]) -> tuple[BatchRecord, list[EntryRecord]]:
    plan = plan_batch(rows, batch_id=uuid.uuid4(), created_at=T0)
    anchored_at = T0 + timedelta(minutes=1)
    members = [
        replace(m, batch_id=plan.batch_id, leaf_index=i, anchored_at=anchored_at)
        for i, m in enumerate(plan.members)
    ]
    batch = BatchRecord(
        id=plan.batch_id,
        created_at=T0,
        state="anchored",
        size=plan.size,
        root_hash=plan.root_hex,
        manifest=plan.manifest,
        manifest_sha256=plan.manifest_sha256.hex(),
        anchor_sig=b"\x30\x06\x02\x01\x01\x02\x01\x01",
        anchor_key_version=1,
        anchor_pubkey="-----BEGIN PUBLIC KEY-----\nX\n-----END PUBLIC KEY-----\n",
        receipt=_receipt(),
        anchored_at=anchored_at,
    )
    return batch, members


@pytest.mark.parametrize("n", [1, 7, 64])
def test_events_carry_audit_paths_to_the_batch_root(n: int) -> None:
    batch, members = _anchored([_entry(i) for i in range(n)])
    events = [e.model() for e in anchored_events(batch, members)]
    assert [e.leaf_index for e in events] == list(range(n))
    root = bytes.fromhex(batch.root_hash)
    for event, member in zip(events, members, strict=True):
        assert event.entry.entry_id == member.id
        leaf = leaf_bytes(
            entry_id=event.entry.entry_id,
            statement=base64.b64decode(event.entry.statement),
            signature=event.entry.signature,
            key_name=event.entry.key_name,
            key_version=event.entry.key_version,
        )
        verify_inclusion(
            event.leaf_index, n, leaf_hash(leaf), [bytes.fromhex(h) for h in event.audit_path],
            root,
        )
        assert event.batch.manifest_sha256 == hashlib.sha256(
            base64.b64decode(event.batch.manifest)
        ).hexdigest()
        assert event.receipt.uuid == batch.receipt.uuid  # type: ignore[union-attr]


def test_events_are_byte_identical_across_rebuilds_and_row_orders() -> None:
    batch, members = _anchored([_entry(i) for i in range(20)])
    first = [e.value for e in anchored_events(batch, members)]
    shuffled = members[:]
    random.Random(1).shuffle(shuffled)
    again = [e.value for e in anchored_events(batch, shuffled)]
    assert first == again


@pytest.mark.parametrize("n", [1, 9])
def test_event_bytes_are_what_the_model_serialises(n: int) -> None:
    """The assembled JSON equals AnchoredEntry(...).model_dump_json(), built the slow way."""
    batch, members = _anchored([_entry(i) for i in range(n)])
    assert batch.receipt is not None
    for event, member in zip(anchored_events(batch, members), members, strict=True):
        slow = AnchoredEntry(
            entry=member.signed_entry(),
            leaf_index=member.leaf_index,
            audit_path=event.model().audit_path,
            batch=batch.info(),
            receipt=receipt_info(batch.receipt),
            anchored_at=member.anchored_at,
        )
        assert event.value == slow.model_dump_json().encode()
        assert (event.entry_id, event.subject, event.request_id) == (
            member.id, member.subject, member.request_id)


def test_one_member_with_the_whole_batch_as_leaves() -> None:
    """What ingest does for one proof: every leaf hash, one full row."""
    batch, members = _anchored([_entry(i) for i in range(6)])
    leaves = [replace(m, stored_leaf_hash=m.content_leaf_hash()).leaf_record() for m in members]
    (one,) = anchored_events(batch, [members[4]], leaves=leaves)
    assert one.value == anchored_events(batch, members)[4].value


def test_stored_leaf_hashes_must_give_the_root() -> None:
    batch, members = _anchored([_entry(i) for i in range(4)])
    members[1] = replace(members[1], stored_leaf_hash=b"\x00" * 32)
    with pytest.raises(VerificationError, match="changed after they were batched"):
        anchored_events(batch, members)


def test_content_changed_under_a_stored_leaf_hash_is_refused() -> None:
    batch, members = _anchored([_entry(i) for i in range(4)])
    members = [replace(m, stored_leaf_hash=m.content_leaf_hash()) for m in members]
    members[2] = replace(members[2], sig=members[3].sig)  # the tree still adds up
    with pytest.raises(VerificationError, match="no longer hashes to leaf 2"):
        anchored_events(batch, members)


def test_a_row_changed_after_batching_is_refused() -> None:
    batch, members = _anchored([_entry(i) for i in range(5)])
    members[2] = replace(members[2], sig=members[3].sig)
    with pytest.raises(VerificationError, match="changed after they were batched"):
        anchored_events(batch, members)


def test_a_missing_member_is_refused() -> None:
    batch, members = _anchored([_entry(i) for i in range(5)])
    with pytest.raises(VerificationError, match="leaf indexes"):
        anchored_events(batch, members[:-1])


def test_pending_batches_have_no_events() -> None:
    batch, members = _anchored([_entry(0)])
    with pytest.raises(ValueError, match="not anchored"):
        anchored_events(replace(batch, state="pending", receipt=None), members)

