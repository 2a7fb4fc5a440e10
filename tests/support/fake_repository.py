"""An in-memory :class:`shared.repository.Repository` for unit tests.

``tests/integration/test_repository_contract.py`` runs the same scenarios against this fake
and the real repository on PostgreSQL, so the fake keeps the real one's behaviour: idempotent
inserts by request id, all-or-nothing claims (:class:`ClaimRaced`), completion once, the
``older_than_s`` filters, first pin wins.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from shared.errors import ClaimRaced, DatabaseUnavailable
from shared.records import BatchRecord, EntryRecord, LeafRecord, NewBatch, NewEntry
from shared.repository import EntryQuery, StoredCheckpoint
from shared.verify import Receipt

__all__ = ["FakeRepository"]


class FakeRepository:
    """The ledger's tables as dictionaries. ``down`` makes every call fail as the database
    being unreachable does; ``clock`` is the database's ``now()``."""

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self.clock = clock or (lambda: datetime.now(UTC))
        self.entries_by_id: dict[uuid.UUID, EntryRecord] = {}
        self.batches: dict[uuid.UUID, BatchRecord] = {}
        self.checkpoints: dict[tuple[str, int], StoredCheckpoint] = {}
        self.pins: dict[str, str] = {}
        self.down = False
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.down:
            raise DatabaseUnavailable(f"database unreachable (fake, during {name})")

    def _by_request_id(self) -> dict[str, EntryRecord]:
        return {e.request_id: e for e in self.entries_by_id.values()}

    # --- entries: the signer --------------------------------------------------------------

    async def entries_by_request_id(self, request_ids: Sequence[str]) -> dict[str, EntryRecord]:
        self._call("entries_by_request_id")
        stored = self._by_request_id()
        return {r: stored[r] for r in request_ids if r in stored}

    async def insert_entries(
        self, entries: Sequence[NewEntry]
    ) -> tuple[dict[str, datetime], dict[str, EntryRecord]]:
        self._call("insert_entries")
        stored = self._by_request_id()
        new: dict[str, datetime] = {}
        others: dict[str, EntryRecord] = {}
        now = self.clock()  # one transaction: one now() for every row it stores
        for e in entries:
            if e.request_id in stored:
                if e.request_id not in new:
                    others[e.request_id] = stored[e.request_id]
                continue
            record = EntryRecord(
                id=e.id, request_id=e.request_id, subject=e.subject,
                payload_hash=e.payload_hash, meta=dict(e.meta), submitted_at=e.submitted_at,
                created_at=now, statement=e.statement, sig=e.sig, key_name=e.key_name,
                key_version=e.key_version, pubkey=e.pubkey, content_sha256=e.content_sha256,
                stored_leaf_hash=e.leaf_hash(),
            )
            self.entries_by_id[e.id] = stored[e.request_id] = record
            new[e.request_id] = now
        return new, others

    def add_entry(self, record: EntryRecord) -> None:
        """Store a row as it stands (e.g. one the signer stored earlier)."""
        self.entries_by_id[record.id] = record

    # --- entries: reading -----------------------------------------------------------------

    async def entry(self, entry_id: uuid.UUID) -> EntryRecord | None:
        self._call("entry")
        return self.entries_by_id.get(entry_id)

    async def entries(self, query: EntryQuery) -> list[EntryRecord]:
        self._call("entries")

        def keep(e: EntryRecord) -> bool:
            key, after = (e.created_at, e.id), query.after
            return (
                (query.subject is None or e.subject == query.subject)
                and (query.created_from is None or e.created_at >= query.created_from)
                and (query.created_to is None or e.created_at < query.created_to)
                and (query.anchored is None or (e.anchored_at is not None) == query.anchored)
                and (query.payload_hash is None or e.payload_hash == query.payload_hash)
                and (after is None or (key > after if query.order == "asc" else key < after))
            )

        rows = sorted((e for e in self.entries_by_id.values() if keep(e)),
                      key=lambda e: (e.created_at, e.id), reverse=query.order == "desc")
        return rows[: query.limit]

    async def entries_for(self, ids: Sequence[uuid.UUID]) -> list[EntryRecord]:
        self._call("entries_for")
        return [self.entries_by_id[i] for i in dict.fromkeys(ids) if i in self.entries_by_id]

    async def leaves(self, ids: Sequence[uuid.UUID]) -> list[LeafRecord]:
        self._call("leaves")
        return [self.entries_by_id[i].leaf_record() for i in dict.fromkeys(ids)
                if i in self.entries_by_id]

    async def batch_leaves(self, batch_id: uuid.UUID) -> list[LeafRecord]:
        self._call("batch_leaves")
        return [m.leaf_record() for m in self._members(batch_id)]

    async def members(self, batch_id: uuid.UUID) -> list[EntryRecord]:
        self._call("members")
        return self._members(batch_id)

    def _members(self, batch_id: uuid.UUID) -> list[EntryRecord]:
        members = [e for e in self.entries_by_id.values() if e.batch_id == batch_id]
        return sorted(members, key=lambda e: e.leaf_index or 0)

    async def unbatched_entries(
        self, *, older_than_s: float, limit: int, skip: Sequence[uuid.UUID] = ()
    ) -> list[uuid.UUID]:
        self._call("unbatched_entries")
        cutoff = self.clock() - timedelta(seconds=older_than_s)
        skipped = set(skip)
        rows = sorted((e for e in self.entries_by_id.values()
                       if e.batch_id is None and e.created_at < cutoff
                       and e.id not in skipped),
                      key=lambda e: (e.created_at, e.id))
        return [e.id for e in rows[:limit]]

    # --- batches ----------------------------------------------------------------------------

    async def batch(self, batch_id: uuid.UUID) -> BatchRecord | None:
        self._call("batch")
        return self.batches.get(batch_id)

    async def pending_batches(self, *, older_than_s: float, limit: int) -> list[uuid.UUID]:
        self._call("pending_batches")
        cutoff = self.clock() - timedelta(seconds=older_than_s)
        rows = sorted((b for b in self.batches.values()
                       if b.state == "pending" and b.created_at < cutoff),
                      key=lambda b: b.created_at)
        return [b.id for b in rows[:limit]]

    async def pending_count(self) -> int:
        self._call("pending_count")
        return sum(1 for b in self.batches.values() if b.state == "pending")

    async def unanchored_oldest_age_s(self) -> float:
        self._call("unanchored_oldest_age_s")
        oldest = min((e.created_at for e in self.entries_by_id.values()
                      if e.anchored_at is None), default=None)
        return 0.0 if oldest is None else max(0.0, (self.clock() - oldest).total_seconds())

    async def claim(self, batch: NewBatch) -> None:
        self._call("claim")
        free = [i for i in batch.member_ids
                if i in self.entries_by_id and self.entries_by_id[i].batch_id is None]
        if len(free) != batch.size:
            raise ClaimRaced(f"claimed {len(free)} of {batch.size}")
        for index, entry_id in enumerate(batch.member_ids):
            self.entries_by_id[entry_id] = dataclasses.replace(
                self.entries_by_id[entry_id], batch_id=batch.id, leaf_index=index)
        self.batches[batch.id] = BatchRecord(
            id=batch.id, created_at=batch.created_at, state="pending", size=batch.size,
            root_hash=batch.root_hex, manifest=batch.manifest,
            manifest_sha256=batch.manifest_sha256.hex(), anchor_sig=batch.anchor_sig,
            anchor_key_version=batch.anchor_key_version, anchor_pubkey=batch.anchor_pubkey,
        )

    async def complete(self, batch_id: uuid.UUID, receipt: Receipt) -> datetime | None:
        self._call("complete")
        batch = self.batches.get(batch_id)
        if batch is None or batch.state != "pending":
            return None
        anchored_at = self.clock()
        self.batches[batch_id] = dataclasses.replace(
            batch, state="anchored", receipt=receipt, anchored_at=anchored_at)
        for member in self._members(batch_id):
            self.entries_by_id[member.id] = dataclasses.replace(
                member, rekor_log_id=receipt.uuid, rekor_index=receipt.log_index,
                anchored_at=anchored_at)
        if receipt.checkpoint is not None:
            self.checkpoints.setdefault((receipt.log_id, receipt.tree_size), StoredCheckpoint(
                log_id=receipt.log_id, tree_size=receipt.tree_size,
                root_hash=receipt.root_hash.lower(), checkpoint=receipt.checkpoint))
        return anchored_at

    # --- Rekor checkpoints and the pinned log key -------------------------------------------

    async def latest_checkpoint(self, log_id: str, origin: str) -> StoredCheckpoint | None:
        self._call("latest_checkpoint")
        same = [c for (lid, _), c in self.checkpoints.items()
                if lid == log_id and c.checkpoint.startswith(origin + "\n")]
        return max(same, key=lambda c: c.tree_size, default=None)

    async def store_checkpoint(
        self, *, log_id: str, tree_size: int, root_hash: str, checkpoint: str
    ) -> None:
        self._call("store_checkpoint")
        self.checkpoints.setdefault((log_id, tree_size), StoredCheckpoint(
            log_id=log_id, tree_size=tree_size, root_hash=root_hash, checkpoint=checkpoint))

    async def pin_log_key(self, *, rekor_url: str, pem: str, log_id: str) -> str:
        self._call("pin_log_key")
        return self.pins.setdefault(rekor_url, pem)

    async def pinned_log_key(self, rekor_url: str) -> str | None:
        self._call("pinned_log_key")
        return self.pins.get(rekor_url)

    async def health(self, *, timeout_s: float) -> bool:
        return not self.down
