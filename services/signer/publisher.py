"""Publishes ``ledger.signed`` events through the Kafka adapter, waiting for every ack."""

from __future__ import annotations

from collections.abc import Sequence

from shared.kafka import Producer

from .stage import SignedEvent

__all__ = ["KafkaSignedPublisher"]


class KafkaSignedPublisher:
    """``ledger.signed``: key = subject, value = :class:`SignedEntry` JSON, ids in headers."""

    def __init__(self, producer: Producer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def publish_signed(self, events: Sequence[SignedEvent]) -> None:
        await self._producer.send_many(
            (self._topic, subject, value, list(headers)) for subject, value, headers in events
        )
