"""``ledger kafka-acls``: the Kafka ACLs this deployment needs, printed or applied.

* ``ledger kafka-acls`` prints one ``kafka-acls.sh`` command per ACL, for the topic and group
  names of the current settings (``LEDGER_TOPIC_*``, ``LEDGER_*_GROUP``): review them, then
  run them with Kafka's own tool and an administrator's ``--command-config``.
* ``ledger kafka-acls --apply`` creates them directly, connected as ``KAFKA_SSL_CERTFILE``
  (which must be an administrator's certificate). Creating an ACL that exists changes
  nothing, so it is safe to repeat.

``--principal`` limits the output to some principals (default: all of
:data:`shared.kafka_acls.PRINCIPALS`). The table itself is in :mod:`shared.kafka_acls` and
docs/security.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

from shared.kafka_acls import PRINCIPALS, apply_acls, kafka_acls_commands, pipeline_acls
from shared.settings import Settings

__all__ = ["register"]


def cmd_kafka_acls(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    acls = pipeline_acls(settings, args.principal or PRINCIPALS)
    if not args.apply:
        for line in kafka_acls_commands(acls, bootstrap=settings.kafka_bootstrap_servers,
                                        command_config=args.command_config):
            print(line)
        return 0
    asyncio.run(apply_acls(settings, acls))
    for acl in acls:
        print(f"allowed: {acl}", file=sys.stderr)
    print(f"{len(acls)} ACL(s) in place on {settings.kafka_bootstrap_servers}", file=sys.stderr)
    return 0


def register(register_command: Callable[..., None]) -> None:
    def configure(p: argparse.ArgumentParser) -> None:
        p.add_argument("--apply", action="store_true",
                       help="create the ACLs (as KAFKA_SSL_CERTFILE, an administrator)")
        p.add_argument("--principal", action="append", choices=PRINCIPALS, default=None,
                       help="only this principal's ACLs (repeatable; default: all)")
        p.add_argument("--command-config", default="admin.properties",
                       help="the --command-config file named in the printed commands")

    register_command("kafka-acls", "print (or --apply) the Kafka ACLs of the pipeline",
                     configure, cmd_kafka_acls)
