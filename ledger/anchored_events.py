"""The retained ``ledger.anchored`` events as a record of the ledger's batches kept outside
the database: finding the batches the database has lost, and checking them before a restore.

Every event carries everything about its entry and its batch (the signed entry, its leaf
index and audit path, the batch's manifest and anchor signature, the Rekor receipt: see
:class:`shared.messages.AnchoredEntry`), so the events of one batch, all of them, are
enough to rebuild the batch's rows. Nothing here trusts an event: :func:`check_batch`
verifies each one with :func:`shared.bundle.verify_bundle` against the pinned Rekor key,
requires every leaf of the batch exactly once with one batch and one receipt, and recomputes
the root from the leaves; the caller then compares the receipt with what Rekor serves.

:func:`read_lost_batches` reads a topic from its beginning to its end (a throwaway consumer
group that never commits) and keeps only the events of batches the database does not have,
so memory grows with what was lost, not with the ledger.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from shared import fastjson
from shared.bundle import BundleVerificationError, verify_bundle
from shared.errors import ConfigError, InvalidMessage, RekorError
from shared.kafka import make_consumer
from shared.merkle import MerkleTree
from shared.messages import AnchoredEntry, decode, decode_object
from shared.records import BatchRecord, EntryRecord
from shared.settings import Settings
from shared.statement import content_sha256, leaf_bytes, parse_time
from shared.verify import LogKey, RekorReceipt

__all__ = ["EventBatch", "EventScan", "batch_record", "check_batch", "entry_records",
           "read_lost_batches", "receipt_of",
           "rekor_problems"]


#: how long the scan waits to be given the topic's partitions before it gives up
_ASSIGN_S = 60.0


@dataclass
class EventBatch:
    """The events of one batch found in the topic, by leaf index (the first of each)."""

    batch_id: uuid.UUID
    events: dict[int, AnchoredEntry] = field(default_factory=dict)
    raw: dict[int, bytes] = field(default_factory=dict)
    repeated: int = 0  # events seen again (the anchorer may emit an entry more than once)
    differing: list[str] = field(default_factory=list)

    def add(self, event: AnchoredEntry, value: bytes) -> None:
        first = self.events.get(event.leaf_index)
        if first is None:
            self.events[event.leaf_index], self.raw[event.leaf_index] = event, value
        elif first != event:
            self.differing.append(f"two different events for leaf {event.leaf_index}")
        else:
            self.repeated += 1

    @property
    def any(self) -> AnchoredEntry:
        return next(iter(self.events.values()))


@dataclass
class EventScan:
    """What reading the topic found."""

    topic: str
    events: int = 0
    batches_seen: int = 0
    unreadable: int = 0  # not a ledger.anchored v1 event (e.g. another receipt version)
    lost: dict[uuid.UUID, EventBatch] = field(default_factory=dict)


async def read_lost_batches(
    settings: Settings,
    topic: str,
    *,
    present: Callable[[uuid.UUID], Awaitable[bool]],
    only: Iterable[uuid.UUID] | None = None,
    timeout_s: float = 600.0,
    on_events: Callable[[int], None] | None = None,
) -> EventScan:
    """Read ``topic`` to its end; keep the events of each batch for which ``present`` (asked
    once per batch) is false. ``only`` restricts the scan to those batch ids."""
    wanted = None if only is None else set(only)
    scan = EventScan(topic=topic)
    known: dict[uuid.UUID, bool] = {}
    consumer = await make_consumer(
        settings, group_id=f"ledger-events-scan-{uuid.uuid4().hex[:12]}", topics=[topic],
        client_id="ledger-events-scan")
    started = time.monotonic()
    deadline = started + timeout_s
    try:
        while True:
            if not consumer.assignment() and time.monotonic() > started + _ASSIGN_S:
                raise ConfigError(f"no partition of {topic} was assigned within "
                                  f"{_ASSIGN_S:.0f}s: does the topic exist?")
            if time.monotonic() > deadline:
                raise ConfigError(f"{topic} was not read to its end within {timeout_s:.0f}s "
                                  "(does the topic exist?)")
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            records = [r for rs in batches.values() for r in rs]
            for record in records:
                await _take(scan, record.value, known, wanted, present)
            if records:
                if on_events is not None:
                    on_events(len(records))
                continue
            if consumer.assignment() and not any((await consumer.lag()).values()):
                break
    finally:
        await consumer.close()
    scan.batches_seen = len(known)
    return scan


async def _take(
    scan: EventScan, value: bytes | None, known: dict[uuid.UUID, bool],
    wanted: set[uuid.UUID] | None, present: Callable[[uuid.UUID], Awaitable[bool]],
) -> None:
    scan.events += 1
    try:
        batch_id = uuid.UUID(str(decode_object(value)["batch"]["batch_id"]))
    except (InvalidMessage, KeyError, TypeError, ValueError):
        scan.unreadable += 1
        return
    if wanted is not None and batch_id not in wanted:
        return
    if batch_id not in known:
        known[batch_id] = await present(batch_id)
    if known[batch_id]:
        return
    try:
        event = decode(AnchoredEntry, value)
    except InvalidMessage:
        scan.unreadable += 1
        return
    assert value is not None
    scan.lost.setdefault(batch_id, EventBatch(batch_id)).add(event, value)


def receipt_of(event: AnchoredEntry) -> RekorReceipt:
    """The event's receipt in the form it is stored on a batch row."""
    info = event.receipt
    return RekorReceipt.model_validate(
        {**info.model_dump(exclude={"hashes"}), "inclusion_hashes": info.hashes})


def check_batch(batch: EventBatch, rekor_key_pem: bytes) -> list[str]:
    """Everything wrong with restoring ``batch`` from its events (empty: it may be restored):
    every event verifies, every leaf ``0..size-1`` is there with one batch and one receipt,
    and the root recomputed from the leaves is the batch's."""
    problems = list(batch.differing)
    first = batch.any
    size = first.batch.size
    missing = [i for i in range(size) if i not in batch.events]
    if missing:
        problems.append(f"the topic holds {len(batch.events)} of its {size} entries "
                        f"(no event for leaf {', '.join(map(str, missing[:10]))}"
                        f"{', ...' if len(missing) > 10 else ''})")
    extra = sorted(i for i in batch.events if i >= size)
    if extra:
        problems.append(f"events for leaf {extra[:10]} beyond the batch's size {size}")
    for index in sorted(batch.events):
        event = batch.events[index]
        if event.batch != first.batch or event.receipt != first.receipt:
            problems.append(f"the event for leaf {index} names another batch or receipt")
        try:
            verify_bundle(batch.raw[index], rekor_public_key_pem=rekor_key_pem)
        except BundleVerificationError as exc:
            problems.append(f"the event for leaf {index} (entry {event.entry.entry_id}) does "
                            f"not verify: {exc}")
    if not problems:
        leaves = [_leaf(batch.events[i]) for i in range(size)]
        root = MerkleTree.from_data(leaves).root.hex()
        if root != first.batch.root:
            problems.append(f"the leaves give root {root}, the batch's root is "
                            f"{first.batch.root}")
    return problems


def _leaf(event: AnchoredEntry) -> bytes:
    e = event.entry
    return leaf_bytes(entry_id=e.entry_id, statement=_statement(event), signature=e.signature,
                      key_name=e.key_name, key_version=e.key_version)


def _statement(event: AnchoredEntry) -> bytes:
    return base64.b64decode(event.entry.statement, validate=True)


def batch_record(batch: EventBatch) -> BatchRecord:
    """The ``ledger.batches`` row the events describe (anchored, with its receipt)."""
    first = batch.any
    info = first.batch
    manifest = base64.b64decode(info.manifest, validate=True)
    try:
        created_at = parse_time(fastjson.loads(manifest)["created_at"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"the batch manifest has no creation time: {exc}") from None
    return BatchRecord(
        id=info.batch_id, created_at=created_at, state="anchored", size=info.size,
        root_hash=info.root, manifest=manifest, manifest_sha256=info.manifest_sha256,
        anchor_sig=base64.b64decode(info.anchor_signature, validate=True),
        anchor_key_version=info.anchor_key_version, anchor_pubkey=info.anchor_public_key,
        receipt=receipt_of(first), anchored_at=min(e.anchored_at for e in batch.events.values()),
    )


def entry_records(batch: EventBatch) -> list[EntryRecord]:
    """The ``ledger.entries`` rows the events describe, in leaf order, as members of the
    anchored batch."""
    receipt = batch.any.receipt
    rows = []
    for index in sorted(batch.events):
        event = batch.events[index]
        e = event.entry
        statement = _statement(event)
        record = EntryRecord(
            id=e.entry_id, request_id=e.request_id, subject=e.subject,
            payload_hash=e.payload_sha256, meta=dict(e.meta), submitted_at=e.submitted_at,
            created_at=e.created_at, statement=statement, sig=e.signature,
            key_name=e.key_name, key_version=e.key_version, pubkey=e.public_key,
            content_sha256=content_sha256(subject=e.subject, payload_sha256=e.payload_sha256,
                                          meta=dict(e.meta)),
            batch_id=batch.batch_id, leaf_index=index, rekor_log_id=receipt.uuid,
            rekor_index=receipt.log_index, anchored_at=event.anchored_at,
        )
        rows.append(record)
    return rows


async def rekor_problems(rekor: Any, batch: EventBatch, log_key: LogKey) -> list[str]:
    """Does Rekor serve the entry the events' receipt names, and is it that entry (verified
    against ``log_key``, same body, time, index and log id)? Empty: yes."""
    from ledger.audit.batches import check_online_entry  # noqa: PLC0415 - ledger.audit uses us

    record = batch_record(batch)
    assert record.receipt is not None
    try:
        fetched = await rekor.get_entry_by_uuid(record.receipt.uuid)
    except (ValueError, RekorError) as exc:
        return [f"Rekor has no entry {record.receipt.uuid}: {exc}"]
    return [p.detail for p in check_online_entry(record, fetched.response, log_key)]
