"""Forged ``ledger.signed`` messages and rows that do not check, against the real stack.

Defence in depth behind Kafka's own access control: a ``ledger.signed`` message produced by a
principal allowed to write the topic (here: the test's own Kafka settings, through
:func:`shared.kafka.make_producer`, so the credentials the stack requires apply) must not
make the anchorer anchor anything but the stored rows. With ``LEDGER_ANCHORER_VERIFY_ROWS``
a stored row is anchored only if its Ed25519 signature, its statement and its leaf hash
check; without it (the default) such a row is anchored as stored and the verifier and the
audit flag it afterwards.

The real signer (OpenBao) writes the rows of a private database and publishes its events on
a lane of its own; the anchorer (PostgreSQL, OpenBao, Rekor) reads a second lane, where the
test puts the messages it wants it to see. So every message the anchorer reads is one the
test chose.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ledger.audit.entries import EntryChecker
from services.anchorer import run_anchorer
from services.signer.app import run_signer
from shared.bundle import BundleVerificationError, verify_bundle
from shared.db import Database, migrate
from shared.kafka import Producer, Record, make_consumer, make_producer
from shared.merkle import leaf_hash
from shared.messages import AnchoredEntry, AppendRequest, SignedEntry
from shared.records import EntryRecord
from shared.repository import Repository
from shared.settings import Settings
from shared.statement import entry_id_for, leaf_bytes, statement_bytes
from shared.vault import TransitSigner
from shared.vault_token import VaultToken
from tests.integration.test_anchorer import _read_key, metric, running
from tests.support.lanes import new_prefix, private_lane
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 2


@dataclass
class Forge:
    """The signer's lane and the anchorer's lane on one private database."""

    signer: Settings
    anchorer: Settings
    db: Database
    producer: Producer
    rekor_key: bytes
    prefix: str

    @property
    def repo(self) -> Repository:
        return Repository(self.db)


@pytest.fixture
async def forge(stack: Any, settings: Settings) -> AsyncIterator[Forge]:
    prefix = new_prefix("f")
    dsn = stack.require("postgres").create_database(f"forged_{prefix}")
    common = {"database_dsn": dsn, "sweeper_interval_s": 3600.0, "sweeper_age_s": 3600.0,
              "anchor_batch_max": 50, "anchor_batch_ms": 200, "append_wait_ms": 0,
              "shutdown_grace_s": 10.0}
    signer = await private_lane(settings, prefix + "s", PARTITIONS, **common)
    anchorer = await private_lane(settings, prefix + "a", PARTITIONS, **common)
    db = await Database.connect(signer)
    await migrate(db)
    producer = await make_producer(settings, client_id=f"test-{prefix}")
    try:
        yield Forge(signer=signer, anchorer=anchorer, db=db, producer=producer,
                    rekor_key=_read_key(settings.rekor_public_key).encode(), prefix=prefix)
    finally:
        await producer.close()
        await db.close()


# --- helpers -------------------------------------------------------------------------------


def payload_of(rid: str) -> bytes:
    return f"the document of {rid}".encode()


async def stored_entries(f: Forge, tags: list[str]) -> list[EntryRecord]:
    """Entries appended, signed and stored by the real signer, in the order of ``tags``."""
    rids = [f"{f.prefix}-{tag}" for tag in tags]
    now = datetime.now(UTC)
    await f.producer.send_many(
        (f.signer.topic_append, f"orders/{i}", AppendRequest(
            request_id=rid, subject=f"orders/{i}",
            payload_sha256=hashlib.sha256(payload_of(rid)).hexdigest(),
            meta={"n": i}, submitted_at=now).to_bytes(), None)
        for i, rid in enumerate(rids))
    ids = [entry_id_for(rid) for rid in rids]
    async with running(run_signer, f.signer, "signer"):
        async def all_stored() -> bool:
            return len(await f.repo.entries_for(ids)) == len(ids)

        await wait_for(all_stored, within=60, what=f"{len(ids)} rows stored by the signer")
    rows = {r.id: r for r in await f.repo.entries_for(ids)}
    return [rows[i] for i in ids]


async def publish_signed(f: Forge, values: list[tuple[str, bytes]]) -> None:
    """``(key, value)`` records on the anchorer's ``ledger.signed``, as a writer of it may."""
    await f.producer.send_many((f.anchorer.topic_signed, k, v, None) for k, v in values)


async def read_until(
    settings: Settings, topic: str, done: Callable[[list[Record]], bool], *, within: float
) -> list[Record]:
    """``topic`` from the beginning until ``done(records)``."""
    consumer = await make_consumer(settings, group_id=f"reader-{uuid.uuid4().hex[:8]}",
                                   topics=[topic], client_id="test-forged-reader")
    records: list[Record] = []
    try:
        async def enough() -> bool:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
            return done(records)

        await wait_for(enough, within=within, what=f"records on {topic}", every=0.0)
    finally:
        await consumer.close()
    return records


def anchored_ids(records: list[Record]) -> set[uuid.UUID]:
    return {AnchoredEntry.model_validate_json(r.value or b"").entry.entry_id for r in records}


def headers_of(record: Record) -> dict[str, bytes]:
    return {k: bytes(v) for k, v in record.headers}


async def entry_key_pem(settings: Settings, version: int) -> bytes:
    """The ledger's Ed25519 entry key as Vault serves it: the pin of a careful verifier."""
    vault = TransitSigner(settings, token=VaultToken.for_stage(settings, "signer"))
    try:
        return (await vault.public_key(settings.vault_transit_key, version)).pem.encode()
    finally:
        await vault.close()


def forged_claims(entry_id: uuid.UUID, marker: str) -> tuple[bytes, dict[str, str]]:
    """A well-formed ``ledger.signed`` event for ``entry_id`` whose every claim is the
    forger's own: request id, subject, payload hash, meta, statement, signature and key (a
    valid signature by a key of the forger's). Returns the value and the forged strings."""
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    claims = {"request_id": f"forged-{marker}", "subject": f"forged/{marker}",
              "payload_sha256": hashlib.sha256(f"forged {marker}".encode()).hexdigest(),
              "meta_value": f"forged meta {marker}"}
    now = datetime.now(UTC)
    statement = statement_bytes(request_id=claims["request_id"], subject=claims["subject"],
                                payload_sha256=claims["payload_sha256"],
                                meta={"m": claims["meta_value"]}, submitted_at=now)
    signature = "vault:v1:" + base64.b64encode(key.sign(statement)).decode()
    event = SignedEntry(
        entry_id=entry_id, request_id=claims["request_id"], subject=claims["subject"],
        payload_sha256=claims["payload_sha256"], meta={"m": claims["meta_value"]},
        submitted_at=now, created_at=now, statement=base64.b64encode(statement).decode(),
        signature=signature, key_name="ledger-ed25519", key_version=1, public_key=pem)
    forged_leaf = leaf_hash(leaf_bytes(entry_id=entry_id, statement=statement,
                                       signature=signature, key_name="ledger-ed25519",
                                       key_version=1))
    claims.update(statement=event.statement, signature=signature,
                  signature_b64=signature.rsplit(":", 1)[1], public_key=pem,
                  public_key_body=pem.splitlines()[1], leaf=forged_leaf.hex())
    return event.to_bytes(), claims


async def everything_stored(f: Forge) -> str:
    """Every row of the ledger's tables, as text (the forged strings must be in none)."""
    parts: list[str] = []
    for table in ("ledger.entries", "ledger.batches", "ledger.checkpoints"):
        rows = await f.db.fetch(f"SELECT * FROM {table}")
        parts.extend(repr(dict(r)) for r in rows)
        parts.extend(bytes(v).decode("latin-1") for r in rows for v in r.values()
                     if isinstance(v, (bytes, memoryview)))
    return "\n".join(parts)


# --- a. a forged event naming a stored entry -------------------------------------------------


@pytest.mark.timeout(300)
async def test_a_forged_event_for_a_stored_entry_anchors_the_stored_row(forge: Forge) -> None:
    f = forge
    target, neighbour = await stored_entries(f, ["target", "neighbour"])
    forged, claims = forged_claims(target.id, f.prefix)
    await publish_signed(f, [(claims["subject"], forged),
                             (neighbour.subject, neighbour.signed_event())])

    async with running(run_anchorer, f.anchorer, "anchorer") as metrics:
        records = await read_until(f.anchorer, f.anchorer.topic_anchored,
                                   lambda r: anchored_ids(r) >= {target.id, neighbour.id},
                                   within=120)
    events = {AnchoredEntry.model_validate_json(r.value or b"").entry.entry_id: r
              for r in records}
    event = AnchoredEntry.model_validate_json(events[target.id].value or b"")

    # the event carries the stored row, not the forger's claims
    assert event.entry == target.signed_entry()
    assert events[target.id].key == target.subject.encode()
    stored = await f.repo.entry(target.id)
    assert stored is not None and stored.batch_id == event.batch.batch_id
    # its leaf is the stored one; the proof verifies with the ledger's own entry key pinned
    assert target.stored_leaf_hash == target.content_leaf_hash()
    leaves = [leaf.leaf_hash for leaf in await f.repo.batch_leaves(event.batch.batch_id)]
    assert leaves[event.leaf_index] == target.stored_leaf_hash
    pinned = await entry_key_pem(f.anchorer, target.key_version)
    report = verify_bundle(events[target.id].value or b"", rekor_public_key_pem=f.rekor_key,
                           entry_public_key_pem=pinned, payload=payload_of(target.request_id))
    assert (report.entry_id, report.subject) == (target.id, target.subject)
    with pytest.raises(BundleVerificationError) as refused:
        verify_bundle(events[target.id].value or b"", rekor_public_key_pem=f.rekor_key,
                      entry_public_key_pem=pinned,
                      payload=f"forged {f.prefix}".encode())  # the forged payload hash's
    assert refused.value.step == "payload"

    # the forged claims are nowhere: events (the receipt body decoded too), manifest, rows
    manifest = base64.b64decode(event.batch.manifest).decode()
    bodies = [base64.b64decode(AnchoredEntry.model_validate_json(r.value or b"").receipt.body)
              .decode() for r in records]
    texts = [r.value.decode() for r in records if r.value] + [manifest, *bodies,
                                                              await everything_stored(f)]
    for name, value in claims.items():
        for text in texts:
            assert value not in text, f"the forged {name} reached the anchored output"
    forged_leaf = bytes.fromhex(claims["leaf"])
    assert await f.db.fetchval("SELECT count(*) FROM ledger.entries WHERE leaf_hash = $1",
                               forged_leaf) == 0
    assert metric(metrics, "ledger_dlq_messages_total",
                  {"stage": "anchorer", "reason": "unknown entry"}) == 0
    assert metric(metrics, "ledger_entries_anchored_total") == 2


# --- b. a forged event naming no stored entry ----------------------------------------------


@pytest.mark.timeout(300)
async def test_a_forged_event_for_an_unknown_entry_is_dead_lettered(forge: Forge) -> None:
    f = forge
    (real,) = await stored_entries(f, ["real"])
    stranger = entry_id_for(f"{f.prefix}-never-appended")
    forged, claims = forged_claims(stranger, f.prefix)
    await publish_signed(f, [(claims["subject"], forged), (real.subject, real.signed_event())])

    async with running(run_anchorer, f.anchorer, "anchorer") as metrics:
        dead = await read_until(f.anchorer, f.anchorer.topic_signed + ".dlq",
                                lambda r: len(r) >= 1, within=120)
        records = await read_until(f.anchorer, f.anchorer.topic_anchored,
                                   lambda r: real.id in anchored_ids(r), within=120)
    # running() has checked that the anchorer did not stop on it

    (record,) = dead
    headers = headers_of(record)
    assert headers["dlq.reason"] == b"unknown entry"
    assert headers["dlq.stage"] == b"anchorer"
    assert str(stranger).encode() in headers["dlq.detail"]
    assert record.value == forged, "dead-lettered as it came, for whoever investigates"
    assert metric(metrics, "ledger_dlq_messages_total",
                  {"stage": "anchorer", "reason": "unknown entry"}) == 1
    assert anchored_ids(records) == {real.id}
    assert await f.repo.entry(stranger) is None, "nothing is stored for it"
    assert int(await f.db.fetchval("SELECT count(*) FROM ledger.batches")) == 1
    assert int(await f.db.fetchval("SELECT sum(size) FROM ledger.batches")) == 1
    stored = await everything_stored(f)
    assert str(stranger) not in stored
    assert all(value not in stored for value in claims.values())


# --- c. a stored row that does not check, LEDGER_ANCHORER_VERIFY_ROWS on --------------------


def _flip_one_signature_byte(sig: str) -> str:
    prefix, raw = sig.rsplit(":", 1)
    signature = bytearray(base64.b64decode(raw))
    signature[7] ^= 0x40
    return f"{prefix}:{base64.b64encode(bytes(signature)).decode()}"


async def insert_copy_with_flipped_signature(f: Forge, row: EntryRecord) -> EntryRecord:
    """A row copied from ``row`` under a new request id, one signature byte flipped and the
    leaf hash of that content stored with it: written with the database's own credentials,
    not by the signer. Its Ed25519 signature is the first check it fails."""
    rid = f"{row.request_id}-copy"
    new_id = entry_id_for(rid)
    sig = _flip_one_signature_byte(row.sig)
    leaf = leaf_hash(leaf_bytes(entry_id=new_id, statement=row.statement, signature=sig,
                                key_name=row.key_name, key_version=row.key_version))
    await f.db.execute(
        "INSERT INTO ledger.entries (id, request_id, subject, payload_hash, meta, submitted_at,"
        " statement, sig, key_name, key_version, pubkey, content_sha256, leaf_hash)"
        " SELECT $1, $2, subject, payload_hash, meta, submitted_at, statement, $3, key_name,"
        " key_version, pubkey, content_sha256, $4 FROM ledger.entries WHERE id = $5",
        new_id, rid, sig, leaf, row.id)
    copy = await f.repo.entry(new_id)
    assert copy is not None
    return copy


@pytest.mark.timeout(300)
async def test_a_stored_row_that_does_not_check_is_refused(
    forge: Forge, caplog: pytest.LogCaptureFixture
) -> None:
    f = forge
    verifying = f.anchorer.model_copy(update={"anchorer_verify_rows": True})
    good, original, moved = await stored_entries(f, ["good", "original", "moved"])
    bad_sig = await insert_copy_with_flipped_signature(f, original)
    # a signer-written row whose subject column no longer says what was signed
    await f.db.execute("UPDATE ledger.entries SET subject = $2 WHERE id = $1",
                       moved.id, f"elsewhere/{f.prefix}")
    # well-formed events naming them, as the signer would have published them
    await publish_signed(f, [(r.subject, r.signed_event()) for r in (good, bad_sig, moved)])

    with caplog.at_level("ERROR", logger="ledger.anchorer"):
        async with running(run_anchorer, verifying, "anchorer") as metrics:
            dead = await read_until(f.anchorer, f.anchorer.topic_signed + ".dlq",
                                    lambda r: len(r) >= 2, within=120)
            records = await read_until(f.anchorer, f.anchorer.topic_anchored,
                                       lambda r: good.id in anchored_ids(r), within=120)

    # refused: dead-lettered with the reason, counted, logged, and left unbatched
    reasons = {SignedEntry.model_validate_json(r.value or b"").entry_id:
               headers_of(r)["dlq.detail"].decode() for r in dead}
    assert set(reasons) == {bad_sig.id, moved.id}
    assert all(headers_of(r)["dlq.reason"] == b"entry refused" for r in dead)
    assert "(signature)" in reasons[bad_sig.id] and "Ed25519" in reasons[bad_sig.id]
    assert "(statement)" in reasons[moved.id]
    assert f"elsewhere/{f.prefix}" not in reasons[moved.id], "no value of the row is shown"
    assert metric(metrics, "ledger_anchorer_rejected_rows_total", {"reason": "signature"}) == 1
    assert metric(metrics, "ledger_anchorer_rejected_rows_total", {"reason": "statement"}) == 1
    logged = {(r.__dict__.get("entry_id"), r.__dict__.get("reason")) for r in caplog.records
              if r.getMessage() == "entry row refused: not anchored"}
    assert logged == {(str(bad_sig.id), "signature"), (str(moved.id), "statement")}
    for refused in (bad_sig, moved):
        row = await f.repo.entry(refused.id)
        assert row is not None and row.batch_id is None and row.anchored_at is None

    # the good row beside them is anchored alone, and its proof verifies
    assert anchored_ids(records) == {good.id}
    (event,) = records
    report = verify_bundle(event.value or b"", rekor_public_key_pem=f.rekor_key,
                           entry_public_key_pem=await entry_key_pem(f.anchorer, 1),
                           payload=payload_of(good.request_id))
    assert report.batch_size == 1


# --- d. the same row with the default: anchored, then flagged by verify and audit ----------


@pytest.mark.timeout(300)
async def test_by_default_a_row_that_does_not_check_is_anchored_and_flagged_later(
    forge: Forge,
) -> None:
    f = forge
    assert not f.anchorer.anchorer_verify_rows, "the default"
    (original,) = await stored_entries(f, ["original"])
    bad_sig = await insert_copy_with_flipped_signature(f, original)
    await publish_signed(f, [(r.subject, r.signed_event()) for r in (original, bad_sig)])

    async with running(run_anchorer, f.anchorer, "anchorer") as metrics:
        records = await read_until(f.anchorer, f.anchorer.topic_anchored,
                                   lambda r: anchored_ids(r) >= {original.id, bad_sig.id},
                                   within=120)

    # not re-checked: anchored as stored, nothing refused, counted or dead-lettered
    assert anchored_ids(records) == {original.id, bad_sig.id}
    assert metric(metrics, "ledger_anchorer_rejected_rows_total", {"reason": "signature"}) == 0
    assert metric(metrics, "ledger_dlq_messages_total",
                  {"stage": "anchorer", "reason": "entry refused"}) == 0
    stored = await f.repo.entry(bad_sig.id)
    assert stored is not None and stored.batch_id is not None and stored.anchored_at is not None

    # ... and caught afterwards: its proof bundle fails at the entry signature (the original's
    # passes), and the audit's entry check reports the row's signature
    events = {AnchoredEntry.model_validate_json(r.value or b"").entry.entry_id: r.value or b""
              for r in records}
    pinned = await entry_key_pem(f.anchorer, original.key_version)
    payload = payload_of(original.request_id)  # the copy claims the same document
    verify_bundle(events[original.id], rekor_public_key_pem=f.rekor_key,
                  entry_public_key_pem=pinned, payload=payload)
    with pytest.raises(BundleVerificationError) as flagged:
        verify_bundle(events[bad_sig.id], rekor_public_key_pem=f.rekor_key,
                      entry_public_key_pem=pinned, payload=payload)
    assert flagged.value.step == "entry_signature"
    problems = EntryChecker().check(stored)
    assert "signature" in {p.check for p in problems}, [p.check for p in problems]
    assert {(p.entry_id, p.batch_id) for p in problems} == {(bad_sig.id, stored.batch_id)}
