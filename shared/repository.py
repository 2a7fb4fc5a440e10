"""Every statement on the ledger's tables, in one place.

``ledger.entries`` and ``ledger.batches`` are read and written only here (the rows they map
to are in :mod:`shared.records`), as are ``ledger.checkpoints`` and ``ledger.rekor_pins``.
The signer inserts entries, the anchorer claims and completes batches, ingest and
``ledger audit`` read. Rules this module keeps, so that several signers, anchorers and
sweepers can work on the same rows at once:

* an entry is inserted once per request id (``ON CONFLICT (request_id) DO NOTHING``, then
  a fresh read of the rows another process stored first);
* an entry's ``batch_id`` is set once: the claim is ``UPDATE ... WHERE batch_id IS NULL``
  inside a transaction that also inserts the batch row (manifest, anchor signature, state
  ``pending``); if any member was claimed meanwhile (its row lock makes the UPDATE re-check
  ``batch_id IS NULL``, so the row count comes up short) the whole transaction is rolled
  back (:class:`ClaimRaced`) and the caller re-plans with the rows still free;
* completing a batch is ``UPDATE ... WHERE state = 'pending'``: completing an anchored batch
  again changes nothing;
* inserts, claims and completions rely on row locks alone, so they run READ COMMITTED on
  PostgreSQL: serializable transactions there take predicate locks on every row and index
  page read, which with several batches in flight cost more than twice the CPU of the
  writes and abort one another on false conflicts (measured; see ``docs/design.md``).
  CockroachDB runs them serializable unless read committed is enabled, which is just as
  correct;
* no external call happens inside a transaction (``Database.transaction`` may re-run it).

SQL stays within what PostgreSQL and CockroachDB both accept; JSON travels as text. Only
fixed SQL fragments are concatenated; every value is a bind parameter.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from shared import fastjson
from shared.db import Database, Row, Tx
from shared.errors import ClaimRaced
from shared.records import (
    BATCH_COLUMNS,
    ENTRY_COLUMNS,
    LEAF_COLUMNS,
    BatchRecord,
    EntryRecord,
    LeafRecord,
    NewBatch,
    NewEntry,
)
from shared.verify import Receipt, RekorReceipt

__all__ = ["AUDIT_BATCH_COLUMNS", "EntryQuery", "Repository", "StoredCheckpoint"]

Order = Literal["asc", "desc"]

_INSERT_ENTRIES = """
INSERT INTO ledger.entries
    (id, subject, payload_hash, sig, pubkey, meta, request_id, key_name, key_version,
     statement, submitted_at, content_sha256, leaf_hash)
SELECT u.id, u.subject, u.payload_hash, u.sig, u.pubkey, u.meta::jsonb, u.request_id,
       u.key_name, u.key_version, u.statement, u.submitted_at, u.content_sha256, u.leaf_hash
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::int[], $10::bytea[], $11::timestamptz[],
            $12::text[], $13::bytea[])
     AS u(id, subject, payload_hash, sig, pubkey, meta, request_id, key_name, key_version,
          statement, submitted_at, content_sha256, leaf_hash)
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id, created_at
"""
_ENTRIES_BY_REQUEST_ID = (
    f"SELECT {ENTRY_COLUMNS} FROM ledger.entries WHERE request_id = ANY($1::text[])"  # noqa: S608
)
_CLAIM = (
    "UPDATE ledger.entries AS e SET batch_id = $1, leaf_index = u.idx"
    " FROM unnest($2::uuid[], $3::int[]) AS u(id, idx)"
    " WHERE e.id = u.id AND e.batch_id IS NULL"
)
_INSERT_BATCH = (
    "INSERT INTO ledger.batches (id, created_at, state, size, root_hash, manifest,"
    " manifest_sha256, anchor_sig, anchor_key_version, anchor_pubkey)"
    " VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8, $9)"
)
_COMPLETE_BATCH = (
    "UPDATE ledger.batches SET state = 'anchored', rekor_uuid = $2,"
    " rekor_log_index = $3, rekor_log_id = $4, integrated_time = $5,"
    " receipt = $6::jsonb, anchored_at = now()"
    " WHERE id = $1 AND state = 'pending' RETURNING anchored_at"
)
# rekor_log_id keeps the runbook's meaning: the Rekor entry that anchors the row (its uuid);
# rekor_index is that entry's global log index.
_COMPLETE_MEMBERS = (
    "UPDATE ledger.entries SET rekor_log_id = $2, rekor_index = $3, anchored_at = $4"
    " WHERE batch_id = $1"
)
_INSERT_CHECKPOINT = (
    "INSERT INTO ledger.checkpoints (log_id, tree_size, root_hash, checkpoint)"
    " VALUES ($1, $2, $3, $4) ON CONFLICT (log_id, tree_size) DO NOTHING"
)
#: the ``ledger.batches`` columns the audit reads: a record's, and the Rekor columns it
#: compares with the stored receipt
AUDIT_BATCH_COLUMNS = (
    f"{BATCH_COLUMNS}, rekor_uuid, rekor_log_index, rekor_log_id, integrated_time"
)
_PINNED_KEY = "SELECT public_key FROM ledger.rekor_pins WHERE rekor_url = $1"
# ``ledger restore``: an anchored batch and its members written back from their events
_RESTORE_ENTRIES = """
INSERT INTO ledger.entries
    (id, subject, payload_hash, sig, pubkey, meta, request_id, key_name, key_version,
     statement, submitted_at, content_sha256, leaf_hash, created_at, batch_id, leaf_index,
     rekor_log_id, rekor_index, anchored_at)
SELECT u.id, u.subject, u.payload_hash, u.sig, u.pubkey, u.meta::jsonb, u.request_id,
       u.key_name, u.key_version, u.statement, u.submitted_at, u.content_sha256, u.leaf_hash,
       u.created_at, $1, u.leaf_index, $2, $3, u.anchored_at
FROM unnest($4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
            $10::text[], $11::text[], $12::int[], $13::bytea[], $14::timestamptz[],
            $15::text[], $16::bytea[], $17::timestamptz[], $18::int[], $19::timestamptz[])
     AS u(id, subject, payload_hash, sig, pubkey, meta, request_id, key_name, key_version,
          statement, submitted_at, content_sha256, leaf_hash, created_at, leaf_index,
          anchored_at)
"""
_RESTORE_ATTACH = (
    "UPDATE ledger.entries AS e SET batch_id = $1, leaf_index = u.idx, rekor_log_id = $2,"
    " rekor_index = $3, anchored_at = u.at"
    " FROM unnest($4::uuid[], $5::int[], $6::timestamptz[]) AS u(id, idx, at)"
    " WHERE e.id = u.id AND (e.batch_id IS NULL OR e.batch_id = $1)"
)
_RESTORE_BATCH = (
    "INSERT INTO ledger.batches (id, created_at, state, size, root_hash, manifest,"
    " manifest_sha256, anchor_sig, anchor_key_version, anchor_pubkey, rekor_uuid,"
    " rekor_log_index, rekor_log_id, integrated_time, receipt, anchored_at)"
    " VALUES ($1, $2, 'anchored', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb,"
    " $15)"
)


@dataclass(frozen=True, slots=True)
class EntryQuery:
    """A page of entries in ``(created_at, id)`` order (keyset pagination: a page never
    skips or repeats a row, even while rows are being inserted)."""

    subject: str | None = None
    created_from: datetime | None = None  # inclusive
    created_to: datetime | None = None  # exclusive
    anchored: bool | None = None
    #: lowercase hex SHA-256 of the payload (``entries_payload_hash_idx``)
    payload_hash: str | None = None
    order: Order = "asc"
    #: the ``(created_at, id)`` of the last row of the previous page
    after: tuple[datetime, uuid.UUID] | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    log_id: str
    tree_size: int
    root_hash: str
    checkpoint: str


class Repository:
    """The ledger's tables through :class:`shared.db.Database` (errors arrive translated:
    :class:`DatabaseUnavailable`, :class:`QueryError`, :class:`ClaimRaced`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # --- entries: the signer ------------------------------------------------------------

    async def entries_by_request_id(self, request_ids: Sequence[str]) -> dict[str, EntryRecord]:
        if not request_ids:
            return {}
        rows = await self._db.fetch(_ENTRIES_BY_REQUEST_ID, list(request_ids))
        return {str(r["request_id"]): EntryRecord.from_row(r) for r in rows}

    async def insert_entries(
        self, entries: Sequence[NewEntry]
    ) -> tuple[dict[str, datetime], dict[str, EntryRecord]]:
        """Insert ``entries`` in one transaction; return (``created_at`` of the inserted, the
        rows another process stored first) by request id."""
        columns = (
            [e.id for e in entries], [e.subject for e in entries],
            [e.payload_hash for e in entries], [e.sig for e in entries],
            [e.pubkey for e in entries], [fastjson.dumps(e.meta).decode() for e in entries],
            [e.request_id for e in entries], [e.key_name for e in entries],
            [e.key_version for e in entries], [e.statement for e in entries],
            [e.submitted_at for e in entries], [e.content_sha256 for e in entries],
            [e.leaf_hash() for e in entries],
        )

        async def work(tx: Tx) -> tuple[dict[str, datetime], dict[str, EntryRecord]]:
            inserted = await tx.fetch(_INSERT_ENTRIES, *columns)
            new = {str(r["request_id"]): r["created_at"] for r in inserted}
            missing = [e.request_id for e in entries if e.request_id not in new]
            others: dict[str, EntryRecord] = {}
            if missing:
                found = await tx.fetch(_ENTRIES_BY_REQUEST_ID, missing)
                others = {str(r["request_id"]): EntryRecord.from_row(r) for r in found}
            return new, others

        return await self._db.transaction(work, isolation="read_committed")

    # --- entries: reading ---------------------------------------------------------------

    async def entry(self, entry_id: uuid.UUID) -> EntryRecord | None:
        row = await self._db.fetchrow(
            f"SELECT {ENTRY_COLUMNS} FROM ledger.entries WHERE id = $1", entry_id  # noqa: S608
        )
        return None if row is None else EntryRecord.from_row(row)

    async def entries(self, query: EntryQuery) -> list[EntryRecord]:
        where: list[str] = []
        args: list[Any] = []

        def bind(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if query.subject is not None:
            where.append(f"subject = {bind(query.subject)}")
        if query.created_from is not None:
            where.append(f"created_at >= {bind(query.created_from)}")
        if query.created_to is not None:
            where.append(f"created_at < {bind(query.created_to)}")
        if query.anchored is not None:
            where.append("anchored_at IS NOT NULL" if query.anchored else "anchored_at IS NULL")
        if query.payload_hash is not None:
            where.append(f"payload_hash = {bind(query.payload_hash)}")
        op, direction = (">", "ASC") if query.order == "asc" else ("<", "DESC")
        if query.after is not None:
            t, i = bind(query.after[0]), bind(query.after[1])
            where.append(f"(created_at, id) {op} ({t}, {i})")
        sql = f"SELECT {ENTRY_COLUMNS} FROM ledger.entries"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY created_at {direction}, id {direction} LIMIT {bind(query.limit)}"
        return [EntryRecord.from_row(r) for r in await self._db.fetch(sql, *args)]

    async def entries_for(self, ids: Sequence[uuid.UUID]) -> list[EntryRecord]:
        """The rows of ``ids`` that exist (any order)."""
        rows = await self._db.fetch(
            f"SELECT {ENTRY_COLUMNS} FROM ledger.entries WHERE id = ANY($1::uuid[])",  # noqa: S608
            list(ids),
        )
        return [EntryRecord.from_row(r) for r in rows]

    async def leaves(self, ids: Sequence[uuid.UUID]) -> list[LeafRecord]:
        """What a tree needs of the rows of ``ids`` that exist (any order)."""
        rows = await self._db.fetch(
            f"SELECT {LEAF_COLUMNS} FROM ledger.entries WHERE id = ANY($1::uuid[])",  # noqa: S608
            list(ids),
        )
        return [LeafRecord.from_row(r) for r in rows]

    async def batch_leaves(self, batch_id: uuid.UUID) -> list[LeafRecord]:
        """What a tree needs of every member of a batch, in leaf order."""
        return [LeafRecord.from_row(r) for r in await self._in_leaf_order(LEAF_COLUMNS, batch_id)]

    async def members(self, batch_id: uuid.UUID) -> list[EntryRecord]:
        """Every member of a batch, in leaf order."""
        return [EntryRecord.from_row(r) for r in await self._in_leaf_order(ENTRY_COLUMNS, batch_id)]

    async def _in_leaf_order(self, columns: str, batch_id: uuid.UUID) -> list[Row]:
        return await self._db.fetch(
            f"SELECT {columns} FROM ledger.entries WHERE batch_id = $1"  # noqa: S608
            " ORDER BY leaf_index",
            batch_id,
        )

    async def unbatched_entries(
        self, *, older_than_s: float, limit: int, skip: Sequence[uuid.UUID] = ()
    ) -> list[uuid.UUID]:
        """Ids of rows without a batch, oldest first, other than those in ``skip``."""
        rows = await self._db.fetch(
            "SELECT id FROM ledger.entries WHERE batch_id IS NULL"
            # a row of the runbook's service waits for `ledger import-legacy`'s leaf hash
            " AND (legacy_id IS NULL OR leaf_hash IS NOT NULL)"
            " AND created_at < now() - $1 * INTERVAL '1 second'"
            " AND id <> ALL($3::uuid[])"
            " ORDER BY created_at, id LIMIT $2",
            float(older_than_s),
            limit,
            list(skip),
        )
        return [r["id"] for r in rows]

    # --- batches ------------------------------------------------------------------------

    async def batch(self, batch_id: uuid.UUID) -> BatchRecord | None:
        row = await self._db.fetchrow(
            f"SELECT {BATCH_COLUMNS} FROM ledger.batches WHERE id = $1", batch_id  # noqa: S608
        )
        return None if row is None else BatchRecord.from_row(row)

    async def pending_batches(self, *, older_than_s: float, limit: int) -> list[uuid.UUID]:
        rows = await self._db.fetch(
            "SELECT id FROM ledger.batches WHERE state = 'pending'"
            " AND created_at < now() - $1 * INTERVAL '1 second'"
            " ORDER BY created_at LIMIT $2",
            float(older_than_s),
            limit,
        )
        return [r["id"] for r in rows]

    async def pending_count(self) -> int:
        return int(
            await self._db.fetchval("SELECT count(*) FROM ledger.batches WHERE state = 'pending'")
        )

    async def unanchored_oldest_age_s(self) -> float:
        """Seconds since the oldest entry not yet anchored was stored (0: there is none).

        One row from the partial index ``entries_unanchored_idx``: cheap at any backlog."""
        age = await self._db.fetchval(
            "SELECT GREATEST(COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0), 0)"
            "::float8 FROM ledger.entries WHERE anchored_at IS NULL"
        )
        return float(age)

    async def claim(self, batch: NewBatch) -> None:
        """Claim every member of ``batch`` and persist it as pending, atomically.

        Raises :class:`ClaimRaced` (nothing written) if a member is no longer free.
        """

        async def tx(t: Tx) -> None:
            status = await t.execute(
                _CLAIM, batch.id, list(batch.member_ids), list(range(batch.size))
            )
            if _affected(status) != batch.size:
                raise ClaimRaced(f"claimed {_affected(status)} of {batch.size}")
            await t.execute(
                _INSERT_BATCH, batch.id, batch.created_at, batch.size, batch.root_hex,
                batch.manifest, batch.manifest_sha256.hex(), batch.anchor_sig,
                batch.anchor_key_version, batch.anchor_pubkey,
            )

        await self._db.transaction(tx, isolation="read_committed")

    async def complete(self, batch_id: uuid.UUID, receipt: Receipt) -> datetime | None:
        """Store the verified receipt (and its checkpoint) and mark the batch and its members
        anchored. Returns the anchoring time, or None if the batch was already anchored.

        A Rekor v2 receipt has no integrated time: ``integrated_time`` stays NULL (its time
        is the RFC 3161 token's, inside the stored receipt)."""
        receipt_json = receipt.model_dump_json()
        integrated_time = receipt.integrated_time if isinstance(receipt, RekorReceipt) else None

        async def tx(t: Tx) -> datetime | None:
            anchored_at: datetime | None = await t.fetchval(
                _COMPLETE_BATCH, batch_id, receipt.uuid, receipt.log_index, receipt.log_id,
                integrated_time, receipt_json,
            )
            if anchored_at is None:
                return None
            await t.execute(
                _COMPLETE_MEMBERS, batch_id, receipt.uuid, receipt.log_index, anchored_at
            )
            if receipt.checkpoint is not None:
                await t.execute(_INSERT_CHECKPOINT, receipt.log_id, receipt.tree_size,
                                receipt.root_hash.lower(), receipt.checkpoint)
            return anchored_at

        return await self._db.transaction(tx, isolation="read_committed")

    # --- Rekor checkpoints and the pinned log key ---------------------------------------

    async def latest_checkpoint(self, log_id: str, origin: str) -> StoredCheckpoint | None:
        row = await self._db.fetchrow(
            "SELECT log_id, tree_size, root_hash, checkpoint FROM ledger.checkpoints"
            " WHERE log_id = $1 AND substr(checkpoint, 1, length($2) + 1) = $2 || chr(10)"
            " ORDER BY tree_size DESC LIMIT 1",
            log_id,
            origin,
        )
        if row is None:
            return None
        return StoredCheckpoint(log_id=row["log_id"], tree_size=int(row["tree_size"]),
                                root_hash=row["root_hash"], checkpoint=row["checkpoint"])

    async def store_checkpoint(
        self, *, log_id: str, tree_size: int, root_hash: str, checkpoint: str
    ) -> None:
        await self._db.execute(_INSERT_CHECKPOINT, log_id, tree_size, root_hash, checkpoint)

    async def pin_log_key(self, *, rekor_url: str, pem: str, log_id: str) -> str:
        """Pin ``pem`` for ``rekor_url`` unless a key is pinned already; return the pinned PEM."""

        async def tx(t: Tx) -> str:
            await t.execute(
                "INSERT INTO ledger.rekor_pins (rekor_url, public_key, log_id)"
                " VALUES ($1, $2, $3) ON CONFLICT (rekor_url) DO NOTHING",
                rekor_url,
                pem,
                log_id,
            )
            pinned: str = await t.fetchval(_PINNED_KEY, rekor_url)
            return pinned

        return await self._db.transaction(tx)

    async def pinned_log_key(self, rekor_url: str) -> str | None:
        value: str | None = await self._db.fetchval(_PINNED_KEY, rekor_url)
        return value

    async def health(self, *, timeout_s: float) -> bool:
        return await self._db.health(timeout_s=timeout_s)

    # --- raw rows for ``ledger audit`` ----------------------------------------------------
    # The audit reads rows as stored, however malformed (a tampered receipt is a finding,
    # not a crash), so these return rows, not records, in keyset-paginated chunks.

    async def batch_count(self) -> int:
        return int(await self._db.fetchval("SELECT count(*) FROM ledger.batches"))

    async def batch_rows(self, *, after: uuid.UUID, limit: int) -> list[Row]:
        """Batch rows (:data:`AUDIT_BATCH_COLUMNS`) with ids above ``after``, in id order."""
        return await self._db.fetch(
            f"SELECT {AUDIT_BATCH_COLUMNS} FROM ledger.batches"  # noqa: S608
            " WHERE id > $1 ORDER BY id LIMIT $2",
            after, limit,
        )

    async def batch_row(self, batch_id: uuid.UUID) -> Row | None:
        return await self._db.fetchrow(
            f"SELECT {AUDIT_BATCH_COLUMNS} FROM ledger.batches WHERE id = $1",  # noqa: S608
            batch_id,
        )

    async def claimed_count(self, batch_id: uuid.UUID) -> int:
        """How many entry rows claim ``batch_id`` (whether or not that batch exists)."""
        return int(await self._db.fetchval(
            "SELECT count(*) FROM ledger.entries WHERE batch_id = $1", batch_id))

    async def member_rows(
        self, batch_id: uuid.UUID, *, after: tuple[int, uuid.UUID] | None, limit: int
    ) -> list[Row]:
        """Entry rows with a leaf index that claim ``batch_id``, in ``(leaf_index, id)``
        order, after the key ``after``."""
        if after is None:
            return await self._db.fetch(
                f"SELECT {ENTRY_COLUMNS} FROM ledger.entries"  # noqa: S608
                " WHERE batch_id = $1 AND leaf_index IS NOT NULL"
                " ORDER BY leaf_index, id LIMIT $2",
                batch_id, limit,
            )
        return await self._db.fetch(
            f"SELECT {ENTRY_COLUMNS} FROM ledger.entries"  # noqa: S608
            " WHERE batch_id = $1 AND (leaf_index, id) > ($2, $3)"
            " ORDER BY leaf_index, id LIMIT $4",
            batch_id, after[0], after[1], limit,
        )

    async def unindexed_member_rows(self, batch_id: uuid.UUID) -> list[Row]:
        """Entry rows that claim ``batch_id`` without a leaf index (never written so)."""
        return await self._db.fetch(
            f"SELECT {ENTRY_COLUMNS} FROM ledger.entries"  # noqa: S608
            " WHERE batch_id = $1 AND leaf_index IS NULL ORDER BY id",
            batch_id,
        )

    async def loose_rows(self, *, after: uuid.UUID, limit: int) -> list[Row]:
        """Entry rows that are no member of an existing batch (unbatched, or claiming a batch
        that does not exist), with ids above ``after``, in id order."""
        return await self._db.fetch(
            f"SELECT {ENTRY_COLUMNS} FROM ledger.entries e"  # noqa: S608
            " WHERE e.id > $1 AND (e.batch_id IS NULL OR NOT EXISTS"
            " (SELECT 1 FROM ledger.batches b WHERE b.id = e.batch_id))"
            " ORDER BY e.id LIMIT $2",
            after, limit,
        )


    # --- ``ledger restore`` -------------------------------------------------------------

    async def restore_batch(
        self, batch: BatchRecord, members: Sequence[EntryRecord]
    ) -> Literal["restored", "present"]:
        """Write back an anchored batch lost by the database, with all its members, in one
        transaction (``ledger restore``, after the caller verified them).

        ``present`` (nothing written) when a batch with this id or manifest exists. A member
        row that exists unbatched (or claiming this batch) with the same leaf is attached to
        the batch; any other existing row is a conflict: :class:`ClaimRaced`, nothing written.
        """
        if batch.receipt is None or len(members) != batch.size:
            raise ValueError("restore_batch needs an anchored batch and all its members")
        receipt = batch.receipt
        ids = [m.id for m in members]

        async def tx(t: Tx) -> Literal["restored", "present"]:
            if await t.fetchval(
                "SELECT count(*) FROM ledger.batches WHERE id = $1 OR manifest_sha256 = $2",
                batch.id, batch.manifest_sha256,
            ):
                return "present"
            rows = await t.fetch(
                f"SELECT {ENTRY_COLUMNS} FROM ledger.entries WHERE id = ANY($1::uuid[])"  # noqa: S608
                " FOR UPDATE", ids)
            existing = {r["id"]: EntryRecord.from_row(r) for r in rows}
            attach = [m for m in members if m.id in existing]
            for m in attach:
                row = existing[m.id]
                if row.batch_id not in (None, batch.id) or (
                        row.content_leaf_hash() != m.content_leaf_hash()):
                    raise ClaimRaced(f"entry {m.id} is in the database as another row or in "
                                     f"batch {row.batch_id}")
            new = [m for m in members if m.id not in existing]
            await t.execute(
                _RESTORE_ENTRIES, batch.id, receipt.uuid, receipt.log_index,
                [m.id for m in new], [m.subject for m in new], [m.payload_hash for m in new],
                [m.sig for m in new], [m.pubkey for m in new],
                [fastjson.dumps(m.meta).decode() for m in new], [m.request_id for m in new],
                [m.key_name for m in new], [m.key_version for m in new],
                [m.statement for m in new], [m.submitted_at for m in new],
                [m.content_sha256 for m in new], [m.content_leaf_hash() for m in new],
                [m.created_at for m in new], [m.leaf_index for m in new],
                [m.anchored_at for m in new],
            )
            status = await t.execute(
                _RESTORE_ATTACH, batch.id, receipt.uuid, receipt.log_index,
                [m.id for m in attach], [m.leaf_index for m in attach],
                [m.anchored_at for m in attach])
            if _affected(status) != len(attach):
                raise ClaimRaced(f"attached {_affected(status)} of {len(attach)} rows")
            await t.execute(
                _RESTORE_BATCH, batch.id, batch.created_at, batch.size, batch.root_hash,
                batch.manifest, batch.manifest_sha256, batch.anchor_sig,
                batch.anchor_key_version, batch.anchor_pubkey, receipt.uuid, receipt.log_index,
                receipt.log_id,
                receipt.integrated_time if isinstance(receipt, RekorReceipt) else None,
                receipt.model_dump_json(), batch.anchored_at,
            )
            return "restored"

        return await self._db.transaction(tx)


def _affected(status: str) -> int:
    """Row count of an ``UPDATE n`` / ``INSERT 0 n`` command status."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0
