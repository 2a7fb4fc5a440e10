"""Scale-out with failures: two signers and two anchorers as real processes, one of each
killed with ``kill -9`` mid-stream, replaced, and nothing lost or duplicated.

One test, on the real stack (Kafka, PostgreSQL, OpenBao, Rekor v1), with a private database
and private 4-partition topics and consumer groups:

1. start ``ledger signer`` twice and ``ledger anchorer`` twice, and wait until each
   consumer group is stable with both processes holding partitions;
2. produce phase A (most of the requests, a few identical in-stream duplicates, poison
   messages); once about a third of all entries are stored, ``kill -9`` the process group of
   one signer, then of the anchorer seen holding a claimed, not yet anchored batch; start a
   replacement for each, and wait until the groups are stable again with the new members;
3. produce phase B (the rest, same-content duplicates of earlier request ids, conflicting
   duplicates, more poison) so that the replacements have work of their own;
4. wait (bounded polls on conditions, never bare sleeps) until every request is signed and
   anchored, the ``ledger.anchored`` events are out, and both groups committed to the ends
   of their topics; stop the survivors with SIGTERM (exit code 0).

Then: one row per distinct request id, duplicates added nothing, poison and conflicts are in
the DLQ with their reasons, every entry is in exactly one anchored batch with leaf indexes
0..size-1, Rekor grew by exactly the number of batches, every ``ledger.anchored`` event of an
entry is byte-identical (the whole topic is read), a sample verifies offline (entry signature,
inclusion, manifest signature, Rekor receipt, sigstore-python), and each surviving and each
replacement process did real work (its log names rows it stored / batches it anchored).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from shared.db import Database, migrate
from shared.kafka import Producer, make_producer
from shared.kafka_admin import committed_offsets
from shared.kafka_tls import client_options
from shared.messages import AnchoredEntry, AppendRequest
from shared.settings import Settings
from shared.statement import entry_id_for
from shared.verify import LogKey, load_log_key
from tests.integration.test_anchorer import (
    _env,
    _read_key,
    rekor_tree_size,
    sigstore_keyring,
    verify_event,
)
from tests.support.lanes import lane_topics
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4
PHASE_A = 1300  # produced before the kill
PHASE_B = 700  # produced once the replacements hold partitions
TOTAL = PHASE_A + PHASE_B
SUBJECTS = 13  # keys: spread over all partitions


# --- the world of this test ----------------------------------------------------------------


@dataclass
class Lane:
    settings: Settings  # private database, topics and groups; Rekor direct
    db: Database
    producer: Producer
    log_key: LogKey
    run_dir: Path
    prefix: str

    @property
    def append_dlq(self) -> str:
        return self.settings.topic_append + ".dlq"

    @property
    def signed_dlq(self) -> str:
        return self.settings.topic_signed + ".dlq"

    def rid(self, i: int) -> str:
        return f"{self.prefix}-{i}"


@pytest.fixture
async def lane(stack: Any, settings: Settings, tmp_path: Path) -> AsyncIterator[Lane]:
    suffix = uuid.uuid4().hex[:10]
    dsn = stack.require("postgres").create_database(f"scale_{suffix}")
    topics = {
        "topic_append": f"s{suffix}.append",
        "topic_signed": f"s{suffix}.signed",
        "topic_anchored": f"s{suffix}.anchored",
    }
    s = settings.model_copy(
        update={
            "database_dsn": dsn,
            **topics,
            "signer_group": f"signer-{suffix}",
            "anchorer_group": f"anchorer-{suffix}",
            "append_wait_ms": 0,
            # small signer polls (4 x 50 records): the stored count moves in small steps, so
            # the kill at a third lands while phase A is still being signed
            "signer_batch_max": 50,
            "anchor_batch_max": 200,
            "anchor_batch_ms": 300,
            # short: a batch left pending by the killed anchorer is re-driven within seconds
            "sweeper_interval_s": 1.0,
            "sweeper_age_s": 5.0,
            "shutdown_grace_s": 10.0,
            "metrics_port": 0,
            "log_level": "INFO",
        }
    )
    await lane_topics(s, PARTITIONS)
    log_key = load_log_key(_read_key(s.rekor_public_key))
    db = await Database.connect(s)
    await migrate(db)
    producer = await make_producer(s, client_id=f"test-scale-{suffix}")
    try:
        yield Lane(settings=s, db=db, producer=producer, log_key=log_key, run_dir=tmp_path,
                   prefix=f"so{suffix}")
    finally:
        await producer.close()
        await db.close()


# --- processes -----------------------------------------------------------------------------


@dataclass
class Worker:
    role: str  # "signer" | "anchorer"
    name: str
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


async def spawn(lane: Lane, role: str, name: str) -> Worker:
    s = lane.settings
    if role == "signer":
        # "entry stored" (with its request id and outcome) is logged at DEBUG
        s = s.model_copy(update={"log_level": "DEBUG"})
    log_path = lane.run_dir / f"{name}.log"
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ledger.cli", role, cwd=str(REPO), env=_env(s),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole
        )
    return Worker(role=role, name=name, proc=proc, log=log_path)


async def kill_9(worker: Worker) -> None:
    os.killpg(worker.pid, signal.SIGKILL)
    code = await asyncio.wait_for(worker.proc.wait(), 30)
    assert code == -signal.SIGKILL, f"{worker.name} exited {code} before the kill"


async def stop(worker: Worker) -> int:
    """SIGTERM (graceful drain); SIGKILL only if it does not exit in time."""
    if worker.proc.returncode is not None:
        return worker.proc.returncode
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGTERM)
    try:
        return await asyncio.wait_for(worker.proc.wait(), 60)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        return await worker.proc.wait()


async def group_members(lane: Lane, group: str) -> tuple[str, set[int]]:
    """The group's state and the pids of the members that hold an assignment."""
    admin = AIOKafkaAdminClient(**client_options(lane.settings))
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    except KafkaError:  # e.g. no coordinator yet for a group nobody has joined
        return "", set()
    finally:
        await admin.close()
    state, pids = "", set()
    for response in responses:
        for g in response.groups:  # (error_code, group, state, protocol_type, protocol, members)
            state = g[2]
            for member in g[5]:  # (member_id, client_id, client_host, metadata, assignment)
                client_id, assignment = member[1], member[4]
                if assignment:
                    pids.add(int(client_id.rsplit("-", 1)[1]))
    return state, pids


async def wait_stable(lane: Lane, group: str, workers: list[Worker]) -> None:
    want = {w.pid for w in workers}

    async def stable() -> bool:
        for w in workers:
            assert w.proc.returncode is None, f"{w.name} died:\n{w.tail()}"
        state, pids = await group_members(lane, group)
        return state == "Stable" and pids == want

    await wait_for(stable, within=90, what=f"{group} stable with pids {sorted(want)}",
                   every=0.5)


# --- producing -----------------------------------------------------------------------------


def subject_of(i: int) -> str:
    return f"acct-{i % SUBJECTS}"


def request(lane: Lane, i: int, *, submitted_at: datetime, payload: str = "") -> AppendRequest:
    return AppendRequest(
        request_id=lane.rid(i),
        subject=subject_of(i),
        payload_sha256=hashlib.sha256((payload or f"payload/{i}").encode()).hexdigest(),
        meta={"n": i, "source": "scale-out"},
        submitted_at=submitted_at,
    )


def poison(lane: Lane, tag: str) -> list[tuple[bytes, str]]:
    base = json.loads(request(lane, 10**6, submitted_at=datetime.now(UTC)).to_bytes())
    return [
        (f"not json at all ({tag})".encode(), "not JSON"),
        (json.dumps({**base, "request_id": f"{lane.prefix}-p{tag}v", "version": 2}).encode(),
         "unsupported version"),
        (json.dumps({k: v for k, v in base.items() if k != "subject"}
                    | {"request_id": f"{lane.prefix}-p{tag}s"}).encode(), "invalid fields"),
    ]


@dataclass
class Produced:
    """Where every produced record went: (partition, offset) → request id / DLQ reason."""

    valid: dict[tuple[int, int], str] = field(default_factory=dict)
    refused: dict[tuple[int, int], str] = field(default_factory=dict)  # → expected reason


async def produce(lane: Lane, records: list[tuple[str, bytes, str | None, str]],
                  produced: Produced) -> None:
    """Send ``(key, value, rid or None, reason)`` in chunks; every ack awaited."""
    topic = lane.settings.topic_append
    for start in range(0, len(records), 500):
        chunk = records[start : start + 500]
        deliveries = await lane.producer.send_many((topic, key, value, None)
                                                   for key, value, _, _ in chunk)
        for (_, _, rid, reason), d in zip(chunk, deliveries, strict=True):
            if rid is None:
                produced.refused[(d.partition, d.offset)] = reason
            else:
                produced.valid[(d.partition, d.offset)] = rid


# --- reading -------------------------------------------------------------------------------


async def count(lane: Lane, sql: str, *args: Any) -> int:
    return int(await lane.db.fetchval(sql, *args))


async def end_offsets(lane: Lane, topic: str) -> dict[int, int]:
    c = AIOKafkaConsumer(**client_options(lane.settings),
                         enable_auto_commit=False, group_id=None)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await c.end_offsets(tps)
    finally:
        await c.stop()
    return {tp.partition: off for tp, off in ends.items()}


async def read_all(lane: Lane, topic: str, *, limit_s: float = 60) -> list[Any]:
    """Every record of ``topic`` from the beginning up to its current end (no group)."""
    # auto_offset_reset="earliest" rather than seek_to_beginning(): the reset that assign()
    # starts (to the default, latest) can land after the seek and skip everything
    c = AIOKafkaConsumer(**client_options(lane.settings),
                         enable_auto_commit=False, group_id=None, auto_offset_reset="earliest",
                         max_partition_fetch_bytes=8 * 1024 * 1024)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        c.assign(tps)
        ends = await c.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + limit_s
        while True:
            positions = {tp: await c.position(tp) for tp in tps}
            if all(positions[tp] >= ends[tp] for tp in tps):
                return records
            if time.monotonic() > deadline:
                pytest.fail(f"{topic}: read {len(records)} records, not at the end "
                            f"after {limit_s}s ({positions} < {ends})")
            batch = await c.getmany(*tps, timeout_ms=500, max_records=5000)
            for recs in batch.values():
                records.extend(r for r in recs if r.offset < ends[TopicPartition(r.topic, r.partition)])
    finally:
        await c.stop()


def headers_of(record: Any) -> dict[str, bytes]:
    return {k: bytes(v) for k, v in (record.headers or ())}


async def caught_up(lane: Lane, group: str, topic: str) -> bool:
    ends = await end_offsets(lane, topic)
    committed = await committed_offsets(lane.settings, group)
    return all(committed.get(p, 0) >= end for p, end in ends.items())


def stored_new(worker: Worker) -> list[str]:
    """Request ids this signer inserted (outcome ``new``), from its DEBUG log."""
    return [r["request_id"] for r in worker.log_records()
            if r.get("msg") == "entry stored" and r.get("outcome") == "new"]


def anchored_batches(worker: Worker) -> list[str]:
    """Batches this anchorer moved to ``anchored`` (it alone logs ``batch anchored``)."""
    return [r["batch_id"] for r in worker.log_records() if r.get("msg") == "batch anchored"]


def claimed_batches(worker: Worker) -> set[uuid.UUID]:
    return {uuid.UUID(r["batch_id"]) for r in worker.log_records()
            if r.get("msg") == "batch claimed and persisted (pending)"}


# --- the test --------------------------------------------------------------------------------


@pytest.mark.timeout(600)
async def test_two_of_each_stage_with_a_kill_9_each_sign_and_anchor_everything_once(
    lane: Lane,
) -> None:
    t0 = time.monotonic()
    s = lane.settings
    rekor_before = await rekor_tree_size(s.rekor_server_url)
    produced = Produced()
    workers: list[Worker] = []
    try:
        # --- 1. two of each, both holding partitions ----------------------------------------
        signers = [await spawn(lane, "signer", "signer-1"), await spawn(lane, "signer", "signer-2")]
        anchorers = [await spawn(lane, "anchorer", "anchorer-1"),
                     await spawn(lane, "anchorer", "anchorer-2")]
        workers += signers + anchorers
        await wait_stable(lane, s.signer_group, signers)
        await wait_stable(lane, s.anchorer_group, anchorers)
        t_started = time.monotonic()

        # --- 2. phase A, then kill -9 one of each at about a third ----------------------------
        now = datetime.now(UTC)
        phase_a: list[tuple[str, bytes, str | None, str]] = []
        poison_a = poison(lane, "a")
        for i in range(PHASE_A):
            raw = request(lane, i, submitted_at=now).to_bytes()
            phase_a.append((subject_of(i), raw, lane.rid(i), ""))
            if i % 50 == 0:  # an identical resend right behind it (same partition)
                phase_a.append((subject_of(i), raw, lane.rid(i), ""))
            if i % 400 == 200:
                value, reason = poison_a.pop()
                phase_a.append((f"poison-{i}", value, None, reason))
        assert not poison_a
        await produce(lane, phase_a, produced)

        seen_stored: list[int] = []

        async def a_third_stored() -> bool:
            seen_stored.append(await count(lane, "SELECT count(*) FROM ledger.entries"))
            return seen_stored[-1] >= TOTAL // 3

        await wait_for(a_third_stored, within=180, what=f"{TOTAL // 3} entries stored",
                       every=0.05)
        victim_s = signers[0]
        await kill_9(victim_s)
        at_kill = seen_stored[-1]  # the count the kill was decided on
        assert at_kill < PHASE_A, "the kill must land while phase A is being signed"

        # the anchorer dies while it holds a claimed, not yet anchored batch (the kill that
        # hurts most: only another process's sweeper can finish that batch)
        held: dict[str, Any] = {}

        async def an_anchorer_holds_a_pending_batch() -> bool:
            pending = {r["id"] for r in await lane.db.fetch(
                "SELECT id FROM ledger.batches WHERE state = 'pending'")}
            for a in anchorers:
                if claimed_batches(a) & pending:
                    held["victim"] = a
                    return True
            return False

        await wait_for(an_anchorer_holds_a_pending_batch, within=120,
                       what="an anchorer holding a pending batch", every=0.05)
        victim_a: Worker = held["victim"]
        await kill_9(victim_a)
        anchored_at_kill = await count(
            lane, "SELECT count(*) FROM ledger.entries WHERE anchored_at IS NOT NULL")
        # (it may have completed the batch between the look and the kill)
        orphaned = claimed_batches(victim_a) & {r["id"] for r in await lane.db.fetch(
            "SELECT id FROM ledger.batches WHERE state = 'pending'")}
        # nothing committed past unsigned work
        committed = await committed_offsets(s, s.signer_group)
        stored = {r["request_id"] for r in await lane.db.fetch(
            "SELECT request_id FROM ledger.entries")}
        for (p, off), rid in produced.valid.items():
            if off < committed.get(p, 0):
                assert rid in stored, f"{p}/{off} committed but {rid} not stored"

        survivor_s = signers[1]
        survivor_a = anchorers[1] if victim_a is anchorers[0] else anchorers[0]
        new_s = await spawn(lane, "signer", "signer-3")
        new_a = await spawn(lane, "anchorer", "anchorer-3")
        workers += [new_s, new_a]
        await wait_stable(lane, s.signer_group, [survivor_s, new_s])
        await wait_stable(lane, s.anchorer_group, [survivor_a, new_a])
        t_rejoined = time.monotonic()

        # --- 3. phase B: the rest, duplicates of earlier ids, conflicts, poison ----------------
        later = now + timedelta(seconds=1)
        phase_b: list[tuple[str, bytes, str | None, str]] = []
        for i in range(PHASE_A, TOTAL):
            phase_b.append((subject_of(i), request(lane, i, submitted_at=later).to_bytes(),
                            lane.rid(i), ""))
        resent = list(range(1, PHASE_A, 13))  # same content, later submission time
        for i in resent:
            phase_b.append((subject_of(i), request(lane, i, submitted_at=later).to_bytes(),
                            lane.rid(i), ""))
        conflicting = [7, 307, 607, 907, 1207]  # same id and key, other content: after it
        for i in conflicting:
            raw = request(lane, i, submitted_at=later, payload=f"changed/{i}").to_bytes()
            phase_b.append((subject_of(i), raw, None, "idempotency conflict"))
        for n, (value, reason) in enumerate(poison(lane, "b")):
            phase_b.append((f"poison-b{n}", value, None, reason))
        random.Random(7).shuffle(phase_b)  # order across keys; conflicts still follow originals
        await produce(lane, phase_b, produced)

        # --- 4. everything signed, anchored, published and committed --------------------------
        live = [survivor_s, new_s, survivor_a, new_a]

        async def all_stored() -> bool:
            for w in live:
                assert w.proc.returncode is None, f"{w.name} died:\n{w.tail()}"
            return await count(lane, "SELECT count(*) FROM ledger.entries") >= TOTAL

        await wait_for(all_stored, within=240, what=f"{TOTAL} entries stored")
        t_signed = time.monotonic()

        async def all_anchored() -> bool:
            for w in live:
                assert w.proc.returncode is None, f"{w.name} died:\n{w.tail()}"
            return await count(lane, "SELECT count(*) FROM ledger.entries"
                                     " WHERE anchored_at IS NOT NULL") >= TOTAL

        await wait_for(all_anchored, within=300, what=f"{TOTAL} entries anchored", every=0.5)
        t_anchored = time.monotonic()
        await wait_for(lambda: caught_up(lane, s.signer_group, s.topic_append), within=60,
                       what="signer group committed to the end of the append topic", every=0.5)
        await wait_for(lambda: caught_up(lane, s.anchorer_group, s.topic_signed), within=60,
                       what="anchorer group committed to the end of the signed topic",
                       every=0.5)
        all_ids = {entry_id_for(lane.rid(i)) for i in range(TOTAL)}

        async def all_published() -> bool:
            seen = {AnchoredEntry.model_validate_json(r.value).entry.entry_id
                    for r in await read_all(lane, s.topic_anchored)}
            return all_ids <= seen

        await wait_for(all_published, within=60, what="ledger.anchored for every entry",
                       every=1.0)
        for w in live:
            code = await stop(w)
            assert code == 0, f"{w.name}: graceful SIGTERM exit, got {code}:\n{w.tail()}"
    finally:
        for w in workers:
            await stop(w)
    t_done = time.monotonic()

    # --- rows: one per distinct request id; duplicates added nothing -------------------------
    rows = await lane.db.fetch(
        "SELECT id, request_id, payload_hash, batch_id, leaf_index, rekor_log_id, rekor_index,"
        " anchored_at FROM ledger.entries")
    assert len(rows) == TOTAL
    by_rid = {r["request_id"]: r for r in rows}
    assert set(by_rid) == {lane.rid(i) for i in range(TOTAL)}
    for i in range(TOTAL):
        row = by_rid[lane.rid(i)]
        assert row["id"] == entry_id_for(lane.rid(i))
        assert row["payload_hash"] == hashlib.sha256(f"payload/{i}".encode()).hexdigest(), (
            f"{lane.rid(i)}: the first content stays (conflicts never overwrite)")
    assert set(produced.valid.values()) == set(by_rid)

    # --- DLQs: every poison and conflict, with its reason; nothing else ------------------------
    dlq = await read_all(lane, lane.append_dlq)
    seen_sources: dict[tuple[int, int], str] = {}
    for rec in dlq:
        h = headers_of(rec)
        assert h["dlq.stage"] == b"signer"
        assert h["dlq.source.topic"] == s.topic_append.encode()
        source = (int(h["dlq.source.partition"]), int(h["dlq.source.offset"]))
        assert source in produced.refused, f"a good message was dead-lettered: {source} {h}"
        assert h["dlq.reason"].decode() == produced.refused[source], (source, h)
        seen_sources[source] = h["dlq.reason"].decode()
    assert seen_sources == produced.refused
    reasons = Counter(produced.refused.values())
    assert reasons == {"not JSON": 2, "unsupported version": 2, "invalid fields": 2,
                       "idempotency conflict": 5}
    assert sum((await end_offsets(lane, lane.signed_dlq)).values()) == 0, (
        "the anchorer dead-lettered something")

    # --- batches: every entry in exactly one anchored batch, leaves 0..size-1 ------------------
    batches = {b["id"]: b for b in await lane.db.fetch(
        "SELECT id, state, size, rekor_uuid, rekor_log_index FROM ledger.batches")}
    assert all(b["state"] == "anchored" for b in batches.values()), "a batch left pending"
    leaves: dict[uuid.UUID, list[int]] = defaultdict(list)
    for r in rows:
        assert r["batch_id"] is not None and r["anchored_at"] is not None, r["request_id"]
        leaves[r["batch_id"]].append(r["leaf_index"])
        b = batches[r["batch_id"]]
        assert (r["rekor_log_id"], r["rekor_index"]) == (b["rekor_uuid"], b["rekor_log_index"])
    assert set(leaves) == set(batches), "a batch without members"
    for batch_id, indexes in leaves.items():
        assert sorted(indexes) == list(range(batches[batch_id]["size"])), batch_id
    rekor_uuids = [b["rekor_uuid"] for b in batches.values()]
    assert len(set(rekor_uuids)) == len(rekor_uuids), "two batches share a Rekor entry"
    # no second Rekor entry for any batch (a retried batch got Rekor's 409)
    assert await rekor_tree_size(s.rekor_server_url) - rekor_before == len(batches)

    # --- ledger.anchored: all entries, every event of an entry byte-identical ----------------
    events: dict[uuid.UUID, set[bytes]] = defaultdict(set)
    keys: dict[uuid.UUID, set[bytes | None]] = defaultdict(set)
    anchored_records = await read_all(lane, s.topic_anchored)
    for rec in anchored_records:
        event = AnchoredEntry.model_validate_json(rec.value)
        events[event.entry.entry_id].add(rec.value)
        keys[event.entry.entry_id].add(rec.key)
    assert set(events) == {r["id"] for r in rows}
    differing = [eid for eid, raws in events.items() if len(raws) != 1]
    assert not differing, f"{len(differing)} entries have differing events, e.g. {differing[:3]}"
    parsed = {eid: AnchoredEntry.model_validate_json(next(iter(raws))) for eid, raws in events.items()}
    row_by_id = {r["id"]: r for r in rows}
    for eid, event in parsed.items():
        row = row_by_id[eid]
        assert event.entry.request_id == row["request_id"]
        assert (event.batch.batch_id, event.leaf_index) == (row["batch_id"], row["leaf_index"])
        assert event.receipt.uuid == row["rekor_log_id"]
        assert keys[eid] == {event.entry.subject.encode()}
    # a sample verifies offline: first and last leaf of every batch, plus random others
    sample = {eid for eid, e in parsed.items() if e.leaf_index in (0, e.batch.size - 1)}
    sample |= set(random.Random(11).sample(sorted(parsed), 100))
    keyring, seen = sigstore_keyring(lane.log_key), set[str]()
    for eid in sorted(sample):
        verify_event(parsed[eid], lane.log_key, keyring, seen)
    assert len(seen) == len(batches)

    # --- offsets: both groups at the ends of their topics --------------------------------------
    assert await caught_up(lane, s.signer_group, s.topic_append)
    assert await caught_up(lane, s.anchorer_group, s.topic_signed)

    # --- real scale-out: each surviving and each replacement process did work -----------------
    new_by = {w.name: stored_new(w) for w in (*signers, new_s)}
    for w in (survivor_s, new_s):
        assert new_by[w.name], f"{w.name} stored no row:\n{w.tail()}"
    logged_new = [rid for rids in new_by.values() for rid in rids]
    assert len(logged_new) == len(set(logged_new)), "a row inserted by two signers"
    assert set(logged_new) <= set(by_rid)
    anchored_by = {w.name: anchored_batches(w) for w in (*anchorers, new_a)}
    for w in (survivor_a, new_a):
        assert anchored_by[w.name], f"{w.name} anchored no batch:\n{w.tail()}"
    logged_batches = [b for bs in anchored_by.values() for b in bs]
    assert len(logged_batches) == len(set(logged_batches)), "a batch anchored twice"
    assert {uuid.UUID(b) for b in logged_batches} <= set(batches)

    redriven = {uuid.UUID(r["batch_id"]) for w in (survivor_a, new_a) for r in w.log_records()
                if r.get("msg") == "re-driving pending batch"}
    assert orphaned <= redriven, "the killed anchorer's pending batch was healed by a sweeper"
    conflicts_409 = sum(1 for w in (*anchorers, new_a) for r in w.log_records()
                        if str(r.get("msg", "")).startswith("Rekor already holds this batch"))
    print(
        f"\n[scale-out] {TOTAL} entries (+{len(produced.valid) - TOTAL} duplicates, "
        f"{len(produced.refused)} refused) in {len(batches)} batches, "
        f"{len(anchored_records)} anchored events ({len(anchored_records) - TOTAL} replays)\n"
        f"  kill -9 {victim_s.name} at {at_kill} stored; {victim_a.name} at "
        f"{anchored_at_kill} anchored, leaving {len(orphaned)} pending batch(es)\n"
        f"  rows stored per signer: { {k: len(v) for k, v in new_by.items()} }\n"
        f"  batches anchored per anchorer: { {k: len(v) for k, v in anchored_by.items()} }; "
        f"sweeper re-drove {len(redriven)} batch(es), {conflicts_409} Rekor 409(s)\n"
        f"  timings: groups stable {t_started - t0:.1f}s, rejoined {t_rejoined - t0:.1f}s, "
        f"all signed {t_signed - t0:.1f}s, all anchored {t_anchored - t0:.1f}s, "
        f"stopped {t_done - t0:.1f}s"
    )
