"""``ledger dlq show`` / ``replay`` against the real Kafka broker, run as the operator would."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import pytest

from shared.kafka import (
    Record,
    dead_letter,
    dlq_topic,
    make_consumer,
    make_producer,
)
from shared.kafka_admin import ensure_topics
from shared.settings import Settings

pytestmark = pytest.mark.integration


async def _ledger(stack_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``ledger`` command as a separate process, as an operator would."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ledger.cli", *args,
        env={**os.environ, **stack_env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


async def _seed(settings: Settings, topic: str) -> None:
    await ensure_topics(settings, [topic, dlq_topic(topic)], 1)
    producer = await make_producer(settings, client_id="dlq-cli-test")
    try:
        for i, reason in enumerate(["not JSON: x", "idempotency conflict", "not JSON: y"]):
            source = Record(
                topic=topic, partition=0, offset=100 + i, key=f"k{i}".encode(),
                value=f'{{"n": {i}}}'.encode(), headers=(("traceparent", b"00-abc"),),
                timestamp_ms=0,
            )
            await dead_letter(producer, source, stage="signer", reason=reason, attempts=1)
    finally:
        await producer.close()


async def _read_all(settings: Settings, topic: str, expected: int) -> list[Record]:
    consumer = await make_consumer(
        settings, group_id=f"dlq-cli-check-{uuid.uuid4().hex[:8]}", topics=[topic],
        client_id="dlq-cli-check",
    )
    got: list[Record] = []
    try:
        async with asyncio.timeout(60):
            while len(got) < expected:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(records)
            # nothing beyond what we expect arrives in the next polls either
            for _ in range(3):
                for records in (await consumer.getmany(timeout_ms=300)).values():
                    got.extend(records)
    finally:
        await consumer.close()
    return got


async def test_show_then_replay_selected_reason_once(stack, settings: Settings) -> None:
    topic = f"dlqcli.{uuid.uuid4().hex[:10]}"
    await _seed(settings, topic)
    env = stack.endpoints()

    shown = await _ledger(env, "dlq", "show", dlq_topic(topic))
    assert shown.returncode == 0, shown.stderr
    lines = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [line["reason"] for line in lines] == [
        "not JSON: x", "idempotency conflict", "not JSON: y"
    ]
    assert {line["source.topic"] for line in lines} == {topic}
    assert [line["source.offset"] for line in lines] == ["100", "101", "102"]
    assert lines[1]["key"] == "k1" and lines[1]["value"] == {"n": 1}
    assert "3 message(s)" in shown.stderr

    group = f"replay-{uuid.uuid4().hex[:8]}"
    replay = await _ledger(env, "dlq", "replay", dlq_topic(topic), "--reason", "not JSON",
                     "--group", group)
    assert replay.returncode == 0, replay.stderr
    assert "replayed 2 message(s), passed over 1" in replay.stderr

    again = await _ledger(env, "dlq", "replay", dlq_topic(topic), "--group", group)
    assert again.returncode == 0, again.stderr
    assert "replayed 0 message(s)" in again.stderr  # progress was committed

    republished = await _read_all(settings, topic, 2)
    assert sorted(r.value or b"" for r in republished) == [b'{"n": 0}', b'{"n": 2}']
    for record in republished:
        assert record.header("traceparent") == b"00-abc"
        assert not any(name.startswith("dlq.") for name, _ in record.headers)


async def test_refuses_a_topic_that_is_not_a_dead_letter_topic(stack) -> None:
    result = await _ledger(stack.endpoints(), "dlq", "show", "ledger.append")
    assert result.returncode == 1
    assert "is not a dead-letter topic" in result.stderr
