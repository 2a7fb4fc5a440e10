"""Kafka refuses every principal everything but its own work (mutual TLS + ACLs).

Each test works on a private lane whose ACLs were granted by the same function that grants the
local stack's (:func:`shared.kafka_acls.pipeline_acls`), and connects with the local stack's
client certificates: ``admin`` (a super user) and one per component. A permission is shown
both ways: what a principal may do succeeds, and each thing it may not do is refused by the
broker with an authorisation error (not a timeout).
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from deploy.local.kafka import Kafka
from deploy.local.tls import LocalCA
from shared.kafka_acls import DOWNSTREAM_GROUP_PREFIX, PRINCIPALS
from shared.kafka_tls import client_options
from shared.settings import Settings
from tests.support.lanes import new_prefix, private_lane

pytestmark = pytest.mark.integration

#: what refusing looks like: the broker says "not authorised" (for an idempotent producer
#: without any topic to write, already at its producer-id request)
REFUSED = (TopicAuthorizationFailedError, GroupAuthorizationFailedError,
           ClusterAuthorizationFailedError)


@dataclass(frozen=True)
class Lane:
    settings: Settings  # the lane's names, connected as the administrator
    kafka: Kafka

    def topic(self, kind: str) -> str:
        s = self.settings
        return {"append": s.topic_append, "signed": s.topic_signed,
                "anchored": s.topic_anchored, "append.dlq": f"{s.topic_append}.dlq",
                "signed.dlq": f"{s.topic_signed}.dlq"}[kind]

    def group(self, kind: str) -> str:
        s = self.settings
        return {"signer": s.signer_group, "anchorer": s.anchorer_group,
                "downstream": f"{DOWNSTREAM_GROUP_PREFIX}{uuid.uuid4().hex[:6]}",
                "other": f"{s.topic_append}-other"}[kind]

    def as_(self, principal: str) -> Settings:
        return self.settings.model_copy(update={
            "kafka_ssl_certfile": str(self.kafka.client_pem(principal)),
            "kafka_ssl_keyfile": ""})


@pytest.fixture
async def lane(stack: Any, settings: Settings) -> AsyncIterator[Lane]:
    kafka = stack.service("kafka")
    if not isinstance(kafka, Kafka):
        pytest.skip("the Kafka of this stack is not the local one (no ACLs to check)")
    lane = Lane(await private_lane(settings, new_prefix("k"), 1), kafka)
    for kind in TOPICS:  # one record each, written by the administrator, for readers to find
        await _produce(lane.settings, lane.topic(kind))
    yield lane


async def _produce(s: Settings, topic: str) -> None:
    producer = AIOKafkaProducer(**client_options(s), acks="all", enable_idempotence=True,
                                request_timeout_ms=10_000)
    try:
        await producer.start()
        await producer.send_and_wait(topic, b"probe", key=b"k")
    finally:
        await producer.stop()


async def _read(s: Settings, topic: str, group: str | None) -> list[bytes]:
    """Fetch ``topic`` from the start and, in ``group``, commit an offset (what a stage does);
    the values read, or the broker's refusal raised."""
    consumer = AIOKafkaConsumer(**client_options(s), group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest", request_timeout_ms=10_000)
    try:
        await consumer.start()
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        if group is not None:
            await consumer.commit({tp: 0})  # READ on the group, then on the topic
        await consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        for _ in range(20):
            batch = await consumer.getmany(tp, timeout_ms=250)  # a refused fetch raises
            values += [r.value or b"" for r in batch.get(tp, [])]
            if values:
                return values
            if topic in consumer._client.cluster.unauthorized_topics:
                # refused already at the metadata request: not even DESCRIBE
                raise TopicAuthorizationFailedError(topic)
        return values
    finally:
        await consumer.stop()


#: (principal, topic) pairs that may be written; every other pair is refused
WRITES = {("ingest", "append"), ("producer", "append"), ("signer", "signed"),
          ("signer", "append.dlq"), ("anchorer", "anchored"), ("anchorer", "signed.dlq")}
#: (principal, topic, group) reads that are allowed
READS = {("ingest", "signed", None), ("signer", "append", "signer"),
         ("anchorer", "signed", "anchorer"), ("consumer", "anchored", "downstream")}
TOPICS = ("append", "signed", "anchored", "append.dlq", "signed.dlq")


@pytest.mark.parametrize("principal", PRINCIPALS)
async def test_each_principal_may_write_only_its_own_topics(lane: Lane, principal: str) -> None:
    for kind in TOPICS:
        if (principal, kind) in WRITES:
            await _produce(lane.as_(principal), lane.topic(kind))
        else:
            with pytest.raises(REFUSED):
                await _produce(lane.as_(principal), lane.topic(kind))


@pytest.mark.parametrize("principal", PRINCIPALS)
async def test_each_principal_may_read_only_its_own_topics_in_its_own_groups(
    lane: Lane, principal: str
) -> None:
    own = [(t, g) for p, t, g in READS if p == principal]
    for topic, group in own:
        assert await _read(lane.as_(principal), lane.topic(topic),
                           None if group is None else lane.group(group)) == [b"probe"]
    refused: list[tuple[str, str | None]] = [
        (kind, None) for kind in TOPICS if all(kind != t for t, _ in own)]
    # its own topic, but in a group that is not its own
    refused += [(topic, lane.group("other")) for topic, _ in own]
    if principal == "consumer":
        refused.append(("anchored", lane.group("signer")))  # cannot join a stage's group
    for kind, group in refused:
        with pytest.raises(REFUSED):
            await _read(lane.as_(principal), lane.topic(kind), group)


async def test_the_producer_principal_cannot_write_ledger_signed(lane: Lane) -> None:
    """The example of the security issue, spelled out: a forged signed event is refused."""
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(lane.as_("producer"), lane.topic("signed"))


@pytest.mark.parametrize("principal", PRINCIPALS)
async def test_only_the_administrator_creates_or_deletes_topics(lane: Lane, principal: str) -> None:
    name = f"{lane.settings.topic_append}.new-{principal}"
    admin = AIOKafkaAdminClient(**client_options(lane.as_(principal)), request_timeout_ms=10_000)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(name, 1, 1)])
        assert [e[1] for e in response.topic_errors] == [
            TopicAuthorizationFailedError.errno]  # refused, not created
        deleted = await admin.delete_topics([lane.topic("append")])
        assert [e[1] for e in deleted.topic_error_codes] == [TopicAuthorizationFailedError.errno]
    finally:
        await admin.close()
    assert name not in await _topics(lane.settings)
    assert lane.topic("append") in await _topics(lane.settings)


async def _topics(s: Settings) -> set[str]:
    admin = AIOKafkaAdminClient(**client_options(s), request_timeout_ms=10_000)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _handshake_refused(options: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(**options, request_timeout_ms=5_000)
    with pytest.raises((KafkaConnectionError, KafkaError, ssl.SSLError, OSError)):
        try:
            await producer.start()
        finally:
            await producer.stop()


async def test_a_client_without_a_certificate_is_not_let_in(lane: Lane) -> None:
    anonymous = lane.settings.model_copy(update={"kafka_ssl_certfile": ""})
    await _handshake_refused(client_options(anonymous))


async def test_a_certificate_from_another_ca_is_not_let_in(lane: Lane, tmp_path: Path) -> None:
    stranger = LocalCA(tmp_path / "other-ca").client_cert("admin")  # the right name, wrong CA
    pem = tmp_path / "admin.pem"
    pem.write_bytes(stranger.key.read_bytes() + stranger.cert.read_bytes())
    await _handshake_refused(client_options(
        lane.settings.model_copy(update={"kafka_ssl_certfile": str(pem)})))


async def test_a_plaintext_client_is_not_let_in(lane: Lane) -> None:
    await _handshake_refused({"bootstrap_servers": lane.settings.kafka_bootstrap_servers})
