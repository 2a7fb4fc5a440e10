"""The signer stage: append requests in, signed and stored entries out.

For one consumed batch (:meth:`SignerStage.process_batch`):

1. resolve every request against the database and the batch itself: a request id already
   stored with the same content is the *existing* entry, with other content an
   :class:`IdempotencyConflict` (dead-lettered); duplicates inside the batch are collapsed
   before signing (Ed25519 is deterministic: signing twice gives the same bytes, and one
   row per request id is all we may store);
2. sign the new statements with one Vault ``batch_input`` call per ≤ ``signer_batch_max``
   items; :meth:`shared.vault.TransitSigner.sign_batch` verifies every signature with the
   public key of the exact key version Vault used (a failure raises, nothing is stored), and
   that key's PEM is what is stored next to the signature;
3. insert all new rows in one transaction, idempotent on ``request_id``
   (``INSERT ... ON CONFLICT (request_id) DO NOTHING RETURNING``), each with its Merkle leaf
   hash (computed here once, from the bytes just signed), then read back the rows another
   signer stored first and resolve them like step 1;
4. publish ``ledger.signed`` for every entry of the batch, new or existing, and wait for
   Kafka's acknowledgements. Only then does the consumer loop commit the offsets.

Cost per entry is kept low on purpose (it is the pipeline's hot path): the request is
validated once, here, at its trust boundary; the statement is canonicalised once; a new
row's event is written from the values in hand (only ``created_at`` comes back from the
database); metrics and logs are per batch (the per-entry line is DEBUG).

Vault or the database failing, or Vault refusing (a key missing or forbidden), raises an
error whose policy is to retry (:mod:`shared.errors`): the loop pauses and retries
the same batch, and because steps 1 to 4 are idempotent a retry (or a replay after a crash)
stores nothing twice. This stage never sees or logs a payload: requests carry only its
SHA-256, and logs carry ids.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from shared import fastjson
from shared.consumer import Message, Rejection, Turn
from shared.db import Database, Row, Tx
from shared.errors import (
    IdempotencyConflict,
    InvalidMessage,
    VaultError,
    VaultUnavailable,
    VerificationError,
)
from shared.kafka import Record
from shared.merkle import leaf_hash
from shared.messages import AppendRequest, decode, signed_entry_fields
from shared.statement import content_sha256, entry_id_for, leaf_bytes, statement_bytes
from shared.telemetry import Metrics, log_context
from shared.tracing import trace_headers
from shared.vault import PublicKey, Signature

__all__ = [
    "EntryStore",
    "SignRequest",
    "SignedEvent",
    "SignedPublisher",
    "Signer",
    "SignerStage",
    "decode_append",
]

log = logging.getLogger("ledger.signer")

STAGE = "signer"


# --- decoding --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignRequest:
    """A valid append request with everything derived from it."""

    request: AppendRequest
    entry_id: uuid.UUID
    statement: bytes
    content_sha256: str
    trace_headers: tuple[tuple[str, bytes], ...]


def _has_nul(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return "\x00" in value
    if kind is dict:
        for key, item in value.items():
            if "\x00" in key:
                return True
            kind = type(item)
            if (kind is str and "\x00" in item) or ((kind is dict or kind is list)
                                                    and _has_nul(item)):
                return True
        return False
    if kind is list:
        return any(_has_nul(v) for v in value)
    return False


def decode_append(record: Record) -> SignRequest:
    """Decode a ``ledger.append`` record; anything unusable raises :class:`InvalidMessage`."""
    request = decode(AppendRequest, record.value)
    if _has_nul(request.meta):
        # PostgreSQL's JSONB cannot store U+0000; refusing it here keeps the partition moving.
        raise InvalidMessage("invalid fields", detail="meta: strings must not contain U+0000")
    try:
        statement = statement_bytes(
            request_id=request.request_id,
            subject=request.subject,
            payload_sha256=request.payload_sha256,
            meta=request.meta,
            submitted_at=request.submitted_at,
        )
    except Exception as exc:  # noqa: BLE001 - rfc8785 refuses NaN, huge ints, ...
        raise InvalidMessage(
            "invalid fields", detail=f"meta cannot be canonicalised: {type(exc).__name__}"
        ) from None
    return SignRequest(
        request=request,
        entry_id=entry_id_for(request.request_id),
        statement=statement,
        content_sha256=content_sha256(
            subject=request.subject, payload_sha256=request.payload_sha256, meta=request.meta
        ),
        trace_headers=tuple(trace_headers(record.headers)),
    )


# --- the ports this stage uses -----------------------------------------------------------------


class Signer(Protocol):
    """Vault Transit, as :class:`shared.vault.TransitSigner` offers it."""

    async def sign_batch(self, key: str, inputs: Sequence[bytes]) -> list[Signature]: ...
    async def public_key(self, key: str, version: int) -> PublicKey: ...


#: a ``ledger.signed`` event ready to send: (subject, SignedEntry JSON, headers)
SignedEvent = tuple[str, bytes, Sequence[tuple[str, bytes]]]


class SignedPublisher(Protocol):
    """Publishes ``ledger.signed`` events and returns once Kafka acknowledged all of them."""

    async def publish_signed(self, events: Sequence[SignedEvent]) -> None: ...


# --- storage -----------------------------------------------------------------------------------

_COLUMNS = (
    "id, subject, payload_hash, sig, pubkey, meta::text AS meta, created_at, request_id, "
    "key_name, key_version, statement, submitted_at, content_sha256"
)

# Built from constants only; every value is a bind parameter. Only what the signer does not
# know already comes back.
_INSERT = """
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

_SELECT_BY_REQUEST_ID = (
    f"SELECT {_COLUMNS} FROM ledger.entries WHERE request_id = ANY($1::text[])"  # noqa: S608
)


@dataclass(frozen=True, slots=True)
class NewRow:
    sign: SignRequest
    signature: Signature
    public_key_pem: str

    def leaf_hash(self) -> bytes:
        """``SHA256(0x00 || leaf)`` of this entry (what the anchorer's tree is built over)."""
        return leaf_hash(leaf_bytes(
            entry_id=self.sign.entry_id, statement=self.sign.statement,
            signature=self.signature.vault, key_name=self.signature.key_name,
            key_version=self.signature.version,
        ))


class EntryStore:
    """``ledger.entries`` as the signer uses it: read by request id, insert idempotently."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def existing(self, request_ids: Sequence[str]) -> dict[str, Row]:
        if not request_ids:
            return {}
        rows = await self._db.fetch(_SELECT_BY_REQUEST_ID, list(request_ids))
        return {str(r["request_id"]): r for r in rows}

    async def insert(
        self, rows: Sequence[NewRow]
    ) -> tuple[dict[str, datetime], dict[str, Row]]:
        """Insert ``rows`` in one transaction; return (``created_at`` of the inserted, the rows
        already stored) by request id.

        "Already stored" are rows another process inserted first (found by the conflict).
        """
        leaves = [r.leaf_hash() for r in rows]
        metas = [fastjson.dumps(r.sign.request.meta).decode() for r in rows]

        async def work(tx: Tx) -> tuple[dict[str, datetime], dict[str, Row]]:
            inserted = await tx.fetch(
                _INSERT,
                [r.sign.entry_id for r in rows],
                [r.sign.request.subject for r in rows],
                [r.sign.request.payload_sha256 for r in rows],
                [r.signature.vault for r in rows],
                [r.public_key_pem for r in rows],
                metas,
                [r.sign.request.request_id for r in rows],
                [r.signature.key_name for r in rows],
                [r.signature.version for r in rows],
                [r.sign.statement for r in rows],
                [r.sign.request.submitted_at for r in rows],
                [r.sign.content_sha256 for r in rows],
                leaves,
            )
            new = {str(r["request_id"]): r["created_at"] for r in inserted}
            missing = [r.sign.request.request_id for r in rows if r.sign.request.request_id
                       not in new]
            others: dict[str, Row] = {}
            if missing:
                found = await tx.fetch(_SELECT_BY_REQUEST_ID, missing)
                others = {str(r["request_id"]): r for r in found}
            return new, others

        # Correct on row locks alone (ON CONFLICT, then a fresh read of the losers): no need
        # for serializable's predicate locks (see services/anchorer/store.py).
        return await self._db.transaction(work, isolation="read_committed")


# --- the stage ---------------------------------------------------------------------------------


def _event_of_row(row: Row) -> bytes:
    """The ``ledger.signed`` JSON of a stored row (an entry stored before this batch)."""
    return fastjson.dumps(signed_entry_fields(
        entry_id=row["id"],
        request_id=row["request_id"],
        subject=row["subject"],
        payload_sha256=row["payload_hash"],
        meta=fastjson.loads(row["meta"]),
        submitted_at=row["submitted_at"],
        created_at=row["created_at"],
        statement=bytes(row["statement"]),
        signature=row["sig"],
        key_name=row["key_name"] or "",
        key_version=row["key_version"],
        public_key=row["pubkey"],
    ))


def _event_of_new(new: NewRow, created_at: datetime) -> bytes:
    """The ``ledger.signed`` JSON of a row this batch inserted, from the values in hand."""
    q = new.sign.request
    return fastjson.dumps(signed_entry_fields(
        entry_id=new.sign.entry_id,
        request_id=q.request_id,
        subject=q.subject,
        payload_sha256=q.payload_sha256,
        meta=q.meta,
        submitted_at=q.submitted_at,
        created_at=created_at,
        statement=new.sign.statement,
        signature=new.signature.vault,
        key_name=new.signature.key_name,
        key_version=new.signature.version,
        public_key=new.public_key_pem,
    ))


@dataclass
class _Resolution:
    """What a batch turned out to be: entries to publish and messages to dead-letter."""

    publish: dict[str, tuple[bytes, SignRequest]]  # request id → ledger.signed JSON
    to_sign: dict[str, SignRequest]  # request id → first message with that id
    rejected: list[Rejection]
    outcome: dict[str, str]  # request id → "new" | "existing"


class SignerStage:
    """The signer as a consumer-loop stage (see the module docstring)."""

    name = STAGE

    def __init__(
        self,
        *,
        store: EntryStore,
        vault: Signer,
        publisher: SignedPublisher,
        key_name: str,
        batch_max: int,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._vault = vault
        self._publisher = publisher
        self._key = key_name
        self._batch_max = batch_max
        self._metrics = metrics

    def decode(self, record: Record) -> SignRequest:
        return decode_append(record)

    async def process_batch(
        self, messages: Sequence[Message[SignRequest]], turn: Turn | None = None
    ) -> list[Rejection]:
        """Steps 1-2 run as soon as the batch is fetched, while earlier batches are stored;
        steps 3-4 run in stream order (``turn``), so of two messages with the same request id
        and other content, the earlier one is stored and the later one refused."""
        ids = list(dict.fromkeys(m.value.request.request_id for m in messages))
        stored = await self._store.existing(ids)
        res = _Resolution(publish={}, to_sign={}, rejected=[], outcome={})
        for m in messages:
            self._resolve(res, m, stored.get(m.value.request.request_id))
        new_rows = await self._sign(list(res.to_sign.values())) if res.to_sign else []
        async with turn or Turn.unordered():
            await self._store_and_publish(messages, res, new_rows)
        for outcome in ("new", "existing"):
            count = sum(1 for o in res.outcome.values() if o == outcome)
            if count:
                self._metrics.entries_signed.labels(outcome=outcome).inc(count)
        return res.rejected

    async def _store_and_publish(
        self, messages: Sequence[Message[SignRequest]], res: _Resolution, new_rows: list[NewRow]
    ) -> None:
        if new_rows:
            inserted, raced = await self._store.insert(new_rows)
            for new in new_rows:
                rid = new.sign.request.request_id
                created_at = inserted.get(rid)
                if created_at is not None:
                    res.publish[rid] = (_event_of_new(new, created_at), new.sign)
                    res.outcome[rid] = "new"
            for rid, row in raced.items():
                # another signer stored it between our read and our insert
                first = res.to_sign[rid]
                if row["content_sha256"] == first.content_sha256:
                    res.publish[rid] = (_event_of_row(row), first)
                    res.outcome[rid] = "existing"
            # messages whose request id turned out to be stored with other content
            already = {id(j.record) for j in res.rejected}
            for m in messages:
                other = raced.get(m.value.request.request_id)
                if (
                    other is not None
                    and id(m.record) not in already
                    and other["content_sha256"] != m.value.content_sha256
                ):
                    res.rejected.append(self._conflict(m, other))
        await self._publish(res)

    # --- steps ---------------------------------------------------------------------------------

    def _resolve(self, res: _Resolution, m: Message[SignRequest], row: Row | None) -> None:
        rid = m.value.request.request_id
        if row is not None:
            if row["content_sha256"] == m.value.content_sha256:
                if rid not in res.publish:
                    res.publish[rid] = (_event_of_row(row), m.value)
                res.outcome[rid] = "existing"
            else:
                res.rejected.append(self._conflict(m, row))
            return
        first = res.to_sign.get(rid)
        if first is None:
            res.to_sign[rid] = m.value
        elif first.content_sha256 != m.value.content_sha256:
            # The earlier message of this batch wins, as it would have one batch earlier.
            res.rejected.append(
                Rejection(
                    m.record,
                    IdempotencyConflict(
                        rid,
                        f"request_id={rid} appears earlier in the stream with other content",
                    ),
                )
            )

    def _conflict(self, m: Message[SignRequest], row: Row) -> Rejection:
        rid = m.value.request.request_id
        return Rejection(
            m.record,
            IdempotencyConflict(
                rid,
                f"request_id={rid} is stored as entry {row['id']} with other content "
                f"(content_sha256 {row['content_sha256']} != {m.value.content_sha256})",
            ),
        )

    async def _sign(self, requests: list[SignRequest]) -> list[NewRow]:
        chunks = [
            requests[i : i + self._batch_max] for i in range(0, len(requests), self._batch_max)
        ]
        signed = await asyncio.gather(*(self._sign_chunk(c) for c in chunks))
        return [row for chunk in signed for row in chunk]

    async def _sign_chunk(self, chunk: list[SignRequest]) -> list[NewRow]:
        """One Vault ``batch_input`` call; every signature checked against the PEM we store."""
        self._metrics.vault_batch_size.observe(len(chunk))
        t0 = time.monotonic()
        try:
            signatures = await self._vault.sign_batch(self._key, [r.statement for r in chunk])
            keys = {
                v: await self._vault.public_key(self._key, v)
                for v in sorted({s.version for s in signatures})
            }
        except (VaultUnavailable, VaultError, VerificationError) as exc:
            # all retried (shared/errors.py): no message is at fault, an operator fixes Vault
            log.error("vault sign: %s", exc, extra={"key": self._key, "items": len(chunk)})  # noqa: TRY400
            raise
        finally:
            self._metrics.vault_latency.labels(key=self._key, op="sign").observe(
                time.monotonic() - t0
            )
        if len(signatures) != len(chunk):
            raise VaultError(
                f"vault sign: {len(signatures)} signatures for {len(chunk)} statements"
            )
        # The adapter has verified every signature with the key version's public key (off
        # the event loop); that very key's PEM is what we store next to the signature.
        return [
            NewRow(sign=req, signature=sig, public_key_pem=keys[sig.version].pem)
            for req, sig in zip(chunk, signatures, strict=True)
        ]

    async def _publish(self, res: _Resolution) -> None:
        events: list[SignedEvent] = []
        debug = log.isEnabledFor(logging.DEBUG)
        for rid, (value, req) in res.publish.items():
            entry_id = str(req.entry_id)
            headers = [
                ("entry_id", entry_id.encode()),
                ("request_id", rid.encode()),
                *req.trace_headers,
            ]
            events.append((req.request.subject, value, headers))
            if debug:
                with log_context(request_id=rid, entry_id=entry_id):
                    log.debug("entry stored", extra={"outcome": res.outcome.get(rid)})
        if events:
            await self._publisher.publish_signed(events)
