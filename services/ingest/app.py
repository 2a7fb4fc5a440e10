"""The ingest HTTP API (aiohttp): validate, hash, publish to ``ledger.append``, answer.

Routes (documented in ``openapi.json`` next to this file, served at ``GET /openapi.json``):

=========================================  ========  ==========================================
``POST /append``                           append    validate, publish, wait for the signer
``POST /append/batch``                     append    up to 1,000 appends, one result each
``GET /entries``                           read      filters + keyset cursor pagination
``GET /entries/{id}``                      read      one entry (the 202 status URL)
``GET /entries/{id}/proof``                read      the offline proof bundle (409 until anchored)
``GET /entries/by-request/{request_id}``   read      one entry by its idempotency key
``GET /health``                            open      status, database, rekor, kafka, vault
``GET /metrics``                           open      Prometheus exposition
``GET /openapi.json``                      open      this API's OpenAPI 3.1 document
=========================================  ========  ==========================================

How ``POST /append`` answers
----------------------------
1. Auth, content type (415), size (413: ``Content-Length`` first, then a capped read), JSON
   (400), fields (400/413). Any rejection publishes nothing.
2. The payload is hashed and dropped (:mod:`.validation`). The request id is the client's
   (``request_id`` or ``Idempotency-Key``; both → must match) or a fresh UUIDv4; the entry id
   is ``entry_id_for(request_id)`` — known before anything is published.
3. Only when the client chose the request id can the entry already exist: then ingest does
   **one** lookup by request id before publishing. Same content → ``201`` with the stored
   entry (``Idempotent-Replayed: true``), nothing published; different content → ``409``.
   If the database is down the lookup is skipped and the signer's idempotency decides.
4. The :class:`AppendRequest` is published (key = subject) and the broker's ``acks=all``
   acknowledgement awaited. No ack → ``503`` + ``Retry-After``: never acknowledged to the
   client what Kafka has not.
5. ``Prefer: respond-async`` → ``202`` now. Otherwise the handler waits, at most
   ``append_wait_ms``, on a future registered under the entry id *before* publishing; the
   process's single ``ledger.signed`` tail (:mod:`.waiter`) resolves it. No database polling.
   Resolved → ``201`` in the runbook's shape; timed out → ``202`` with the status URL.

``POST /append/batch`` runs the same steps for up to 1,000 entries at once: every entry is
validated like an ``/append`` body and gets its own result (``201``, ``202``, ``409`` or the
``4xx`` of its problem) at its index; one lookup covers the client-chosen request ids; the
valid entries go to Kafka together; the answer is ``200`` with the results (``errors`` true
when any entry was refused). Only a malformed envelope fails the whole request (``4xx``); if
Kafka does not acknowledge, the answer is ``503`` naming the request id of every entry, so a
retry with those ids is idempotent.

Never logs or returns the payload or a token; logs carry request id and entry id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared import fastjson
from shared.errors import (
    ConfigError,
    DatabaseUnavailable,
    KafkaUnavailable,
    LedgerError,
    Policy,
    VerificationError,
)
from shared.messages import append_request_fields
from shared.settings import Settings
from shared.statement import content_sha256, entry_id_for
from shared.telemetry import Metrics, log_context
from shared.tracing import continue_trace, trace_id_of

from .auth import Principal, TokenStore
from .health import HealthCheck, run_checks
from .store import (
    Cursor,
    EntryFilter,
    EntryStore,
    EntryView,
    PendingProof,
    ProofStore,
    decode_cursor,
    encode_cursor,
)
from .validation import (
    MetaSchema,
    RequestRejected,
    ValidAppend,
    body_limit,
    parse_append,
    parse_append_batch,
    resolve_request_id,
)
from .waiter import SignedWaiter

__all__ = ["OPENAPI_PATH", "IngestDeps", "Publisher", "build_app", "check_auth_config"]

log = logging.getLogger("ledger.ingest")

OPENAPI_PATH: Final = Path(__file__).with_name("openapi.json")
_MAX_LIMIT: Final = 1000
_DEFAULT_LIMIT: Final = 100
_RETRY_AFTER_S: Final = "2"
_PROOF_RETRY_AFTER_S: Final = "5"
_HEALTH_TIMEOUT_S: Final = 2.0
_READ_CHUNK: Final = 64 * 1024
_JSON_HEADER: Final = ("content-type", b"application/json")
_JSON_TYPE_RE: Final = re.compile(r"^application/([a-z0-9.+-]+\+)?json$")
_REQUEST_ID_PATH_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

#: route name → scope a token needs (routes not listed are open)
_ROUTE_SCOPES: Final = {
    "append": "append",
    "append_batch": "append",
    "list_entries": "read",
    "get_entry": "read",
    "get_entry_proof": "read",
    "get_entry_by_request": "read",
}


class Publisher(Protocol):
    """Sends records and returns once the broker acknowledged them (``acks=all``).

    Raises :class:`KafkaUnavailable` when it cannot; :class:`.publisher.KafkaPublisher` fits.
    """

    async def send(
        self, topic: str, key: bytes | str | None, value: bytes, headers: Any = None
    ) -> object: ...

    async def send_many(
        self, records: Sequence[tuple[str, bytes | str | None, bytes, Any]]
    ) -> object: ...


@dataclass(frozen=True)
class IngestDeps:
    """Everything the API talks to, injectable for tests."""

    publisher: Publisher
    store: EntryStore
    waiter: SignedWaiter
    metrics: Metrics
    #: name → probe; ``/health`` reports each (database, kafka, vault, rekor)
    health_checks: Mapping[str, HealthCheck] = field(default_factory=dict)
    #: None only when ``settings.auth_disabled``
    tokens: TokenStore | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    meta_schema: MetaSchema | None = None  # default: loaded from settings.meta_schema_path
    #: ``GET /entries/{id}/proof`` reads here; None answers 501 (the service passes its store)
    proofs: ProofStore | None = None


def _json(body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
          ) -> web.Response:
    return web.Response(body=fastjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


def _error(
    status: int,
    error: str,
    message: str,
    *,
    field_name: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"error": error}
    if field_name is not None:
        body["field"] = field_name
    body["message"] = message
    if extra:
        body.update(extra)
    return _json(body, status=status, headers=headers)


def _rejection(exc: RequestRejected) -> web.Response:
    headers = {"Retry-After": _RETRY_AFTER_S} if exc.status == 503 else None
    return _json(exc.body(), status=exc.status, headers=headers)


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical


def _parse_prefer(header: str | None) -> tuple[bool, float | None]:
    """RFC 7240: (respond-async requested, wait seconds requested)."""
    if not header:
        return False, None
    respond_async = False
    wait: float | None = None
    for part in re.split(r"[,;]", header):
        pref = part.strip().lower()
        if pref == "respond-async":
            respond_async = True
        elif pref.startswith("wait="):
            try:
                wait = max(0.0, float(pref[5:].strip('"')))
            except ValueError:
                continue
    return respond_async, wait


def _parse_time(value: str, name: str) -> datetime:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise RequestRejected(400, name, "must be an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise RequestRejected(400, name, "needs a time zone (e.g. 2026-01-01T00:00:00Z)")
    return parsed


class _Api:
    def __init__(self, settings: Settings, deps: IngestDeps, openapi: bytes) -> None:
        self.settings = settings
        self.deps = deps
        self.metrics = deps.metrics
        self.openapi = openapi
        self.meta_schema = deps.meta_schema or MetaSchema.from_path(settings.meta_schema_path)
        self.body_limit = body_limit(settings.max_payload_bytes, settings.max_meta_bytes)
        self.batch_body_limit = settings.max_batch_body_bytes
        self.wait_s = settings.append_wait_ms / 1000

    # --- middlewares ------------------------------------------------------------------------

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Metrics for every request, bearer auth where the route needs it, JSON errors.

        One middleware, not three: each layer is a coroutine per request.
        """
        started = time.monotonic()
        status = 500
        try:
            response = await self._guarded(request, handler)
            status = response.status
            return response
        finally:
            route = _route_label(request)
            self.metrics.http_requests.labels(route, request.method, str(status)).inc()
            self.metrics.http_latency.labels(route).observe(time.monotonic() - started)

    async def _guarded(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            principal = self._authenticate(request)
            if isinstance(principal, web.Response):
                return principal
            if principal is None:
                return await handler(request)
            with log_context(token_name=principal.name):
                return await handler(request)
        except RequestRejected as exc:
            return _rejection(exc)
        except LedgerError as exc:
            if exc.policy is not Policy.RETRY:
                log.exception("unhandled error", extra={"path": request.path})
                return _error(500, "internal_error", "internal error")
            # what a stage would pause and retry on, a client retries later
            log.warning(
                "dependency unavailable", extra={"error": type(exc).__name__, "path": request.path}
            )
            return _error(
                503, "unavailable", "a dependency is unavailable; retry later",
                headers={"Retry-After": _RETRY_AFTER_S},
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {
                k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")
            }
            return _error(
                exc.status,
                exc.reason.lower().replace(" ", "_"),
                exc.reason,
                headers=headers,
            )
        except Exception:
            log.exception("unhandled error", extra={"path": request.path})
            return _error(500, "internal_error", "internal error")

    def _authenticate(self, request: web.Request) -> Principal | web.Response | None:
        """The caller (None for open routes or auth off), or the 401/403 to answer."""
        scope = _ROUTE_SCOPES.get(request.match_info.route.name or "")
        if scope is None or self.deps.tokens is None:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _error(
                401, "unauthorized", "a bearer token is required (Authorization: Bearer <token>)",
                field_name="Authorization",
                headers={"WWW-Authenticate": 'Bearer realm="ledger"'},
            )
        principal: Principal | None = self.deps.tokens.authenticate(token)
        if principal is None:
            return _error(
                401, "unauthorized", "the bearer token is not valid",
                field_name="Authorization",
                headers={"WWW-Authenticate": 'Bearer realm="ledger", error="invalid_token"'},
            )
        if scope not in principal.scopes:
            return _error(
                403, "forbidden", f"the token lacks the {scope!r} scope",
                field_name="Authorization",
                headers={
                    "WWW-Authenticate": (
                        f'Bearer realm="ledger", error="insufficient_scope", scope="{scope}"'
                    )
                },
            )
        return principal

    # --- POST /append ---------------------------------------------------------------------

    async def _read_body(self, request: web.Request, limit: int) -> bytes:
        if not _JSON_TYPE_RE.match(request.content_type.lower()):
            raise RequestRejected(
                415, "Content-Type", "must be application/json",
                error="unsupported_media_type",
            )
        too_large = RequestRejected(
            413, "body", f"is too large (at most {limit} bytes)",
            error="payload_too_large",
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.read(_READ_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def _limits(self) -> dict[str, Any]:
        return {
            "max_payload_bytes": self.settings.max_payload_bytes,
            "max_meta_bytes": self.settings.max_meta_bytes,
            "max_meta_depth": self.settings.max_meta_depth,
            "meta_schema": self.meta_schema,
        }

    def _wait_s(self, request: web.Request) -> tuple[bool, float]:
        """(respond-async asked for, how long to wait for the signer)."""
        prefer = request.headers.get("Prefer")
        if prefer is None:
            return False, self.wait_s
        respond_async, wait_pref = _parse_prefer(prefer)
        return respond_async, self.wait_s if wait_pref is None else min(self.wait_s, wait_pref)

    def _message(self, valid: ValidAppend, request_id: str) -> bytes:
        """The ``ledger.append`` JSON (values validated already; see append_request_fields)."""
        return fastjson.dumps(append_request_fields(
            request_id=request_id, subject=valid.subject, payload_sha256=valid.payload_sha256,
            meta=valid.meta, submitted_at=self.deps.clock(),
        ))

    async def append(self, request: web.Request) -> web.Response:
        raw = await self._read_body(request, self.body_limit)
        valid = parse_append(raw, **self._limits())
        del raw  # the payload is gone from here on: only its hash remains
        client_id = resolve_request_id(valid.request_id, request.headers.get("Idempotency-Key"))
        request_id = client_id or str(uuid.uuid4())
        entry_id = entry_id_for(request_id)
        respond_async, wait_s = self._wait_s(request)
        content = content_sha256(
            subject=valid.subject, payload_sha256=valid.payload_sha256, meta=valid.meta
        )
        trace = continue_trace(
            request.headers.get("traceparent"), request.headers.get("tracestate")
        )
        with log_context(
            request_id=request_id, entry_id=str(entry_id), trace_id=trace_id_of(trace)
        ):
            if client_id is not None:
                existing = await self._existing(request_id)
                if existing is not None:
                    return self._answer_existing(existing, content)
            record = (self.settings.topic_append, valid.subject,
                      self._message(valid, request_id), [_JSON_HEADER, *trace])
            if respond_async or wait_s <= 0:
                await self._publish([record], [request_id], valid.payload_sha256)
                self.metrics.append_wait.labels("async").inc()
                return self._accepted(request_id, entry_id, preference_applied=respond_async)
            with self.deps.waiter.expect(entry_id) as signed:
                await self._publish([record], [request_id], valid.payload_sha256)
                done, _ = await asyncio.wait({signed}, timeout=wait_s)
            if not done or signed.cancelled():
                self.metrics.append_wait.labels("timeout").inc()
                log.info("append accepted; signer not done within the wait")
                return self._accepted(request_id, entry_id, preference_applied=False)
            view = signed.result()
            self.metrics.append_wait.labels("stored").inc()
            if self._content_of(view) != content:
                return self._conflict(view)
            log.debug("append stored", extra={"payload_sha256": view.payload_hash})
            return self._created(view, replayed=False)

    async def append_batch(self, request: web.Request) -> web.Response:
        """``POST /append/batch``: one result per entry (see the module docstring)."""
        raw = await self._read_body(request, self.batch_body_limit)
        items = parse_append_batch(raw, **self._limits())
        del raw
        respond_async, wait_s = self._wait_s(request)
        trace = continue_trace(
            request.headers.get("traceparent"), request.headers.get("tracestate")
        )
        results: list[dict[str, Any] | None] = [None] * len(items)
        # request id → (index of its first entry, content hash); later entries with the same
        # id share that entry's result (same content) or are conflicts (other content)
        first: dict[str, tuple[int, str]] = {}
        followers: dict[int, list[int]] = {}
        todo: list[tuple[int, ValidAppend, str, uuid.UUID, str]] = []
        client_ids: list[str] = []
        assigned: list[str | None] = [None] * len(items)  # for a 503: retry with these
        for index, item in enumerate(items):
            if isinstance(item, RequestRejected):
                results[index] = {"index": index, "status": item.status, **item.body()}
                continue
            request_id = assigned[index] = item.request_id or str(uuid.uuid4())
            content = content_sha256(
                subject=item.subject, payload_sha256=item.payload_sha256, meta=item.meta
            )
            seen = first.get(request_id)
            if seen is not None:
                if seen[1] == content:
                    followers.setdefault(seen[0], []).append(index)
                else:
                    results[index] = self._item_conflict(index, entry_id_for(request_id),
                                                         request_id, earlier=seen[0])
                continue
            first[request_id] = (index, content)
            if item.request_id is not None:
                client_ids.append(request_id)
            todo.append((index, item, request_id, entry_id_for(request_id), content))
        if client_ids:
            existing = await self._existing_many(client_ids)
            kept = []
            for index, item, request_id, entry_id, content in todo:
                view = existing.get(request_id)
                if view is None:
                    kept.append((index, item, request_id, entry_id, content))
                elif self._content_of(view) != content:
                    results[index] = self._item_conflict(index, view.id, request_id)
                else:
                    results[index] = self._item_created(index, view, replayed=True)
            todo = kept
        records = [
            (self.settings.topic_append, item.subject, self._message(item, request_id),
             [_JSON_HEADER, *trace])
            for _, item, request_id, _, _ in todo
        ]
        ids = [request_id for _, _, request_id, _, _ in todo]
        waiting = not respond_async and wait_s > 0
        with contextlib.ExitStack() as stack:
            signed = [stack.enter_context(self.deps.waiter.expect(entry_id))
                      for _, _, _, entry_id, _ in todo] if waiting else []
            if records:
                await self._publish(records, ids, None, every_id=assigned)
            if signed:
                await asyncio.wait(set(signed), timeout=wait_s)
            for k, (index, _, request_id, entry_id, content) in enumerate(todo):
                future = signed[k] if signed else None
                if future is None or not future.done() or future.cancelled():
                    results[index] = self._item_accepted(index, request_id, entry_id)
                elif self._content_of(future.result()) != content:
                    results[index] = self._item_conflict(index, entry_id, request_id)
                else:
                    results[index] = self._item_created(index, future.result(), replayed=False)
        for leader, indexes in followers.items():
            for index in indexes:
                results[index] = {**(results[leader] or {}), "index": index}
        done = [r for r in results if r is not None]
        failed = sum(1 for r in done if r["status"] >= 400)
        self.metrics.append_wait.labels("batch").inc(len(todo))
        log.info("append batch", extra={"entries": len(items), "published": len(records),
                                        "refused": failed})
        return _json({"errors": failed > 0, "refused": failed, "results": done})

    @staticmethod
    def _item_accepted(index: int, request_id: str, entry_id: uuid.UUID) -> dict[str, Any]:
        return {"index": index, "status": 202, "id": str(entry_id), "request_id": request_id,
                "status_url": f"/entries/{entry_id}"}

    @staticmethod
    def _item_created(index: int, view: EntryView, *, replayed: bool) -> dict[str, Any]:
        item: dict[str, Any] = {"index": index, "status": 201, "entry": view.to_json()}
        if replayed:
            item["replayed"] = True
        return item

    @staticmethod
    def _item_conflict(index: int, entry_id: uuid.UUID, request_id: str,
                       earlier: int | None = None) -> dict[str, Any]:
        where = (f"entry {earlier} of this batch" if earlier is not None
                 else "an earlier request")
        return {"index": index, "status": 409, "error": "idempotency_conflict",
                "field": "request_id",
                "message": f"this request_id was already used by {where} with a different "
                           "subject, payload or meta",
                "id": str(entry_id), "request_id": request_id}

    async def _existing(self, request_id: str) -> EntryView | None:
        return (await self._existing_many([request_id])).get(request_id)

    async def _existing_many(self, request_ids: Sequence[str]) -> dict[str, EntryView]:
        try:
            if len(request_ids) == 1:
                view = await self.deps.store.get_by_request_id(request_ids[0])
                return {} if view is None else {view.request_id: view}
            return await self.deps.store.get_by_request_ids(request_ids)
        except DatabaseUnavailable as exc:
            # availability over an early answer: the signer's idempotency still decides
            log.warning("idempotency lookup skipped", extra={"error": type(exc).__name__})
            return {}

    @staticmethod
    def _content_of(view: EntryView) -> str:
        return view.content_sha256 or content_sha256(
            subject=view.subject, payload_sha256=view.payload_hash, meta=view.meta
        )

    def _answer_existing(self, view: EntryView, content: str) -> web.Response:
        if self._content_of(view) != content:
            return self._conflict(view)
        log.info("append replayed from the database")
        self.metrics.append_wait.labels("replayed").inc()
        return self._created(view, replayed=True)

    def _conflict(self, view: EntryView) -> web.Response:
        log.warning("idempotency conflict")
        return _error(
            409, "idempotency_conflict",
            "this request_id was already used with a different subject, payload or meta",
            field_name="request_id",
            extra={"id": str(view.id), "request_id": view.request_id},
        )

    async def _publish(
        self,
        records: Sequence[tuple[str, bytes | str | None, bytes, Any]],
        request_ids: Sequence[str],
        payload_sha256: str | None,
        *,
        every_id: Sequence[str | None] | None = None,
    ) -> None:
        try:
            if len(records) == 1:
                await self.deps.publisher.send(*records[0])
            else:
                await self.deps.publisher.send_many(records)
        except KafkaUnavailable as exc:
            log.warning("publish failed; answering 503", extra={"error": type(exc).__name__})
            raise RequestUnavailable(request_ids[0] if len(request_ids) == 1 else None,
                                     every_id) from None
        self.metrics.appends_published.inc(len(records))
        if payload_sha256 is not None and log.isEnabledFor(logging.DEBUG):
            # per request, so DEBUG: at thousands a second a line each costs more than the
            # append; the unusual outcomes (timeout, replay, conflict, 503) stay at INFO
            log.debug("append published", extra={"payload_sha256": payload_sha256})

    @staticmethod
    def _created(view: EntryView, *, replayed: bool) -> web.Response:
        headers = {"Location": f"/entries/{view.id}"}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return _json(view.to_json(), status=201, headers=headers)

    @staticmethod
    def _accepted(
        request_id: str, entry_id: uuid.UUID, *, preference_applied: bool
    ) -> web.Response:
        status_url = f"/entries/{entry_id}"
        headers = {"Location": status_url, "Retry-After": "1"}
        if preference_applied:
            headers["Preference-Applied"] = "respond-async"
        body = {
            "status": "accepted",
            "id": str(entry_id),
            "request_id": request_id,
            "status_url": status_url,
            "request_url": f"/entries/by-request/{request_id}",
        }
        return _json(body, status=202, headers=headers)

    # --- reads ------------------------------------------------------------------------------

    async def get_entry(self, request: web.Request) -> web.Response:
        try:
            entry_id = uuid.UUID(request.match_info["id"])
        except ValueError:
            raise RequestRejected(400, "id", "must be a UUID") from None
        view = await self.deps.store.get(entry_id)
        if view is None:
            return _error(404, "not_found", "no such entry (yet)", field_name="id")
        return web.json_response(view.to_json())

    async def get_entry_proof(self, request: web.Request) -> web.Response:
        """The entry's proof bundle: byte for byte its ``ledger.anchored`` event.

        Not anchored yet → 409 ``not_anchored`` (with Retry-After): the entry exists but its
        proof does not, and a 2xx would let ``curl -f`` save a pending answer as a bundle.
        """
        try:
            entry_id = uuid.UUID(request.match_info["id"])
        except ValueError:
            raise RequestRejected(400, "id", "must be a UUID") from None
        if self.deps.proofs is None:
            return _error(501, "not_implemented", "this ingest has no proof store configured")
        try:
            proof = await self.deps.proofs.proof(entry_id)
        except VerificationError as exc:
            log.error(  # noqa: TRY400 - the message says it all; no traceback wanted
                "stored rows no longer match their anchored batch",
                extra={"entry_id": str(entry_id), "error": str(exc)[:300]},
            )
            return _error(
                500, "integrity_error",
                "the stored rows of this entry's batch no longer match its anchored root; "
                "no proof can be served",
                extra={"id": str(entry_id)},
            )
        if proof is None:
            return _error(404, "not_found", "no such entry (yet)", field_name="id")
        if isinstance(proof, PendingProof):
            return _error(
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

    async def get_entry_by_request(self, request: web.Request) -> web.Response:
        request_id = request.match_info["request_id"]
        if not _REQUEST_ID_PATH_RE.match(request_id):
            raise RequestRejected(400, "request_id", "is not a valid request id")
        view = await self.deps.store.get_by_request_id(request_id)
        if view is None:
            return _error(404, "not_found", "no entry for this request id (yet)",
                          field_name="request_id")
        return web.json_response(view.to_json())

    async def list_entries(self, request: web.Request) -> web.Response:
        q = request.query
        unknown = sorted(set(q) - {"subject", "from", "to", "anchored", "limit", "cursor", "order"})
        if unknown:
            raise RequestRejected(400, unknown[0][:64], "is not a known query parameter")
        subject = q.get("subject")
        created_from = _parse_time(q["from"], "from") if "from" in q else None
        created_to = _parse_time(q["to"], "to") if "to" in q else None
        anchored: bool | None = None
        if "anchored" in q:
            if q["anchored"] not in ("true", "false"):
                raise RequestRejected(400, "anchored", "must be true or false")
            anchored = q["anchored"] == "true"
        try:
            limit = int(q.get("limit", _DEFAULT_LIMIT))
        except ValueError:
            raise RequestRejected(400, "limit", "must be an integer") from None
        if not 1 <= limit <= _MAX_LIMIT:
            raise RequestRejected(400, "limit", f"must be between 1 and {_MAX_LIMIT}")
        order = q.get("order", "asc")
        if order not in ("asc", "desc"):
            raise RequestRejected(400, "order", "must be asc or desc")
        cursor = None
        if "cursor" in q:
            try:
                cursor = decode_cursor(q["cursor"])
            except ValueError as exc:
                raise RequestRejected(400, "cursor", str(exc)) from None
            if cursor.order != order:
                raise RequestRejected(400, "cursor", "was made for the other order")
        flt = EntryFilter(
            subject=subject,
            created_from=created_from,
            created_to=created_to,
            anchored=anchored,
            order=order,  # type: ignore[arg-type]
            after=cursor,
            limit=limit + 1,
        )
        rows = await self.deps.store.list(flt)
        page, more = rows[:limit], len(rows) > limit
        next_cursor = None
        if more:
            last = page[-1]
            next_cursor = encode_cursor(Cursor(created_at=last.created_at, id=last.id, order=order))  # type: ignore[arg-type]
        body: dict[str, Any] = {
            "entries": [v.to_json() for v in page],
            "next_cursor": next_cursor,
        }
        return web.json_response(body)

    # --- operations -------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        names = ("database", "rekor", "kafka", "vault")
        checks = {n: c for n, c in self.deps.health_checks.items() if n in names}
        results = await run_checks(checks, timeout_s=_HEALTH_TIMEOUT_S)
        body: dict[str, Any] = {}
        all_ok = True
        for name in names:
            up = results.get(name, False)
            body[name] = up
            all_ok = all_ok and up
            self.metrics.dependency_up.labels(name).set(1 if up else 0)
        body = {"status": "ok" if all_ok else "degraded", **body}
        return web.json_response(body, status=200 if all_ok else 503)

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        data = generate_latest(self.metrics.registry)
        response = web.Response(body=data)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def openapi_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=self.openapi, content_type="application/json")


class RequestUnavailable(RequestRejected):
    """Kafka did not acknowledge: 503, and the client should retry with the same request id
    (a batch: with the request id this answer gives each entry)."""

    policy = Policy.RETRY

    def __init__(
        self, request_id: str | None, request_ids: Sequence[str | None] | None = None
    ) -> None:
        super().__init__(
            503, "kafka",
            "the request was not acknowledged by Kafka; retry later with the same request_id"
            + ("s (given for every entry, in order)" if request_ids is not None else ""),
            error="unavailable",
        )
        self.request_id = request_id
        self.request_ids = list(request_ids) if request_ids is not None else None

    def body(self) -> dict[str, Any]:
        if self.request_ids is not None:
            return {**super().body(), "request_ids": self.request_ids}
        return {**super().body(), "request_id": self.request_id}


def check_auth_config(settings: Settings) -> None:
    """Fail closed: auth on without a tokens file is a configuration error."""
    if not settings.auth_disabled and not settings.tokens_file:
        raise ConfigError(
            "authentication is on but no tokens are configured: set LEDGER_TOKENS_FILE "
            "(create a token with services.ingest.create_token) or, for development only, "
            "LEDGER_AUTH_DISABLED=true"
        )


def build_app(settings: Settings, deps: IngestDeps) -> web.Application:
    """The aiohttp application; ``deps`` carries every external system (see :class:`IngestDeps`).

    Raises :class:`ConfigError` when auth is on without a token store, or the meta schema
    cannot be loaded.
    """
    if deps.tokens is None:
        check_auth_config(settings)
    if settings.auth_disabled:
        log.warning(
            "AUTHENTICATION IS DISABLED: anyone who can reach this port can append and read. "
            "Never run like this outside development."
        )
    api = _Api(settings, deps, OPENAPI_PATH.read_bytes())
    app = web.Application(
        middlewares=[api.middleware],
        client_max_size=max(api.body_limit, api.batch_body_limit),
    )
    r = app.router
    r.add_post("/append", api.append, name="append")
    r.add_post("/append/batch", api.append_batch, name="append_batch")
    r.add_get("/entries", api.list_entries, name="list_entries", allow_head=False)
    r.add_get(
        "/entries/by-request/{request_id}", api.get_entry_by_request,
        name="get_entry_by_request", allow_head=False,
    )
    r.add_get("/entries/{id}", api.get_entry, name="get_entry", allow_head=False)
    r.add_get(
        "/entries/{id}/proof", api.get_entry_proof, name="get_entry_proof", allow_head=False
    )
    r.add_get("/health", api.health, name="health", allow_head=False)
    r.add_get("/metrics", api.metrics_endpoint, name="metrics", allow_head=False)
    r.add_get("/openapi.json", api.openapi_endpoint, name="openapi", allow_head=False)
    return app

