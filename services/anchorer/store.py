"""The anchorer's SQL: claim entries into batches, persist manifests, complete receipts.

Rules this module keeps, so that several anchorer processes (and the sweeper) can work on the
same rows at once:

* an entry's ``batch_id`` is set once: the claim is ``UPDATE ... WHERE batch_id IS NULL``
  inside a transaction that also inserts the batch row (manifest, anchor signature, state
  ``pending``); if any member was claimed meanwhile (its row lock makes the UPDATE re-check
  ``batch_id IS NULL``, so the row count comes up short) the whole transaction is rolled
  back (:class:`ClaimRaced`) and the caller re-plans with the rows still free;
* completing a batch is ``UPDATE ... WHERE state = 'pending'``: completing an anchored batch
  again changes nothing;
* claims and completions rely on row locks alone, so they run READ COMMITTED on PostgreSQL:
  serializable transactions there take predicate locks on every row and index page read,
  which with several batches in flight cost more than twice the CPU of the writes and abort
  one another on false conflicts (measured; see ``docs/design.md``). CockroachDB runs them
  serializable unless read committed is enabled, which is just as correct;
* no external call happens inside a transaction (``Database.transaction`` may re-run it).

SQL stays within what PostgreSQL and CockroachDB both accept; JSON travels as text.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.anchored import BATCH_COLUMNS as _BATCH_COLUMNS
from shared.anchored import ENTRY_COLUMNS as _ENTRY_COLUMNS
from shared.anchored import LEAF_COLUMNS as _LEAF_COLUMNS
from shared.anchored import BatchRecord, EntryRecord, LeafRecord
from shared.db import Database, Tx
from shared.errors import ClaimRaced
from shared.verify import RekorReceipt

from .building import BatchPlan

__all__ = ["AnchorStore", "StoredCheckpoint"]


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    log_id: str
    tree_size: int
    root_hash: str
    checkpoint: str


class AnchorStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- reading ------------------------------------------------------------------------

    async def leaves(self, ids: Sequence[uuid.UUID]) -> list[LeafRecord]:
        """What a claim needs of the rows of ``ids`` that exist (any order)."""
        rows = await self._db.fetch(
            f"SELECT {_LEAF_COLUMNS} FROM ledger.entries WHERE id = ANY($1::uuid[])",  # noqa: S608
            list(ids),
        )
        return [LeafRecord.from_row(r) for r in rows]

    async def batch(self, batch_id: uuid.UUID) -> BatchRecord | None:
        row = await self._db.fetchrow(
            f"SELECT {_BATCH_COLUMNS} FROM ledger.batches WHERE id = $1", batch_id  # noqa: S608
        )
        return None if row is None else BatchRecord.from_row(row)

    async def members(self, batch_id: uuid.UUID) -> list[EntryRecord]:
        rows = await self._db.fetch(
            f"SELECT {_ENTRY_COLUMNS} FROM ledger.entries WHERE batch_id = $1"  # noqa: S608
            " ORDER BY leaf_index",
            batch_id,
        )
        return [EntryRecord.from_row(r) for r in rows]

    async def pending_batches(self, *, older_than_s: float, limit: int) -> list[uuid.UUID]:
        rows = await self._db.fetch(
            "SELECT id FROM ledger.batches WHERE state = 'pending'"
            " AND created_at < now() - $1 * INTERVAL '1 second'"
            " ORDER BY created_at LIMIT $2",
            float(older_than_s),
            limit,
        )
        return [r["id"] for r in rows]

    async def unbatched_entries(self, *, older_than_s: float, limit: int) -> list[uuid.UUID]:
        rows = await self._db.fetch(
            "SELECT id FROM ledger.entries WHERE batch_id IS NULL"
            " AND created_at < now() - $1 * INTERVAL '1 second'"
            " ORDER BY created_at, id LIMIT $2",
            float(older_than_s),
            limit,
        )
        return [r["id"] for r in rows]

    async def pending_count(self) -> int:
        return int(
            await self._db.fetchval("SELECT count(*) FROM ledger.batches WHERE state = 'pending'")
        )

    # --- claiming -----------------------------------------------------------------------

    async def claim(
        self, plan: BatchPlan[Any], *, anchor_sig: bytes, key_version: int, pubkey_pem: str
    ) -> None:
        """Claim every member of ``plan`` and persist the pending batch, atomically.

        Raises :class:`ClaimRaced` (nothing written) if a member is no longer free.
        """
        ids = [m.id for m in plan.members]
        indexes = list(range(plan.size))

        async def tx(t: Tx) -> None:
            status = await t.execute(
                "UPDATE ledger.entries AS e SET batch_id = $1, leaf_index = u.idx"
                " FROM unnest($2::uuid[], $3::int[]) AS u(id, idx)"
                " WHERE e.id = u.id AND e.batch_id IS NULL",
                plan.batch_id,
                ids,
                indexes,
            )
            if _affected(status) != plan.size:
                raise ClaimRaced(f"claimed {_affected(status)} of {plan.size}")
            await t.execute(
                "INSERT INTO ledger.batches (id, created_at, state, size, root_hash, manifest,"
                " manifest_sha256, anchor_sig, anchor_key_version, anchor_pubkey)"
                " VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8, $9)",
                plan.batch_id,
                plan.created_at,
                plan.size,
                plan.root_hex,
                plan.manifest,
                plan.manifest_sha256.hex(),
                anchor_sig,
                key_version,
                pubkey_pem,
            )

        await self._db.transaction(tx, isolation="read_committed")

    # --- completing ---------------------------------------------------------------------

    async def complete(self, batch_id: uuid.UUID, receipt: RekorReceipt) -> datetime | None:
        """Store the verified receipt and mark the batch and its members anchored.

        Returns the anchoring time, or None if the batch was already anchored (a no-op).
        """
        receipt_json = receipt.model_dump_json()

        async def tx(t: Tx) -> datetime | None:
            anchored_at: datetime | None = await t.fetchval(
                "UPDATE ledger.batches SET state = 'anchored', rekor_uuid = $2,"
                " rekor_log_index = $3, rekor_log_id = $4, integrated_time = $5,"
                " receipt = $6::jsonb, anchored_at = now()"
                " WHERE id = $1 AND state = 'pending' RETURNING anchored_at",
                batch_id,
                receipt.uuid,
                receipt.log_index,
                receipt.log_id,
                receipt.integrated_time,
                receipt_json,
            )
            if anchored_at is None:
                return None
            # rekor_log_id keeps the runbook's meaning: the Rekor entry that anchors the row
            # (its uuid); rekor_index is that entry's global log index.
            await t.execute(
                "UPDATE ledger.entries SET rekor_log_id = $2, rekor_index = $3, anchored_at = $4"
                " WHERE batch_id = $1",
                batch_id,
                receipt.uuid,
                receipt.log_index,
                anchored_at,
            )
            if receipt.checkpoint is not None:
                await _insert_checkpoint(t, receipt)
            return anchored_at

        return await self._db.transaction(tx, isolation="read_committed")

    # --- checkpoints --------------------------------------------------------------------

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
        return StoredCheckpoint(
            log_id=row["log_id"],
            tree_size=int(row["tree_size"]),
            root_hash=row["root_hash"],
            checkpoint=row["checkpoint"],
        )

    async def store_checkpoint(
        self, *, log_id: str, tree_size: int, root_hash: str, checkpoint: str
    ) -> None:
        await self._db.execute(
            "INSERT INTO ledger.checkpoints (log_id, tree_size, root_hash, checkpoint)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (log_id, tree_size) DO NOTHING",
            log_id,
            tree_size,
            root_hash,
            checkpoint,
        )

    # --- the pinned Rekor key -----------------------------------------------------------

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
            pinned: str = await t.fetchval(
                "SELECT public_key FROM ledger.rekor_pins WHERE rekor_url = $1", rekor_url
            )
            return pinned

        return await self._db.transaction(tx)

    async def pinned_log_key(self, rekor_url: str) -> str | None:
        value: str | None = await self._db.fetchval(
            "SELECT public_key FROM ledger.rekor_pins WHERE rekor_url = $1", rekor_url
        )
        return value


async def _insert_checkpoint(t: Tx, receipt: RekorReceipt) -> None:
    await t.execute(
        "INSERT INTO ledger.checkpoints (log_id, tree_size, root_hash, checkpoint)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (log_id, tree_size) DO NOTHING",
        receipt.log_id,
        receipt.tree_size,
        receipt.root_hash.lower(),
        receipt.checkpoint,
    )


def _affected(status: str) -> int:
    """Row count of an ``UPDATE n`` / ``INSERT 0 n`` command status."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0

