"""``ledger dlq``: look at and replay dead-lettered messages.

* ``ledger dlq show TOPIC.dlq`` prints every message of a dead-letter topic as one JSON line:
  where it came from, which stage refused it and why, its key, and its value (values on the
  pipeline's topics hold hashes and metadata, never payloads). Reads with a throwaway
  consumer group that never commits, so it can be run any number of times.
* ``ledger dlq replay TOPIC.dlq`` republishes messages to the topic they came from (after
  the cause was fixed: a Vault key created, a producer corrected …). Progress is committed
  in a consumer group (default ``ledger-dlq-replay``), so a replay that is interrupted and
  run again does not republish what it already did; ``--reason`` replays only messages
  whose reason contains that text (the others are passed over for that group — use
  ``--group`` to start over with a new one); ``--dry-run`` only shows what would be sent.

Replaying is safe: the stages are idempotent, and a message that is still invalid is simply
dead-lettered again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from shared.errors import ConfigError
from shared.kafka import DLQ_HEADERS, DLQ_SUFFIX, Consumer, Record, make_consumer, make_producer
from shared.settings import Settings

__all__ = ["describe", "register"]


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", errors="replace")


def describe(record: Record) -> dict[str, Any]:
    """One dead-lettered record as a JSON-ready dict."""
    value: Any
    try:
        value = json.loads(record.value) if record.value is not None else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        value = {"undecodable_bytes": len(record.value or b"")}
    return {
        "dlq": f"{record.topic}/{record.partition}@{record.offset}",
        **{name.removeprefix("dlq."): _text(record.header(name)) for name in DLQ_HEADERS},
        "key": _text(record.key),
        "value": value,
    }


async def _drain(
    consumer: Consumer, handle: Callable[[list[Record]], Any], *, timeout_s: float
) -> None:
    """Feed ``handle`` every record up to the end of the assigned partitions, then return."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=500, max_records=500)
        records = [r for rs in batches.values() for r in rs]
        if records:
            await handle(records)
            continue
        if consumer.assignment() and not any((await consumer.lag()).values()):
            return
    raise ConfigError(f"the dead-letter topic was not read to its end within {timeout_s:.0f}s")


async def _show(settings: Settings, topic: str, timeout_s: float) -> int:
    consumer = await make_consumer(
        settings, group_id=f"ledger-dlq-show-{uuid.uuid4().hex[:12]}", topics=[topic],
        client_id="ledger-dlq-show",
    )
    count = 0

    async def handle(records: list[Record]) -> None:
        nonlocal count
        for record in records:
            print(json.dumps(describe(record), sort_keys=True))
            count += 1

    try:
        await _drain(consumer, handle, timeout_s=timeout_s)
    finally:
        await consumer.close()
    print(f"{count} message(s) in {topic}", file=sys.stderr)
    return 0


async def _replay(
    settings: Settings, topic: str, *, group: str, reason: str | None, dry_run: bool,
    timeout_s: float,
) -> int:
    consumer = await make_consumer(
        settings, group_id=group, topics=[topic], client_id="ledger-dlq-replay"
    )
    producer = None if dry_run else await make_producer(settings, client_id="ledger-dlq-replay")
    sent = skipped = 0

    async def handle(records: list[Record]) -> None:
        nonlocal sent, skipped
        for record in records:
            why = _text(record.header("dlq.reason")) or ""
            source = _text(record.header("dlq.source.topic")) or topic.removesuffix(DLQ_SUFFIX)
            if reason is not None and reason not in why:
                skipped += 1
                continue
            print(json.dumps({"replay": describe(record)["dlq"], "to": source, "reason": why}))
            if producer is not None:
                headers = {k: v for k, v in record.headers if not k.startswith("dlq.")}
                await producer.send(source, record.key, record.value or b"", headers)
            sent += 1
        if producer is not None:  # only after every send above was acknowledged
            offsets: dict[Any, int] = {}
            for record in records:
                offsets[record.tp] = max(offsets.get(record.tp, 0), record.offset + 1)
            await consumer.commit(offsets)

    try:
        await _drain(consumer, handle, timeout_s=timeout_s)
    finally:
        await consumer.close()
        if producer is not None:
            await producer.close()
    verb = "would replay" if dry_run else "replayed"
    print(f"{verb} {sent} message(s), passed over {skipped}", file=sys.stderr)
    return 0


def _check_topic(topic: str) -> str:
    if not topic.endswith(DLQ_SUFFIX):
        raise ConfigError(f"{topic!r} is not a dead-letter topic (its name ends in {DLQ_SUFFIX})")
    return topic


def cmd_show(args: argparse.Namespace) -> int:
    return asyncio.run(_show(Settings.from_env(), _check_topic(args.topic), args.timeout))


def cmd_replay(args: argparse.Namespace) -> int:
    return asyncio.run(
        _replay(
            Settings.from_env(), _check_topic(args.topic), group=args.group, reason=args.reason,
            dry_run=args.dry_run, timeout_s=args.timeout,
        )
    )


def register(register_command: Callable[..., None]) -> None:
    def configure(p: argparse.ArgumentParser) -> None:
        sub = p.add_subparsers(dest="dlq_command", required=True)
        show = sub.add_parser("show", help="print a dead-letter topic's messages as JSON lines")
        show.add_argument("topic", help="e.g. ledger.append.dlq")
        show.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
        show.set_defaults(func=cmd_show)
        replay = sub.add_parser("replay", help="republish messages to their source topic")
        replay.add_argument("topic", help="e.g. ledger.append.dlq")
        replay.add_argument("--reason", default=None, help="only reasons containing this text")
        replay.add_argument("--group", default="ledger-dlq-replay",
                            help="consumer group that records progress")
        replay.add_argument("--dry-run", action="store_true", help="send nothing")
        replay.add_argument("--timeout", type=float, default=120.0, help="seconds (default 120)")
        replay.set_defaults(func=cmd_replay)

    register_command("dlq", "inspect and replay dead-letter topics", configure, cmd_show)
