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

from opentelemetry.trace import Span

from shared import fastjson
from shared.errors import (
    IdempotencyConflict,
    InvalidMessage,
    VaultError,
    VaultUnavailable,
    VerificationError,
)
from shared.kafka import Record
from shared.messages import AppendRequest, decode
from shared.otel import SIGNER_SPAN, EntryTracer, ended
from shared.records import EntryRecord, NewEntry
from shared.stage import Message, Rejection, Turn
from shared.statement import content_sha256, entry_id_for, statement_bytes
from shared.telemetry import Metrics, log_context
from shared.tracing import trace_headers
from shared.vault import PublicKey, Signature

__all__ = [
    "DEFAULT_MAX_META_BYTES",
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


#: LEDGER_MAX_META_BYTES' default: ingest refuses larger meta, and so does the signer
DEFAULT_MAX_META_BYTES = 16 * 1024


def decode_append(record: Record, *, max_meta_bytes: int = DEFAULT_MAX_META_BYTES) -> SignRequest:
    """Decode a ``ledger.append`` record; anything unusable raises :class:`InvalidMessage`.

    ``meta`` is held to the limit ingest applies (canonical JSON bytes): a producer that
    bypasses ingest could otherwise make a ``ledger.signed`` event larger than Kafka takes,
    which no retry can publish.
    """
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
    if len(statement) > max_meta_bytes:  # the statement holds the canonical meta
        size = len(fastjson.canonical(request.meta))
        if size > max_meta_bytes:
            raise InvalidMessage(
                "invalid fields",
                detail=f"meta: too large ({size} bytes as canonical JSON, at most "
                f"{max_meta_bytes})",
            )
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


class EntryStore(Protocol):
    """``ledger.entries`` as the signer uses it (:class:`shared.repository.Repository`)."""

    async def entries_by_request_id(
        self, request_ids: Sequence[str]
    ) -> dict[str, EntryRecord]: ...

    async def insert_entries(
        self, entries: Sequence[NewEntry]
    ) -> tuple[dict[str, datetime], dict[str, EntryRecord]]: ...


class SignedPublisher(Protocol):
    """Publishes ``ledger.signed`` events and returns once Kafka acknowledged all of them."""

    async def publish_signed(self, events: Sequence[SignedEvent]) -> None: ...


# --- the stage ---------------------------------------------------------------------------------


@dataclass
class _Resolution:
    """What a batch turned out to be: entries to publish and messages to dead-letter."""

    publish: dict[str, tuple[bytes, SignRequest]]  # request id → ledger.signed JSON
    to_sign: dict[str, SignRequest]  # request id → first message with that id
    rejected: list[Rejection]
    outcome: dict[str, str]  # request id → "new" | "existing"
    started_ns: int = 0  # when the batch's work began (tracing on only: the spans' start)


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
        max_meta_bytes: int = DEFAULT_MAX_META_BYTES,
        tracer: EntryTracer | None = None,
    ) -> None:
        self._max_meta_bytes = max_meta_bytes
        self._tracer = tracer
        self._store = store
        self._vault = vault
        self._publisher = publisher
        self._key = key_name
        self._batch_max = batch_max
        self._metrics = metrics

    def decode(self, record: Record) -> SignRequest:
        return decode_append(record, max_meta_bytes=self._max_meta_bytes)

    async def process_batch(
        self, messages: Sequence[Message[SignRequest]], turn: Turn | None = None
    ) -> list[Rejection]:
        """Steps 1-2 run as soon as the batch is fetched, while earlier batches are stored;
        steps 3-4 run in stream order (``turn``), so of two messages with the same request id
        and other content, the earlier one is stored and the later one refused."""
        ids = list(dict.fromkeys(m.value.request.request_id for m in messages))
        stored = await self._store.entries_by_request_id(ids)
        res = _Resolution(publish={}, to_sign={}, rejected=[], outcome={},
                          started_ns=time.time_ns() if self._tracer is not None else 0)
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
        self, messages: Sequence[Message[SignRequest]], res: _Resolution,
        new_rows: list[NewEntry]
    ) -> None:
        if new_rows:
            inserted, raced = await self._store.insert_entries(new_rows)
            for new in new_rows:
                rid = new.request_id
                created_at = inserted.get(rid)
                if created_at is not None:
                    res.publish[rid] = (new.signed_event(created_at), res.to_sign[rid])
                    res.outcome[rid] = "new"
            for rid, row in raced.items():
                # another signer stored it between our read and our insert
                first = res.to_sign[rid]
                if row.content_sha256 == first.content_sha256:
                    res.publish[rid] = (row.signed_event(), first)
                    res.outcome[rid] = "existing"
            # messages whose request id turned out to be stored with other content
            already = {id(j.record) for j in res.rejected}
            for m in messages:
                other = raced.get(m.value.request.request_id)
                if (
                    other is not None
                    and id(m.record) not in already
                    and other.content_sha256 != m.value.content_sha256
                ):
                    res.rejected.append(self._conflict(m, other))
        await self._publish(res)

    # --- steps ---------------------------------------------------------------------------------

    def _resolve(
        self, res: _Resolution, m: Message[SignRequest], row: EntryRecord | None
    ) -> None:
        rid = m.value.request.request_id
        if row is not None:
            if row.content_sha256 == m.value.content_sha256:
                if rid not in res.publish:
                    res.publish[rid] = (row.signed_event(), m.value)
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

    def _conflict(self, m: Message[SignRequest], row: EntryRecord) -> Rejection:
        rid = m.value.request.request_id
        return Rejection(
            m.record,
            IdempotencyConflict(
                rid,
                f"request_id={rid} is stored as entry {row.id} with other content "
                f"(content_sha256 {row.content_sha256} != {m.value.content_sha256})",
            ),
        )

    async def _sign(self, requests: list[SignRequest]) -> list[NewEntry]:
        chunks = [
            requests[i : i + self._batch_max] for i in range(0, len(requests), self._batch_max)
        ]
        signed = await asyncio.gather(*(self._sign_chunk(c) for c in chunks))
        return [row for chunk in signed for row in chunk]

    async def _sign_chunk(self, chunk: list[SignRequest]) -> list[NewEntry]:
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
            NewEntry(
                id=req.entry_id, request_id=req.request.request_id, subject=req.request.subject,
                payload_hash=req.request.payload_sha256, meta=req.request.meta,
                submitted_at=req.request.submitted_at, statement=req.statement, sig=sig.vault,
                key_name=sig.key_name, key_version=sig.version, pubkey=keys[sig.version].pem,
                content_sha256=req.content_sha256,
            )
            for req, sig in zip(chunk, signatures, strict=True)
        ]

    async def _publish(self, res: _Resolution) -> None:
        events: list[SignedEvent] = []
        spans: list[Span] = []
        debug = log.isEnabledFor(logging.DEBUG)
        for rid, (value, req) in res.publish.items():
            entry_id = str(req.entry_id)
            trace: Sequence[tuple[str, bytes]] = req.trace_headers
            if self._tracer is not None:  # the event then names this entry's signer span
                span, trace = self._tracer.start_from(
                    SIGNER_SPAN, req.trace_headers, entry_id=req.entry_id,
                    start_ns=res.started_ns)
                if span is not None:
                    span.set_attribute("ledger.outcome", res.outcome.get(rid, ""))
                    spans.append(span)
            headers = [
                ("entry_id", entry_id.encode()),
                ("request_id", rid.encode()),
                *trace,
            ]
            events.append((req.request.subject, value, headers))
            if debug:
                with log_context(request_id=rid, entry_id=entry_id):
                    log.debug("entry stored", extra={"outcome": res.outcome.get(rid)})
        if events:
            with ended(spans):
                await self._publisher.publish_signed(events)
