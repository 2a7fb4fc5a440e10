"""The Kafka ACLs of the pipeline: one principal per component, each allowed only its own work.

=============  ===========================================================================
principal      allowed
=============  ===========================================================================
``ingest``     write ``ledger.append``; read ``ledger.signed`` (``POST /append`` answers
               201 once it sees its entry signed; no consumer group)
``signer``     read ``ledger.append`` in group ``ledger-signer``; write ``ledger.signed``
               and ``ledger.append.dlq``
``anchorer``   read ``ledger.signed`` in group ``ledger-anchorer``; write
               ``ledger.anchored`` and ``ledger.signed.dlq``
``producer``   write ``ledger.append`` (any other system that appends entries)
``consumer``   read ``ledger.anchored`` in groups named ``ledger-downstream-*``
=============  ===========================================================================

Everything else is refused: the brokers run with ``allow.everyone.if.no.acl.found=false``,
and only their own principal and an administrator are super users (topic creation, the
``ledger dlq`` tool). READ and WRITE imply DESCRIBE; an idempotent producer needs no
``IdempotentWrite`` on the cluster once it may write a topic (KIP-679).

Topic and group names come from the settings (``LEDGER_TOPIC_*``, ``LEDGER_*_GROUP``), so the
ACLs follow a deployment's renamed topics. :func:`pipeline_acls` lists them,
:func:`kafka_acls_commands` prints them as ``kafka-acls.sh`` commands for an operator, and
:func:`apply_acls` creates them over an administrator's connection (the local stack, the
compose file's ``kafka-init`` job, ``ledger kafka-acls --apply``). Creating an ACL that exists
is a no-op, so applying is safe to repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.admin import CreateAclsRequest

from shared.errors import ConfigError
from shared.kafka import TRANSLATED_ERRORS, unavailable
from shared.kafka_tls import client_options
from shared.settings import Settings

__all__ = ["DOWNSTREAM_GROUP_PREFIX", "PRINCIPALS", "Acl", "apply_acls", "kafka_acls_commands",
           "pipeline_acls"]

#: the principals the ACLs name (the CN of each component's client certificate)
PRINCIPALS: Final = ("ingest", "signer", "anchorer", "producer", "consumer")
#: downstream consumers join groups with this prefix (a group name is not a secret, but a
#: consumer that could join ``ledger-signer`` could stall the signer with rebalances)
DOWNSTREAM_GROUP_PREFIX: Final = "ledger-downstream-"

Resource = Literal["topic", "group"]
Operation = Literal["READ", "WRITE"]

# Kafka's protocol codes (org.apache.kafka.common.{resource,acl})
_RESOURCE_TYPE: Final = {"topic": 2, "group": 3}
_OPERATION: Final = {"READ": 3, "WRITE": 4}
_PATTERN: Final = {False: 3, True: 4}  # LITERAL, PREFIXED
_ALLOW: Final = 3
_NONE: Final = 0


@dataclass(frozen=True, slots=True)
class Acl:
    """ALLOW ``principal`` to ``operation`` on a topic or group (from any host)."""

    principal: str
    operation: Operation
    resource: Resource
    name: str
    prefixed: bool = False

    def __str__(self) -> str:
        match = "prefix " if self.prefixed else ""
        return f"User:{self.principal} {self.operation} {self.resource} {match}{self.name}"


def pipeline_acls(settings: Settings, principals: Iterable[str] = PRINCIPALS) -> list[Acl]:
    """The ACLs of ``principals`` for the topics and groups ``settings`` name."""
    s = settings
    table: dict[str, list[Acl]] = {
        "ingest": [Acl("ingest", "WRITE", "topic", s.topic_append),
                   Acl("ingest", "READ", "topic", s.topic_signed)],
        "signer": [Acl("signer", "READ", "topic", s.topic_append),
                   Acl("signer", "READ", "group", s.signer_group),
                   Acl("signer", "WRITE", "topic", s.topic_signed),
                   Acl("signer", "WRITE", "topic", f"{s.topic_append}.dlq")],
        "anchorer": [Acl("anchorer", "READ", "topic", s.topic_signed),
                     Acl("anchorer", "READ", "group", s.anchorer_group),
                     Acl("anchorer", "WRITE", "topic", s.topic_anchored),
                     Acl("anchorer", "WRITE", "topic", f"{s.topic_signed}.dlq")],
        "producer": [Acl("producer", "WRITE", "topic", s.topic_append)],
        "consumer": [Acl("consumer", "READ", "topic", s.topic_anchored),
                     Acl("consumer", "READ", "group", DOWNSTREAM_GROUP_PREFIX, prefixed=True)],
    }
    unknown = sorted(set(principals) - set(table))
    if unknown:
        raise ConfigError(f"unknown Kafka principal(s) {unknown}; one of {list(PRINCIPALS)}")
    return [acl for name in principals for acl in table[name]]


def kafka_acls_commands(acls: Sequence[Acl], *, bootstrap: str = "BROKER:9093",
                        command_config: str = "admin.properties") -> list[str]:
    """The ``kafka-acls.sh`` command lines that create ``acls`` (one per ACL)."""
    lines = []
    for acl in acls:
        args = ["kafka-acls.sh", "--bootstrap-server", bootstrap,
                "--command-config", command_config, "--add",
                "--allow-principal", f"User:{acl.principal}",
                "--operation", acl.operation.capitalize(), f"--{acl.resource}", acl.name]
        if acl.prefixed:
            args += ["--resource-pattern-type", "prefixed"]
        lines.append(shlex.join(args))
    return lines


async def apply_acls(settings: Settings, acls: Sequence[Acl], *,
                     timeout_s: float = 30.0) -> None:
    """Create ``acls`` with ``settings``' credentials (an administrator's). Existing ACLs
    stay as they are; :class:`ConfigError` when the broker refuses one (it names the ACL and
    Kafka's reason: not an administrator, or no authorizer configured)."""
    client = AIOKafkaClient(**client_options(settings), client_id="ledger-acls",
                            request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        node = client.get_random_node()
        for acl in acls:
            request = CreateAclsRequest(
                _RESOURCE_TYPE[acl.resource], acl.name, _PATTERN[acl.prefixed],
                f"User:{acl.principal}", "*", _OPERATION[acl.operation], _ALLOW)
            response = await asyncio.wait_for(client.send(node, request), timeout_s)
            for code, message in response.creation_responses:
                if code != _NONE:
                    raise ConfigError(f"Kafka refused the ACL {acl} (error {code}: "
                                      f"{message or 'no message'})")
    except TRANSLATED_ERRORS as exc:
        raise unavailable(exc, "create ACLs") from None
    finally:
        with contextlib.suppress(*TRANSLATED_ERRORS):
            await asyncio.wait_for(client.close(), 10)
