"""Pure logic of shared.kafka: records, headers, the dead-letter envelope."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from shared.errors import InvalidMessage, KafkaUnavailable
from shared.kafka import DLQ_HEADERS, Producer, Record, dead_letter, dlq_topic

pytestmark = pytest.mark.unit


class _StubAioProducer:
    def __init__(self, fail: BaseException | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail = fail

    async def send_and_wait(self, topic: str, **kw: Any) -> Any:
        if self.fail is not None:
            raise self.fail
        self.sent.append({"topic": topic, **kw})
        return SimpleNamespace(topic=topic, partition=0, offset=len(self.sent) - 1)


def _record(**kw: Any) -> Record:
    base: dict[str, Any] = {
        "topic": "ledger.append",
        "partition": 2,
        "offset": 41,
        "key": b"subject",
        "value": b"{}",
        "headers": (("traceparent", b"t1"), ("dlq.stage", b"old")),
        "timestamp_ms": 1,
    }
    base.update(kw)
    return Record(**base)


def test_record_header_returns_the_last_value() -> None:
    record = _record(headers=(("a", b"1"), ("b", b"2"), ("a", b"3")))
    assert record.header("a") == b"3"
    assert record.header("missing") is None
    assert record.tp == ("ledger.append", 2)


def test_dlq_topic() -> None:
    assert dlq_topic("ledger.signed") == "ledger.signed.dlq"


async def test_send_encodes_key_and_headers() -> None:
    stub = _StubAioProducer()
    producer = Producer(stub, send_timeout_s=1)
    delivery = await producer.send("t", "clé", b"v", {"h": "é", "b": b"\x00"})
    assert delivery.offset == 0
    assert stub.sent[0]["key"] == "clé".encode()
    assert stub.sent[0]["headers"] == [("h", "é".encode()), ("b", b"\x00")]


async def test_send_translates_kafka_errors() -> None:
    producer = Producer(_StubAioProducer(KafkaConnectionError("gone")), send_timeout_s=1)
    with pytest.raises(KafkaUnavailable, match="produce to t"):
        await producer.send("t", None, b"v")


async def test_too_large_is_an_invalid_message_not_retryable() -> None:
    producer = Producer(_StubAioProducer(MessageSizeTooLargeError()), send_timeout_s=1)
    with pytest.raises(InvalidMessage, match="too large") as info:
        await producer.send("t", None, b"v")
    assert not info.value.retryable


async def test_dead_letter_envelope() -> None:
    stub = _StubAioProducer()
    reason = "x" * 5000
    await dead_letter(
        Producer(stub, send_timeout_s=1),
        _record(),
        stage="signer",
        reason=reason,
        attempts=2,
        clock=lambda: 12.3456,
    )
    (sent,) = stub.sent
    assert sent["topic"] == "ledger.append.dlq"
    assert sent["key"] == b"subject"
    assert sent["value"] == b"{}"
    headers = dict(sent["headers"])
    assert [name for name, _ in sent["headers"]] == ["traceparent", *DLQ_HEADERS]
    assert headers["traceparent"] == b"t1"  # original headers are kept
    assert headers["dlq.stage"] == b"signer"  # ... but ours replace stale dlq.* ones
    assert len(headers["dlq.reason"]) == 2048
    assert headers["dlq.attempts"] == b"2"
    assert headers["dlq.source.topic"] == b"ledger.append"
    assert headers["dlq.source.partition"] == b"2"
    assert headers["dlq.source.offset"] == b"41"
    assert headers["dlq.ts"] == b"12345"
