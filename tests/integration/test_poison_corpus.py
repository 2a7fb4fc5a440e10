"""A corpus of malformed ``ledger.append`` messages against the signer on the real stack.

Every message of :data:`POISON` is produced to the real Kafka, interleaved with valid
requests (some with hostile headers or no key), while a real signer runs (OpenBao,
PostgreSQL). Each poison message must end up in the dead-letter topic, unchanged, with a
``dlq.reason`` and a ``dlq.detail`` that name its problem; none of them may leave a row; and
every valid request around them is signed and stored. The anchorer's input gets the same
treatment with :data:`SIGNED_POISON` (it dead-letters what it cannot read).

The corpus is data: add a row to extend it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from services.anchorer import run_anchorer
from shared.db import Database, migrate
from shared.kafka_tls import client_options
from shared.lifecycle import Lifecycle
from shared.settings import Settings
from shared.telemetry import Metrics
from tests.integration.test_signer import (
    Lane,
    headers_of,
    read_topic,
    request_bytes,
    rows_for,
    signer_running,
    verify_row,
)
from tests.support.lanes import new_prefix, private_lane
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 2
KEY = b"corpus"  # one partition: the order of poison and valid messages is kept

Build = Callable[[dict[str, Any]], bytes | None]
NOISE = base64.b64encode(random.Random(9).randbytes(450_000)).decode()


def changed(**fields: Any) -> Build:
    """The valid request with ``fields`` replaced (``...`` removes a field)."""
    def build(base: dict[str, Any]) -> bytes:
        doc = {**base, **fields}
        return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()
    return build


def raw(value: bytes | None) -> Build:
    return lambda _base: value


def deep(levels: int) -> Build:
    return lambda base: (json.dumps({**base, "meta": {}})[:-1].encode()
                         + b', "x": ' + b"[" * levels + b"]" * levels + b"}")


@dataclass(frozen=True)
class Poison:
    name: str
    build: Build
    reason: str  # the dlq.reason header
    detail: tuple[str, ...] = ()  # words the dlq.detail header must contain
    key: bytes | None = KEY


#: (what, how to make it from a valid request, the reason, words of the detail)
POISON: list[Poison] = [
    Poison("plain text", raw(b"this is not json"), "not JSON"),
    Poison("truncated JSON", lambda b: json.dumps(b).encode()[:-12], "not JSON"),
    Poison("empty value", raw(b""), "not JSON"),
    Poison("null value (a tombstone)", raw(None), "empty message", ("no value",)),
    Poison("invalid UTF-8", lambda b: json.dumps(b).encode().replace(b"orders", b"\xff\xfe"),
           "not JSON", ("utf-8",)),
    # (JSON in UTF-16 or UTF-32 is not here: the standard library reads it, so it is signed)
    Poison("nested 100,000 deep", deep(100_000), "not JSON", ("nested too deeply",)),
    Poison("a JSON array", raw(b"[1, 2, 3]"), "not a JSON object", ("list",)),
    Poison("JSON null", raw(b"null"), "not a JSON object", ("NoneType",)),
    Poison("a JSON string", raw(b'"version"'), "not a JSON object", ("str",)),
    Poison("unknown version", changed(version=2), "unsupported version", ("version=2",)),
    Poison("no version", changed(version=...), "unsupported version", ("version=None",)),
    Poison("version as a string", changed(version="1"), "unsupported version",
           ("version='1'",)),
    Poison("no subject", changed(subject=...), "invalid fields", ("subject",)),
    Poison("no request_id", changed(request_id=...), "invalid fields", ("request_id",)),
    Poison("no payload_sha256", changed(payload_sha256=...), "invalid fields",
           ("payload_sha256",)),
    Poison("no submitted_at", changed(submitted_at=...), "invalid fields", ("submitted_at",)),
    Poison("subject a number", changed(subject=42), "invalid fields", ("subject",)),
    Poison("subject empty", changed(subject=""), "invalid fields", ("subject",)),
    Poison("subject with a final newline", changed(subject="orders/42\n"), "invalid fields",
           ("subject",)),
    Poison("request_id of 129", changed(request_id="r" * 129), "invalid fields",
           ("request_id",)),
    Poison("hash of 63", changed(payload_sha256="a" * 63), "invalid fields",
           ("payload_sha256",)),
    Poison("hash of 65", changed(payload_sha256="a" * 65), "invalid fields",
           ("payload_sha256",)),
    Poison("hash in upper case", changed(payload_sha256="A" * 64), "invalid fields",
           ("payload_sha256",)),
    Poison("hash not hex", changed(payload_sha256="z" * 64), "invalid fields",
           ("payload_sha256",)),
    Poison("payload and payload_sha256", changed(payload="cGF5bG9hZA=="), "invalid fields",
           ("payload",)),
    Poison("payload instead of its hash", changed(payload="cGF5bG9hZA==", payload_sha256=...),
           "invalid fields", ("payload_sha256",)),
    Poison("an unknown field", changed(colour="blue"), "invalid fields", ("colour",)),
    Poison("meta a list", changed(meta=[1, 2]), "invalid fields", ("meta",)),
    Poison("meta with U+0000", changed(meta={"k": "a\x00b"}), "invalid fields", ("U+0000",)),
    Poison("meta integer 2^60", changed(meta={"n": 2**60}), "invalid fields",
           ("canonicalised",)),
    Poison("meta NaN", changed(meta={"n": float("nan")}), "invalid fields", ("canonicalised",)),
    Poison("meta lone surrogate", changed(meta={"k": "\ud800"}), "invalid fields",
           ("canonicalised",)),
    Poison("meta of 17 KB", changed(meta={"k": "x" * 17_000}), "invalid fields",
           ("meta: too large",)),
    # its ledger.signed event would be larger than Kafka takes (LZ4 cannot shrink it)
    Poison("meta of 600 KB, incompressible", changed(meta={"k": NOISE}), "invalid fields",
           ("meta: too large",)),
    Poison("submitted_at without a zone", changed(submitted_at="2026-01-01T00:00:00"),
           "invalid fields", ("submitted_at",)),
    Poison("submitted_at not a time", changed(submitted_at="yesterday"), "invalid fields",
           ("submitted_at",)),
    Poison("no key and not JSON", raw(b"{oops"), "not JSON", key=None),
]

#: valid requests sent between the poison: (what, Kafka key, headers)
VALID: list[tuple[str, bytes | None, list[tuple[str, bytes]]]] = [
    ("plain", KEY, []),
    ("no key", None, []),
    ("a broken traceparent", KEY, [("traceparent", b"00-not-a-trace-xx")]),
    ("headers that are not UTF-8", KEY, [("traceparent", b"\xff\xfe\x00"), ("x", b"\x80")]),
    ("many headers", KEY, [(f"h{i}", b"v" * 100) for i in range(50)]),
    ("a null header value", KEY, [("content-type", b"")]),
]


@dataclass
class Sent:
    poison: Poison
    value: bytes | None
    partition: int
    offset: int


async def lane_for(settings: Settings, prefix: str) -> Lane:
    s = await private_lane(settings, prefix, PARTITIONS, shutdown_grace_s=15.0)
    return Lane(settings=s, prefix=prefix)


@pytest.fixture
async def corpus_db(settings: Settings) -> AsyncIterator[Database]:
    database = await Database.connect(settings)
    await migrate(database)
    yield database
    await database.close()


@pytest.fixture
async def corpus_producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(**client_options(settings), acks="all")
    await p.start()
    yield p
    await p.stop()


async def produce_corpus(producer: AIOKafkaProducer, lane: Lane) -> tuple[list[Sent], list[str]]:
    """Every poison message, with valid requests between them; returns both."""
    sent: list[Sent] = []
    valid_ids: list[str] = []

    async def send_valid(key: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        n = len(valid_ids)
        rid = lane.rid(f"valid-{n}")
        await producer.send_and_wait(lane.append, request_bytes(rid, subject=f"ok/{n}"),
                                     key=key, headers=headers)
        valid_ids.append(rid)

    valid = iter(VALID)
    for i, poison in enumerate(POISON):
        if i % 6 == 0 and (spaced := next(valid, None)) is not None:
            _, key, headers = spaced
            await send_valid(key, headers)
        base = json.loads(request_bytes(lane.rid(f"poison-{i}")))
        value = poison.build(base)
        meta = await producer.send_and_wait(lane.append, value, key=poison.key)
        sent.append(Sent(poison, value, meta.partition, meta.offset))
    for _, key, headers in valid:  # the rest after the last poison message
        await send_valid(key, headers)
    return sent, valid_ids


def test_the_corpus_names_each_problem_once():
    names = [p.name for p in POISON]
    assert len(names) == len(set(names))
    assert all(p.reason for p in POISON)


async def test_every_poison_message_is_dead_lettered_with_its_reason(
    settings, corpus_db, corpus_producer
):
    lane = await lane_for(settings, new_prefix("c"))
    sent, valid_ids = await produce_corpus(corpus_producer, lane)
    async with signer_running(lane.settings) as metrics:
        async def all_valid_stored() -> bool:
            rows = await rows_for(corpus_db, lane.prefix)
            return {r["request_id"] for r in rows} >= set(valid_ids)

        await wait_for(all_valid_stored, within=90, what="every valid request to be stored")
        dlq = await read_topic(lane.settings, lane.dlq, until=lambda r: len(r) >= len(sent),
                               within=60)

    rows = await rows_for(corpus_db, lane.prefix)
    assert sorted(r["request_id"] for r in rows) == sorted(valid_ids), "rows only for valid ones"
    for row in rows:
        verify_row(row)

    by_source = {(int(headers_of(r)["dlq.source.partition"]),
                  int(headers_of(r)["dlq.source.offset"])): r for r in dlq}
    assert len(by_source) == len(dlq) == len(sent), "each poison message dead-lettered once"
    for s in sent:
        record = by_source.get((s.partition, s.offset))
        assert record is not None, f"{s.poison.name}: not dead-lettered"
        headers = headers_of(record)
        reason = headers["dlq.reason"].decode()
        detail = headers.get("dlq.detail", b"").decode("utf-8", "replace")
        assert reason == s.poison.reason, f"{s.poison.name}: reason {reason!r} ({detail})"
        for word in s.poison.detail:
            assert word in detail, f"{s.poison.name}: {word!r} not in the detail {detail!r}"
        assert headers["dlq.stage"] == b"signer"
        assert record.value == (s.value or b""), f"{s.poison.name}: the message, unchanged"
        assert record.key == s.poison.key
    dead = sum(metrics.registry.get_sample_value(
        "ledger_dlq_messages_total", {"stage": "signer", "reason": reason}) or 0
        for reason in {p.reason for p in POISON})
    assert dead == len(POISON)


# --- ledger.signed into the anchorer -----------------------------------------------------------

#: what the anchorer reads of ``ledger.signed`` is the entry id (the rest comes from the
#: signature-checked row); so a message it cannot use is one whose entry id it cannot read
SIGNED_POISON: list[Poison] = [
    Poison("plain text", raw(b"not json at all"), "not JSON"),
    Poison("null value", raw(None), "empty message", ("no value",)),
    Poison("nested 100,000 deep", deep(100_000), "not JSON", ("nested too deeply",)),
    Poison("a JSON array", raw(b"[]"), "not a JSON object", ("list",)),
    Poison("unknown version", changed(version=7), "unsupported version", ("version=7",)),
    Poison("no entry_id", changed(entry_id=...), "invalid fields", ("entry_id",)),
    Poison("entry_id not a UUID", changed(entry_id="42"), "invalid fields", ("entry_id",)),
    Poison("entry_id a number", changed(entry_id=42), "invalid fields", ("entry_id",)),
    Poison("entry_id a list", changed(entry_id=[str(uuid.UUID(int=1))]), "invalid fields",
           ("entry_id",)),
    Poison("an entry id nobody stored", changed(), "unknown entry", ("not in ledger.entries",)),
]


@contextlib.asynccontextmanager
async def anchorer_running(settings: Settings) -> AsyncIterator[Metrics]:
    lc = Lifecycle(name="anchorer", grace_s=settings.shutdown_grace_s)
    metrics = Metrics()
    task = asyncio.create_task(run_anchorer(settings, lifecycle=lc, metrics=metrics,
                                            install_signals=False))
    try:
        yield metrics
    finally:
        lc.request_stop("test over")
        await asyncio.wait_for(task, 60)


async def test_the_anchorer_dead_letters_signed_events_it_cannot_read(
    settings, corpus_db, corpus_producer
):
    lane = await lane_for(settings, new_prefix("a"))
    signed_dlq = lane.signed + ".dlq"
    sent: list[Sent] = []
    for poison in SIGNED_POISON:
        value = poison.build({"version": 1, "entry_id": str(uuid.uuid4())})
        meta = await corpus_producer.send_and_wait(lane.signed, value, key=poison.key)
        sent.append(Sent(poison, value, meta.partition, meta.offset))
    async with anchorer_running(lane.settings):
        dlq = await read_topic(lane.settings, signed_dlq, until=lambda r: len(r) >= len(sent),
                               within=90)
    by_source = {(int(headers_of(r)["dlq.source.partition"]),
                  int(headers_of(r)["dlq.source.offset"])): r for r in dlq}
    assert len(by_source) == len(dlq) == len(sent)
    for s in sent:
        record = by_source[(s.partition, s.offset)]
        headers = headers_of(record)
        detail = headers.get("dlq.detail", b"").decode("utf-8", "replace")
        assert headers["dlq.reason"].decode() == s.poison.reason, (s.poison.name, detail)
        assert headers["dlq.stage"] == b"anchorer"
        for word in s.poison.detail:
            assert word in detail, f"{s.poison.name}: {word!r} not in {detail!r}"
        assert record.value == (s.value or b"")
