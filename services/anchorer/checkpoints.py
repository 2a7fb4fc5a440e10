"""Rekor checkpoints: remember the ones we saw and check that the log only ever grows.

Every verified receipt's checkpoint is stored with the batch completion (``ledger.checkpoints``).
Periodically (the sweeper) :meth:`ConsistencyMonitor.check` fetches the log's current
checkpoint, verifies its signature against the pinned key, and gets a consistency proof
between the largest checkpoint stored for the same tree (same origin line) and the new head
(Rekor v1: ``GET /api/v1/log/proof``; Rekor v2: computed from the log's tiles; see
:mod:`.logs`), verified offline with :mod:`shared.merkle`. A failure —
a head not signed by the pinned key, a log that shrank, a proof that does not verify — is an
error log and ``ledger_receipt_verification_failures{check="consistency"|"checkpoint"}``: it
means Rekor showed us two views of its log. It does not stop anchoring (each receipt is still
verified on its own); it is an alarm for an operator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from shared.errors import RekorError, RekorUnavailable, VerificationError
from shared.merkle import verify_consistency
from shared.repository import StoredCheckpoint
from shared.telemetry import Metrics

from .logs import Head, TransparencyLog

__all__ = ["ConsistencyMonitor", "ConsistencyResult"]

log = logging.getLogger("ledger.anchorer.checkpoints")


class CheckpointStore(Protocol):
    """Where checkpoints are kept (:class:`shared.repository.Repository`)."""

    async def latest_checkpoint(self, log_id: str, origin: str) -> StoredCheckpoint | None: ...
    async def store_checkpoint(
        self, *, log_id: str, tree_size: int, root_hash: str, checkpoint: str
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class ConsistencyResult:
    ok: bool
    old_size: int | None
    new_size: int
    detail: str = ""


class ConsistencyMonitor:
    def __init__(
        self, *, store: CheckpointStore, log: TransparencyLog, metrics: Metrics
    ) -> None:
        self._store = store
        self._log = log
        self._metrics = metrics

    async def check(self) -> ConsistencyResult | None:
        """Check the current head against the last stored checkpoint; store the head.

        Returns None when the log could not be asked (unavailable): nothing was concluded.
        """
        try:
            head = await self._log.head()
        except (RekorUnavailable, RekorError) as exc:
            log.warning("consistency check skipped: Rekor unavailable", extra={"error": str(exc)})
            return None
        except VerificationError as exc:
            return self._failed("checkpoint", None, 0, f"signed tree head: {exc}")
        return await self.check_head(head)

    async def check_head(self, head: Head) -> ConsistencyResult | None:
        """Check a verified head against the stored checkpoints."""
        cp, note, log_id = head.checkpoint, head.note, head.log_id
        previous = await self._store.latest_checkpoint(log_id, cp.origin)
        if previous is None:
            await self._store.store_checkpoint(
                log_id=log_id, tree_size=cp.size, root_hash=cp.root_hash.hex(),
                checkpoint=note,
            )
            return ConsistencyResult(ok=True, old_size=None, new_size=cp.size)
        old_size, old_root = previous.tree_size, bytes.fromhex(previous.root_hash)
        if old_size > cp.size:
            return self._failed(
                "consistency", old_size, cp.size,
                f"log shrank: stored checkpoint has size {old_size}, head has {cp.size}",
            )
        try:
            proof = [] if old_size == cp.size else await self._log.consistency_proof(
                head, old_size)
            verify_consistency(old_size, cp.size, old_root, cp.root_hash, proof)
        except (RekorUnavailable, RekorError) as exc:
            log.warning("consistency check skipped: Rekor unavailable", extra={"error": str(exc)})
            return None
        except (VerificationError, ValueError) as exc:
            return self._failed("consistency", old_size, cp.size, str(exc))
        await self._store.store_checkpoint(
            log_id=log_id, tree_size=cp.size, root_hash=cp.root_hash.hex(), checkpoint=note
        )
        log.info(
            "Rekor log consistent with the last stored checkpoint",
            extra={"old_size": old_size, "new_size": cp.size},
        )
        return ConsistencyResult(ok=True, old_size=old_size, new_size=cp.size)

    def _failed(
        self, check: str, old_size: int | None, new_size: int, detail: str
    ) -> ConsistencyResult:
        self._metrics.receipt_failures.labels(check=check).inc()
        log.error(
            "Rekor log consistency check failed",
            extra={"check": check, "old_size": old_size, "new_size": new_size,
                   "detail": detail[:300]},
        )
        return ConsistencyResult(ok=False, old_size=old_size, new_size=new_size, detail=detail)

