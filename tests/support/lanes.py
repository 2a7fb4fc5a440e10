"""A private lane on the shared test stack: topics and consumer groups of one test's own.

Tests share one Kafka cluster; each names its topics and groups after a fresh prefix so that
no test reads another's records or joins another's group.
"""

from __future__ import annotations

import uuid
from typing import Any

from shared.kafka_acls import apply_acls, pipeline_acls
from shared.kafka_admin import ensure_topics
from shared.settings import Settings

__all__ = ["lane_topics", "new_prefix", "private_lane"]


def new_prefix(letter: str) -> str:
    """A fresh prefix: ``letter`` (which test file, for a reader of the broker's topic list)
    and ten hex digits."""
    return f"{letter}{uuid.uuid4().hex[:10]}"


async def private_lane(settings: Settings, prefix: str, partitions: int, **changes: Any) -> Settings:
    """``settings`` with every topic and consumer group named after ``prefix`` (plus
    ``changes``), the topics and their dead-letter topics created with ``partitions``."""
    s = settings.model_copy(update={
        "topic_append": f"{prefix}.append",
        "topic_signed": f"{prefix}.signed",
        "topic_anchored": f"{prefix}.anchored",
        "signer_group": f"{prefix}-signer",
        "anchorer_group": f"{prefix}-anchorer",
        **changes,
    })
    await lane_topics(s, partitions)
    return s


async def lane_topics(settings: Settings, partitions: int) -> None:
    """Create the topics ``settings`` name (and their dead-letter topics) with
    ``partitions`` partitions, and, on a broker with authorisation (the local stack's mutual
    TLS), grant the stages' principals the pipeline's ACLs on them (as the administrator,
    ``settings``' own certificate): the stages of a lane then run with exactly the
    permissions they have in production."""
    s = settings
    await ensure_topics(s, [s.topic_append, s.topic_signed, s.topic_anchored,
                            f"{s.topic_append}.dlq", f"{s.topic_signed}.dlq"], partitions)
    if s.kafka_security_protocol == "SSL":
        await apply_acls(s, pipeline_acls(s))
