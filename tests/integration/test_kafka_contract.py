"""Contract of shared.kafka against a real Apache Kafka broker (KRaft).

Runs against the shared local stack (``settings`` fixture) when the project's conftest
provides it, else against ``KAFKA_BOOTSTRAP_SERVERS``. Every test uses its own topics and
consumer groups.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from shared.errors import ConfigError, KafkaUnavailable
from shared.kafka import (
    DLQ_HEADERS,
    Consumer,
    Producer,
    Record,
    TopicPartition,
    dead_letter,
    dlq_topic,
    make_consumer,
    make_producer,
)
from shared.kafka_admin import ensure_topics
from shared.kafka_tls import client_options
from shared.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def kafka_settings(request: pytest.FixtureRequest) -> Settings:
    try:
        settings = request.getfixturevalue("settings")
    except pytest.FixtureLookupError:
        if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            pytest.skip("no local stack fixture and KAFKA_BOOTSTRAP_SERVERS is not set")
        settings = Settings.from_env()
    assert isinstance(settings, Settings)
    return settings


@pytest.fixture
async def topic(kafka_settings: Settings) -> str:
    name = f"contract.{uuid.uuid4().hex[:10]}"
    created = await ensure_topics(kafka_settings, [name, dlq_topic(name)], 1)
    assert created == [name, dlq_topic(name)]
    return name


@pytest.fixture
async def producer(kafka_settings: Settings) -> AsyncIterator[Producer]:
    p = await make_producer(kafka_settings, client_id="contract-producer")
    yield p
    await p.close()


async def _consumer(settings: Settings, group: str, topics: list[str]) -> Consumer:
    return await make_consumer(settings, group_id=group, topics=topics, client_id=group)


async def _drain(consumer: Consumer, want: int, *, rounds: int = 40) -> list[Record]:
    """Fetch until ``want`` records arrived (or ~20 s passed)."""
    got: list[Record] = []
    for _ in range(rounds):
        for records in (await consumer.getmany(timeout_ms=500)).values():
            got.extend(records)
        if len(got) >= want:
            break
    return got


async def test_ensure_topics_is_idempotent(kafka_settings: Settings, topic: str) -> None:
    assert await ensure_topics(kafka_settings, [topic, dlq_topic(topic)], 1) == []


async def _partitions(settings: Settings, topic: str) -> int:
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return len(described["partitions"])
    finally:
        await admin.close()


async def test_ensure_topics_grows_only_when_asked_and_never_shrinks(
    kafka_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = kafka_settings
    name = f"contract.grow.{uuid.uuid4().hex[:8]}"
    assert await ensure_topics(bootstrap, [name], 1) == [name]
    with caplog.at_level(logging.WARNING, logger="ledger.kafka"):
        assert await ensure_topics(bootstrap, [name], 3) == []
    assert await _partitions(bootstrap, name) == 1, "left as it is without grow=True"
    assert any("fewer partitions" in r.getMessage() and getattr(r, "topic", "") == name
               for r in caplog.records)
    await ensure_topics(bootstrap, [name], 3, grow=True)
    assert await _partitions(bootstrap, name) == 3
    await ensure_topics(bootstrap, [name], 2, grow=True)
    assert await _partitions(bootstrap, name) == 3, "never shrunk"


async def test_produce_acks_all_idempotent_and_consume(
    kafka_settings: Settings, topic: str, producer: Producer
) -> None:
    inner = producer._producer  # aiokafka internals: what the broker actually sees
    assert inner._sender._acks == -1  # acks=all
    assert inner._txn_manager is not None  # idempotence on: the broker gave a producer id
    assert inner._txn_manager.producer_id >= 0

    deliveries = [
        await producer.send(topic, "subject-a", f"v{i}".encode(), {"traceparent": "00-abc"})
        for i in range(5)
    ]
    assert [d.offset for d in deliveries] == [0, 1, 2, 3, 4]
    assert {d.topic for d in deliveries} == {topic}

    consumer = await _consumer(kafka_settings, f"g-{uuid.uuid4().hex[:8]}", [topic])
    try:
        got = await _drain(consumer, 5)
        assert [r.value for r in got] == [f"v{i}".encode() for i in range(5)]
        assert all(r.key == b"subject-a" for r in got)
        assert all(r.header("traceparent") == b"00-abc" for r in got)
        assert consumer.assignment() == {TopicPartition(topic, 0)}
        assert await consumer.lag() == {TopicPartition(topic, 0): 0}
    finally:
        await consumer.close()


async def test_committed_is_not_redelivered_uncommitted_is(
    kafka_settings: Settings, topic: str, producer: Producer
) -> None:
    await producer.send_many([(topic, "k", f"m{i}".encode(), None) for i in range(10)])
    group = f"g-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(topic, 0)

    first = await _consumer(kafka_settings, group, [topic])
    try:
        got = await _drain(first, 10)
        assert [r.offset for r in got] == list(range(10))
        # only the first four are done: commit exactly the next offset after them
        await first.commit({tp: got[3].offset + 1})
        assert await first.committed(tp) == 4
    finally:
        await first.close()  # the other six were read but never committed

    second = await _consumer(kafka_settings, group, [topic])
    try:
        again = await _drain(second, 6)
        assert [r.offset for r in again] == list(range(4, 10))
        assert [r.value for r in again] == [f"m{i}".encode() for i in range(4, 10)]
        await second.commit({tp: again[-1].offset + 1})
    finally:
        await second.close()

    third = await _consumer(kafka_settings, group, [topic])
    try:
        assert await _drain(third, 1, rounds=6) == []
    finally:
        await third.close()


async def test_seek_to_committed_redelivers_to_the_same_consumer(
    kafka_settings: Settings, topic: str, producer: Producer
) -> None:
    await producer.send_many([(topic, None, f"m{i}".encode(), None) for i in range(3)])
    consumer = await _consumer(kafka_settings, f"g-{uuid.uuid4().hex[:8]}", [topic])
    try:
        got = await _drain(consumer, 3)
        await consumer.commit({got[0].tp: 1})
        await consumer.seek_to_committed()
        assert [r.offset for r in await _drain(consumer, 2)] == [1, 2]
    finally:
        await consumer.close()


async def test_pause_resume_and_lag(
    kafka_settings: Settings, topic: str, producer: Producer
) -> None:
    consumer = await _consumer(kafka_settings, f"g-{uuid.uuid4().hex[:8]}", [topic])
    try:
        await _drain(consumer, 1, rounds=4)  # join the group, get the assignment
        tp = TopicPartition(topic, 0)
        assert consumer.assignment() == {tp}
        consumer.pause()
        assert consumer.paused() == {tp}
        await producer.send_many([(topic, None, b"x", None) for _ in range(7)])
        assert await _drain(consumer, 1, rounds=3) == []
        assert await consumer.lag() == {tp: 7}
        consumer.resume()
        assert len(await _drain(consumer, 7)) == 7
        assert await consumer.lag() == {tp: 0}
    finally:
        await consumer.close()


async def test_rebalance_hooks_are_called(kafka_settings: Settings, topic: str) -> None:
    tp = TopicPartition(topic, 0)
    group = f"g-{uuid.uuid4().hex[:8]}"
    assigned: list[set[TopicPartition]] = []
    revoked: list[set[TopicPartition]] = []

    async def on_assigned(tps: set[TopicPartition]) -> None:
        assigned.append(tps)

    async def on_revoked(tps: set[TopicPartition]) -> None:
        revoked.append(tps)

    first = await make_consumer(
        kafka_settings,
        group_id=group,
        topics=[topic],
        client_id="hooks",
        on_assigned=on_assigned,
        on_revoked=on_revoked,
    )
    second: Consumer | None = None
    try:
        for _ in range(20):
            await first.getmany(timeout_ms=300)
            if assigned:
                break
        assert assigned == [{tp}]
        # a second member joins: the first gives its partition back before the rebalance
        second = await _consumer(kafka_settings, group, [topic])
        for _ in range(40):
            await asyncio.gather(first.getmany(timeout_ms=300), second.getmany(timeout_ms=300))
            if len(assigned) >= 2:
                break
        assert {tp} in revoked
        assert len(assigned) >= 2
        assert first.assignment() | second.assignment() == {tp}
    finally:
        await first.close()
        if second is not None:
            await second.close()


async def test_dead_letter_keeps_key_value_headers_and_says_why(
    kafka_settings: Settings, topic: str, producer: Producer
) -> None:
    await producer.send(topic, "subject-z", b"\xffnot json", {"traceparent": "00-def"})
    consumer = await _consumer(kafka_settings, f"g-{uuid.uuid4().hex[:8]}", [topic])
    try:
        (source,) = await _drain(consumer, 1)
    finally:
        await consumer.close()

    delivery = await dead_letter(
        producer, source, stage="signer", reason="invalid JSON", attempts=3, clock=lambda: 1700.5
    )
    assert delivery.topic == f"{topic}.dlq"

    dlq = await _consumer(kafka_settings, f"g-{uuid.uuid4().hex[:8]}", [dlq_topic(topic)])
    try:
        (dead,) = await _drain(dlq, 1)
    finally:
        await dlq.close()
    assert dead.key == b"subject-z"
    assert dead.value == b"\xffnot json"
    assert dead.header("traceparent") == b"00-def"
    assert {name for name, _ in dead.headers} >= set(DLQ_HEADERS)
    assert dead.header("dlq.stage") == b"signer"
    assert dead.header("dlq.reason") == b"invalid JSON"
    assert dead.header("dlq.attempts") == b"3"
    assert dead.header("dlq.source.topic") == topic.encode()
    assert dead.header("dlq.source.partition") == b"0"
    assert dead.header("dlq.source.offset") == str(source.offset).encode()
    assert dead.header("dlq.ts") == b"1700500"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_broker_is_kafka_unavailable(kafka_settings: Settings) -> None:
    settings = kafka_settings.model_copy(
        update={"kafka_bootstrap_servers": f"127.0.0.1:{_closed_port()}"}
    )
    with pytest.raises(KafkaUnavailable) as info:
        await make_producer(settings, client_id="nowhere", start_timeout_s=5)
    assert info.value.retryable
    with pytest.raises(KafkaUnavailable):
        await ensure_topics(settings, ["x"], 1, timeout_s=3)


async def test_a_session_timeout_the_brokers_refuse_is_a_configuration_error(
    kafka_settings: Settings, topic: str
) -> None:
    """Below the brokers' group.min.session.timeout.ms (the local stack: 500 ms; Kafka's own
    default: 6 s) the group cannot be joined: retrying would stall the stage forever, so the
    consumer fails with the setting's name and the broker setting to change."""
    consumer = await make_consumer(kafka_settings, group_id=f"g-{uuid.uuid4().hex[:8]}",
                                   topics=[topic], client_id="short-session",
                                   session_timeout_ms=400)
    try:
        with pytest.raises(ConfigError) as err:
            for _ in range(40):
                await consumer.getmany(timeout_ms=250)
        message = str(err.value)
        assert "LEDGER_CONSUMER_SESSION_TIMEOUT_MS" in message
        assert "group.min.session.timeout.ms" in message and "400 ms" in message
    finally:
        await consumer.close()
