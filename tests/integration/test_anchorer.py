"""The anchorer on the real stack: Kafka, PostgreSQL, OpenBao and a real Rekor, v1 or v2.

Each test gets a private database (migrated) and private topics and consumer groups, runs the
real signer (in-process) to turn append requests into signed entries, and the anchorer either
in-process or as a subprocess (``ledger anchorer``, or :mod:`tests.support.crash_after_rekor`
for the crash test). Rekor is
reached directly or through :mod:`tests.support.rekor_proxy` (pass-through, to count calls;
or injecting the faults the real Rekor cannot produce).

Every ``ledger.anchored`` event is checked with our offline verifier AND with sigstore-python's
(``TransparencyLogEntry._from_v1_response(...)._verify(keyring)``) against the stack's pinned
log key.

The acceptance tests (N=1, a batch of 3,000, tampered receipts, an outage that drains, a
crash after the log accepted) run against both log APIs (``rekor_api``): Rekor v1, and
Rekor v2 (rekor-tiles) with the stack's RFC 3161 timestamp authority, where the proxy also
stands in front of the timestamp authority. A v2 event is checked by the bundle verifier
(``shared.bundle.verify_bundle``) against the pinned v2 log key, origin and TSA chain.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from sigstore._internal.trust import Keyring
from sigstore.models import TransparencyLogEntry
from sigstore_models.common import v1 as common_v1

from deploy.local.process import free_port
from services.anchorer import run_anchorer
from services.anchorer.checkpoints import ConsistencyMonitor
from services.anchorer.logs import RekorV1Log, RekorV2Log, TransparencyLog
from services.anchorer.trust import LogKeySource
from services.signer.app import run_signer
from shared.bundle import verify_bundle
from shared.db import Database, migrate
from shared.kafka import Producer, make_consumer, make_producer
from shared.lifecycle import Lifecycle
from shared.merkle import leaf_hash, verify_inclusion
from shared.messages import AnchoredEntry, AppendRequest, ReceiptInfo
from shared.rekor import RekorClient
from shared.rekor_v2 import RekorV2Client
from shared.repository import Repository
from shared.settings import Settings
from shared.signatures import verify_manifest_signature
from shared.statement import leaf_bytes
from shared.telemetry import Metrics
from shared.tsa import TsaClient
from shared.verify import (
    ExpectedEntry,
    LogKey,
    ReceiptVerificationError,
    RekorReceipt,
    load_log_key,
    verify_receipt,
)
from shared.verify_v2 import load_v2_trust
from tests.support.crash_after_rekor import CRASH_MESSAGE
from tests.support.lanes import lane_topics
from tests.support.rekor_proxy import RekorProxy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# --- the world of one test -----------------------------------------------------------------


@dataclass
class World:
    settings: Settings  # private database/topics/groups; Rekor (and the TSA) through proxies
    direct_rekor_url: str
    log_key: LogKey
    db: Database
    proxy: RekorProxy
    producer: Producer
    run_dir: Path
    api: str = "v1"
    tiles_url: str = ""  # v2: where the log's checkpoint and tiles are read
    tsa_proxy: RekorProxy | None = None  # v2: in front of the timestamp authority
    tiles_proxy: RekorProxy | None = None  # v2: in front of the log's read URL
    trust: Any = None  # v2: the pinned key, origin and TSA chain

    def with_(self, **changes: Any) -> Settings:
        return self.settings.model_copy(update=changes)

    @property
    def entries_route(self) -> str:
        return f"/api/{self.api}/log/entries"


def _read_key(value: str) -> str:
    return value if "-----BEGIN" in value else Path(value).read_text()


@pytest.fixture
def rekor_api() -> str:
    """The log API the world anchors in; acceptance tests parametrize it (v1, v2)."""
    return "v1"


@pytest.fixture
async def world(
    stack: Any, settings: Settings, rekor_api: str, request: pytest.FixtureRequest,
    tmp_path: Path,
) -> AsyncIterator[World]:
    if rekor_api == "v2":
        settings = request.getfixturevalue("settings_v2")
    suffix = uuid.uuid4().hex[:10]
    dsn = stack.require("postgres").create_database(f"anch_{suffix}")
    topics = {
        "topic_append": f"t{suffix}.append",
        "topic_signed": f"t{suffix}.signed",
        "topic_anchored": f"t{suffix}.anchored",
    }
    base = settings.model_copy(
        update={
            "database_dsn": dsn,
            **topics,
            "signer_group": f"signer-{suffix}",
            "anchorer_group": f"anchorer-{suffix}",
            "append_wait_ms": 0,
            "sweeper_interval_s": 3600.0,
            "sweeper_age_s": 3600.0,
            "shutdown_grace_s": 10.0,
            "log_level": "INFO",
        }
    )
    await lane_topics(base, 4)
    db = await Database.connect(base)
    await migrate(db)
    producer = await make_producer(base, client_id=f"test-{suffix}")
    async with contextlib.AsyncExitStack() as proxies:
        proxy = await proxies.enter_async_context(RekorProxy(settings.rekor_server_url))
        through = {"rekor_server_url": proxy.url}
        tsa_proxy, tiles_proxy, trust = None, None, None
        if rekor_api == "v2":
            tsa_proxy = await proxies.enter_async_context(RekorProxy(settings.tsa_url))
            tiles_proxy = await proxies.enter_async_context(
                RekorProxy(settings.rekor_read_url))
            through |= {"tsa_url": tsa_proxy.url, "rekor_tiles_url": tiles_proxy.url}
            trust = v2_trust(settings)
        yield World(
            settings=base.model_copy(update=through),
            direct_rekor_url=settings.rekor_server_url,
            log_key=load_log_key(_read_key(settings.rekor_public_key)),
            db=db,
            proxy=proxy,
            producer=producer,
            run_dir=tmp_path,
            api=rekor_api,
            tiles_url=settings.rekor_read_url,
            tsa_proxy=tsa_proxy,
            tiles_proxy=tiles_proxy,
            trust=trust,
        )
    await producer.close()
    await db.close()


def v2_trust(settings: Settings) -> Any:
    return load_v2_trust(_read_key(settings.rekor_public_key), settings.rekor_origin,
                         _read_key(settings.tsa_cert_chain))


# --- helpers -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(
    fn: Callable[..., Coroutine[Any, Any, None]], settings: Settings, name: str, **more: Any
) -> AsyncIterator[Metrics]:
    metrics = Metrics()
    lc = Lifecycle(name=name, grace_s=settings.shutdown_grace_s)
    task = asyncio.create_task(
        fn(settings, lifecycle=lc, metrics=metrics, install_signals=False, **more), name=name
    )
    try:
        yield metrics
        assert not task.done() or task.exception() is None, task.exception()
    finally:
        lc.request_stop("test over")
        await asyncio.wait_for(task, 60)


async def append(world: World, n: int, *, tag: str) -> list[str]:
    """Publish ``n`` append requests; return their request ids."""
    now = datetime.now(UTC)
    requests = [
        AppendRequest(
            request_id=f"{tag}-{i}",
            subject=f"acct-{i % 17}",
            payload_sha256=hashlib.sha256(f"{tag}/{i}".encode()).hexdigest(),
            meta={"n": i, "tag": tag},
            submitted_at=now,
        )
        for i in range(n)
    ]
    for start in range(0, n, 1000):
        await world.producer.send_many(
            (world.settings.topic_append, r.subject, r.to_bytes(), None)
            for r in requests[start : start + 1000]
        )
    return [r.request_id for r in requests]


async def count(world: World, sql: str, *args: Any) -> int:
    return int(await world.db.fetchval(sql, *args))


async def entry_ids(world: World, request_ids: list[str]) -> set[uuid.UUID]:
    rows = await world.db.fetch(
        "SELECT id FROM ledger.entries WHERE request_id = ANY($1::text[])", request_ids
    )
    return {r["id"] for r in rows}


class AnchoredReader:
    """Reads ``ledger.anchored`` from the beginning, keeping every raw event per entry."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.events: dict[uuid.UUID, list[bytes]] = defaultdict(list)
        self.keys: dict[uuid.UUID, bytes | None] = {}
        self._consumer: Any = None

    async def __aenter__(self) -> AnchoredReader:
        self._consumer = await make_consumer(
            self.world.settings,
            group_id=f"reader-{uuid.uuid4().hex[:8]}",
            topics=[self.world.settings.topic_anchored],
            client_id="test-reader",
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.close()

    async def poll(self) -> None:
        batches = await self._consumer.getmany(timeout_ms=200, max_records=5000)
        for records in batches.values():
            for r in records:
                event = AnchoredEntry.model_validate_json(r.value)
                self.events[event.entry.entry_id].append(r.value)
                self.keys[event.entry.entry_id] = r.key

    async def until(self, ids: set[uuid.UUID], *, limit_s: float) -> None:
        async def all_seen() -> bool:
            await self.poll()
            return ids <= self.events.keys()

        await wait_for(all_seen, within=limit_s, what=f"ledger.anchored for {len(ids)} entries",
                       every=0.0)

    def parsed(self, ids: set[uuid.UUID]) -> list[AnchoredEntry]:
        return [AnchoredEntry.model_validate_json(self.events[i][0]) for i in ids]


def sigstore_keyring(log_key: LogKey) -> Any:
    return Keyring(
        [
            common_v1.PublicKey.model_validate(
                {
                    "rawBytes": base64.b64encode(log_key.der).decode(),
                    "keyDetails": common_v1.PublicKeyDetails.PKIX_ECDSA_P256_SHA_256,
                }
            )
        ]
    )


def receipt_of(event: AnchoredEntry) -> RekorReceipt:
    r = event.receipt
    assert isinstance(r, ReceiptInfo), "a Rekor v1 receipt"
    return RekorReceipt(
        uuid=r.uuid, log_index=r.log_index, tree_index=r.tree_index, log_id=r.log_id,
        integrated_time=r.integrated_time, body=r.body,
        signed_entry_timestamp=r.signed_entry_timestamp, inclusion_hashes=tuple(r.hashes),
        root_hash=r.root_hash, tree_size=r.tree_size, checkpoint=r.checkpoint,
    )


def check_event(world: World, event: AnchoredEntry, keyring: Any, seen: set[str]) -> None:
    """:func:`verify_event` for a v1 event; for a v2 one, the whole bundle verified against
    the pinned v2 log key, origin and timestamp authority chain."""
    if world.api == "v1":
        verify_event(event, world.log_key, keyring, seen)
        return
    s = world.settings
    report = verify_bundle(event.model_dump_json().encode(),
                           rekor_public_key_pem=_read_key(s.rekor_public_key).encode(),
                           rekor_origin=s.rekor_origin,
                           tsa_chain_pem=_read_key(s.tsa_cert_chain).encode())
    assert "receipt" in [step.step for step in report.steps]
    assert report.rekor_log_id == event.receipt.log_id
    seen.add(event.receipt.uuid)


def verify_event(event: AnchoredEntry, log_key: LogKey, keyring: Any, seen: set[str]) -> None:
    """Everything a user checks offline, from the event alone (plus the pinned log key)."""
    entry, batch = event.entry, event.batch
    # the entry's own Ed25519 signature over the stored statement
    statement = base64.b64decode(entry.statement)
    pub = serialization.load_pem_public_key(entry.public_key.encode())
    assert isinstance(pub, ed25519.Ed25519PublicKey)
    pub.verify(base64.b64decode(entry.signature.split(":", 2)[2]), statement)
    # leaf → audit path → batch root
    leaf = leaf_bytes(entry_id=entry.entry_id, statement=statement, signature=entry.signature,
                      key_name=entry.key_name, key_version=entry.key_version)
    verify_inclusion(event.leaf_index, batch.size, leaf_hash(leaf),
                     [bytes.fromhex(h) for h in event.audit_path], bytes.fromhex(batch.root))
    # root → manifest → anchor signature
    manifest = base64.b64decode(batch.manifest)
    assert hashlib.sha256(manifest).hexdigest() == batch.manifest_sha256
    doc = json.loads(manifest)
    assert (doc["root"], doc["size"], doc["batch_id"]) == (
        batch.root, batch.size, str(batch.batch_id))
    signature = base64.b64decode(batch.anchor_signature)
    verify_manifest_signature(batch.anchor_public_key, bytes.fromhex(batch.manifest_sha256),
                              signature)
    # manifest → Rekor receipt (ours, then sigstore-python's; once per distinct receipt)
    receipt = receipt_of(event)
    verify_receipt(receipt, log_key, expected=ExpectedEntry(
        batch.manifest_sha256, signature, batch.anchor_public_key))
    if receipt.uuid not in seen:
        seen.add(receipt.uuid)
        TransparencyLogEntry._from_v1_response(receipt.to_v1_response())._verify(keyring)


async def rekor_tree_size(url: str) -> int:
    async with RekorClient(url, timeout_s=20) as rekor:
        return (await rekor.get_log_info()).tree_size


async def log_size(world: World) -> int:
    """The size of the log the world anchors in, as its latest checkpoint says."""
    if world.api == "v1":
        return await rekor_tree_size(world.direct_rekor_url)
    async with RekorV2Client(world.direct_rekor_url, world.tiles_url, timeout_s=20) as rekor:
        note = await rekor.get_checkpoint()
    return int(note.split("\n")[1])


async def check_batches(world: World, ids: set[uuid.UUID]) -> dict[str, int]:
    """Every entry in exactly one anchored batch, leaf indexes 0..size-1, one Rekor entry each."""
    rows = await world.db.fetch(
        "SELECT id, batch_id, leaf_index, rekor_log_id, rekor_index, anchored_at"
        " FROM ledger.entries WHERE id = ANY($1::uuid[])", list(ids))
    assert {r["id"] for r in rows} == ids
    assert all(r["batch_id"] is not None and r["anchored_at"] is not None for r in rows)
    batch_ids = list({r["batch_id"] for r in rows})
    batches = await world.db.fetch(
        "SELECT id, state, size, rekor_uuid, rekor_log_index FROM ledger.batches"
        " WHERE id = ANY($1::uuid[])", batch_ids)
    assert all(b["state"] == "anchored" for b in batches)
    by_batch: dict[uuid.UUID, list[int]] = defaultdict(list)
    for r in rows:
        by_batch[r["batch_id"]].append(r["leaf_index"])
    sizes = {b["id"]: b["size"] for b in batches}
    for batch_id, indexes in by_batch.items():
        members = await count(world, "SELECT count(*) FROM ledger.entries WHERE batch_id = $1",
                              batch_id)
        assert members == sizes[batch_id]
        assert sorted(indexes) == list(range(sizes[batch_id]))
    uuids = [b["rekor_uuid"] for b in batches]
    assert len(set(uuids)) == len(uuids), "two batches share a Rekor entry"
    rekor_of = {b["id"]: (b["rekor_uuid"], b["rekor_log_index"]) for b in batches}
    for r in rows:
        assert (r["rekor_log_id"], r["rekor_index"]) == rekor_of[r["batch_id"]]
    return {"batches": len(batches), "entries": len(rows)}


def metric(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


# --- streams -------------------------------------------------------------------------------


async def _stream(world: World, n: int, *, batch_max: int, batch_ms: int, tag: str,
                  limit_s: float) -> tuple[set[uuid.UUID], AnchoredReader, float, Metrics]:
    s = world.with_(anchor_batch_max=batch_max, anchor_batch_ms=batch_ms)
    async with (
        AnchoredReader(world) as reader,
        running(run_signer, s, "signer"),
        running(run_anchorer, s, "anchorer") as metrics,
    ):
        started = time.monotonic()
        request_ids = await append(world, n, tag=tag)

        async def all_signed() -> bool:
            return await count(world, "SELECT count(*) FROM ledger.entries") >= n

        await wait_for(all_signed, within=limit_s, what=f"{n} signed entries")
        ids = await entry_ids(world, request_ids)
        await reader.until(ids, limit_s=limit_s)
        elapsed = time.monotonic() - started
    return ids, reader, elapsed, metrics


@pytest.mark.parametrize("rekor_api", ["v1", "v2"])
@pytest.mark.timeout(600)
async def test_batches_of_thousands_anchor_and_verify(world: World) -> None:
    n = 3000
    before = await log_size(world)
    ids, reader, elapsed, metrics = await _stream(
        world, n, batch_max=1500, batch_ms=1000, tag="big", limit_s=300)
    shape = await check_batches(world, ids)
    posts = world.proxy.count("POST", world.entries_route)
    created = world.proxy.count("POST", world.entries_route, 201)
    assert created == shape["batches"] and posts == created
    assert await log_size(world) - before == shape["batches"]
    assert shape["batches"] <= n // 100, shape  # batched, not one Rekor entry per entry
    keyring, seen = sigstore_keyring(world.log_key), set[str]()
    for event in reader.parsed(ids):
        check_event(world, event, keyring, seen)
        assert reader.keys[event.entry.entry_id] == event.entry.subject.encode()
    assert len(seen) == shape["batches"]
    assert metric(metrics, "ledger_entries_anchored_total") == n
    rekor_calls = sum(world.proxy.calls.values())
    print(f"\n[measure] {world.api}: {n} entries in {shape['batches']} batches: "
          f"{elapsed:.1f}s end to end "
          f"(append→anchored), {n / elapsed:.0f} entries/s, {rekor_calls} Rekor calls "
          f"({rekor_calls / n:.4f} per entry)")

    # Replay: a new consumer group reads ledger.signed from the start → identical events,
    # no new batch, no new Rekor entry.
    batches_before = await count(world, "SELECT count(*) FROM ledger.batches")
    size_before = await log_size(world)
    first = {i: reader.events[i][0] for i in ids}
    replay = world.with_(anchorer_group=world.settings.anchorer_group + "-replay",
                         anchor_batch_max=1500, anchor_batch_ms=500)
    await lane_topics(replay, 4)  # the anchorer principal's ACLs for the new group
    async with (
        AnchoredReader(world) as again,
        running(run_anchorer, replay, "anchorer-replay"),
    ):
        async def replayed() -> bool:
            await again.poll()
            return all(len(again.events[i]) >= 2 for i in ids)

        await wait_for(replayed, within=300, what="replayed ledger.anchored events", every=0.0)
    for i in ids:
        assert all(raw == first[i] for raw in again.events[i]), f"event of {i} differs"
    assert await count(world, "SELECT count(*) FROM ledger.batches") == batches_before
    assert await log_size(world) == size_before


@pytest.mark.parametrize("rekor_api", ["v1", "v2"])
@pytest.mark.timeout(300)
async def test_n1_one_rekor_entry_per_ledger_entry(world: World) -> None:
    n = 200
    before = await log_size(world)
    ids, reader, elapsed, _ = await _stream(
        world, n, batch_max=1, batch_ms=0, tag="n1", limit_s=200)
    shape = await check_batches(world, ids)
    assert shape == {"batches": n, "entries": n}
    assert await log_size(world) - before == n
    keyring, seen = sigstore_keyring(world.log_key), set[str]()
    for event in reader.parsed(ids):
        assert event.batch.size == 1 and event.audit_path == [] and event.leaf_index == 0
        check_event(world, event, keyring, seen)
    assert len(seen) == n
    rekor_calls = sum(world.proxy.calls.values())
    print(f"\n[measure] {world.api} N=1: {n} entries in {elapsed:.1f}s, {n / elapsed:.1f} entries/s, "
          f"{rekor_calls} Rekor calls ({rekor_calls / n:.2f} per entry)")


# --- tampered receipts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rekor_api", "mode", "check"),
    [("v1", "flip_set", "set"), ("v1", "corrupt_inclusion", "inclusion"),
     ("v1", "foreign_checkpoint", "checkpoint"),
     ("v2", "corrupt_inclusion", "inclusion"), ("v2", "foreign_checkpoint", "checkpoint"),
     ("v2", "flip_timestamp", "timestamp")],
)
@pytest.mark.timeout(300)
async def test_tampered_receipt_is_refused_and_batch_stays_pending(
    world: World, mode: str, check: str
) -> None:
    # v2: the log's read URL lies too, so an entry rebuilt from the tiles after a 409 does
    liars = {"flip_timestamp": [world.tsa_proxy]}.get(mode, [world.proxy, world.tiles_proxy])
    async with _real_log(world) as (_, add_entry):
        await add_entry()  # a log of two entries or more: every inclusion proof has a hash
    for liar in filter(None, liars):
        if liar is not world.tiles_proxy:
            liar.mode = mode  # type: ignore[assignment]
    s = world.with_(anchor_batch_max=10, anchor_batch_ms=500)
    async with (
        AnchoredReader(world) as reader,
        running(run_signer, s, "signer"),
        running(run_anchorer, s, "anchorer") as metrics,
    ):
        if world.tiles_proxy is not None and world.tiles_proxy in liars:
            # the sweeper's first round reads the log's checkpoint at start: let it see the
            # true one, so that every refusal counted below is one of anchoring
            tiles = world.tiles_proxy

            async def first_sweep_read_the_head() -> bool:
                return tiles.count("GET", "/checkpoint", 200) >= 1

            await wait_for(first_sweep_read_the_head, within=60,
                           what="the sweeper's first consistency check")
            tiles.mode = mode  # type: ignore[assignment]
        request_ids = await append(world, 10, tag=f"tamper-{mode}")

        async def refused_twice() -> bool:
            return metric(metrics, "ledger_receipt_verification_failures_total",
                          {"check": check}) >= 2

        await wait_for(refused_twice, within=120, what=f"two refusals by check {check}")
        ids = await entry_ids(world, request_ids)
        assert len(ids) == 10
        # nothing stored as valid: batches pending, no receipt, no entry anchored, no event
        assert await count(world, "SELECT count(*) FROM ledger.batches WHERE state = 'pending'"
                           " AND receipt IS NULL") >= 1
        assert await count(world, "SELECT count(*) FROM ledger.batches"
                           " WHERE state = 'anchored'") == 0
        assert await count(world, "SELECT count(*) FROM ledger.entries"
                           " WHERE anchored_at IS NOT NULL OR rekor_log_id IS NOT NULL") == 0
        await reader.poll()
        assert not reader.events
        assert metric(metrics, "ledger_stage_paused", {"stage": "anchorer"}) == 1
        assert sum(liar.tampered for liar in liars if liar is not None) >= 2
        other_checks = {c for c in ("set", "inclusion", "checkpoint", "body", "log_id", "uuid",
                                    "timestamp", "receipt") if c != check}
        for c in other_checks:
            assert metric(metrics, "ledger_receipt_verification_failures_total",
                          {"check": c}) == 0

        # The log stops lying: the stored signature is re-sent, Rekor answers 409, the
        # genuine receipt verifies and the batch completes.
        for liar in filter(None, liars):
            liar.mode = "pass"
        await reader.until(ids, limit_s=120)
        assert world.proxy.count("POST", world.entries_route, 409) >= 1
    shape = await check_batches(world, ids)
    assert world.proxy.count("POST", world.entries_route, 201) == shape["batches"]
    keyring, seen = sigstore_keyring(world.log_key), set[str]()
    for event in reader.parsed(ids):
        check_event(world, event, keyring, seen)


def _unsigned(response: dict[str, Any]) -> dict[str, Any]:
    """A Rekor entry answer with each checkpoint cut to what does not change per request."""
    out: dict[str, Any] = json.loads(json.dumps(response))
    for entry in out.values():
        verification = entry["verification"]
        proof = verification["inclusionProof"]
        # Rekor v1 signs the SET and the checkpoint afresh for every answer (ECDSA is
        # randomized): keep origin, size and root of the checkpoint and drop the SET; callers
        # verify both signatures separately.
        proof["checkpoint"] = proof["checkpoint"].split("\n")[:3]
        del verification["signedEntryTimestamp"]
    return out


async def test_proxy_pass_through_is_transparent(world: World) -> None:
    """Contract: in pass mode the proxy answers exactly what the real Rekor answers."""
    assert world.proxy.mode == "pass"
    async with aiohttp.ClientSession() as http:
        for path in ("/api/v1/log/publicKey", "/api/v1/log/entries?logIndex=0",
                     "/api/v1/log/entries/" + "0" * 64):
            async with http.get(world.direct_rekor_url + path) as direct:
                direct_body, direct_status = await direct.read(), direct.status
            async with http.get(world.proxy.url + path) as proxied:
                assert proxied.status == direct_status
                proxied_body = await proxied.read()
            if path.endswith("publicKey") or direct_status != 200:
                assert proxied_body == direct_body
            else:  # Rekor signs each checkpoint afresh (ECDSA is randomized): compare the rest
                assert _unsigned(json.loads(proxied_body)) == _unsigned(json.loads(direct_body))
    # a real entry created through the proxy verifies, and the real server sees the same
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(uuid.uuid4().bytes).digest()
    sig = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    async with (
        RekorClient(world.proxy.url, timeout_s=20) as via_proxy,
        RekorClient(world.direct_rekor_url, timeout_s=20) as direct_client,
    ):
        created = await via_proxy.create_hashedrekord(digest.hex(), sig, pem)
        verify_receipt(created.response, world.log_key,
                       expected=ExpectedEntry(digest.hex(), sig, pem))
        fetched_direct = await direct_client.get_entry_by_uuid(created.uuid)
        fetched_proxy = await via_proxy.get_entry_by_uuid(created.uuid)
        assert _unsigned(fetched_direct.response) == _unsigned(fetched_proxy.response)
        verify_receipt(fetched_proxy.response, world.log_key,
                       expected=ExpectedEntry(digest.hex(), sig, pem))
        for field in ("body", "integratedTime", "logID", "logIndex"):
            assert created.entry[field] == fetched_direct.entry[field]
    # the tamper modes change exactly what they claim to
    world.proxy.mode = "flip_set"
    async with RekorClient(world.proxy.url, timeout_s=20) as via_proxy:
        tampered = await via_proxy.get_entry_by_uuid(created.uuid)
    with pytest.raises(ReceiptVerificationError) as refused:
        verify_receipt(tampered.response, world.log_key)
    assert refused.value.check == "set"
    assert _unsigned(tampered.response) == _unsigned(fetched_direct.response)
    assert tampered.entry["body"] == fetched_direct.entry["body"]


# --- Rekor down for a while ----------------------------------------------------------------


#: the process that is the log's write API, per log API: (stack service, process name)
_LOG_SERVERS = {"v1": ("rekor", "rekor-server"), "v2": ("rekor_v2", "rekor-v2-server")}


def _rekor_server(stack: Any, api: str = "v1") -> Any:
    service, name = _LOG_SERVERS[api]
    procs = [p for p in stack.require(service).processes() if p.name == name]
    assert len(procs) == 1
    return procs[0]


@pytest.mark.parametrize("rekor_api", ["v1", "v2"])
@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_rekor_outage_pauses_anchoring_then_backlog_drains(
    world: World, stack: Any
) -> None:
    port = free_port()
    s = world.with_(rekor_server_url=world.direct_rekor_url, anchor_batch_max=50,
                    anchor_batch_ms=300, metrics_port=port)
    rekor_proc = _rekor_server(stack, world.api)
    health_url = f"http://127.0.0.1:{port}/health"
    async with (
        AnchoredReader(world) as reader,
        running(run_signer, s.model_copy(update={"metrics_port": 0}), "signer"),
        running(run_anchorer, s, "anchorer") as metrics,
        aiohttp.ClientSession() as http,
    ):
        first = await append(world, 20, tag="pre-outage")
        await reader.until(await _wait_ids(world, first), limit_s=120)
        rekor_proc.stop()
        try:
            during = await append(world, 200, tag="outage")

            async def signed() -> bool:
                return await count(world, "SELECT count(*) FROM ledger.entries") >= 220

            await wait_for(signed, within=120, what="entries signed while Rekor is down")

            async def reported_down() -> bool:
                return (metric(metrics, "ledger_dependency_up", {"dependency": "rekor"}) == 0
                        and metric(metrics, "ledger_stage_paused", {"stage": "anchorer"}) == 1)

            await wait_for(reported_down, within=120, what="rekor reported down")
            async with http.get(health_url) as resp:
                body = await resp.json()
                assert resp.status == 503  # paused: the stage cannot do its job
                assert body["rekor"] is False and body["status"] == "unhealthy"
                assert body["paused"] is True and body["database"] == "ok"
            during_ids = await entry_ids(world, during)
            assert await count(
                world, "SELECT count(*) FROM ledger.entries WHERE id = ANY($1::uuid[])"
                " AND anchored_at IS NOT NULL", list(during_ids)) == 0
            assert metric(metrics, "ledger_dependency_failures_total",
                          {"stage": "anchorer", "dependency": "rekor"}) >= 1
        finally:
            rekor_proc.start()

        async def rekor_back() -> bool:
            try:
                await log_size(world)
            except Exception:
                return False
            return True

        await wait_for(rekor_back, within=60, what="rekor-server restarted")
        await reader.until(during_ids, limit_s=200)
        last: list[Any] = []

        async def healthy_again() -> bool:
            async with http.get(health_url) as resp:
                last[:] = [resp.status, await resp.json()]
            return bool(last[0] == 200 and last[1]["rekor"] is True)

        # (its answer is cached for health_cache_s, and the loop resumes on its next batch)
        await wait_for(healthy_again, within=30,
                       what="the anchorer's health back to 200, rekor true")
    all_ids = await entry_ids(world, first + during)
    await check_batches(world, all_ids)
    keyring, seen = sigstore_keyring(world.log_key), set[str]()
    for i in all_ids:
        assert len(set(reader.events[i])) == 1, f"different events for {i}"
    for event in reader.parsed(all_ids):
        check_event(world, event, keyring, seen)


async def _wait_ids(world: World, request_ids: list[str]) -> set[uuid.UUID]:
    async def stored() -> bool:
        return len(await entry_ids(world, request_ids)) == len(request_ids)

    await wait_for(stored, within=120, what=f"{len(request_ids)} entries stored")
    return await entry_ids(world, request_ids)


# --- kill -9 between Rekor's 201 and the database commit ------------------------------------


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "REKOR_"))}
    env.update(settings.environment())
    env["PYTHONPATH"] = str(REPO)
    return env


async def _spawn(
    settings: Settings, log_path: Path, *command: str
) -> asyncio.subprocess.Process:
    """``command`` (default: ``ledger anchorer``) with ``settings`` in its environment."""
    log = log_path.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", *(command or ("ledger.cli", "anchorer")), cwd=str(REPO),
            env=_env(settings), stdout=log, stderr=asyncio.subprocess.STDOUT,
        )
    finally:
        log.close()


@pytest.mark.parametrize("rekor_api", ["v1", "v2"])
@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_crash_after_rekor_accepted_completes_through_409(world: World) -> None:
    s = world.with_(rekor_server_url=world.direct_rekor_url, anchor_batch_max=8,
                    anchor_batch_ms=2000, sweeper_interval_s=1.0, sweeper_age_s=1.0)
    log1, log2 = world.run_dir / "anchorer-1.log", world.run_dir / "anchorer-2.log"
    async with AnchoredReader(world) as reader, running(run_signer, s, "signer"):
        request_ids = await append(world, 8, tag="crash")
        ids = await _wait_ids(world, request_ids)
        before = await log_size(world)

        # The first process must meet the batch on the stream path: its sweeper would
        # otherwise find these entries "never batched" (older than 1 s) and take them.
        first = s.model_copy(update={"sweeper_age_s": 600.0})
        crashing = await _spawn(first, log1, "tests.support.crash_after_rekor")
        code = await asyncio.wait_for(crashing.wait(), 120)
        assert code == 137, log1.read_text()[-3000:]
        assert CRASH_MESSAGE in log1.read_text()
        # Rekor has the entry; the database still says pending, with the stored signature.
        assert await log_size(world) == before + 1
        pending = await world.db.fetch(
            "SELECT id, anchor_sig FROM ledger.batches WHERE state = 'pending'")
        assert len(pending) == 1 and pending[0]["anchor_sig"]
        assert await count(world, "SELECT count(*) FROM ledger.entries"
                           " WHERE anchored_at IS NOT NULL") == 0

        restarted = await _spawn(s, log2)
        try:
            await reader.until(ids, limit_s=120)
        finally:
            restarted.terminate()
            assert await asyncio.wait_for(restarted.wait(), 60) == 0, log2.read_text()[-3000:]
    shape = await check_batches(world, ids)
    # No second Rekor entry: the restart re-sent the stored signature and got 409.
    batches = await count(world, "SELECT count(*) FROM ledger.batches")
    assert batches == shape["batches"]
    assert await log_size(world) == before + batches
    anchored_batch = await world.db.fetchval(
        "SELECT id FROM ledger.batches WHERE id = $1 AND state = 'anchored'", pending[0]["id"])
    assert anchored_batch == pending[0]["id"]
    logs = [json.loads(line) for line in log2.read_text().splitlines() if line.startswith("{")]
    assert any(r["msg"].startswith("Rekor already holds this batch (409)") for r in logs)
    logged = [i for r in logs if r["msg"] == "batch anchored" for i in r["entry_ids"]]
    assert sorted(logged) == sorted(str(i) for i in ids)
    keyring, seen = sigstore_keyring(world.log_key), set[str]()
    for event in reader.parsed(ids):
        check_event(world, event, keyring, seen)


# --- the sweeper heals a lost ledger.signed event ------------------------------------------


@pytest.mark.timeout(300)
async def test_sweeper_batches_entries_whose_event_was_lost(world: World) -> None:
    s = world.with_(anchor_batch_max=100, anchor_batch_ms=200)
    async with running(run_signer, s, "signer"):
        ids = await _wait_ids(world, await append(world, 30, tag="orphan"))
    # The anchorer listens on a topic the events never reach: only the sweeper can help.
    lost = s.model_copy(update={"topic_signed": s.topic_signed + ".dlq", "sweeper_interval_s": 1.0,
                                "sweeper_age_s": 0.5})
    async with AnchoredReader(world) as reader, running(run_anchorer, lost, "anchorer") as m:
        await reader.until(ids, limit_s=120)
        assert metric(m, "ledger_sweeper_redriven_total", {"kind": "entry"}) >= 30
    await check_batches(world, ids)
    keyring, seen = sigstore_keyring(world.log_key), set[str]()
    for event in reader.parsed(ids):
        verify_event(event, world.log_key, keyring, seen)


# --- the log only grows --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _real_log(world: World) -> AsyncIterator[tuple[TransparencyLog, Callable[[], Any]]]:
    """The world's log as the anchorer sees it, and a way to add one entry to it."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    client: Any
    async with contextlib.AsyncExitStack() as clients:
        if world.api == "v1":
            client = await clients.enter_async_context(
                RekorClient(world.direct_rekor_url, timeout_s=20))
            keys = LogKeySource(configured=world.settings.rekor_public_key,
                                rekor_url=world.direct_rekor_url, pins=Repository(world.db),
                                fetcher=client)
            the_log: TransparencyLog = RekorV1Log(rekor=client, keys=keys)
        else:
            client = await clients.enter_async_context(
                RekorV2Client(world.direct_rekor_url, world.tiles_url, timeout_s=20))
            tsa = await clients.enter_async_context(
                TsaClient(world.settings.tsa_url, timeout_s=20))
            the_log = RekorV2Log(rekor=client, tsa=tsa, trust=world.trust)

        async def add_entry() -> None:
            digest = hashlib.sha256(uuid.uuid4().bytes).digest()
            signature = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
            await client.create_hashedrekord(digest.hex(), signature, pem)

        yield the_log, add_entry


@pytest.mark.parametrize("rekor_api", ["v1", "v2"])
async def test_consistency_monitor_checks_the_real_log(world: World) -> None:
    metrics = Metrics()
    store = Repository(world.db)
    async with _real_log(world) as (the_log, add_entry):
        monitor = ConsistencyMonitor(store=store, log=the_log, metrics=metrics)
        first = await monitor.check()
        assert first is not None and first.ok and first.old_size is None

        await add_entry()

        async def grown() -> bool:
            return await log_size(world) > first.new_size

        await wait_for(grown, within=30, what="the log to grow")
        second = await monitor.check()
        assert second is not None and second.ok
        assert second.old_size == first.new_size and second.new_size > first.new_size
        assert await count(world, "SELECT count(*) FROM ledger.checkpoints") == 2
        assert metric(metrics, "ledger_receipt_verification_failures_total",
                      {"check": "consistency"}) == 0

        # A stored checkpoint that the log does not extend (a forked view) is reported.
        await world.db.execute(
            "UPDATE ledger.checkpoints SET root_hash = $1 WHERE tree_size = $2",
            "00" * 32, second.new_size)
        await add_entry()

        async def grown_again() -> bool:
            return await log_size(world) > second.new_size

        await wait_for(grown_again, within=30, what="the log to grow again")
        third = await monitor.check()
        assert third is not None and not third.ok
        assert metric(metrics, "ledger_receipt_verification_failures_total",
                      {"check": "consistency"}) == 1


# --- trust on first use --------------------------------------------------------------------


class _NoFetch:
    async def get_public_key(self, tree_id: str | None = None) -> str:
        raise AssertionError("a pinned key must not be fetched again")


async def test_unconfigured_log_key_is_pinned_once_with_a_loud_warning(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    store = Repository(world.db)
    async with RekorClient(world.direct_rekor_url, timeout_s=20) as rekor:
        with caplog.at_level("WARNING", logger="ledger.anchorer.trust"):
            key = await LogKeySource(configured="", rekor_url=world.direct_rekor_url,
                                     pins=store, fetcher=rekor).get()
    assert key.der == world.log_key.der
    warnings = [r for r in caplog.records if "NO REKOR PUBLIC KEY CONFIGURED" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    row = await world.db.fetchrow("SELECT public_key, log_id FROM ledger.rekor_pins"
                                  " WHERE rekor_url = $1", world.direct_rekor_url)
    assert row is not None and row["log_id"] == world.log_key.log_id
    # Another process (or a restart) uses the pin and never asks Rekor again.
    again = await LogKeySource(configured="", rekor_url=world.direct_rekor_url, pins=store,
                               fetcher=_NoFetch()).get()
    assert again.der == world.log_key.der
    # A configured key wins over the pin (and is what the stack passes).
    configured = await LogKeySource(configured=world.settings.rekor_public_key,
                                    rekor_url="http://127.0.0.1:9", pins=store,
                                    fetcher=_NoFetch()).get()
    assert configured.der == world.log_key.der
