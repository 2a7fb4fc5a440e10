"""Anchoring one batch: claim → sign → persist (pending) → Rekor → verify → complete → emit.

::

    entry ids ──► read leaf hashes ──► [verify_rows only] check the free rows (signature,
                                          │ statement, leaf; refused → metric + error log,
                                          │ left unbatched)
                                          ▼
                  plan (RFC 6962 root over the stored leaves, manifest)
                                          │
                                          ▼
                    Vault ECDSA P-256 (prehashed) signs SHA-256(manifest)
                         ┌────────────────┘
                         ▼
    ONE transaction: claim members (batch_id IS NULL) + batch row, state pending, signature
                         │
                         ▼
    the log (logs.py; LEDGER_REKOR_API): Rekor v1 hashedrekord of the stored signature,
    or an RFC 3161 timestamp of it and then a Rekor v2 hashedrekord
                         │ ── 409 ──► the existing entry (v1: by uuid; v2: by log index)
                         ▼
    verify: v1 log id, uuid, SET, inclusion proof, checkpoint, body vs submission;
            v2 log id, checkpoint, inclusion proof, body, timestamp vs the pinned TSA
                         │ (refused → metric + error log, batch stays pending, ReceiptRejected)
                         ▼
    ONE transaction: receipt on the batch, state anchored, members' rekor fields
                         │
                         ▼
    one ledger.anchored event per member, built from database rows only (each row checked
    against its leaf; the batch and receipt parts serialised once per batch)

Everything after the claim is keyed by the batch id and re-runnable: completing a batch that
is already anchored only re-emits its (identical) events; a retry re-sends the stored
signature, so Rekor answers 409 instead of logging a second entry.

With ``verify_rows`` (``LEDGER_ANCHORER_VERIFY_ROWS``, off by default) a free row is checked
before it joins a batch (:func:`building.refusal`): a row whose stored signature does not
verify over its statement with its key, whose columns are not what the statement says, or
whose stored leaf hash is not its content's, is refused: it is not claimed,
``ledger_anchorer_rejected_rows_total{reason}`` counts it, an error names it, and
:attr:`AnchorResult.refused` reports it (the stream dead-letters the event naming it).
Without it (the default) a claim reads only the leaf hashes and checks nothing more: the
signer verified each signature before storing the row, and ``ledger audit`` / ``ledger
verify`` report a row that does not check after it is anchored.

Errors: :class:`RekorUnavailable`, :class:`ReceiptRejected`, ``VaultUnavailable`` and
``DatabaseUnavailable`` propagate; their policy (:mod:`shared.errors`) is to retry, so the
caller pauses and retries.
A Rekor 4xx other than 409 leaves the batch pending for the sweeper (logged), without
stopping the stream.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from shared.anchored import AnchoredEvent, anchored_events
from shared.errors import (
    ClaimRaced,
    DatabaseUnavailable,
    ReceiptRejected,
    RekorConflict,
    RekorError,
    RekorUnavailable,
    TsaError,
    TsaUnavailable,
    VerificationError,
)
from shared.records import BatchRecord, EntryRecord, LeafRecord, NewBatch
from shared.telemetry import Metrics, Stopwatch, log_context
from shared.verify import ReceiptVerificationError

from .building import Refusal, plan_batch, refusal
from .logs import AnyVerifiedReceipt, TransparencyLog

__all__ = [
    "AnchorResult",
    "AnchorStore",
    "Anchorer",
    "EventPublisher",
    "RekorHealth",
    "SignerPort",
]

log = logging.getLogger("ledger.anchorer")

_CLAIM_ATTEMPTS = 5


# --- the narrow interfaces this module needs ---------------------------------------------


class _Signature(Protocol):
    @property
    def version(self) -> int: ...
    @property
    def raw(self) -> bytes: ...


class _PublicKey(Protocol):
    @property
    def pem(self) -> str: ...


class SignerPort(Protocol):
    """Vault Transit (``shared.vault.TransitSigner`` conforms)."""

    async def sign(self, key: str, data: bytes, *, prehashed_sha256: bool = False) -> Any: ...
    async def public_key(self, key: str, version: int) -> Any: ...


class AnchorStore(Protocol):
    """The rows anchoring reads and writes (:class:`shared.repository.Repository`)."""

    async def leaves(self, ids: Sequence[uuid.UUID]) -> list[LeafRecord]: ...
    async def entries_for(self, ids: Sequence[uuid.UUID]) -> list[EntryRecord]: ...
    async def batch(self, batch_id: uuid.UUID) -> BatchRecord | None: ...
    async def members(self, batch_id: uuid.UUID) -> list[EntryRecord]: ...
    async def claim(self, batch: NewBatch) -> None: ...
    async def complete(
        self, batch_id: uuid.UUID, receipt: AnyVerifiedReceipt
    ) -> datetime | None: ...


class EventPublisher(Protocol):
    """Publishes ``ledger.anchored`` events and returns once Kafka acknowledged all of them."""

    async def publish(self, events: Sequence[AnchoredEvent]) -> None: ...


class ReceiptObserver(Protocol):
    """Called with every verified receipt before it is stored (checkpoint bookkeeping)."""

    async def __call__(self, receipt: AnyVerifiedReceipt) -> None: ...


# --- health --------------------------------------------------------------------------------


@dataclass
class RekorHealth:
    """What the anchorer last saw of Rekor; mirrored in ``ledger_dependency_up{rekor}``."""

    metrics: Metrics
    up: bool | None = None
    tsa_up: bool | None = None
    last_error: str = ""

    def ok(self) -> None:
        """The log answered (with Rekor v2: after its timestamp authority did)."""
        if self.up is not True:
            if self.up is False:
                log.info("Rekor reachable again")
            self.up = True
            self.last_error = ""
            self.metrics.dependency_up.labels(dependency="rekor").set(1)
        if self.tsa_up is False:
            log.info("timestamp authority reachable again")
            self.tsa_up = True
            self.metrics.dependency_up.labels(dependency="tsa").set(1)

    def failed(self, error: BaseException, *, dependency: str = "rekor") -> None:
        """``dependency``: ``rekor``, or ``tsa`` (Rekor v2's timestamp authority, asked
        first: anchoring is down with it, so health reports the log down too)."""
        self.up = False
        self.last_error = str(error)[:300]
        self.metrics.dependency_up.labels(dependency=dependency).set(0)
        if dependency == "tsa":
            self.tsa_up = False


# --- results -------------------------------------------------------------------------------


@dataclass
class AnchorResult:
    """What happened to the entry ids given to :meth:`Anchorer.anchor`."""

    emitted: list[AnchoredEvent] = field(default_factory=list)
    new_batches: list[uuid.UUID] = field(default_factory=list)
    pending_elsewhere: set[uuid.UUID] = field(default_factory=set)
    left_pending: set[uuid.UUID] = field(default_factory=set)
    unknown: set[uuid.UUID] = field(default_factory=set)
    #: stored rows not anchored because they do not check, and why (``verify_rows`` only)
    refused: dict[uuid.UUID, Refusal] = field(default_factory=dict)


# --- the anchorer --------------------------------------------------------------------------


class Anchorer:
    def __init__(
        self,
        *,
        store: AnchorStore,
        signer: SignerPort,
        log: TransparencyLog,
        publisher: EventPublisher,
        metrics: Metrics,
        anchor_key: str,
        verify_rows: bool = False,
        observe_receipt: ReceiptObserver | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        new_id: Callable[[], uuid.UUID] = uuid.uuid4,
    ) -> None:
        self._store = store
        self._signer = signer
        self._log = log
        self._publisher = publisher
        self._metrics = metrics
        self._anchor_key = anchor_key
        # check each free row (signature, statement, leaf) before claiming it: a full-row
        # read and ~140 µs of CPU per entry, so off unless asked for (building.refusal)
        self._verify_rows = verify_rows
        self._observe_receipt = observe_receipt
        self._clock = clock
        self._new_id = new_id
        self.rekor_health = RekorHealth(metrics)
        # batches this process claimed and has not completed yet (it retries them itself)
        self._own_pending: set[uuid.UUID] = set()
        # one completion of a batch at a time in this process (stream and sweeper can meet
        # on the same batch); weak values: a lock lives as long as someone holds or awaits it
        self._batch_locks: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    # --- the whole path for a set of entries ---------------------------------------------

    async def anchor(self, entry_ids: Iterable[uuid.UUID]) -> AnchorResult:
        """Anchor these entries; afterwards every one is anchored (and its event emitted),
        pending in a batch that another worker or the sweeper completes, unknown, or (with
        ``verify_rows``) refused: a stored row that does not check, left unbatched.
        """
        wanted = list(dict.fromkeys(entry_ids))
        result = AnchorResult()
        if not wanted:
            return result
        # ``seen``: the rows as read by the claim that succeeded, so every row that was free
        # is in ``new_batch`` and every other one names the batch it was already in
        new_batch, seen = await self._claim(wanted, refused=result.refused)
        if new_batch is not None:
            result.new_batches.append(new_batch)
            if not await self.complete(new_batch, emit=True, result=result):
                result.left_pending.add(new_batch)

        rows = {r.id: r for r in seen}
        result.unknown = {i for i in wanted if i not in rows}
        others: dict[uuid.UUID, set[uuid.UUID]] = {}
        for row in rows.values():
            if row.batch_id is not None and row.batch_id != new_batch:
                others.setdefault(row.batch_id, set()).add(row.id)
        for batch_id, ids in others.items():
            batch = await self._store.batch(batch_id)
            if batch is not None and batch.anchored:
                # A replay of an anchored entry: emit its event again, identical to the first.
                chosen = await self._events(batch, only=ids)
                await self._publisher.publish(chosen)
                result.emitted.extend(chosen)
            elif batch_id in self._own_pending:
                # Our own earlier attempt (the consumer loop retrying the same records after
                # Rekor failed): drive it on; the stored signature makes Rekor answer 409.
                if not await self.complete(batch_id, emit=True, result=result):
                    result.left_pending.add(batch_id)
            else:
                # Another worker's batch: left to it (or, if it died, to the sweeper).
                result.pending_elsewhere.update(ids)
        return result

    # --- step 1-2: claim and persist ------------------------------------------------------

    async def claim(self, entry_ids: Sequence[uuid.UUID]) -> uuid.UUID | None:
        """Claim the still-free entries among ``entry_ids`` into a new pending batch.

        Returns the batch id, or None when none of them is free. The anchor signature is
        made before the transaction (Vault is never called inside one) and stored with it.
        """
        return (await self._claim(entry_ids, refused={}))[0]

    async def _claim(
        self, entry_ids: Sequence[uuid.UUID], *, refused: dict[uuid.UUID, Refusal]
    ) -> tuple[uuid.UUID | None, list[LeafRecord]]:
        """:meth:`claim`, also returning the rows as the successful attempt read them;
        with ``verify_rows``, the free rows that do not check are left out and added to
        ``refused`` (without it nothing but the leaf hashes is read)."""
        checked: set[uuid.UUID] = set()
        for _attempt in range(_CLAIM_ATTEMPTS):
            seen = await self._store.leaves(entry_ids)
            if self._verify_rows:
                unchecked = [r.id for r in seen if r.batch_id is None and r.id not in checked]
                if unchecked:
                    refused.update(await self._refusals(unchecked))
                    checked.update(unchecked)
                free = [r for r in seen if r.batch_id is None and r.id not in refused]
            else:
                free = [r for r in seen if r.batch_id is None]
            if not free:
                return None, seen
            plan = plan_batch(free, batch_id=self._new_id(), created_at=self._clock())
            signature: _Signature = await self._signer.sign(
                self._anchor_key, plan.manifest_sha256, prehashed_sha256=True
            )
            public_key: _PublicKey = await self._signer.public_key(
                self._anchor_key, signature.version
            )
            try:
                await self._store.claim(NewBatch(
                    id=plan.batch_id, created_at=plan.created_at,
                    member_ids=[m.id for m in plan.members], root_hex=plan.root_hex,
                    manifest=plan.manifest, manifest_sha256=plan.manifest_sha256,
                    anchor_sig=signature.raw, anchor_key_version=signature.version,
                    anchor_pubkey=public_key.pem,
                ))
            except ClaimRaced:
                log.info(
                    "entries claimed by another batch meanwhile; re-planning",
                    extra={"batch_id": str(plan.batch_id), "size": plan.size},
                )
                continue
            self._own_pending.add(plan.batch_id)
            log.info(
                "batch claimed and persisted (pending)",
                extra={
                    "batch_id": str(plan.batch_id),
                    "size": plan.size,
                    "root": plan.root_hex,
                    "manifest_sha256": plan.manifest_sha256.hex(),
                },
            )
            return plan.batch_id, seen
        # Heavy contention with other anchorers: retryable, the consumer loop backs off.
        raise DatabaseUnavailable(
            f"could not claim a batch in {_CLAIM_ATTEMPTS} attempts (entries claimed meanwhile)"
        )

    async def _refusals(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Refusal]:
        """The rows of ``ids`` that may not be anchored, and why (each logged and counted)."""
        found: dict[uuid.UUID, Refusal] = {}
        for row in await self._store.entries_for(ids):
            why = refusal(row)
            if why is None:
                continue
            found[row.id] = why
            self._metrics.rejected_rows.labels(reason=why.reason).inc()
            log.error(
                "entry row refused: not anchored",
                extra={"entry_id": str(row.id), "reason": why.reason, "detail": why.detail},
            )
        return found

    # --- steps 3-5: Rekor, verification, completion, events -------------------------------

    async def complete(
        self,
        batch_id: uuid.UUID,
        *,
        emit: bool = True,
        result: AnchorResult | None = None,
        path_label: str = "stream",
    ) -> bool:
        """Drive a persisted batch to anchored and emit its events; True when anchored.

        False when Rekor refused the entry for good (4xx): the batch stays pending and the
        sweeper tries again later. Completing an anchored batch re-emits its events only.
        """
        lock = self._batch_locks.get(batch_id)
        if lock is None:
            lock = self._batch_locks[batch_id] = asyncio.Lock()
        async with lock:
            return await self._complete(batch_id, emit=emit, result=result, path_label=path_label)

    async def _complete(
        self,
        batch_id: uuid.UUID,
        *,
        emit: bool,
        result: AnchorResult | None,
        path_label: str,
    ) -> bool:
        with log_context(batch_id=str(batch_id)):
            batch = await self._store.batch(batch_id)
            if batch is None:
                raise ValueError(f"no batch {batch_id}")
            first = False
            if not batch.anchored:
                receipt = await self._anchor_in_rekor(batch)
                if receipt is None:
                    self._own_pending.discard(batch_id)  # the sweeper retries it later
                    return False
                if self._observe_receipt is not None:
                    await self._observe_receipt(receipt)
                anchored_at = await self._store.complete(batch.id, receipt)
                first = anchored_at is not None
                if first:
                    batch = replace(batch, state="anchored", receipt=receipt,
                                    anchored_at=anchored_at)
                else:  # completed by someone else meanwhile: theirs is the stored receipt
                    reloaded = await self._store.batch(batch_id)
                    if reloaded is None or not reloaded.anchored:
                        raise RuntimeError(f"batch {batch_id} not anchored after completion")
                    batch = reloaded
                if first:
                    self._metrics.batches_anchored.labels(path=path_label).inc()
                    self._metrics.anchor_batch_size.observe(batch.size)
                    self._metrics.entries_anchored.inc(batch.size)
            self._own_pending.discard(batch_id)
            events = await self._events(batch)
            if emit:
                await self._publisher.publish(events)
                if result is not None:
                    result.emitted.extend(events)
            if first and batch.receipt is not None:
                if log.isEnabledFor(logging.DEBUG):
                    for event in events:
                        log.debug(
                            f"Entry {event.entry_id} anchored to Rekor",
                            extra={
                                "entry_id": str(event.entry_id),
                                "request_id": event.request_id,
                                "batch_id": str(batch.id),
                                "leaf_index": event.leaf_index,
                                "rekor_uuid": batch.receipt.uuid,
                                "rekor_log_index": batch.receipt.log_index,
                            },
                        )
                # one line per batch: at thousands of entries a second, a line per entry
                # would cost more than anchoring it; the ids are all here to search for
                log.info(
                    "batch anchored",
                    extra={
                        "batch_id": str(batch.id),
                        "size": batch.size,
                        "rekor_uuid": batch.receipt.uuid,
                        "rekor_log_index": batch.receipt.log_index,
                        "entry_ids": [str(e.entry_id) for e in events],
                    },
                )
            return True

    async def _events(
        self, batch: BatchRecord, *, only: set[uuid.UUID] | None = None
    ) -> list[AnchoredEvent]:
        """The events of ``batch`` (of the members in ``only``, if given)."""
        members: list[EntryRecord] = await self._store.members(batch.id)
        if only is None:
            return anchored_events(batch, members)
        leaves = [m.leaf_record() for m in members]
        return anchored_events(batch, [m for m in members if m.id in only], leaves=leaves)

    async def _anchor_in_rekor(self, batch: BatchRecord) -> AnyVerifiedReceipt | None:
        """Submit the stored manifest signature, fetch on 409, verify; None on a 4xx refusal."""
        path = "created"
        try:
            try:
                with Stopwatch() as sw:
                    submitted = await self._log.submit(batch)
                self._metrics.rekor_latency.labels(op="create", outcome="created").observe(
                    sw.seconds
                )
            except RekorConflict as conflict:
                self._metrics.rekor_latency.labels(op="create", outcome="conflict").observe(
                    sw.seconds
                )
                path = "conflict"
                log.info(
                    "Rekor already holds this batch (409); fetching the existing entry",
                    extra={"batch_id": str(batch.id), "rekor_uuid": conflict.uuid,
                           "rekor_log_index": getattr(conflict, "log_index", None)},
                )
                with Stopwatch() as sw:
                    submitted = await self._log.existing(batch, conflict)
                self._metrics.rekor_latency.labels(op="get", outcome="ok").observe(sw.seconds)
        except TsaUnavailable as exc:
            self.rekor_health.failed(exc, dependency="tsa")
            log.warning(
                "timestamp authority unavailable",
                extra={"batch_id": str(batch.id), "error": str(exc), "retry": "back-off"},
            )
            raise
        except RekorUnavailable as exc:
            self._metrics.rekor_latency.labels(op="create", outcome="unavailable").observe(
                sw.seconds
            )
            self.rekor_health.failed(exc)
            log.warning(
                "Rekor anchoring failed",
                extra={"batch_id": str(batch.id), "error": str(exc), "retry": "back-off"},
            )
            raise
        except (RekorError, TsaError) as exc:
            self.rekor_health.ok()  # it answered; it refused this entry
            log.error(  # noqa: TRY400 - an expected refusal, not a bug: no traceback
                "Rekor anchoring failed",
                extra={"batch_id": str(batch.id), "error": str(exc),
                       "status": getattr(exc, "status", None),
                       "retry": "sweeper"},  # the batch stays pending: re-driven later
            )
            return None
        self.rekor_health.ok()

        try:
            receipt = await self._log.verify(submitted, batch)
        except ReceiptVerificationError as exc:
            self._metrics.receipt_failures.labels(check=exc.check).inc()
            log.error(  # noqa: TRY400 - the check and detail say everything
                "Rekor anchoring failed",
                extra={"batch_id": str(batch.id), "reason": "receipt verification failed",
                       "check": exc.check, "detail": exc.detail[:300], "path": path},
            )
            raise ReceiptRejected(batch.id, exc.check, exc.detail) from None
        except VerificationError as exc:  # malformed beyond the named checks
            self._metrics.receipt_failures.labels(check="receipt").inc()
            log.error(  # noqa: TRY400
                "Rekor anchoring failed",
                extra={"batch_id": str(batch.id), "reason": "receipt verification failed",
                       "check": "receipt", "detail": str(exc)[:300], "path": path},
            )
            raise ReceiptRejected(batch.id, "receipt", str(exc)) from None
        log.info(
            "Rekor receipt verified",
            extra={"batch_id": str(batch.id), "rekor_uuid": receipt.uuid,
                   "rekor_log_index": receipt.log_index, "rekor_api": self._log.api,
                   "path": path},
        )
        return receipt
