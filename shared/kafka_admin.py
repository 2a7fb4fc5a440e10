"""Kafka administration: the one topic creator (:func:`ensure_topics`), and a consumer
group's committed offsets (:func:`committed_offsets`).

The local stack, the tests and the benchmarks create topics with it; the services never
create topics (a deployment does, with Kafka's own tools: ``docker-compose.yml`` runs
``kafka-topics.sh``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Final

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic

from shared.errors import ConfigError, KafkaUnavailable
from shared.kafka import TRANSLATED_ERRORS, unavailable
from shared.kafka_tls import client_options
from shared.settings import Settings

__all__ = ["committed_offsets", "ensure_topics"]

log = logging.getLogger("ledger.kafka")


async def ensure_topics(
    settings: Settings,
    names: Iterable[str],
    partitions: int,
    *,
    grow: bool = False,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet with ``partitions`` partitions; return the
    names this call created. The one topic creator: the local stack, the tests and the
    benchmarks all use it.

    A topic that exists with fewer partitions is grown to ``partitions`` only with
    ``grow=True`` (never shrunk: Kafka cannot). Growing moves keys to other partitions,
    so records of one key written before and after are no longer in one order; the local
    stack grows (``LEDGER_KAFKA_PARTITIONS`` asked for it), anything else leaves the topic
    as it is and logs a warning naming the counts.
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    admin = AIOKafkaAdminClient(
        **client_options(settings),
        client_id="ledger-admin",
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        existing = set(await asyncio.wait_for(admin.list_topics(), timeout_s))
        created = await _create_topics(
            admin, [n for n in wanted if n not in existing], partitions, replication_factor,
            timeout_s)
        await _grow_topics(admin, [n for n in wanted if n in existing], partitions,
                           grow=grow, timeout_s=timeout_s)
    except TRANSLATED_ERRORS as exc:
        raise unavailable(exc, "create topics") from None
    finally:
        with contextlib.suppress(*TRANSLATED_ERRORS):
            await asyncio.wait_for(admin.close(), 10)
    return created


async def _create_topics(
    admin: AIOKafkaAdminClient, missing: list[str], partitions: int, replication_factor: int,
    timeout_s: float,
) -> list[str]:
    if not missing:
        return []
    response = await asyncio.wait_for(
        admin.create_topics([NewTopic(n, partitions, replication_factor) for n in missing],
                            timeout_ms=int(timeout_s * 1000)),
        timeout_s * 2,
    )
    created = []
    for error in response.topic_errors:
        name, code = error[0], error[1]
        message = error[2] if len(error) > 2 else ""
        if code == 0:
            created.append(name)
        elif code in _TOPIC_CONFIG_ERRORS:
            raise ConfigError(f"Kafka refused to create topic {name}: {code} {message}")
        elif code != _TOPIC_ALREADY_EXISTS:
            raise KafkaUnavailable(f"Kafka could not create topic {name}: {code} {message}")
    return created


async def _grow_topics(
    admin: AIOKafkaAdminClient, present: list[str], partitions: int, *, grow: bool,
    timeout_s: float,
) -> None:
    if not present:
        return
    described = await asyncio.wait_for(admin.describe_topics(present), timeout_s)
    short = {d["topic"]: len(d.get("partitions", [])) for d in described
             if len(d.get("partitions", [])) < partitions}
    if not short:
        return
    if not grow:
        for name, count in sorted(short.items()):
            log.warning(
                "topic has fewer partitions than configured; left as it is (growing it "
                "reorders keys: do it deliberately, e.g. kafka-topics.sh --alter)",
                extra={"topic": name, "partitions": count, "configured": partitions},
            )
        return
    await asyncio.wait_for(
        admin.create_partitions({n: NewPartitions(total_count=partitions) for n in short}),
        timeout_s * 2,
    )
    log.info("topics grown", extra={"topics": sorted(short), "partitions": partitions})


_TOPIC_ALREADY_EXISTS: Final = 36
# INVALID_TOPIC_EXCEPTION, INVALID_PARTITIONS, INVALID_REPLICATION_FACTOR, INVALID_CONFIG
_TOPIC_CONFIG_ERRORS: Final = frozenset({17, 37, 38, 40})


async def committed_offsets(settings: Settings, group: str) -> dict[int, int]:
    """A consumer group's committed offset per partition of every topic it consumes (the
    next offset it will read); partitions with no commit are left out."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        await admin.start()
        offsets = await admin.list_consumer_group_offsets(group)
    except TRANSLATED_ERRORS as exc:
        raise unavailable(exc, "read committed offsets") from None
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
