"""The Anchorer's whole path on fakes: claim, sign, Rekor, verify, complete, emit.

The repository and Rekor are the in-memory ones of tests/support (held to the real services
by the contract tests); the manifest is signed with a real ECDSA key and every event is
checked with the offline verifier an auditor uses.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from services.anchorer.anchoring import Anchorer
from services.anchorer.logs import RekorV1Log
from shared.anchored import AnchoredEvent
from shared.bundle import BundleVerificationError, verify_bundle
from shared.errors import DatabaseUnavailable, ReceiptRejected, RekorError, RekorUnavailable
from shared.records import NewEntry
from shared.statement import entry_id_for, statement_bytes
from shared.telemetry import Metrics
from shared.verify import load_log_key
from tests.support.fake_rekor import FakeLog, FakeRekor, PinnedKey, der, pem
from tests.support.fake_repository import FakeRepository

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
ANCHOR_KEY = "ledger-anchor"


@dataclass(frozen=True)
class _Signature:
    version: int
    raw: bytes


@dataclass(frozen=True)
class _PublicKey:
    pem: str


class FakeTransit:
    """Vault Transit's ECDSA P-256 key for manifests (prehashed SHA-256, as Vault signs)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.signed = 0

    async def sign(self, key: str, data: bytes, *, prehashed_sha256: bool = False) -> Any:
        assert key == ANCHOR_KEY and prehashed_sha256 and len(data) == 32
        self.signed += 1
        return _Signature(1, self.key.sign(data, ec.ECDSA(Prehashed(hashes.SHA256()))))

    async def public_key(self, key: str, version: int) -> Any:
        return _PublicKey(pem(self.key.public_key()).decode())


class Published:
    def __init__(self) -> None:
        self.events: list[AnchoredEvent] = []

    async def publish(self, events: Sequence[AnchoredEvent]) -> None:
        self.events.extend(events)


class World:
    def __init__(self, *, verify_rows: bool = False) -> None:
        self.repo = FakeRepository()
        self.log = FakeLog(ec.generate_private_key(ec.SECP256R1()))
        self.rekor = FakeRekor(self.log)
        self.transit = FakeTransit()
        self.published = Published()
        self.metrics = Metrics()
        self.log_key = load_log_key(der(self.log.priv.public_key()))
        self.log_pem = pem(self.log.priv.public_key())
        self.entry_key = ed25519.Ed25519PrivateKey.generate()
        self.anchorer = Anchorer(
            store=self.repo, signer=self.transit, log=self.v1_log(), publisher=self.published,
            metrics=self.metrics, anchor_key=ANCHOR_KEY,
            verify_rows=verify_rows, clock=lambda: T0,
        )

    def v1_log(self) -> RekorV1Log:
        return RekorV1Log(rekor=self.rekor, keys=PinnedKey(self.log_key))

    async def entries(self, n: int, tag: str = "e") -> list[uuid.UUID]:
        new = []
        for i in range(n):
            rid = f"{tag}-{i}"
            statement = statement_bytes(request_id=rid, subject="s", payload_sha256="ab" * 32,
                                        meta={"i": i}, submitted_at=T0)
            signature = self.entry_key.sign(statement)
            new.append(NewEntry(
                id=entry_id_for(rid), request_id=rid, subject="s", payload_hash="ab" * 32,
                meta={"i": i}, submitted_at=T0, statement=statement,
                sig="vault:v1:" + base64.b64encode(signature).decode(), key_name="entries",
                key_version=1, pubkey=pem(self.entry_key.public_key()).decode(),
                content_sha256=hashlib.sha256(rid.encode()).hexdigest()))
        await self.repo.insert_entries(new)
        return [e.id for e in new]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels or {})


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def verifying() -> World:
    """An anchorer that re-checks each row before batching it (LEDGER_ANCHORER_VERIFY_ROWS)."""
    return World(verify_rows=True)


def _bundle_checks(world: World, event: AnchoredEvent) -> None:
    """The event is a proof bundle the offline verifier accepts, step by step."""
    report = verify_bundle(event.model(), rekor_public_key_pem=world.log_pem,
                           entry_public_key_pem=pem(world.entry_key.public_key()))
    assert (report.entry_id, report.leaf_index) == (event.entry_id, event.leaf_index)
    assert report.rekor_log_id == world.log_key.log_id and len(report.steps) >= 5


async def test_entries_are_claimed_anchored_once_and_emitted_in_leaf_order(world: World) -> None:
    ids = await world.entries(5)
    result = await world.anchorer.anchor(ids)

    (batch_id,) = result.new_batches
    batch = await world.repo.batch(batch_id)
    assert batch is not None and batch.anchored and batch.size == 5
    assert batch.receipt is not None
    assert world.rekor.created == 1 and world.transit.signed == 1, "one Rekor entry per batch"
    assert [e.leaf_index for e in world.published.events] == list(range(5))
    assert {e.entry_id for e in world.published.events} == set(ids)
    assert result.emitted == world.published.events
    for member in await world.repo.members(batch_id):
        assert member.anchored_at is not None and member.rekor_log_id == batch.receipt.uuid
    for event in world.published.events:
        _bundle_checks(world, event)
    assert world.metric("ledger_batches_anchored_total", {"path": "stream"}) == 1
    assert world.anchorer.rekor_health.up is True


async def test_anchoring_anchored_entries_again_re_emits_identical_events(world: World) -> None:
    ids = await world.entries(3)
    await world.anchorer.anchor(ids)
    first = {e.entry_id: e.value for e in world.published.events}

    again = await world.anchorer.anchor(ids[:2])
    assert again.new_batches == [] and world.rekor.created == 1
    assert {e.entry_id: e.value for e in again.emitted} == {i: first[i] for i in ids[:2]}


async def test_unknown_ids_are_reported_not_invented(world: World) -> None:
    ids = await world.entries(2)
    stranger = uuid.uuid4()
    result = await world.anchorer.anchor([*ids, stranger])
    assert result.unknown == {stranger}
    assert len(result.emitted) == 2


def _flip_signature_byte(sig: str) -> str:
    prefix, raw = sig.rsplit(":", 1)
    signature = bytearray(base64.b64decode(raw))
    signature[10] ^= 0x01
    return f"{prefix}:{base64.b64encode(bytes(signature)).decode()}"


def _tamper(world: World, entry_id: uuid.UUID, *, leaf: str = "recomputed", **changes: Any) -> None:
    """Rewrite a stored row as someone with write access to the table could; ``leaf``:
    ``recomputed`` stores the leaf hash of the new content, ``kept`` leaves the old one."""
    row = dataclasses.replace(world.repo.entries_by_id[entry_id], **changes)
    if leaf == "recomputed":
        row = dataclasses.replace(row, stored_leaf_hash=row.content_leaf_hash())
    world.repo.add_entry(row)


async def test_by_default_rows_are_not_rechecked_and_a_bad_signature_is_left_to_verify(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_called(row: object) -> None:
        raise AssertionError("refusal() runs only with verify_rows")

    monkeypatch.setattr("services.anchorer.anchoring.refusal", not_called)
    good, bad_sig = await world.entries(2)
    _tamper(world, bad_sig, sig=_flip_signature_byte(world.repo.entries_by_id[bad_sig].sig))
    world.repo.calls.clear()

    result = await world.anchorer.anchor([good, bad_sig])

    assert result.refused == {}
    assert "entries_for" not in world.repo.calls, "a claim reads the leaf hashes only"
    events = {e.entry_id: e for e in result.emitted}
    assert set(events) == {good, bad_sig}, "anchored as stored"
    assert world.metric("ledger_anchorer_rejected_rows_total", {"reason": "signature"}) is None
    _bundle_checks(world, events[good])
    with pytest.raises(BundleVerificationError) as flagged:
        _bundle_checks(world, events[bad_sig])
    assert flagged.value.step == "entry_signature", "the verifier catches it afterwards"


async def test_rows_that_do_not_check_are_refused_and_the_others_anchored(
    verifying: World,
) -> None:
    world = verifying
    good, bad_sig, other_key, moved_subject = await world.entries(4)
    row = world.repo.entries_by_id
    _tamper(world, bad_sig, sig=_flip_signature_byte(row[bad_sig].sig))
    stranger = ed25519.Ed25519PrivateKey.generate()  # the stored key is not the signer's
    _tamper(world, other_key, pubkey=pem(stranger.public_key()).decode())
    _tamper(world, moved_subject, subject="someone-else")

    result = await world.anchorer.anchor([good, bad_sig, other_key, moved_subject])

    assert {i: r.reason for i, r in result.refused.items()} == {
        bad_sig: "signature", other_key: "signature", moved_subject: "statement"}
    assert "entries_for" in world.repo.calls, "the full rows are read to check them"
    assert [e.entry_id for e in result.emitted] == [good]
    _bundle_checks(world, result.emitted[0])
    assert all(row[i].batch_id is None for i in result.refused), "left unbatched"
    assert world.metric("ledger_anchorer_rejected_rows_total", {"reason": "signature"}) == 2
    assert world.metric("ledger_anchorer_rejected_rows_total", {"reason": "statement"}) == 1
    assert "someone-else" not in repr(result.refused), "a refusal shows no value of the row"


async def test_a_stored_leaf_hash_that_is_not_the_rows_content_is_refused(
    verifying: World,
) -> None:
    world = verifying
    good, changed = await world.entries(2)
    _tamper(world, changed, leaf="kept", stored_leaf_hash=b"\x07" * 32)
    result = await world.anchorer.anchor([good, changed])
    assert {i: r.reason for i, r in result.refused.items()} == {changed: "leaf"}
    assert [e.entry_id for e in result.emitted] == [good]
    assert world.metric("ledger_anchorer_rejected_rows_total", {"reason": "leaf"}) == 1


async def test_rekor_down_keeps_the_batch_pending_and_the_retry_completes_it(
    world: World,
) -> None:
    ids = await world.entries(3)
    world.rekor.down = True
    with pytest.raises(RekorUnavailable):
        await world.anchorer.anchor(ids)
    (pending,) = await world.repo.pending_batches(older_than_s=-1, limit=10)
    assert world.published.events == [] and world.anchorer.rekor_health.up is False
    assert world.metric("ledger_dependency_up", {"dependency": "rekor"}) == 0

    world.rekor.down = False
    result = await world.anchorer.anchor(ids)  # the consumer loop's retry of the same records
    assert result.new_batches == [], "its own pending batch, driven on: no second claim"
    assert (await world.repo.batch(pending)).anchored  # type: ignore[union-attr]
    assert len(world.published.events) == 3 and world.rekor.created == 1


async def test_a_crash_after_rekor_accepted_completes_through_the_409(world: World) -> None:
    ids = await world.entries(2)
    batch_id = await world.anchorer.claim(ids)
    assert batch_id is not None
    batch = await world.repo.batch(batch_id)
    assert batch is not None
    # the process that claimed it died right after Rekor logged the entry
    await world.rekor.create_hashedrekord(batch.manifest_sha256, batch.anchor_sig,
                                          batch.anchor_pubkey)
    restarted = Anchorer(
        store=world.repo, signer=world.transit, log=world.v1_log(), publisher=world.published,
        metrics=world.metrics, anchor_key=ANCHOR_KEY)
    assert await restarted.complete(batch_id, path_label="sweeper")
    assert world.rekor.created == 1, "no second Rekor entry"
    assert len(world.published.events) == 2
    assert world.metric("ledger_batches_anchored_total", {"path": "sweeper"}) == 1


async def test_a_rekor_refusal_leaves_the_batch_for_the_sweeper(world: World) -> None:
    ids = await world.entries(2)
    world.rekor.refuse = RekorError("entry refused (test)", status=400)
    result = await world.anchorer.anchor(ids)
    (batch_id,) = result.new_batches
    assert result.left_pending == {batch_id} and world.published.events == []
    assert world.anchorer.rekor_health.up is True, "Rekor answered"
    assert await world.anchorer.complete(batch_id, path_label="sweeper")
    assert len(world.published.events) == 2


async def test_a_receipt_from_another_log_is_rejected_and_nothing_is_emitted(
    world: World,
) -> None:
    world.log.priv = ec.generate_private_key(ec.SECP256R1())  # Rekor signs with another key
    ids = await world.entries(2)
    with pytest.raises(ReceiptRejected) as rejected:
        await world.anchorer.anchor(ids)
    assert world.published.events == []
    (pending,) = await world.repo.pending_batches(older_than_s=-1, limit=10)
    assert rejected.value.batch_id == pending
    failures = world.metric("ledger_receipt_verification_failures_total",
                            {"check": rejected.value.check})
    assert failures == 1


async def test_entries_claimed_by_another_batch_meanwhile_are_left_to_it(world: World) -> None:
    ids = await world.entries(4)
    real_claim = world.repo.claim
    raced = False

    async def claim_after_another_worker(batch: Any) -> None:
        nonlocal raced
        if not raced:  # another anchorer claims two of them between our read and our claim
            raced = True
            other = Anchorer(
                store=world.repo, signer=world.transit, log=world.v1_log(),
                publisher=Published(), metrics=Metrics(), anchor_key=ANCHOR_KEY)
            await other.claim(ids[:2])
        await real_claim(batch)

    world.repo.claim = claim_after_another_worker  # type: ignore[method-assign]
    result = await world.anchorer.anchor(ids)
    (mine,) = result.new_batches
    assert {m.id for m in await world.repo.members(mine)} == set(ids[2:])
    assert result.pending_elsewhere == set(ids[:2]), "left to the worker that claimed them"


async def test_the_database_down_during_the_claim_propagates(world: World) -> None:
    ids = await world.entries(2)
    world.repo.down = True
    with pytest.raises(DatabaseUnavailable):
        await world.anchorer.anchor(ids)
    assert world.transit.signed == 0 and world.rekor.created == 0
