"""The signer on the real local stack: Kafka, PostgreSQL and OpenBao (Vault Transit).

Each test gets its own topics and consumer group (a "lane"), and its own request ids, so the
tests do not see each other's messages; rows share ``ledger.entries`` and are counted by
request id. Requests are produced with a plain aiokafka producer, as any client could.
Waits are bounded polls on conditions (rows present, DLQ records seen), never bare sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import hvac
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from deploy.local.process import free_port
from services.signer import run_signer
from shared.db import Database, migrate
from shared.kafka_admin import committed_offsets
from shared.kafka_tls import client_options, connection_environment
from shared.lifecycle import Lifecycle
from shared.messages import AppendRequest, SignedEntry
from shared.settings import Settings
from shared.statement import content_sha256, entry_id_for, statement_bytes
from shared.telemetry import Metrics
from shared.vault import TransitSigner
from shared.vault_token import VaultToken
from tests.support.lanes import new_prefix, private_lane
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4


# --- helpers -------------------------------------------------------------------------------


@dataclass
class Lane:
    settings: Settings
    prefix: str

    @property
    def append(self) -> str:
        return self.settings.topic_append

    @property
    def signed(self) -> str:
        return self.settings.topic_signed

    @property
    def dlq(self) -> str:
        return self.settings.topic_append + ".dlq"

    def rid(self, n: int | str) -> str:
        return f"{self.prefix}-{n}"

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            **connection_environment(s),
            "LEDGER_SIGNER_KAFKA_SSL_CERTFILE": s.signer_kafka_ssl_certfile,
            "CRDB_DSN": s.database_dsn,
            "VAULT_ADDR": s.vault_addr,
            "VAULT_CACERT": s.vault_cacert,
            "VAULT_TOKEN": s.vault_token.get_secret_value(),
            "LEDGER_SIGNER_VAULT_TOKEN_FILE": s.signer_vault_token_file,
            "VAULT_TRANSIT_KEY": s.vault_transit_key,
            "LEDGER_TOPIC_APPEND": s.topic_append,
            "LEDGER_TOPIC_SIGNED": s.topic_signed,
            "LEDGER_SIGNER_GROUP": s.signer_group,
            "LEDGER_LOG_LEVEL": "INFO",
        }


def request_bytes(
    rid: str, *, subject: str = "orders/42", payload: bytes = b"payload", meta: dict[str, Any] | None = None
) -> bytes:
    return AppendRequest(
        request_id=rid,
        subject=subject,
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        meta=meta or {},
        submitted_at=datetime.now(UTC),
    ).to_bytes()


@pytest.fixture(scope="module")
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = await Database.connect(settings)
    await migrate(database)
    yield database
    await database.close()


@pytest.fixture
async def lane(settings: Settings) -> Lane:
    prefix = new_prefix("t")
    s = await private_lane(settings, prefix, PARTITIONS, shutdown_grace_s=15.0)
    return Lane(settings=s, prefix=prefix)


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(**client_options(settings), acks="all", linger_ms=5)
    await p.start()
    yield p
    await p.stop()


@contextlib.asynccontextmanager
async def signer_running(settings: Settings) -> AsyncIterator[Metrics]:
    lc = Lifecycle(name="signer", grace_s=settings.shutdown_grace_s)
    metrics = Metrics()
    task = asyncio.create_task(run_signer(settings, lifecycle=lc, metrics=metrics, install_signals=False))
    try:
        yield metrics
    finally:
        lc.request_stop("test over")
        await asyncio.wait_for(task, 60)


async def rows_for(db: Database, prefix: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT id, request_id, subject, payload_hash, sig, pubkey, meta::text AS meta, statement,"
        " key_name, key_version, submitted_at, content_sha256 FROM ledger.entries"
        " WHERE request_id LIKE $1",
        prefix + "-%",
    )
    return [dict(r) for r in rows]


async def count_rows(db: Database, prefix: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM ledger.entries WHERE request_id LIKE $1", prefix + "-%"))


async def read_topic(settings: Settings, topic: str, *, until: Callable[[list[Any]], bool], within: float) -> list[Any]:
    """Records of ``topic`` from the beginning (no group) until ``until(records)`` holds."""
    c = AIOKafkaConsumer(topic, **client_options(settings), enable_auto_commit=False,
                         auto_offset_reset="earliest", group_id=None)
    await c.start()
    try:
        records: list[Any] = []
        deadline = time.monotonic() + within
        while not until(records):
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: condition not met after {within}s ({len(records)} records)")
            batch = await c.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
        return records
    finally:
        await c.stop()


def headers_of(record: Any) -> dict[str, bytes]:
    return {k: bytes(v) for k, v in (record.headers or ())}


def verify_row(row: dict[str, Any]) -> None:
    """The stored Ed25519 signature verifies over the stored statement with the stored key."""
    key = serialization.load_pem_public_key(row["pubkey"].encode())
    assert isinstance(key, ed25519.Ed25519PublicKey)
    prefix, version, sig_b64 = row["sig"].split(":")
    assert prefix == "vault" and version == f"v{row['key_version']}"
    key.verify(base64.b64decode(sig_b64), bytes(row["statement"]))  # raises if invalid


# --- the happy path ------------------------------------------------------------------------


async def test_append_from_a_plain_producer_is_signed_stored_and_published(lane, db, producer):
    payload = b"secret payload " + uuid.uuid4().bytes
    rid = lane.rid(1)
    meta = {"source": "erp", "n": 3, "nested": {"ok": True}}
    raw = request_bytes(rid, subject="invoices/7", payload=payload, meta=meta)
    await producer.send_and_wait(lane.append, raw, key=b"invoices/7", headers=[("traceparent", b"00-abc-def-01")])

    async with signer_running(lane.settings) as metrics:
        await wait_for(lambda: count_rows_is(db, lane.prefix, 1), within=60, what="the row")
        events = await read_topic(lane.settings, lane.signed, until=lambda r: len(r) >= 1, within=30)

    [row] = await rows_for(db, lane.prefix)
    request = AppendRequest.model_validate_json(raw)
    assert row["id"] == entry_id_for(rid)
    assert row["subject"] == "invoices/7"
    assert row["payload_hash"] == hashlib.sha256(payload).hexdigest()
    assert bytes(row["statement"]) == statement_bytes(
        request_id=rid, subject="invoices/7", payload_sha256=request.payload_sha256, meta=meta,
        submitted_at=request.submitted_at,
    )
    assert json.loads(row["meta"]) == meta
    assert row["content_sha256"] == content_sha256(subject="invoices/7", payload_sha256=request.payload_sha256, meta=meta)
    assert row["key_name"] == lane.settings.vault_transit_key
    verify_row(row)

    # the payload itself is nowhere: not in the row, not in the signed event
    row_text = repr(row).encode()
    [event] = events
    for blob in (row_text, event.value):
        assert payload not in blob
        assert base64.b64encode(payload) not in blob

    entry = SignedEntry.model_validate_json(event.value)
    assert event.key == b"invoices/7"
    hdrs = headers_of(event)
    assert hdrs["entry_id"] == str(entry_id_for(rid)).encode()
    assert hdrs["traceparent"] == b"00-abc-def-01", "trace context travels on"
    assert entry.signature == row["sig"] and entry.public_key == row["pubkey"]
    assert base64.b64decode(entry.statement) == bytes(row["statement"])
    assert metrics.registry.get_sample_value("ledger_entries_signed_total", {"outcome": "new"}) == 1
    assert metrics.registry.get_sample_value("ledger_vault_batch_size_count") == 1


async def count_rows_is(db: Database, prefix: str, n: int) -> bool:
    return await count_rows(db, prefix) == n


# --- idempotency -----------------------------------------------------------------------------


async def test_resend_gives_one_row_and_a_conflicting_resend_is_dead_lettered(lane, db, producer):
    a, b = lane.rid("a"), lane.rid("b")
    await producer.send_and_wait(lane.append, request_bytes(a, payload=b"A"), key=b"s")
    async with signer_running(lane.settings) as metrics:
        await wait_for(lambda: count_rows_is(db, lane.prefix, 1), within=60, what="first row")
        [first] = await rows_for(db, lane.prefix)

        # same request id, same content (later submission time): the existing entry
        await producer.send_and_wait(lane.append, request_bytes(a, payload=b"A"), key=b"s")
        # same request id, other content: a conflict
        await producer.send_and_wait(lane.append, request_bytes(a, payload=b"A-changed"), key=b"s")
        # duplicates inside one batch, one of them conflicting with the first
        for raw in (request_bytes(b, payload=b"B"), request_bytes(b, payload=b"B"), request_bytes(b, payload=b"B2")):
            await producer.send(lane.append, raw, key=b"s")
        await producer.flush()

        dlq = await read_topic(lane.settings, lane.dlq, until=lambda r: len(r) >= 2, within=60)
        await wait_for(lambda: count_rows_is(db, lane.prefix, 2), within=30, what="second row")
        signed = await read_topic(
            lane.settings, lane.signed,
            until=lambda r: {headers_of(x)["request_id"] for x in r} == {a.encode(), b.encode()} and len(r) >= 3,
            within=30,
        )

    rows = {r["request_id"]: r for r in await rows_for(db, lane.prefix)}
    assert set(rows) == {a, b}
    assert rows[a]["sig"] == first["sig"] and rows[a]["payload_hash"] == hashlib.sha256(b"A").hexdigest()
    assert rows[b]["payload_hash"] == hashlib.sha256(b"B").hexdigest()
    for row in rows.values():
        verify_row(row)

    assert len(dlq) == 2
    for rec in dlq:
        h = headers_of(rec)
        assert h["dlq.reason"] == b"idempotency conflict"
        assert h["dlq.stage"] == b"signer"
        assert h["dlq.source.topic"] == lane.append.encode()
        assert int(h["dlq.source.offset"]) >= 0
    conflicted = {json.loads(r.value)["payload_sha256"] for r in dlq}
    assert conflicted == {hashlib.sha256(b"A-changed").hexdigest(), hashlib.sha256(b"B2").hexdigest()}
    # the resend of a published the existing entry again (downstream de-duplicates by id)
    a_events = [x for x in signed if headers_of(x)["request_id"] == a.encode()]
    assert len(a_events) >= 2
    assert {SignedEntry.model_validate_json(x.value).entry_id for x in a_events} == {entry_id_for(a)}
    assert (metrics.registry.get_sample_value("ledger_entries_signed_total", {"outcome": "existing"}) or 0) >= 1
    assert metrics.registry.get_sample_value(
        "ledger_dlq_messages_total", {"stage": "signer", "reason": "idempotency conflict"}) == 2


# --- poison messages ---------------------------------------------------------------------------


async def test_poison_messages_are_dead_lettered_and_good_ones_behind_them_signed(lane, db, producer):
    good = lane.rid("good")
    base = json.loads(request_bytes(lane.rid("x")))
    poison = [
        (b"this is not json", "not JSON"),
        (json.dumps({**base, "version": 2}).encode(), "unsupported version"),
        (json.dumps({k: v for k, v in base.items() if k != "subject"}).encode(), "invalid fields"),
        (json.dumps({**base, "payload_sha256": "XYZ"}).encode(), "invalid fields"),
        (json.dumps({**base, "meta": {"bad": "nul\u0000byte"}}).encode(), "invalid fields"),
    ]
    # everything on one partition (same key), the good request last
    for raw, _ in poison:
        await producer.send_and_wait(lane.append, raw, key=b"one-key")
    meta = await producer.send_and_wait(lane.append, request_bytes(good), key=b"one-key")

    async with signer_running(lane.settings) as metrics:
        await wait_for(lambda: count_rows_is(db, lane.prefix, 1), within=60, what="the good row")
        dlq = await read_topic(lane.settings, lane.dlq, until=lambda r: len(r) >= len(poison), within=30)
        await wait_for(
            lambda: offset_committed(lane, meta.partition, meta.offset + 1),
            within=30, what="the commit past the good message",
        )

    [row] = await rows_for(db, lane.prefix)
    assert row["request_id"] == good
    verify_row(row)
    by_offset = sorted(dlq, key=lambda r: int(headers_of(r)["dlq.source.offset"]))
    assert [headers_of(r)["dlq.reason"].decode() for r in by_offset] == [reason for _, reason in poison]
    assert [r.value for r in by_offset] == [raw for raw, _ in poison], "the original message, unchanged"
    assert all(r.key == b"one-key" for r in by_offset)
    assert all(headers_of(r)["dlq.attempts"] == b"1" for r in by_offset)
    assert metrics.registry.get_sample_value(
        "ledger_dlq_messages_total", {"stage": "signer", "reason": "invalid fields"}) == 3


async def offset_committed(lane: Lane, partition: int, offset: int) -> bool:
    return (await committed_offsets(lane.settings, lane.settings.signer_group)).get(partition, -1) >= offset


# --- crash and outages ---------------------------------------------------------------------------


async def produce_stream(producer: AIOKafkaProducer, lane: Lane, n: int, *, start: int = 0) -> dict[tuple[int, int], str]:
    """Send ``n`` requests; return (partition, offset) → request id."""
    futures = []
    for i in range(start, start + n):
        rid = lane.rid(i)
        fut = await producer.send(lane.append, request_bytes(rid, subject=f"s/{i % 13}", payload=str(i).encode()),
                                  key=f"s/{i % 13}".encode())
        futures.append((rid, fut))
    where = {}
    for rid, fut in futures:
        meta = await fut
        where[(meta.partition, meta.offset)] = rid
    return where


async def assert_no_commit_past_unsigned_work(lane: Lane, db: Database, where: dict[tuple[int, int], str]) -> dict[int, int]:
    """Every record below the group's committed offset has its row. Returns the offsets."""
    committed = await committed_offsets(lane.settings, lane.settings.signer_group)
    stored = {r["request_id"] for r in await db.fetch(
        "SELECT request_id FROM ledger.entries WHERE request_id LIKE $1", lane.prefix + "-%")}
    for (partition, offset), rid in where.items():
        if offset < committed.get(partition, 0):
            assert rid in stored, f"offset {partition}/{offset} committed but {rid} not stored"
    return committed


def start_signer_process(lane: Lane, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **lane.env(), "PYTHONPATH": str(REPO)}
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", "signer"], cwd=REPO, env=env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_kill_9_mid_stream_then_restart_signs_every_request_exactly_once(lane, db, producer, tmp_path):
    total = 3000
    log_path = tmp_path / "signer.log"
    proc = start_signer_process(lane, log_path)
    try:
        where = await produce_stream(producer, lane, total)
        await wait_for(lambda: more_rows_than(db, lane.prefix, 300), within=120, what="signing to start")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        at_kill = await count_rows(db, lane.prefix)
        assert at_kill < total, "the kill must land mid-stream"
        assert_no_commit = await assert_no_commit_past_unsigned_work(lane, db, where)
        assert sum(assert_no_commit.values()) < total

        proc = start_signer_process(lane, log_path)
        await wait_for(lambda: count_rows_is(db, lane.prefix, total), within=240, what="all rows after restart")
        await wait_for(lambda: all_committed(lane, where), within=60, what="offsets committed to the end")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert proc.returncode == 0, "graceful SIGTERM exit"
    stored = await db.fetch(
        "SELECT request_id, count(*) AS n FROM ledger.entries WHERE request_id LIKE $1 GROUP BY request_id",
        lane.prefix + "-%")
    assert len(stored) == total and all(r["n"] == 1 for r in stored)
    assert {r["request_id"] for r in stored} == set(where.values())
    assert b"payload" not in log_path.read_bytes()
    print(f"\nkill -9 after {at_kill} of {total} rows; all {total} signed once after restart")


async def more_rows_than(db: Database, prefix: str, n: int) -> bool:
    return await count_rows(db, prefix) > n


async def all_committed(lane: Lane, where: dict[tuple[int, int], str]) -> bool:
    ends: dict[int, int] = {}
    for partition, offset in where:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    committed = await committed_offsets(lane.settings, lane.settings.signer_group)
    return all(committed.get(p, -1) >= end for p, end in ends.items())


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_vault_outage_commits_nothing_past_unsigned_work_and_recovers(lane, db, producer, stack):
    openbao = stack.require("openbao")
    procs = openbao.processes()
    assert procs, "openbao runs as a local process"
    total = 1500
    async with signer_running(lane.settings) as metrics:
        where = await produce_stream(producer, lane, 500)
        await wait_for(lambda: more_rows_than(db, lane.prefix, 100), within=120, what="signing to start")
        for p in procs:
            p.signal(signal.SIGSTOP)
        try:
            where |= await produce_stream(producer, lane, total - 500, start=500)
            # the signer notices (a Vault request times out) and pauses
            await wait_for(lambda: paused(metrics), within=90, what="the signer to pause on Vault")
            frozen = await count_rows(db, lane.prefix)
            assert frozen < total
            for _ in range(3):
                await assert_no_commit_past_unsigned_work(lane, db, where)
                await asyncio.sleep(0.5)  # (sampling interval, not synchronisation)
            assert await count_rows(db, lane.prefix) == frozen, "nothing signed while Vault is frozen"
        finally:
            for p in procs:
                p.signal(signal.SIGCONT)
        await wait_for(lambda: count_rows_is(db, lane.prefix, total), within=180, what="all rows after Vault returns")
        await wait_for(lambda: all_committed(lane, where), within=60, what="commits to the end")
        await wait_for(lambda: not_paused(metrics), within=30, what="the signer to resume")
        assert (metrics.registry.get_sample_value(
            "ledger_dependency_failures_total", {"stage": "signer", "dependency": "vault"}) or 0) >= 1
    await assert_no_commit_past_unsigned_work(lane, db, where)


async def paused(metrics: Metrics) -> bool:
    return metrics.registry.get_sample_value("ledger_stage_paused", {"stage": "signer"}) == 1


async def not_paused(metrics: Metrics) -> bool:
    return metrics.registry.get_sample_value("ledger_stage_paused", {"stage": "signer"}) == 0


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_database_outage_commits_nothing_past_unsigned_work_and_recovers(lane, db, producer, stack):
    postgres = stack.require("postgres")
    total = 1500
    async with signer_running(lane.settings) as metrics:
        where = await produce_stream(producer, lane, 500)
        await wait_for(lambda: more_rows_than(db, lane.prefix, 100), within=120, what="signing to start")
        await asyncio.to_thread(postgres.stop)
        try:
            where |= await produce_stream(producer, lane, total - 500, start=500)
            await wait_for(lambda: paused(metrics), within=90, what="the signer to pause on the database")
            # the database is down: check the commits against what was stored before it went
            committed = await committed_offsets(lane.settings, lane.settings.signer_group)
        finally:
            await asyncio.to_thread(postgres.start, lambda _m: None)
        stored = {r["request_id"] for r in await db.fetch(
            "SELECT request_id FROM ledger.entries WHERE request_id LIKE $1", lane.prefix + "-%")}
        for (partition, offset), rid in where.items():
            if offset < committed.get(partition, 0):
                assert rid in stored, f"{partition}/{offset} was committed during the outage but {rid} is not stored"
        assert sum(committed.values()) < total
        await wait_for(lambda: count_rows_is(db, lane.prefix, total), within=180, what="all rows after the database returns")
        await wait_for(lambda: all_committed(lane, where), within=60, what="commits to the end")
        assert (metrics.registry.get_sample_value(
            "ledger_dependency_failures_total", {"stage": "signer", "dependency": "database"}) or 0) >= 1
    await assert_no_commit_past_unsigned_work(lane, db, where)


# --- throughput ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_throughput_against_the_raw_vault_batch_rate(lane, db, producer, settings):
    n = 3000
    vault = TransitSigner(settings, token=VaultToken.for_stage(settings, "signer"))
    try:
        statements = [f"bench statement {i}".encode() for i in range(n)]
        t0 = time.monotonic()
        for i in range(0, n, 200):
            await vault.sign_batch(settings.vault_transit_key, statements[i : i + 200])
        raw_rate = n / (time.monotonic() - t0)
    finally:
        await vault.close()

    await produce_stream(producer, lane, n)
    async with signer_running(lane.settings):
        # from the first stored row (the group join is not signing time) to the last
        await wait_for(lambda: more_rows_than(db, lane.prefix, 0), within=60, what="a first row", every=0.02)
        t0, first = time.monotonic(), await count_rows(db, lane.prefix)
        await wait_for(lambda: count_rows_is(db, lane.prefix, n), within=240, what="all rows", every=0.02)
        rate = (n - first) / (time.monotonic() - t0)
    print(f"\nsigner: {rate:.0f} entries/s end to end ({n} entries, backlog); "
          f"raw Vault batch_input (200/call, sequential): {raw_rate:.0f} signatures/s")
    assert rate > 0 and raw_rate > 0


# --- a revoked Vault token ----------------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_a_revoked_vault_token_pauses_the_signer_until_its_file_holds_a_new_one(
    lane, db, producer, stack, tmp_path
):
    openbao = stack.require("openbao")
    admin = hvac.Client(url=lane.settings.vault_addr, token=openbao.root_token, timeout=10,
                        verify=lane.settings.vault_cacert or True)

    def new_token() -> str:
        created = admin.auth.token.create_orphan(policies=["ledger-signer"], period="1h")
        return str(created["auth"]["client_token"])

    token_file = tmp_path / "signer.token"
    token_file.write_text(new_token() + "\n")
    port = free_port()
    s = lane.settings.model_copy(update={"signer_vault_token_file": str(token_file),
                                         "metrics_port": port, "health_cache_s": 0.0})

    async def vault_state() -> tuple[int, str]:
        async with http.get(f"http://127.0.0.1:{port}/health") as resp:
            body = await resp.json()
            return resp.status, str(body["checks"]["vault"]["state"])

    async with signer_running(s) as metrics, aiohttp.ClientSession() as http:
        where = await produce_stream(producer, lane, 40)
        await wait_for(lambda: count_rows_is(db, lane.prefix, 40), within=120, what="first rows")
        admin.auth.token.revoke(token_file.read_text().strip())
        where |= await produce_stream(producer, lane, 40, start=40)
        await wait_for(lambda: paused(metrics), within=90, what="a pause on the revoked token")

        async def says_token_invalid() -> bool:
            return await vault_state() == (503, "token invalid")

        await wait_for(says_token_invalid, within=30, what="/health: vault token invalid")
        assert await count_rows(db, lane.prefix) == 40  # nothing signed, nothing dropped
        await assert_no_commit_past_unsigned_work(lane, db, where)

        token_file.write_text(new_token() + "\n")  # the operator's rotation
        await wait_for(lambda: count_rows_is(db, lane.prefix, 80), within=120,
                       what="signing to resume with the new token")
        await wait_for(lambda: not_paused(metrics), within=30, what="the signer to resume")
        assert (await vault_state())[1] == "ok"
        await wait_for(lambda: all_committed(lane, where), within=60, what="commits to the end")
        assert (metrics.registry.get_sample_value(
            "ledger_dependency_failures_total", {"stage": "signer", "dependency": "vault"}) or 0) >= 1
