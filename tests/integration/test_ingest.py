"""Ingest on the real local stack: HTTP → Kafka → signer (in-process) → PostgreSQL → back.

Each test gets its own topics and signer group (a "lane", like the signer's tests) and its
own request ids and subjects, so tests never see each other's messages. ``run_ingest`` and
``run_signer`` run in this event loop with their real wiring. Waits are bounded polls on
conditions, never bare sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from services.ingest import create_token, run_ingest
from services.signer import run_signer
from shared.db import Database, migrate
from shared.kafka import make_producer
from shared.kafka_tls import client_options
from shared.lifecycle import Lifecycle
from shared.messages import AppendRequest
from shared.settings import Settings
from shared.signatures import parse_vault_signature
from shared.statement import entry_id_for, statement_bytes
from shared.telemetry import Metrics
from tests.support.lanes import new_prefix, private_lane
from tests.support.tcp_relay import tcp_relay
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 3


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the with block ends


@dataclass
class Ingest:
    url: str
    settings: Settings
    metrics: Metrics
    writer: str
    reader: str
    prefix: str
    session: aiohttp.ClientSession

    def rid(self, n: int | str) -> str:
        return f"{self.prefix}-{n}"

    async def append(self, body: dict[str, Any], **headers: str) -> tuple[int, dict[str, Any], Any]:
        h = {"Authorization": f"Bearer {self.writer}", **{k.replace("_", "-"): v for k, v in headers.items()}}
        async with self.session.post(f"{self.url}/append", json=body, headers=h) as r:
            return r.status, await r.json(), r.headers

    async def warm_up(self) -> None:
        """Wait until the signer has joined its group and signs (a fresh group takes a while)."""
        status, doc, _ = await self.append(
            {"subject": f"{self.prefix}/warm-up", "payload": b64(b"warm-up")}, Prefer="respond-async")
        assert status == 202, doc

        async def stored() -> bool:
            st, _ = await self.get(doc["status_url"])
            return st == 200

        await wait_for(stored, within=90, what="the signer to sign a first entry")

    async def get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, Any]:
        h = {"Authorization": f"Bearer {self.reader}"}
        async with self.session.get(f"{self.url}{path}", params=params, headers=h) as r:
            return r.status, await r.json()


@pytest.fixture(scope="module")
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = await Database.connect(settings)
    await migrate(database)
    yield database
    await database.close()


@pytest.fixture
async def lane_settings(settings: Settings, tmp_path: Path) -> Settings:
    return await private_lane(
        settings, new_prefix("i"), PARTITIONS,
        http_port=0,
        tokens_file=str(tmp_path / "tokens.jsonl"),
        append_wait_ms=15_000,
        shutdown_grace_s=10.0,
        signer_batch_ms=5,
    )


@contextlib.asynccontextmanager
async def ingest_running(s: Settings, *, tracer: Any = None) -> AsyncIterator[Ingest]:
    writer = create_token(s.tokens_file, "writer", ["append"])
    reader = create_token(s.tokens_file, "reader", ["read"])
    lc = Lifecycle(name="ingest", grace_s=s.shutdown_grace_s)
    metrics = Metrics()
    bound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_ingest(s, lifecycle=lc, metrics=metrics, on_listening=bound.set_result,
                   tracer=tracer)
    )
    waitables: set[asyncio.Future[Any]] = {bound, task}
    done, _ = await asyncio.wait(waitables, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if bound not in done:
        lc.request_stop("failed to start")
        if task.done():
            task.result()
        raise AssertionError("ingest did not start listening within 60s")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        try:
            yield Ingest(url=bound.result(), settings=s, metrics=metrics, writer=writer,
                         reader=reader, prefix=s.topic_append.split(".")[0], session=session)
        finally:
            lc.request_stop("test over")
            await asyncio.wait_for(task, 60)


@contextlib.asynccontextmanager
async def signer_running(s: Settings, *, tracer: Any = None) -> AsyncIterator[None]:
    lc = Lifecycle(name="signer", grace_s=s.shutdown_grace_s)
    task = asyncio.create_task(run_signer(s, lifecycle=lc, metrics=Metrics(), install_signals=False,
                                          tracer=tracer))
    try:
        yield
    finally:
        lc.request_stop("test over")
        await asyncio.wait_for(task, 60)


async def scan_topic(settings: Settings, topic: str) -> list[bytes]:
    """Every record value of ``topic`` from the beginning to the current end, in
    (partition, offset) order (a fetch interleaves partitions as it pleases)."""
    c = AIOKafkaConsumer(topic, **client_options(settings),
                         enable_auto_commit=False, group_id=None, auto_offset_reset="earliest")
    await c.start()
    try:
        tps = sorted(c.assignment())
        assert len(tps) == PARTITIONS, tps
        ends = await c.end_offsets(tps)
        await c.seek_to_beginning(*tps)
        values: list[tuple[int, int, bytes]] = []
        deadline = time.monotonic() + 30
        async def behind() -> bool:
            positions = [await c.position(tp) for tp in tps]
            return any(pos < ends[tp] for pos, tp in zip(positions, tps, strict=True))

        while await behind():
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for recs in (await c.getmany(timeout_ms=200)).values():
                values.extend((r.partition, r.offset, r.value or b"") for r in recs)
        return [value for _, _, value in sorted(values)]
    finally:
        await c.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- tests ---------------------------------------------------------------------------------


async def test_append_is_signed_stored_and_the_payload_is_nowhere(lane_settings, db):
    payload = os.urandom(24) + b"-UNIQUE-PAYLOAD-MARKER"
    async with ingest_running(lane_settings) as ing, signer_running(lane_settings):
        await ing.warm_up()
        rid = ing.rid("one")
        subject = f"{ing.prefix}/orders/1"
        status, doc, headers = await ing.append(
            {"subject": subject, "payload": b64(payload), "meta": {"source": "test", "n": 1}},
            Idempotency_Key=rid,
        )
        assert status == 201, doc
        assert doc["id"] == str(entry_id_for(rid)) and headers["Location"] == f"/entries/{doc['id']}"
        assert doc["payload_hash"] == hashlib.sha256(payload).hexdigest()
        assert doc["rekor_log_id"] is None and doc["rekor_index"] is None
        assert doc["request_id"] == rid and doc["key_version"] >= 1

        # the signature is a valid Ed25519 signature over the stored statement
        row = await db.fetchrow(
            "SELECT statement, submitted_at, sig, pubkey FROM ledger.entries WHERE request_id = $1", rid)
        assert row is not None
        expected = statement_bytes(request_id=rid, subject=subject,
                                   payload_sha256=doc["payload_hash"],
                                   meta={"source": "test", "n": 1}, submitted_at=row["submitted_at"])
        assert bytes(row["statement"]) == expected
        version, raw = parse_vault_signature(doc["signature"])
        assert version == doc["key_version"] and doc["signature"] == row["sig"]
        key = serialization.load_pem_public_key(doc["public_key"].encode())
        assert isinstance(key, ed25519.Ed25519PublicKey)
        key.verify(raw, expected)  # raises InvalidSignature if not

        # the API shows the same entry
        status, got = await ing.get(f"/entries/{doc['id']}")
        assert status == 200 and got == doc
        status, got = await ing.get(f"/entries/by-request/{rid}")
        assert status == 200 and got["id"] == doc["id"]

    # the payload, raw or encoded, is nowhere in Kafka nor in the database
    needles = [payload, b64(payload).encode(), payload.hex().encode()]
    for topic in (lane_settings.topic_append, lane_settings.topic_signed):
        values = await scan_topic(lane_settings, topic)
        assert values, f"{topic} is empty: the scan would prove nothing"
        for value in values:
            assert not any(n in value for n in needles), topic
    dump = await db.fetch("SELECT t::text AS t FROM ledger.entries t WHERE request_id = $1", rid)
    assert len(dump) == 1 and "UNIQUE" not in dump[0]["t"]
    text = dump[0]["t"].encode()
    assert not any(n in text for n in needles)


async def test_same_request_id_twice_gives_one_entry(lane_settings, db):
    async with ingest_running(lane_settings) as ing, signer_running(lane_settings):
        await ing.warm_up()
        rid = ing.rid("dup")
        body = {"subject": f"{ing.prefix}/d", "payload": b64(b"same"), "meta": {"a": 1}}
        # two at once (both miss the lookup, both publish) and one later (answered from the DB)
        (s1, d1, _), (s2, d2, _) = await asyncio.gather(
            ing.append(body, Idempotency_Key=rid), ing.append({**body, "request_id": rid}))
        s3, d3, h3 = await ing.append(body, Idempotency_Key=rid)
        assert (s1, s2, s3) == (201, 201, 201), (d1, d2, d3)
        assert d1["id"] == d2["id"] == d3["id"] == str(entry_id_for(rid))
        assert d1["signature"] == d3["signature"]
        assert h3["Idempotent-Replayed"] == "true"
        n = await db.fetchval("SELECT count(*) FROM ledger.entries WHERE request_id = $1", rid)
        assert n == 1
        # other content under the same id is refused, and nothing changes
        s4, d4, _ = await ing.append({**body, "payload": b64(b"different")}, Idempotency_Key=rid)
        assert s4 == 409 and d4["field"] == "request_id"
        row = await db.fetchrow("SELECT payload_hash FROM ledger.entries WHERE request_id = $1", rid)
        assert row is not None and row["payload_hash"] == hashlib.sha256(b"same").hexdigest()


async def test_respond_async_answers_202_then_the_status_url_fills(lane_settings, db):
    async with ingest_running(lane_settings) as ing, signer_running(lane_settings):
        await ing.warm_up()
        status, doc, headers = await ing.append(
            {"subject": f"{ing.prefix}/a", "payload": b64(b"async")}, Prefer="respond-async")
        assert status == 202, doc
        assert headers["Preference-Applied"] == "respond-async"
        assert doc["status_url"] == f"/entries/{doc['id']}"

        async def stored() -> bool:
            st, _ = await ing.get(doc["status_url"])
            return st == 200

        await wait_for(stored, within=30, what="the entry behind the status URL")
        status, got = await ing.get(doc["status_url"])
        assert got["request_id"] == doc["request_id"]
        assert ing.metrics.registry.get_sample_value(
            "ledger_append_wait_total", {"outcome": "async"}) == 2  # with the warm-up


async def test_without_a_signer_the_wait_times_out_into_202(lane_settings):
    s = lane_settings.model_copy(update={"append_wait_ms": 300})
    async with ingest_running(s) as ing:
        status, doc, _ = await ing.append({"subject": f"{ing.prefix}/t", "payload": b64(b"x")})
        assert status == 202 and doc["status"] == "accepted"
        values = await scan_topic(s, s.topic_append)
        assert len(values) == 1 and doc["request_id"].encode() in values[0]


async def test_kafka_unreachable_answers_503_with_retry_after(lane_settings):
    s = lane_settings.model_copy(
        update={"kafka_bootstrap_servers": f"127.0.0.1:{closed_port()}", "append_wait_ms": 1000})
    async with ingest_running(s) as ing:
        status, doc, headers = await ing.append(
            {"subject": f"{ing.prefix}/k", "payload": b64(b"x")}, Idempotency_Key=ing.rid("k"))
        assert status == 503, doc
        assert int(headers["Retry-After"]) > 0
        assert doc["request_id"] == ing.rid("k")
        assert ing.metrics.registry.get_sample_value("ledger_appends_published_total") == 0
        async with ing.session.get(f"{ing.url}/health") as r:
            health = await r.json()
            # appends cannot be accepted: unhealthy, and readiness says so too
            assert r.status == 503 and health["kafka"] is False and health["status"] == "unhealthy"
        async with ing.session.get(f"{ing.url}/readyz") as r:
            assert r.status == 503
    # and nothing reached the real Kafka
    assert await scan_topic(lane_settings, lane_settings.topic_append) == []


async def test_list_filters_and_pagination_walk_every_entry_once(lane_settings, db):
    async with ingest_running(lane_settings) as ing, signer_running(lane_settings):
        await ing.warm_up()
        subj_a, subj_b = f"{ing.prefix}/a", f"{ing.prefix}/b"
        results = await asyncio.gather(*(
            ing.append({"subject": subj_a if i % 3 else subj_b, "payload": b64(f"p{i}".encode())},
                       Idempotency_Key=ing.rid(i))
            for i in range(20)
        ))
        assert all(st == 201 for st, _, _ in results), results
        ids_a = {d["id"] for _, d, _ in results if d["subject"] == subj_a}
        assert len(ids_a) == 13

        for order in ("asc", "desc"):
            seen: list[str] = []
            pages = 0
            cursor: str | None = None
            while True:
                params = {"subject": subj_a, "limit": "4", "order": order}
                if cursor:
                    params["cursor"] = cursor
                status, page = await ing.get("/entries", params)
                assert status == 200, page
                pages += 1
                seen += [e["id"] for e in page["entries"]]
                keys = [(e["created_at"], e["id"]) for e in page["entries"]]
                assert keys == sorted(keys, reverse=order == "desc")
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert len(seen) == len(set(seen)) == 13 and set(seen) == ids_a
            assert pages == 4

        # time range: [created_at of the 5th, created_at of the 10th) in ascending order
        status, page = await ing.get("/entries", {"subject": subj_a, "limit": "1000",
                                                  "order": "asc"})
        entries = page["entries"]
        lo, hi = entries[4]["created_at"], entries[9]["created_at"]
        status, ranged = await ing.get("/entries", {"subject": subj_a, "from": lo, "to": hi})
        assert status == 200
        assert all(lo <= e["created_at"] < hi for e in ranged["entries"])
        assert {e["id"] for e in ranged["entries"]} == {
            e["id"] for e in entries if lo <= e["created_at"] < hi}
        # anchoring: no anchorer runs here, so none of them is anchored
        status, anchored = await ing.get("/entries", {"subject": subj_a, "anchored": "true"})
        assert status == 200 and anchored["entries"] == []
        status, pending = await ing.get("/entries", {"subject": subj_b, "anchored": "false"})
        assert status == 200 and len(pending["entries"]) == 7


async def test_health_is_truthful(lane_settings, stack):
    async with ingest_running(lane_settings) as ing:
        async with ing.session.get(f"{ing.url}/health") as r:
            doc = await r.json()
        expected_rekor = "REKOR_SERVER_URL" in stack.endpoints()
        assert doc["database"] == "ok" and doc["kafka"] is True and doc["vault"] is True
        assert doc["rekor"] is expected_rekor
        assert r.status == 200 and doc["status"] == ("healthy" if expected_rekor else "degraded")
        assert set(doc) == {"status", "database", "rekor", "kafka", "vault", "checks"}
    down = lane_settings.model_copy(update={
        "rekor_server_url": f"http://127.0.0.1:{closed_port()}",
        "vault_addr": f"http://127.0.0.1:{closed_port()}",
    })
    async with ingest_running(down) as ing:
        async with ing.session.get(f"{ing.url}/health") as r:
            doc = await r.json()
        # appends still work without Rekor and Vault: 200, degraded, with the details
        assert r.status == 200, doc
        assert {k: doc[k] for k in ("status", "database", "rekor", "kafka", "vault")} == {
            "status": "degraded", "database": "ok", "rekor": False, "kafka": True,
            "vault": False}
        assert doc["checks"]["rekor"] == doc["checks"]["vault"] == {
            "ok": False, "state": "unreachable"}
        status, appended, _ = await ing.append(
            {"subject": f"{ing.prefix}/d", "payload": b64(b"x")}, Prefer="respond-async")
        assert status == 202, appended


async def test_database_down_at_start_is_waited_for_then_served(lane_settings):
    """Like the stages, ingest waits (with back-off) for PostgreSQL at start, not crash."""
    real = urllib.parse.urlsplit(lane_settings.database_dsn)
    port = closed_port()
    netloc = real.netloc.removesuffix(f":{real.port}") + f":{port}"
    s = lane_settings.model_copy(update={"database_dsn": real._replace(netloc=netloc).geturl()})
    create_token(s.tokens_file, "reader", ["read"])
    lc = Lifecycle(name="ingest", grace_s=s.shutdown_grace_s)
    bound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_ingest(s, lifecycle=lc, on_listening=bound.set_result))
    try:
        waitables: set[asyncio.Future[Any]] = {bound, task}
        done, _ = await asyncio.wait(waitables, timeout=3)
        assert not done, "ingest started (or stopped) although its database is unreachable"
        async with tcp_relay(real.hostname or "127.0.0.1", real.port or 5432, port=port):
            url = await asyncio.wait_for(bound, 60)  # the database answers now
            async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as r:
                assert (await r.json())["database"] == "ok"
            lc.request_stop("test over")
            await asyncio.wait_for(task, 60)
    finally:
        lc.request_stop("test over")
        await asyncio.wait_for(task, 60)


async def test_shutdown_answers_waiting_requests_and_returns(lane_settings):
    """SIGTERM-equivalent while a request waits for a signer that is not running."""
    s = lane_settings.model_copy(update={"append_wait_ms": 60_000})
    writer = create_token(s.tokens_file, "writer", ["append"])
    lc = Lifecycle(name="ingest", grace_s=s.shutdown_grace_s)
    bound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_ingest(s, lifecycle=lc, on_listening=bound.set_result))
    url = await asyncio.wait_for(bound, 60)
    async with aiohttp.ClientSession() as session:
        async def call() -> tuple[int, dict[str, Any]]:
            async with session.post(f"{url}/append", json={"subject": "s", "payload": b64(b"x")},
                                    headers={"Authorization": f"Bearer {writer}"}) as r:
                return r.status, await r.json()

        pending = asyncio.create_task(call())
        appended = await scan_until_one(s)
        assert appended == 1  # the request is in flight, waiting for the signer
        started = time.monotonic()
        lc.request_stop("test")
        status, doc = await asyncio.wait_for(pending, 30)
        assert status == 202 and doc["status"] == "accepted"
        await asyncio.wait_for(task, 30)
        assert time.monotonic() - started < s.shutdown_grace_s
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(f"{url}/health"):
                pass


async def scan_until_one(s: Settings) -> int:
    found = 0

    async def one() -> bool:
        nonlocal found
        found = len(await scan_topic(s, s.topic_append))
        return found >= 1

    await wait_for(one, within=30, what="the append to reach Kafka")
    return found



async def test_http_and_kafka_paths_agree_on_a_request_id(lane_settings, db):
    """The same request id through HTTP and through a plain Kafka producer is one entry;
    other content under it is refused on both paths (409 over HTTP, DLQ over Kafka)."""
    s = lane_settings
    async with ingest_running(s) as ing, signer_running(s):
        await ing.warm_up()
        rid = ing.rid("both-paths")
        subject, payload, meta = f"{ing.prefix}/both", b"one document", {"k": "v"}
        status, doc, _ = await ing.append(
            {"subject": subject, "payload": b64(payload), "meta": meta, "request_id": rid})
        assert status == 201, doc

        producer = await make_producer(s, client_id="both-paths-test")
        try:
            same = AppendRequest(request_id=rid, subject=subject, meta=meta,
                                 payload_sha256=hashlib.sha256(payload).hexdigest(),
                                 submitted_at=datetime.now(UTC))
            other = same.model_copy(update={"payload_sha256": hashlib.sha256(b"x").hexdigest()})
            await producer.send(s.topic_append, subject, same.to_bytes())
            await producer.send(s.topic_append, subject, other.to_bytes())
        finally:
            await producer.close()

        entry_id = str(entry_id_for(rid)).encode()

        async def replayed_and_conflict_dead_lettered() -> bool:
            signed = [v for v in await scan_topic(s, s.topic_signed) if entry_id in v]
            dead = await scan_topic(s, s.topic_append + ".dlq")
            return len(signed) >= 2 and any(rid.encode() in v for v in dead)

        await wait_for(replayed_and_conflict_dead_lettered, within=60,
                       what="the Kafka resend to be re-published and the conflict dead-lettered")
        signed = [v for v in await scan_topic(s, s.topic_signed) if entry_id in v]
        assert len({json.loads(v)["signature"] for v in signed}) == 1  # the same stored entry
        assert json.loads(signed[0])["signature"] == doc["signature"]
        n = await db.fetchval("SELECT count(*) FROM ledger.entries WHERE request_id = $1", rid)
        assert n == 1
        row = await db.fetchrow("SELECT payload_hash FROM ledger.entries WHERE request_id = $1", rid)
        assert row["payload_hash"] == hashlib.sha256(payload).hexdigest()

        status, doc, _ = await ing.append(
            {"subject": subject, "payload": b64(b"x"), "meta": meta, "request_id": rid})
        assert status == 409 and doc["field"] == "request_id"


async def test_append_batch_stores_each_valid_entry_once_and_answers_each(lane_settings, db):
    async with ingest_running(lane_settings) as ing, signer_running(lane_settings):
        await ing.warm_up()
        subject = f"{ing.prefix}/batch"
        entries = [{"subject": subject, "payload": b64(f"doc {i}".encode()),
                    "request_id": ing.rid(f"b{i}"), "meta": {"i": i}} for i in range(40)]
        entries[5] = {"subject": "no spaces allowed", "payload": b64(b"x")}
        entries[7] = dict(entries[6])  # the same request twice: one entry
        h = {"Authorization": f"Bearer {ing.writer}"}

        async def post() -> dict[str, Any]:
            async with ing.session.post(f"{ing.url}/append/batch", json={"entries": entries},
                                        headers=h) as r:
                assert r.status == 200, await r.text()
                return dict(await r.json())

        first = await post()
        results = first["results"]
        assert [r["index"] for r in results] == list(range(40))
        assert first["errors"] is True and first["refused"] == 1
        assert results[5]["status"] == 400 and results[5]["field"] == "subject"
        valid = [i for i in range(40) if i != 5]
        assert all(results[i]["status"] == 201 for i in valid), results  # waited for the signer
        assert results[7]["entry"]["id"] == results[6]["entry"]["id"]
        ids = {ing.rid(f"b{i}") for i in valid if i != 7}
        stored = await db.fetch(
            "SELECT request_id, payload_hash FROM ledger.entries WHERE subject = $1", subject)
        assert {r["request_id"] for r in stored} == ids
        by_id = {r["request_id"]: r["payload_hash"] for r in stored}
        for i in valid:
            rid = entries[i]["request_id"]
            payload = base64.b64decode(str(entries[i]["payload"]))
            assert by_id[rid] == hashlib.sha256(payload).hexdigest()

        # the same batch again: every entry answered from the database, nothing published
        before = await scan_topic(lane_settings, lane_settings.topic_append)
        again = await post()
        assert all(again["results"][i]["status"] == 201 and again["results"][i].get("replayed")
                   for i in valid)
        # the same records (a scan interleaves the partitions in no fixed order)
        assert sorted(await scan_topic(lane_settings, lane_settings.topic_append)) == sorted(before)
        assert int(await db.fetchval(
            "SELECT count(*) FROM ledger.entries WHERE subject = $1", subject)) == len(ids)
