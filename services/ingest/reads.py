"""The read routes: ``GET /entries``, ``/entries/{id}``, ``/entries/{id}/proof``,
``/entries/by-request/{request_id}`` and ``/batches/{id}/sigstore-bundle`` (what each answers
is in ``openapi.json``)."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any, Final

from aiohttp import web

from shared.errors import VerificationError
from shared.messages import REQUEST_ID_PATTERN, SUBJECT_PATTERN
from shared.sigstore_bundle import batch_bundle

from .responses import error, parse_time
from .store import (
    Cursor,
    EntryFilter,
    EntryStore,
    PendingProof,
    ProofStore,
    decode_cursor,
    encode_cursor,
)
from .validation import RequestRejected

__all__ = ["PAYLOAD_HASH_PATTERN", "EntryReads"]

log = logging.getLogger("ledger.ingest")

_MAX_LIMIT: Final = 1000
_DEFAULT_LIMIT: Final = 100
_PROOF_RETRY_AFTER_S: Final = "5"
_REQUEST_ID_PATH_RE: Final = re.compile(REQUEST_ID_PATTERN)
_SUBJECT_RE: Final = re.compile(SUBJECT_PATTERN)
_LIST_PARAMETERS: Final = frozenset({"subject", "from", "to", "anchored", "payload_hash",
                                     "limit", "cursor", "order"})
#: ``payload_hash``: hex SHA-256 in either case, as ``POST /append`` takes ``payload_sha256``
#: (some tools print digests in upper case); the ledger stores lower case
PAYLOAD_HASH_PATTERN: Final = r"^[0-9a-fA-F]{64}$"
_PAYLOAD_HASH_RE: Final = re.compile(PAYLOAD_HASH_PATTERN)


def _path_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise RequestRejected(400, "id", "must be a UUID") from None


class EntryReads:
    """The read handlers, over the entry and proof stores."""

    def __init__(self, store: EntryStore, proofs: ProofStore | None) -> None:
        self.store = store
        self.proofs = proofs

    async def get_entry(self, request: web.Request) -> web.Response:
        view = await self.store.get(_path_id(request))
        if view is None:
            return error(404, "not_found", "no such entry (yet)", field_name="id")
        return web.json_response(view.to_json())

    async def get_entry_proof(self, request: web.Request) -> web.Response:
        """The entry's proof bundle: byte for byte its ``ledger.anchored`` event.

        Not anchored yet → 409 ``not_anchored`` (with Retry-After): the entry exists but its
        proof does not, and a 2xx would let ``curl -f`` save a pending answer as a bundle.
        """
        entry_id = _path_id(request)
        if self.proofs is None:
            return error(501, "not_implemented", "this ingest has no proof store configured")
        try:
            proof = await self.proofs.proof(entry_id)
        except VerificationError as exc:
            log.error(  # noqa: TRY400 - the message says it all; no traceback wanted
                "stored rows no longer match their anchored batch",
                extra={"entry_id": str(entry_id), "error": str(exc)[:300]},
            )
            return error(
                500, "integrity_error",
                "the stored rows of this entry's batch no longer match its anchored root; "
                "no proof can be served",
                extra={"id": str(entry_id)},
            )
        if proof is None:
            return error(404, "not_found", "no such entry (yet)", field_name="id")
        if isinstance(proof, PendingProof):
            return error(
                409, "not_anchored",
                "the entry is signed and stored but not anchored in Rekor yet; "
                "its proof exists once it is (retry later)",
                headers={"Retry-After": _PROOF_RETRY_AFTER_S},
                extra={
                    "id": str(proof.id),
                    "status": "pending",
                    "batch_id": None if proof.batch_id is None else str(proof.batch_id),
                },
            )
        return web.Response(body=proof.value, content_type="application/json")

    async def get_batch_sigstore_bundle(self, request: web.Request) -> web.Response:
        """The batch's anchoring as a Sigstore bundle (:func:`shared.sigstore_bundle.batch_bundle`).

        Pending like ``GET /entries/{id}/proof``: a batch that is claimed but has no Rekor
        receipt yet → 409 ``not_anchored`` (with Retry-After); an unknown batch → 404.
        """
        batch_id = _path_id(request)
        if self.proofs is None:
            return error(501, "not_implemented", "this ingest has no proof store configured")
        batch = await self.proofs.batch(batch_id)
        if batch is None:
            return error(404, "not_found", "no such batch (yet)", field_name="id")
        if not batch.anchored:
            return error(
                409, "not_anchored",
                "the batch is claimed but not anchored in Rekor yet; its Sigstore bundle "
                "exists once it is (retry later)",
                headers={"Retry-After": _PROOF_RETRY_AFTER_S},
                extra={"id": str(batch_id), "status": "pending", "batch_id": str(batch_id)},
            )
        try:
            bundle = batch_bundle(batch)
        except VerificationError as exc:
            log.error(  # noqa: TRY400 - the message says it all; no traceback wanted
                "a stored receipt has no Sigstore bundle form",
                extra={"batch_id": str(batch_id), "error": str(exc)[:300]},
            )
            return error(500, "integrity_error",
                         "the batch's stored Rekor receipt has no Sigstore bundle form",
                         extra={"id": str(batch_id)})
        return web.json_response(bundle)

    async def get_entry_by_request(self, request: web.Request) -> web.Response:
        request_id = request.match_info["request_id"]
        if not _REQUEST_ID_PATH_RE.fullmatch(request_id):
            raise RequestRejected(400, "request_id", "is not a valid request id")
        view = await self.store.get_by_request_id(request_id)
        if view is None:
            return error(404, "not_found", "no entry for this request id (yet)",
                         field_name="request_id")
        return web.json_response(view.to_json())

    async def list_entries(self, request: web.Request) -> web.Response:
        flt = _entry_filter(request.query)
        limit = flt.limit - 1  # one more row than asked for says whether a next page exists
        rows = await self.store.list(flt)
        page, more = rows[:limit], len(rows) > limit
        next_cursor = None
        if more:
            last = page[-1]
            next_cursor = encode_cursor(Cursor(created_at=last.created_at, id=last.id))
        body: dict[str, Any] = {
            "entries": [v.to_json() for v in page],
            "next_cursor": next_cursor,
        }
        return web.json_response(body)


def _entry_filter(q: Any) -> EntryFilter:
    """``GET /entries``' query as a filter asking for one row more than the page."""
    unknown = sorted(set(q) - _LIST_PARAMETERS)
    if unknown:
        raise RequestRejected(400, unknown[0][:64], "is not a known query parameter")
    subject = q.get("subject")
    if subject is not None and not _SUBJECT_RE.fullmatch(subject):
        # no entry can have such a subject (and PostgreSQL refuses a U+0000 in a query)
        raise RequestRejected(
            400, "subject",
            "is not a valid subject: it must start with a letter or digit and contain only "
            "letters, digits and . _ : / @ + = - (at most 256 characters)",
        )
    created_from = parse_time(q["from"], "from") if "from" in q else None
    created_to = parse_time(q["to"], "to") if "to" in q else None
    anchored: bool | None = None
    if "anchored" in q:
        if q["anchored"] not in ("true", "false"):
            raise RequestRejected(400, "anchored", "must be true or false")
        anchored = q["anchored"] == "true"
    payload_hash = q.get("payload_hash")
    if payload_hash is not None:
        if not _PAYLOAD_HASH_RE.fullmatch(payload_hash):
            raise RequestRejected(
                400, "payload_hash",
                "must be 64 hexadecimal characters (the SHA-256 of the document)")
        payload_hash = payload_hash.lower()
    try:
        limit = int(q.get("limit", _DEFAULT_LIMIT))
    except ValueError:
        raise RequestRejected(400, "limit", "must be an integer") from None
    if not 1 <= limit <= _MAX_LIMIT:
        raise RequestRejected(400, "limit", f"must be between 1 and {_MAX_LIMIT}")
    # newest first unless asked otherwise: the runbook's clients read the recent entries
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise RequestRejected(400, "order", "must be asc or desc")
    cursor = None
    if "cursor" in q:
        try:
            cursor = decode_cursor(q["cursor"])
        except ValueError as exc:
            raise RequestRejected(400, "cursor", str(exc)) from None
    return EntryFilter(
        subject=subject,
        created_from=created_from,
        created_to=created_to,
        anchored=anchored,
        payload_hash=payload_hash,
        order=order,
        after=cursor,
        limit=limit + 1,
    )
