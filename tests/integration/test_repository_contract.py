"""The repository on a real PostgreSQL, and the in-memory fake the unit tests use, side by side.

Every scenario runs twice: against :class:`shared.repository.Repository` on a fresh, migrated
database and against :class:`tests.support.fake_repository.FakeRepository`. Both must give
the same answers, so unit tests of the signer, the anchorer and the sweeper on the fake say
something about the real thing.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.db import Database, migrate
from shared.errors import ClaimRaced
from shared.merkle import MerkleTree
from shared.records import LEGACY_KEY_NAME, EntryRecord, NewBatch, NewEntry
from shared.repository import EntryQuery, Repository
from shared.settings import Settings
from shared.statement import entry_id_for
from shared.verify import RekorReceipt, RekorV2Receipt, verify_v2_receipt
from tests.integration.conftest import fresh_database, optional_stack
from tests.support import v2_receipts as v2
from tests.support.fake_repository import FakeRepository

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


@pytest.fixture(params=["postgres", "fake"])
async def repo(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "fake":
        ticks = itertools.count()
        start = datetime.now(UTC)
        # a clock that moves on every read, as now() does between transactions
        yield FakeRepository(clock=lambda: start + timedelta(milliseconds=next(ticks)))
        return
    db_settings: Settings = request.getfixturevalue("db_settings")
    async with fresh_database(optional_stack(request), db_settings) as settings:
        db = await Database.connect(settings, max_size=4)
        try:
            await migrate(db)
            yield Repository(db)
        finally:
            await db.close()


def new_entry(rid: str, *, subject: str = "s", content: str = "c",
              payload_hash: str = "ab" * 32) -> NewEntry:
    return NewEntry(
        id=entry_id_for(rid), request_id=rid, subject=subject, payload_hash=payload_hash,
        meta={"k": [1, "two"], "n": None}, submitted_at=T0, statement=f"stmt {rid}".encode(),
        sig="vault:v1:" + base64.b64encode(rid.encode()).decode(), key_name="entries",
        key_version=1, pubkey="-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----\n",
        content_sha256=hashlib.sha256(content.encode()).hexdigest(),
    )


def as_stored(e: NewEntry, created_at: datetime) -> EntryRecord:
    """What reading back a just-inserted ``e`` must give."""
    return EntryRecord(
        id=e.id, request_id=e.request_id, subject=e.subject, payload_hash=e.payload_hash,
        meta=e.meta, submitted_at=e.submitted_at, created_at=created_at, statement=e.statement,
        sig=e.sig, key_name=e.key_name, key_version=e.key_version, pubkey=e.pubkey,
        content_sha256=e.content_sha256, stored_leaf_hash=e.leaf_hash(),
    )


def new_batch(ids: list[uuid.UUID], repo_leaves: dict[uuid.UUID, bytes]) -> NewBatch:
    tree = MerkleTree(repo_leaves[i] for i in ids)
    return NewBatch(
        id=uuid.uuid4(), created_at=T0, member_ids=ids, root_hex=tree.root.hex(),
        manifest=b"manifest", manifest_sha256=hashlib.sha256(b"manifest").digest(),
        anchor_sig=b"sig", anchor_key_version=1, anchor_pubkey="pem",
    )


def receipt(tree_size: int = 7, uuid_: str = "24296fb24b8ad77a" + "ab" * 32) -> RekorReceipt:
    return RekorReceipt(
        uuid=uuid_, log_index=41, tree_index=6, log_id="cd" * 32, integrated_time=1_700_000_000,
        body="e30=", signed_entry_timestamp="c2V0", inclusion_hashes=("ef" * 32,),
        root_hash="AB" * 32, tree_size=tree_size,
        checkpoint=f"rekor.local - 1\n{tree_size}\nq83vEjRWeJA=\n\n— sig\n",
    )


async def test_insert_is_idempotent_by_request_id_and_reads_back_what_was_inserted(repo: Any):
    a, b = new_entry("a"), new_entry("b")
    new, others = await repo.insert_entries([a, b])
    assert set(new) == {"a", "b"} and others == {}
    found = await repo.entries_by_request_id(["a", "b", "missing"])
    assert found == {"a": as_stored(a, new["a"]), "b": as_stored(b, new["b"])}
    assert await repo.entry(a.id) == found["a"]
    assert sorted(await repo.entries_for([b.id, a.id, uuid.uuid4()]), key=lambda e: e.id) == (
        sorted([found["a"], found["b"]], key=lambda e: e.id))

    again = new_entry("a", content="other")  # the same request id, other content
    new2, others2 = await repo.insert_entries([again, new_entry("c")])
    assert set(new2) == {"c"}
    assert others2 == {"a": found["a"]}, "the row stored first, unchanged"
    assert await repo.entries_by_request_id([]) == {}


async def test_a_request_id_twice_in_one_insert_is_stored_once(repo: Any):
    new, others = await repo.insert_entries([new_entry("d"), new_entry("d", content="x")])
    assert set(new) == {"d"} and others == {}
    assert (await repo.entries_by_request_id(["d"]))["d"].content_sha256 == new_entry(
        "d").content_sha256


async def test_pages_of_entries_in_key_order(repo: Any):
    for rid in ("p1", "p2", "p3"):
        await repo.insert_entries([new_entry(rid, subject="page")])
    await repo.insert_entries([new_entry("other", subject="elsewhere")])
    first = await repo.entries(EntryQuery(subject="page", limit=2))
    assert [e.request_id for e in first] == ["p1", "p2"]
    rest = await repo.entries(EntryQuery(subject="page", after=(first[-1].created_at,
                                                                 first[-1].id)))
    assert [e.request_id for e in rest] == ["p3"]
    newest = await repo.entries(EntryQuery(subject="page", order="desc", limit=1))
    assert [e.request_id for e in newest] == ["p3"]
    assert await repo.entries(EntryQuery(subject="page", anchored=True)) == []


async def test_entries_of_one_payload_hash_page_in_key_order(repo: Any):
    doc, other = "d0" * 32, "e1" * 32
    for rid in ("h1", "h2", "h3"):
        await repo.insert_entries([new_entry(rid, subject=f"s-{rid}", payload_hash=doc)])
    await repo.insert_entries([new_entry("h-other", payload_hash=other)])
    first = await repo.entries(EntryQuery(payload_hash=doc, limit=2))
    assert [e.request_id for e in first] == ["h1", "h2"]
    rest = await repo.entries(EntryQuery(payload_hash=doc, after=(first[-1].created_at,
                                                                  first[-1].id)))
    assert [e.request_id for e in rest] == ["h3"]
    newest = await repo.entries(EntryQuery(payload_hash=doc, order="desc", limit=1))
    assert [e.request_id for e in newest] == ["h3"]
    both = await repo.entries(EntryQuery(payload_hash=doc, subject="s-h2"))
    assert [e.request_id for e in both] == ["h2"]
    assert [e.request_id for e in await repo.entries(EntryQuery(payload_hash=other))] == [
        "h-other"]
    assert await repo.entries(EntryQuery(payload_hash="f" * 64)) == []


async def test_claim_is_all_or_nothing_and_sets_leaf_order(repo: Any):
    entries = [new_entry(f"m{i}") for i in range(4)]
    await repo.insert_entries(entries)
    leaves = {e.id: e.leaf_hash() for e in entries}
    ids = [e.id for e in entries[:3]]
    batch = new_batch(ids, leaves)
    await repo.claim(batch)

    members = await repo.members(batch.id)
    assert [(m.id, m.batch_id, m.leaf_index) for m in members] == [
        (i, batch.id, n) for n, i in enumerate(ids)]
    assert [leaf.leaf_hash for leaf in await repo.batch_leaves(batch.id)] == [leaves[i] for i in ids]
    stored = await repo.batch(batch.id)
    assert stored is not None and stored.state == "pending" and not stored.anchored
    assert (stored.size, stored.root_hash, stored.manifest_sha256) == (
        3, batch.root_hex, batch.manifest_sha256.hex())
    assert await repo.pending_count() == 1

    overlapping = new_batch([entries[2].id, entries[3].id], leaves)
    with pytest.raises(ClaimRaced):
        await repo.claim(overlapping)
    assert await repo.batch(overlapping.id) is None, "nothing of a raced claim is written"
    free = [leaf for leaf in await repo.leaves([entries[3].id]) if leaf.batch_id is None]
    assert [leaf.id for leaf in free] == [entries[3].id]


async def test_complete_once_marks_members_and_keeps_the_checkpoint(repo: Any):
    entries = [new_entry(f"c{i}") for i in range(2)]
    await repo.insert_entries(entries)
    batch = new_batch([e.id for e in entries], {e.id: e.leaf_hash() for e in entries})
    await repo.claim(batch)
    r = receipt()

    anchored_at = await repo.complete(batch.id, r)
    assert anchored_at is not None
    assert await repo.complete(batch.id, r) is None, "completing again changes nothing"
    stored = await repo.batch(batch.id)
    assert stored is not None and stored.anchored and stored.receipt == r
    for member in await repo.members(batch.id):
        assert (member.rekor_log_id, member.rekor_index, member.anchored_at) == (
            r.uuid, r.log_index, anchored_at)
    assert await repo.pending_count() == 0
    anchored = await repo.entries(EntryQuery(anchored=True))
    # one transaction stored both: one created_at, so the id decides the order
    assert [e.id for e in anchored] == sorted(e.id for e in entries)
    checkpoint = await repo.latest_checkpoint(r.log_id, "rekor.local - 1")
    assert checkpoint is not None
    assert (checkpoint.tree_size, checkpoint.root_hash) == (7, "ab" * 32)
    assert await repo.latest_checkpoint(r.log_id, "another origin") is None


async def test_complete_stores_a_rekor_v2_receipt_and_reads_it_back(repo: Any):
    entries = [new_entry(f"v2-{i}") for i in range(2)]
    await repo.insert_entries(entries)
    batch = new_batch([e.id for e in entries], {e.id: e.leaf_hash() for e in entries})
    await repo.claim(batch)
    r = verify_v2_receipt(v2.receipt(), v2.trust())  # what the anchorer stores: verified

    anchored_at = await repo.complete(batch.id, r)
    assert anchored_at is not None
    stored = await repo.batch(batch.id)
    assert stored is not None and stored.anchored
    assert isinstance(stored.receipt, RekorV2Receipt)
    assert stored.receipt.model_dump() == v2.receipt().model_dump()
    for member in await repo.members(batch.id):
        assert (member.rekor_log_id, member.rekor_index) == (r.uuid, r.log_index)
    checkpoint = await repo.latest_checkpoint(r.log_id, v2.ORIGIN)
    assert checkpoint is not None and checkpoint.checkpoint == r.checkpoint
    assert (checkpoint.tree_size, checkpoint.root_hash) == (r.tree_size, r.root_hash)
    if isinstance(repo, Repository):  # the columns the audit compares with the receipt
        row = await repo.batch_row(batch.id)
        assert row is not None
        assert (row["rekor_uuid"], row["rekor_log_index"], row["rekor_log_id"]) == (
            r.uuid, r.log_index, r.log_id)
        assert row["integrated_time"] is None, "a v2 receipt has no integrated time"


async def test_checkpoints_keep_the_largest_per_origin(repo: Any):
    for size in (5, 9, 7):
        await repo.store_checkpoint(log_id="L", tree_size=size, root_hash=f"{size:02x}" * 32,
                                    checkpoint=f"origin\n{size}\n")
    await repo.store_checkpoint(log_id="L", tree_size=9, root_hash="ff" * 32,
                                checkpoint="origin\n9\n")  # a second one of size 9: kept first
    latest = await repo.latest_checkpoint("L", "origin")
    assert latest is not None and (latest.tree_size, latest.root_hash) == (9, "09" * 32)


async def test_old_unbatched_entries_and_pending_batches(repo: Any):
    await repo.insert_entries([new_entry("u1")])
    await repo.insert_entries([new_entry("u2")])
    assert await repo.unbatched_entries(older_than_s=3600, limit=10) == []
    assert await repo.unbatched_entries(older_than_s=-1, limit=1) == [entry_id_for("u1")]
    assert await repo.unbatched_entries(older_than_s=-1, limit=1, skip=[
        entry_id_for("u1"), uuid.uuid4()]) == [entry_id_for("u2")]
    (u1,) = await repo.leaves([entry_id_for("u1")])
    batch = dataclasses.replace(new_batch([u1.id], {u1.id: u1.leaf_hash}),
                                created_at=datetime.now(UTC) - timedelta(minutes=5))
    await repo.claim(batch)
    assert await repo.unbatched_entries(older_than_s=-1, limit=10) == [entry_id_for("u2")]
    assert await repo.pending_batches(older_than_s=60, limit=10) == [batch.id]
    assert await repo.pending_batches(older_than_s=3600, limit=10) == []


async def test_the_age_of_the_oldest_unanchored_entry(repo: Any):
    assert await repo.unanchored_oldest_age_s() == 0.0, "nothing stored: no age"
    entries = [new_entry(f"a{i}") for i in range(2)]
    await repo.insert_entries(entries[:1])
    first = await repo.unanchored_oldest_age_s()
    await repo.insert_entries(entries[1:])
    later = await repo.unanchored_oldest_age_s()
    assert 0.0 <= first <= later < 60, (first, later)
    batch = new_batch([entries[0].id], {entries[0].id: entries[0].leaf_hash()})
    await repo.claim(batch)
    assert await repo.unanchored_oldest_age_s() >= later, "claimed is not anchored yet"
    await repo.complete(batch.id, receipt())
    assert 0.0 <= await repo.unanchored_oldest_age_s() < 60, "the younger one is left"
    batch = dataclasses.replace(  # batches are unique by manifest
        new_batch([entries[1].id], {entries[1].id: entries[1].leaf_hash()}),
        manifest=b"second", manifest_sha256=hashlib.sha256(b"second").digest())
    await repo.claim(batch)
    await repo.complete(batch.id, receipt())
    assert await repo.unanchored_oldest_age_s() == 0.0, "everything anchored: no age"


async def test_the_first_pin_wins(repo: Any):
    assert await repo.pinned_log_key("http://rekor") is None
    assert await repo.pin_log_key(rekor_url="http://rekor", pem="A", log_id="1") == "A"
    assert await repo.pin_log_key(rekor_url="http://rekor", pem="B", log_id="2") == "A"
    assert await repo.pinned_log_key("http://rekor") == "A"


async def test_a_legacy_row_reads_with_the_legacy_key_name(fresh_settings: Settings):
    """Rows from before key_name and leaf_hash were stored (real database only)."""
    db = await Database.connect(fresh_settings, max_size=2)
    try:
        await migrate(db)
        e = new_entry("legacy")
        await db.execute(
            "INSERT INTO ledger.entries (id, subject, payload_hash, sig, pubkey, meta,"
            " request_id, key_version, statement, submitted_at, content_sha256)"
            " VALUES ($1, $2, $3, $4, $5, '{}'::jsonb, $6, 1, $7, $8, $9)",
            e.id, e.subject, e.payload_hash, e.sig, e.pubkey, e.request_id, e.statement,
            e.submitted_at, e.content_sha256)
        record = (await Repository(db).entries_by_request_id(["legacy"]))["legacy"]
        assert record.key_name == LEGACY_KEY_NAME and record.stored_leaf_hash is None
        legacy = dataclasses.replace(e, key_name=LEGACY_KEY_NAME)
        assert record.tree_leaf == legacy.leaf_hash()
        (leaf,) = await Repository(db).leaves([e.id])
        assert leaf.leaf_hash == legacy.leaf_hash(), "the tree read derives the same leaf"
    finally:
        await db.close()
