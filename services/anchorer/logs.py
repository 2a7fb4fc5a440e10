"""The transparency log a batch is anchored in: Rekor v1, or Rekor v2 with an RFC 3161 time.

Anchoring (:mod:`.anchoring`) and the consistency monitor (:mod:`.checkpoints`) see a log
only through :class:`TransparencyLog`; ``LEDGER_REKOR_API`` picks the implementation:

==================  ==========================================  ==============================
                    :class:`RekorV1Log`                         :class:`RekorV2Log`
==================  ==========================================  ==============================
submit              hashedrekord v0.0.1 → entry, SET,           RFC 3161 timestamp over the
                    inclusion proof, checkpoint                 anchor signature, then
                                                                hashedrekord v0.0.2 → entry,
                                                                inclusion proof, checkpoint
already logged      409 names the uuid → ``GET`` the entry      409 names the log index → the
                                                                entry and a fresh proof read
                                                                from the log's tiles
verified by         :func:`shared.verify.verify_receipt`        :func:`shared.verify_v2.
                    (pinned key, or first-use pin)              verify_v2_receipt` (pinned key,
                                                                origin and TSA chain)
log head            ``GET /api/v1/log`` (signed tree head)      ``{tiles}/checkpoint``
consistency proof   ``GET /api/v1/log/proof``                   computed from the tiles
==================  ==========================================  ==============================

A v2 log signs no entry timestamp and integrates no time: the time of an anchor is the
timestamp authority's, over the very signature that is logged. A retry after a crash (409)
takes a new timestamp: it is later than the first, so it still bounds when the signature
existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from shared.errors import RekorConflict, RekorUnavailable, VerificationError
from shared.records import BatchRecord
from shared.verify import (
    Checkpoint,
    ExpectedEntry,
    LogKey,
    VerifiedReceipt,
    verify_checkpoint,
    verify_receipt,
)
from shared.verify_v2 import RekorV2Receipt, V2Trust, VerifiedV2Receipt, verify_v2_receipt

__all__ = [
    "Head",
    "RekorV1Log",
    "RekorV2Log",
    "Submission",
    "TransparencyLog",
]

AnyVerifiedReceipt = VerifiedReceipt | VerifiedV2Receipt


@dataclass(frozen=True, slots=True)
class Submission:
    """What the log answered for one batch, not yet verified."""

    #: how logs name the entry: a v1 uuid, or ``log index N`` for v2
    ref: str
    answer: Any


@dataclass(frozen=True, slots=True)
class Head:
    """The log's current checkpoint, verified against the pinned key."""

    note: str
    checkpoint: Checkpoint
    log_id: str
    tree_id: str | None = None


class TransparencyLog(Protocol):
    api: str

    async def submit(self, batch: BatchRecord) -> Submission:
        """Log the batch's stored anchor signature; RekorConflict when already logged."""
        ...

    async def existing(self, batch: BatchRecord, conflict: RekorConflict) -> Submission:
        """The entry a 409 named."""
        ...

    async def verify(self, submission: Submission, batch: BatchRecord) -> AnyVerifiedReceipt:
        """Raises ReceiptVerificationError (or VerificationError) when it does not verify."""
        ...

    async def head(self) -> Head:
        """Raises RekorUnavailable/RekorError when the log cannot be asked, and
        VerificationError when its checkpoint does not verify."""
        ...

    async def consistency_proof(self, head: Head, old_size: int) -> list[bytes]: ...


def expected_entry(batch: BatchRecord) -> ExpectedEntry:
    return ExpectedEntry(digest_hex=batch.manifest_sha256, signature=batch.anchor_sig,
                         public_key=batch.anchor_pubkey)


# --- v1 ------------------------------------------------------------------------------------


class _V1Client(Protocol):
    async def create_hashedrekord(
        self, digest_hex: str, signature_der: bytes, public_key_pem: bytes | str
    ) -> Any: ...
    async def get_entry_by_uuid(self, uuid: str) -> Any: ...
    async def get_log_info(self) -> Any: ...
    async def get_consistency_proof(
        self, first_size: int, last_size: int, tree_id: str | None = None
    ) -> Any: ...


class _KeySource(Protocol):
    async def get(self) -> LogKey: ...


class RekorV1Log:
    api = "v1"

    def __init__(self, *, rekor: _V1Client, keys: _KeySource) -> None:
        self._rekor = rekor
        self._keys = keys

    async def submit(self, batch: BatchRecord) -> Submission:
        entry = await self._rekor.create_hashedrekord(
            batch.manifest_sha256, batch.anchor_sig, batch.anchor_pubkey)
        return Submission(ref=str(entry.uuid), answer=entry.response)

    async def existing(self, batch: BatchRecord, conflict: RekorConflict) -> Submission:
        if conflict.uuid is None:
            raise RekorUnavailable(
                f"Rekor answered 409 for batch {batch.id} without naming the entry")
        entry = await self._rekor.get_entry_by_uuid(conflict.uuid)
        return Submission(ref=str(entry.uuid), answer=entry.response)

    async def verify(self, submission: Submission, batch: BatchRecord) -> VerifiedReceipt:
        key = await self._keys.get()
        return verify_receipt(submission.answer, key, expected=expected_entry(batch))

    async def head(self) -> Head:
        key = await self._keys.get()
        info = await self._rekor.get_log_info()
        note = str(info.signed_tree_head)
        return Head(note=note, checkpoint=verify_checkpoint(note, key), log_id=key.log_id,
                    tree_id=str(info.tree_id))

    async def consistency_proof(self, head: Head, old_size: int) -> list[bytes]:
        proof = await self._rekor.get_consistency_proof(
            old_size, head.checkpoint.size, head.tree_id)
        return [bytes.fromhex(h) for h in proof.hashes]


# --- v2 ------------------------------------------------------------------------------------


class _V2Client(Protocol):
    async def create_hashedrekord(
        self, digest_hex: str, signature_der: bytes, public_key_pem: bytes | str
    ) -> Any: ...
    async def get_entry(self, log_index: int) -> Any: ...
    async def get_checkpoint(self) -> str: ...
    async def consistency_proof(self, old_size: int, new_size: int) -> tuple[bytes, ...]: ...


class _Timestamper(Protocol):
    async def timestamp(self, data: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class _V2Answer:
    entry: Any  # the TransparencyLogEntry JSON
    timestamp: bytes  # DER TimeStampResp over the anchor signature


class RekorV2Log:
    api = "v2"

    def __init__(self, *, rekor: _V2Client, tsa: _Timestamper, trust: V2Trust) -> None:
        self._rekor = rekor
        self._tsa = tsa
        self._trust = trust

    async def submit(self, batch: BatchRecord) -> Submission:
        # the time first: a log entry without its timestamp would be a receipt with no time
        stamp = await self._tsa.timestamp(batch.anchor_sig)
        entry = await self._rekor.create_hashedrekord(
            batch.manifest_sha256, batch.anchor_sig, batch.anchor_pubkey)
        return Submission(ref=f"log index {entry.log_index}",
                          answer=_V2Answer(entry.entry, stamp))

    async def existing(self, batch: BatchRecord, conflict: RekorConflict) -> Submission:
        index = getattr(conflict, "log_index", None)
        if index is None:
            raise RekorUnavailable(
                f"Rekor answered 409 for batch {batch.id} without naming the log index")
        entry = await self._rekor.get_entry(int(index))
        stamp = await self._tsa.timestamp(batch.anchor_sig)
        return Submission(ref=f"log index {index}", answer=_V2Answer(entry.entry, stamp))

    async def verify(self, submission: Submission, batch: BatchRecord) -> VerifiedV2Receipt:
        answer: _V2Answer = submission.answer
        receipt = RekorV2Receipt.from_entry(answer.entry, answer.timestamp)
        return verify_v2_receipt(receipt, self._trust, expected=expected_entry(batch))

    async def head(self) -> Head:
        trust = self._trust
        note = await self._rekor.get_checkpoint()
        checkpoint = verify_checkpoint(note, trust.log_key, key_hint=trust.key_id[:4])
        if checkpoint.origin != trust.origin:
            raise VerificationError(f"checkpoint origin {checkpoint.origin[:100]!r} is not the "
                                    f"pinned origin {trust.origin!r}")
        return Head(note=note, checkpoint=checkpoint, log_id=trust.key_id.hex())

    async def consistency_proof(self, head: Head, old_size: int) -> list[bytes]:
        return list(await self._rekor.consistency_proof(old_size, head.checkpoint.size))
