"""Rekor checkpoints: remember the ones we saw and check that the log only ever grows.

Every verified receipt's checkpoint is stored with the batch completion (``ledger.checkpoints``).
Periodically (the sweeper) :meth:`ConsistencyMonitor.check` fetches Rekor's current signed
tree head, verifies its signature against the pinned key, and asks Rekor for a consistency
proof (``GET /api/v1/log/proof``) between the largest checkpoint stored for the same tree
(same origin line) and the new head, verified offline with :mod:`shared.merkle`. A failure —
a head not signed by the pinned key, a log that shrank, a proof that does not verify — is an
error log and ``ledger_receipt_verification_failures{check="consistency"|"checkpoint"}``: it
means Rekor showed us two views of its log. It does not stop anchoring (each receipt is still
verified on its own); it is an alarm for an operator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from shared.errors import RekorError, RekorUnavailable, VerificationError
from shared.merkle import verify_consistency
from shared.repository import StoredCheckpoint
from shared.telemetry import Metrics
from shared.verify import Checkpoint, LogKey, verify_checkpoint

__all__ = ["ConsistencyMonitor", "ConsistencyResult"]

log = logging.getLogger("ledger.anchorer.checkpoints")


class _LogRekor(Protocol):
    async def get_log_info(self) -> Any: ...
    async def get_consistency_proof(
        self, first_size: int, last_size: int, tree_id: str | None = None
    ) -> Any: ...


class CheckpointStore(Protocol):
    """Where checkpoints are kept (:class:`shared.repository.Repository`)."""

    async def latest_checkpoint(self, log_id: str, origin: str) -> StoredCheckpoint | None: ...
    async def store_checkpoint(
        self, *, log_id: str, tree_size: int, root_hash: str, checkpoint: str
    ) -> None: ...


class _KeySource(Protocol):
    async def get(self) -> LogKey: ...


@dataclass(frozen=True, slots=True)
class ConsistencyResult:
    ok: bool
    old_size: int | None
    new_size: int
    detail: str = ""


class ConsistencyMonitor:
    def __init__(
        self, *, store: CheckpointStore, rekor: _LogRekor, log_key: _KeySource, metrics: Metrics
    ) -> None:
        self._store = store
        self._rekor = rekor
        self._log_key = log_key
        self._metrics = metrics

    async def check(self) -> ConsistencyResult | None:
        """Check the current head against the last stored checkpoint; store the head.

        Returns None when Rekor could not be asked (unavailable): nothing was concluded.
        """
        key = await self._log_key.get()
        try:
            info = await self._rekor.get_log_info()
        except (RekorUnavailable, RekorError) as exc:
            log.warning("consistency check skipped: Rekor unavailable", extra={"error": str(exc)})
            return None
        try:
            head = verify_checkpoint(str(info.signed_tree_head), key)
        except VerificationError as exc:
            return self._failed("checkpoint", None, 0, f"signed tree head: {exc}")
        return await self.check_head(
            str(info.signed_tree_head), head, tree_id=str(info.tree_id), log_id=key.log_id
        )

    async def check_head(
        self, note: str, head: Checkpoint, *, tree_id: str | None, log_id: str
    ) -> ConsistencyResult | None:
        """Check a verified checkpoint (``note`` parsed as ``head``) against the stored ones."""
        previous = await self._store.latest_checkpoint(log_id, head.origin)
        if previous is None:
            await self._store.store_checkpoint(
                log_id=log_id, tree_size=head.size, root_hash=head.root_hash.hex(),
                checkpoint=note,
            )
            return ConsistencyResult(ok=True, old_size=None, new_size=head.size)
        old_size, old_root = previous.tree_size, bytes.fromhex(previous.root_hash)
        if old_size > head.size:
            return self._failed(
                "consistency", old_size, head.size,
                f"log shrank: stored checkpoint has size {old_size}, head has {head.size}",
            )
        try:
            if old_size == head.size:
                verify_consistency(old_size, head.size, old_root, head.root_hash, [])
            else:
                proof = await self._rekor.get_consistency_proof(old_size, head.size, tree_id)
                verify_consistency(
                    old_size,
                    head.size,
                    old_root,
                    head.root_hash,
                    [bytes.fromhex(h) for h in proof.hashes],
                )
        except (RekorUnavailable, RekorError) as exc:
            log.warning("consistency check skipped: Rekor unavailable", extra={"error": str(exc)})
            return None
        except (VerificationError, ValueError) as exc:
            return self._failed("consistency", old_size, head.size, str(exc))
        await self._store.store_checkpoint(
            log_id=log_id, tree_size=head.size, root_hash=head.root_hash.hex(), checkpoint=note
        )
        log.info(
            "Rekor log consistent with the last stored checkpoint",
            extra={"old_size": old_size, "new_size": head.size},
        )
        return ConsistencyResult(ok=True, old_size=old_size, new_size=head.size)

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

